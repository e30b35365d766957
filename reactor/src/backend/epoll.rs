//! The epoll backend: readiness, with the completion model emulated on top (as libxev does).
//!
//! * One level-triggered registration per fd whose mask is the union of what the ops on that fd
//!   need (a reader watch and a writer watch on one fd, a recv plus a send...). The mask is
//!   recomputed whenever an op on the fd starts, ends or changes state, and `epoll_ctl` is only
//!   called when it changes.
//! * Work is done when the fd is ready: `recv` into a free pool buffer (a one-shot recv reads at
//!   most its limit, EAGAIN keeps it waiting), `accept4` with
//!   `SOCK_NONBLOCK | SOCK_CLOEXEC`, finish a send, read `SO_ERROR` for a connect, read the
//!   signalfd. A send and a connect are tried at once; if they finish, their event is queued for
//!   the next `poll`.
//! * A recv that finds the pool dry is "starved": its read interest is dropped until the next
//!   `poll` has recycled buffers, so the loop does not spin and no byte leaves the socket before
//!   there is room for it. That `poll` then receives for the starved recvs first, in the order
//!   they ran dry, so a busy socket cannot keep another waiting.
//! * Everything is level-triggered, so an fd whose events do not fit is simply reported again.
//!   That lets `epoll_wait` ask for fewer fds when recent receives were large ([`BatchSize`]):
//!   a poll's received bytes then stay in the CPU's cache until the caller has read them.
//! * An accept that hits a resource error (EMFILE...) is "paused": its read interest is dropped
//!   until the back-off delay has passed (`Backoff`), so a listener whose connections cannot
//!   be accepted does not make every `epoll_wait` return at once; `poll` caps its wait at the end
//!   of the delay.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::EpollCreateFlags;
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{accept4, recv, send, sendto, MsgFlags, SockFlag, SockaddrStorage};

use super::{
    accept_error_is_resource, accept_error_is_transient, ready_bits, Backend, Backoff,
    SEND_RETRY_DELAY,
};
use crate::buffers::BufferPool;
use crate::ops::{FdTable, OpTable, Unstashed};
use crate::sys::{
    close_now, errno_of, fork_generation, forked_child_error, from_nix, is_fifo, neg_errno,
    neg_errno_of, read_nowait, recv_datagram, socket_option,
};
use crate::wake::WakeShared;
use crate::{flags, BackendKind, Event, Interest, Options};

/// epoll data of the wake eventfd (caller fds use their fd number).
const WAKE_DATA: u64 = u64::MAX;
/// How many epoll events one `epoll_wait` returns at most; the rest come next time (the kernel
/// moves the fds it reported behind the others, so every ready fd gets its turn).
///
/// Fewer than libuv's 1,024 on purpose: the Python echo server over this backend spent 3.8-3.95 us
/// of CPU per round trip at 100 connections x 1 KiB with 32 fds per wait (16 did as well), 3.9-4.05
/// with 64 and 4.05-4.15 with 256; at 1,000 connections 4.45-4.8 us with 32, 4.9-5.5 with 256. The C
/// example servers cost the same with 32 as with 256 (3.1-3.3 us).
const EPOLL_BATCH: usize = 32;
/// The fewest ready fds one `epoll_wait` asks for, however large the receives.
const MIN_EPOLL_BATCH: usize = 2;
/// About how many bytes the recvs of one `poll` should bring in (see [`BatchSize`]).
const RECV_BYTES_PER_POLL: usize = 256 * 1024;
/// Reads per ready fd and `poll` for one recv: enough to drain a burst, bounded for fairness.
const RECV_BURST: usize = 4;
/// Connections accepted per ready listener and `poll`.
const ACCEPT_BURST: usize = 32;

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const ERR_HUP: u32 = (libc::EPOLLERR | libc::EPOLLHUP) as u32;

enum Kind {
    Watch {
        interest: Interest,
    },
    Recv,
    /// One receive of at most `max` bytes (already capped at the buffer size).
    RecvOnce {
        max: u32,
    },
    /// Datagrams, one per event (see `crate::datagram`).
    RecvMsg,
    Send {
        buf: *const u8,
        len: usize,
        sent: usize,
    },
    /// A datagram send (`sendto`; `to` None: the connected peer), in the fd's send FIFO like a
    /// send: it is tried at once when nothing is queued ahead of it.
    SendTo {
        buf: *const u8,
        len: u32,
        to: Option<Box<SockaddrStorage>>,
    },
    Accept,
    Connect,
    Signal {
        signalfd: SignalFd,
    },
}

struct Op {
    token: u64,
    fd: RawFd,
    kind: Kind,
    /// A recv waiting for free buffers (no read interest meanwhile).
    starved: bool,
    /// An accept backing off after a resource error (no read interest meanwhile).
    paused: bool,
    /// A recv waiting for its fd's stash to be deliverable (no read interest meanwhile, so no
    /// newer byte overtakes the stashed ones).
    waiting: bool,
    /// A multishot recv on a pipe: it reads (found out when `recv` said `ENOTSOCK`).
    pipe: bool,
}

/// How many ready fds to take per `epoll_wait`: [`EPOLL_BATCH`] while receives are small, fewer
/// as they grow, so that one poll receives about [`RECV_BYTES_PER_POLL`].
///
/// Why: every fd of a batch gets its own pool buffer, and the caller reads those buffers only
/// after the whole batch was received. At 100 connections echoing 10 KiB, a batch of 100 ready
/// fds spreads 1 MiB of fresh data over as many buffers; the kernel's copies and the caller's
/// reads then miss the cache. Measured on the Python echo server (server CPU per round trip): at
/// 10 KiB x 100 connections, 5.7-5.8 us with 256 fds per `epoll_wait`, 4.6-4.7 us with 32 (this
/// budget gives 25); at 100 KiB x 100, 34.4 us with 256, 22.3 us with 4 (the budget gives 2).
/// Fewer fds per wait cost an extra `epoll_wait` now and then, which is what keeps the floor at
/// [`MIN_EPOLL_BATCH`].
struct BatchSize {
    /// Received bytes per ready fd, a moving average over recent waits.
    bytes_per_fd: usize,
    /// Bytes received since the current wait returned.
    received: usize,
}

impl BatchSize {
    const fn new() -> BatchSize {
        BatchSize {
            bytes_per_fd: 0,
            received: 0,
        }
    }

    /// How many fds the next `epoll_wait` asks for.
    fn limit(&self) -> usize {
        (RECV_BYTES_PER_POLL / self.bytes_per_fd.max(1)).clamp(MIN_EPOLL_BATCH, EPOLL_BATCH)
    }

    /// Accounts for the `ready_fds` events of the wait that just ended.
    fn update(&mut self, ready_fds: usize) {
        if let Some(sample) = self.received.checked_div(ready_fds) {
            self.bytes_per_fd = (self.bytes_per_fd * 3 + sample) / 4;
        }
        self.received = 0;
    }
}

pub(crate) struct Epoll {
    epoll: nix::sys::epoll::Epoll,
    ops: OpTable<Op>,
    fds: FdTable,
    pool: BufferPool,
    /// Pool buffers neither lent nor queued in an event (LIFO: the warmest buffer first).
    free: Vec<u16>,
    ready: VecDeque<(u64, Event)>,
    starved: Vec<u64>,
    /// Recvs waiting for their fd's stash (`Unstashed::Busy`), served at the start of `poll`.
    stash_waiters: Vec<u64>,
    /// Accepts paused after a resource error, resumed when their delay is over.
    backoff: Backoff,
    /// Datagram sends paused after an `EAGAIN` on a writable socket (see [`SEND_RETRY_DELAY`]).
    send_backoff: Backoff,
    epoll_events: Vec<libc::epoll_event>,
    batch: BatchSize,
    scratch: Vec<u64>,
    wake: Arc<WakeShared>,
    wake_token: u64,
    live: usize,
    fork_generation: u64,
}

// SAFETY: the raw pointers inside (caller send buffers) are only read by the one thread that uses
// the reactor at a time; the caller keeps that memory alive (contract of `send`).
unsafe impl Send for Epoll {}

fn epoll_event(events: u32, data: u64) -> libc::epoll_event {
    libc::epoll_event { events, u64: data }
}

impl Epoll {
    pub(crate) fn new(opts: &Options, wake: Arc<WakeShared>) -> io::Result<Epoll> {
        let epoll =
            nix::sys::epoll::Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(from_nix)?;
        let pool = BufferPool::new(opts.buffer_size, opts.buffer_count)?;
        let free = (0..pool.count() as u16).rev().collect();
        let backend = Epoll {
            epoll,
            ops: OpTable::new(),
            fds: FdTable::default(),
            pool,
            free,
            ready: VecDeque::with_capacity(1024),
            starved: Vec::new(),
            stash_waiters: Vec::new(),
            backoff: Backoff::new(opts.accept_retry_delay),
            send_backoff: Backoff::new(SEND_RETRY_DELAY),
            epoll_events: vec![epoll_event(0, 0); EPOLL_BATCH],
            batch: BatchSize::new(),
            scratch: Vec::new(),
            wake_token: opts.wake_token,
            wake: wake.clone(),
            live: 0,
            fork_generation: fork_generation(),
        };
        backend.ctl(libc::EPOLL_CTL_ADD, wake.fd(), IN, WAKE_DATA)?;
        Ok(backend)
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, data: u64) -> io::Result<()> {
        if self.fork_generation != fork_generation() {
            // The epoll set is shared with the parent: a child must not change it.
            return Err(forked_child_error());
        }
        let mut event = epoll_event(events, data);
        // SAFETY: plain syscall on our epoll fd; `event` lives across the call. A closed or
        // foreign `fd` only yields an error.
        neg_errno(unsafe { libc::epoll_ctl(self.epoll.0.as_raw_fd(), op, fd, &mut event) })
            .map(drop)
    }

    fn interest_of(&self, key: u64, op: &Op) -> u32 {
        match &op.kind {
            Kind::Watch { interest } => {
                let mut mask = 0;
                if interest.contains(Interest::READABLE) {
                    mask |= IN;
                }
                if interest.contains(Interest::WRITABLE) {
                    mask |= OUT;
                }
                mask
            }
            Kind::Recv
            | Kind::RecvOnce { .. }
            | Kind::RecvMsg
            | Kind::Accept
            | Kind::Signal { .. }
                if !op.starved && !op.paused && !op.waiting =>
            {
                IN
            }
            Kind::Recv
            | Kind::RecvOnce { .. }
            | Kind::RecvMsg
            | Kind::Accept
            | Kind::Signal { .. } => 0,
            Kind::Send { .. } | Kind::SendTo { .. } => {
                if self.fds.is_send_head(op.fd, key) && !op.paused {
                    OUT
                } else {
                    0
                }
            }
            Kind::Connect => OUT,
        }
    }

    /// Brings the fd's epoll registration in line with the ops on it.
    fn update_interest(&mut self, fd: RawFd) -> io::Result<()> {
        self.sync_interest(fd, false)
    }

    /// As [`Epoll::update_interest`]; `verify` re-applies an unchanged registration, which finds
    /// an fd number that the caller closed (dropping it from the set) and reused meanwhile.
    fn sync_interest(&mut self, fd: RawFd, verify: bool) -> io::Result<()> {
        let Some(entry) = self.fds.get(fd) else {
            return Ok(());
        };
        let mut mask = 0;
        for &key in &entry.ops {
            if let Some(op) = self.ops.get(key) {
                mask |= self.interest_of(key, op);
            }
        }
        let registered = entry.registered;
        if mask == registered && !(verify && mask != 0) {
            return Ok(());
        }
        let data = fd as u64;
        let result = if mask == 0 {
            // The fd may already be closed (and so gone from the set): nothing left to undo.
            let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, data);
            Ok(())
        } else if registered == 0 {
            match self.ctl(libc::EPOLL_CTL_ADD, fd, mask, data) {
                Err(err) if err.raw_os_error() == Some(libc::EEXIST) => {
                    self.ctl(libc::EPOLL_CTL_MOD, fd, mask, data)
                }
                other => other,
            }
        } else {
            match self.ctl(libc::EPOLL_CTL_MOD, fd, mask, data) {
                // The caller closed the fd (which left the set) and the number was reused.
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    self.ctl(libc::EPOLL_CTL_ADD, fd, mask, data)
                }
                other => other,
            }
        };
        let entry = self.fds.entry(fd);
        entry.registered = if result.is_ok() {
            mask
        } else if mask == 0 {
            0
        } else {
            registered
        };
        result
    }

    /// Adds an op and registers interest for it; undone if the kernel refuses the fd.
    fn start(&mut self, fd: RawFd, token: u64, kind: Kind) -> io::Result<u64> {
        self.fds.check(fd)?;
        let key = self.insert(fd, token, kind);
        if let Err(err) = self.sync_interest(fd, true) {
            self.discard(key);
            return Err(err);
        }
        Ok(key)
    }

    fn insert(&mut self, fd: RawFd, token: u64, kind: Kind) -> u64 {
        let key = self.ops.insert(Op {
            token,
            fd,
            kind,
            starved: false,
            paused: false,
            waiting: false,
            pipe: false,
        });
        self.fds.add_op(fd, key);
        self.live += 1;
        key
    }

    /// An op that completed synchronously: its id is stale at once, its event is queued.
    fn completed_now(&mut self, token: u64, result: i32) -> u64 {
        let key = self.ops.insert(Op {
            token,
            fd: -1,
            kind: Kind::Connect,
            starved: false,
            paused: false,
            waiting: false,
            pipe: false,
        });
        self.ops.remove(key);
        self.emit(0, token, result, 0, 0);
        key
    }

    fn discard(&mut self, key: u64) {
        let Some(op) = self.ops.remove(key) else {
            return;
        };
        self.live -= 1;
        if op.paused {
            match op.kind {
                Kind::SendTo { .. } => self.send_backoff.forget(key),
                _ => self.backoff.forget(key),
            }
        }
        self.fds.remove_op(op.fd, key);
        let _ = self.update_interest(op.fd);
    }

    fn emit(&mut self, key: u64, token: u64, result: i32, flags: u32, aux: u64) {
        self.ready.push_back((
            key,
            Event {
                token,
                result,
                flags,
                aux,
            },
        ));
    }

    /// Ends an op with its final event.
    fn finish(&mut self, key: u64, result: i32) {
        if let Some(op) = self.ops.get(key) {
            let token = op.token;
            self.emit(0, token, result, 0, 0);
            self.discard(key);
        }
    }

    fn on_ready(&mut self, fd: RawFd, revents: u32) {
        let mut keys = std::mem::take(&mut self.scratch);
        self.fds.ops_on(fd, &mut keys, false);
        for &key in &keys {
            let Some(op) = self.ops.get(key) else {
                continue;
            };
            let token = op.token;
            match &op.kind {
                Kind::Watch { interest } => {
                    let bits = ready_bits(revents, *interest);
                    if bits != 0 {
                        self.emit(key, token, bits as i32, flags::MORE, 0);
                    }
                }
                Kind::Recv if !op.starved && !op.waiting && revents & (IN | ERR_HUP) != 0 => {
                    let pipe = op.pipe;
                    self.do_recv(key, fd, token, pipe)
                }
                &Kind::RecvOnce { max }
                    if !op.starved && !op.waiting && revents & (IN | ERR_HUP) != 0 =>
                {
                    self.do_recv_once(key, fd, token, max)
                }
                Kind::RecvMsg if !op.starved && revents & (IN | ERR_HUP) != 0 => {
                    self.do_recvmsg(key, fd, token)
                }
                Kind::Accept if !op.paused && revents & (IN | ERR_HUP) != 0 => {
                    self.do_accept(key, fd, token)
                }
                Kind::Send { .. } | Kind::SendTo { .. }
                    if !op.paused
                        && revents & (OUT | ERR_HUP) != 0
                        && self.fds.is_send_head(fd, key) =>
                {
                    self.do_send(key, fd, true);
                }
                Kind::Connect if revents & (OUT | ERR_HUP) != 0 => {
                    let result = match socket_option(fd, libc::SO_ERROR) {
                        Ok(error) => -error,
                        Err(err) => errno_of(&err),
                    };
                    self.finish(key, result);
                }
                Kind::Signal { signalfd } if revents & IN != 0 => {
                    while let Ok(Some(info)) = signalfd.read_signal() {
                        let event = Event {
                            token,
                            result: info.ssi_signo as i32,
                            flags: flags::MORE,
                            aux: 0,
                        };
                        self.ready.push_back((key, event));
                    }
                }
                _ => {}
            }
        }
        keys.clear();
        self.scratch = keys;
        let _ = self.update_interest(fd);
    }

    /// A free buffer for recv `key`; without one the recv is starved: it loses its read interest
    /// until the next `poll` has recycled buffers, and then receives before the others.
    fn free_buffer_for(&mut self, key: u64) -> Option<u16> {
        let bid = self.free.pop();
        if bid.is_none() {
            if let Some(op) = self.ops.get_mut(key) {
                op.starved = true;
                self.starved.push(key);
            }
        }
        bid
    }

    /// Receives for recv `key`; `pipe`: its fd is known to be a pipe (read it).
    fn do_recv(&mut self, key: u64, fd: RawFd, token: u64, mut pipe: bool) {
        for _ in 0..RECV_BURST {
            let Some(bid) = self.free_buffer_for(key) else {
                return;
            };
            // SAFETY: a free buffer is referenced by nobody else; it lies inside the pool.
            let buf = unsafe {
                std::slice::from_raw_parts_mut(self.pool.buffer_ptr(bid), self.pool.size())
            };
            let received = if pipe {
                read_nowait(fd, buf).map_err(|err| Errno::from_raw(-errno_of(&err)))
            } else {
                recv(fd, buf, MsgFlags::MSG_DONTWAIT)
            };
            match received {
                Ok(0) => {
                    self.free.push(bid);
                    self.finish(key, 0);
                    return;
                }
                Ok(n) => {
                    self.batch.received += n;
                    self.emit(
                        key,
                        token,
                        n as i32,
                        flags::MORE | flags::BUFFER,
                        u64::from(bid),
                    );
                    if n < self.pool.size() {
                        return;
                    }
                }
                Err(Errno::EINTR) => self.free.push(bid),
                Err(Errno::EAGAIN) => {
                    self.free.push(bid);
                    return;
                }
                Err(Errno::ENOTSOCK) if !pipe && is_fifo(fd) => {
                    // A pipe: read it from now on (without blocking, whatever its O_NONBLOCK).
                    self.free.push(bid);
                    pipe = true;
                    if let Some(op) = self.ops.get_mut(key) {
                        op.pipe = true;
                    }
                }
                Err(errno) => {
                    self.free.push(bid);
                    self.finish(key, neg_errno_of(errno));
                    return;
                }
            }
        }
    }

    fn do_recv_once(&mut self, key: u64, fd: RawFd, token: u64, max: u32) {
        loop {
            let Some(bid) = self.free_buffer_for(key) else {
                return;
            };
            // SAFETY: a free buffer is referenced by nobody else; it lies inside the pool, and
            // `max <= size` (see `recv_once_cap`).
            let buf =
                unsafe { std::slice::from_raw_parts_mut(self.pool.buffer_ptr(bid), max as usize) };
            match recv(fd, buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    self.free.push(bid);
                    self.finish(key, 0);
                }
                Ok(n) => {
                    self.batch.received += n;
                    // Its one event; the op is over.
                    self.emit(0, token, n as i32, flags::BUFFER, u64::from(bid));
                    self.discard(key);
                }
                Err(Errno::EINTR) => {
                    self.free.push(bid);
                    continue;
                }
                Err(Errno::EAGAIN) => self.free.push(bid),
                Err(errno) => {
                    self.free.push(bid);
                    self.finish(key, neg_errno_of(errno));
                }
            }
            return;
        }
    }

    fn do_recvmsg(&mut self, key: u64, fd: RawFd, token: u64) {
        for _ in 0..RECV_BURST {
            let Some(bid) = self.free_buffer_for(key) else {
                return;
            };
            // SAFETY: a free buffer is referenced by nobody else; the pool's buffers are larger
            // than `datagram::PAYLOAD` (checked by `Reactor::recvmsg_multi`).
            let received =
                unsafe { recv_datagram(fd, self.pool.buffer_ptr(bid), self.pool.size()) };
            match received {
                Ok(held) => {
                    self.batch.received += held;
                    let flags = flags::MORE | flags::BUFFER | flags::DATAGRAM;
                    self.emit(key, token, held as i32, flags, u64::from(bid));
                }
                Err(err) => {
                    self.free.push(bid);
                    match err.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        Some(libc::EAGAIN) => {}
                        _ => self.finish(key, errno_of(&err)),
                    }
                    return;
                }
            }
        }
    }

    fn do_accept(&mut self, key: u64, fd: RawFd, token: u64) {
        for _ in 0..ACCEPT_BURST {
            match accept4(fd, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC) {
                Ok(new_fd) => self.emit(key, token, new_fd, flags::MORE, 0),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(errno) if accept_error_is_transient(errno as i32) => {
                    // Reported; level-triggered readiness brings the listener back next poll,
                    // except after a resource error: then its read interest is dropped (by
                    // `on_ready`'s interest update) until the back-off delay is over.
                    self.emit(key, token, neg_errno_of(errno), flags::MORE, 0);
                    if accept_error_is_resource(errno as i32) && self.backoff.pause(key) {
                        if let Some(op) = self.ops.get_mut(key) {
                            op.paused = true;
                        }
                    }
                    return;
                }
                Err(errno) => {
                    self.finish(key, neg_errno_of(errno));
                    return;
                }
            }
        }
    }

    /// Adds a send (or datagram send) to its fd's FIFO, trying it right away when nothing is
    /// queued ahead, as most sends fit in the socket buffer.
    fn queue_send(&mut self, fd: RawFd, token: u64, kind: Kind) -> io::Result<u64> {
        let key = self.insert(fd, token, kind);
        if self.fds.push_send(fd, key) {
            self.do_send(key, fd, false);
        }
        if self.ops.get(key).is_some() {
            if let Err(err) = self.update_interest(fd) {
                self.discard(key);
                return Err(err);
            }
        }
        Ok(key)
    }

    /// Pushes a send forward; ends it when done or failed. `writable`: the socket has just polled
    /// writable (a datagram send refused then pauses, see [`SEND_RETRY_DELAY`]).
    fn do_send(&mut self, key: u64, fd: RawFd, writable: bool) {
        let Some(op) = self.ops.get_mut(key) else {
            return;
        };
        let (buf, len, sent) = match &mut op.kind {
            Kind::Send { buf, len, sent } => (*buf, *len, sent),
            Kind::SendTo { buf, len, to } => {
                // SAFETY: the caller keeps `buf..buf+len` valid and unmodified until the final
                // event (contract of `Reactor::send_to`).
                let datagram = unsafe { std::slice::from_raw_parts(*buf, *len as usize) };
                let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
                let result = loop {
                    let sent = match to {
                        Some(to) => sendto(fd, datagram, &**to, flags),
                        None => send(fd, datagram, flags),
                    };
                    match sent {
                        Ok(n) => break n.min(i32::MAX as usize) as i32,
                        Err(Errno::EINTR) => {}
                        Err(Errno::EAGAIN) => {
                            if writable && self.send_backoff.pause(key) {
                                op.paused = true;
                                let _ = self.update_interest(fd);
                            }
                            return;
                        }
                        Err(errno) => break neg_errno_of(errno),
                    }
                };
                self.finish(key, result);
                return;
            }
            _ => return,
        };
        let result = loop {
            if *sent == len {
                break Some(len.min(i32::MAX as usize) as i32);
            }
            // SAFETY: the caller keeps `buf..buf+len` valid and unmodified until the final event
            // (contract of `Reactor::send`); `sent < len`.
            let rest = unsafe { std::slice::from_raw_parts(buf.add(*sent), len - *sent) };
            match send(fd, rest, MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT) {
                Ok(n) => *sent += n,
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break None,
                Err(errno) => break Some(neg_errno_of(errno)),
            }
        };
        if let Some(result) = result {
            self.finish(key, result);
        }
    }

    /// Drops queued events of a cancelled op, giving back what they held: received bytes go to
    /// the fd's stash (a stream must not lose them), accepted fds nobody saw are closed.
    fn purge_ready(&mut self, key: u64, fd: RawFd, is_recv: bool, is_accept: bool) {
        let mut i = 0;
        while i < self.ready.len() {
            if self.ready[i].0 != key {
                i += 1;
                continue;
            }
            let Some((_, event)) = self.ready.remove(i) else {
                break;
            };
            if event.flags & flags::BUFFER != 0 {
                let bid = event.aux as u16;
                if !(is_recv && self.fds.stash(fd, bid, event.result)) {
                    self.free.push(bid);
                }
            } else if is_accept && event.result >= 0 {
                // SAFETY: an accepted fd the caller never saw; the reactor owns it.
                drop(unsafe { OwnedFd::from_raw_fd(event.result) });
            }
        }
    }

    /// Recycles `fd`'s stash (closing, or no longer the socket the bytes came from).
    fn release_stash(&mut self, fd: RawFd) {
        let free = &mut self.free;
        self.fds.release_stash(fd, |bid| free.push(bid));
    }

    /// Delivers the stash of recv `key`'s fd first — all of it for a multishot, one chunk (which
    /// completes it) for a one-shot. `true` when the recv needs no read interest now: completed,
    /// or waiting (`Unstashed::Busy`, until the next `poll`).
    fn serve_stash(&mut self, key: u64) -> bool {
        let Some(op) = self.ops.get(key) else {
            return true;
        };
        let (fd, token) = (op.fd, op.token);
        let once = match op.kind {
            Kind::RecvOnce { max } => Some(max as usize),
            _ => None,
        };
        while self.fds.has_stash(fd) {
            match self
                .fds
                .next_stashed(fd, once.unwrap_or(usize::MAX), &self.pool)
            {
                Unstashed::Empty => break,
                Unstashed::Stale => self.release_stash(fd),
                Unstashed::Busy => {
                    if let Some(op) = self.ops.get_mut(key) {
                        op.waiting = true;
                    }
                    self.stash_waiters.push(key);
                    return true;
                }
                Unstashed::Chunk { bid, len } if once.is_some() => {
                    self.emit(0, token, len, flags::BUFFER, u64::from(bid));
                    self.discard(key);
                    return true;
                }
                Unstashed::Chunk { bid, len } => {
                    self.emit(key, token, len, flags::MORE | flags::BUFFER, u64::from(bid))
                }
            }
        }
        false
    }

    /// Serves the recvs that waited for a stash, giving them their read interest back.
    fn serve_stash_waiters(&mut self) {
        if self.stash_waiters.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.stash_waiters);
        for &key in &keys {
            let Some(op) = self.ops.get_mut(key) else {
                continue;
            };
            if !op.waiting {
                continue;
            }
            op.waiting = false;
            let fd = op.fd;
            if !self.serve_stash(key) {
                if let Err(err) = self.update_interest(fd) {
                    self.finish(key, errno_of(&err));
                }
            }
        }
        keys.clear();
        let again = std::mem::replace(&mut self.stash_waiters, keys);
        self.stash_waiters.extend(again);
    }

    /// Adds a recv: its fd's stash goes first (see [`Epoll::serve_stash`]), then it listens.
    fn start_recv(&mut self, fd: RawFd, token: u64, kind: Kind) -> io::Result<u64> {
        self.fds.check(fd)?;
        let once = matches!(kind, Kind::RecvOnce { .. });
        let key = self.insert(fd, token, kind);
        if self.serve_stash(key) {
            return Ok(key);
        }
        if let Err(err) = self.sync_interest(fd, true) {
            self.discard(key);
            if once && err.raw_os_error() == Some(libc::EPERM) {
                // epoll refuses regular files and directories; a receive from one is what the
                // io_uring backend reports for it.
                return Ok(self.completed_now(token, -libc::ENOTSOCK));
            }
            return Err(err);
        }
        Ok(key)
    }

    /// Gives accepts and datagram sends whose back-off delay is over their interest back; one
    /// whose fd the kernel no longer accepts (closed behind the reactor's back) ends with that
    /// error.
    fn resume_paused(&mut self) {
        if self.backoff.is_empty() && self.send_backoff.is_empty() {
            return; // every poll of a loop with no paused op
        }
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        self.backoff.take_due(&mut keys);
        self.send_backoff.take_due(&mut keys);
        for &key in &keys {
            let Some(op) = self.ops.get_mut(key) else {
                continue;
            };
            op.paused = false;
            let fd = op.fd;
            if let Err(err) = self.update_interest(fd) {
                self.finish(key, errno_of(&err));
            }
        }
        keys.clear();
        self.scratch = keys;
    }

    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<usize> {
        let timeout_ms = match timeout {
            None => -1,
            // Rounded up: waking before a timer's deadline would only spin.
            Some(d) => d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32,
        };
        let room = self.batch.limit().min(self.epoll_events.len());
        // SAFETY: the buffer holds at least `room` writable epoll_event records.
        let rc = unsafe {
            libc::epoll_wait(
                self.epoll.0.as_raw_fd(),
                self.epoll_events.as_mut_ptr(),
                room as i32,
                timeout_ms,
            )
        };
        neg_errno(rc).map(|n| n as usize)
    }
}

impl Backend for Epoll {
    fn kind(&self) -> BackendKind {
        BackendKind::Epoll
    }

    fn buffers(&self) -> &BufferPool {
        &self.pool
    }

    fn buffers_mut(&mut self) -> &mut BufferPool {
        &mut self.pool
    }

    fn poll(&mut self, timeout: Option<Duration>, events: &mut [Event]) -> io::Result<usize> {
        if self.fork_generation != fork_generation() {
            return Err(forked_child_error());
        }
        for bid in self.pool.take_lent() {
            // A pinned buffer is still stashed behind the chunk the caller just had.
            if !self.fds.unpin(bid) {
                self.free.push(bid);
            }
        }
        self.serve_stash_waiters();
        self.resume_paused();
        if !self.free.is_empty() && !self.starved.is_empty() {
            // Receives that ran the pool dry go first, in the order they did: they receive now,
            // before `epoll_wait` reports sockets whose receives started later and would take
            // the buffers they wait for. One that finds the pool dry again waits again, in turn.
            let mut starved = std::mem::take(&mut self.starved);
            for &key in &starved {
                let Some(op) = self.ops.get_mut(key) else {
                    continue;
                };
                op.starved = false;
                let (fd, token, waiting, pipe) = (op.fd, op.token, op.waiting, op.pipe);
                match op.kind {
                    Kind::Recv if !waiting => self.do_recv(key, fd, token, pipe),
                    Kind::RecvOnce { max } if !waiting => self.do_recv_once(key, fd, token, max),
                    Kind::RecvMsg => self.do_recvmsg(key, fd, token),
                    _ => {}
                }
                let _ = self.update_interest(fd);
            }
            starved.clear();
            if self.starved.is_empty() {
                self.starved = starved; // (keeps the allocation)
            }
        }
        let room = events.len();
        if self.ready.len() < room {
            let deadline = timeout.and_then(|d| Instant::now().checked_add(d));
            let mut wait = if self.ready.is_empty() {
                timeout
            } else {
                Some(Duration::ZERO)
            };
            loop {
                // A paused accept's delay ends the wait early (like a timer), never later.
                let count = match self.wait(self.send_backoff.cap(self.backoff.cap(wait))) {
                    Ok(count) => count,
                    Err(err) if err.raw_os_error() == Some(libc::EINTR) => break,
                    Err(err) => return Err(err),
                };
                for i in 0..count {
                    let libc::epoll_event {
                        events: revents,
                        u64: data,
                    } = self.epoll_events[i];
                    if data == WAKE_DATA {
                        // Consume the counter first, then clear the flag (see wake.rs).
                        self.wake.drain();
                        self.wake.clear();
                        let wake_token = self.wake_token;
                        self.emit(0, wake_token, 0, 0, 0);
                    } else {
                        self.on_ready(data as RawFd, revents);
                    }
                }
                self.batch.update(count);
                // One whose delay is over listens again; the next wait sees its backlog.
                self.resume_paused();
                if !self.ready.is_empty() || wait == Some(Duration::ZERO) {
                    break;
                }
                // Readiness without news (e.g. a spurious wakeup): wait out the rest.
                match deadline {
                    Some(deadline) => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        wait = Some(deadline - now);
                    }
                    None if timeout.is_some() => break,
                    None => {}
                }
            }
        }
        let mut n = 0;
        while n < room {
            let Some((_, event)) = self.ready.pop_front() else {
                break;
            };
            if event.flags & flags::BUFFER != 0 {
                self.pool.lend(event.aux as u16);
            }
            events[n] = event;
            n += 1;
        }
        Ok(n)
    }

    fn watch(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<u64> {
        self.start(fd, token, Kind::Watch { interest })
    }

    fn recv_multi(&mut self, fd: RawFd, token: u64) -> io::Result<u64> {
        // Bytes an earlier, cancelled recv on this socket took out of it come first.
        self.start_recv(fd, token, Kind::Recv)
    }

    fn recv_once(&mut self, fd: RawFd, max_len: u32, token: u64) -> io::Result<u64> {
        let max = super::recv_once_cap(max_len, self.pool.size());
        self.start_recv(fd, token, Kind::RecvOnce { max })
    }

    fn recvmsg_multi(&mut self, fd: RawFd, token: u64) -> io::Result<u64> {
        self.start(fd, token, Kind::RecvMsg)
    }

    unsafe fn send(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: usize,
        token: u64,
    ) -> io::Result<u64> {
        self.fds.check(fd)?;
        if buf.is_null() && len > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "send from a null buffer",
            ));
        }
        self.queue_send(fd, token, Kind::Send { buf, len, sent: 0 })
    }

    unsafe fn send_to(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        to: Option<&SockaddrStorage>,
        token: u64,
    ) -> io::Result<u64> {
        self.fds.check(fd)?;
        let to = to.map(|addr| Box::new(*addr));
        self.queue_send(fd, token, Kind::SendTo { buf, len, to })
    }

    fn accept_multi(&mut self, fd: RawFd, token: u64) -> io::Result<u64> {
        self.start(fd, token, Kind::Accept)
    }

    fn connect(&mut self, fd: RawFd, addr: &SockaddrStorage, token: u64) -> io::Result<u64> {
        self.fds.check(fd)?;
        match nix::sys::socket::connect(fd, addr) {
            Ok(()) => Ok(self.completed_now(token, 0)),
            // In progress (EINTR too: the connection keeps going in the background).
            Err(Errno::EINPROGRESS) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                self.start(fd, token, Kind::Connect)
            }
            Err(errno) => Ok(self.completed_now(token, neg_errno_of(errno))),
        }
    }

    fn close(&mut self, fd: OwnedFd, token: u64) -> io::Result<u64> {
        let raw = fd.as_raw_fd();
        let mut keys = std::mem::take(&mut self.scratch);
        self.fds.ops_on(raw, &mut keys, false);
        for &key in &keys {
            self.cancel(key);
        }
        keys.clear();
        self.scratch = keys;
        self.release_stash(raw);
        let result = close_now(fd);
        Ok(self.completed_now(token, result))
    }

    fn signal(&mut self, signalfd: SignalFd, token: u64) -> io::Result<u64> {
        let fd = signalfd.as_raw_fd();
        self.start(fd, token, Kind::Signal { signalfd })
    }

    fn cancel(&mut self, key: u64) -> bool {
        let Some(op) = self.ops.get(key) else {
            return false;
        };
        let token = op.token;
        let (fd, is_recv, is_accept) = (
            op.fd,
            matches!(op.kind, Kind::Recv),
            matches!(op.kind, Kind::Accept),
        );
        let once = matches!(op.kind, Kind::RecvOnce { .. });
        let send_result = match op.kind {
            Kind::Send { sent, .. } if sent > 0 => Some(sent.min(i32::MAX as usize) as i32),
            Kind::Send { .. } | Kind::SendTo { .. } => Some(-libc::ECANCELED),
            _ => None,
        };
        self.purge_ready(key, fd, is_recv, is_accept);
        if let Some(result) = send_result {
            // The one final event a send owes; the caller's memory is no longer read.
            self.emit(0, token, result, 0, 0);
        }
        if once {
            // Its one event. Nothing was taken from the socket for it: a one-shot's bytes end
            // it at once.
            self.emit(0, token, -libc::ECANCELED, 0, 0);
        }
        self.discard(key);
        true
    }

    fn cancel_token(&mut self, token: u64) -> usize {
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        self.ops.keys_where(&mut keys, |op| op.token == token);
        let mut count = 0;
        for &key in &keys {
            count += usize::from(self.cancel(key));
        }
        keys.clear();
        self.scratch = keys;
        count
    }

    fn pending(&self) -> usize {
        self.live
    }

    fn set_accept_retry_delay(&mut self, delay: Duration) {
        self.backoff.set_delay(delay);
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // Accepted fds queued for the caller but never delivered belong to the reactor.
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        self.ops
            .keys_where(&mut keys, |op| matches!(op.kind, Kind::Accept));
        for &key in &keys {
            let fd = self.ops.get(key).map_or(-1, |op| op.fd);
            self.purge_ready(key, fd, false, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_size_follows_the_size_of_receives() {
        let mut batch = BatchSize::new();
        assert_eq!(
            batch.limit(),
            EPOLL_BATCH,
            "nothing received yet: take every ready fd"
        );

        // Ready fds with 10 KiB each, wait after wait: the limit settles where one wait
        // brings in about RECV_BYTES_PER_POLL.
        for _ in 0..32 {
            let fds = batch.limit();
            batch.received = fds * 10 * 1024;
            batch.update(fds);
        }
        assert_eq!(batch.limit(), RECV_BYTES_PER_POLL / (10 * 1024));

        // Huge receives never stop the fds from being taken at all.
        for _ in 0..32 {
            batch.received = 4 << 20;
            batch.update(2);
        }
        assert_eq!(batch.limit(), MIN_EPOLL_BATCH);

        // Readiness-only events (watches, the wake) receive nothing: back to full batches.
        for _ in 0..64 {
            batch.update(50);
        }
        assert_eq!(batch.limit(), EPOLL_BATCH);
        assert_eq!(batch.received, 0);

        // A wait that timed out (no events) leaves the estimate as it was.
        batch.received = 0;
        batch.update(0);
        assert_eq!(batch.limit(), EPOLL_BATCH);
    }
}
