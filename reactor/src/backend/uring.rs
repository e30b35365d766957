//! The io_uring backend: native completions.
//!
//! * user_data of every SQE is the op's key (see `ops.rs`); keys with generation 0 tag requests
//!   whose completions carry no news (async-cancel requests) and are skipped.
//! * Watches are oneshot `POLL_ADD`s re-armed at the start of the next `poll` after they fired: a
//!   oneshot poll on a still-ready fd completes at once, which gives level-triggered behaviour
//!   with at most one event per `poll` (multishot poll is edge-like, so it is not used).
//! * Multishot recv draws from one provided-buffer ring (group 0) over the pool's mapping. A recv
//!   that the kernel ends without an error the caller should see (ENOBUFS, CQ overflow) is re-armed
//!   as soon as the ring holds buffers again (lent buffers go back at the start of each `poll`),
//!   and a recv started meanwhile is armed after it, so that it cannot take the buffers first.
//!   Completions of a cancelled recv that carry bytes go to the fd's stash (see `ops.rs`).
//! * A one-shot recv is `RECV` with `IOSQE_BUFFER_SELECT` from the same ring and `len` = its limit
//!   (for a selected buffer the kernel reads at most `min(len, buffer length)`); `ENOBUFS` holds it
//!   back like a multishot. A recv starts with its fd's stash and is armed only once the stash is
//!   delivered; stashed bytes that turn up while a one-shot is armed complete it instead (its
//!   request is cancelled and what it still receives is stashed behind them).
//! * Accept is multishot with `SOCK_NONBLOCK | SOCK_CLOEXEC`; per-connection and resource errors
//!   (EMFILE...) are reported with `MORE`. After a per-connection error the accept is re-armed at
//!   the next `poll`; after a resource error it is re-armed once the back-off delay has passed
//!   (`Backoff`), and `poll` caps its wait at that instant.
//! * Sends on one fd are queued and only the head is in flight, so a short send finished by a
//!   follow-up SQE can never interleave with the next send's bytes. Datagram sends (`send_to`)
//!   have no short count to finish: they go to the kernel at once, several in flight per fd, and
//!   the kernel issues them in submission order. With `MSG_DONTWAIT`: one the socket cannot take
//!   comes back `EAGAIN` and is retried after `SEND_RETRY_DELAY` (see `Kind::SendTo`).
//! * Setup flags: `SUBMIT_ALL` and `COOP_TASKRUN | TASKRUN_FLAG` where the kernel has them.
//!   `SINGLE_ISSUER`/`DEFER_TASKRUN` bind the ring to one submitting task, while a reactor may be
//!   created on one thread, polled from another and dropped on a third (Python and the C ABI do
//!   exactly this): they are used only when [`Options::single_thread`] promises one polling
//!   thread. The ring is then created disabled (`R_DISABLED`) and enabled by the first `poll`
//!   (or a submit forced by a full SQ), so the issuer is the thread that runs the loop, not the
//!   one that created it; cancels from other threads stay queued for the issuer's next `poll`.
//!   With `DEFER_TASKRUN` completion work runs only inside an enter with `GETEVENTS`, which is
//!   why [`Uring::flush`] asks for it. A registered ring fd is per-thread and not used.

use std::collections::VecDeque;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use nix::sys::signalfd::SignalFd;
use nix::sys::socket::{SockaddrLike, SockaddrStorage};

use super::{
    accept_error_is_resource, accept_error_is_transient, ready_bits, Backend, Backoff,
    SEND_RETRY_DELAY,
};
use crate::buffers::{BufferPool, Mapping};
use crate::ops::{FdTable, OpTable, Unstashed};
use crate::sys::{
    close_now, current_tid, datagram_held, errno_of, file_identity, fork_generation,
    forked_child_error, is_always_ready_file, is_fifo, thread_exists,
};
use crate::wake::WakeShared;
use crate::{flags, BackendKind, Event, Interest, Options};

/// The SQE that sends the rest of a caller's buffer: `len - sent` bytes from `buf + sent` (at
/// most 4 GiB - 1 at a time; the completion handler sends the rest).
fn send_entry(fd: RawFd, buf: *const u8, len: usize, sent: usize) -> squeue::Entry {
    let chunk = (len - sent).min(u32::MAX as usize) as u32;
    // `sent <= len`, so the pointer stays inside the caller's buffer.
    opcode::Send::new(types::Fd(fd), buf.wrapping_add(sent), chunk)
        .flags(libc::MSG_NOSIGNAL)
        .build()
}

/// The caller's events array while [`Backend::poll`] runs, empty at all other times: an event
/// produced while nothing waits in `ready` is written straight into it (and its buffer lent
/// at once, as when it is taken out of `ready`), which spares most events the queue. Events
/// beyond `cap` go to `ready`, and so does every event after them, so order is kept; a
/// non-empty `ready` therefore always means a full sink.
struct Sink {
    ptr: *mut Event,
    cap: usize,
    len: usize,
}

impl Sink {
    const NONE: Sink = Sink {
        ptr: std::ptr::null_mut(),
        cap: 0,
        len: 0,
    };
}

/// Empties the sink when `poll` ends, by return, error or panic: the array it points into is
/// only borrowed for that call.
struct Polling<'a>(&'a mut Uring);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.sink = Sink::NONE;
    }
}

/// Hands `event` (of op `key`) out: into the sink while it has room and nothing is queued ahead,
/// else to the back of `ready`. A free function so that it can be called while an op is
/// borrowed.
#[inline]
fn deliver(
    sink: &mut Sink,
    ready: &mut VecDeque<(u64, Event)>,
    pool: &mut BufferPool,
    key: u64,
    event: Event,
) {
    if sink.len < sink.cap && ready.is_empty() {
        // SAFETY: `cap > 0` only while `poll` runs (`Polling` empties the sink when it ends),
        // and then `ptr..ptr+cap` is the caller's `&mut [Event]` of that call, which nothing
        // else uses meanwhile; `len < cap`.
        unsafe { sink.ptr.add(sink.len).write(event) };
        sink.len += 1;
        if event.flags & flags::BUFFER != 0 {
            pool.lend(event.aux as u16);
        }
    } else {
        ready.push_back((key, event));
    }
}

/// Provided-buffer group id of the pool.
const BUF_GROUP: u16 = 0;
/// user_data of async-cancel requests (generation 0: never an op).
const CANCEL_TAG: u64 = 0;
/// `io_uring_enter` flag: wait for / run completions (linux/io_uring.h).
const IORING_ENTER_GETEVENTS: u32 = 1;
/// How many CQEs one batch copies out of the ring.
const REAP_BATCH: usize = 64;
/// About how many bytes the buffers offered in the provided-buffer ring receive (see
/// [`RingDepth`]). 640 KiB keeps 10 KiB receives at the whole pool of the Python loop (64).
const RING_BYTES: usize = 640 * 1024;
/// The fewest buffers the ring offers, however large the receives.
const MIN_RING_DEPTH: usize = 8;

/// How many free pool buffers the provided-buffer ring offers the kernel: all of them while
/// receives are small, fewer as they grow, so that what the kernel receives ahead of the caller
/// stays about [`RING_BYTES`]. The others wait in `Uring::spare`, and the most recently used go
/// back into the ring first.
///
/// A multishot receive lands wherever the ring points, as soon as the bytes arrive; the caller
/// copies them out when a poll hands them over. With every buffer offered, large receives cycle
/// through the whole pool (the Python loop's 64 × 128 KiB, the C default's 256 × 64 KiB), so the
/// kernel's copy in and the caller's copy out both miss the cache. Server CPU per round trip,
/// 100 KiB echoes, whole pool → bounded ring:
/// - Python protocol server: 24.1-24.8 → 21.2-21.7 µs at 100 connections, 21.1-22.1 → 19.5-20.0
///   at 10;
/// - C `echo_server`, when it still copied each message: 30.2-30.3 → 25.7-26.0 µs at 100
///   connections.
///
/// The cost: a receive that finds the ring empty ends and is armed again at the next poll. That
/// is why the depth follows the receive size instead of being small: a fixed ring of 8 buffers
/// cost the Python server at 100 connections × 1 KiB 6.0 µs per round trip instead of 3.6, and at
/// 100 KiB Python streams mode pays ~4 % (45 → 47 µs) for what protocol mode gains.
struct RingDepth {
    /// Bytes per received completion, a moving average.
    bytes_per_recv: usize,
    /// The pool's size: the deepest the ring gets.
    max: usize,
}

impl RingDepth {
    const fn new(max: usize) -> RingDepth {
        RingDepth {
            bytes_per_recv: 0,
            max,
        }
    }

    /// Accounts for a completion that received `bytes`.
    fn received(&mut self, bytes: usize) {
        self.bytes_per_recv = (self.bytes_per_recv * 7 + bytes) / 8;
    }

    /// How many buffers the ring should offer.
    fn limit(&self) -> usize {
        (RING_BYTES / self.bytes_per_recv.max(1)).clamp(MIN_RING_DEPTH.min(self.max), self.max)
    }
}

/// Why io_uring cannot be used: `Unavailable` makes `Auto` fall back to epoll.
pub(crate) enum SetupError {
    Unavailable(String),
    Io(io::Error),
}

/// Storage for a connect address that must stay put while the kernel reads it.
struct SockAddrBuf {
    storage: libc::sockaddr_storage,
    len: libc::socklen_t,
}

enum Kind {
    Watch {
        interest: Interest,
    },
    Recv,
    /// One receive of at most `max` bytes (already capped at the buffer size).
    RecvOnce {
        max: u32,
    },
    /// Datagrams (multishot `recvmsg`); the kernel reads the address and control room from
    /// `msghdr` at each arming, so it is boxed and lives with the op.
    RecvMsg {
        msghdr: Box<libc::msghdr>,
    },
    Send {
        buf: *const u8,
        len: usize,
        sent: usize,
    },
    /// A datagram send (`sendto`); `to` None: the connected peer. The kernel reads `to` when it
    /// issues the request, so it is boxed and lives with the op.
    SendTo {
        buf: *const u8,
        len: u32,
        to: Option<Box<SockAddrBuf>>,
    },
    Accept,
    Connect {
        addr: Box<SockAddrBuf>,
    },
    Close,
    Signal {
        signalfd: SignalFd,
    },
    Wake,
}

/// What to do with a completion, decided while the op is borrowed.
enum Next {
    Watch(Interest),
    /// A multishot recv's completion; `datagram` for a datagram receive.
    Recv {
        datagram: bool,
    },
    RecvOnce,
    Accept,
    Send {
        len: usize,
        sent: usize,
    },
    SendTo,
    Final,
    Signal,
    Wake,
}

struct Op {
    token: u64,
    fd: RawFd,
    kind: Kind,
    /// The kernel holds a request for this op (an SQE was queued and its last CQE not seen yet).
    armed: bool,
    /// Cancelled by the caller: later completions are swallowed.
    cancelled: bool,
    /// For a recv cancelled while armed: the socket's identity at cancel time, so bytes that
    /// race with the cancel are kept only while the fd still names that socket.
    identity: Option<(u64, u64)>,
    /// A multishot recv on a pipe: armed as a multishot read (found out when the kernel said
    /// `ENOTSOCK` to the receive).
    pipe: bool,
}

impl Op {
    /// Ops the caller started: counted by `pending` and cancellable.
    fn counted(&self) -> bool {
        !matches!(self.kind, Kind::Wake)
    }

    /// Ops in their fd's op list (for `close` and for finding a live recv). Sends are indexed
    /// by their fd's send FIFO alone: they start and end in order, so adding and removing one is
    /// a push and a pop, never a search.
    fn indexed(&self) -> bool {
        !matches!(
            self.kind,
            Kind::Wake | Kind::Close | Kind::Signal { .. } | Kind::Send { .. }
        )
    }
}

/// What the kernel may write into for a single-issuer ring dropped on another thread while its
/// issuer thread still lived: the buffer ring and pool and the wake read's target, with that
/// thread's id. The ring itself is closed; the memory is freed by a later creation or drop of a
/// ring once that thread has exited (see `Drop for Uring`).
type Deferred = (libc::pid_t, BufRing, BufferPool, Box<u64>);
static DEFERRED_FREES: Mutex<Vec<Deferred>> = Mutex::new(Vec::new());

/// Frees the deferred buffer memory whose issuer thread has exited.
fn free_deferred_buffers() {
    let mut deferred = DEFERRED_FREES.lock().unwrap_or_else(|e| e.into_inner());
    if !deferred.is_empty() {
        deferred.retain(|(tid, ..)| thread_exists(*tid));
    }
}

/// The provided-buffer ring: `entries` slots of `io_uring_buf` in their own mapping, the tail
/// published to the kernel through the reserved field of slot 0.
struct BufRing {
    map: Mapping,
    mask: u16,
    tail: u16,
}

impl BufRing {
    fn push(&mut self, bid: u16, addr: *mut u8, len: usize) {
        let index = (self.tail & self.mask) as usize;
        // SAFETY: `index < entries`, inside the mapping; the kernel only reads slots between its
        // head and the published tail, and this slot is past the published tail.
        unsafe {
            let entry = (self.map.as_ptr() as *mut types::BufRingEntry).add(index);
            (*entry).set_addr(addr as u64);
            (*entry).set_len(len as u32);
            (*entry).set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field of slot 0 is a naturally aligned u16 the kernel reads atomically;
        // the release store orders the slot writes above before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.map.as_ptr() as *const types::BufRingEntry)
                as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

pub(crate) struct Uring {
    // Dropped by hand in `Drop`: the ring first, then the memory it may have referenced.
    ring: ManuallyDrop<IoUring>,
    pool: ManuallyDrop<BufferPool>,
    buf_ring: ManuallyDrop<BufRing>,
    ops: OpTable<Op>,
    fds: FdTable,
    /// Ops to arm again at the start of the next `poll` (fired watches, ended multishots).
    rearm: Vec<u64>,
    /// Recvs held back because the pool ran dry; armed again as soon as the ring has buffers.
    starved: Vec<u64>,
    /// Recvs (not armed) waiting for their fd's stash to be deliverable (`Unstashed::Busy`);
    /// served at the start of the next `poll`, after the lend they wait for has ended.
    stash_waiters: Vec<u64>,
    /// Accepts paused after a resource error (EMFILE...), armed again when their delay is over.
    backoff: Backoff,
    /// Datagram sends paused after an `EAGAIN` (see [`SEND_RETRY_DELAY`]).
    send_backoff: Backoff,
    /// Buffers currently in the provided-buffer ring (not taken by the kernel).
    in_ring: usize,
    /// Free buffers the ring does not offer for now (LIFO: the warmest last); see [`RingDepth`].
    spare: Vec<u16>,
    depth: RingDepth,
    /// CQEs moved out of the CQ to make room while submitting; handled before the CQ.
    backlog: VecDeque<(u64, i32, u32)>,
    /// Events produced but not yet handed out, with the key of their op. Only events that do not
    /// fit in the caller's array (or come outside `poll`) wait here: see [`Sink`].
    ready: VecDeque<(u64, Event)>,
    sink: Sink,
    scratch: Vec<u64>,
    /// Connect address boxes of finished connects, reused so connects stop allocating. The
    /// boxes matter: an address must not move while the kernel reads it, and this vector grows.
    #[allow(clippy::vec_box)]
    spare_addrs: Vec<Box<SockAddrBuf>>,
    wake: Arc<WakeShared>,
    wake_token: u64,
    /// The eventfd read target; boxed so it never moves while a read is in flight.
    wake_counter: Box<u64>,
    live: usize,
    armed: usize,
    fork_generation: u64,
    /// Set up with `SINGLE_ISSUER | DEFER_TASKRUN` (see the module doc).
    single_issuer: bool,
    /// The kernel has `IORING_OP_READ_MULTISHOT` (6.7), which multishot recvs on pipes need.
    read_multishot: bool,
    /// Created `R_DISABLED` and not enabled yet: the first `poll` enables it.
    disabled: bool,
    /// The thread that enabled a single-issuer ring (its kernel thread id): the only one whose
    /// enters the kernel accepts.
    issuer: Option<libc::pid_t>,
}

// SAFETY: the raw pointers inside (caller send buffers, mappings) are only handed to the kernel or
// read by the one thread that uses the reactor at a time; nothing is shared between threads
// except `WakeShared`, which is `Sync`.
unsafe impl Send for Uring {}

/// Builds the ring; the flag says whether it is single-issuer (created disabled, see
/// [`Uring::enable`]).
fn build_ring(opts: &Options) -> io::Result<(IoUring, bool)> {
    let cq_entries = (opts.ring_entries * 4).clamp(4096, 65536);
    // dontfork: a forked child never uses the parent's ring (poll refuses), so its mappings
    // need not be copied into the child.
    let fast = |single: bool| {
        let mut builder = IoUring::builder();
        builder
            .dontfork()
            .setup_cqsize(cq_entries)
            .setup_submit_all()
            .setup_coop_taskrun()
            .setup_taskrun_flag();
        if single {
            builder
                .setup_single_issuer()
                .setup_defer_taskrun()
                .setup_r_disabled();
        }
        builder.build(opts.ring_entries)
    };
    let is_einval = |err: &io::Error| err.raw_os_error() == Some(libc::EINVAL);
    if opts.single_thread {
        match fast(true) {
            Ok(ring) => return Ok((ring, true)),
            // Kernels before 6.1 reject SINGLE_ISSUER/DEFER_TASKRUN with EINVAL.
            Err(err) if is_einval(&err) => {}
            Err(err) => return Err(err),
        }
    }
    match fast(false) {
        Ok(ring) => Ok((ring, false)),
        // Older kernels reject flags they do not know with EINVAL; retry without them.
        Err(err) if is_einval(&err) => IoUring::builder()
            .dontfork()
            .setup_cqsize(cq_entries)
            .build(opts.ring_entries)
            .map(|ring| (ring, false)),
        Err(err) => Err(err),
    }
}

impl Uring {
    pub(crate) fn new(opts: &Options, wake: Arc<WakeShared>) -> Result<Uring, SetupError> {
        free_deferred_buffers();
        let (ring, single_issuer) = build_ring(opts)
            .map_err(|e| SetupError::Unavailable(format!("io_uring_setup failed: {e}")))?;
        if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
            return Err(SetupError::Unavailable(
                "kernel lacks IORING_FEAT_EXT_ARG/IORING_FEAT_NODROP".into(),
            ));
        }
        let mut probe = Probe::new();
        ring.submitter()
            .register_probe(&mut probe)
            .map_err(|e| SetupError::Unavailable(format!("IORING_REGISTER_PROBE failed: {e}")))?;
        let needed = [
            (opcode::PollAdd::CODE, "POLL_ADD"),
            (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
            (opcode::Recv::CODE, "RECV"),
            (opcode::Send::CODE, "SEND"),
            (opcode::Accept::CODE, "ACCEPT"),
            (opcode::Connect::CODE, "CONNECT"),
            (opcode::Close::CODE, "CLOSE"),
            (opcode::Read::CODE, "READ"),
            // Multishot recv (6.0) has no opcode of its own; SEND_ZC arrived in the same release,
            // so its presence is the probe for it.
            (
                opcode::SendZc::CODE,
                "SEND_ZC (marker for multishot recv, Linux 6.0)",
            ),
        ];
        for (code, name) in needed {
            if !probe.is_supported(code) {
                return Err(SetupError::Unavailable(format!(
                    "kernel lacks IORING_OP_{name}"
                )));
            }
        }
        let pool = BufferPool::new(opts.buffer_size, opts.buffer_count).map_err(SetupError::Io)?;
        let count = pool.count();
        let map = Mapping::new(count * std::mem::size_of::<types::BufRingEntry>())
            .map_err(SetupError::Io)?;
        let mut buf_ring = BufRing {
            map,
            mask: (count - 1) as u16,
            tail: 0,
        };
        for bid in 0..count as u16 {
            buf_ring.push(bid, pool.buffer_ptr(bid), pool.size());
        }
        buf_ring.publish();
        // SAFETY: the ring memory is a live mapping of `count` entries owned by `buf_ring`, which
        // outlives the ring (see Drop).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buf_ring.map.as_ptr() as u64,
                count as u16,
                BUF_GROUP,
                0,
            )
        }
        .map_err(|e| SetupError::Unavailable(format!("IORING_REGISTER_PBUF_RING failed: {e}")))?;

        let mut uring = Uring {
            ring: ManuallyDrop::new(ring),
            pool: ManuallyDrop::new(pool),
            buf_ring: ManuallyDrop::new(buf_ring),
            ops: OpTable::new(),
            fds: FdTable::default(),
            rearm: Vec::new(),
            starved: Vec::new(),
            stash_waiters: Vec::new(),
            backoff: Backoff::new(opts.accept_retry_delay),
            send_backoff: Backoff::new(SEND_RETRY_DELAY),
            in_ring: count,
            spare: Vec::with_capacity(count),
            depth: RingDepth::new(count),
            backlog: VecDeque::new(),
            ready: VecDeque::with_capacity(1024),
            sink: Sink::NONE,
            scratch: Vec::new(),
            spare_addrs: Vec::new(),
            wake_token: opts.wake_token,
            wake_counter: Box::new(0),
            wake: wake.clone(),
            live: 0,
            armed: 0,
            fork_generation: fork_generation(),
            single_issuer,
            read_multishot: probe.is_supported(opcode::ReadMulti::CODE),
            disabled: single_issuer,
            issuer: None,
        };
        uring
            .start(wake.fd(), 0, Kind::Wake)
            .map_err(SetupError::Io)?;
        Ok(uring)
    }

    /// The SQE that arms `op`; `wake_counter` is the read target of the wake op.
    fn entry_for(key: u64, op: &Op, wake_counter: *mut u64) -> squeue::Entry {
        let fd = types::Fd(op.fd);
        let entry = match &op.kind {
            Kind::Watch { interest } => {
                let mut mask = 0u32;
                if interest.contains(Interest::READABLE) {
                    mask |= libc::POLLIN as u32;
                }
                if interest.contains(Interest::WRITABLE) {
                    mask |= libc::POLLOUT as u32;
                }
                opcode::PollAdd::new(fd, mask).build()
            }
            // A pipe is read (Linux 6.7): the whole buffer each time, from its current position.
            Kind::Recv if op.pipe => opcode::ReadMulti::new(fd, 0, BUF_GROUP)
                .offset(u64::MAX)
                .build(),
            Kind::Recv => opcode::RecvMulti::new(fd, BUF_GROUP).build(),
            // MSG_TRUNC: the header gives a datagram's real length even when it was cut short.
            Kind::RecvMsg { msghdr } => {
                opcode::RecvMsgMulti::new(fd, &**msghdr as *const libc::msghdr, BUF_GROUP)
                    .flags(libc::MSG_TRUNC as u32)
                    .build()
            }
            // With a selected buffer the kernel reads min(len, buffer length) bytes (len 0: the
            // whole buffer); `max` is never 0 here.
            Kind::RecvOnce { max } => opcode::Recv::new(fd, std::ptr::null_mut(), *max)
                .buf_group(BUF_GROUP)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT),
            Kind::Send { buf, len, sent } => send_entry(op.fd, *buf, *len, *sent),
            // MSG_DONTWAIT: `EAGAIN` comes back as it is instead of the kernel retrying. Its
            // retry has been seen (Linux 6.18) to send an *empty* datagram through an
            // unconnected Unix datagram socket whose receiver was full, and to report 0: the
            // first attempt had consumed the payload. The reactor retries after a pause
            // (SEND_RETRY_DELAY) with the payload intact.
            Kind::SendTo { buf, len, to } => {
                let send = opcode::Send::new(fd, *buf, *len)
                    .flags(libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
                match to {
                    Some(to) => send
                        .dest_addr(
                            &to.storage as *const libc::sockaddr_storage as *const libc::sockaddr,
                        )
                        .dest_addr_len(to.len)
                        .build(),
                    None => send.build(),
                }
            }
            Kind::Accept => opcode::AcceptMulti::new(fd)
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build(),
            Kind::Connect { addr } => opcode::Connect::new(
                fd,
                &addr.storage as *const libc::sockaddr_storage as *const libc::sockaddr,
                addr.len,
            )
            .build(),
            Kind::Close => opcode::Close::new(fd).build(),
            Kind::Signal { signalfd } => {
                opcode::PollAdd::new(types::Fd(signalfd.as_raw_fd()), libc::POLLIN as u32).build()
            }
            Kind::Wake => opcode::Read::new(fd, wake_counter.cast::<u8>(), 8).build(),
        };
        entry.user_data(key)
    }

    /// Queues `entry`, submitting first when the SQ is full.
    fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        if self.fork_generation != fork_generation() {
            // The rings are not mapped in a forked child (dontfork), and are the parent's anyway.
            return Err(forked_child_error());
        }
        loop {
            // SAFETY: every entry built here points only at memory that outlives its request: the
            // buffer ring and pool (freed after the ring), op-owned boxes (kept until the last
            // CQE), the boxed wake counter, or caller memory the caller promised to keep (send).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.submit_now()?;
        }
    }

    /// Enables a ring created `R_DISABLED` (single-issuer): the calling thread becomes its
    /// issuer. Must precede every enter.
    fn enable(&mut self) -> io::Result<()> {
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
            self.issuer = Some(current_tid());
        }
        Ok(())
    }

    /// Whether this thread may not enter a single-issuer ring: it is not enabled yet (the first
    /// `poll` picks the issuer, so a cancel on the creating thread does not bind it to that
    /// thread), or another thread is its issuer.
    fn enter_is_deferred(&self) -> bool {
        self.single_issuer && (self.disabled || self.issuer != Some(current_tid()))
    }

    /// Submits the SQ without waiting. On a `DEFER_TASKRUN` ring the enter also carries
    /// `GETEVENTS` (with nothing to wait for), so the completion work of what it submitted runs
    /// now: a cancelled request drops its file reference before `cancel`/`close` return.
    fn submit_now(&mut self) -> io::Result<()> {
        self.enable()?;
        let result = if self.single_issuer {
            let queued = self.ring.submission().len() as u32;
            // SAFETY: no argument pointer is passed (size 0, `None`).
            unsafe {
                self.ring.submitter().enter::<libc::sigset_t>(
                    queued,
                    0,
                    IORING_ENTER_GETEVENTS,
                    None,
                )
            }
        } else {
            self.ring.submit()
        };
        match result {
            Ok(_) => Ok(()),
            // The kernel holds overflowed completions and refuses new work until the CQ has room:
            // move the CQ into the backlog (handled before the CQ, so order is kept).
            Err(err) if matches!(err.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                self.spill_cq();
                Ok(())
            }
            Err(err) if err.raw_os_error() == Some(libc::EINTR) => Ok(()),
            Err(err) => Err(err),
        }
    }

    fn spill_cq(&mut self) {
        let backlog = &mut self.backlog;
        for cqe in self.ring.completion() {
            backlog.push_back((cqe.user_data(), cqe.result(), cqe.flags()));
        }
    }

    fn start(&mut self, fd: RawFd, token: u64, kind: Kind) -> io::Result<u64> {
        let key = self.insert(fd, token, kind)?;
        if let Err(err) = self.arm(key) {
            self.discard(key);
            return Err(err);
        }
        Ok(key)
    }

    /// Adds an op without arming it.
    fn insert(&mut self, fd: RawFd, token: u64, kind: Kind) -> io::Result<u64> {
        self.fds.check(fd)?;
        let op = Op {
            token,
            fd,
            kind,
            armed: false,
            cancelled: false,
            identity: None,
            pipe: false,
        };
        let (counted, indexed) = (op.counted(), op.indexed());
        let key = self.ops.insert(op);
        if indexed {
            self.fds.add_op(fd, key);
        }
        if counted {
            self.live += 1;
        }
        Ok(key)
    }

    fn arm(&mut self, key: u64) -> io::Result<()> {
        let wake_counter: *mut u64 = &mut *self.wake_counter;
        let Some(op) = self.ops.get_mut(key) else {
            return Ok(());
        };
        if op.armed || op.cancelled {
            return Ok(());
        }
        let entry = Self::entry_for(key, op, wake_counter);
        // Marked before the push (which never looks at ops), undone if it fails.
        op.armed = true;
        if let Err(err) = self.push(&entry) {
            if let Some(op) = self.ops.get_mut(key) {
                op.armed = false;
            }
            return Err(err);
        }
        self.armed += 1;
        Ok(())
    }

    /// Removes an op for good and starts the next queued send on its fd.
    fn discard(&mut self, key: u64) {
        if let Some(op) = self.ops.remove(key) {
            self.forget(key, op);
        }
    }

    /// Cleans up after op `key`, already taken out of the table (see [`Uring::discard`]).
    fn forget(&mut self, key: u64, op: Op) {
        if op.counted() && !op.cancelled {
            self.live -= 1;
        }
        if op.indexed() {
            self.fds.remove_indexed(op.fd, key);
        } else if matches!(op.kind, Kind::Send { .. }) {
            // The head of the FIFO ended: the next send may go out now.
            if let Some(next) = self.fds.remove_send(op.fd, key) {
                if let Err(err) = self.arm(next) {
                    self.fail(next, errno_of(&err));
                }
            }
        }
        match op.kind {
            // Cancelled or failed while paused: its back-off must not wake `poll` any more.
            Kind::Accept => self.backoff.forget(key),
            Kind::SendTo { .. } => self.send_backoff.forget(key),
            _ => {}
        }
        match op.kind {
            Kind::Connect { addr } | Kind::SendTo { to: Some(addr), .. } => {
                self.spare_addrs.push(addr)
            }
            _ => {}
        }
    }

    /// `addr` copied into a box the kernel may read until the op's last completion (recycled).
    fn addr_buf(&mut self, addr: &SockaddrStorage) -> Box<SockAddrBuf> {
        let mut buf = self.spare_addrs.pop().unwrap_or_else(|| {
            Box::new(SockAddrBuf {
                // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
                storage: unsafe { std::mem::zeroed() },
                len: 0,
            })
        });
        let len = (addr.len() as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `addr.as_ptr()` points at `addr.len()` valid bytes, of which `len` fit in a
        // sockaddr_storage; the regions are distinct.
        unsafe {
            std::ptr::copy_nonoverlapping(
                addr.as_ptr() as *const u8,
                &mut buf.storage as *mut _ as *mut u8,
                len,
            );
        }
        buf.len = len as libc::socklen_t;
        buf
    }

    fn emit(&mut self, key: u64, token: u64, result: i32, flags: u32, aux: u64) {
        let event = Event {
            token,
            result,
            flags,
            aux,
        };
        deliver(&mut self.sink, &mut self.ready, &mut self.pool, key, event);
    }

    /// Events produced by this `poll` so far: in the caller's array and queued.
    fn produced(&self) -> usize {
        self.sink.len + self.ready.len()
    }

    /// Ends an op with a final event `result`.
    fn fail(&mut self, key: u64, result: i32) {
        let Some(op) = self.ops.get(key) else { return };
        let (token, armed) = (op.token, op.armed);
        self.emit(0, token, result, 0, 0);
        if armed {
            self.end(key);
        } else if let Some(op) = self.ops.remove(key) {
            self.forget(key, op);
        }
    }

    /// Ends an op that produced its final event: forgotten now, or once the kernel lets go.
    fn end(&mut self, key: u64) {
        let Some(op) = self.ops.get_mut(key) else {
            return;
        };
        if op.armed {
            // A multishot that reported its end while still armed (cannot normally happen):
            // cancel it and swallow whatever still arrives.
            if op.counted() && !op.cancelled {
                self.live -= 1;
            }
            op.cancelled = true;
            let cancel = opcode::AsyncCancel::new(key).build().user_data(CANCEL_TAG);
            let _ = self.push(&cancel);
        } else {
            self.discard(key);
        }
    }

    fn complete(&mut self, key: u64, res: i32, cqe_flags: u32) {
        if key >> 32 == 0 {
            return; // a tag, not an op (see CANCEL_TAG)
        }
        let buffer = cqueue::buffer_select(cqe_flags);
        if buffer.is_some() {
            self.in_ring -= 1;
        }
        let more = cqueue::more(cqe_flags);
        let Some(op) = self.ops.get_mut(key) else {
            // An op stays in the table while armed, so this cannot happen; still, never lose a
            // buffer: it goes back to the ring at the next poll.
            if let Some(bid) = buffer {
                self.pool.lend(bid);
            }
            return;
        };
        if !more && op.armed {
            op.armed = false;
            self.armed -= 1;
        }
        let token = op.token;
        if op.cancelled {
            // The one final event a cancelled send still owes the caller.
            let send_result = match op.kind {
                Kind::Send { sent, .. } => {
                    let total = sent + res.max(0) as usize;
                    Some(if total > 0 {
                        total.min(i32::MAX as usize) as i32
                    } else if res < 0 {
                        res
                    } else {
                        -libc::ECANCELED
                    })
                }
                // Sent whole or not at all: the kernel's answer (-ECANCELED if the cancel won,
                // or instead of the EAGAIN that would have been retried).
                Kind::SendTo { .. } if res == -libc::EAGAIN || res == -libc::EINTR => {
                    Some(-libc::ECANCELED)
                }
                Kind::SendTo { .. } => Some(res),
                _ => None,
            };
            let accepted_fd = matches!(op.kind, Kind::Accept) && res >= 0;
            let received = matches!(op.kind, Kind::Recv | Kind::RecvOnce { .. }) && res > 0;
            let (fd, still_armed, identity) = (op.fd, op.armed, op.identity);
            if let Some(bid) = buffer {
                if received {
                    // Bytes that raced with the cancel: already out of the socket, so they go
                    // to the next recv on it (see `FdEntry`), in order.
                    self.keep_received(fd, identity, bid, res);
                } else {
                    self.pool.lend(bid);
                }
            }
            if accepted_fd {
                // SAFETY: a connection accepted after the caller cancelled; nobody else knows
                // this fd, so the reactor owns it and closes it.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            if let Some(result) = send_result {
                self.emit(0, token, result, 0, 0);
            }
            if !still_armed {
                self.discard(key);
            }
            return;
        }
        let next = match &mut op.kind {
            Kind::Watch { interest } => Next::Watch(*interest),
            Kind::Recv => Next::Recv { datagram: false },
            Kind::RecvOnce { .. } => Next::RecvOnce,
            Kind::RecvMsg { .. } => Next::Recv { datagram: true },
            Kind::Accept => Next::Accept,
            Kind::Send { len, sent, .. } => {
                if res > 0 {
                    *sent += res as usize;
                }
                Next::Send {
                    len: *len,
                    sent: *sent,
                }
            }
            Kind::SendTo { .. } => Next::SendTo,
            Kind::Connect { .. } | Kind::Close => Next::Final,
            Kind::Signal { signalfd } => {
                if res >= 0 {
                    // The poll only said "readable": read every queued siginfo now, on this
                    // thread (signalfd reads the reading thread's pending signals).
                    while let Ok(Some(info)) = signalfd.read_signal() {
                        let event = Event {
                            token,
                            result: info.ssi_signo as i32,
                            flags: flags::MORE,
                            aux: 0,
                        };
                        deliver(&mut self.sink, &mut self.ready, &mut self.pool, key, event);
                    }
                }
                Next::Signal
            }
            Kind::Wake => Next::Wake,
        };
        match next {
            Next::Watch(interest) => {
                if res < 0 {
                    self.fail(key, res);
                } else {
                    let bits = ready_bits(res as u32, interest);
                    if bits != 0 {
                        self.emit(key, token, bits as i32, flags::MORE, 0);
                    }
                    self.rearm.push(key);
                }
            }
            Next::Recv { datagram } => {
                if res > 0 {
                    let Some(bid) = buffer else {
                        self.fail(key, -libc::EIO);
                        return;
                    };
                    let (len, flags) = if datagram {
                        let room = self.pool.size() - crate::datagram::PAYLOAD;
                        // SAFETY: the kernel wrote the header at the start of buffer `bid`,
                        // which is out of the ring now and not lent yet.
                        let held = unsafe { datagram_held(self.pool.buffer_ptr(bid), room) };
                        (held, flags::MORE | flags::BUFFER | flags::DATAGRAM)
                    } else {
                        (res as usize, flags::MORE | flags::BUFFER)
                    };
                    self.depth.received(len);
                    self.emit(key, token, len as i32, flags, u64::from(bid));
                    if !more {
                        // Ended early (e.g. CQ overflow, pool just ran dry) without an error:
                        // transparently re-armed as soon as the ring has buffers.
                        self.starved.push(key);
                    }
                } else if res == -libc::ENOBUFS {
                    // Pool dry: hold the recv back until buffers are back in the ring. The
                    // bytes stay in the socket.
                    if !more {
                        self.starved.push(key);
                    }
                } else if res == -libc::ENOTSOCK
                    && !datagram
                    && self.read_multishot
                    && self.pipe_recv(key)
                {
                    // A pipe: read it instead, armed now so that this poll's wait covers it.
                    if let Err(err) = self.arm(key) {
                        self.fail(key, errno_of(&err));
                    }
                } else {
                    if let Some(bid) = buffer {
                        self.pool.lend(bid);
                    }
                    self.fail(key, res);
                }
            }
            Next::RecvOnce => {
                if res > 0 {
                    let Some(bid) = buffer else {
                        self.fail(key, -libc::EIO);
                        return;
                    };
                    // Its one event; the op is over (a one-shot has no further completion).
                    self.depth.received(res as usize);
                    self.emit(0, token, res, flags::BUFFER, u64::from(bid));
                    self.discard(key);
                } else if res == -libc::ENOBUFS {
                    // Pool dry: wait for buffers, the bytes stay in the socket (as a multishot).
                    self.starved.push(key);
                } else if res == -libc::EAGAIN || res == -libc::EINTR {
                    self.rearm.push(key);
                } else {
                    if let Some(bid) = buffer {
                        self.pool.lend(bid);
                    }
                    // 0 (end of stream) or -errno.
                    self.fail(key, res);
                }
            }
            Next::Accept => {
                if res >= 0 || accept_error_is_transient(-res) {
                    self.emit(key, token, res, flags::MORE, 0);
                    if !more {
                        // Out of fds (or memory): re-arming now would fail again at once, so
                        // the accept sleeps for the back-off delay (unless that is zero).
                        let resource = res < 0 && accept_error_is_resource(-res);
                        if !(resource && self.backoff.pause(key)) {
                            self.rearm.push(key);
                        }
                    }
                } else if res == -libc::EAGAIN || res == -libc::EINTR {
                    if !more {
                        self.rearm.push(key);
                    }
                } else {
                    self.fail(key, res);
                }
            }
            Next::Send { len, sent } => {
                let retry = (res > 0 && sent < len) || res == -libc::EAGAIN || res == -libc::EINTR;
                if retry {
                    // Short send: finish it before anything else goes out on this fd.
                    if let Err(err) = self.arm(key) {
                        self.fail(key, errno_of(&err));
                    }
                } else if res < 0 {
                    self.fail(key, res);
                } else {
                    self.fail(key, sent.min(i32::MAX as usize) as i32);
                }
            }
            Next::SendTo => {
                if res != -libc::EAGAIN && res != -libc::EINTR {
                    self.fail(key, res);
                } else if !(res == -libc::EAGAIN && self.send_backoff.pause(key)) {
                    // (EAGAIN comes only once the kernel's own wait for writability gave up,
                    // see SEND_RETRY_DELAY: that one waits for resume_paused to arm it again.)
                    if let Err(err) = self.arm(key) {
                        self.fail(key, errno_of(&err));
                    }
                }
            }
            Next::Final => self.fail(key, res),
            Next::Signal => {
                if res < 0 {
                    self.fail(key, res);
                } else {
                    self.rearm.push(key);
                }
            }
            Next::Wake => {
                if res >= 0 {
                    // The counter is consumed: only now may the flag drop (see wake.rs).
                    self.wake.clear();
                    let wake_token = self.wake_token;
                    self.emit(key, wake_token, 0, 0, 0);
                }
                self.rearm.push(key);
            }
        }
    }

    /// The body of `poll`, once the caller's array is the sink: recycles, submits, waits, reaps.
    fn poll_events(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.serve_stash_waiters();
        self.resume_paused();
        self.rearm_fired();
        let room = self.sink.cap;
        self.reap(room);
        // Only a finite, non-zero timeout needs a deadline to keep waiting against.
        let deadline = match timeout {
            Some(d) if !d.is_zero() => Instant::now().checked_add(d),
            _ => None,
        };
        let mut wait = if self.produced() == 0 && room > 0 {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        loop {
            // A recv that ran dry during this poll may go again if buffers came back meanwhile
            // (completions it left queued were delivered and recycled by an earlier poll).
            self.rearm_starved();
            // A paused accept's delay ends the wait early (like a timer), never later.
            let uninterrupted = self.enter(self.send_backoff.cap(self.backoff.cap(wait)))?;
            self.reap(room);
            // One whose delay is over goes again, submitted by the next enter.
            self.resume_paused();
            if !uninterrupted || self.produced() > 0 || wait == Some(Duration::ZERO) {
                break;
            }
            // Only completions without news arrived (cancel acknowledgements, a watch whose
            // readiness did not match): keep waiting for the rest of the timeout.
            if let Some(deadline) = deadline {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                wait = Some(deadline - now);
            } else if timeout.is_some() {
                break;
            }
        }
        Ok(())
    }

    /// Handles completions until `room` events are ready or none are left.
    fn reap(&mut self, room: usize) {
        // The idle case (nothing held back, nothing in the CQ) is every zero-timeout poll of a
        // quiet loop: return before touching the batch.
        if self.backlog.is_empty()
            && self.ring.completion().is_empty()
            && !self.ring.submission().cq_overflow()
        {
            return;
        }
        let mut batch = [(0u64, 0i32, 0u32); REAP_BATCH];
        while self.produced() < room {
            let want = (room - self.produced()).min(REAP_BATCH);
            let mut got = 0;
            while got < want {
                let Some(cqe) = self.backlog.pop_front() else {
                    break;
                };
                batch[got] = cqe;
                got += 1;
            }
            if got < want {
                let mut cq = self.ring.completion();
                while got < want {
                    let Some(cqe) = cq.next() else { break };
                    batch[got] = (cqe.user_data(), cqe.result(), cqe.flags());
                    got += 1;
                }
            }
            if got == 0 {
                // Completions the kernel had to hold back on overflow come back with GETEVENTS.
                let overflow = { self.ring.submission().cq_overflow() };
                if overflow
                    && self.ring.submitter().submit_and_wait(0).is_ok()
                    && !self.ring.completion().is_empty()
                {
                    continue;
                }
                break;
            }
            for &(key, res, cqe_flags) in &batch[..got] {
                self.complete(key, res, cqe_flags);
            }
        }
    }

    /// Submits and waits for at least one completion, at most `timeout`. `EINTR` ends the wait.
    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        self.enable()?;
        let result = match timeout {
            Some(d) if d.is_zero() => {
                let needs_enter = {
                    let sq = self.ring.submission();
                    !sq.is_empty() || sq.cq_overflow() || sq.taskrun()
                };
                if !needs_enter {
                    return Ok(true);
                }
                // On a DEFER_TASKRUN ring this also runs the completion work of what it submits:
                // a cancel queued by another thread lets go of its file at this poll.
                return self.submit_now().map(|()| true);
            }
            Some(d) => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submitter().submit_and_wait(1),
        };
        match result {
            Ok(_) => Ok(true),
            Err(err) => match err.raw_os_error() {
                Some(libc::ETIME) => Ok(true),
                Some(libc::EINTR) => Ok(false),
                Some(libc::EBUSY) | Some(libc::EAGAIN) => {
                    self.spill_cq();
                    Ok(true)
                }
                _ => Err(err),
            },
        }
    }

    fn recycle_buffers(&mut self) {
        for bid in self.pool.take_lent() {
            if self.fds.unpin(bid) {
                // Still stashed behind the chunk the caller just had (see `FdTable`).
                continue;
            }
            self.spare.push(bid);
        }
        let limit = self.depth.limit();
        let (base, size) = (self.pool.base(), self.pool.size());
        let mut any = false;
        while self.in_ring < limit {
            let Some(bid) = self.spare.pop() else { break };
            // `bid < count`: ids only come from the kernel's buffer selection.
            self.buf_ring
                .push(bid, base.wrapping_add(bid as usize * size), size);
            self.in_ring += 1;
            any = true;
        }
        if any {
            self.buf_ring.publish();
        }
    }

    fn rearm_fired(&mut self) {
        let mut keys = std::mem::take(&mut self.rearm);
        for &key in &keys {
            if let Err(err) = self.arm(key) {
                // Reported as the op's final event; the poll itself goes on.
                self.fail(key, errno_of(&err));
            }
        }
        keys.clear();
        self.rearm = keys;
        self.rearm_starved();
    }

    /// Re-arms accepts and datagram sends whose back-off delay is over (their SQEs go in with
    /// the next enter).
    fn resume_paused(&mut self) {
        if self.backoff.is_empty() && self.send_backoff.is_empty() {
            return; // every poll of a loop with no paused op
        }
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        self.backoff.take_due(&mut keys);
        self.send_backoff.take_due(&mut keys);
        for &key in &keys {
            if let Err(err) = self.arm(key) {
                self.fail(key, errno_of(&err));
            }
        }
        keys.clear();
        self.scratch = keys;
    }

    /// Re-arms recvs that ran the pool dry, once the ring holds buffers again (bytes stashed for
    /// their fd meanwhile go first).
    fn rearm_starved(&mut self) {
        if self.in_ring == 0 || self.starved.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.starved);
        for &key in &keys {
            if let Err(err) = self.serve_or_arm(key) {
                self.fail(key, errno_of(&err));
            }
        }
        keys.clear();
        self.starved = keys;
    }

    /// Cancels one op without submitting: callers batch several and then [`Uring::flush`].
    fn cancel_op(&mut self, key: u64) -> bool {
        let Some(op) = self.ops.get_mut(key) else {
            return false;
        };
        if op.cancelled || matches!(op.kind, Kind::Wake) {
            return false;
        }
        op.cancelled = true;
        let armed = op.armed;
        let is_once = matches!(op.kind, Kind::RecvOnce { .. });
        if armed && (is_once || matches!(op.kind, Kind::Recv)) {
            op.identity = file_identity(op.fd);
        }
        let (fd, is_recv, is_accept) = (
            op.fd,
            matches!(op.kind, Kind::Recv),
            matches!(op.kind, Kind::Accept),
        );
        let queued_send = matches!(op.kind, Kind::Send { .. } | Kind::SendTo { .. }) && !armed;
        let token = op.token;
        self.live -= 1;
        self.purge_ready(key, fd, is_recv, is_accept);
        if is_once {
            // Its one event, due now: bytes the kernel still hands over for it go to the stash.
            self.emit(0, token, -libc::ECANCELED, 0, 0);
        }
        if armed {
            let cancel = opcode::AsyncCancel::new(key).build().user_data(CANCEL_TAG);
            // If even this cannot be queued the ring is broken; the op's completion (whenever it
            // comes) is swallowed because the op is marked cancelled.
            let _ = self.push(&cancel);
        } else {
            if queued_send {
                // Never reached the kernel: its one final event is due now.
                self.emit(0, token, -libc::ECANCELED, 0, 0);
            }
            self.discard(key);
        }
        true
    }

    /// Submits queued SQEs now, so that cancels and closes take effect in the kernel before the
    /// call that queued them returns (a cancelled poll or recv holds a reference to its file
    /// until then; a caller closing the socket expects it really closed).
    ///
    /// On a single-issuer ring only the issuer may enter: from any other thread (or before the
    /// first `poll`) the entries stay queued and the issuer's next `poll` submits them.
    fn flush(&mut self) {
        if self.fork_generation == fork_generation()
            && !self.ring.submission().is_empty()
            && !self.enter_is_deferred()
        {
            // A failure here leaves the entries queued for the next poll, which reports it.
            let _ = self.submit_now();
        }
    }

    /// Drops queued events of a cancelled op, giving back what they held.
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
                    self.pool.lend(bid);
                }
            } else if is_accept && event.result >= 0 {
                // SAFETY: an accepted fd the caller never saw; the reactor owns it.
                drop(unsafe { OwnedFd::from_raw_fd(event.result) });
            }
        }
    }

    /// Hands bytes a cancelled recv received to the live multishot recv on the same fd, if the
    /// caller already started a new one (its events follow these in the CQ) and nothing is
    /// stashed before them, or stashes them. A one-shot recv the kernel is still working on
    /// would read bytes that come after these: it completes from the stash instead.
    fn keep_received(&mut self, fd: RawFd, identity: Option<(u64, u64)>, bid: u16, len: i32) {
        if identity.is_none() || file_identity(fd) != identity {
            // The caller closed the socket: nobody can read these bytes any more.
            self.pool.lend(bid);
            return;
        }
        let live_recv = if self.fds.has_stash(fd) {
            None
        } else {
            self.live_recv_on(fd, |kind| matches!(kind, Kind::Recv))
        };
        if let Some(key) = live_recv {
            let token = self.ops.get(key).map_or(0, |op| op.token);
            self.emit(key, token, len, flags::MORE | flags::BUFFER, u64::from(bid));
            return;
        }
        if !self.fds.stash(fd, bid, len) {
            self.pool.lend(bid);
            return;
        }
        if let Some(key) = self.live_recv_on(fd, |kind| matches!(kind, Kind::RecvOnce { .. })) {
            self.retarget(key, identity);
        }
    }

    /// A live (not cancelled) recv on `fd` whose kind matches.
    fn live_recv_on(&self, fd: RawFd, kind: impl Fn(&Kind) -> bool) -> Option<u64> {
        let entry = self.fds.get(fd)?;
        entry.ops.iter().copied().find(|&k| {
            self.ops
                .get(k)
                .is_some_and(|op| kind(&op.kind) && !op.cancelled)
        })
    }

    /// Completes the armed one-shot recv `key` from its fd's stash and retires its kernel
    /// request: whatever that still receives is stashed after the bytes delivered now.
    fn retarget(&mut self, key: u64, identity: Option<(u64, u64)>) {
        let Some(op) = self.ops.get(key) else { return };
        let Kind::RecvOnce { max } = op.kind else {
            return;
        };
        if !op.armed {
            return; // waiting for buffers or for the stash: it reads the stash first anyway
        }
        let (fd, token) = (op.fd, op.token);
        if let Unstashed::Chunk { bid, len } = self.fds.next_stashed(fd, max as usize, &self.pool) {
            self.emit(0, token, len, flags::BUFFER, u64::from(bid));
            if let Some(op) = self.ops.get_mut(key) {
                op.cancelled = true;
                op.identity = identity;
                self.live -= 1;
            }
            let cancel = opcode::AsyncCancel::new(key).build().user_data(CANCEL_TAG);
            // If it cannot be queued, the request's completion still goes to the stash.
            let _ = self.push(&cancel);
        }
    }

    /// Recycles `fd`'s stash (closing, or no longer the socket the bytes came from).
    fn release_stash(&mut self, fd: RawFd) {
        let pool = &mut self.pool;
        self.fds.release_stash(fd, |bid| pool.lend(bid));
    }

    /// Starts recv `key` (not armed yet): delivers its fd's stash first — all of it for a
    /// multishot, one chunk (which completes it) for a one-shot — then arms it. When the stash
    /// cannot go out before the next `poll` (`Unstashed::Busy`) the recv waits unarmed, so no
    /// newer byte can overtake the stashed ones.
    fn serve_or_arm(&mut self, key: u64) -> io::Result<()> {
        let Some(op) = self.ops.get(key) else {
            return Ok(());
        };
        if op.armed || op.cancelled {
            return Ok(());
        }
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
                    self.stash_waiters.push(key);
                    return Ok(());
                }
                Unstashed::Chunk { bid, len } if once.is_some() => {
                    self.emit(0, token, len, flags::BUFFER, u64::from(bid));
                    self.discard(key);
                    return Ok(());
                }
                Unstashed::Chunk { bid, len } => {
                    self.emit(key, token, len, flags::MORE | flags::BUFFER, u64::from(bid))
                }
            }
        }
        if !self.starved.is_empty() {
            // Receives that found the ring empty are waiting for buffers: this one waits behind
            // them. Armed at once, it would go to the kernel ahead of them and take the
            // buffers they wait for; with a bounded ring (see `RingDepth`), a busy socket's
            // one-shot receives could then starve another socket's for a second and more.
            self.starved.push(key);
            return Ok(());
        }
        self.arm(key)
    }

    /// Serves the recvs that waited for a stash (see [`Uring::serve_or_arm`]).
    fn serve_stash_waiters(&mut self) {
        if self.stash_waiters.is_empty() {
            return;
        }
        let mut keys = std::mem::take(&mut self.stash_waiters);
        for &key in &keys {
            if self
                .ops
                .get(key)
                .is_some_and(|op| !op.cancelled && !op.armed)
            {
                if let Err(err) = self.serve_or_arm(key) {
                    self.fail(key, errno_of(&err));
                }
            }
        }
        keys.clear();
        let again = std::mem::replace(&mut self.stash_waiters, keys);
        self.stash_waiters.extend(again);
    }

    /// Marks multishot recv `key` as reading a pipe when its fd is one and it was not already;
    /// `true` when it now is (a second `ENOTSOCK` for a pipe is an error, not a retry).
    fn pipe_recv(&mut self, key: u64) -> bool {
        match self.ops.get_mut(key) {
            Some(op) if !op.pipe && is_fifo(op.fd) => {
                op.pipe = true;
                true
            }
            _ => false,
        }
    }

    /// Adds a recv and starts it (see [`Uring::serve_or_arm`]).
    fn start_recv(&mut self, fd: RawFd, token: u64, kind: Kind) -> io::Result<u64> {
        let key = self.insert(fd, token, kind)?;
        if let Err(err) = self.serve_or_arm(key) {
            self.discard(key);
            return Err(err);
        }
        Ok(key)
    }
}

impl Backend for Uring {
    fn kind(&self) -> BackendKind {
        BackendKind::IoUring
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
        // The lend of the previous poll's buffers ends first, then events still queued go out
        // ahead of new ones.
        self.recycle_buffers();
        let mut n = 0;
        while n < events.len() {
            let Some((_, event)) = self.ready.pop_front() else {
                break;
            };
            if event.flags & flags::BUFFER != 0 {
                self.pool.lend(event.aux as u16);
            }
            events[n] = event;
            n += 1;
        }
        // New events go straight into the rest of `events` (see `Sink`), until this returns.
        self.sink = Sink {
            ptr: events.as_mut_ptr(),
            cap: events.len(),
            len: n,
        };
        let polling = Polling(self);
        polling.0.poll_events(timeout)?;
        Ok(polling.0.sink.len)
    }

    fn watch(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<u64> {
        // Same answer as epoll for files readiness means nothing for.
        if is_always_ready_file(fd) {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.start(fd, token, Kind::Watch { interest })
    }

    fn recv_multi(&mut self, fd: RawFd, token: u64) -> io::Result<u64> {
        // Bytes an earlier, cancelled recv on this socket took out of it come first.
        self.start_recv(fd, token, Kind::Recv)
    }

    fn recvmsg_multi(&mut self, fd: RawFd, token: u64) -> io::Result<u64> {
        // SAFETY: an all-zero msghdr is valid; only the address room matters to a multishot
        // recvmsg (no iovec: the payload goes to the selected buffer), and no control data.
        let mut msghdr: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        msghdr.msg_namelen = crate::datagram::NAME_MAX as libc::socklen_t;
        self.start(fd, token, Kind::RecvMsg { msghdr })
    }

    fn recv_once(&mut self, fd: RawFd, max_len: u32, token: u64) -> io::Result<u64> {
        let max = super::recv_once_cap(max_len, self.pool.size());
        self.start_recv(fd, token, Kind::RecvOnce { max })
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
        // Only the head of the fd's send FIFO is in flight (see the module doc): a send with
        // nothing queued ahead goes out now, armed as it is added.
        let entry = self.fds.entry(fd);
        let head = entry.send_idle();
        let key = self.ops.insert(Op {
            token,
            fd,
            kind: Kind::Send { buf, len, sent: 0 },
            armed: head,
            cancelled: false,
            identity: None,
            pipe: false,
        });
        entry.push_send(key);
        if head {
            if let Err(err) = self.push(&send_entry(fd, buf, len, 0).user_data(key)) {
                self.ops.remove(key);
                self.fds.remove_send(fd, key);
                return Err(err);
            }
            self.armed += 1;
        }
        self.live += 1;
        Ok(key)
    }

    unsafe fn send_to(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        to: Option<&SockaddrStorage>,
        token: u64,
    ) -> io::Result<u64> {
        let to = to.map(|addr| self.addr_buf(addr));
        self.start(fd, token, Kind::SendTo { buf, len, to })
    }

    fn accept_multi(&mut self, fd: RawFd, token: u64) -> io::Result<u64> {
        self.start(fd, token, Kind::Accept)
    }

    fn connect(&mut self, fd: RawFd, addr: &SockaddrStorage, token: u64) -> io::Result<u64> {
        let addr = self.addr_buf(addr);
        self.start(fd, token, Kind::Connect { addr })
    }

    fn close(&mut self, fd: OwnedFd, token: u64) -> io::Result<u64> {
        let raw = fd.as_raw_fd();
        let mut keys = std::mem::take(&mut self.scratch);
        self.fds.ops_on(raw, &mut keys, true);
        for &key in &keys {
            self.cancel_op(key);
        }
        keys.clear();
        self.scratch = keys;
        self.release_stash(raw);
        if self.enter_is_deferred() {
            // Not the issuer's thread: a close request would wait for the issuer's next poll,
            // which never comes if the loop is being closed from here. Close now, as epoll does;
            // requests still holding the file let go when their cancels reach the kernel.
            let key = self.insert(raw, token, Kind::Close)?;
            self.discard(key);
            let result = close_now(fd);
            self.emit(0, token, result, 0, 0);
            return Ok(key);
        }
        // The kernel closes the fd from here on; a request still holding the file keeps only the
        // file, not the fd number.
        let raw = fd.into_raw_fd();
        let key = self.start(raw, token, Kind::Close).inspect_err(|_| {
            // SAFETY: the close request never reached the kernel, so the fd is still ours.
            drop(unsafe { OwnedFd::from_raw_fd(raw) });
        })?;
        self.flush();
        Ok(key)
    }

    fn signal(&mut self, signalfd: SignalFd, token: u64) -> io::Result<u64> {
        let fd = signalfd.as_raw_fd();
        self.start(fd, token, Kind::Signal { signalfd })
    }

    fn cancel(&mut self, key: u64) -> bool {
        let found = self.cancel_op(key);
        if found {
            self.flush();
        }
        found
    }

    fn cancel_token(&mut self, token: u64) -> usize {
        let mut keys = std::mem::take(&mut self.scratch);
        keys.clear();
        self.ops.keys_where(&mut keys, |op| {
            op.token == token && !op.cancelled && op.counted()
        });
        let mut count = 0;
        for &key in &keys {
            count += usize::from(self.cancel_op(key));
        }
        keys.clear();
        self.scratch = keys;
        if count > 0 {
            self.flush();
        }
        count
    }

    fn pending(&self) -> usize {
        self.live
    }

    fn set_accept_retry_delay(&mut self, delay: Duration) {
        self.backoff.set_delay(delay);
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let same_process = self.fork_generation == fork_generation();
        // Another thread than a single-issuer ring's issuer cannot enter it to cancel and wait.
        // A ring that no enter ever reached holds nothing in the kernel. One whose issuer thread
        // has exited holds nothing that can still touch this memory: the kernel ran that
        // thread's cancellation when it exited, and with DEFER_TASKRUN a request's completion
        // work (the copy into a buffer) runs only in its issuer's enter, so whatever fires later
        // is cancelled. While the issuer lives, the memory is kept until it has exited
        // (DEFERRED_FREES).
        let foreign = self.enter_is_deferred();
        if same_process && foreign {
            // No cancel can be submitted from here (a full SQ would even enable a ring never
            // entered): every op is marked cancelled, so the completions the CQ already holds
            // only clean up (accepted fds are closed).
            for op in self.ops.values_mut() {
                op.cancelled = true;
            }
            self.reap(usize::MAX);
            self.ready.clear();
        } else if same_process {
            // Cancel everything the kernel holds (this also closes accepted fds the caller never
            // received), then wait until the kernel has let go of op storage, the buffer pool and
            // caller send buffers.
            let mut keys = std::mem::take(&mut self.scratch);
            keys.clear();
            self.ops.keys_where(&mut keys, |_| true);
            for &key in &keys {
                if !self.cancel_op(key) {
                    // The internal wake read.
                    if let Some(op) = self.ops.get_mut(key) {
                        op.cancelled = true;
                        if op.armed {
                            let cancel =
                                opcode::AsyncCancel::new(key).build().user_data(CANCEL_TAG);
                            let _ = self.push(&cancel);
                        }
                    }
                }
            }
            let give_up = Instant::now() + Duration::from_secs(5);
            while self.armed > 0 && Instant::now() < give_up {
                if self.enter(Some(Duration::from_millis(10))).is_err() {
                    break;
                }
                self.reap(usize::MAX);
                self.ready.clear();
            }
        }
        // A foreign drop with requests still armed whose issuer lives: the memory waits for it.
        let live_issuer = match self.issuer {
            Some(tid) if same_process && foreign && self.armed > 0 && thread_exists(tid) => {
                Some(tid)
            }
            _ => None,
        };
        let drained = !same_process || self.armed == 0 || foreign && live_issuer.is_none();
        // SAFETY: each field is dropped exactly once, here, and never used afterwards. The ring
        // goes first so the kernel stops using the buffer memory before it is unmapped; if the
        // kernel still held requests (it did not let go within 5 s), the memory they may touch is
        // leaked instead of freed.
        unsafe {
            ManuallyDrop::drop(&mut self.ring);
            if drained {
                ManuallyDrop::drop(&mut self.buf_ring);
                ManuallyDrop::drop(&mut self.pool);
            } else if let Some(tid) = live_issuer {
                let memory = (
                    tid,
                    ManuallyDrop::take(&mut self.buf_ring),
                    ManuallyDrop::take(&mut self.pool),
                    std::mem::replace(&mut self.wake_counter, Box::new(0)),
                );
                DEFERRED_FREES
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(memory);
            }
        }
        free_deferred_buffers();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_depth_follows_the_size_of_receives() {
        let mut depth = RingDepth::new(64);
        assert_eq!(
            depth.limit(),
            64,
            "nothing received yet: offer every buffer"
        );

        // Small receives: the whole pool, as before.
        for _ in 0..64 {
            depth.received(1024);
        }
        assert_eq!(depth.limit(), 64);

        // Receives of 100 KB: about RING_BYTES worth of buffers, never fewer than the minimum.
        for _ in 0..64 {
            depth.received(100_000);
        }
        assert_eq!(depth.limit(), (RING_BYTES / 100_000).max(MIN_RING_DEPTH));
        for _ in 0..64 {
            depth.received(1 << 20);
        }
        assert_eq!(depth.limit(), MIN_RING_DEPTH);

        // Back to small receives: back to the whole pool.
        for _ in 0..64 {
            depth.received(100);
        }
        assert_eq!(depth.limit(), 64);

        // A pool smaller than the minimum is offered whole.
        let mut small = RingDepth::new(4);
        small.received(1 << 20);
        assert_eq!(small.limit(), 4);
    }
}
