/* async_pummel: another thread calls uv_async_send as fast as it can; the loop counts the
 * callbacks (sends coalesce, so callbacks <= sends). As libuv's benchmark-async-pummel.c:
 * reports sends/s seen by the loop and how many sends each callback absorbed. */
#include "micro.h"

#include <stdatomic.h>

static uv_async_t handle;
static atomic_int done;
static unsigned long callbacks;
static unsigned long sends;
static unsigned long target;

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
    if (++callbacks == target) {
        atomic_store_explicit(&done, 1, memory_order_release);
        uv_close((uv_handle_t *)async, NULL);
    }
}

int main(int argc, char **argv)
{
    target = quick_mode(argc, argv) ? 1000 : 100000;
    uv_loop_t *loop = uv_default_loop();
    CHECK(uv_async_init(loop, &handle, on_async));
    uv_thread_t thread;
    uint64_t start = uv_hrtime();
    CHECK(uv_thread_create(&thread, pummel, NULL));
    CHECK(uv_run(loop, UV_RUN_DEFAULT));
    double elapsed = seconds_since(start);
    CHECK(uv_thread_join(&thread));
    printf("uv_async_pummel: %.0f wakes/s delivered (%.1f ns per wake; %lu sends, %.1f sends per wake)\n",
           (double)callbacks / elapsed, elapsed * 1e9 / (double)callbacks, sends, (double)sends / (double)callbacks);
    return uv_loop_close(loop) == 0 ? 0 : 1;
}
