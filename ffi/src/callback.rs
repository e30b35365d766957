//! Callback mode (C function pointer + `void *data` callbacks over the same loop).

use std::ffi::c_int;
use std::time::Duration;

use ringloop::{Event, TimerId};

use crate::error;
use crate::handle::{rl_loop, with_state};

/// Raw-mode poll on a loop.
pub(crate) fn poll_raw(
    r#loop: *mut rl_loop,
    timeout: Option<Duration>,
    out: &mut [Event],
) -> c_int {
    with_state(r#loop, |state| {
        error::code(state.reactor_mut().poll(timeout, out).map(|n| n as i64))
    })
}

/// The C value of a raw-mode timer id.
pub(crate) fn raw_timer_id(timer: TimerId) -> u64 {
    timer.into_raw()
}
