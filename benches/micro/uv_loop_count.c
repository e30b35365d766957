/* loop_count: how many empty loop iterations libuv runs per second (an idle handle keeps the loop
 * spinning without blocking, as in libuv's benchmark-loop-count.c). */
#include "micro.h"

static uint64_t iterations;
static uint64_t target;

static void on_idle(uv_idle_t *idle)
{
    if (++iterations == target)
        uv_idle_stop(idle);
}

int main(int argc, char **argv)
{
    target = quick_mode(argc, argv) ? 100000 : 10000000;
    uv_loop_t *loop = uv_default_loop();
    uv_idle_t idle;
    CHECK(uv_idle_init(loop, &idle));
    CHECK(uv_idle_start(&idle, on_idle));
    uint64_t start = uv_hrtime();
    CHECK(uv_run(loop, UV_RUN_DEFAULT));
    double elapsed = seconds_since(start);
    printf("uv_loop_count: %.0f iterations/s (%.1f ns per iteration, %llu iterations)\n",
           (double)iterations / elapsed, elapsed * 1e9 / (double)iterations, (unsigned long long)iterations);
    uv_close((uv_handle_t *)&idle, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    return uv_loop_close(loop) == 0 ? 0 : 1;
}
