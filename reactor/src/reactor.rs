//! The reactor: the public face of the token/event core.
//!
//! CONTRACT (fixed; the C ABI, the callback loop and the Python binding are written against it):
//!
//! * Every submission returns an [`OpId`] and later produces events carrying the caller's token.
//! * [`Reactor::poll`] first recycles the receive buffers lent by the previous `poll` (except those
//!   kept with [`Reactor::keep_buffer`], which wait for [`Reactor::release_buffer`]), then flushes
//!   pending submissions and waits in one system call where the backend allows, then fills
//!   `events` (never more than `events.len()`; what does not fit stays queued for the next call,
//!   nothing is dropped). `timeout`: `None` waits forever, `Some(Duration::ZERO)` does not wait.
//!   Expired timers are delivered by the same call. `Ok(0)` on timeout or on a signal interrupt.
//! * Watches are persistent and level-triggered (asyncio's add_reader/add_writer): while the fd is
//!   ready and the watch exists, each `poll` delivers at most one event for it, `result` = the ready
//!   [`crate::Interest`] bits (error/hang-up count as ready for every watched direction).
//! * Cancelling ([`Reactor::cancel`], [`Reactor::cancel_token`]) takes effect before it returns: no
//!   later event is delivered for the op, EXCEPT ops that hold caller memory (send), which deliver
//!   exactly one final event (bytes sent or `-ECANCELED`) once the kernel no longer touches that
//!   memory, and a one-shot recv, whose one event (`-ECANCELED`) is queued by the cancel. It
//!   also takes effect in the kernel before it returns (io_uring: the cancel is submitted at
//!   once), so a cancelled op no longer holds its file open; likewise the fd given to
//!   [`Reactor::close`] is closed (or its close submitted) before `close` returns.
//! * Cancelling a recv loses no byte of the stream: bytes the reactor already took out of the
//!   socket for it (queued events, completions racing with the cancel) are kept and delivered as
//!   the first events of the next [`Reactor::recv_multi`] or [`Reactor::recv_once`] on the same
//!   open socket (a new socket that reuses the fd number does not get them; [`Reactor::close`]
//!   discards them). So cancel + re-arm is a lossless pause/resume. A recv_once takes at most its
//!   `max_len` of them and leaves the rest stashed, in order.
//! * A one-shot recv ([`Reactor::recv_once`]) produces exactly one event, never
//!   [`crate::flags::MORE`]: bytes (`> 0`, with [`crate::flags::BUFFER`]), `0` at end of stream,
//!   or `-errno`. Cancelling it while it waits delivers that event at once as `-ECANCELED`;
//!   bytes the kernel hands over for it after the cancel go to the stash. Once its event is
//!   queued the op is over: cancelling it then is a stale id and the event (bytes included) is
//!   still delivered. Pool exhaustion holds it back like a multishot recv (no `ENOBUFS`).
//! * Multishot ops (recv, accept, signals) set [`crate::flags::MORE`] on every event but their last.
//!   A multishot recv ends with `result == 0` (EOF) or `-errno`. When the receive-buffer pool runs
//!   dry the reactor holds the recv back and re-arms it after buffers are recycled: the caller never
//!   sees `ENOBUFS` and no byte is lost.
//! * A datagram receive ([`Reactor::recvmsg_multi`]) is a multishot recv whose events each carry
//!   one datagram ([`crate::flags::DATAGRAM`], the layout in [`crate::datagram`]); it ends only
//!   with `-errno`. It has no stash: datagrams it took but did not deliver before a cancel are
//!   dropped, as datagrams have no order to keep. Pool exhaustion holds it back as any recv.
//! * A multishot accept reports per-connection errors (`ECONNABORTED`, `EPERM`...) and resource
//!   errors (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`) with [`crate::flags::MORE`]: it stays
//!   alive. After a resource error the reactor does not try the listening socket again until
//!   [`Options::accept_retry_delay`] has passed (asyncio's `ACCEPT_RETRY_DELAY`), so a process
//!   whose fd table stays full gets one such event per delay instead of one per `poll`; `poll`
//!   never waits past the end of a delay. Cancelling a paused accept behaves as cancelling any
//!   accept (no further event).
//! * A send completes once with the total bytes sent (all of them, or the count before an error is
//!   reported as `-errno`); the reactor finishes short sends itself. A datagram send
//!   ([`Reactor::send_to`]) completes once with the kernel's answer; datagram sends on one fd
//!   are not held back behind each other.
//! * New fds (accept) are non-blocking and close-on-exec.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::io;
use std::os::fd::{OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::{self, Backend};
use crate::signals::SignalRegistry;
use crate::sys::{fork_generation, forked_child_error, monotonic_ns};
use crate::timers::Timers;
use crate::wake::WakeShared;
use crate::{BackendKind, Event, Interest, OpId, Options, TimerId};

/// What a reactor reports (wrapped in an `io::Error` of kind `Other`) when it is used in a process
/// forked after it was created: the parent's ring or epoll set is not the child's to touch.
#[derive(Debug)]
pub struct ForkedChildError;

impl ForkedChildError {
    /// Whether `err` is (wraps) a [`ForkedChildError`].
    pub fn is(err: &io::Error) -> bool {
        err.get_ref().is_some_and(|e| e.is::<ForkedChildError>())
    }
}

impl std::fmt::Display for ForkedChildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "ringloop: this reactor was created before fork(); a forked child must create its own reactor",
        )
    }
}

impl std::error::Error for ForkedChildError {}

/// The reactor. Used from one thread at a time (`Send`, not `Sync`); [`Waker`] is the only handle
/// other threads use.
pub struct Reactor {
    backend: Box<dyn Backend>,
    timers: Timers,
    signals: SignalRegistry,
    wake: Arc<WakeShared>,
    fork_generation: u64,
}

/// A cheap, cloneable, thread-safe handle that wakes a reactor blocked in `poll`. Wakes coalesce:
/// any number of `wake()` calls between two polls produce exactly one event with
/// [`Options::wake_token`], and a wake is never lost.
#[derive(Clone)]
pub struct Waker {
    inner: Arc<WakeShared>,
}

impl Waker {
    /// Wakes the reactor. Thread-safe, async-signal-safe, never blocks.
    pub fn wake(&self) {
        self.inner.wake();
    }
}

fn not_found() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        "no such operation (already finished or cancelled)",
    )
}

impl Reactor {
    /// Creates a reactor with the backend `opts` selects.
    ///
    /// Forcing io_uring where it is unavailable fails with `ErrorKind::Unsupported` and a message
    /// that says why.
    pub fn new(opts: &Options) -> io::Result<Reactor> {
        let wake = Arc::new(WakeShared::new()?);
        let backend = backend::create(opts, wake.clone())?;
        Ok(Reactor {
            backend,
            timers: Timers::default(),
            signals: SignalRegistry::default(),
            wake,
            fork_generation: fork_generation(),
        })
    }

    /// Which backend this reactor runs on.
    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// The monotonic clock (CLOCK_MONOTONIC) in nanoseconds; timer deadlines use it.
    pub fn now_ns() -> u64 {
        monotonic_ns()
    }

    /// Waits for events. See the module contract.
    pub fn poll(&mut self, timeout: Option<Duration>, events: &mut [Event]) -> io::Result<usize> {
        if self.fork_generation != fork_generation() {
            return Err(forked_child_error());
        }
        // Expired timers go first: they are finite, while level-triggered readiness can fill any
        // events array on every call and would otherwise starve them.
        let mut n = self.expired_timers(events);
        let wait = if n > 0 {
            Some(Duration::ZERO)
        } else {
            match self.timers.next_deadline() {
                Some(deadline) => {
                    let until_timer = Duration::from_nanos(deadline.saturating_sub(monotonic_ns()));
                    Some(timeout.map_or(until_timer, |t| t.min(until_timer)))
                }
                None => timeout,
            }
        };
        n += self.backend.poll(wait, &mut events[n..])?;
        n += self.expired_timers(&mut events[n..]);
        Ok(n)
    }

    /// Moves expired timers into `events`; returns how many.
    fn expired_timers(&mut self, events: &mut [Event]) -> usize {
        if self.timers.len() == 0 || events.is_empty() {
            return 0;
        }
        let now = monotonic_ns();
        let mut n = 0;
        while n < events.len() {
            let Some(token) = self.timers.pop_expired(now) else {
                break;
            };
            events[n] = Event {
                token,
                result: 0,
                flags: 0,
                aux: 0,
            };
            n += 1;
        }
        n
    }

    /// A thread-safe waker for this reactor.
    pub fn waker(&self) -> Waker {
        Waker {
            inner: self.wake.clone(),
        }
    }

    /// Watches `fd` for readiness (persistent, level-triggered). Several watches may exist on one fd
    /// (asyncio's reader and writer are two watches).
    pub fn watch(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<OpId> {
        self.backend.watch(fd, interest, token).map(OpId)
    }

    /// Multishot stream receive into reactor-owned buffers: events carry [`crate::flags::BUFFER`],
    /// `aux` = buffer id, `result` = byte count; read the bytes with [`Reactor::event_data`].
    ///
    /// `fd` is a stream socket or a pipe (FIFO), blocking or not; a pipe is read without ever
    /// blocking the loop. On io_uring, pipes need Linux 6.7 (`IORING_OP_READ_MULTISHOT`); before
    /// that, and for any other kind of file, the receive ends with `-ENOTSOCK`.
    pub fn recv_multi(&mut self, fd: RawFd, token: u64) -> io::Result<OpId> {
        self.backend.recv_multi(fd, token).map(OpId)
    }

    /// One receive of at most `max_len` bytes from `fd` into a reactor-owned buffer (`0`, and any
    /// value above the pool's buffer size, mean the buffer size). Exactly one event: `result > 0`
    /// with [`crate::flags::BUFFER`] and `aux` = buffer id (read it with
    /// [`Reactor::event_data`]), `0` at end of stream, or `-errno` (`-ECANCELED` after
    /// [`Reactor::cancel`]); never [`crate::flags::MORE`]. Bytes stashed by a cancelled recv on
    /// the socket come first (see the module contract); they may complete it before `poll`, in
    /// which case the returned id is already stale.
    pub fn recv_once(&mut self, fd: RawFd, max_len: u32, token: u64) -> io::Result<OpId> {
        self.backend.recv_once(fd, max_len, token).map(OpId)
    }

    /// Multishot datagram receive (UDP, Unix datagram sockets) into reactor-owned buffers: one
    /// event per datagram, with [`crate::flags::MORE`], [`crate::flags::BUFFER`] and
    /// [`crate::flags::DATAGRAM`]; `result` = the payload bytes the buffer holds (0 for an empty
    /// datagram), read with [`Reactor::event_data`], the sender with [`Reactor::event_source`]
    /// (the layout is in [`crate::datagram`]). A datagram longer than the buffer's room after
    /// [`crate::datagram::PAYLOAD`] is cut short, as `recvmsg` does (`MSG_TRUNC`).
    ///
    /// An error (`-ECONNREFUSED` after an ICMP error on a connected socket...) ends the receive
    /// with a last event without `MORE`: start a new one to go on. Datagrams received for a
    /// cancelled receive and not yet delivered are dropped with it.
    ///
    /// Errors: `EBADF`, `ENOTSOCK`, `EOPNOTSUPP` for a socket that is not `SOCK_DGRAM`, and
    /// `EINVAL` when the buffers are too small for anything but the header
    /// ([`crate::datagram::PAYLOAD`] bytes or less).
    pub fn recvmsg_multi(&mut self, fd: RawFd, token: u64) -> io::Result<OpId> {
        if self.backend.buffers().size() <= crate::datagram::PAYLOAD {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // (getsockopt answers EBADF for a negative or closed fd.)
        if !crate::sys::is_datagram_socket(fd)? {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        self.backend.recvmsg_multi(fd, token).map(OpId)
    }

    /// Sends `len` bytes starting at `buf`. One event: total bytes sent, or `-errno`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unmodified until this op's final event has been returned
    /// by `poll` (also after [`Reactor::cancel`]).
    pub unsafe fn send(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: usize,
        token: u64,
    ) -> io::Result<OpId> {
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.backend.send(fd, buf, len, token) }.map(OpId)
    }

    /// Sends one datagram of `len` bytes from `buf` on `fd` to `to` (`None`: the socket's
    /// connected peer), as `sendto(2)` does. One event: the bytes sent (a datagram goes whole or
    /// not at all) or `-errno` (`-EDESTADDRREQ` without an address on an unconnected socket,
    /// `-EMSGSIZE`, `-ECONNREFUSED` after an ICMP error on a connected socket...). `len` 0
    /// sends an empty datagram. `to` is copied.
    ///
    /// Meant for datagram sockets (UDP, Unix datagram). Unlike [`Reactor::send`], whose sends on
    /// one fd wait for each other so that a short send is finished before the next begins, these
    /// go to the kernel at once, several in flight per fd, in call order; the kernel sends them
    /// in that order while the socket's send buffer has room (when it is full, ones retried
    /// later may pass each other, as UDP allows). On a stream socket the result may be a short
    /// count that is not finished: use [`Reactor::send`] there.
    ///
    /// A datagram the socket cannot take now waits: for writability, or in pauses of 10 ms where
    /// polling cannot tell (an unconnected Unix datagram socket whose receiver is full polls
    /// writable all the same; on io_uring, any `EAGAIN`).
    ///
    /// Errors: `EBADF`, `EINVAL` for a null `buf` with nonzero `len`, `EMSGSIZE` for `len`
    /// above `i32::MAX`.
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unmodified until this op's final event has been returned
    /// by `poll` (also after [`Reactor::cancel`]).
    pub unsafe fn send_to(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: usize,
        to: Option<&nix::sys::socket::SockaddrStorage>,
        token: u64,
    ) -> io::Result<OpId> {
        if buf.is_null() && len > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "send from a null buffer",
            ));
        }
        // The event's result must hold the count.
        let len = u32::try_from(len)
            .ok()
            .filter(|&len| len <= i32::MAX as u32)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EMSGSIZE))?;
        // A dangling, never-read pointer stands for an empty datagram's missing buffer.
        let buf = if buf.is_null() {
            std::ptr::NonNull::<u8>::dangling().as_ptr()
        } else {
            buf
        };
        // SAFETY: the caller's promise is passed on unchanged.
        unsafe { self.backend.send_to(fd, buf, len, to, token) }.map(OpId)
    }

    /// Multishot accept on a listening socket: one event per connection, `result` = the new fd
    /// (non-blocking, close-on-exec, owned by the caller from then on).
    pub fn accept_multi(&mut self, fd: RawFd, token: u64) -> io::Result<OpId> {
        self.backend.accept_multi(fd, token).map(OpId)
    }

    /// Connects a non-blocking socket. One event: `0` or `-errno`. `addr` is copied.
    pub fn connect(
        &mut self,
        fd: RawFd,
        addr: &nix::sys::socket::SockaddrStorage,
        token: u64,
    ) -> io::Result<OpId> {
        self.backend.connect(fd, addr, token).map(OpId)
    }

    /// Closes `fd` after cancelling every op the reactor has on it. One event: `0` or `-errno`.
    pub fn close(&mut self, fd: OwnedFd, token: u64) -> io::Result<OpId> {
        self.backend.close(fd, token).map(OpId)
    }

    /// Cancels one op; `NotFound` for a stale id. See the module contract.
    pub fn cancel(&mut self, op: OpId) -> io::Result<()> {
        if !self.backend.cancel(op.0) {
            return Err(not_found());
        }
        self.signals.release_where(|id, _| id == op);
        Ok(())
    }

    /// Cancels every live op carrying `token`; returns how many.
    pub fn cancel_token(&mut self, token: u64) -> usize {
        let cancelled = self.backend.cancel_token(token);
        if cancelled > 0 {
            self.signals.release_where(|_, t| t == token);
        }
        cancelled
    }

    /// A one-shot timer at `deadline_ns` on [`Reactor::now_ns`]'s clock. Its event has `result` 0.
    pub fn add_timer(&mut self, deadline_ns: u64, token: u64) -> TimerId {
        self.timers.add(deadline_ns, token)
    }

    /// Cancels a timer. `false` when it already fired or was cancelled (harmless).
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.timers.cancel(timer)
    }

    /// Delivers `signo` as events (`result` = signo, multishot) through a signalfd. The signal is
    /// blocked in the calling thread; cancel the op to stop and unblock it.
    pub fn add_signal(&mut self, signo: i32, token: u64) -> io::Result<OpId> {
        let (signal, signalfd) = self.signals.open(signo)?;
        match self.backend.signal(signalfd, token) {
            Ok(key) => {
                self.signals.started(OpId(key), token, signal);
                Ok(OpId(key))
            }
            Err(err) => {
                self.signals.unblock_unused();
                Err(err)
            }
        }
    }

    /// The bytes of a [`crate::flags::BUFFER`] event; `None` for any other event.
    pub fn event_data(&self, event: &Event) -> Option<&[u8]> {
        if event.flags & crate::flags::BUFFER == 0 {
            return None;
        }
        if event.flags & crate::flags::DATAGRAM != 0 {
            return self.backend.buffers().data_at(
                event.aux,
                crate::datagram::PAYLOAD,
                event.result,
            );
        }
        self.backend.buffers().data(event.aux, event.result)
    }

    /// The sender's address of a datagram event ([`crate::flags::DATAGRAM`]), as the `sockaddr`
    /// bytes `recvmsg` gave (`None` for any other event). Valid as long as its payload.
    pub fn event_source(&self, event: &Event) -> Option<&[u8]> {
        if event.flags & crate::flags::DATAGRAM == 0 {
            return None;
        }
        let buffers = self.backend.buffers();
        let header = buffers.data_at(event.aux, 0, crate::datagram::NAME as i32)?;
        let at = crate::datagram::NAME_LEN;
        let len = u32::from_ne_bytes(header[at..at + 4].try_into().ok()?) as usize;
        let len = len.min(crate::datagram::NAME_MAX) as i32;
        buffers.data_at(event.aux, crate::datagram::NAME, len)
    }

    /// Keeps receive buffer `id` — the `aux` of a [`crate::flags::BUFFER`] event the last
    /// [`Reactor::poll`] returned — beyond the next `poll`: its bytes stay where they are, and
    /// the buffer goes back to the pool only at the first `poll` after
    /// [`Reactor::release_buffer`]. This is how received bytes are sent on without a copy (an
    /// echo, a proxy): [`Reactor::send`] straight from the buffer, released at the send's event.
    ///
    /// A kept buffer is out of the pool meanwhile: keeping many makes receives wait for buffers
    /// (no bytes are lost). Errors: `EINVAL` for an id past the pool, `ENOENT` for a buffer the
    /// last `poll` did not return (or one already kept).
    pub fn keep_buffer(&mut self, id: u32) -> io::Result<()> {
        self.backend.buffers_mut().keep(id)
    }

    /// Gives back a buffer kept with [`Reactor::keep_buffer`]; the next `poll` recycles it.
    /// Errors: `EINVAL` for an id past the pool, `ENOENT` for a buffer that is not kept.
    pub fn release_buffer(&mut self, id: u32) -> io::Result<()> {
        self.backend.buffers_mut().release(id)
    }

    /// The whole receive-buffer region: `(base, buffer_size, buffer_count)`. Buffer `id` starts at
    /// `base + id * buffer_size`. The region's address is fixed for the reactor's lifetime, so a
    /// binding may map it once.
    pub fn buffer_region(&self) -> (*const u8, usize, usize) {
        let pool = self.backend.buffers();
        (pool.base() as *const u8, pool.size(), pool.count())
    }

    /// Sets [`Options::accept_retry_delay`] for accepts that hit a resource error from now on
    /// (`Duration::ZERO`: no back-off). An accept already paused keeps its deadline.
    pub fn set_accept_retry_delay(&mut self, delay: Duration) {
        self.backend.set_accept_retry_delay(delay);
    }

    /// Number of live ops and timers (what closing would cancel).
    pub fn pending(&self) -> usize {
        self.backend.pending() + self.timers.len()
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.signals.release_all();
    }
}
