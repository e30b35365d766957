//! Backends: the small contract each kernel interface fulfils, and the run-time choice between
//! them.
//!
//! A backend owns the op table, the receive-buffer pool and everything that talks to the kernel
//! about ops; the reactor above it owns timers, signal masks and the public API. Every backend
//! must:
//!
//! * deliver exactly the events the contract in `reactor.rs` describes — watches level-triggered
//!   (at most one event per `poll` per watch), multishot recv/accept/signal with
//!   [`crate::flags::MORE`] on all but the last event, one final event per
//!   send/send_to/connect/close;
//! * make `cancel` take effect before it returns (drop anything queued or later completed for the
//!   op, returning buffers and closing accepted fds nobody will see), except that a send produces
//!   exactly one final event once the kernel no longer reads caller memory;
//! * recycle the buffers lent by the previous `poll` at the start of the next one (except buffers
//!   still stashed behind a chunk, see `FdTable::unpin`), hold a recv (multishot or one-shot)
//!   back while the pool is dry and re-arm it afterwards (never report `ENOBUFS`);
//! * start every recv with its fd's stash: nothing newer from the socket may overtake it;
//! * keep what does not fit in `events` for the next `poll`, never drop it;
//! * report a wake (the eventfd in [`WakeShared`]) as one event with the wake token, clearing the
//!   pending flag only after consuming the eventfd counter;
//! * never wait longer than `timeout`, and turn `EINTR` into an early, successful return;
//! * on drop, cancel everything in flight and wait until the kernel no longer references op or
//!   caller memory;
//! * after an accept reports a resource error ([`accept_error_is_resource`]), leave the listening
//!   socket alone for the back-off delay ([`Backoff`]) and never wait past its end; likewise a
//!   datagram send refused with `EAGAIN` when its socket polled writable ([`SEND_RETRY_DELAY`]).
//!
//! Keys returned by the op-starting methods are [`crate::OpId`] values (see `ops.rs`).

#![warn(clippy::undocumented_unsafe_blocks)]

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signalfd::SignalFd;
use nix::sys::socket::SockaddrStorage;

use crate::buffers::BufferPool;
use crate::wake::WakeShared;
use crate::{BackendChoice, BackendKind, Event, Interest, Options};

mod epoll;
mod uring;

pub(crate) trait Backend: Send {
    fn kind(&self) -> BackendKind;
    fn buffers(&self) -> &BufferPool;
    /// The pool itself, for the caller's keep and release of lent buffers.
    fn buffers_mut(&mut self) -> &mut BufferPool;
    /// Recycles lent buffers, submits, waits at most `timeout`, fills `events`.
    fn poll(&mut self, timeout: Option<Duration>, events: &mut [Event]) -> io::Result<usize>;
    fn watch(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<u64>;
    fn recv_multi(&mut self, fd: RawFd, token: u64) -> io::Result<u64>;
    /// One receive of at most `max_len` bytes (see [`recv_once_cap`]); one final event.
    fn recv_once(&mut self, fd: RawFd, max_len: u32, token: u64) -> io::Result<u64>;
    /// Multishot datagram receive: one event per datagram, laid out in its buffer as
    /// [`crate::datagram`] says, `result` = payload bytes held, flags `MORE | BUFFER | DATAGRAM`.
    /// No stash: datagrams of a cancelled receive are dropped.
    fn recvmsg_multi(&mut self, fd: RawFd, token: u64) -> io::Result<u64>;
    /// # Safety
    /// `buf..buf+len` stays valid and unmodified until the op's final event has been returned by
    /// `poll` (the caller's promise in [`crate::Reactor::send`]).
    unsafe fn send(&mut self, fd: RawFd, buf: *const u8, len: usize, token: u64)
        -> io::Result<u64>;
    /// One datagram send (`sendto(2)`; `to` None: the connected peer): one final event, the
    /// kernel's answer (bytes sent or `-errno`), never finished further. It need not wait for
    /// the fd's other sends, but datagram sends on one fd go to the kernel in call order.
    ///
    /// # Safety
    /// As [`Backend::send`].
    unsafe fn send_to(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        to: Option<&SockaddrStorage>,
        token: u64,
    ) -> io::Result<u64>;
    fn accept_multi(&mut self, fd: RawFd, token: u64) -> io::Result<u64>;
    fn connect(&mut self, fd: RawFd, addr: &SockaddrStorage, token: u64) -> io::Result<u64>;
    fn close(&mut self, fd: OwnedFd, token: u64) -> io::Result<u64>;
    /// Delivers the signals read from `signalfd` (multishot; result = signo).
    fn signal(&mut self, signalfd: SignalFd, token: u64) -> io::Result<u64>;
    /// `false` when `key` names no live op.
    fn cancel(&mut self, key: u64) -> bool;
    /// Cancels every live op carrying `token`; returns how many.
    fn cancel_token(&mut self, token: u64) -> usize;
    /// Live, caller-visible ops.
    fn pending(&self) -> usize;
    /// Sets the pause after an accept's resource error (see [`Backoff`]); accepts already
    /// paused keep the deadline they had.
    fn set_accept_retry_delay(&mut self, delay: Duration);
}

/// Validates `opts` and creates the backend it selects.
pub(crate) fn create(opts: &Options, wake: Arc<WakeShared>) -> io::Result<Box<dyn Backend>> {
    if opts.ring_entries == 0 || opts.ring_entries > 32768 || !opts.ring_entries.is_power_of_two() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "ring_entries must be a power of two between 1 and 32768",
        ));
    }
    BufferPool::validate(opts.buffer_size, opts.buffer_count)?;
    match resolve_choice(opts)? {
        BackendChoice::Epoll => Ok(Box::new(epoll::Epoll::new(opts, wake)?)),
        BackendChoice::IoUring => match uring::Uring::new(opts, wake) {
            Ok(backend) => Ok(Box::new(backend)),
            Err(uring::SetupError::Unavailable(why)) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("ringloop: io_uring backend unavailable: {why}"),
            )),
            Err(uring::SetupError::Io(err)) => Err(err),
        },
        BackendChoice::Auto => match uring::Uring::new(opts, wake.clone()) {
            Ok(backend) => Ok(Box::new(backend)),
            Err(uring::SetupError::Unavailable(_)) => Ok(Box::new(epoll::Epoll::new(opts, wake)?)),
            Err(uring::SetupError::Io(err)) => Err(err),
        },
    }
}

/// Applies `RINGLOOP_BACKEND` to [`BackendChoice::Auto`] when the options allow it.
fn resolve_choice(opts: &Options) -> io::Result<BackendChoice> {
    if opts.backend != BackendChoice::Auto || !opts.honor_env {
        return Ok(opts.backend);
    }
    match std::env::var("RINGLOOP_BACKEND") {
        Err(std::env::VarError::NotPresent) => Ok(BackendChoice::Auto),
        Ok(value) => match value.as_str() {
            "" | "auto" => Ok(BackendChoice::Auto),
            "io_uring" => Ok(BackendChoice::IoUring),
            "epoll" => Ok(BackendChoice::Epoll),
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("RINGLOOP_BACKEND={other:?} is not one of \"io_uring\", \"epoll\""),
            )),
        },
        Err(std::env::VarError::NotUnicode(_)) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "RINGLOOP_BACKEND is not valid UTF-8",
        )),
    }
}

/// The byte limit of a one-shot recv: `max_len`, with 0 meaning and larger values capped at the
/// pool's buffer size (never 0: the pool validates sizes of at least 1 byte, at most 1 GiB).
pub(crate) fn recv_once_cap(max_len: u32, buffer_size: usize) -> u32 {
    let size = u32::try_from(buffer_size).unwrap_or(u32::MAX);
    if max_len == 0 {
        size
    } else {
        max_len.min(size)
    }
}

/// Maps kernel readiness (`poll(2)` / epoll bits, which agree for these) to the [`Interest`] bits
/// a watch reports: error and hang-up count as ready for every watched direction.
pub(crate) fn ready_bits(revents: u32, interest: Interest) -> u32 {
    let mut bits = 0;
    if revents & (libc::POLLIN | libc::POLLPRI | libc::POLLRDHUP) as u32 != 0 {
        bits |= Interest::READABLE.bits();
    }
    if revents & libc::POLLOUT as u32 != 0 {
        bits |= Interest::WRITABLE.bits();
    }
    if revents & (libc::POLLERR | libc::POLLHUP) as u32 != 0 {
        bits |= Interest::BOTH.bits();
    }
    bits & interest.bits()
}

/// Accept errors that concern one connection or a passing resource shortage: reported (with
/// [`crate::flags::MORE`]) while the accept stays armed, as asyncio and libuv keep listening.
pub(crate) fn accept_error_is_transient(errno: i32) -> bool {
    matches!(
        errno,
        libc::EMFILE
            | libc::ENFILE
            | libc::ENOBUFS
            | libc::ENOMEM
            | libc::ECONNABORTED
            | libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::ENONET
            | libc::EHOSTUNREACH
            | libc::EOPNOTSUPP
            | libc::ENETUNREACH
    )
}

/// Accept errors that say the process or the system is out of a resource rather than that one
/// connection failed. Retrying at once would fail again (the connection stays queued), so the
/// accept pauses for [`Options::accept_retry_delay`] after reporting one.
pub(crate) fn accept_error_is_resource(errno: i32) -> bool {
    matches!(
        errno,
        libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
    )
}

/// How long a datagram send waits before trying again after the kernel refused it (`EAGAIN`)
/// although its socket had polled writable. That happens with an unconnected Unix datagram socket
/// whose receiver's queue is full: Linux tracks the peer's queue in `poll` only for a connected
/// socket, so waiting for writability would retry at once, forever.
pub(crate) const SEND_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Ops paused until an instant: accepts after a resource error (asyncio's
/// `ACCEPT_RETRY_DELAY`), and datagram sends after an `EAGAIN` that polling cannot wait out
/// ([`SEND_RETRY_DELAY`]). Each backend keeps one per use; it is empty (and costs one length
/// check per `poll`, no clock read) unless an op was paused.
pub(crate) struct Backoff {
    delay: Duration,
    paused: Vec<(Instant, u64)>,
}

impl Backoff {
    pub(crate) fn new(delay: Duration) -> Backoff {
        Backoff {
            delay,
            // Room for a few listeners up front: pausing one need not allocate.
            paused: Vec::with_capacity(4),
        }
    }

    pub(crate) fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }

    /// Pauses accept `key` for the delay. `false` when back-off is off (zero delay): the caller
    /// resumes it at once, as before back-off existed.
    pub(crate) fn pause(&mut self, key: u64) -> bool {
        if self.delay.is_zero() {
            return false;
        }
        // Clamped so that the deadline cannot overflow `Instant` (a year is "never" enough).
        let until = Instant::now() + self.delay.min(Duration::from_secs(365 * 86400));
        self.paused.push((until, key));
        true
    }

    /// No accept is paused.
    pub(crate) fn is_empty(&self) -> bool {
        self.paused.is_empty()
    }

    /// Forgets `key` (cancelled or ended while paused).
    pub(crate) fn forget(&mut self, key: u64) {
        if !self.paused.is_empty() {
            self.paused.retain(|&(_, k)| k != key);
        }
    }

    /// `wait`, shortened so that `poll` wakes up when the earliest pause ends.
    pub(crate) fn cap(&self, wait: Option<Duration>) -> Option<Duration> {
        let Some(earliest) = self.paused.iter().map(|&(until, _)| until).min() else {
            return wait;
        };
        let left = earliest.saturating_duration_since(Instant::now());
        Some(wait.map_or(left, |w| w.min(left)))
    }

    /// Moves the keys whose pause is over into `out`.
    pub(crate) fn take_due(&mut self, out: &mut Vec<u64>) {
        let now = Instant::now();
        self.paused.retain(|&(until, key)| {
            if until <= now {
                out.push(key);
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_pauses_caps_and_resumes() {
        let mut off = Backoff::new(Duration::ZERO);
        assert!(!off.pause(1), "a zero delay means no back-off");
        assert_eq!(off.cap(None), None);

        let delay = Duration::from_millis(50);
        let mut backoff = Backoff::new(delay);
        assert_eq!(
            backoff.cap(Some(Duration::from_secs(9))),
            Some(Duration::from_secs(9))
        );
        assert!(backoff.pause(7));
        assert!(backoff.pause(8));
        backoff.forget(8);
        // A wait forever or a long one ends with the pause; a short one stays.
        assert!(backoff.cap(None).unwrap() <= delay);
        assert!(backoff.cap(Some(Duration::from_secs(9))).unwrap() <= delay);
        assert_eq!(backoff.cap(Some(Duration::ZERO)), Some(Duration::ZERO));
        let mut due = Vec::new();
        backoff.take_due(&mut due);
        assert!(due.is_empty(), "not due before the delay");
        std::thread::sleep(delay);
        backoff.take_due(&mut due);
        assert_eq!(due, [7], "a forgotten key never comes back");
        assert!(backoff.is_empty());
    }

    #[test]
    fn resource_errors_are_the_transient_ones_that_pause() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(accept_error_is_resource(errno) && accept_error_is_transient(errno));
        }
        for errno in [libc::ECONNABORTED, libc::EPERM, libc::EPROTO] {
            assert!(!accept_error_is_resource(errno) && accept_error_is_transient(errno));
        }
    }
}
