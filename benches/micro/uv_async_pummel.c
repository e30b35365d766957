/* async_pummel: another thread calls uv_async_send as fast as it can; the loop counts the
 * callbacks (sends coalesce, so callbacks <= sends). As libuv's benchmark-async-pummel.c, but
 * bounded by time rather than by a callback count: under contention libuv's loop can spend long
 * stretches spinning on a handle whose sender was preempted mid-send, and a count-bounded run then
 * takes minutes. Reports wakes delivered per second and how many sends each wake absorbed. */
#include "micro.h"

#include <stdatomic.h>

static uv_async_t handle;
static uv_timer_t deadline;
static atomic_int done;
static unsigned long callbacks;
static unsigned long sends;

static void pummel(void *arg)
{
    (void)arg;
    while (!atomic_load_explicit(&done, memory_order_acquire)) {
        uv_async_send(&handle);
        sends++;
    }
}

static void on_async(uv_async_t *async)
{
    callbacks++;
    if (atomic_load_explicit(&done, memory_order_acquire))
        uv_close((uv_handle_t *)async, NULL);
}

/* Time is up: stop the sender and send once more from here, so that at least one callback runs
 * (and closes the handle) however starved the loop was. */
static void on_deadline(uv_timer_t *timer)
{
    atomic_store_explicit(&done, 1, memory_order_release);
    uv_close((uv_handle_t *)timer, NULL);
    uv_async_send(&handle);
}

int main(int argc, char **argv)
{
    uint64_t duration_ms = quick_mode(argc, argv) ? 300 : 5000;
    uv_loop_t *loop = uv_default_loop();
    CHECK(uv_async_init(loop, &handle, on_async));
    CHECK(uv_timer_init(loop, &deadline));
    CHECK(uv_timer_start(&deadline, on_deadline, duration_ms, 0));
    uv_thread_t thread;
    uint64_t start = uv_hrtime();
    CHECK(uv_thread_create(&thread, pummel, NULL));
    CHECK(uv_run(loop, UV_RUN_DEFAULT));
    double elapsed = seconds_since(start);
    CHECK(uv_thread_join(&thread));
    printf("uv_async_pummel: %.0f wakes/s delivered (%.1f ns per wake; %lu wakes, %.1f sends per wake)\n",
           (double)callbacks / elapsed, elapsed * 1e9 / (double)callbacks, callbacks,
           (double)sends / (double)callbacks);
    return uv_loop_close(loop) == 0 ? 0 : 1;
}
