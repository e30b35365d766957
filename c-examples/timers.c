/* Timers in callback mode: one-shot timers fire in deadline order, a cancelled timer never
 * fires, cancelling a fired timer is harmless, a timer can re-arm itself, and rl_run() returns
 * by itself once no timer is left. Exits 0 when every check holds. */
#define _POSIX_C_SOURCE 200809L

#include "example.h"

#define MS 1000000ull

struct record {
    char order[16]; /* the callbacks that ran, one letter each */
    int len;
    uint64_t start;
    int ticks;
    int failed;
};

static struct record rec;

static void expect(int ok, const char *what)
{
    if (!ok) {
        fprintf(stderr, "timers: FAIL: %s\n", what);
        rec.failed = 1;
    }
}

/* data is the letter to record (a pointer to a static string). */
static void on_timer(rl_loop *loop, const rl_outcome *o, void *data)
{
    const char *letter = data;
    expect(o->result == 0, "timer outcome is 0");
    if (rec.len < (int)sizeof rec.order - 1)
        rec.order[rec.len++] = letter[0];
    printf("+%3llu ms: %s\n", (unsigned long long)((rl_now(loop) - rec.start) / MS), letter);
}

static void on_cancelled(rl_loop *loop, const rl_outcome *o, void *data)
{
    (void)loop;
    (void)o;
    (void)data;
    expect(0, "a cancelled timer fired");
}

/* Re-arms itself 5 times, 2 ms apart. */
static void on_tick(rl_loop *loop, const rl_outcome *o, void *data)
{
    (void)o;
    (void)data;
    rec.ticks++;
    if (rec.ticks < 5)
        CHECK_RL(rl_call_later(loop, 2 * MS, on_tick, NULL, NULL));
}

static void on_soon(rl_loop *loop, const rl_outcome *o, void *data)
{
    on_timer(loop, o, data);
}

int main(void)
{
    rl_loop *loop;
    uint64_t cancelled, first;
    int rc;

    CHECK_RL(rl_loop_new(NULL, &loop));
    printf("timers on %s\n", rl_loop_backend(loop));
    rec.start = rl_now(loop);

    /* Scheduled out of order; the timers must run as a, b, c, d. (Where the call_soon callback "s"
     * falls depends on how long scheduling took: timers already due when the loop starts run in
     * its first pass too, and a slow machine or valgrind makes them due.) */
    CHECK_RL(rl_call_later(loop, 30 * MS, on_timer, "c", NULL));
    CHECK_RL(rl_call_later(loop, 10 * MS, on_timer, "a", &first));
    CHECK_RL(rl_call_later(loop, 25 * MS, on_cancelled, NULL, &cancelled));
    CHECK_RL(rl_call_at(loop, rec.start + 40 * MS, on_timer, "d", NULL));
    CHECK_RL(rl_call_later(loop, 20 * MS, on_timer, "b", NULL));
    CHECK_RL(rl_call_soon(loop, on_soon, "s"));
    CHECK_RL(rl_call_later(loop, 0, on_tick, NULL, NULL));

    expect(rl_timer_cancel(loop, cancelled) == 1, "cancelling a pending timer returns 1");
    expect(rl_timer_cancel(loop, cancelled) == 0, "cancelling it again returns 0");
    expect(rl_call_later(loop, MS, NULL, NULL, NULL) == -EINVAL, "a NULL callback is -EINVAL");

    /* Runs until nothing is left: no timer, no callback. */
    rc = rl_run(loop, RL_RUN_DEFAULT);
    CHECK_RL(rc);
    expect(rc == 0, "rl_run returns 0 when nothing keeps the loop alive");

    rec.order[rec.len] = '\0';
    printf("order: %s, ticks: %d, elapsed: %llu ms\n", rec.order, rec.ticks,
           (unsigned long long)((rl_now(loop) - rec.start) / MS));
    {
        /* The order without "s". */
        char timers_only[sizeof rec.order];
        int i, n = 0, soon = 0;
        for (i = 0; i < rec.len; i++) {
            if (rec.order[i] == 's')
                soon++;
            else
                timers_only[n++] = rec.order[i];
        }
        timers_only[n] = '\0';
        expect(soon == 1, "the call_soon callback ran once");
        expect(strcmp(timers_only, "abcd") == 0, "timers ran in deadline order");
    }
    expect(rec.ticks == 5, "the self-re-arming timer ran 5 times");
    expect(rl_now(loop) - rec.start >= 40 * MS, "the last timer did not fire early");
    expect(rl_timer_cancel(loop, first) == 0, "cancelling a fired timer is harmless");

    CHECK_RL(rl_loop_free(loop));
    expect(rl_loop_free(loop) == RL_EHANDLE, "a second rl_loop_free is RL_EHANDLE");
    expect(rl_timer_cancel(loop, first) == RL_EHANDLE, "a freed loop is RL_EHANDLE");
    if (rec.failed)
        return 1;
    printf("timers: all checks passed\n");
    return 0;
}
