//! Callback mode: C function pointers plus `void *data`, dispatched by the loop's `rl_run` (and
//! by `rl_poll` when both modes share a loop).
//!
//! Every registration becomes a `RawCallback` holding the C function pointer and the caller's
//! `data`, with [`call_c`] as its trampoline: registering allocates nothing per operation.

use std::ffi::{c_int, c_void};

use ringloop::callback::{EventLoop, Outcome, RawCallback, RawWork, RunMode, TimerHandle};
use ringloop::TimerId;

use crate::error;
use crate::future::{register_future, rl_future};
use crate::guard::guard;
use crate::handle::{lookup, rl_loop, with_loop, write_out, LoopEntry};
use crate::raw::{optional_sockaddr_from_c, sockaddr_from_c};
use crate::{RL_EV_MORE, RL_RUN_DEFAULT, RL_RUN_NOWAIT, RL_RUN_ONCE};

/// What a callback is told. Valid only during the callback.
///
/// | registered with | `result` | `fd` | `bytes`/`nbytes` |
/// |---|---|---|---|
/// | `rl_call_soon*`, `rl_call_later`, `rl_call_at` | 0 | -1 | NULL/0 |
/// | `rl_add_reader`/`rl_add_writer` | ready bits (`RL_READABLE`/`RL_WRITABLE`) | the fd | NULL/0 |
/// | `rl_recv` | byte count, 0 = end of stream, or `-errno` | the socket | the bytes |
/// | `rl_recvmsg` | payload bytes (0: an empty datagram) or `-errno` | the socket | the payload (`source`: the sender) |
/// | `rl_accept` | the new fd (the callback owns it) or `-errno` | the listening socket | NULL/0 |
/// | `rl_send` | total bytes sent or `-errno` | the socket | NULL/0 |
/// | `rl_sendto` | bytes sent or `-errno` | the socket | NULL/0 |
/// | `rl_connect`, `rl_close` | 0 or `-errno` | the socket | NULL/0 |
/// | `rl_signal_start` | the signal number | -1 | NULL/0 |
/// | `rl_future_add_done_callback` | 0 (done; `value` = the result), the future's error code, or `-ECANCELED` | -1 | NULL/0 |
///
/// When a loop is freed with a callback still registered (a pending timer or call, a watch, a
/// live op, a signal handler), that callback is called one last time with `result ==
/// -ECANCELED`, so the caller can release `data`. Callbacks removed with `rl_timer_cancel`,
/// `rl_cancel`, `rl_remove_reader`/`rl_remove_writer` or `rl_signal_stop` are not called again.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rl_outcome {
    /// See the table above.
    pub result: i32,
    /// The fd the operation is about, or -1.
    pub fd: i32,
    /// Received bytes (`rl_recv` only), else NULL. Owned by the loop; valid during the callback.
    pub bytes: *const u8,
    /// Number of bytes at `bytes`.
    pub nbytes: usize,
    /// `RL_EV_MORE` when the registration stays active and will be called again.
    pub flags: u32,
    /// The result value of a future (done callbacks), else 0.
    pub value: u64,
    /// The sender of a datagram (`rl_recvmsg` only): a `struct sockaddr` of `source_len` bytes,
    /// valid during the callback; else NULL. (Added in 0.6.0, after the fields above, which
    /// keep their places.)
    pub source: *const c_void,
    /// Length of `source` in bytes (0 without one).
    pub source_len: u32,
}

/// A callback: called on the loop thread with the loop, what happened, and the `data` it was
/// registered with. It may call any loop-thread function on `loop` except `rl_run`, `rl_poll`
/// and `rl_loop_free` (those return `RL_ESTATE`), and must not unwind (no C++ exceptions, no
/// `longjmp` out of it).
pub type rl_callback = Option<
    unsafe extern "C" fn(r#loop: *mut rl_loop, outcome: *const rl_outcome, data: *mut c_void),
>;

/// Work for `rl_run_in_thread`, run on a pool thread: returns 0 and stores the future's result in
/// `*value`, or returns a negative error code that becomes the future's error.
pub type rl_work_fn = Option<unsafe extern "C" fn(data: *mut c_void, value: *mut u64) -> c_int>;

type CCallback = unsafe extern "C" fn(*mut rl_loop, *const rl_outcome, *mut c_void);
type CWork = unsafe extern "C" fn(*mut c_void, *mut u64) -> c_int;

/// Callback-mode timer ids carry this bit, raw-mode timer ids (`rl_op_timer`) do not: one
/// `rl_timer_cancel` serves both. The loop's timer handles never use it (their generation has 28
/// bits).
const CALLBACK_TIMER_BIT: u64 = 1 << 63;

/// The C value of a raw-mode timer id.
pub(crate) fn raw_timer_id(timer: TimerId) -> u64 {
    timer.into_raw()
}

fn callback_timer_id(timer: TimerHandle) -> u64 {
    debug_assert_eq!(timer.into_raw() & CALLBACK_TIMER_BIT, 0);
    timer.into_raw() | CALLBACK_TIMER_BIT
}

/// The trampoline of every C callback: `data` is the caller's word, `extra` the C function.
///
/// # Safety
/// `extra` is a `CCallback` cast to a pointer (see [`raw_callback`]); `lp` is a loop created by
/// `rl_loop_new`, whose context is its registry entry.
unsafe fn call_c(lp: &mut EventLoop, outcome: &Outcome<'_>, data: *mut c_void, extra: *mut c_void) {
    // SAFETY: `raw_callback` stored a non-null `CCallback` in `extra`; function and data pointers
    // have the same size and representation on every platform this library builds for.
    let cb = unsafe { std::mem::transmute::<*mut c_void, CCallback>(extra) };
    let (result, value) = match outcome.future {
        Some(future) if outcome.result == 0 => match future.result() {
            Some(Ok(value)) => (0, value),
            Some(Err(code)) => (code, 0),
            None => (-libc::ECANCELED, 0),
        },
        _ => (outcome.result, 0),
    };
    let c_outcome = rl_outcome {
        result,
        fd: outcome.fd,
        bytes: if outcome.bytes.is_empty() {
            std::ptr::null()
        } else {
            outcome.bytes.as_ptr()
        },
        nbytes: outcome.bytes.len(),
        flags: if outcome.more { RL_EV_MORE } else { 0 },
        value,
        source: if outcome.source.is_empty() {
            std::ptr::null()
        } else {
            outcome.source.as_ptr().cast()
        },
        source_len: outcome.source.len() as u32,
    };
    let entry = lp.context().cast_const().cast::<LoopEntry>();
    debug_assert!(
        !entry.is_null(),
        "every C ABI loop has its entry as context"
    );
    // SAFETY: `rl_loop_new` set the context to the address of the registry entry that owns this
    // loop; the entry outlives the loop it contains.
    let entry = unsafe { &*entry };
    let lent: *mut EventLoop = lp;
    // SAFETY: callbacks run on the loop's owner thread. Nested library calls made by `cb` use
    // `lent` (derived from the reference the loop lent us) until it is reset below.
    let previous = unsafe { entry.swap_current(lent) };
    // SAFETY: the C caller registered `cb` with `data` and promised it may be called on the loop
    // thread while registered (the header's contract); `c_outcome` lives across the call.
    unsafe { cb(entry.c_handle(), &c_outcome, data) };
    // SAFETY: as above.
    unsafe { entry.swap_current(previous) };
}

/// Bundles a C callback for the loop; `-EINVAL` when `cb` is NULL.
fn raw_callback(cb: rl_callback, data: *mut c_void) -> Result<RawCallback, c_int> {
    let cb = cb.ok_or(-libc::EINVAL)?;
    // SAFETY: `call_c` calls `cb(loop, outcome, data)` on the loop thread only, which is what the
    // header promises C callers; keeping `data` valid while registered is the caller's part.
    Ok(unsafe { RawCallback::new(call_c, data, cb as *mut c_void) })
}

/// The trampoline of `rl_run_in_thread` work.
///
/// # Safety
/// `extra` is a `CWork` cast to a pointer.
unsafe fn run_c_work(data: *mut c_void, extra: *mut c_void) -> Result<u64, i32> {
    // SAFETY: `rl_run_in_thread` stored a non-null `CWork` in `extra`.
    let work = unsafe { std::mem::transmute::<*mut c_void, CWork>(extra) };
    let mut value = 0u64;
    // SAFETY: the C caller promised `work(data, &value)` may run once on a pool thread.
    let rc = unsafe { work(data, &mut value) };
    if rc < 0 {
        Err(rc)
    } else {
        Ok(value)
    }
}

/// Runs `body`, which registers a callback-mode operation, and writes the op id out.
fn register(
    r#loop: *mut rl_loop,
    cb: rl_callback,
    data: *mut c_void,
    id_out: *mut u64,
    body: impl FnOnce(&mut EventLoop, RawCallback) -> std::io::Result<u64>,
) -> c_int {
    with_loop(r#loop, |lp| {
        let cb = match raw_callback(cb, data) {
            Ok(cb) => cb,
            Err(code) => return code,
        };
        match body(lp, cb) {
            Ok(id) => {
                // SAFETY: `id_out` is NULL or writable (the caller's promise, stated per function).
                unsafe { write_out(id_out, id) };
                0
            }
            Err(e) => error::from_io(&e),
        }
    })
}

fn check_fd(fd: c_int) -> std::io::Result<c_int> {
    if fd < 0 {
        Err(std::io::Error::from_raw_os_error(libc::EBADF))
    } else {
        Ok(fd)
    }
}

/// Runs the loop's callbacks.
///
/// `mode`: `RL_RUN_DEFAULT` runs until `rl_stop` or until nothing keeps the loop alive (pending
/// callbacks and timers, watches, live operations, signal handlers, pending futures with done
/// callbacks, thread-pool jobs); `RL_RUN_ONCE` waits until at least one callback ran, then
/// returns; `RL_RUN_NOWAIT` runs one iteration without waiting. Raw-mode events that arrive
/// meanwhile are kept for the next `rl_poll`.
///
/// Returns 1 when something still keeps the loop alive, 0 when nothing does, `-EINVAL` for an
/// unknown mode, `RL_ESTATE` when called from a callback of this loop (or while another thread
/// uses it), `RL_EHANDLE`, or `-errno` from the kernel (the loop stays usable).
///
/// Loop thread only.
#[no_mangle]
pub extern "C" fn rl_run(r#loop: *mut rl_loop, mode: c_int) -> c_int {
    let mode = match mode {
        RL_RUN_DEFAULT => RunMode::Default,
        RL_RUN_ONCE => RunMode::Once,
        RL_RUN_NOWAIT => RunMode::NoWait,
        _ => return -libc::EINVAL,
    };
    with_loop(r#loop, |lp| match lp.run(mode) {
        Ok(alive) => c_int::from(alive),
        Err(e) => error::from_io(&e),
    })
}

/// Asks `rl_run` to return after its current iteration (a loop that is not running returns after
/// the first iteration of its next `rl_run`). Returns 0 or `RL_EHANDLE`.
///
/// **Thread-safe**; wakes the loop if it is waiting.
#[no_mangle]
pub extern "C" fn rl_stop(r#loop: *mut rl_loop) -> c_int {
    guard(|| match lookup(r#loop) {
        Ok(entry) => {
            entry.remote.stop();
            0
        }
        Err(code) => code,
    })
}

/// Calls `cb(loop, outcome, data)` in the loop's next iteration; calls run in the order they were
/// made (`outcome->result` is 0).
///
/// Returns 0, `-EINVAL` (NULL `cb`), `RL_EHANDLE`, `RL_ESTATE` (loop closed or used by another
/// thread). Loop thread only; use `rl_call_soon_threadsafe` from other threads.
#[no_mangle]
pub extern "C" fn rl_call_soon(r#loop: *mut rl_loop, cb: rl_callback, data: *mut c_void) -> c_int {
    register(r#loop, cb, data, std::ptr::null_mut(), |lp, cb| {
        lp.call_soon_raw(cb).map(|()| 0)
    })
}

/// `rl_call_soon` from any thread: queues the call and wakes the loop. Calls from one thread run
/// in the order they were made. `data` must be usable on the loop thread.
///
/// Returns 0, `-EINVAL` (NULL `cb`), `RL_EHANDLE` (the loop was freed), or `RL_ESTATE` (the loop
/// is being freed: `cb` will not be called). If the loop is freed after the call was queued but
/// before it ran, `cb` is called during `rl_loop_free` with `-ECANCELED`.
///
/// **Thread-safe**.
#[no_mangle]
pub extern "C" fn rl_call_soon_threadsafe(
    r#loop: *mut rl_loop,
    cb: rl_callback,
    data: *mut c_void,
) -> c_int {
    guard(|| {
        let entry = match lookup(r#loop) {
            Ok(entry) => entry,
            Err(code) => return code,
        };
        let cb = match raw_callback(cb, data) {
            Ok(cb) => cb,
            Err(code) => return code,
        };
        match entry.remote.call_soon_threadsafe_raw(cb) {
            Ok(()) => 0,
            Err(e) => error::from_io(&e),
        }
    })
}

/// Calls `cb` once, `delay_ns` nanoseconds after the loop's time (cached at the start of each
/// iteration, as `rl_now` reads it then). Timers run in deadline order, ties in the order they
/// were scheduled.
///
/// Stores the timer id in `*timer_out` (when not NULL) for `rl_timer_cancel`. Returns 0,
/// `-EINVAL` (NULL `cb`), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
///
/// # Safety
/// `timer_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_call_later(
    r#loop: *mut rl_loop,
    delay_ns: u64,
    cb: rl_callback,
    data: *mut c_void,
    timer_out: *mut u64,
) -> c_int {
    register(r#loop, cb, data, timer_out, |lp, cb| {
        lp.call_later_raw(delay_ns, cb).map(callback_timer_id)
    })
}

/// Calls `cb` once, when the loop's time reaches `deadline_ns` (on the `rl_now` clock; a deadline
/// in the past runs in the next iteration). Timers run in deadline order, ties in the order they
/// were scheduled.
///
/// Stores the timer id in `*timer_out` (when not NULL) for `rl_timer_cancel`. Returns 0,
/// `-EINVAL` (NULL `cb`), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
///
/// # Safety
/// `timer_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_call_at(
    r#loop: *mut rl_loop,
    deadline_ns: u64,
    cb: rl_callback,
    data: *mut c_void,
    timer_out: *mut u64,
) -> c_int {
    register(r#loop, cb, data, timer_out, |lp, cb| {
        lp.call_at_raw(deadline_ns, cb).map(callback_timer_id)
    })
}

/// Cancels a timer from `rl_call_later`, `rl_call_at` or `rl_op_timer`.
///
/// Returns 1 when the timer was pending (its callback will not be called, its event not
/// delivered), 0 when it already fired or was cancelled (harmless: ids carry a generation and
/// never name another timer), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
#[no_mangle]
pub extern "C" fn rl_timer_cancel(r#loop: *mut rl_loop, timer: u64) -> c_int {
    with_loop(r#loop, |lp| {
        let cancelled = if timer & CALLBACK_TIMER_BIT != 0 {
            lp.cancel_timer(TimerHandle::from_raw(timer & !CALLBACK_TIMER_BIT))
        } else {
            lp.reactor_mut().cancel_timer(TimerId::from_raw(timer))
        };
        c_int::from(cancelled)
    })
}

/// Calls `cb` whenever `fd` is readable: persistent and level-triggered (once per iteration while
/// readable; hang-up and error count as readable), as asyncio's `add_reader`. `outcome->result`
/// is the ready mask. Adding a reader to an fd that has one replaces the callback (the old one is
/// not called again). The fd stays the caller's; remove the reader before closing it yourself.
///
/// Returns 0, `-EINVAL` (NULL `cb`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno` (e.g. `-EPERM`
/// for a regular file under epoll). Loop thread only.
#[no_mangle]
pub extern "C" fn rl_add_reader(
    r#loop: *mut rl_loop,
    fd: c_int,
    cb: rl_callback,
    data: *mut c_void,
) -> c_int {
    register(r#loop, cb, data, std::ptr::null_mut(), |lp, cb| {
        lp.add_reader_raw(check_fd(fd)?, cb).map(|()| 0)
    })
}

/// Removes the reader of `fd`: returns 1 if there was one (its callback is not called again, even
/// for readiness already collected in this iteration), 0 if not, `RL_EHANDLE`, `RL_ESTATE`.
/// Loop thread only.
#[no_mangle]
pub extern "C" fn rl_remove_reader(r#loop: *mut rl_loop, fd: c_int) -> c_int {
    with_loop(r#loop, |lp| c_int::from(fd >= 0 && lp.remove_reader(fd)))
}

/// Calls `cb` whenever `fd` is writable: persistent and level-triggered (error counts as
/// writable), as asyncio's `add_writer`. `outcome->result` is the ready mask. Adding a writer to
/// an fd that has one replaces the callback. The fd stays the caller's.
///
/// Returns 0, `-EINVAL` (NULL `cb`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread
/// only.
#[no_mangle]
pub extern "C" fn rl_add_writer(
    r#loop: *mut rl_loop,
    fd: c_int,
    cb: rl_callback,
    data: *mut c_void,
) -> c_int {
    register(r#loop, cb, data, std::ptr::null_mut(), |lp, cb| {
        lp.add_writer_raw(check_fd(fd)?, cb).map(|()| 0)
    })
}

/// Removes the writer of `fd`: returns 1 if there was one (its callback is not called again), 0
/// if not, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
#[no_mangle]
pub extern "C" fn rl_remove_writer(r#loop: *mut rl_loop, fd: c_int) -> c_int {
    with_loop(r#loop, |lp| c_int::from(fd >= 0 && lp.remove_writer(fd)))
}

/// Accepts connections on the listening socket `fd` (multishot): `cb` is called once per
/// connection with `outcome->result` = the new socket (non-blocking, close-on-exec; the callback
/// owns it and must close it) and `RL_EV_MORE`, and a last time without `RL_EV_MORE` with
/// `-errno` if accepting stops. Per-connection errors (`-ECONNABORTED`, ...) and resource errors
/// (`-EMFILE`, `-ENFILE`, `-ENOBUFS`, `-ENOMEM`) come with `RL_EV_MORE`: accepting goes on, after
/// a resource error only once the back-off delay has passed (`rl_set_accept_retry`, default 1 s).
///
/// Stores the op id in `*op_out` (when not NULL) for `rl_cancel`. Returns 0, `-EINVAL`, `-EBADF`,
/// `RL_EHANDLE`, `RL_ESTATE`, `-errno`. The listening fd stays the caller's. Loop thread only.
///
/// # Safety
/// `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_accept(
    r#loop: *mut rl_loop,
    fd: c_int,
    cb: rl_callback,
    data: *mut c_void,
    op_out: *mut u64,
) -> c_int {
    register(r#loop, cb, data, op_out, |lp, cb| {
        lp.accept_raw(check_fd(fd)?, cb).map(|op| op.into_raw())
    })
}

/// Receives from the stream socket or pipe `fd` (multishot; pipes as `rl_op_recv` says) into
/// loop-owned buffers: `cb` gets each chunk in `outcome->bytes`/`nbytes` (valid only during the
/// call: copy them, or keep their buffer with `rl_recv_keep`) with `RL_EV_MORE`, then a last call
/// without `RL_EV_MORE`: `result` 0 at end of stream or `-errno`. When the loop's buffers run
/// out, receiving pauses until they are recycled: no data is lost.
///
/// Stores the op id in `*op_out` (when not NULL) for `rl_cancel`. Returns 0, `-EINVAL`, `-EBADF`,
/// `RL_EHANDLE`, `RL_ESTATE`, `-errno`. The fd stays the caller's. Loop thread only.
///
/// # Safety
/// `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_recv(
    r#loop: *mut rl_loop,
    fd: c_int,
    cb: rl_callback,
    data: *mut c_void,
    op_out: *mut u64,
) -> c_int {
    register(r#loop, cb, data, op_out, |lp, cb| {
        lp.recv_raw(check_fd(fd)?, cb).map(|op| op.into_raw())
    })
}

/// Receives datagrams on the `SOCK_DGRAM` socket `fd` (UDP, Unix datagram; multishot, as
/// `rl_op_recvmsg`): `cb` gets each datagram with `RL_EV_MORE`, its payload in
/// `outcome->bytes`/`nbytes` (`result` = `nbytes`; 0 for an empty datagram, when `bytes` is NULL)
/// and its sender in `outcome->source`/`source_len` (a `struct sockaddr`), both valid only
/// during the call (copy them: `rl_recv_keep` does not apply); then a last call without
/// `RL_EV_MORE` with the `-errno` that ended the receive (`-ECONNREFUSED` after an ICMP error
/// on a connected socket, ...): register again to go on. A datagram longer than
/// `buffer_size - RL_DGRAM_PAYLOAD` is cut short, as `recvmsg` cuts it. After `rl_cancel`,
/// datagrams received and not yet delivered are dropped.
///
/// Stores the op id in `*op_out` (when not NULL) for `rl_cancel`. Returns 0, `-EINVAL`,
/// `-EBADF`, `-ENOTSOCK`, `-EOPNOTSUPP` (not a datagram socket), `RL_EHANDLE`, `RL_ESTATE`,
/// `-errno`. The fd stays the caller's. Loop thread only.
///
/// # Safety
/// `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_recvmsg(
    r#loop: *mut rl_loop,
    fd: c_int,
    cb: rl_callback,
    data: *mut c_void,
    op_out: *mut u64,
) -> c_int {
    register(r#loop, cb, data, op_out, |lp, cb| {
        lp.recvmsg_raw(check_fd(fd)?, cb).map(|op| op.into_raw())
    })
}

/// Keeps the bytes an `rl_recv` or `rl_recvmsg` callback got beyond the callback: called from
/// that callback with its `outcome`, it returns the id of the loop buffer holding them, and they
/// stay valid and unchanged until `rl_buffer_release(loop, id)`. So they can be sent on without a
/// copy: `rl_send` (or, for a datagram, `rl_sendto`, since 0.7.0) straight from `outcome->bytes`,
/// released in the send's callback (an echo, a proxy). A datagram's sender (`outcome->source`)
/// is in the same buffer and stays valid with it.
///
/// A kept buffer is out of the loop's pool meanwhile: keeping many makes receives wait for
/// buffers (no bytes are lost). A buffer still kept when the loop is freed is freed with it.
///
/// Returns the buffer id (>= 0), or `-EINVAL` (NULL `outcome`, no bytes), `-ENOENT` (bytes that
/// are not in a loop buffer — after `rl_cancel` of a receive, bytes it had already taken reach
/// the next `rl_recv` on the socket from a copy: copy those — or an outcome of an earlier
/// callback, or a buffer already kept), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
///
/// # Safety
/// `outcome` is NULL or points to a readable `rl_outcome`; its `bytes` are only compared with the
/// loop's buffer region, never read.
#[no_mangle]
pub unsafe extern "C" fn rl_recv_keep(r#loop: *mut rl_loop, outcome: *const rl_outcome) -> c_int {
    with_loop(r#loop, |lp| {
        if outcome.is_null() {
            return -libc::EINVAL;
        }
        // SAFETY: the caller's promise: a readable outcome.
        let (bytes, nbytes) = unsafe { ((*outcome).bytes, (*outcome).nbytes) };
        match lp.keep_received(bytes, nbytes) {
            Ok(id) => id as c_int,
            Err(err) => error::from_io(&err),
        }
    })
}

/// Sends `len` bytes at `buf` on the stream socket `fd`; `cb` is called once with the total bytes
/// sent (the loop finishes short writes itself) or `-errno`. The caller keeps `buf` valid and
/// unchanged until then — also after `rl_cancel` or `rl_close` on the fd, which still deliver that
/// one final call (`-ECANCELED` or a count).
///
/// Stores the op id in `*op_out` (when not NULL). Returns 0, `-EINVAL` (NULL `cb`, or NULL `buf`
/// with nonzero `len`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
///
/// # Safety
/// `buf..buf+len` stays readable and unmodified until `cb` is called; `op_out` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn rl_send(
    r#loop: *mut rl_loop,
    fd: c_int,
    buf: *const c_void,
    len: usize,
    cb: rl_callback,
    data: *mut c_void,
    op_out: *mut u64,
) -> c_int {
    if buf.is_null() && len > 0 {
        return -libc::EINVAL;
    }
    let buf = if buf.is_null() {
        std::ptr::NonNull::<u8>::dangling().as_ptr()
    } else {
        buf.cast::<u8>()
    };
    register(r#loop, cb, data, op_out, |lp, cb| {
        // SAFETY: the caller keeps `buf..buf+len` valid until `cb` is called (documented).
        unsafe { lp.send_raw(check_fd(fd)?, buf, len, cb) }.map(|op| op.into_raw())
    })
}

/// Sends one datagram of `len` bytes at `buf` on the datagram socket `fd` to `sockaddr`
/// (`addrlen` bytes, copied before return), or to the connected peer when `sockaddr` is NULL and
/// `addrlen` 0; `cb` is called once with the bytes sent (a datagram goes whole or not at all) or
/// `-errno`. As `rl_op_sendto`: datagram sends on one socket do not wait for each other, and
/// the kernel sends them in call order while the socket's send buffer has room. The caller keeps
/// `buf` valid and unchanged until `cb` is called — also after `rl_cancel` or `rl_close` on the
/// fd, which still deliver that one final call (`-ECANCELED` or the count).
///
/// Stores the op id in `*op_out` (when not NULL). Returns 0, `-EINVAL` (NULL `cb`; NULL `buf`
/// with nonzero `len`; malformed address, or NULL `sockaddr` with nonzero `addrlen`),
/// `-EMSGSIZE` (`len` above `INT32_MAX`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop
/// thread only.
///
/// # Safety
/// `buf..buf+len` stays readable and unmodified until `cb` is called; `sockaddr` is NULL or
/// points to `addrlen` readable bytes; `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_sendto(
    r#loop: *mut rl_loop,
    fd: c_int,
    buf: *const c_void,
    len: usize,
    sockaddr: *const c_void,
    addrlen: u32,
    cb: rl_callback,
    data: *mut c_void,
    op_out: *mut u64,
) -> c_int {
    // SAFETY: the caller's promise.
    let to = match unsafe { optional_sockaddr_from_c(sockaddr, addrlen) } {
        Ok(to) => to,
        Err(code) => return code,
    };
    register(r#loop, cb, data, op_out, |lp, cb| {
        // SAFETY: the caller keeps `buf..buf+len` valid until `cb` is called (documented).
        unsafe { lp.send_to_raw(check_fd(fd)?, buf.cast::<u8>(), len, to.as_ref(), cb) }
            .map(|op| op.into_raw())
    })
}

/// Connects the non-blocking socket `fd` to `sockaddr` (`addrlen` bytes, copied before return);
/// `cb` gets 0 or `-errno` (e.g. `-ECONNREFUSED`).
///
/// Stores the op id in `*op_out` (when not NULL). Returns 0, `-EINVAL` (NULL `cb`, NULL or
/// malformed address), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
///
/// # Safety
/// `sockaddr` points to `addrlen` readable bytes; `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_connect(
    r#loop: *mut rl_loop,
    fd: c_int,
    sockaddr: *const c_void,
    addrlen: u32,
    cb: rl_callback,
    data: *mut c_void,
    op_out: *mut u64,
) -> c_int {
    // SAFETY: the caller's promise.
    let addr = match unsafe { sockaddr_from_c(sockaddr, addrlen) } {
        Ok(addr) => addr,
        Err(code) => return code,
    };
    register(r#loop, cb, data, op_out, |lp, cb| {
        lp.connect_raw(check_fd(fd)?, &addr, cb)
            .map(|op| op.into_raw())
    })
}

/// Closes `fd` through the loop: the loop's operations and watches on it end first (their
/// callbacks are not called again, except pending sends, which get their final result), then the
/// fd is closed and `cb` gets 0 or `-errno`.
///
/// Ownership of `fd` passes to the loop unless the call returns `RL_EHANDLE`, `RL_ESTATE`,
/// `-EINVAL` or `-EBADF`: from then on the caller must not use or close it, even if the call
/// returns another error (the fd is closed then too). Stores the op id in `*op_out` (when not
/// NULL). Loop thread only.
///
/// # Safety
/// `fd` is an open fd the caller owns and gives away; `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_close(
    r#loop: *mut rl_loop,
    fd: c_int,
    cb: rl_callback,
    data: *mut c_void,
    op_out: *mut u64,
) -> c_int {
    register(r#loop, cb, data, op_out, |lp, cb| {
        let fd =
            crate::raw::take_fd(fd).map_err(|code| std::io::Error::from_raw_os_error(-code))?;
        lp.close_raw(fd, cb).map(|op| op.into_raw())
    })
}

/// Cancels an operation started with `rl_accept`, `rl_recv`, `rl_recvmsg`, `rl_send`,
/// `rl_sendto`, `rl_connect` or `rl_close`. Takes effect at once (its callback is not called
/// again), except for a send, whose callback still gets its final result once the kernel no
/// longer reads the buffer.
///
/// Returns 1 if the op was live, 0 if it already ended or was cancelled (harmless), `RL_EHANDLE`,
/// `RL_ESTATE`. Loop thread only. (Raw-mode ops are cancelled with `rl_op_cancel`.)
#[no_mangle]
pub extern "C" fn rl_cancel(r#loop: *mut rl_loop, op: u64) -> c_int {
    with_loop(r#loop, |lp| {
        c_int::from(lp.cancel(ringloop::callback::OpHandle::from_raw(op)))
    })
}

/// Calls `cb` with `outcome->result` = `signo` each time the signal arrives, through a signalfd:
/// the signal is blocked in the calling thread while handled. Block it in every other thread of
/// the process too (threads created afterwards inherit the mask; the loop's own pool threads
/// block all signals), or the kernel may deliver it elsewhere. Starting again for the same
/// signal replaces the callback.
///
/// Returns 0, `-EINVAL` (NULL `cb`, bad signal number, SIGKILL/SIGSTOP), `RL_EHANDLE`,
/// `RL_ESTATE`, `-errno`. Loop thread only.
#[no_mangle]
pub extern "C" fn rl_signal_start(
    r#loop: *mut rl_loop,
    signo: c_int,
    cb: rl_callback,
    data: *mut c_void,
) -> c_int {
    register(r#loop, cb, data, std::ptr::null_mut(), |lp, cb| {
        lp.add_signal_raw(signo, cb).map(|()| 0)
    })
}

/// Stops handling `signo` and unblocks it: returns 1 if it was handled, 0 if not, `RL_EHANDLE`,
/// `RL_ESTATE`. Loop thread only.
#[no_mangle]
pub extern "C" fn rl_signal_stop(r#loop: *mut rl_loop, signo: c_int) -> c_int {
    with_loop(r#loop, |lp| c_int::from(lp.remove_signal(signo)))
}

/// Sets the most worker threads `rl_run_in_thread` may use (1 to 1024; default 4). Threads
/// start on demand; threads already running stay until the loop is freed.
///
/// Returns 0, `-EINVAL`, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
#[no_mangle]
pub extern "C" fn rl_set_pool_size(r#loop: *mut rl_loop, workers: u32) -> c_int {
    with_loop(r#loop, |lp| match lp.set_pool_size(workers as usize) {
        Ok(()) => 0,
        Err(e) => error::from_io(&e),
    })
}

/// Runs `work(data, &value)` on one of the loop's pool threads (blocking work: file I/O, DNS,
/// computation) and stores in `*future_out` a new future that completes with `value` when `work`
/// returns 0, or with `work`'s negative return value as its error. Cancelling the future before
/// the job starts skips the job. A job keeps `RL_RUN_DEFAULT` running until it has finished; the
/// pool threads block every signal.
///
/// The caller owns the future handle and releases it with `rl_future_release` (the job completes
/// the future whether or not the handle was released). `data` must be usable from another
/// thread until `work` returned; `work` may also never be called (the future was cancelled
/// first, or the loop was freed), so it must not be the only owner of what it frees.
///
/// Returns 0, `-EINVAL` (NULL `work` or `future_out`), `RL_EHANDLE`, `RL_ESTATE`, `-errno`
/// (thread creation failed). Loop thread only.
///
/// # Safety
/// `future_out` is writable.
#[no_mangle]
pub unsafe extern "C" fn rl_run_in_thread(
    r#loop: *mut rl_loop,
    work: rl_work_fn,
    data: *mut c_void,
    future_out: *mut *mut rl_future,
) -> c_int {
    let (Some(work), false) = (work, future_out.is_null()) else {
        return -libc::EINVAL;
    };
    with_loop(r#loop, |lp| {
        // SAFETY: `run_c_work` calls `work(data, &value)` once on a pool thread, which is what
        // the header asks the caller to allow.
        let raw = unsafe { RawWork::new(run_c_work, data, work as *mut c_void) };
        match lp.run_in_thread_raw(raw) {
            Ok(future) => match register_future(future, r#loop) {
                Ok(handle) => {
                    // SAFETY: `future_out` is non-null and writable (the caller's promise).
                    unsafe { future_out.write(handle) };
                    0
                }
                Err(code) => code,
            },
            Err(e) => error::from_io(&e),
        }
    })
}

/// Registers a done callback (see `rl_future_add_done_callback`).
pub(crate) fn register_done(
    r#loop: *mut rl_loop,
    future: &ringloop::callback::LoopFuture,
    cb: unsafe extern "C" fn(*mut rl_loop, *const rl_outcome, *mut c_void),
    data: *mut c_void,
) -> c_int {
    register(r#loop, Some(cb), data, std::ptr::null_mut(), |lp, cb| {
        lp.add_done_callback_raw(future, cb).map(|()| 0)
    })
}
