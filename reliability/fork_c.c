/* fork() through the C ABI: a process with a running loop (a reader armed, a timer pending)
 * forks. In the child, using the inherited loop fails with an error code (never a crash, never a
 * touch of the parent's ring), freeing the inherited handle does not disturb the parent, and a new
 * loop works. In the parent, after the child exited, the reader and the timer still fire.
 *
 * Prints "fork_c: N passed, 0 failed" and exits 0 when every check holds. */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ringloop.h"

static int passed;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "fork_c: %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);  \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fprintf(stderr, "\n");                                                             \
            exit(1);                                                                           \
        }                                                                                      \
        passed++;                                                                              \
    } while (0)

static int fired;

static void count(rl_loop *lp, const rl_outcome *outcome, void *data)
{
    (void)lp;
    (void)outcome;
    *(int *)data += 1;
}

static void on_readable(rl_loop *lp, const rl_outcome *outcome, void *data)
{
    char buf[16];
    (void)data;
    if (outcome->result < 0) /* -ECANCELED: the loop is being freed */
        return;
    if (read(outcome->fd, buf, sizeof buf) > 0)
        fired |= 1;
    rl_remove_reader(lp, outcome->fd);
}

static void on_timer(rl_loop *lp, const rl_outcome *outcome, void *data)
{
    (void)lp;
    (void)data;
    if (outcome->result == 0)
        fired |= 2;
}

static int child(rl_loop *inherited)
{
    rl_event events[8];
    int rc = rl_poll(inherited, 0, events, 8);
    CHECK(rc == RL_ESTATE, "rl_poll on the inherited loop returned %d, not RL_ESTATE", rc);
    fprintf(stderr, "fork_c: child: rl_poll on the inherited loop: %d (%s)\n", rc, rl_strerror(rc));
    rc = rl_run(inherited, RL_RUN_NOWAIT);
    CHECK(rc < 0, "rl_run on the inherited loop returned %d", rc);
    /* Releasing the inherited handle must not cancel the parent's operations. */
    rc = rl_loop_free(inherited);
    fprintf(stderr, "fork_c: child: rl_loop_free(inherited) = %d (%s)\n", rc, rl_strerror(rc));

    rl_loop *fresh = NULL;
    rc = rl_loop_new(NULL, &fresh);
    CHECK(rc == 0, "rl_loop_new in the child: %s", rl_strerror(rc));
    int calls = 0;
    CHECK(rl_call_later(fresh, 1000000, count, &calls, NULL) == 0, "rl_call_later");
    CHECK(rl_call_soon(fresh, count, &calls) == 0, "rl_call_soon");
    rc = rl_run(fresh, RL_RUN_DEFAULT);
    CHECK(rc == 0 && calls == 2, "rl_run in the child: rc %d, %d calls", rc, calls);
    CHECK(rl_loop_free(fresh) == 0, "rl_loop_free(fresh)");
    return 0;
}

int main(void)
{
    rl_loop *lp = NULL;
    int rc = rl_loop_new(NULL, &lp);
    CHECK(rc == 0, "rl_loop_new: %s", rl_strerror(rc));
    fprintf(stderr, "fork_c: backend %s\n", rl_loop_backend(lp));
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    CHECK(rl_add_reader(lp, fds[0], on_readable, NULL) == 0, "rl_add_reader");
    CHECK(rl_call_later(lp, 200000000, on_timer, NULL, NULL) == 0, "rl_call_later");
    /* Running: one iteration, so the reader is armed in the kernel. */
    int soon = 0;
    CHECK(rl_call_soon(lp, count, &soon) == 0, "rl_call_soon");
    CHECK(rl_run(lp, RL_RUN_ONCE) >= 0 && soon == 1, "rl_run once");

    fflush(stderr);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork");
    if (pid == 0) {
        int code = child(lp);
        fprintf(stderr, "fork_c: child: %d checks passed\n", passed);
        fflush(stderr);
        _exit(code);
    }
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child status %#x", status);

    CHECK(write(fds[1], "x", 1) == 1, "write");
    while (fired != 3) {
        rc = rl_run(lp, RL_RUN_ONCE);
        CHECK(rc >= 0, "rl_run in the parent after fork: %s", rl_strerror(rc));
    }
    CHECK(fired == 3, "reader and timer fired in the parent");
    CHECK(rl_loop_free(lp) == 0, "rl_loop_free");
    close(fds[0]);
    close(fds[1]);
    printf("fork_c: %d passed, 0 failed\n", passed);
    return 0;
}
