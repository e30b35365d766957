//! The cross-thread wake: an eventfd plus a "wake pending" flag, so that any number of wakes
//! between two polls write the eventfd once and produce one event.
//!
//! Ordering argument (why no wake is lost): a waker sets the flag with a swap and writes the eventfd
//! only if it turned the flag from false to true. The poller, after it has consumed the eventfd
//! counter, clears the flag with a swap (acquire), then reports the wake. A waker that found the
//! flag already set did so before that clear in the flag's modification order, so its earlier
//! writes are visible to the poller after the clear, and the event being reported covers it. A
//! waker that comes after the clear sees false and writes the eventfd again, producing the next
//! event. Clearing before consuming the counter would be wrong: a wake in between would leave the
//! flag set with the counter consumed, and every later wake would skip the write.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::sys::from_nix;

pub(crate) struct WakeShared {
    /// Blocking on purpose: io_uring completes reads of O_NONBLOCK files with -EAGAIN instead of
    /// waiting, and the epoll backend reads only after readiness. Writers never block: the counter
    /// holds at most a handful of units thanks to the flag.
    eventfd: EventFd,
    pending: AtomicBool,
}

impl WakeShared {
    pub(crate) fn new() -> io::Result<WakeShared> {
        let eventfd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC).map_err(from_nix)?;
        Ok(WakeShared {
            eventfd,
            pending: AtomicBool::new(false),
        })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.eventfd.as_fd().as_raw_fd()
    }

    /// Thread-safe and async-signal-safe: an atomic swap and at most one `write(2)`.
    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            // The only possible failure is EAGAIN on a saturated counter, which cannot happen
            // (one write per cleared flag); the poller is awake either way.
            let _ = nix::unistd::write(self.eventfd.as_fd(), &1u64.to_ne_bytes());
        }
    }

    /// Called by the poller after it consumed the eventfd counter; see the module doc.
    pub(crate) fn clear(&self) {
        self.pending.swap(false, Ordering::AcqRel);
    }

    /// Consumes the eventfd counter with `read(2)` (epoll backend, after readiness).
    pub(crate) fn drain(&self) {
        let mut counter = [0u8; 8];
        let _ = nix::unistd::read(self.eventfd.as_fd(), &mut counter);
    }
}
