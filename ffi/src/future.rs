//! `rl_future`: one-shot result cells bound to a loop, completable from any thread.

use std::ffi::c_int;
use std::sync::Arc;

use ringloop::callback::{FutureState, LoopFuture};

use crate::callback::rl_callback;
use crate::guard::guard;
use crate::handle::{lookup, rl_loop, write_out};
use crate::registry::{Kind, Registry};
use crate::{RL_EHANDLE, RL_ESTATE};

/// A future: pending, then done (a `uint64_t` value or a negative error code) or cancelled.
/// Opaque; created by `rl_future_new` or `rl_run_in_thread`, released by `rl_future_release`.
///
/// Like `rl_loop`, the pointer value is a registry handle: NULL, released or foreign values give
/// `RL_EHANDLE`.
pub struct rl_future {
    _opaque: [u8; 0],
}

/// `rl_future_state`: not completed yet.
pub const RL_FUTURE_PENDING: c_int = 0;
/// `rl_future_state`: completed with `rl_future_set_result` or `rl_future_set_error`.
pub const RL_FUTURE_DONE: c_int = 1;
/// `rl_future_state`: cancelled (`rl_future_cancel`, its loop was freed while it had done
/// callbacks, or its thread-pool job was dropped before it started).
pub const RL_FUTURE_CANCELLED: c_int = 2;

struct FutureEntry {
    future: LoopFuture,
    /// The loop's handle (for done callbacks, which are registered with the loop).
    loop_handle: u64,
}

static FUTURES: Registry<FutureEntry> = Registry::new(Kind::Future);

/// Registers `future` (bound to the loop `r#loop`) and returns its C handle.
pub(crate) fn register_future(
    future: LoopFuture,
    r#loop: *const rl_loop,
) -> Result<*mut rl_future, c_int> {
    let entry = Arc::new(FutureEntry {
        future,
        loop_handle: r#loop as usize as u64,
    });
    FUTURES
        .insert(entry)
        .map(|handle| handle as usize as *mut rl_future)
}

fn with_future(future: *const rl_future, body: impl FnOnce(&FutureEntry) -> c_int) -> c_int {
    guard(|| match FUTURES.get(future as usize as u64) {
        Some(entry) => body(&entry),
        None => RL_EHANDLE,
    })
}

/// Creates a pending future bound to `loop` (its done callbacks run on that loop) and stores its
/// handle in `*future_out`. The caller owns the handle and releases it with `rl_future_release`.
///
/// Returns 0, `-EINVAL` (NULL `future_out`), `RL_EHANDLE`, `-ENOMEM`. **Thread-safe**.
///
/// # Safety
/// `future_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_future_new(
    r#loop: *mut rl_loop,
    future_out: *mut *mut rl_future,
) -> c_int {
    guard(|| {
        if future_out.is_null() {
            return -libc::EINVAL;
        }
        let entry = match lookup(r#loop) {
            Ok(entry) => entry,
            Err(code) => return code,
        };
        match register_future(entry.remote.create_future(), r#loop) {
            Ok(handle) => {
                // SAFETY: `future_out` is non-null and writable (the caller's promise).
                unsafe { write_out(future_out, handle) };
                0
            }
            Err(code) => code,
        }
    })
}

/// Completes the future with `value`. Returns 1 if this call completed it, 0 if it was already
/// complete (done or cancelled; nothing changes), `RL_EHANDLE`. Done callbacks run on the loop
/// thread in the loop's next iteration (the loop is woken).
///
/// **Thread-safe**.
#[no_mangle]
pub extern "C" fn rl_future_set_result(future: *mut rl_future, value: u64) -> c_int {
    with_future(future, |entry| c_int::from(entry.future.set_result(value)))
}

/// Completes the future with the error `code`, which must be negative (a `-errno` or one of the
/// caller's own codes). Returns 1 if this call completed it, 0 if it was already complete,
/// `-EINVAL` for `code >= 0`, `RL_EHANDLE`.
///
/// **Thread-safe**.
#[no_mangle]
pub extern "C" fn rl_future_set_error(future: *mut rl_future, code: c_int) -> c_int {
    if code >= 0 {
        return -libc::EINVAL;
    }
    with_future(future, |entry| c_int::from(entry.future.set_error(code)))
}

/// Cancels the future. Returns 1 if it was pending (done callbacks then run with `-ECANCELED`), 0
/// if it was already complete, `RL_EHANDLE`. A future from `rl_run_in_thread` cancelled before
/// its job started skips the job.
///
/// **Thread-safe**.
#[no_mangle]
pub extern "C" fn rl_future_cancel(future: *mut rl_future) -> c_int {
    with_future(future, |entry| c_int::from(entry.future.cancel()))
}

/// Returns the future's state, `RL_FUTURE_PENDING`, `RL_FUTURE_DONE` or `RL_FUTURE_CANCELLED`,
/// or `RL_EHANDLE` for a bad handle.
///
/// **Thread-safe**.
#[no_mangle]
pub extern "C" fn rl_future_state(future: *const rl_future) -> c_int {
    with_future(future, |entry| match entry.future.state() {
        FutureState::Pending => RL_FUTURE_PENDING,
        FutureState::Done => RL_FUTURE_DONE,
        FutureState::Cancelled => RL_FUTURE_CANCELLED,
    })
}

/// The outcome of a complete future: returns 0 and stores the value in `*value` (when not NULL)
/// if it was completed with a value; returns its (negative) error code if it was completed with
/// an error; `-ECANCELED` if it was cancelled; `RL_ESTATE` while pending; `RL_EHANDLE`.
///
/// **Thread-safe**.
///
/// # Safety
/// `value` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_future_result(future: *const rl_future, value: *mut u64) -> c_int {
    with_future(future, |entry| match entry.future.result() {
        Some(Ok(v)) => {
            // SAFETY: the caller's promise.
            unsafe { write_out(value, v) };
            0
        }
        Some(Err(code)) => code,
        None if entry.future.state() == FutureState::Cancelled => -libc::ECANCELED,
        None => RL_ESTATE,
    })
}

/// Calls `cb(loop, outcome, data)` on the future's loop thread once the future is complete (in
/// the next iteration if it already is). `outcome->result` is 0 with `outcome->value` = the value,
/// the future's error code, or `-ECANCELED`. Callbacks of one future run in the order added. While
/// the future is pending with callbacks it keeps `RL_RUN_DEFAULT` running.
///
/// Returns 0, `-EINVAL` (NULL `cb`), `RL_EHANDLE` (bad future, or its loop was freed),
/// `RL_ESTATE`. Loop thread only (the future's loop).
#[no_mangle]
pub extern "C" fn rl_future_add_done_callback(
    future: *mut rl_future,
    cb: rl_callback,
    data: *mut std::ffi::c_void,
) -> c_int {
    guard(|| {
        let Some(entry) = FUTURES.get(future as usize as u64) else {
            return RL_EHANDLE;
        };
        let Some(cb) = cb else {
            return -libc::EINVAL;
        };
        let r#loop = entry.loop_handle as usize as *mut rl_loop;
        crate::callback::register_done(r#loop, &entry.future, cb, data)
    })
}

/// Releases the caller's handle. The future itself lives on as long as the loop or a pool job
/// needs it (a running job still completes it, registered done callbacks still run); only the
/// handle becomes stale. Returns 0, or `RL_EHANDLE` (so a double release is an error, not a
/// crash).
///
/// **Thread-safe**.
#[no_mangle]
pub extern "C" fn rl_future_release(future: *mut rl_future) -> c_int {
    guard(|| match FUTURES.remove(future as usize as u64) {
        Some(_) => 0,
        None => RL_EHANDLE,
    })
}
