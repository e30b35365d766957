//! Callback mode: an event loop that dispatches the reactor's events to callbacks, with timers,
//! thread-safe calls, futures and a thread pool.
//!
//! [`EventLoop`] owns a [`Reactor`] and is used from one thread (it is not `Send`: it stores Rust
//! closures); [`LoopHandle`] and [`LoopFuture`] are the thread-safe parts.
//!
//! # Callbacks
//!
//! Every registration takes either a Rust closure (boxed: one allocation per registration) or a
//! [`RawCallback`] — a function pointer plus two opaque words, which never allocates. The C ABI
//! uses the raw form, so the C echo server's hot path (recv → send → send completion) allocates
//! nothing once the loop's tables have grown to their working size. Callbacks receive
//! `&mut EventLoop` and may do anything with it except re-enter [`EventLoop::run`] /
//! [`EventLoop::poll_raw`] (refused with a [`StateError`]) or replace or drop the loop (which
//! aborts the process: the loop cannot continue an iteration whose state was taken away).
//!
//! # For embedders (the C ABI)
//!
//! * A C callback `void cb(rl_loop *, ..., void *data)` is registered as a [`RawCallback`] whose
//!   `func` is a per-kind Rust trampoline, `data` the C data and `extra` the C function pointer;
//!   the trampoline gets the [`Outcome`] and the loop, and finds the C `rl_loop *` in
//!   [`EventLoop::context`] (set once with [`EventLoop::set_context`]) and a future's handle in
//!   [`LoopFuture::tag`]. Nothing is allocated per registration.
//! * Calls a callback makes back into the loop (`rl_call_soon` from inside a callback) must go
//!   through the `&mut EventLoop` the trampoline was given — the `run`/`poll_raw` caller's
//!   exclusive borrow is still live — so the embedder should make that pointer available to
//!   reentrant calls for the duration of the trampoline rather than look the loop up again.
//! * A trampoline that calls foreign code which may unwind must catch the unwind itself.
//! * `EventLoop` is not `Send` because it stores Rust closures that need not be; an embedder that
//!   registers only raw callbacks and `Send` closures may assert `Send` on a wrapper.
//! * Errors: [`StateError`] (wrong state) and `io::Error`s carrying a raw OS error (`EINVAL`,
//!   `EBADF`, `ENOMEM`, and what the kernel returned).
//!
//! # Iterations and ordering
//!
//! One iteration: update the cached time, run due timers, wait for events (not at all when
//! callbacks are ready; else until the next timer deadline, or forever when something else keeps
//! the loop alive), dispatch the events to their callbacks, update the time, run due timers again,
//! then run the callbacks that were ready when this step began. Callbacks scheduled in one
//! iteration run in FIFO order (those scheduled while the ready queue runs wait for the next
//! iteration, as in asyncio); timers run in deadline order, ties in the order they were scheduled;
//! a timer scheduled while timers run waits for the next pass.
//!
//! # What keeps [`RunMode::Default`] running ("alive", as in libuv)
//!
//! Ready callbacks, queued thread-safe calls, live timers, reader/writer watches, live ops
//! (accept, recv, send, connect, close, signal handlers), pending futures with done-callbacks,
//! and thread-pool jobs in flight. Ops submitted in raw mode through [`EventLoop::reactor_mut`]
//! do not.
//!
//! # Tokens
//!
//! The loop's own reactor ops carry tokens with the top bit set ([`TOKEN_RESERVED`]); raw-mode ops
//! must use tokens below it ([`RawOps`] refuses others with `EINVAL`). The wake event
//! ([`Options::wake_token`], `u64::MAX` by default) is the one exception.
//!
//! # Panics
//!
//! A panicking Rust callback unwinds out of `run` / `poll_raw` to their caller and leaves the loop
//! consistent: the callback that panicked is treated as having run (a persistent one stays
//! registered), events of the interrupted batch are dispatched at the start of the next
//! iteration, and raw events [`EventLoop::poll_raw`] had collected are returned by its next call.
//! The C ABI catches panics at its boundary; C callbacks cannot unwind.
//!
//! # Closing
//!
//! [`EventLoop::shutdown`] (and dropping the loop) cancels and drains everything in flight: the
//! thread pool stops (jobs not started are dropped, their futures cancelled; running jobs are
//! waited for), pending futures with done-callbacks are cancelled and those callbacks run, every
//! op and watch is cancelled, sends are waited for until the kernel no longer reads their memory
//! (their callbacks get their final result, usually `-ECANCELED`; a send the kernel still holds
//! after 10 s is abandoned: its owned bytes are leaked rather than freed and its raw callback is
//! not called, since freeing memory the kernel may read is worse), and every other raw callback
//! that never got its event is called once with `result == -ECANCELED` so C callers can free
//! their data; Rust closures that never got their event are dropped (which frees what they
//! captured). Fds the caller owns are not closed, except fds accepted for a callback that no
//! longer exists, which nobody else could close. Raw-mode events not yet collected with
//! `poll_raw` are discarded. Thread-pool jobs that never return make the close wait forever
//! (threads cannot be killed); a job must not wait for the loop it belongs to.

mod future;
mod genslab;
mod handler;
mod pool;
mod raw;
mod remote;
mod timers;

use std::collections::VecDeque;
use std::ffi::c_void;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::SockaddrStorage;

use crate::{flags, BackendKind, Event, Interest, OpId, Options, Reactor};

pub use future::{FutureState, LoopFuture, ERR_PANICKED};
pub use handler::{Outcome, RawCallback, RawFn};
pub use pool::{RawWork, RawWorkFn, DEFAULT_POOL_SIZE, MAX_POOL_SIZE};
pub use raw::RawOps;
pub use remote::LoopHandle;
pub use timers::TimerHandle;

use genslab::{GenSlab, Key, GEN_MASK};
use handler::Handler;
use pool::{Pool, Work};
use remote::{Remote, RemoteItem};
use timers::Timers;

/// Tokens with this bit set belong to the loop's own ops.
pub const TOKEN_RESERVED: u64 = 1 << 63;

/// How long [`EventLoop::run`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunMode {
    /// Until [`EventLoop::stop`] or until nothing keeps the loop alive (see the module doc).
    Default,
    /// Waits until at least one callback ran or the loop was woken ([`LoopHandle::wake`]) — or
    /// returns at once when nothing keeps the loop alive or a stop was requested — runs
    /// everything ready in that iteration, and returns.
    Once,
    /// One iteration that does not wait.
    NoWait,
}

/// The error for a call made in the wrong loop state: `run`/`poll_raw`/`shutdown` from inside a
/// callback, or any registration on a closed loop. Returned inside an [`io::Error`] of kind
/// `Other`; find it with `err.get_ref().and_then(|e| e.downcast_ref::<StateError>())` (the C ABI
/// maps it to `RL_ESTATE`).
#[derive(Debug, Clone)]
pub struct StateError {
    what: &'static str,
}

impl StateError {
    pub(crate) fn new(what: &'static str) -> StateError {
        StateError { what }
    }

    /// Whether `err` is (wraps) a `StateError`.
    pub fn is(err: &io::Error) -> bool {
        err.get_ref().is_some_and(|e| e.is::<StateError>())
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.what)
    }
}

impl std::error::Error for StateError {}

impl From<StateError> for io::Error {
    fn from(e: StateError) -> io::Error {
        io::Error::other(e)
    }
}

/// Identifies one callback-mode op (accept, recv, send, connect, close, signal) for
/// [`EventLoop::cancel`]. Carries a generation: a handle of an op that ended is harmlessly not
/// found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpHandle(u64);

impl OpHandle {
    /// The handle as a plain integer, for the C ABI (never `0`).
    pub const fn into_raw(self) -> u64 {
        self.0
    }

    /// Rebuilds a handle from [`OpHandle::into_raw`]; a forged or stale value is not found.
    pub const fn from_raw(raw: u64) -> OpHandle {
        OpHandle(raw)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Reader = 0,
    Writer = 1,
    Recv = 2,
    Accept = 3,
    Send = 4,
    Connect = 5,
    Close = 6,
    Signal = 7,
}

impl OpKind {
    const ALL: [OpKind; 8] = [
        OpKind::Reader,
        OpKind::Writer,
        OpKind::Recv,
        OpKind::Accept,
        OpKind::Send,
        OpKind::Connect,
        OpKind::Close,
        OpKind::Signal,
    ];
}

/// Token layout: bit 63 reserved, bits 60..63 the op kind, bits 32..60 the slot generation, bits
/// 0..32 the slot index. The kind lets an accept event whose op is gone still be recognised (its
/// fd must be closed).
fn token_for(kind: OpKind, key: Key) -> u64 {
    TOKEN_RESERVED
        | (kind as u64) << 60
        | u64::from(key.gen & GEN_MASK) << 32
        | u64::from(key.index)
}

fn decode_token(token: u64) -> Option<(OpKind, Key)> {
    if token & TOKEN_RESERVED == 0 {
        return None;
    }
    let kind = OpKind::ALL[((token >> 60) & 7) as usize];
    Some((
        kind,
        Key {
            index: token as u32,
            gen: ((token >> 32) as u32) & GEN_MASK,
        },
    ))
}

/// End of an intrusive list.
const NIL: u32 = u32::MAX;

struct OpSlot {
    kind: OpKind,
    fd: RawFd,
    op: OpId,
    handler: Handler,
    /// The bytes of a safe `send`, freed after the send's final event.
    owned: Option<Box<[u8]>>,
    /// A send whose cancel was already requested (it still waits for its final event).
    cancel_requested: bool,
    /// Links in the list of this fd's ops (so closing the fd can forget them); `linked` is false
    /// for ops not in any fd list (close, signals, sends already detached from a closed fd).
    linked: bool,
    prev: u32,
    next: u32,
}

#[derive(Clone, Copy)]
struct FdEntry {
    head: u32,
    reader: Option<Key>,
    writer: Option<Key>,
}

const EMPTY_FD: FdEntry = FdEntry {
    head: NIL,
    reader: None,
    writer: None,
};

struct Ready {
    handler: Handler,
    /// Set for done-callbacks.
    future: Option<LoopFuture>,
}

/// Bytes a cancelled recv had already taken out of its socket (they were in the batch being
/// dispatched when the cancel came). Cancelling a recv must not lose data, so they are delivered
/// to the next recv started on the same socket, before anything it receives itself — the reactor
/// does the same with bytes that race with a cancel in the kernel.
struct Stash {
    fd: RawFd,
    /// The socket's identity when the bytes were stashed: a different file that reuses the fd
    /// number (after a close the loop did not see) must not get them.
    ident: Option<(u64, u64)>,
    bytes: Vec<u8>,
}

/// `(device, inode)` of an open fd.
fn file_ident(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid, writable `stat`; fstat only writes it.
    if unsafe { libc::fstat(fd, &mut st) } == 0 {
        Some((st.st_dev, st.st_ino))
    } else {
        None
    }
}

/// A pending future with done-callbacks: the head and tail of its callback chain.
struct Watched {
    future: LoopFuture,
    head: usize,
    tail: usize,
}

struct DoneNode {
    handler: Handler,
    next: usize,
}

const NO_NODE: usize = usize::MAX;

/// Whether an iteration may wait for events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Block,
    /// Only if no callback ran before the wait (`RunMode::Once`).
    UnlessProgress,
    Never,
}

/// Default capacity of the event batch one reactor poll fills.
const BATCH: usize = 256;

/// Highest signal number accepted by [`EventLoop::add_signal`].
const MAX_SIGNAL: i32 = 64;

/// The callback-mode event loop. See the module documentation.
pub struct EventLoop {
    reactor: Reactor,
    backend: BackendKind,
    wake_token: u64,
    /// Cached monotonic time (ns), refreshed each iteration and by `update_time`.
    now: u64,
    remote: Arc<Remote>,
    /// The loop-side half of the swapped-out thread-safe queue (keeps its capacity).
    remote_batch: VecDeque<RemoteItem>,
    ready: VecDeque<Ready>,
    timers: Timers,
    ops: GenSlab<OpSlot>,
    fds: Vec<FdEntry>,
    signals: Vec<Option<Key>>,
    watched: slab::Slab<Watched>,
    done_nodes: slab::Slab<DoneNode>,
    pool: Option<Pool>,
    pool_size: usize,
    pool_in_flight: usize,
    /// The current event batch: events `batch_pos..batch_len` are still to be dispatched (only
    /// after a callback panicked mid-batch does anything remain between iterations).
    batch: Vec<Event>,
    batch_len: usize,
    batch_pos: usize,
    /// Recv ops cancelled since the current batch was polled: events of theirs still in the
    /// batch carry bytes already out of the socket, which go to `stashes`.
    cancelled_recvs: Vec<(Key, RawFd)>,
    /// Bytes of cancelled recvs, handed first to the next recv on the same socket.
    stashes: Vec<Stash>,
    /// Raw-mode events `run` collected, kept for the next `poll_raw`.
    held_raw: VecDeque<Event>,
    /// Whether `held_raw` has an event naming a receive buffer: the reactor must not be polled
    /// (which recycles that buffer) until `poll_raw` has handed it out.
    held_buffer: bool,
    /// Inside `run`, `poll_raw` or `shutdown`.
    running: bool,
    /// Inside `shutdown`: new ops are refused, scheduled callbacks are cancelled.
    closing: bool,
    closed: bool,
    context: *mut c_void,
}

fn invalid(errno: i32) -> io::Error {
    io::Error::from_raw_os_error(errno)
}

fn closed_error() -> io::Error {
    StateError::new("the event loop is closed").into()
}

impl EventLoop {
    /// Creates a loop on a new reactor built from `opts`.
    ///
    /// `opts.wake_token` must be below [`TOKEN_RESERVED`] or be `u64::MAX` (`EINVAL` otherwise).
    pub fn new(opts: &Options) -> io::Result<EventLoop> {
        if opts.wake_token & TOKEN_RESERVED != 0 && opts.wake_token != u64::MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "wake_token must be u64::MAX or below 1<<63 (tokens with the top bit are the loop's)",
            ));
        }
        let reactor = Reactor::new(opts)?;
        let remote = Arc::new(Remote::new(reactor.waker()));
        Ok(EventLoop {
            backend: reactor.backend(),
            reactor,
            wake_token: opts.wake_token,
            now: Reactor::now_ns(),
            remote,
            remote_batch: VecDeque::new(),
            ready: VecDeque::new(),
            timers: Timers::new(),
            ops: GenSlab::new(),
            fds: Vec::new(),
            signals: vec![None; MAX_SIGNAL as usize + 1],
            watched: slab::Slab::new(),
            done_nodes: slab::Slab::new(),
            pool: None,
            pool_size: DEFAULT_POOL_SIZE,
            pool_in_flight: 0,
            batch: vec![Event::default(); BATCH],
            batch_len: 0,
            batch_pos: 0,
            cancelled_recvs: Vec::new(),
            stashes: Vec::new(),
            held_raw: VecDeque::new(),
            held_buffer: false,
            running: false,
            closing: false,
            closed: false,
            context: std::ptr::null_mut(),
        })
    }

    /// The backend the reactor runs on.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }

    /// The loop's time: [`Reactor::now_ns`]'s monotonic clock in ns, cached at the start of each
    /// iteration and after each wait (as libuv's `uv_now`). Deadlines of `call_later` count from
    /// it; call [`EventLoop::update_time`] first when a callback ran long.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Refreshes the cached time.
    pub fn update_time(&mut self) {
        self.now = Reactor::now_ns();
    }

    /// A thread-safe handle (call_soon_threadsafe, stop, wake, futures).
    pub fn handle(&self) -> LoopHandle {
        LoopHandle {
            remote: self.remote.clone(),
        }
    }

    /// An opaque word stored for the embedder (the C ABI keeps its `rl_loop *` here so that
    /// trampolines can hand it to C callbacks). Null until set.
    pub fn context(&self) -> *mut c_void {
        self.context
    }

    /// Sets the word [`EventLoop::context`] returns.
    pub fn set_context(&mut self, context: *mut c_void) {
        self.context = context;
    }

    /// Whether `run` / `poll_raw` is executing (true inside callbacks).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Whether [`EventLoop::shutdown`] has completed.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether anything keeps [`RunMode::Default`] running (see the module doc).
    pub fn is_alive(&self) -> bool {
        self.has_callback_work()
            || !self.ops.is_empty()
            || !self.watched.is_empty()
            || self.pool_in_flight > 0
    }

    /// Whether a callback-mode step may find work: a batch being dispatched, ready callbacks,
    /// timers, or items from other threads.
    fn has_callback_work(&self) -> bool {
        self.batch_pos < self.batch_len
            || !self.ready.is_empty()
            || self.timers.len() > 0
            || self.remote.has_pending()
    }

    fn check_open(&self) -> io::Result<()> {
        if self.closing || self.closed {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    fn check_schedulable(&self) -> io::Result<()> {
        // While closing, callbacks may still be scheduled: the close cancels them in its next
        // round (raw ones are told -ECANCELED).
        if self.closed {
            Err(closed_error())
        } else {
            Ok(())
        }
    }

    fn enter(&mut self) -> io::Result<()> {
        if self.running {
            return Err(StateError::new(
                "the event loop is already running (called from a callback?)",
            )
            .into());
        }
        if self.closed || self.closing {
            return Err(closed_error());
        }
        self.running = true;
        Ok(())
    }

    // ----- running -----

    /// Runs the loop. Returns whether anything still keeps it alive.
    ///
    /// Errors: a [`StateError`] when called from inside a callback or on a closed loop; the
    /// reactor's poll error otherwise (the loop stays usable).
    ///
    /// Raw-mode events that arrive while `run` runs (ops submitted through
    /// [`EventLoop::reactor_mut`]) are kept for the next [`EventLoop::poll_raw`]; when one of them
    /// names a receive buffer, `run` returns after the current iteration and does not wait again
    /// until `poll_raw` has handed the events out (polling would recycle the buffer).
    pub fn run(&mut self, mode: RunMode) -> io::Result<bool> {
        self.enter()?;
        let result = catch_unwind(AssertUnwindSafe(|| self.run_inner(mode)));
        self.running = false;
        match result {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        }
    }

    /// Asks the loop to return from [`EventLoop::run`] after the current iteration (or, if it is
    /// not running, after the first iteration of the next `run`).
    pub fn stop(&mut self) {
        self.remote.stop.store(true, Ordering::Release);
    }

    fn run_inner(&mut self, mode: RunMode) -> io::Result<bool> {
        if self.held_buffer {
            return Ok(true);
        }
        loop {
            match mode {
                RunMode::Default => {
                    self.iterate(Wait::Block)?;
                }
                RunMode::Once => loop {
                    let progress = self.iterate(Wait::UnlessProgress)?;
                    if progress > 0
                        || !self.is_alive()
                        || self.held_buffer
                        || self.remote.stop.load(Ordering::Acquire)
                    {
                        break;
                    }
                },
                RunMode::NoWait => {
                    self.iterate(Wait::Never)?;
                }
            }
            let stop = self.remote.stop.swap(false, Ordering::AcqRel);
            if stop || mode != RunMode::Default || self.held_buffer || !self.is_alive() {
                break;
            }
        }
        Ok(self.is_alive())
    }

    /// One iteration; returns how many callbacks ran (plus wake-ups and raw events held).
    fn iterate(&mut self, wait: Wait) -> io::Result<usize> {
        let mut progress = self.dispatch_batch();
        self.update_time();
        progress += self.run_timers();
        self.drain_remote();
        let block = match wait {
            Wait::Block => true,
            Wait::UnlessProgress => progress == 0,
            Wait::Never => false,
        };
        let timeout = self.wait_timeout(block);
        let n = self.reactor.poll(timeout, &mut self.batch)?;
        self.batch_len = n;
        self.batch_pos = 0;
        self.cancelled_recvs.clear();
        self.update_time();
        progress += self.dispatch_batch();
        progress += self.run_timers();
        self.drain_remote();
        progress += self.run_ready();
        Ok(progress)
    }

    fn wait_timeout(&mut self, block: bool) -> Option<Duration> {
        if !block
            || !self.ready.is_empty()
            || self.remote.has_pending()
            || self.remote.stop.load(Ordering::Acquire)
        {
            return Some(Duration::ZERO);
        }
        if let Some(deadline) = self.timers.next_deadline() {
            return Some(Duration::from_nanos(deadline.saturating_sub(self.now)));
        }
        if self.is_alive() {
            None
        } else {
            Some(Duration::ZERO)
        }
    }

    /// Dispatches the rest of the current batch. Returns the number of events handled.
    fn dispatch_batch(&mut self) -> usize {
        let mut handled = 0;
        while self.batch_pos < self.batch_len {
            let event = self.batch[self.batch_pos];
            self.batch_pos += 1;
            if event.token == self.wake_token {
                // Means "look at the thread-safe queue", which every iteration does; counted as
                // progress so that `LoopHandle::wake` interrupts `run(RunMode::Once)`.
                handled += 1;
                continue;
            }
            if event.token & TOKEN_RESERVED != 0 {
                self.dispatch_event(event);
            } else {
                self.held_buffer |= event.flags & flags::BUFFER != 0;
                self.held_raw.push_back(event);
            }
            handled += 1;
        }
        if !self.stashes.is_empty() {
            self.flush_stashes();
        }
        handled
    }

    fn dispatch_event(&mut self, event: Event) {
        let Some((kind, key)) = decode_token(event.token) else {
            return;
        };
        let more = event.flags & flags::MORE != 0;
        let Some(slot) = self.ops.get(key) else {
            self.dispatch_stale(kind, key, event);
            return;
        };
        let fd = slot.fd;
        if kind == OpKind::Recv && !self.stashes.is_empty() {
            // Older bytes of this socket first. Their callback may cancel this recv, and then
            // this event's bytes are stashed in turn.
            self.deliver_stash(fd);
            if !self.ops.contains(key) {
                self.dispatch_stale(kind, key, event);
                return;
            }
        }
        let last = match kind {
            OpKind::Reader | OpKind::Writer => event.result < 0 && !more,
            OpKind::Recv | OpKind::Accept | OpKind::Signal => !more,
            OpKind::Send | OpKind::Connect | OpKind::Close => true,
        };
        let bytes: &[u8] = match self.reactor.event_data(&event) {
            // SAFETY: the buffer stays valid until the reactor's next poll, and the region never
            // moves while the reactor lives. The slice is only lent to the callback below, during
            // which nothing can poll this reactor (`run`/`poll_raw` refuse to re-enter and
            // `RawOps` has no poll) or drop it (dropping a running loop aborts). Detaching the
            // lifetime from `self.reactor` is what lets the callback also get `&mut self`.
            Some(data) => unsafe { std::slice::from_raw_parts(data.as_ptr(), data.len()) },
            None => &[],
        };
        let source: &[u8] = match self.reactor.event_source(&event) {
            // SAFETY: as for `bytes`: the same buffer, lent to the callback only.
            Some(name) => unsafe { std::slice::from_raw_parts(name.as_ptr(), name.len()) },
            None => &[],
        };
        let outcome = Outcome {
            result: event.result,
            fd,
            bytes,
            source,
            more: !last,
            future: None,
        };
        if last {
            if let Some(slot) = self.remove_op(key) {
                slot.handler.call_once(self, &outcome);
                // A safe send's bytes are freed here, after the kernel is done with them.
                drop(slot.owned);
            }
        } else {
            self.call_persistent(key, &outcome);
        }
    }

    /// An event of an op that ended earlier in this batch (cancelled or removed by a callback).
    fn dispatch_stale(&mut self, kind: OpKind, key: Key, event: Event) {
        match kind {
            OpKind::Accept if event.result >= 0 => {
                // SAFETY: the reactor hands each accepted fd to the accept's owner; that owner is
                // gone, so nothing else holds or will close this fd.
                drop(unsafe { OwnedFd::from_raw_fd(event.result) });
            }
            // (A datagram of a cancelled receive is dropped: datagrams have no order to keep.)
            OpKind::Recv if event.result > 0 && event.flags & flags::DATAGRAM == 0 => {
                let Some(&(_, fd)) = self.cancelled_recvs.iter().find(|(k, _)| *k == key) else {
                    // Ended by a close: unread bytes of a closed socket are gone anyway.
                    return;
                };
                let Some(data) = self.reactor.event_data(&event) else {
                    return;
                };
                match self.stashes.iter_mut().find(|s| s.fd == fd) {
                    Some(stash) => stash.bytes.extend_from_slice(data),
                    None => self.stashes.push(Stash {
                        fd,
                        ident: file_ident(fd),
                        bytes: data.to_vec(),
                    }),
                }
            }
            _ => {}
        }
    }

    /// The live recv op on `fd`, if any.
    fn live_recv_on(&mut self, fd: RawFd) -> Option<Key> {
        let mut index = self.fd_entry_if_known(fd)?.head;
        while index != NIL {
            let slot = self.ops.get_index_mut(index)?;
            if slot.kind == OpKind::Recv {
                return self.ops.keys_at(index);
            }
            index = slot.next;
        }
        None
    }

    /// Hands the stash of `fd` to the live recv on `fd`, if both exist.
    fn deliver_stash(&mut self, fd: RawFd) {
        let Some(position) = self.stashes.iter().position(|s| s.fd == fd) else {
            return;
        };
        let Some(key) = self.live_recv_on(fd) else {
            return;
        };
        let stash = self.stashes.swap_remove(position);
        if stash.ident.is_none() || stash.ident != file_ident(fd) {
            // Another file now has this number: the bytes belong to nobody any more.
            return;
        }
        for chunk in stash.bytes.chunks(i32::MAX as usize) {
            let outcome = Outcome {
                result: chunk.len() as i32,
                fd,
                bytes: chunk,
                source: &[],
                more: true,
                future: None,
            };
            self.call_persistent(key, &outcome);
            if !self.ops.contains(key) {
                // Cancelled again while the stash was being delivered: keep the rest.
                let delivered =
                    chunk.as_ptr() as usize + chunk.len() - stash.bytes.as_ptr() as usize;
                if delivered < stash.bytes.len() {
                    self.stashes.push(Stash {
                        fd,
                        ident: stash.ident,
                        bytes: stash.bytes[delivered..].to_vec(),
                    });
                }
                return;
            }
        }
    }

    /// Delivers every stash whose socket has a live recv again.
    fn flush_stashes(&mut self) {
        let mut i = 0;
        while i < self.stashes.len() {
            let fd = self.stashes[i].fd;
            if self.live_recv_on(fd).is_some() {
                self.deliver_stash(fd);
                // The stash at `i` was removed (swap_remove): look at `i` again.
            } else {
                i += 1;
            }
        }
    }

    /// Calls the persistent callback of the op `key` and puts it back unless it was removed or
    /// replaced during the call (also when it panicked).
    fn call_persistent(&mut self, key: Key, outcome: &Outcome<'_>) {
        let Some(slot) = self.ops.get_mut(key) else {
            return;
        };
        if let Handler::Raw(cb) = slot.handler {
            cb.call(self, outcome);
            return;
        }
        let mut handler = std::mem::replace(&mut slot.handler, Handler::Running);
        let result = catch_unwind(AssertUnwindSafe(|| match &mut handler {
            Handler::Many(f) => f(self, outcome),
            Handler::Raw(_) | Handler::Plain(_) | Handler::Once(_) | Handler::Running => {}
        }));
        if let Some(slot) = self.ops.get_mut(key) {
            if matches!(slot.handler, Handler::Running) {
                slot.handler = handler;
            }
        }
        if let Err(panic) = result {
            resume_unwind(panic);
        }
    }

    fn run_timers(&mut self) -> usize {
        let mut ran = 0;
        let now = self.now;
        let first_new = self.timers.next_seq();
        while let Some(handler) = self.timers.pop_due(now, first_new) {
            handler.call_once(self, &Outcome::simple(0));
            ran += 1;
        }
        ran
    }

    fn drain_remote(&mut self) {
        self.remote.take_all(&mut self.remote_batch);
        while let Some(item) = self.remote_batch.pop_front() {
            match item {
                RemoteItem::Raw(cb) => self.ready.push_back(Ready {
                    handler: Handler::Raw(cb),
                    future: None,
                }),
                RemoteItem::Boxed(f) => self.ready.push_back(Ready {
                    handler: Handler::Plain(f),
                    future: None,
                }),
                RemoteItem::FutureDone(future) => self.schedule_done_callbacks(&future),
                RemoteItem::PoolDone => self.pool_in_flight = self.pool_in_flight.saturating_sub(1),
            }
        }
    }

    /// Moves the done-callbacks of a completed future to the ready queue, in the order added.
    fn schedule_done_callbacks(&mut self, future: &LoopFuture) {
        let Some(watch) = future.lock().watch.take() else {
            return;
        };
        let Some(watched) = self.watched.try_remove(watch) else {
            return;
        };
        let mut node = watched.head;
        while node != NO_NODE {
            let done = self.done_nodes.remove(node);
            self.ready.push_back(Ready {
                handler: done.handler,
                future: Some(future.clone()),
            });
            node = done.next;
        }
    }

    /// Runs the callbacks that are ready now (not those they schedule).
    fn run_ready(&mut self) -> usize {
        let count = self.ready.len();
        for _ in 0..count {
            let Some(Ready { handler, future }) = self.ready.pop_front() else {
                break;
            };
            let outcome = Outcome {
                future: future.as_ref(),
                ..Outcome::simple(0)
            };
            handler.call_once(self, &outcome);
        }
        count
    }

    // ----- raw mode -----

    /// Raw token mode: runs due callback-mode work, waits up to `timeout` for events, dispatches
    /// the loop's own events to their callbacks and writes only raw-mode events (and wake events)
    /// to `events`; returns how many. The wait is shortened to the loop's next timer deadline, or
    /// skipped when callbacks are ready, so `Ok(0)` is possible before `timeout` elapsed. Buffers
    /// named by the returned events stay valid until the next `poll_raw`. Raw events that do not
    /// fit in `events` are kept, in order, and returned by the next call without waiting (so
    /// their buffers stay valid too); an empty `events` still runs callback-mode work.
    ///
    /// Errors: a [`StateError`] from inside a callback or on a closed loop; the reactor's error.
    pub fn poll_raw(
        &mut self,
        timeout: Option<Duration>,
        events: &mut [Event],
    ) -> io::Result<usize> {
        self.enter()?;
        let result = catch_unwind(AssertUnwindSafe(|| self.poll_raw_inner(timeout, events)));
        self.running = false;
        match result {
            Ok(r) => r,
            Err(panic) => resume_unwind(panic),
        }
    }

    fn poll_raw_inner(
        &mut self,
        timeout: Option<Duration>,
        events: &mut [Event],
    ) -> io::Result<usize> {
        if !self.held_raw.is_empty() {
            let n = events.len().min(self.held_raw.len());
            for slot in events.iter_mut().take(n) {
                if let Some(event) = self.held_raw.pop_front() {
                    *slot = event;
                }
            }
            self.held_buffer = self.held_raw.iter().any(|e| e.flags & flags::BUFFER != 0);
            return Ok(n);
        }
        // A raw-mode caller (the Python loop) usually has no callback-mode work at all: then the
        // steps that would find none are skipped, before the wait and after it.
        if self.has_callback_work() {
            self.dispatch_batch();
            self.update_time();
            self.run_timers();
            self.drain_remote();
            self.run_ready();
        }
        let wait = if !self.ready.is_empty() || self.remote.has_pending() {
            Some(Duration::ZERO)
        } else if let Some(deadline) = self.timers.next_deadline() {
            let until = Duration::from_nanos(deadline.saturating_sub(self.now));
            Some(timeout.map_or(until, |t| t.min(until)))
        } else {
            timeout
        };
        let wake_token = self.wake_token;
        let is_ours =
            |event: &Event| event.token != wake_token && event.token & TOKEN_RESERVED != 0;
        let (kept, ours) = if events.len() >= self.batch.len() {
            // Straight into `events`, which holds at least a batch (so exactly the events the
            // batch would have taken are collected): the loop's own events, if any, are moved
            // out into the batch and the caller's compacted in place; without any, nothing is
            // copied at all.
            let n = self.reactor.poll(wait, events)?;
            self.cancelled_recvs.clear();
            self.update_time();
            match events[..n].iter().position(is_ours) {
                None => (n, 0),
                Some(first) => {
                    if self.batch.len() < n {
                        self.batch.resize(n, Event::default());
                    }
                    let mut kept = first;
                    let mut ours = 0;
                    for i in first..n {
                        let event = events[i];
                        if is_ours(&event) {
                            self.batch[ours] = event;
                            ours += 1;
                        } else {
                            // Compacted in place: `kept <= i`, so nothing unread is overwritten.
                            events[kept] = event;
                            kept += 1;
                        }
                    }
                    (kept, ours)
                }
            }
        } else {
            // Polled into the loop's own batch, not straight into `events`: the loop's events
            // must be collected even when `events` is tiny (or empty), and raw events that do not
            // fit are kept, in order, for the next call — which returns them without polling, so
            // the buffers they name stay valid.
            let n = self.reactor.poll(wait, &mut self.batch)?;
            self.cancelled_recvs.clear();
            self.update_time();
            let mut kept = 0;
            let mut ours = 0;
            for i in 0..n {
                let event = self.batch[i];
                if is_ours(&event) {
                    // Compacted in place: `ours <= i`, so nothing unread is overwritten.
                    self.batch[ours] = event;
                    ours += 1;
                } else if kept < events.len() {
                    events[kept] = event;
                    kept += 1;
                } else {
                    self.held_buffer |= event.flags & flags::BUFFER != 0;
                    self.held_raw.push_back(event);
                }
            }
            (kept, ours)
        };
        self.batch_len = ours;
        self.batch_pos = 0;
        if ours == 0 && !self.has_callback_work() {
            return Ok(kept);
        }
        let dispatched = catch_unwind(AssertUnwindSafe(|| {
            self.dispatch_batch();
            self.run_timers();
            self.drain_remote();
            self.run_ready();
        }));
        if let Err(panic) = dispatched {
            // The caller never learns `kept`: keep those events, ahead of any already held, for
            // the next poll_raw.
            for &event in events[..kept].iter().rev() {
                self.held_buffer |= event.flags & flags::BUFFER != 0;
                self.held_raw.push_front(event);
            }
            resume_unwind(panic);
        }
        Ok(kept)
    }

    /// Submits raw-mode ops (tokens below [`TOKEN_RESERVED`]); their events come out of
    /// [`EventLoop::poll_raw`].
    pub fn reactor_mut(&mut self) -> RawOps<'_> {
        RawOps { lp: self }
    }

    /// The bytes of a raw-mode [`flags::BUFFER`] event returned by the last `poll_raw`.
    pub fn event_data(&self, event: &Event) -> Option<&[u8]> {
        self.reactor.event_data(event)
    }

    /// The receive-buffer region: `(base, buffer_size, buffer_count)` (see
    /// [`Reactor::buffer_region`]).
    pub fn buffer_region(&self) -> (*const u8, usize, usize) {
        self.reactor.buffer_region()
    }

    /// Keeps the pool buffer holding the bytes a recv or recvmsg callback got — `data` and `len`
    /// are its outcome's bytes (a datagram's payload) — beyond the callback, as
    /// [`RawOps::keep_buffer`] does for a raw event:
    /// they stay valid and unchanged until [`RawOps::release_buffer`] with the returned id, so
    /// they can be sent on without a copy (released at the send's callback). Only compares
    /// addresses; `data` is never read.
    ///
    /// Errors: `EINVAL` for no bytes; `ENOENT` for bytes that are not a pool buffer of the
    /// current batch (a stash of bytes a cancelled receive had taken is delivered from a copy;
    /// bytes of an earlier callback) or a buffer already kept.
    pub fn keep_received(&mut self, data: *const u8, len: usize) -> io::Result<u32> {
        if data.is_null() || len == 0 {
            return Err(invalid(libc::EINVAL));
        }
        let (base, size, count) = self.reactor.buffer_region();
        let offset = (data as usize).wrapping_sub(base as usize);
        // A stream's bytes start their buffer; a datagram's payload follows its header.
        let start = offset % size;
        if offset >= size * count
            || !(start == 0 || start == crate::datagram::PAYLOAD)
            || len > size - start
        {
            return Err(invalid(libc::ENOENT));
        }
        let id = (offset / size) as u32;
        self.reactor.keep_buffer(id)?;
        Ok(id)
    }

    // ----- callbacks and timers -----

    fn push_ready(&mut self, handler: Handler) -> io::Result<()> {
        self.check_schedulable()?;
        self.ready.push_back(Ready {
            handler,
            future: None,
        });
        Ok(())
    }

    /// Runs `f` in the loop's next iteration (FIFO with other `call_soon*` calls).
    /// Fails with a [`StateError`] on a closed loop.
    pub fn call_soon(&mut self, f: impl FnOnce(&mut EventLoop) + 'static) -> io::Result<()> {
        self.push_ready(Handler::Plain(Box::new(f)))
    }

    /// [`EventLoop::call_soon`] for a raw callback (outcome `result` 0). Allocates nothing once
    /// the ready queue has grown.
    pub fn call_soon_raw(&mut self, cb: RawCallback) -> io::Result<()> {
        self.push_ready(Handler::Raw(cb))
    }

    fn add_timer(&mut self, deadline_ns: u64, handler: Handler) -> io::Result<TimerHandle> {
        self.check_schedulable()?;
        self.timers
            .insert(deadline_ns, handler)
            .ok_or_else(|| invalid(libc::ENOMEM))
    }

    /// Runs `f` once the loop's time reaches `deadline_ns` (on [`EventLoop::now`]'s clock).
    pub fn call_at(
        &mut self,
        deadline_ns: u64,
        f: impl FnOnce(&mut EventLoop) + 'static,
    ) -> io::Result<TimerHandle> {
        self.add_timer(deadline_ns, Handler::Plain(Box::new(f)))
    }

    /// [`EventLoop::call_at`] for a raw callback (outcome `result` 0).
    pub fn call_at_raw(&mut self, deadline_ns: u64, cb: RawCallback) -> io::Result<TimerHandle> {
        self.add_timer(deadline_ns, Handler::Raw(cb))
    }

    /// Runs `f` `delay_ns` after [`EventLoop::now`].
    pub fn call_later(
        &mut self,
        delay_ns: u64,
        f: impl FnOnce(&mut EventLoop) + 'static,
    ) -> io::Result<TimerHandle> {
        self.call_at(self.now.saturating_add(delay_ns), f)
    }

    /// [`EventLoop::call_later`] for a raw callback (outcome `result` 0).
    pub fn call_later_raw(&mut self, delay_ns: u64, cb: RawCallback) -> io::Result<TimerHandle> {
        self.call_at_raw(self.now.saturating_add(delay_ns), cb)
    }

    /// Cancels a timer: `true` if it was pending; `false` (harmless) when it already fired, was
    /// cancelled, or the handle is forged. Its callback is not called.
    pub fn cancel_timer(&mut self, timer: TimerHandle) -> bool {
        self.timers.cancel(timer).is_some()
    }

    // ----- ops -----

    /// Makes room for `fd` in the per-fd table. The table is indexed by fd number (as libuv's
    /// watcher array), so it only grows for an fd that really is open: a forged huge number gets
    /// `EBADF` instead of a huge allocation. The check is a syscall, made only when the table
    /// grows.
    fn reserve_fd(&mut self, fd: RawFd) -> io::Result<()> {
        let index = usize::try_from(fd).map_err(|_| invalid(libc::EBADF))?;
        if index >= self.fds.len() {
            // SAFETY: F_GETFD only queries the descriptor table.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(invalid(libc::EBADF));
            }
            self.fds.resize(index + 1, EMPTY_FD);
        }
        Ok(())
    }

    /// The table entry of an fd that `reserve_fd` accepted.
    fn fd_entry(&mut self, fd: RawFd) -> &mut FdEntry {
        &mut self.fds[fd as usize]
    }

    fn fd_entry_if_known(&mut self, fd: RawFd) -> Option<&mut FdEntry> {
        usize::try_from(fd)
            .ok()
            .and_then(|index| self.fds.get_mut(index))
    }

    /// Stores a new op slot, linked into its fd's list when `link`.
    fn insert_op(
        &mut self,
        kind: OpKind,
        fd: RawFd,
        handler: Handler,
        owned: Option<Box<[u8]>>,
        link: bool,
    ) -> io::Result<Key> {
        let slot = OpSlot {
            kind,
            fd,
            op: OpId::from_raw(0),
            handler,
            owned,
            cancel_requested: false,
            linked: false,
            prev: NIL,
            next: NIL,
        };
        if link {
            self.reserve_fd(fd)?;
        }
        let key = self.ops.insert(slot).ok_or_else(|| invalid(libc::ENOMEM))?;
        if link {
            let head = self.fd_entry(fd).head;
            if head != NIL {
                if let Some(old) = self.ops.get_index_mut(head) {
                    old.prev = key.index;
                }
            }
            if let Some(slot) = self.ops.get_mut(key) {
                slot.linked = true;
                slot.next = head;
            }
            self.fd_entry(fd).head = key.index;
        }
        Ok(key)
    }

    fn unlink(&mut self, key: Key) {
        let Some(slot) = self.ops.get_mut(key) else {
            return;
        };
        if !slot.linked {
            return;
        }
        let (fd, prev, next) = (slot.fd, slot.prev, slot.next);
        slot.linked = false;
        slot.prev = NIL;
        slot.next = NIL;
        if prev != NIL {
            if let Some(p) = self.ops.get_index_mut(prev) {
                p.next = next;
            }
        } else if let Some(entry) = self.fds.get_mut(fd as usize) {
            entry.head = next;
        }
        if next != NIL {
            if let Some(n) = self.ops.get_index_mut(next) {
                n.prev = prev;
            }
        }
    }

    /// Removes an op slot and every table entry that names it. Does not touch the reactor.
    fn remove_op(&mut self, key: Key) -> Option<OpSlot> {
        self.unlink(key);
        let slot = self.ops.remove(key)?;
        match slot.kind {
            OpKind::Reader | OpKind::Writer => {
                if let Some(entry) = self.fds.get_mut(slot.fd as usize) {
                    let table = if slot.kind == OpKind::Reader {
                        &mut entry.reader
                    } else {
                        &mut entry.writer
                    };
                    if *table == Some(key) {
                        *table = None;
                    }
                }
            }
            OpKind::Signal => {
                for entry in &mut self.signals {
                    if *entry == Some(key) {
                        *entry = None;
                    }
                }
            }
            _ => {}
        }
        Some(slot)
    }

    /// Stores the slot, then submits the reactor op with the slot's token.
    fn start_op(
        &mut self,
        kind: OpKind,
        fd: RawFd,
        handler: Handler,
        owned: Option<Box<[u8]>>,
        submit: impl FnOnce(&mut Reactor, u64) -> io::Result<OpId>,
    ) -> io::Result<Key> {
        self.check_open()?;
        let link = !matches!(kind, OpKind::Close | OpKind::Signal);
        let key = self.insert_op(kind, fd, handler, owned, link)?;
        match submit(&mut self.reactor, token_for(kind, key)) {
            Ok(op) => {
                if let Some(slot) = self.ops.get_mut(key) {
                    slot.op = op;
                }
                Ok(key)
            }
            Err(e) => {
                // The registration never happened: the callback is dropped, not called.
                self.remove_op(key);
                Err(e)
            }
        }
    }

    fn check_fd(fd: RawFd) -> io::Result<()> {
        if fd < 0 {
            Err(invalid(libc::EBADF))
        } else {
            Ok(())
        }
    }

    fn set_watch(&mut self, fd: RawFd, kind: OpKind, handler: Handler) -> io::Result<()> {
        self.check_open()?;
        self.reserve_fd(fd)?;
        let existing = {
            let entry = self.fd_entry(fd);
            if kind == OpKind::Reader {
                entry.reader
            } else {
                entry.writer
            }
        };
        if let Some(slot) = existing.and_then(|key| self.ops.get_mut(key)) {
            // Replacing the callback keeps the watch; the old callback is dropped after this
            // statement (or, if it is running right now, when it returns).
            let old = std::mem::replace(&mut slot.handler, handler);
            drop(old);
            return Ok(());
        }
        let interest = if kind == OpKind::Reader {
            Interest::READABLE
        } else {
            Interest::WRITABLE
        };
        let key = self.start_op(kind, fd, handler, None, |r, token| {
            r.watch(fd, interest, token)
        })?;
        let entry = self.fd_entry(fd);
        if kind == OpKind::Reader {
            entry.reader = Some(key);
        } else {
            entry.writer = Some(key);
        }
        Ok(())
    }

    fn clear_watch(&mut self, fd: RawFd, kind: OpKind) -> bool {
        let Some(entry) = self.fd_entry_if_known(fd) else {
            return false;
        };
        let key = if kind == OpKind::Reader {
            entry.reader.take()
        } else {
            entry.writer.take()
        };
        let Some(slot) = key.and_then(|key| self.remove_op(key)) else {
            return false;
        };
        // The reactor's cancel takes effect before it returns; an event for this watch already in
        // the current batch finds no slot and is ignored.
        let _ = self.reactor.cancel(slot.op);
        true
    }

    /// Calls `f` whenever `fd` is readable (persistent, level-triggered: once per iteration while
    /// readable; error and hang-up count as readable). Adding again replaces the callback.
    ///
    /// As in asyncio, remove the watch before closing `fd` any other way than
    /// [`EventLoop::close`]: the watch belongs to the open file, and a new file that reuses the fd
    /// number would otherwise inherit a dead watch.
    pub fn add_reader(
        &mut self,
        fd: RawFd,
        mut f: impl FnMut(&mut EventLoop) + 'static,
    ) -> io::Result<()> {
        self.set_watch(
            fd,
            OpKind::Reader,
            Handler::Many(Box::new(move |lp, _| f(lp))),
        )
    }

    /// [`EventLoop::add_reader`] for a raw callback (outcome `result` = ready bits, `more` set).
    pub fn add_reader_raw(&mut self, fd: RawFd, cb: RawCallback) -> io::Result<()> {
        self.set_watch(fd, OpKind::Reader, Handler::Raw(cb))
    }

    /// Stops watching `fd` for reading; `false` if it was not watched. Takes effect at once: the
    /// callback is not called again, even for an event already collected in this iteration.
    pub fn remove_reader(&mut self, fd: RawFd) -> bool {
        self.clear_watch(fd, OpKind::Reader)
    }

    /// Calls `f` whenever `fd` is writable. See [`EventLoop::add_reader`].
    pub fn add_writer(
        &mut self,
        fd: RawFd,
        mut f: impl FnMut(&mut EventLoop) + 'static,
    ) -> io::Result<()> {
        self.set_watch(
            fd,
            OpKind::Writer,
            Handler::Many(Box::new(move |lp, _| f(lp))),
        )
    }

    /// [`EventLoop::add_writer`] for a raw callback.
    pub fn add_writer_raw(&mut self, fd: RawFd, cb: RawCallback) -> io::Result<()> {
        self.set_watch(fd, OpKind::Writer, Handler::Raw(cb))
    }

    /// Stops watching `fd` for writing. See [`EventLoop::remove_reader`].
    pub fn remove_writer(&mut self, fd: RawFd) -> bool {
        self.clear_watch(fd, OpKind::Writer)
    }

    /// Accepts connections on the listening socket `fd` (multishot): `f` gets each new
    /// (non-blocking, close-on-exec) socket, or the error that ends the accept.
    pub fn accept(
        &mut self,
        fd: RawFd,
        mut f: impl FnMut(&mut EventLoop, io::Result<OwnedFd>) + 'static,
    ) -> io::Result<OpHandle> {
        let handler = Handler::Many(Box::new(move |lp, outcome| {
            if outcome.result >= 0 {
                // SAFETY: the reactor hands each accepted fd to the accept's owner, and this
                // closure is that owner: nothing else holds or closes the fd.
                f(lp, Ok(unsafe { OwnedFd::from_raw_fd(outcome.result) }))
            } else {
                f(lp, Err(io::Error::from_raw_os_error(-outcome.result)))
            }
        }));
        self.accept_with(fd, handler)
    }

    /// [`EventLoop::accept`] for a raw callback: `result` is the new fd (the callback owns it and
    /// must close it) or `-errno`; `more` is false on the last call.
    pub fn accept_raw(&mut self, fd: RawFd, cb: RawCallback) -> io::Result<OpHandle> {
        self.accept_with(fd, Handler::Raw(cb))
    }

    fn accept_with(&mut self, fd: RawFd, handler: Handler) -> io::Result<OpHandle> {
        Self::check_fd(fd)?;
        let key = self.start_op(OpKind::Accept, fd, handler, None, |r, token| {
            r.accept_multi(fd, token)
        })?;
        Ok(OpHandle(token_for(OpKind::Accept, key)))
    }

    /// Receives from the stream socket `fd` (multishot): `f` gets each chunk of bytes (valid
    /// during the call), then `Ok(&[])` at EOF or the error that ends the receive.
    pub fn recv(
        &mut self,
        fd: RawFd,
        mut f: impl FnMut(&mut EventLoop, io::Result<&[u8]>) + 'static,
    ) -> io::Result<OpHandle> {
        let handler = Handler::Many(Box::new(move |lp, outcome| {
            if outcome.result >= 0 {
                f(lp, Ok(outcome.bytes))
            } else {
                f(lp, Err(io::Error::from_raw_os_error(-outcome.result)))
            }
        }));
        self.recv_with(fd, handler, false)
    }

    /// [`EventLoop::recv`] for a raw callback: `bytes` holds the data, `result` its length, `0`
    /// at EOF or `-errno`; `more` is false on the last call.
    pub fn recv_raw(&mut self, fd: RawFd, cb: RawCallback) -> io::Result<OpHandle> {
        self.recv_with(fd, Handler::Raw(cb), false)
    }

    /// A stream receive, or a datagram receive when `datagrams`. To the rest of the loop (cancel,
    /// close, shutdown) both are receives; a datagram receive's events say DATAGRAM, which keeps
    /// them out of the stream stash.
    fn recv_with(&mut self, fd: RawFd, handler: Handler, datagrams: bool) -> io::Result<OpHandle> {
        Self::check_fd(fd)?;
        let key = self.start_op(OpKind::Recv, fd, handler, None, |r, token| {
            if datagrams {
                r.recvmsg_multi(fd, token)
            } else {
                r.recv_multi(fd, token)
            }
        })?;
        Ok(OpHandle(token_for(OpKind::Recv, key)))
    }

    /// Receives datagrams on the `SOCK_DGRAM` socket `fd` (multishot, see
    /// [`crate::Reactor::recvmsg_multi`]): `f` gets each datagram's payload and its sender's
    /// address (`sockaddr` bytes), both valid during the call, then a last call with the error
    /// that ended the receive. [`EventLoop::cancel`] stops it; datagrams received for it and not
    /// yet delivered are dropped.
    pub fn recvmsg(
        &mut self,
        fd: RawFd,
        mut f: impl FnMut(&mut EventLoop, io::Result<(&[u8], &[u8])>) + 'static,
    ) -> io::Result<OpHandle> {
        let handler = Handler::Many(Box::new(move |lp, outcome| {
            if outcome.result >= 0 {
                f(lp, Ok((outcome.bytes, outcome.source)))
            } else {
                f(lp, Err(io::Error::from_raw_os_error(-outcome.result)))
            }
        }));
        self.recv_with(fd, handler, true)
    }

    /// [`EventLoop::recvmsg`] for a raw callback: `bytes` holds the payload, `result` its length
    /// (or `-errno`), `source` the sender; `more` is false on the last call.
    pub fn recvmsg_raw(&mut self, fd: RawFd, cb: RawCallback) -> io::Result<OpHandle> {
        self.recv_with(fd, Handler::Raw(cb), true)
    }

    /// Sends all of `data` on `fd`; `f` gets the total bytes sent or the error. The loop owns
    /// `data` until then.
    pub fn send(
        &mut self,
        fd: RawFd,
        data: impl Into<Box<[u8]>>,
        f: impl FnOnce(&mut EventLoop, io::Result<usize>) + 'static,
    ) -> io::Result<OpHandle> {
        self.send_owned(fd, data.into(), None, f)
    }

    /// Sends `data` as one datagram on `fd` to `to` (`None`: the connected peer), as
    /// [`Reactor::send_to`] does; `f` gets the bytes sent or the error. The loop owns `data`
    /// until then.
    pub fn send_to(
        &mut self,
        fd: RawFd,
        data: impl Into<Box<[u8]>>,
        to: Option<&SockaddrStorage>,
        f: impl FnOnce(&mut EventLoop, io::Result<usize>) + 'static,
    ) -> io::Result<OpHandle> {
        self.send_owned(fd, data.into(), Some(to), f)
    }

    /// A send of loop-owned bytes: a stream send when `datagram_to` is `None`, else a datagram
    /// send to the address it holds.
    fn send_owned(
        &mut self,
        fd: RawFd,
        data: Box<[u8]>,
        datagram_to: Option<Option<&SockaddrStorage>>,
        f: impl FnOnce(&mut EventLoop, io::Result<usize>) + 'static,
    ) -> io::Result<OpHandle> {
        Self::check_fd(fd)?;
        let (ptr, len) = (data.as_ptr(), data.len());
        let handler = Handler::Once(Box::new(move |lp, outcome| {
            if outcome.result >= 0 {
                f(lp, Ok(outcome.result as usize))
            } else {
                f(lp, Err(io::Error::from_raw_os_error(-outcome.result)))
            }
        }));
        let key = self.start_op(OpKind::Send, fd, handler, Some(data), |r, token| {
            // SAFETY: `ptr..ptr+len` is the boxed slice just moved into the op's slot; the slot
            // keeps it (a Box's heap block does not move when the slot does) until the send's
            // final event has been dispatched, and if that event never comes the bytes are leaked
            // rather than freed (see `shutdown`).
            unsafe {
                match datagram_to {
                    None => r.send(fd, ptr, len, token),
                    Some(to) => r.send_to(fd, ptr, len, to, token),
                }
            }
        })?;
        Ok(OpHandle(token_for(OpKind::Send, key)))
    }

    /// Sends `len` bytes at `buf` from caller memory; `cb` is called once with the total bytes
    /// sent or `-errno` (also after [`EventLoop::cancel`], and during a close).
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unmodified until `cb` has been called.
    pub unsafe fn send_raw(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: usize,
        cb: RawCallback,
    ) -> io::Result<OpHandle> {
        Self::check_fd(fd)?;
        let key = self.start_op(OpKind::Send, fd, Handler::Raw(cb), None, |r, token| {
            // SAFETY: the caller keeps the memory valid until `cb` runs, which is after the
            // send's final event.
            unsafe { r.send(fd, buf, len, token) }
        })?;
        Ok(OpHandle(token_for(OpKind::Send, key)))
    }

    /// [`EventLoop::send_to`] from caller memory, for a raw callback: `cb` is called once with
    /// the bytes sent or `-errno` (also after [`EventLoop::cancel`], and during a close).
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unmodified until `cb` has been called.
    pub unsafe fn send_to_raw(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: usize,
        to: Option<&SockaddrStorage>,
        cb: RawCallback,
    ) -> io::Result<OpHandle> {
        Self::check_fd(fd)?;
        let key = self.start_op(OpKind::Send, fd, Handler::Raw(cb), None, |r, token| {
            // SAFETY: the caller keeps the memory valid until `cb` runs, which is after the
            // send's final event.
            unsafe { r.send_to(fd, buf, len, to, token) }
        })?;
        Ok(OpHandle(token_for(OpKind::Send, key)))
    }

    /// Connects the non-blocking socket `fd` to `addr`; `f` gets the outcome (e.g.
    /// `ECONNREFUSED`).
    pub fn connect(
        &mut self,
        fd: RawFd,
        addr: &SockaddrStorage,
        f: impl FnOnce(&mut EventLoop, io::Result<()>) + 'static,
    ) -> io::Result<OpHandle> {
        self.connect_with(
            fd,
            addr,
            Handler::Once(Box::new(move |lp, outcome| {
                f(lp, unit_result(outcome.result))
            })),
        )
    }

    /// [`EventLoop::connect`] for a raw callback (`result` `0` or `-errno`).
    pub fn connect_raw(
        &mut self,
        fd: RawFd,
        addr: &SockaddrStorage,
        cb: RawCallback,
    ) -> io::Result<OpHandle> {
        self.connect_with(fd, addr, Handler::Raw(cb))
    }

    fn connect_with(
        &mut self,
        fd: RawFd,
        addr: &SockaddrStorage,
        handler: Handler,
    ) -> io::Result<OpHandle> {
        Self::check_fd(fd)?;
        let key = self.start_op(OpKind::Connect, fd, handler, None, |r, token| {
            r.connect(fd, addr, token)
        })?;
        Ok(OpHandle(token_for(OpKind::Connect, key)))
    }

    /// Closes `fd`: the loop's ops and watches on it end first (their callbacks are not called
    /// again, except sends, which get their final result), then the fd is closed; `f` gets the
    /// outcome.
    pub fn close(
        &mut self,
        fd: OwnedFd,
        f: impl FnOnce(&mut EventLoop, io::Result<()>) + 'static,
    ) -> io::Result<OpHandle> {
        self.close_with(
            fd,
            Handler::Once(Box::new(move |lp, outcome| {
                f(lp, unit_result(outcome.result))
            })),
        )
    }

    /// [`EventLoop::close`] for a raw callback (`result` `0` or `-errno`).
    pub fn close_raw(&mut self, fd: OwnedFd, cb: RawCallback) -> io::Result<OpHandle> {
        self.close_with(fd, Handler::Raw(cb))
    }

    fn close_with(&mut self, fd: OwnedFd, handler: Handler) -> io::Result<OpHandle> {
        self.check_open()?;
        let raw = fd.as_raw_fd();
        self.forget_fd(raw);
        let key = self.start_op(OpKind::Close, raw, handler, None, move |r, token| {
            r.close(fd, token)
        })?;
        Ok(OpHandle(token_for(OpKind::Close, key)))
    }

    /// Ends the loop's ops on `fd` before it is closed: each is cancelled in the reactor; sends
    /// keep their slot (detached from the fd) until their final event, the others are dropped.
    pub(crate) fn forget_fd(&mut self, fd: RawFd) {
        let Some(entry) = self.fd_entry_if_known(fd) else {
            return;
        };
        let mut index = entry.head;
        while index != NIL {
            let Some(slot) = self.ops.get_index_mut(index) else {
                break;
            };
            let next = slot.next;
            let (kind, op) = (slot.kind, slot.op);
            // Rebuild the key: linked slots are live, so the current generation is theirs.
            let key = self.ops.keys_at(index);
            let _ = self.reactor.cancel(op);
            if let Some(key) = key {
                if kind == OpKind::Send {
                    self.unlink(key);
                    if let Some(slot) = self.ops.get_mut(key) {
                        slot.cancel_requested = true;
                    }
                } else {
                    drop(self.remove_op(key));
                }
            }
            index = next;
        }
        if let Some(entry) = self.fd_entry_if_known(fd) {
            *entry = EMPTY_FD;
        }
        // Unread bytes of a socket being closed are discarded, as the kernel would.
        self.stashes.retain(|s| s.fd != fd);
    }

    /// Cancels an op started with `accept*`, `recv*`, `send*`, `connect*`, `close*`. `true` if it
    /// was live. Takes effect at once — its callback is not called again — except for a send,
    /// whose callback still gets its final result once the kernel no longer reads the memory.
    ///
    /// Cancelling a recv loses no data: bytes it had already taken out of the socket are handed,
    /// first and in order, to the next recv started on the same socket (a server can stop and
    /// restart receiving for backpressure). Closing the socket discards them.
    pub fn cancel(&mut self, op: OpHandle) -> bool {
        let Some((kind, key)) = decode_token(op.0) else {
            return false;
        };
        let Some(slot) = self.ops.get_mut(key) else {
            return false;
        };
        if slot.kind != kind || matches!(kind, OpKind::Reader | OpKind::Writer | OpKind::Signal) {
            return false;
        }
        if kind == OpKind::Send {
            if slot.cancel_requested {
                return false;
            }
            slot.cancel_requested = true;
            let op = slot.op;
            let _ = self.reactor.cancel(op);
            return true;
        }
        if let Some(slot) = self.remove_op(key) {
            let _ = self.reactor.cancel(slot.op);
            if kind == OpKind::Recv {
                self.cancelled_recvs.push((key, slot.fd));
            }
        }
        true
    }

    /// Calls `f` with the signal number each time `signo` arrives (through a signalfd: the signal
    /// is blocked in the loop thread while watched). Adding again replaces the callback.
    pub fn add_signal(
        &mut self,
        signo: i32,
        mut f: impl FnMut(&mut EventLoop, i32) + 'static,
    ) -> io::Result<()> {
        self.set_signal(
            signo,
            Handler::Many(Box::new(move |lp, outcome| f(lp, outcome.result))),
        )
    }

    /// [`EventLoop::add_signal`] for a raw callback (`result` = the signal number).
    pub fn add_signal_raw(&mut self, signo: i32, cb: RawCallback) -> io::Result<()> {
        self.set_signal(signo, Handler::Raw(cb))
    }

    fn set_signal(&mut self, signo: i32, handler: Handler) -> io::Result<()> {
        if !(1..=MAX_SIGNAL).contains(&signo) {
            return Err(invalid(libc::EINVAL));
        }
        self.check_open()?;
        if let Some(slot) = self.signals[signo as usize].and_then(|key| self.ops.get_mut(key)) {
            let old = std::mem::replace(&mut slot.handler, handler);
            drop(old);
            return Ok(());
        }
        let key = self.start_op(OpKind::Signal, -1, handler, None, |r, token| {
            r.add_signal(signo, token)
        })?;
        self.signals[signo as usize] = Some(key);
        Ok(())
    }

    /// Stops handling `signo` (and unblocks it); `false` if it was not handled.
    pub fn remove_signal(&mut self, signo: i32) -> bool {
        if !(1..=MAX_SIGNAL).contains(&signo) {
            return false;
        }
        let Some(slot) = self.signals[signo as usize]
            .take()
            .and_then(|key| self.remove_op(key))
        else {
            return false;
        };
        let _ = self.reactor.cancel(slot.op);
        true
    }

    // ----- futures -----

    /// A new pending future bound to this loop.
    pub fn create_future(&self) -> LoopFuture {
        LoopFuture::new(self.remote.clone())
    }

    /// Runs `f` on the loop thread once `future` is complete (right away in the next iteration if
    /// it already is). Callbacks of one future run in the order added. `InvalidInput` if the
    /// future belongs to another loop; a [`StateError`] on a closed loop.
    pub fn add_done_callback(
        &mut self,
        future: &LoopFuture,
        f: impl FnOnce(&mut EventLoop, &LoopFuture) + 'static,
    ) -> io::Result<()> {
        let handler = Handler::Once(Box::new(move |lp, outcome| {
            if let Some(future) = outcome.future {
                f(lp, future)
            }
        }));
        self.add_done_handler(future, handler)
    }

    /// [`EventLoop::add_done_callback`] for a raw callback (`outcome.future` is the future).
    pub fn add_done_callback_raw(
        &mut self,
        future: &LoopFuture,
        cb: RawCallback,
    ) -> io::Result<()> {
        self.add_done_handler(future, Handler::Raw(cb))
    }

    fn add_done_handler(&mut self, future: &LoopFuture, handler: Handler) -> io::Result<()> {
        self.check_schedulable()?;
        if !Arc::ptr_eq(&future.shared.remote, &self.remote) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the future belongs to another event loop",
            ));
        }
        let mut cell = future.lock();
        // Callbacks go on the future's chain while it is pending, and also while a completion
        // notice for it is still queued (the chain exists): that keeps them in order.
        if cell.state == FutureState::Pending || cell.watch.is_some() {
            let node = self.done_nodes.insert(DoneNode {
                handler,
                next: NO_NODE,
            });
            match cell.watch {
                Some(watch) => {
                    let watched = &mut self.watched[watch];
                    let tail = watched.tail;
                    watched.tail = node;
                    self.done_nodes[tail].next = node;
                }
                None => {
                    let watch = self.watched.insert(Watched {
                        future: future.clone(),
                        head: node,
                        tail: node,
                    });
                    cell.watch = Some(watch);
                }
            }
        } else {
            drop(cell);
            self.ready.push_back(Ready {
                handler,
                future: Some(future.clone()),
            });
        }
        Ok(())
    }

    /// Sets the pause after an accept's resource error (see
    /// [`Reactor::set_accept_retry_delay`]).
    pub fn set_accept_retry_delay(&mut self, delay: std::time::Duration) {
        self.reactor.set_accept_retry_delay(delay);
    }

    // ----- thread pool -----

    /// Sets the most worker threads the pool may run (1..=[`MAX_POOL_SIZE`], default
    /// [`DEFAULT_POOL_SIZE`]). Workers already running stay until the loop closes.
    pub fn set_pool_size(&mut self, workers: usize) -> io::Result<()> {
        if !(1..=MAX_POOL_SIZE).contains(&workers) {
            return Err(invalid(libc::EINVAL));
        }
        self.pool_size = workers;
        if let Some(pool) = &mut self.pool {
            pool.set_max_workers(workers);
        }
        Ok(())
    }

    fn submit_work(&mut self, work: Work) -> io::Result<LoopFuture> {
        self.check_open()?;
        let future = self.create_future();
        let pool = self
            .pool
            .get_or_insert_with(|| Pool::new(self.pool_size, self.remote.clone()));
        pool.submit(work, future.clone())?;
        self.pool_in_flight += 1;
        Ok(future)
    }

    /// Runs `work` on a pool thread; the returned future completes with its `Ok` value
    /// ([`LoopFuture::set_result`]) or `Err` code ([`LoopFuture::set_error`]), or
    /// [`ERR_PANICKED`] if it panicked. Cancelling the future before the job starts skips it.
    /// The job keeps the loop alive until it has finished.
    pub fn run_in_thread(
        &mut self,
        work: impl FnOnce() -> Result<u64, i32> + Send + 'static,
    ) -> io::Result<LoopFuture> {
        self.submit_work(Work::Boxed(Box::new(work)))
    }

    /// [`EventLoop::run_in_thread`] for raw work.
    pub fn run_in_thread_raw(&mut self, work: RawWork) -> io::Result<LoopFuture> {
        self.submit_work(Work::Raw(work))
    }

    // ----- closing -----

    /// Closes the loop: cancels and drains everything in flight (see the module doc), then
    /// refuses new work. Idempotent. A [`StateError`] when called from inside a callback.
    pub fn shutdown(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        if self.running {
            return Err(StateError::new("shutdown() called from inside a callback").into());
        }
        self.running = true;
        self.closing = true;
        let result = catch_unwind(AssertUnwindSafe(|| self.shutdown_inner()));
        self.running = false;
        match result {
            Ok(()) => {
                self.closed = true;
                self.closing = false;
                Ok(())
            }
            Err(panic) => resume_unwind(panic),
        }
    }

    fn shutdown_inner(&mut self) {
        if let Some(mut pool) = self.pool.take() {
            pool.shutdown();
            // Every job has either run or been dropped; the PoolDone notices are moot.
            self.pool_in_flight = 0;
        }
        // Rounds, because callbacks run during the close may schedule more work.
        const ROUNDS: usize = 16;
        let give_up = Instant::now() + Duration::from_secs(10);
        for _ in 0..ROUNDS {
            for (_, watched) in self.watched.iter() {
                watched.future.cancel();
            }
            for key in self.ops.keys() {
                let Some(slot) = self.ops.get_mut(key) else {
                    continue;
                };
                if slot.kind == OpKind::Send {
                    if !slot.cancel_requested {
                        slot.cancel_requested = true;
                        let op = slot.op;
                        let _ = self.reactor.cancel(op);
                    }
                    continue;
                }
                if let Some(slot) = self.remove_op(key) {
                    let _ = self.reactor.cancel(slot.op);
                    slot.handler.cancel(self, slot.fd);
                }
            }
            while let Some(handler) = self.timers.pop_any() {
                handler.cancel(self, -1);
            }
            // Leftovers of a batch a panic interrupted: their ops are gone, so this only closes
            // accepted fds nobody owns.
            self.dispatch_batch();
            self.drain_remote();
            while let Some(Ready { handler, future }) = self.ready.pop_front() {
                match future {
                    // Done-callbacks run: their future really is complete (cancelled, usually).
                    Some(future) => {
                        let outcome = Outcome {
                            future: Some(&future),
                            ..Outcome::simple(0)
                        };
                        handler.call_once(self, &outcome);
                    }
                    None => handler.cancel(self, -1),
                }
            }
            let sends_left = !self.ops.is_empty();
            let other_work = !self.ready.is_empty()
                || self.timers.len() > 0
                || !self.watched.is_empty()
                || self.remote.has_pending();
            if !sends_left && !other_work {
                break;
            }
            if sends_left && !other_work {
                // Only sends remain: wait for their final events (the kernel may still read
                // their memory until then).
                while !self.ops.is_empty() && Instant::now() < give_up {
                    let n = match self
                        .reactor
                        .poll(Some(Duration::from_millis(10)), &mut self.batch)
                    {
                        Ok(n) => n,
                        Err(_) => break,
                    };
                    for i in 0..n {
                        let event = self.batch[i];
                        if event.token != self.wake_token && event.token & TOKEN_RESERVED != 0 {
                            self.dispatch_event(event);
                        }
                    }
                }
                if !self.ops.is_empty() {
                    break;
                }
            }
        }
        // Refuse further thread-safe calls, and cancel what slipped in.
        let mut late = VecDeque::new();
        {
            let mut queue = self.remote.lock();
            queue.closed = true;
            std::mem::swap(&mut queue.items, &mut late);
        }
        for item in late {
            if let RemoteItem::Raw(cb) = item {
                Handler::Raw(cb).cancel(self, -1);
            }
        }
        // Sends whose final event never came: the kernel may still read their memory, so an
        // owned buffer is leaked rather than freed, and a raw callback is not told to free its
        // memory.
        for key in self.ops.keys() {
            if let Some(mut slot) = self.remove_op(key) {
                if let Some(owned) = slot.owned.take() {
                    std::mem::forget(owned);
                }
                if let Handler::Raw(_) = slot.handler {
                    continue;
                }
                drop(slot.handler);
            }
        }
        self.ready.clear();
        while self.timers.pop_any().is_some() {}
        self.watched.clear();
        self.done_nodes.clear();
        self.held_raw.clear();
        self.held_buffer = false;
        self.stashes.clear();
        self.cancelled_recvs.clear();
        self.batch_len = 0;
        self.batch_pos = 0;
    }
}

fn unit_result(result: i32) -> io::Result<()> {
    if result >= 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-result))
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        if self.running {
            // Only reachable by replacing or dropping the loop from inside one of its own
            // callbacks (e.g. `*lp = EventLoop::new(..)`): the interrupted iteration still uses
            // this loop's reactor buffers, so continuing would be a use-after-free.
            eprintln!(
                "ringloop: an EventLoop was dropped from inside one of its own callbacks; aborting"
            );
            std::process::abort();
        }
        // A panicking Rust callback interrupts the close; the next attempt resumes where it
        // stopped (everything already handled is gone from the tables).
        for _ in 0..4 {
            if catch_unwind(AssertUnwindSafe(|| self.shutdown())).is_ok() {
                break;
            }
        }
    }
}

impl fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventLoop")
            .field("backend", &self.backend)
            .field("now", &self.now)
            .field("ready", &self.ready.len())
            .field("timers", &self.timers.len())
            .field("ops", &self.ops.len())
            .field("futures_watched", &self.watched.len())
            .field("pool_in_flight", &self.pool_in_flight)
            .field("running", &self.running)
            .field("closed", &self.closed)
            .finish()
    }
}
