/*
 * ringloop: a Linux event-loop reactor (io_uring where the kernel allows it, epoll elsewhere).
 *
 * The C ABI of libringloop. Generated from ffi/src by cbindgen: do not edit; run
 * `make -C ffi header` after changing the Rust source.
 *
 * Conventions (see each function for details):
 *  - Functions return 0 (or a count) on success and -errno on failure; ringloop's own codes are
 *    below -RL_ERR_BASE (RL_EHANDLE, RL_EPANIC, RL_EUNSUPPORTED, RL_ESTATE). rl_strerror()
 *    names every code.
 *  - Handles (rl_loop *, rl_future *) are opaque and validated on every call: a NULL, freed or
 *    foreign handle gives RL_EHANDLE, never a crash.
 *  - A loop is used by one thread at a time ("loop thread only"); functions documented as
 *    "thread-safe" may be called from any thread.
 *  - Callbacks are a C function pointer plus a void *data passed back verbatim. They run on the
 *    loop thread, inside rl_run or rl_poll, and may call any function of the library on that
 *    loop except rl_loop_free, rl_run and rl_poll.
 *  - Nothing unwinds out of the library: an internal panic is reported as RL_EPANIC.
 */

#ifndef RINGLOOP_H
#define RINGLOOP_H

#include <stddef.h>
#include <stdint.h>

/**
 * Major version of the library this header describes (incompatible ABI changes).
 */
#define RL_VERSION_MAJOR 0

/**
 * Minor version (backwards-compatible additions).
 */
#define RL_VERSION_MINOR 7

/**
 * Patch version (fixes only).
 */
#define RL_VERSION_PATCH 0

/**
 * Base of ringloop's own error codes: they are all below `-RL_ERR_BASE`, far outside the errno
 * range, so `-errno` and library codes never collide.
 */
#define RL_ERR_BASE 100000

/**
 * A null, stale (freed) or foreign handle was passed.
 */
#define RL_EHANDLE -100001

/**
 * The library caught an internal panic; the operation did not take place. The loop stays usable.
 */
#define RL_EPANIC -100002

/**
 * The requested backend is unavailable on this kernel (e.g. io_uring disabled by sysctl).
 */
#define RL_EUNSUPPORTED -100003

/**
 * The object is in the wrong state for the call (freeing a running loop, reading the result of
 * a pending future, completing a done future, using a loop from a second thread concurrently).
 */
#define RL_ESTATE -100004

/**
 * Readiness interest / ready-mask bit: readable (hang-up and error count as readable).
 */
#define RL_READABLE 1

/**
 * Readiness interest / ready-mask bit: writable (error counts as writable).
 */
#define RL_WRITABLE 2

/**
 * `rl_event.flags` bit: more events follow for this operation (a multishot op is still armed).
 */
#define RL_EV_MORE 1

/**
 * `rl_event.flags` bit: `aux` is the id of a loop-owned receive buffer holding `result` bytes,
 * valid until the next `rl_poll`.
 */
#define RL_EV_BUFFER 2

/**
 * `rl_event.flags` bit, with `RL_EV_BUFFER` (`rl_op_recvmsg`'s events): the buffer holds one
 * datagram, laid out as the `RL_DGRAM_*` offsets say; its `result` payload bytes start at
 * `RL_DGRAM_PAYLOAD`, not at the start of the buffer.
 */
#define RL_EV_DATAGRAM 4

/**
 * Offset, in a datagram's buffer, of the `uint32_t` length of the sender's address.
 */
#define RL_DGRAM_NAME_LEN 0

/**
 * Offset of the `uint32_t` full length of the datagram: more than the event's `result` when it
 * did not fit in the buffer.
 */
#define RL_DGRAM_PAYLOAD_LEN 8

/**
 * Offset of the `uint32_t` `recvmsg` flags (`MSG_TRUNC` for a datagram cut short).
 */
#define RL_DGRAM_MSG_FLAGS 12

/**
 * Offset of the sender's address, a `struct sockaddr` of the length at `RL_DGRAM_NAME_LEN`.
 */
#define RL_DGRAM_NAME 16

/**
 * Room for the sender's address: `sizeof(struct sockaddr_storage)`.
 */
#define RL_DGRAM_NAME_MAX 128

/**
 * Offset of the payload.
 */
#define RL_DGRAM_PAYLOAD 144

/**
 * The token of the event `rl_wake` produces in raw mode.
 */
#define RL_WAKE_TOKEN 18446744073709551615ull

/**
 * Tokens at or above this value belong to the library; raw operations given one fail `-EINVAL`.
 */
#define RL_TOKEN_RESERVED 9223372036854775808ull

/**
 * `rl_options.backend`: io_uring when the kernel supports what ringloop needs, else epoll;
 * `RINGLOOP_BACKEND=io_uring|epoll` overrides unless `RL_OPT_IGNORE_ENV` is set.
 */
#define RL_BACKEND_AUTO 0

/**
 * `rl_options.backend`: io_uring, or `RL_EUNSUPPORTED` when unavailable (never a silent switch).
 */
#define RL_BACKEND_IO_URING 1

/**
 * `rl_options.backend`: epoll.
 */
#define RL_BACKEND_EPOLL 2

/**
 * `rl_options.flags` bit: ignore the `RINGLOOP_BACKEND` environment variable.
 */
#define RL_OPT_IGNORE_ENV 1

/**
 * `rl_options.flags` bit: the loop is only ever polled on one thread (the first that polls it;
 * it may be created on another). Thread-safe functions stay thread-safe. Lets io_uring use
 * `SINGLE_ISSUER | DEFER_TASKRUN` (falls back where the kernel lacks them), which runs completion
 * work in batches inside the loop's own wait. Polling from a second thread then fails
 * (`-EEXIST`); cancels made on another thread reach the kernel at the polling thread's next
 * poll (closes happen at once); freeing the loop on another thread releases everything once
 * the polling thread has exited, and while it lives keeps the buffer memory that operations
 * still in flight may use until it has exited.
 */
#define RL_OPT_SINGLE_THREAD 2

/**
 * `rl_run` mode: run until `rl_stop` is called or no work is left that could wake the loop.
 */
#define RL_RUN_DEFAULT 0

/**
 * `rl_run` mode: wait for at least one event (or a due timer) and dispatch once.
 */
#define RL_RUN_ONCE 1

/**
 * `rl_run` mode: dispatch what is ready now without waiting.
 */
#define RL_RUN_NOWAIT 2

/**
 * `rl_future_state`: not completed yet.
 */
#define RL_FUTURE_PENDING 0

/**
 * `rl_future_state`: completed with `rl_future_set_result` or `rl_future_set_error`.
 */
#define RL_FUTURE_DONE 1

/**
 * `rl_future_state`: cancelled (`rl_future_cancel`, its loop was freed while it had done
 * callbacks, or its thread-pool job was dropped before it started).
 */
#define RL_FUTURE_CANCELLED 2

/**
 * A future: pending, then done (a `uint64_t` value or a negative error code) or cancelled.
 * Opaque; created by `rl_future_new` or `rl_run_in_thread`, released by `rl_future_release`.
 *
 * Like `rl_loop`, the pointer value is a registry handle: NULL, released or foreign values give
 * `RL_EHANDLE`.
 */
typedef struct rl_future rl_future;

/**
 * An event loop. Opaque: created by `rl_loop_new`, destroyed by `rl_loop_free`.
 *
 * The pointer value is a registry handle, never dereferenced by the library: a null, freed or
 * foreign value is detected and rejected with `RL_EHANDLE`.
 */
typedef struct rl_loop rl_loop;

/**
 * What a callback is told. Valid only during the callback.
 *
 * | registered with | `result` | `fd` | `bytes`/`nbytes` |
 * |---|---|---|---|
 * | `rl_call_soon*`, `rl_call_later`, `rl_call_at` | 0 | -1 | NULL/0 |
 * | `rl_add_reader`/`rl_add_writer` | ready bits (`RL_READABLE`/`RL_WRITABLE`) | the fd | NULL/0 |
 * | `rl_recv` | byte count, 0 = end of stream, or `-errno` | the socket | the bytes |
 * | `rl_recvmsg` | payload bytes (0: an empty datagram) or `-errno` | the socket | the payload (`source`: the sender) |
 * | `rl_accept` | the new fd (the callback owns it) or `-errno` | the listening socket | NULL/0 |
 * | `rl_send` | total bytes sent or `-errno` | the socket | NULL/0 |
 * | `rl_sendto` | bytes sent or `-errno` | the socket | NULL/0 |
 * | `rl_connect`, `rl_close` | 0 or `-errno` | the socket | NULL/0 |
 * | `rl_signal_start` | the signal number | -1 | NULL/0 |
 * | `rl_future_add_done_callback` | 0 (done; `value` = the result), the future's error code, or `-ECANCELED` | -1 | NULL/0 |
 *
 * When a loop is freed with a callback still registered (a pending timer or call, a watch, a
 * live op, a signal handler), that callback is called one last time with `result ==
 * -ECANCELED`, so the caller can release `data`. Callbacks removed with `rl_timer_cancel`,
 * `rl_cancel`, `rl_remove_reader`/`rl_remove_writer` or `rl_signal_stop` are not called again.
 */
typedef struct rl_outcome {
    /**
     * See the table above.
     */
    int32_t result;
    /**
     * The fd the operation is about, or -1.
     */
    int32_t fd;
    /**
     * Received bytes (`rl_recv` only), else NULL. Owned by the loop; valid during the callback.
     */
    const uint8_t *bytes;
    /**
     * Number of bytes at `bytes`.
     */
    size_t nbytes;
    /**
     * `RL_EV_MORE` when the registration stays active and will be called again.
     */
    uint32_t flags;
    /**
     * The result value of a future (done callbacks), else 0.
     */
    uint64_t value;
    /**
     * The sender of a datagram (`rl_recvmsg` only): a `struct sockaddr` of `source_len` bytes,
     * valid during the callback; else NULL. (Added in 0.6.0, after the fields above, which
     * keep their places.)
     */
    const void *source;
    /**
     * Length of `source` in bytes (0 without one).
     */
    uint32_t source_len;
} rl_outcome;

/**
 * A callback: called on the loop thread with the loop, what happened, and the `data` it was
 * registered with. It may call any loop-thread function on `loop` except `rl_run`, `rl_poll`
 * and `rl_loop_free` (those return `RL_ESTATE`), and must not unwind (no C++ exceptions, no
 * `longjmp` out of it).
 */
typedef void (*rl_callback)(struct rl_loop *loop, const struct rl_outcome *outcome, void *data);

/**
 * Work for `rl_run_in_thread`, run on a pool thread: returns 0 and stores the future's result in
 * `*value`, or returns a negative error code that becomes the future's error.
 */
typedef int (*rl_work_fn)(void *data, uint64_t *value);

/**
 * Loop options. Initialise with `rl_options_init`, then change fields.
 *
 * `size` must be `sizeof(rl_options)` as the caller compiled it: a caller built against an older
 * header keeps working (missing fields take their defaults), and a newer caller's extra fields
 * are accepted when they are zero. Note that `rl_options_init` writes this library's whole
 * struct: a field added here would be written past the end of an older caller's struct, so
 * later settings come as functions on the loop instead (`rl_set_accept_retry`).
 */
typedef struct rl_options {
    /**
     * `sizeof(rl_options)`.
     */
    uint32_t size;
    /**
     * `RL_BACKEND_AUTO`, `RL_BACKEND_IO_URING` or `RL_BACKEND_EPOLL`.
     */
    uint32_t backend;
    /**
     * Size in bytes of each loop-owned receive buffer; 0 = default (65536).
     */
    uint32_t buffer_size;
    /**
     * Number of receive buffers, a power of two up to 32768; 0 = default (256).
     */
    uint32_t buffer_count;
    /**
     * io_uring submission queue entries, a power of two; 0 = default (1024). Ignored by epoll.
     */
    uint32_t ring_entries;
    /**
     * Bit set of `RL_OPT_*`.
     */
    uint32_t flags;
} rl_options;

/**
 * One completion event, identical in layout to the reactor's event record (24 bytes).
 */
typedef struct rl_event {
    /**
     * The token the operation was submitted with (`RL_WAKE_TOKEN` for a wake-up).
     */
    uint64_t token;
    /**
     * Bytes transferred, a new fd, a ready mask (`RL_READABLE`/`RL_WRITABLE`), a signal number,
     * 0, or `-errno`.
     */
    int32_t result;
    /**
     * Bit set of `RL_EV_MORE` and `RL_EV_BUFFER`.
     */
    uint32_t flags;
    /**
     * The receive buffer id when `RL_EV_BUFFER` is set, else 0.
     */
    uint64_t aux;
} rl_event;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * The library version as `(major << 16) | (minor << 8) | patch`.
 *
 * Compare with `RL_VERSION_MAJOR`/`MINOR`/`PATCH` from the header to detect a header/library
 * mismatch at run time. Thread-safe.
 */
uint32_t rl_version(void);

/**
 * A static, NUL-terminated description of `code`: ringloop's `RL_E*` codes, `-errno` values
 * (and positive errno values) and `0`.
 *
 * Never returns NULL; an unknown code gives `"unknown error"`. The string is owned by the library
 * and must not be freed. Thread-safe.
 */
const char *rl_strerror(int code);

/**
 * Runs the loop's callbacks.
 *
 * `mode`: `RL_RUN_DEFAULT` runs until `rl_stop` or until nothing keeps the loop alive (pending
 * callbacks and timers, watches, live operations, signal handlers, pending futures with done
 * callbacks, thread-pool jobs); `RL_RUN_ONCE` waits until at least one callback ran, then
 * returns; `RL_RUN_NOWAIT` runs one iteration without waiting. Raw-mode events that arrive
 * meanwhile are kept for the next `rl_poll`.
 *
 * Returns 1 when something still keeps the loop alive, 0 when nothing does, `-EINVAL` for an
 * unknown mode, `RL_ESTATE` when called from a callback of this loop (or while another thread
 * uses it), `RL_EHANDLE`, or `-errno` from the kernel (the loop stays usable).
 *
 * Loop thread only.
 */
int rl_run(struct rl_loop *loop, int mode);

/**
 * Asks `rl_run` to return after its current iteration (a loop that is not running returns after
 * the first iteration of its next `rl_run`). Returns 0 or `RL_EHANDLE`.
 *
 * **Thread-safe**; wakes the loop if it is waiting.
 */
int rl_stop(struct rl_loop *loop);

/**
 * Calls `cb(loop, outcome, data)` in the loop's next iteration; calls run in the order they were
 * made (`outcome->result` is 0).
 *
 * Returns 0, `-EINVAL` (NULL `cb`), `RL_EHANDLE`, `RL_ESTATE` (loop closed or used by another
 * thread). Loop thread only; use `rl_call_soon_threadsafe` from other threads.
 */
int rl_call_soon(struct rl_loop *loop, rl_callback cb, void *data);

/**
 * `rl_call_soon` from any thread: queues the call and wakes the loop. Calls from one thread run
 * in the order they were made. `data` must be usable on the loop thread.
 *
 * Returns 0, `-EINVAL` (NULL `cb`), `RL_EHANDLE` (the loop was freed), or `RL_ESTATE` (the loop
 * is being freed: `cb` will not be called). If the loop is freed after the call was queued but
 * before it ran, `cb` is called during `rl_loop_free` with `-ECANCELED`.
 *
 * **Thread-safe**.
 */
int rl_call_soon_threadsafe(struct rl_loop *loop, rl_callback cb, void *data);

/**
 * Calls `cb` once, `delay_ns` nanoseconds after the loop's time (cached at the start of each
 * iteration, as `rl_now` reads it then). Timers run in deadline order, ties in the order they
 * were scheduled.
 *
 * Stores the timer id in `*timer_out` (when not NULL) for `rl_timer_cancel`. Returns 0,
 * `-EINVAL` (NULL `cb`), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 *
 * # Safety
 * `timer_out` is NULL or writable.
 */
int rl_call_later(struct rl_loop *loop,
                  uint64_t delay_ns,
                  rl_callback cb,
                  void *data,
                  uint64_t *timer_out);

/**
 * Calls `cb` once, when the loop's time reaches `deadline_ns` (on the `rl_now` clock; a deadline
 * in the past runs in the next iteration). Timers run in deadline order, ties in the order they
 * were scheduled.
 *
 * Stores the timer id in `*timer_out` (when not NULL) for `rl_timer_cancel`. Returns 0,
 * `-EINVAL` (NULL `cb`), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 *
 * # Safety
 * `timer_out` is NULL or writable.
 */
int rl_call_at(struct rl_loop *loop,
               uint64_t deadline_ns,
               rl_callback cb,
               void *data,
               uint64_t *timer_out);

/**
 * Cancels a timer from `rl_call_later`, `rl_call_at` or `rl_op_timer`.
 *
 * Returns 1 when the timer was pending (its callback will not be called, its event not
 * delivered), 0 when it already fired or was cancelled (harmless: ids carry a generation and
 * never name another timer), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 */
int rl_timer_cancel(struct rl_loop *loop, uint64_t timer);

/**
 * Calls `cb` whenever `fd` is readable: persistent and level-triggered (once per iteration while
 * readable; hang-up and error count as readable), as asyncio's `add_reader`. `outcome->result`
 * is the ready mask. Adding a reader to an fd that has one replaces the callback (the old one is
 * not called again). The fd stays the caller's; remove the reader before closing it yourself.
 *
 * Returns 0, `-EINVAL` (NULL `cb`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno` (e.g. `-EPERM`
 * for a regular file under epoll). Loop thread only.
 */
int rl_add_reader(struct rl_loop *loop, int fd, rl_callback cb, void *data);

/**
 * Removes the reader of `fd`: returns 1 if there was one (its callback is not called again, even
 * for readiness already collected in this iteration), 0 if not, `RL_EHANDLE`, `RL_ESTATE`.
 * Loop thread only.
 */
int rl_remove_reader(struct rl_loop *loop, int fd);

/**
 * Calls `cb` whenever `fd` is writable: persistent and level-triggered (error counts as
 * writable), as asyncio's `add_writer`. `outcome->result` is the ready mask. Adding a writer to
 * an fd that has one replaces the callback. The fd stays the caller's.
 *
 * Returns 0, `-EINVAL` (NULL `cb`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread
 * only.
 */
int rl_add_writer(struct rl_loop *loop, int fd, rl_callback cb, void *data);

/**
 * Removes the writer of `fd`: returns 1 if there was one (its callback is not called again), 0
 * if not, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 */
int rl_remove_writer(struct rl_loop *loop, int fd);

/**
 * Accepts connections on the listening socket `fd` (multishot): `cb` is called once per
 * connection with `outcome->result` = the new socket (non-blocking, close-on-exec; the callback
 * owns it and must close it) and `RL_EV_MORE`, and a last time without `RL_EV_MORE` with
 * `-errno` if accepting stops. Per-connection errors (`-ECONNABORTED`, ...) and resource errors
 * (`-EMFILE`, `-ENFILE`, `-ENOBUFS`, `-ENOMEM`) come with `RL_EV_MORE`: accepting goes on, after
 * a resource error only once the back-off delay has passed (`rl_set_accept_retry`, default 1 s).
 *
 * Stores the op id in `*op_out` (when not NULL) for `rl_cancel`. Returns 0, `-EINVAL`, `-EBADF`,
 * `RL_EHANDLE`, `RL_ESTATE`, `-errno`. The listening fd stays the caller's. Loop thread only.
 *
 * # Safety
 * `op_out` is NULL or writable.
 */
int rl_accept(struct rl_loop *loop, int fd, rl_callback cb, void *data, uint64_t *op_out);

/**
 * Receives from the stream socket or pipe `fd` (multishot; pipes as `rl_op_recv` says) into
 * loop-owned buffers: `cb` gets each chunk in `outcome->bytes`/`nbytes` (valid only during the
 * call: copy them, or keep their buffer with `rl_recv_keep`) with `RL_EV_MORE`, then a last call
 * without `RL_EV_MORE`: `result` 0 at end of stream or `-errno`. When the loop's buffers run
 * out, receiving pauses until they are recycled: no data is lost.
 *
 * Stores the op id in `*op_out` (when not NULL) for `rl_cancel`. Returns 0, `-EINVAL`, `-EBADF`,
 * `RL_EHANDLE`, `RL_ESTATE`, `-errno`. The fd stays the caller's. Loop thread only.
 *
 * # Safety
 * `op_out` is NULL or writable.
 */
int rl_recv(struct rl_loop *loop, int fd, rl_callback cb, void *data, uint64_t *op_out);

/**
 * Receives datagrams on the `SOCK_DGRAM` socket `fd` (UDP, Unix datagram; multishot, as
 * `rl_op_recvmsg`): `cb` gets each datagram with `RL_EV_MORE`, its payload in
 * `outcome->bytes`/`nbytes` (`result` = `nbytes`; 0 for an empty datagram, when `bytes` is NULL)
 * and its sender in `outcome->source`/`source_len` (a `struct sockaddr`), both valid only
 * during the call (copy them: `rl_recv_keep` does not apply); then a last call without
 * `RL_EV_MORE` with the `-errno` that ended the receive (`-ECONNREFUSED` after an ICMP error
 * on a connected socket, ...): register again to go on. A datagram longer than
 * `buffer_size - RL_DGRAM_PAYLOAD` is cut short, as `recvmsg` cuts it. After `rl_cancel`,
 * datagrams received and not yet delivered are dropped.
 *
 * Stores the op id in `*op_out` (when not NULL) for `rl_cancel`. Returns 0, `-EINVAL`,
 * `-EBADF`, `-ENOTSOCK`, `-EOPNOTSUPP` (not a datagram socket), `RL_EHANDLE`, `RL_ESTATE`,
 * `-errno`. The fd stays the caller's. Loop thread only.
 *
 * # Safety
 * `op_out` is NULL or writable.
 */
int rl_recvmsg(struct rl_loop *loop, int fd, rl_callback cb, void *data, uint64_t *op_out);

/**
 * Keeps the bytes an `rl_recv` or `rl_recvmsg` callback got beyond the callback: called from
 * that callback with its `outcome`, it returns the id of the loop buffer holding them, and they
 * stay valid and unchanged until `rl_buffer_release(loop, id)`. So they can be sent on without a
 * copy: `rl_send` (or, for a datagram, `rl_sendto`, since 0.7.0) straight from `outcome->bytes`,
 * released in the send's callback (an echo, a proxy). A datagram's sender (`outcome->source`)
 * is in the same buffer and stays valid with it.
 *
 * A kept buffer is out of the loop's pool meanwhile: keeping many makes receives wait for
 * buffers (no bytes are lost). A buffer still kept when the loop is freed is freed with it.
 *
 * Returns the buffer id (>= 0), or `-EINVAL` (NULL `outcome`, no bytes), `-ENOENT` (bytes that
 * are not in a loop buffer — after `rl_cancel` of a receive, bytes it had already taken reach
 * the next `rl_recv` on the socket from a copy: copy those — or an outcome of an earlier
 * callback, or a buffer already kept), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 *
 * # Safety
 * `outcome` is NULL or points to a readable `rl_outcome`; its `bytes` are only compared with the
 * loop's buffer region, never read.
 */
int rl_recv_keep(struct rl_loop *loop, const struct rl_outcome *outcome);

/**
 * Sends `len` bytes at `buf` on the stream socket `fd`; `cb` is called once with the total bytes
 * sent (the loop finishes short writes itself) or `-errno`. The caller keeps `buf` valid and
 * unchanged until then — also after `rl_cancel` or `rl_close` on the fd, which still deliver that
 * one final call (`-ECANCELED` or a count).
 *
 * Stores the op id in `*op_out` (when not NULL). Returns 0, `-EINVAL` (NULL `cb`, or NULL `buf`
 * with nonzero `len`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
 *
 * # Safety
 * `buf..buf+len` stays readable and unmodified until `cb` is called; `op_out` is NULL or
 * writable.
 */
int rl_send(struct rl_loop *loop,
            int fd,
            const void *buf,
            size_t len,
            rl_callback cb,
            void *data,
            uint64_t *op_out);

/**
 * Sends one datagram of `len` bytes at `buf` on the datagram socket `fd` to `sockaddr`
 * (`addrlen` bytes, copied before return), or to the connected peer when `sockaddr` is NULL and
 * `addrlen` 0; `cb` is called once with the bytes sent (a datagram goes whole or not at all) or
 * `-errno`. As `rl_op_sendto`: datagram sends on one socket do not wait for each other, and
 * the kernel sends them in call order while the socket's send buffer has room. The caller keeps
 * `buf` valid and unchanged until `cb` is called — also after `rl_cancel` or `rl_close` on the
 * fd, which still deliver that one final call (`-ECANCELED` or the count).
 *
 * Stores the op id in `*op_out` (when not NULL). Returns 0, `-EINVAL` (NULL `cb`; NULL `buf`
 * with nonzero `len`; malformed address, or NULL `sockaddr` with nonzero `addrlen`),
 * `-EMSGSIZE` (`len` above `INT32_MAX`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop
 * thread only.
 *
 * # Safety
 * `buf..buf+len` stays readable and unmodified until `cb` is called; `sockaddr` is NULL or
 * points to `addrlen` readable bytes; `op_out` is NULL or writable.
 */
int rl_sendto(struct rl_loop *loop,
              int fd,
              const void *buf,
              size_t len,
              const void *sockaddr,
              uint32_t addrlen,
              rl_callback cb,
              void *data,
              uint64_t *op_out);

/**
 * Connects the non-blocking socket `fd` to `sockaddr` (`addrlen` bytes, copied before return);
 * `cb` gets 0 or `-errno` (e.g. `-ECONNREFUSED`).
 *
 * Stores the op id in `*op_out` (when not NULL). Returns 0, `-EINVAL` (NULL `cb`, NULL or
 * malformed address), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
 *
 * # Safety
 * `sockaddr` points to `addrlen` readable bytes; `op_out` is NULL or writable.
 */
int rl_connect(struct rl_loop *loop,
               int fd,
               const void *sockaddr,
               uint32_t addrlen,
               rl_callback cb,
               void *data,
               uint64_t *op_out);

/**
 * Closes `fd` through the loop: the loop's operations and watches on it end first (their
 * callbacks are not called again, except pending sends, which get their final result), then the
 * fd is closed and `cb` gets 0 or `-errno`.
 *
 * Ownership of `fd` passes to the loop unless the call returns `RL_EHANDLE`, `RL_ESTATE`,
 * `-EINVAL` or `-EBADF`: from then on the caller must not use or close it, even if the call
 * returns another error (the fd is closed then too). Stores the op id in `*op_out` (when not
 * NULL). Loop thread only.
 *
 * # Safety
 * `fd` is an open fd the caller owns and gives away; `op_out` is NULL or writable.
 */
int rl_close(struct rl_loop *loop, int fd, rl_callback cb, void *data, uint64_t *op_out);

/**
 * Cancels an operation started with `rl_accept`, `rl_recv`, `rl_recvmsg`, `rl_send`,
 * `rl_sendto`, `rl_connect` or `rl_close`. Takes effect at once (its callback is not called
 * again), except for a send, whose callback still gets its final result once the kernel no
 * longer reads the buffer.
 *
 * Returns 1 if the op was live, 0 if it already ended or was cancelled (harmless), `RL_EHANDLE`,
 * `RL_ESTATE`. Loop thread only. (Raw-mode ops are cancelled with `rl_op_cancel`.)
 */
int rl_cancel(struct rl_loop *loop, uint64_t op);

/**
 * Calls `cb` with `outcome->result` = `signo` each time the signal arrives, through a signalfd:
 * the signal is blocked in the calling thread while handled. Block it in every other thread of
 * the process too (threads created afterwards inherit the mask; the loop's own pool threads
 * block all signals), or the kernel may deliver it elsewhere. Starting again for the same
 * signal replaces the callback.
 *
 * Returns 0, `-EINVAL` (NULL `cb`, bad signal number, SIGKILL/SIGSTOP), `RL_EHANDLE`,
 * `RL_ESTATE`, `-errno`. Loop thread only.
 */
int rl_signal_start(struct rl_loop *loop, int signo, rl_callback cb, void *data);

/**
 * Stops handling `signo` and unblocks it: returns 1 if it was handled, 0 if not, `RL_EHANDLE`,
 * `RL_ESTATE`. Loop thread only.
 */
int rl_signal_stop(struct rl_loop *loop, int signo);

/**
 * Sets the most worker threads `rl_run_in_thread` may use (1 to 1024; default 4). Threads
 * start on demand; threads already running stay until the loop is freed.
 *
 * Returns 0, `-EINVAL`, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 */
int rl_set_pool_size(struct rl_loop *loop, uint32_t workers);

/**
 * Runs `work(data, &value)` on one of the loop's pool threads (blocking work: file I/O, DNS,
 * computation) and stores in `*future_out` a new future that completes with `value` when `work`
 * returns 0, or with `work`'s negative return value as its error. Cancelling the future before
 * the job starts skips the job. A job keeps `RL_RUN_DEFAULT` running until it has finished; the
 * pool threads block every signal.
 *
 * The caller owns the future handle and releases it with `rl_future_release` (the job completes
 * the future whether or not the handle was released). `data` must be usable from another
 * thread until `work` returned; `work` may also never be called (the future was cancelled
 * first, or the loop was freed), so it must not be the only owner of what it frees.
 *
 * Returns 0, `-EINVAL` (NULL `work` or `future_out`), `RL_EHANDLE`, `RL_ESTATE`, `-errno`
 * (thread creation failed). Loop thread only.
 *
 * # Safety
 * `future_out` is writable.
 */
int rl_run_in_thread(struct rl_loop *loop,
                     rl_work_fn work,
                     void *data,
                     struct rl_future **future_out);

/**
 * Creates a pending future bound to `loop` (its done callbacks run on that loop) and stores its
 * handle in `*future_out`. The caller owns the handle and releases it with `rl_future_release`.
 *
 * Returns 0, `-EINVAL` (NULL `future_out`), `RL_EHANDLE`, `-ENOMEM`. **Thread-safe**.
 *
 * # Safety
 * `future_out` is NULL or writable.
 */
int rl_future_new(struct rl_loop *loop, struct rl_future **future_out);

/**
 * Completes the future with `value`. Returns 1 if this call completed it, 0 if it was already
 * complete (done or cancelled; nothing changes), `RL_EHANDLE`. Done callbacks run on the loop
 * thread in the loop's next iteration (the loop is woken).
 *
 * **Thread-safe**.
 */
int rl_future_set_result(struct rl_future *future, uint64_t value);

/**
 * Completes the future with the error `code`, which must be negative (a `-errno` or one of the
 * caller's own codes). Returns 1 if this call completed it, 0 if it was already complete,
 * `-EINVAL` for `code >= 0`, `RL_EHANDLE`.
 *
 * **Thread-safe**.
 */
int rl_future_set_error(struct rl_future *future, int code);

/**
 * Cancels the future. Returns 1 if it was pending (done callbacks then run with `-ECANCELED`), 0
 * if it was already complete, `RL_EHANDLE`. A future from `rl_run_in_thread` cancelled before
 * its job started skips the job.
 *
 * **Thread-safe**.
 */
int rl_future_cancel(struct rl_future *future);

/**
 * Returns the future's state, `RL_FUTURE_PENDING`, `RL_FUTURE_DONE` or `RL_FUTURE_CANCELLED`,
 * or `RL_EHANDLE` for a bad handle.
 *
 * **Thread-safe**.
 */
int rl_future_state(const struct rl_future *future);

/**
 * The outcome of a complete future: returns 0 and stores the value in `*value` (when not NULL)
 * if it was completed with a value; returns its (negative) error code if it was completed with
 * an error; `-ECANCELED` if it was cancelled; `RL_ESTATE` while pending; `RL_EHANDLE`.
 *
 * **Thread-safe**.
 *
 * # Safety
 * `value` is NULL or writable.
 */
int rl_future_result(const struct rl_future *future, uint64_t *value);

/**
 * Calls `cb(loop, outcome, data)` on the future's loop thread once the future is complete (in
 * the next iteration if it already is). `outcome->result` is 0 with `outcome->value` = the value,
 * the future's error code, or `-ECANCELED`. Callbacks of one future run in the order added. While
 * the future is pending with callbacks it keeps `RL_RUN_DEFAULT` running.
 *
 * Returns 0, `-EINVAL` (NULL `cb`), `RL_EHANDLE` (bad future, or its loop was freed),
 * `RL_ESTATE`. Loop thread only (the future's loop).
 */
int rl_future_add_done_callback(struct rl_future *future, rl_callback cb, void *data);

/**
 * Releases the caller's handle. The future itself lives on as long as the loop or a pool job
 * needs it (a running job still completes it, registered done callbacks still run); only the
 * handle becomes stale. Returns 0, or `RL_EHANDLE` (so a double release is an error, not a
 * crash).
 *
 * **Thread-safe**.
 */
int rl_future_release(struct rl_future *future);

/**
 * Fills `*opts` with the defaults, `size` included.
 *
 * Does nothing when `opts` is NULL. Thread-safe.
 *
 * # Safety
 * `opts` is NULL or points to a writable `rl_options`.
 */
void rl_options_init(struct rl_options *opts);

/**
 * Creates a loop and stores its handle in `*out`.
 *
 * `opts` may be NULL for the defaults. Returns 0; `-EINVAL` when `out` is NULL or an option is
 * out of range, `-E2BIG` when `opts->size` is larger than this library's `rl_options` and the
 * extra bytes are not zero, `RL_EUNSUPPORTED` when `RL_BACKEND_IO_URING` was forced and io_uring
 * is unavailable, or another `-errno` from the kernel (`-EMFILE`, `-ENOMEM`, ...). On failure
 * `*out` is left unchanged.
 *
 * The caller owns the loop and releases it with `rl_loop_free`. The loop may be created on one
 * thread and used on another, but is used by one thread at a time. Thread-safe.
 *
 * # Safety
 * `opts` is NULL or points to at least `opts->size` readable bytes; `out` is NULL or writable.
 */
int rl_loop_new(const struct rl_options *opts, struct rl_loop **out);

/**
 * Destroys a loop: cancels every operation, timer, watch and signal handler still registered,
 * waits until the kernel no longer touches any caller memory (pending sends), and releases the
 * loop's resources. Closes no fd the caller owns; pending callbacks are dropped without being
 * called, pending futures of the loop are cancelled.
 *
 * Returns 0, `RL_EHANDLE` for a null, stale or foreign handle (so a double free is an error, not
 * a crash), or `RL_ESTATE` when called from inside a callback of this loop (during `rl_run` or
 * `rl_poll`) or while another thread is using it. After success the handle is stale everywhere.
 *
 * Loop thread only.
 */
int rl_loop_free(struct rl_loop *loop);

/**
 * Returns the name of the loop's backend, `"io_uring"` or `"epoll"` (a static string the caller
 * must not free), or NULL for a null, stale or foreign handle. Thread-safe.
 */
const char *rl_loop_backend(const struct rl_loop *loop);

/**
 * Sets how long an accept (`rl_op_accept`, `rl_accept`) pauses after a resource error
 * (`-EMFILE`, `-ENFILE`, `-ENOBUFS`, `-ENOMEM`), as asyncio's `ACCEPT_RETRY_DELAY`. The error is
 * delivered once, with `RL_EV_MORE` (the accept stays active); the listening socket is then left
 * alone for `delay_ns` before accepting is tried again, so a process whose fd table stays full
 * gets one such event per delay instead of a busy loop. The default is 1 s (1000000000);
 * 0 retries at the next poll (no back-off). An accept already paused keeps its deadline.
 * Per-connection errors (`-ECONNABORTED`, `-EPERM`, ...) never pause accepting.
 *
 * Returns 0, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 */
int rl_set_accept_retry(struct rl_loop *loop, uint64_t delay_ns);

/**
 * Returns the loop's clock, CLOCK_MONOTONIC in nanoseconds (the clock of `rl_call_at` and
 * `rl_op_timer` deadlines), or 0 for a null, stale or foreign handle. Thread-safe.
 */
uint64_t rl_now(const struct rl_loop *loop);

/**
 * Waits for events and writes up to `capacity` of them to `events`.
 *
 * `timeout_ns < 0` waits until at least one event is ready, `0` does not wait, `> 0` waits at
 * most that long. Submissions made since the last call go to the kernel in the same system call
 * where the backend allows it. Events that do not fit stay queued for the next call; nothing is
 * dropped. The receive buffers named by the previous call's `RL_EV_BUFFER` events are recycled
 * by this call: read (or copy) their bytes before calling `rl_poll` again.
 *
 * If callback-mode work is registered on the loop (timers, readers, futures, ...), this call
 * dispatches it and returns only raw-mode events and the `RL_WAKE_TOKEN` event.
 *
 * Returns the number of events written (0 on timeout or signal interruption), `-EINVAL` when
 * `events` is NULL (or not 8-byte aligned) with a nonzero `capacity`, `RL_EHANDLE`, `RL_ESTATE`
 * when another thread is using the loop or when called from a callback of this loop, or
 * `-errno`.
 *
 * Loop thread only. Blocking here holds no lock another thread's thread-safe call needs, so
 * bindings may call it with their interpreter lock released (Python: through `ctypes.CDLL`).
 *
 * # Safety
 * `events` is valid for writing `capacity` records (or `capacity` is 0).
 */
int rl_poll(struct rl_loop *loop, int64_t timeout_ns, struct rl_event *events, uint32_t capacity);

/**
 * Watches `fd` for readiness: a persistent, level-triggered watch (asyncio's add_reader /
 * add_writer). While `fd` is ready, each `rl_poll` returns one event with `token`, `result` =
 * the ready bits of `interest`, and `RL_EV_MORE`; until the watch is cancelled with
 * `rl_op_cancel`.
 *
 * `interest` is `RL_READABLE`, `RL_WRITABLE` or both. Several watches may exist on one fd.
 * Stores the op id in `*op_out` when `op_out` is not NULL. Returns 0, `-EINVAL` (bad interest or
 * reserved token), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, or `-errno`. The fd stays the caller's.
 *
 * Loop thread only.
 *
 * # Safety
 * `op_out` is NULL or writable.
 */
int rl_op_watch(struct rl_loop *loop, int fd, uint32_t interest, uint64_t token, uint64_t *op_out);

/**
 * Starts a multishot receive on the stream socket or pipe `fd` into loop-owned buffers.
 *
 * A pipe is read without ever blocking the loop, whatever its `O_NONBLOCK`. On the io_uring
 * backend pipes need Linux 6.7; before that, and for other kinds of files, the receive ends with
 * `-ENOTSOCK`.
 *
 * Each event has `RL_EV_BUFFER`, `aux` = the buffer id and `result` = the byte count; the bytes
 * are at `base + aux * buffer_size` (see `rl_buffers`) until the next `rl_poll` (or until
 * `rl_buffer_release`, see `rl_buffer_keep`). Every event but the last has `RL_EV_MORE`; the
 * last has `result` 0 (end of stream) or `-errno`, or comes after `rl_op_cancel`. When the loop
 * runs out of buffers the receive pauses and resumes after the next `rl_poll`: no `-ENOBUFS`, no
 * lost bytes.
 *
 * Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL`, `-EBADF`, `RL_EHANDLE`,
 * `RL_ESTATE`, `-errno`. The fd stays the caller's. Loop thread only.
 *
 * # Safety
 * `op_out` is NULL or writable.
 */
int rl_op_recv(struct rl_loop *loop, int fd, uint64_t token, uint64_t *op_out);

/**
 * Starts a multishot datagram receive on the `SOCK_DGRAM` socket `fd` (UDP, Unix datagram) into
 * loop-owned buffers: one event per datagram, with `RL_EV_MORE | RL_EV_BUFFER | RL_EV_DATAGRAM`
 * and `aux` = the buffer id. In the buffer at `base + aux * buffer_size` (see `rl_buffers`):
 * the sender's address at `RL_DGRAM_NAME` (its length a `uint32_t` at `RL_DGRAM_NAME_LEN`), and
 * `result` payload bytes at `RL_DGRAM_PAYLOAD` (0 for an empty datagram). A datagram longer
 * than `buffer_size - RL_DGRAM_PAYLOAD` is cut short: its full length is the `uint32_t` at
 * `RL_DGRAM_PAYLOAD_LEN` and `MSG_TRUNC` is set in the one at `RL_DGRAM_MSG_FLAGS`. Valid until
 * the next `rl_poll`, as other receive buffers (`rl_buffer_keep` keeps one).
 *
 * An error (`-ECONNREFUSED` after an ICMP error on a connected socket, ...) is the last event,
 * without `RL_EV_MORE`: start a new receive to go on. Datagrams the op had received but not
 * delivered when it is cancelled are dropped with it. When the loop runs out of buffers the
 * receive pauses until the next `rl_poll` (datagrams wait in the socket, as the kernel keeps
 * them).
 *
 * Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (reserved token, or
 * buffers of `RL_DGRAM_PAYLOAD` bytes or less), `-EBADF`, `-ENOTSOCK`, `-EOPNOTSUPP` (not a
 * datagram socket), `RL_EHANDLE`, `RL_ESTATE`, `-errno`. The fd stays the caller's. Loop thread
 * only.
 *
 * # Safety
 * `op_out` is NULL or writable.
 */
int rl_op_recvmsg(struct rl_loop *loop, int fd, uint64_t token, uint64_t *op_out);

/**
 * One receive of at most `max_len` bytes from the stream socket `fd` into a loop-owned buffer
 * (`max_len` 0 means the loop's buffer size; larger values are capped at it). The receive goes
 * to the kernel with the next `rl_poll`; no readiness round trip.
 *
 * Exactly one event carries `token`, never with `RL_EV_MORE`: `result > 0` is the byte count,
 * with `RL_EV_BUFFER` and `aux` = the buffer id (bytes at `base + aux * buffer_size`, see
 * `rl_buffers`, until the next `rl_poll` unless kept with `rl_buffer_keep`); `result` 0 is end
 * of stream; `result < 0` is `-errno`, `-ECANCELED` after `rl_op_cancel` / `rl_op_cancel_token`
 * (that event is queued by the cancel itself). When the loop runs out of buffers the receive
 * waits for the next `rl_poll`: no `-ENOBUFS`, no lost bytes.
 *
 * Lossless with cancels: bytes a cancelled receive on this socket (`rl_op_recv` or
 * `rl_op_recv_once`) had already taken from it come first, at most `max_len` of them (the rest
 * stays for the next receive, in order); such a receive may complete before `rl_poll`, its id
 * already stale. Bytes the kernel hands over after the cancel are kept the same way. Once its
 * event is queued the op is over: `rl_op_cancel` then returns `-ENOENT` and the event, bytes
 * included, is still delivered. Run one receive at a time per socket: two at once get the bytes
 * in an unspecified split.
 *
 * Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (reserved token),
 * `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. An fd the kernel cannot receive from completes
 * with its error as the event (`-ENOTSOCK`; `-ENOTCONN` for a listening socket, on the epoll
 * backend once a connection is pending). The fd stays the caller's. Loop thread only.
 *
 * # Safety
 * `op_out` is NULL or writable.
 */
int rl_op_recv_once(struct rl_loop *loop,
                    int fd,
                    uint32_t max_len,
                    uint64_t token,
                    uint64_t *op_out);

/**
 * Sends `len` bytes from `buf` on the stream socket `fd`. One event: the total bytes sent (the
 * loop finishes short writes itself), or `-errno` if the send failed (bytes sent before the
 * error are not reported separately).
 *
 * The library reads `buf` until that event has been returned by `rl_poll` (also after
 * `rl_op_cancel`, which still delivers the one final event, `-ECANCELED` or a count): the
 * caller keeps it alive and unchanged until then. `len` 0 completes with 0.
 *
 * Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (NULL `buf` with nonzero
 * `len`, reserved token), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
 *
 * # Safety
 * `buf..buf+len` stays readable and unmodified until the op's event; `op_out` is NULL or writable.
 */
int rl_op_send(struct rl_loop *loop,
               int fd,
               const void *buf,
               size_t len,
               uint64_t token,
               uint64_t *op_out);

/**
 * Sends one datagram of `len` bytes from `buf` on the datagram socket `fd` (UDP, Unix
 * datagram) to the address `sockaddr` (`addrlen` bytes, copied before return), or to the
 * socket's connected peer when `sockaddr` is NULL and `addrlen` 0: `sendto(2)` through the
 * loop. One event: the bytes sent (a datagram goes whole or not at all) or `-errno`
 * (`-EDESTADDRREQ` without an address on an unconnected socket, `-EMSGSIZE`, `-ECONNREFUSED`
 * after an ICMP error on a connected socket, `-ECANCELED` after `rl_op_cancel`). `len` 0 sends
 * an empty datagram.
 *
 * Unlike `rl_op_send`, whose sends on one fd wait for each other, datagram sends go to the
 * kernel with the next `rl_poll` without waiting for earlier ones: many can be in flight on one
 * socket, and the kernel sends them in call order while the socket's send buffer has room (past
 * that, UDP does not promise order). A datagram the socket cannot take now waits: for
 * writability, or in pauses of 10 ms where polling cannot tell. On a stream socket use
 * `rl_op_send`: this one does not finish a short send.
 *
 * The library reads `buf` until the op's event has been returned by `rl_poll` (also after
 * `rl_op_cancel`): the caller keeps it alive and unchanged until then.
 *
 * Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (NULL `buf` with nonzero
 * `len`; malformed address, or NULL `sockaddr` with nonzero `addrlen`; reserved token),
 * `-EMSGSIZE` (`len` above `INT32_MAX`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop
 * thread only.
 *
 * # Safety
 * `buf..buf+len` stays readable and unmodified until the op's event; `sockaddr` is NULL or
 * points to `addrlen` readable bytes; `op_out` is NULL or writable.
 */
int rl_op_sendto(struct rl_loop *loop,
                 int fd,
                 const void *buf,
                 size_t len,
                 const void *sockaddr,
                 uint32_t addrlen,
                 uint64_t token,
                 uint64_t *op_out);

/**
 * Starts a multishot accept on the listening socket `fd`: one event per connection with
 * `result` = the new fd (non-blocking, close-on-exec, owned by the caller from then on) and
 * `RL_EV_MORE`; a final event without `RL_EV_MORE` carries `-errno` if accepting stops.
 * Per-connection errors (`-ECONNABORTED`, ...) and resource errors (`-EMFILE`, `-ENFILE`,
 * `-ENOBUFS`, `-ENOMEM`) come with `RL_EV_MORE`: accepting goes on, after a resource error only
 * once the back-off delay has passed (`rl_set_accept_retry`, default 1 s).
 *
 * Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL`, `-EBADF`, `RL_EHANDLE`,
 * `RL_ESTATE`, `-errno`. The listening fd stays the caller's. Loop thread only.
 *
 * # Safety
 * `op_out` is NULL or writable.
 */
int rl_op_accept(struct rl_loop *loop, int fd, uint64_t token, uint64_t *op_out);

/**
 * Connects the non-blocking socket `fd` to the address `sockaddr` (`addrlen` bytes, copied
 * before return). One event: 0 or `-errno` (e.g. `-ECONNREFUSED`).
 *
 * Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (NULL or malformed
 * address), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
 *
 * # Safety
 * `sockaddr` points to `addrlen` readable bytes; `op_out` is NULL or writable.
 */
int rl_op_connect(struct rl_loop *loop,
                  int fd,
                  const void *sockaddr,
                  uint32_t addrlen,
                  uint64_t token,
                  uint64_t *op_out);

/**
 * Closes `fd` after cancelling every operation the loop has on it. One event: 0 or `-errno`.
 *
 * Ownership of `fd` passes to the loop once the handle, token and fd have been checked (that is,
 * unless the call returns `RL_EHANDLE`, `RL_ESTATE`, `-EINVAL` or `-EBADF`): from then on the
 * caller must not use or close it, even if the call returns another error (the fd is closed
 * then too).
 *
 * Returns 0 and the op id in `*op_out` (when not NULL), or an error as above. Loop thread only.
 *
 * # Safety
 * `fd` is an open fd the caller owns and gives away; `op_out` is NULL or writable.
 */
int rl_op_close(struct rl_loop *loop, int fd, uint64_t token, uint64_t *op_out);

/**
 * Delivers signal `signo` as events (`result` = signo, `RL_EV_MORE`) through a signalfd: the
 * signal is blocked in the calling thread (and threads it creates afterwards) until the op is
 * cancelled with `rl_op_cancel`. Block the signal in every other thread of the process too, or
 * the kernel may deliver it to one of them instead.
 *
 * Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (bad signal number,
 * SIGKILL/SIGSTOP, reserved token), `-EEXIST` (signal already handled by this loop),
 * `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
 *
 * # Safety
 * `op_out` is NULL or writable.
 */
int rl_op_signal(struct rl_loop *loop, int signo, uint64_t token, uint64_t *op_out);

/**
 * A one-shot timer at `deadline_ns` on the loop clock (`rl_now`). Its event has `result` 0 and
 * no flags. A deadline in the past fires on the next `rl_poll`.
 *
 * Stores the timer id in `*timer_out` (when not NULL); cancel with `rl_timer_cancel`. Returns 0,
 * `-EINVAL` (reserved token), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 *
 * # Safety
 * `timer_out` is NULL or writable.
 */
int rl_op_timer(struct rl_loop *loop, uint64_t deadline_ns, uint64_t token, uint64_t *timer_out);

/**
 * Cancels one operation by the id an `rl_op_*` call returned.
 *
 * Takes effect before it returns: no event of the op is delivered afterwards, except for a send,
 * which delivers exactly one final event (`-ECANCELED` or the bytes sent) once the kernel no
 * longer reads its buffer, and an `rl_op_recv_once`, whose one event (`-ECANCELED`) is queued by
 * the cancel. Returns 0, `-ENOENT` for an op that already ended or was cancelled
 * (harmless: ids carry a generation and never name another op), `RL_EHANDLE`, `RL_ESTATE`.
 *
 * Loop thread only.
 */
int rl_op_cancel(struct rl_loop *loop, uint64_t op);

/**
 * Cancels every live operation carrying `token` (timers not included), with the same guarantees
 * as `rl_op_cancel`. Returns how many were cancelled (0 is not an error), or `-EINVAL` for a
 * reserved token, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 */
int rl_op_cancel_token(struct rl_loop *loop, uint64_t token);

/**
 * Describes the loop's receive-buffer region: buffer `id` (the `aux` of an `RL_EV_BUFFER` event)
 * starts at `*base + id * *buffer_size`. The region never moves for the loop's lifetime, so a
 * binding may map it once. Each out pointer may be NULL.
 *
 * Returns 0, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only. The region belongs to the loop and is
 * freed by `rl_loop_free`.
 *
 * # Safety
 * Each out pointer is NULL or writable.
 */
int rl_buffers(struct rl_loop *loop,
               const uint8_t **base,
               uint32_t *buffer_size,
               uint32_t *buffer_count);

/**
 * Keeps receive buffer `buffer_id` — the `aux` of an `RL_EV_BUFFER` event the last `rl_poll`
 * returned — beyond the next `rl_poll`: its bytes stay valid and unchanged until
 * `rl_buffer_release`, so they can be sent on without a copy (`rl_op_send` straight from the
 * buffer, released at the send's event: an echo, a proxy). Without this, a buffer's bytes are
 * valid only until the next `rl_poll`.
 *
 * A kept buffer is out of the loop's pool meanwhile: keeping many makes receives wait for
 * buffers (no bytes are lost, see `rl_op_recv`). A buffer still kept when the loop is freed is
 * freed with it.
 *
 * Returns 0, `-EINVAL` (an id past the pool), `-ENOENT` (a buffer the last `rl_poll` did not
 * return, or one already kept), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 */
int rl_buffer_keep(struct rl_loop *loop, uint32_t buffer_id);

/**
 * Gives back a buffer kept with `rl_buffer_keep`: the next `rl_poll` returns it to the pool, and
 * its bytes must not be used after that.
 *
 * Returns 0, `-EINVAL` (an id past the pool), `-ENOENT` (a buffer that is not kept),
 * `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
 */
int rl_buffer_release(struct rl_loop *loop, uint32_t buffer_id);

/**
 * Wakes the loop if it is blocked in `rl_poll` or `rl_run`. Wakes coalesce: any number of calls
 * between two polls produce one `RL_WAKE_TOKEN` event in raw mode (callback mode consumes it
 * internally). A wake is never lost.
 *
 * Returns 0 or `RL_EHANDLE`. **Thread-safe**; never blocks.
 */
int rl_wake(struct rl_loop *loop);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* RINGLOOP_H */
