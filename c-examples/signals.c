/* Signals in callback mode: rl_signal_start delivers signals as callbacks on the loop thread
 * (through a signalfd, so the handler may do anything, unlike a classic signal handler). The
 * program sends itself SIGUSR1 three times, each after the previous one was handled (pending
 * standard signals of one kind merge, so sending them back to back could legitimately deliver
 * fewer), then SIGUSR2; the SIGUSR2 handler stops handling both signals, after which nothing keeps
 * the loop alive and rl_run() returns. Exits 0 when every check holds. */
#define _POSIX_C_SOURCE 200809L

#include <signal.h>

#include "example.h"

#define MS 1000000ull

static int usr1_count, usr2_count, sent, failed;

static void expect(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "signals: FAIL: %s\n", what);
        failed = 1;
    }
}

static void send_signal(rl_loop *loop, const rl_outcome *o, void *data)
{
    (void)loop;
    (void)o;
    (void)data;
    if (sent < 3) {
        sent++;
        kill(getpid(), SIGUSR1);
    } else {
        kill(getpid(), SIGUSR2);
    }
}

static void on_usr1(rl_loop *loop, const rl_outcome *o, void *data)
{
    expect(o->result == SIGUSR1, "SIGUSR1 handler gets SIGUSR1");
    expect(o->flags & RL_EV_MORE, "a signal handler stays registered");
    expect(strcmp(data, "usr1") == 0, "the handler gets its data");
    usr1_count++;
    expect(usr1_count == sent, "each SIGUSR1 is handled once");
    printf("SIGUSR1 #%d\n", usr1_count);
    /* The next signal goes out from a timer, i.e. from the loop thread between iterations. */
    CHECK_RL(rl_call_later(loop, 1 * MS, send_signal, NULL, NULL));
}

static void on_usr2(rl_loop *loop, const rl_outcome *o, void *data)
{
    (void)data;
    expect(o->result == SIGUSR2, "SIGUSR2 handler gets SIGUSR2");
    expect(usr1_count == 3, "three SIGUSR1 were handled before SIGUSR2");
    usr2_count++;
    printf("SIGUSR2: stopping\n");
    expect(rl_signal_stop(loop, SIGUSR1) == 1, "stopping SIGUSR1");
    expect(rl_signal_stop(loop, SIGUSR2) == 1, "stopping SIGUSR2 from its own handler");
    expect(rl_signal_stop(loop, SIGUSR2) == 0, "stopping it again returns 0");
}

int main(void)
{
    rl_loop *loop;
    CHECK_RL(rl_loop_new(NULL, &loop));
    printf("signals on %s\n", rl_loop_backend(loop));
    CHECK_RL(rl_signal_start(loop, SIGUSR1, on_usr1, "usr1"));
    CHECK_RL(rl_signal_start(loop, SIGUSR2, on_usr2, NULL));
    expect(rl_signal_start(loop, SIGKILL, on_usr2, NULL) == -EINVAL, "SIGKILL cannot be handled");
    expect(rl_signal_start(loop, 0, on_usr2, NULL) == -EINVAL, "signal 0 is invalid");
    CHECK_RL(rl_call_later(loop, 1 * MS, send_signal, NULL, NULL));

    /* Signal handlers keep the loop alive until on_usr2 stops them. */
    CHECK_RL(rl_run(loop, RL_RUN_DEFAULT));

    expect(usr1_count == 3 && usr2_count == 1, "each signal was handled as sent");
    CHECK_RL(rl_loop_free(loop));
    if (failed)
        return 1;
    printf("signals: all checks passed\n");
    return 0;
}
