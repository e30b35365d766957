/* million_timers: 1M one-shot timers scheduled, then the loop runs until all have fired.
 *
 * Two shapes:
 * - "spread", as libuv's benchmark-million-timers.c: 1000 timers per millisecond of timeout, the
 *   last due after 1 s. The wall time is mostly waiting, so the loop's CPU time while firing is
 *   what is reported per timer;
 * - "due": every timer has timeout 0 (all due at once), measuring schedule + fire back to back —
 *   the shape the criterion bench `million_timers` measures on ringloop. */
#include "micro.h"

#include <sys/resource.h>

static unsigned fired;

static void on_timer(uv_timer_t *timer)
{
    (void)timer;
    fired++;
}

static double cpu_seconds(void)
{
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
           (double)(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

static void run_shape(uv_loop_t *loop, uv_timer_t *timers, unsigned count, int spread)
{
    fired = 0;
    uint64_t start = uv_hrtime();
    for (unsigned i = 0; i < count; i++) {
        CHECK(uv_timer_init(loop, &timers[i]));
        CHECK(uv_timer_start(&timers[i], on_timer, spread ? 1 + i / 1000 : 0, 0));
    }
    double scheduled = seconds_since(start);
    double cpu_before = cpu_seconds();
    uint64_t run_start = uv_hrtime();
    CHECK(uv_run(loop, UV_RUN_DEFAULT));
    double ran = seconds_since(run_start);
    double run_cpu = cpu_seconds() - cpu_before;
    if (fired != count) {
        fprintf(stderr, "uv_million_timers: %u of %u timers fired\n", fired, count);
        exit(1);
    }
    if (spread)
        printf("uv_million_timers (spread over %.3f s): schedule %.1f ns/timer, fire %.1f ns/timer (loop CPU), "
               "wall %.3f s\n", (double)(count / 1000 + 1) / 1000.0, scheduled * 1e9 / count, run_cpu * 1e9 / count,
               scheduled + ran);
    else
        printf("uv_million_timers (all due): %.1f ns per timer scheduled and fired (%u timers, %.3f s)\n",
               (scheduled + ran) * 1e9 / count, count, scheduled + ran);
    for (unsigned i = 0; i < count; i++)
        uv_close((uv_handle_t *)&timers[i], NULL);
    CHECK(uv_run(loop, UV_RUN_DEFAULT));
}

int main(int argc, char **argv)
{
    unsigned count = quick_mode(argc, argv) ? 10000 : 1000000;
    uv_loop_t *loop = uv_default_loop();
    uv_timer_t *timers = malloc(sizeof *timers * count);
    if (timers == NULL)
        return 1;
    run_shape(loop, timers, count, 1);
    run_shape(loop, timers, count, 0);
    free(timers);
    return uv_loop_close(loop) == 0 ? 0 : 1;
}
