//! Fuzzes the C ABI: each input decodes into a sequence of `rl_*` calls, made through the ffi
//! crate's `extern "C"` functions exactly as a C program would make them — loops created and freed
//! on both backends, readers and writers on real and bogus fds, timers set and cancelled (twice),
//! futures completed, cancelled and released (twice), socket operations on closed fds, `rl_run`
//! and `rl_poll`, and stale, null and forged handles.
//!
//! What must hold, for every input: no crash, no sanitizer report, no leaked allocation
//! (LeakSanitizer) and no leaked fd (every fd the iteration opened is closed by its end: counted
//! in /proc/self/fd, a leak aborts the run). The harness only ever makes calls the header allows
//! (it never closes an fd it gave away, never frees a send buffer early, never blocks forever);
//! everything else — bad handles, bad fds, bad arguments, calls in any order — is the library's
//! to reject cleanly.

#![no_main]

use std::ffi::{c_int, c_void, CStr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use ffi::*;
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

/// Most calls one input makes: keeps one execution short.
const MAX_CALLS: usize = 256;
/// Most loops alive at once.
const MAX_LOOPS: usize = 4;
/// Most fds the harness holds at once.
const MAX_FDS: usize = 48;

/// Send data: static, so it outlives every send however the loop finishes it.
static SEND_DATA: [u8; 1 << 16] = [0x5a; 1 << 16];

/// Which loop handle a call gets.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum LoopRef {
    Live(u8),
    /// A handle that was freed earlier in this input.
    Stale(u8),
    Null,
    /// A value no registry ever handed out (or did, long ago).
    Forged(u64),
}

/// Which fd a call gets.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum FdRef {
    /// One the harness holds open.
    Open(u8),
    /// A number the harness closed earlier (possibly reused since, by the harness or a loop).
    Closed(u8),
    /// Never valid: negative or above any fd limit.
    Invalid(u8),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum FutureRef {
    Live(u8),
    Released(u8),
    Null,
    Forged(u64),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OptionsSpec {
    Null,
    Defaults,
    Custom {
        size: SizeSpec,
        backend: u8,
        buffer_size: u8,
        buffer_count: u8,
        ring_entries: u8,
        flags: u8,
        tail_nonzero: bool,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum SizeSpec {
    Exact,
    Short(u8),
    Long(u8),
    Zero,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    Listener,
    ClosedPort,
    Garbage { len: u8, family: u16 },
    Null,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Call {
    LoopNew(OptionsSpec),
    LoopNewNullOut(OptionsSpec),
    LoopFree(LoopRef),
    LoopInfo(LoopRef),
    Socketpair,
    /// A pair of connected Unix datagram sockets.
    DatagramPair,
    Pipe,
    Listen,
    CloseFd(u8),
    WriteFd(u8, u16),
    AddReader(LoopRef, FdRef, bool),
    RemoveReader(LoopRef, FdRef),
    AddWriter(LoopRef, FdRef, bool),
    RemoveWriter(LoopRef, FdRef),
    Watch(LoopRef, FdRef, u8, bool),
    Recv(LoopRef, FdRef, bool),
    /// A callback-mode receive whose callback keeps (and sometimes releases) what it gets.
    RecvKeep(LoopRef, FdRef),
    /// A datagram receive, raw or callback mode (on any fd: stream sockets and pipes are
    /// refused).
    RecvMsg(LoopRef, FdRef, bool),
    Send(LoopRef, FdRef, u16, bool, bool),
    /// A datagram send, raw or callback mode, to an address or (None) the connected peer, on
    /// any fd (streams and pipes included).
    SendTo(LoopRef, FdRef, u16, bool, Option<Target>),
    Accept(LoopRef, FdRef, bool),
    Connect(LoopRef, Target, bool),
    LoopClose(LoopRef, u8, bool),
    LoopCloseInvalid(LoopRef, FdRef, bool),
    Cancel(LoopRef, u8, bool),
    CancelForged(LoopRef, u64, bool),
    CancelToken(LoopRef, u8),
    CallSoon(LoopRef, bool),
    CallSoonThreadsafe(LoopRef),
    CallLater(LoopRef, u16, bool),
    CallAt(LoopRef, u64),
    RawTimer(LoopRef, u16, bool),
    TimerCancel(LoopRef, u8),
    TimerCancelForged(LoopRef, u64),
    FutureNew(LoopRef, bool),
    FutureSetResult(FutureRef, u64),
    FutureSetError(FutureRef, i32),
    FutureCancel(FutureRef),
    FutureState(FutureRef),
    FutureResult(FutureRef, bool),
    FutureAddDone(FutureRef, bool),
    FutureRelease(FutureRef),
    RunInThread(LoopRef, bool),
    SetPoolSize(LoopRef, u16),
    Signal(LoopRef, u8, bool, bool),
    Run(LoopRef, u8),
    Poll(LoopRef, u8, bool),
    Wake(LoopRef),
    Stop(LoopRef),
    Buffers(LoopRef, u8),
    /// Keeps a buffer: one the last poll returned (`true`) or any id.
    BufferKeep(LoopRef, u16, bool),
    /// Releases a buffer: one the last poll returned (`true`) or any id.
    BufferRelease(LoopRef, u16, bool),
    Strerror(i32),
}

/// Token kinds (bits 56..63, below the reserved bit): raw accept events carry new fds that the
/// harness must close.
const TOKEN_ACCEPT: u64 = 1 << 56;
const TOKEN_OTHER: u64 = 2 << 56;

/// A callback that does nothing (the loop must cope with any registration order).
unsafe extern "C" fn on_anything(
    _lp: *mut rl_loop,
    _outcome: *const rl_outcome,
    _data: *mut c_void,
) {
}

/// Accept callback: the callback owns each new fd and closes it, as the header requires.
unsafe extern "C" fn on_accept(_lp: *mut rl_loop, outcome: *const rl_outcome, _data: *mut c_void) {
    // SAFETY: the loop passes a valid outcome for the duration of the call.
    let result = unsafe { (*outcome).result };
    if result >= 0 {
        // SAFETY: a successful accept outcome hands the new fd to the callback.
        drop(unsafe { OwnedFd::from_raw_fd(result) });
    }
}

/// Receive callback that keeps the received bytes' buffer with `rl_recv_keep`, and releases every
/// other one at once (the rest stay kept until the loop is freed, which frees them).
unsafe extern "C" fn on_recv_keep(
    lp: *mut rl_loop,
    outcome: *const rl_outcome,
    _data: *mut c_void,
) {
    // SAFETY: NULL is refused, not read.
    assert_eq!(unsafe { rl_recv_keep(lp, std::ptr::null()) }, -libc::EINVAL);
    // SAFETY: the loop passes a valid outcome for the duration of the call.
    let nbytes = unsafe { (*outcome).nbytes };
    // SAFETY: as above.
    let id = unsafe { rl_recv_keep(lp, outcome) };
    if nbytes == 0 {
        assert_eq!(id, -libc::EINVAL, "nothing received, nothing to keep");
        return;
    }
    // -ENOENT: bytes delivered from a copy (taken by a cancelled receive before).
    assert!(id >= 0 || id == -libc::ENOENT, "rl_recv_keep returned {id}");
    if id >= 0 {
        // SAFETY: as above.
        assert_eq!(
            unsafe { rl_recv_keep(lp, outcome) },
            -libc::ENOENT,
            "kept twice"
        );
        if id % 2 == 0 {
            assert_eq!(rl_buffer_release(lp, id as u32), 0);
        }
    }
}

/// Datagram callback: the payload and the sender it is given are readable for their lengths
/// (ASan checks the reads), and a sender never exceeds a `sockaddr_storage`.
unsafe extern "C" fn on_datagram(
    _lp: *mut rl_loop,
    outcome: *const rl_outcome,
    _data: *mut c_void,
) {
    // SAFETY: the loop passes a valid outcome for the duration of the call.
    let o = unsafe { &*outcome };
    if o.result < 0 {
        assert_eq!(o.flags & RL_EV_MORE, 0, "an error ends the receive");
        return;
    }
    assert!(o.source_len as usize <= RL_DGRAM_NAME_MAX as usize);
    if o.nbytes > 0 {
        // SAFETY: `bytes` holds `nbytes` readable bytes during the call.
        let payload = unsafe { std::slice::from_raw_parts(o.bytes, o.nbytes) };
        assert!(payload.iter().all(|&b| b == 0x5a || b == b'w'));
    }
    if o.source_len > 0 {
        // SAFETY: `source` holds `source_len` readable bytes during the call.
        let source =
            unsafe { std::slice::from_raw_parts(o.source.cast::<u8>(), o.source_len as usize) };
        assert!(!source.is_empty());
    }
}

/// A callback that calls back into the loop (re-entrancy must be refused or handled, not crash).
unsafe extern "C" fn on_reenter(lp: *mut rl_loop, _outcome: *const rl_outcome, _data: *mut c_void) {
    let mut events = [rl_event::default(); 4];
    // SAFETY: `events` holds 4 records.
    let polled = unsafe { rl_poll(lp, 0, events.as_mut_ptr(), 4) };
    assert!(
        polled < 0,
        "rl_poll inside a callback must be refused, got {polled}"
    );
    assert_eq!(rl_run(lp, RL_RUN_NOWAIT), RL_ESTATE);
    assert_eq!(rl_loop_free(lp), RL_ESTATE);
    let _ = rl_call_soon(lp, Some(on_anything), std::ptr::null_mut());
}

/// Thread-pool work: returns a value, or an error when `data` is non-null.
unsafe extern "C" fn work(data: *mut c_void, value: *mut u64) -> c_int {
    if data.is_null() {
        // SAFETY: the pool passes a writable value slot.
        unsafe { *value = 7 };
        0
    } else {
        -libc::EIO
    }
}

/// `RINGLOOP_FUZZ_TRACE=1` prints every call (to replay a crash input with its story).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("RINGLOOP_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

struct Harness {
    loops: Vec<*mut rl_loop>,
    stale_loops: Vec<*mut rl_loop>,
    fds: Vec<OwnedFd>,
    closed_fds: Vec<RawFd>,
    listener: Option<(RawFd, libc::sockaddr_in)>,
    futures: Vec<*mut rl_future>,
    released_futures: Vec<*mut rl_future>,
    ops: Vec<(u64, bool)>,
    timers: Vec<u64>,
    next_token: u64,
    /// Buffer ids of the last poll's events (of whichever loop).
    last_buffers: Vec<u32>,
}

fn pick<T: Copy>(items: &[T], index: u8) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[index as usize % items.len()])
    }
}

fn check(code: c_int, what: &str) {
    assert_ne!(code, RL_EPANIC, "{what}: the library caught a panic");
    check_description(code);
}

/// Any code, returned or made up, has a real description.
fn check_description(code: c_int) {
    // SAFETY: rl_strerror never returns NULL and its strings are static and NUL-terminated.
    let text = unsafe { CStr::from_ptr(rl_strerror(code)) };
    assert!(!text.to_bytes().is_empty());
}

impl Harness {
    fn new() -> Harness {
        Harness {
            loops: Vec::new(),
            stale_loops: Vec::new(),
            fds: Vec::new(),
            closed_fds: Vec::new(),
            listener: None,
            futures: Vec::new(),
            released_futures: Vec::new(),
            ops: Vec::new(),
            timers: Vec::new(),
            next_token: 1,
            last_buffers: Vec::new(),
        }
    }

    fn token(&mut self, kind: u64) -> u64 {
        self.next_token += 1;
        kind | (self.next_token & 0xff_ffff_ffff)
    }

    /// The address a connect or a datagram send goes to, written into `storage`: a pointer (NULL
    /// for `Target::Null`) and a length.
    fn target_addr(&self, target: Target, storage: &mut [u8; 128]) -> (*const c_void, u32) {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = sock.local_addr().unwrap().port();
        drop(sock);
        match target {
            Target::Listener | Target::ClosedPort => {
                let addr = match (target, self.listener) {
                    (Target::Listener, Some((_, addr))) => addr,
                    _ => {
                        // SAFETY: all-zero is a valid sockaddr_in.
                        let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                        a.sin_family = libc::AF_INET as libc::sa_family_t;
                        a.sin_port = closed_port.to_be();
                        a.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
                        a
                    }
                };
                // SAFETY: `storage` has room for a sockaddr_in.
                unsafe {
                    storage
                        .as_mut_ptr()
                        .cast::<libc::sockaddr_in>()
                        .write_unaligned(addr)
                };
                (
                    storage.as_ptr().cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as u32,
                )
            }
            Target::Garbage { len, family } => {
                storage[..2].copy_from_slice(&family.to_ne_bytes());
                // Stay off real addresses: garbage ports point at loopback or nowhere.
                storage[4..8].copy_from_slice(&[127, 0, 0, 1]);
                (storage.as_ptr().cast(), u32::from(len) % 129)
            }
            Target::Null => (std::ptr::null(), 16),
        }
    }

    fn lp(&self, r: LoopRef) -> *mut rl_loop {
        match r {
            LoopRef::Live(i) => pick(&self.loops, i).unwrap_or(std::ptr::null_mut()),
            LoopRef::Stale(i) => pick(&self.stale_loops, i).unwrap_or(std::ptr::null_mut()),
            LoopRef::Null => std::ptr::null_mut(),
            LoopRef::Forged(v) => v as usize as *mut rl_loop,
        }
    }

    fn fd(&self, r: FdRef) -> RawFd {
        match r {
            FdRef::Open(i) => match self.fds.len() {
                0 => -1,
                n => self.fds[i as usize % n].as_raw_fd(),
            },
            FdRef::Closed(i) => pick(&self.closed_fds, i).unwrap_or(-1),
            // Negative, or above fs.nr_open (at most 2^30): never an open fd.
            FdRef::Invalid(i) => [-1, -100, i32::MIN, (1 << 30) + 1, i32::MAX][i as usize % 5],
        }
    }

    fn future(&self, r: FutureRef) -> *mut rl_future {
        match r {
            FutureRef::Live(i) => pick(&self.futures, i).unwrap_or(std::ptr::null_mut()),
            FutureRef::Released(i) => {
                pick(&self.released_futures, i).unwrap_or(std::ptr::null_mut())
            }
            FutureRef::Null => std::ptr::null_mut(),
            FutureRef::Forged(v) => v as usize as *mut rl_future,
        }
    }

    fn keep_fd(&mut self, fd: OwnedFd) {
        if self.fds.len() < MAX_FDS {
            self.fds.push(fd);
        } else {
            self.forget_number(fd.as_raw_fd());
            drop(fd);
        }
    }

    fn forget_number(&mut self, fd: RawFd) {
        if self.closed_fds.len() < 64 {
            self.closed_fds.push(fd);
        }
        if self.listener.is_some_and(|(l, _)| l == fd) {
            self.listener = None;
        }
    }

    /// Removes fd `index` from the harness's table: the caller closes or gives it away.
    fn take_fd(&mut self, index: u8) -> Option<OwnedFd> {
        if self.fds.is_empty() {
            return None;
        }
        let fd = self.fds.swap_remove(index as usize % self.fds.len());
        self.forget_number(fd.as_raw_fd());
        Some(fd)
    }

    fn record_op(&mut self, rc: c_int, op: u64, raw: bool) {
        if rc == 0 && self.ops.len() < 256 {
            self.ops.push((op, raw));
        }
    }

    fn new_loop(&mut self, spec: OptionsSpec, null_out: bool) {
        // Room for a caller whose rl_options is larger than the library's.
        #[repr(C, align(8))]
        struct Big([u8; 64]);
        let mut big = Big([0; 64]);
        let opts_ptr: *const rl_options = match spec {
            OptionsSpec::Null => std::ptr::null(),
            OptionsSpec::Defaults => {
                // SAFETY: `big` is large and aligned enough for an rl_options.
                unsafe { rl_options_init(big.0.as_mut_ptr().cast()) };
                big.0.as_ptr().cast()
            }
            OptionsSpec::Custom {
                size,
                backend,
                buffer_size,
                buffer_count,
                ring_entries,
                flags,
                tail_nonzero,
            } => {
                let exact = std::mem::size_of::<rl_options>() as u32;
                let opts = rl_options {
                    size: match size {
                        SizeSpec::Exact => exact,
                        SizeSpec::Short(n) => u32::from(n) % exact,
                        SizeSpec::Long(n) => exact + u32::from(n) % (64 - exact),
                        SizeSpec::Zero => 0,
                    },
                    backend: u32::from(backend % 4),
                    // Small sizes keep memory low; odd ones must be rejected.
                    buffer_size: [0, 1, 64, 512, 4096, 3, 100_000, u32::MAX]
                        [buffer_size as usize % 8],
                    buffer_count: [0, 1, 2, 4, 8, 3, 65536, u32::MAX][buffer_count as usize % 8],
                    ring_entries: [0, 1, 2, 4, 8, 64, 1000, u32::MAX][ring_entries as usize % 8],
                    flags: u32::from(flags % 4),
                };
                // SAFETY: `big` has room for an rl_options at its (8-aligned) start.
                unsafe { big.0.as_mut_ptr().cast::<rl_options>().write(opts) };
                if tail_nonzero {
                    big.0[63] = 1;
                }
                big.0.as_ptr().cast()
            }
        };
        if null_out {
            // SAFETY: `opts_ptr` is NULL or points to 64 readable bytes.
            let rc = unsafe { rl_loop_new(opts_ptr, std::ptr::null_mut()) };
            assert_eq!(rc, -libc::EINVAL);
            return;
        }
        if self.loops.len() >= MAX_LOOPS {
            return;
        }
        let mut out: *mut rl_loop = std::ptr::null_mut();
        // SAFETY: as above; `out` is writable.
        let rc = unsafe { rl_loop_new(opts_ptr, &mut out) };
        check(rc, "rl_loop_new");
        if rc == 0 {
            assert!(!out.is_null());
            assert!(!rl_loop_backend(out).is_null());
            self.loops.push(out);
        } else {
            assert!(out.is_null(), "rl_loop_new wrote a handle on failure");
        }
    }

    fn free_loop(&mut self, r: LoopRef) {
        let lp = self.lp(r);
        let rc = rl_loop_free(lp);
        check(rc, "rl_loop_free");
        if let Some(pos) = self.loops.iter().position(|&l| l == lp) {
            assert_eq!(rc, 0, "freeing a live loop outside callbacks must succeed");
            self.loops.swap_remove(pos);
            self.stale_loops.push(lp);
            // A freed handle is stale everywhere at once.
            assert!(rl_loop_backend(lp).is_null());
            assert_eq!(rl_now(lp), 0);
            assert_eq!(rl_loop_free(lp), RL_EHANDLE);
        } else {
            assert_ne!(rc, 0, "freeing a non-live handle must fail");
        }
    }

    /// Raw-mode events are drained here; accepted fds they carry are closed.
    fn poll(&mut self, r: LoopRef, capacity: u8, null_events: bool) {
        let lp = self.lp(r);
        let capacity = u32::from(capacity % 65);
        let mut events = vec![rl_event::default(); capacity as usize];
        let ptr = if null_events {
            std::ptr::null_mut()
        } else {
            events.as_mut_ptr()
        };
        // SAFETY: `ptr` is NULL or valid for `capacity` records.
        let rc = unsafe { rl_poll(lp, 0, ptr, capacity) };
        check(rc, "rl_poll");
        if null_events && capacity > 0 {
            assert_eq!(rc, -libc::EINVAL);
        }
        if rc >= 0 {
            // This poll recycled whatever the previous one lent.
            self.last_buffers.clear();
        }
        if rc > 0 {
            assert!(rc as u32 <= capacity);
            let (base, size, count) = self.buffers_of(lp);
            for ev in &events[..rc as usize] {
                if ev.token & (0xff << 56) == TOKEN_ACCEPT && ev.result >= 0 {
                    // SAFETY: a raw accept event hands its new fd to the caller.
                    drop(unsafe { OwnedFd::from_raw_fd(ev.result) });
                }
                if ev.flags & RL_EV_BUFFER != 0 {
                    assert!(ev.result >= 0 && (ev.aux as u32) < count);
                    self.last_buffers.push(ev.aux as u32);
                    // A datagram's payload follows its header and sender's address.
                    let offset = if ev.flags & RL_EV_DATAGRAM != 0 {
                        RL_DGRAM_PAYLOAD
                    } else {
                        0
                    };
                    assert!(ev.result as u32 + offset <= size);
                    // SAFETY: buffer `aux` lies inside the region rl_buffers described.
                    let buffer = unsafe { base.add(ev.aux as usize * size as usize) };
                    if offset > 0 {
                        // SAFETY: the header lies inside the buffer (checked above).
                        let name_len = unsafe {
                            buffer
                                .add(RL_DGRAM_NAME_LEN as usize)
                                .cast::<u32>()
                                .read_unaligned()
                        };
                        assert!(name_len <= RL_DGRAM_NAME_MAX);
                    }
                    // The bytes are readable (ASan checks the access).
                    // SAFETY: as above, `offset + result` bytes lie inside the buffer.
                    let data = unsafe {
                        std::slice::from_raw_parts(buffer.add(offset as usize), ev.result as usize)
                    };
                    assert!(data.iter().all(|&b| b == 0x5a || b == b'w'));
                }
            }
        }
    }

    /// A connected pair of non-blocking Unix sockets of type `kind`, kept among the fds.
    fn unix_pair(&mut self, kind: c_int) {
        let mut pair = [0; 2];
        // SAFETY: `pair` has room for two fds.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        };
        if rc == 0 {
            for fd in pair {
                // SAFETY: fresh fds from socketpair.
                self.keep_fd(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }

    fn buffers_of(&self, lp: *mut rl_loop) -> (*const u8, u32, u32) {
        let mut base: *const u8 = std::ptr::null();
        let (mut size, mut count) = (0u32, 0u32);
        // SAFETY: all three out-pointers are writable.
        let rc = unsafe { rl_buffers(lp, &mut base, &mut size, &mut count) };
        assert_eq!(rc, 0);
        (base, size, count)
    }

    fn call(&mut self, call: Call) {
        let null = std::ptr::null_mut::<c_void>();
        match call {
            Call::LoopNew(spec) => self.new_loop(spec, false),
            Call::LoopNewNullOut(spec) => self.new_loop(spec, true),
            Call::LoopFree(r) => self.free_loop(r),
            Call::LoopInfo(r) => {
                let lp = self.lp(r);
                let live = self.loops.contains(&lp);
                let name = rl_loop_backend(lp);
                assert_eq!(!name.is_null(), live);
                if live {
                    // SAFETY: a non-null backend name is a static C string.
                    let name = unsafe { CStr::from_ptr(name) }.to_bytes();
                    assert!(name == b"io_uring" || name == b"epoll");
                }
                assert_eq!(rl_now(lp) != 0, live);
            }
            Call::Socketpair => self.unix_pair(libc::SOCK_STREAM),
            Call::DatagramPair => self.unix_pair(libc::SOCK_DGRAM),
            Call::Pipe => {
                let mut pair = [0; 2];
                // SAFETY: `pair` has room for two fds.
                if unsafe { libc::pipe2(pair.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) }
                    == 0
                {
                    for fd in pair {
                        // SAFETY: fresh fds from pipe2.
                        self.keep_fd(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            Call::Listen => {
                if self.listener.is_none() {
                    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    listener.set_nonblocking(true).unwrap();
                    let port = listener.local_addr().unwrap().port();
                    // SAFETY: all-zero is a valid sockaddr_in.
                    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                    addr.sin_family = libc::AF_INET as libc::sa_family_t;
                    addr.sin_port = port.to_be();
                    addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
                    let fd: OwnedFd = listener.into();
                    self.listener = Some((fd.as_raw_fd(), addr));
                    self.keep_fd(fd);
                }
            }
            Call::CloseFd(i) => drop(self.take_fd(i)),
            Call::WriteFd(i, len) => {
                if let Some(fd) = pick(
                    &self.fds.iter().map(|f| f.as_raw_fd()).collect::<Vec<_>>(),
                    i,
                ) {
                    let len = usize::from(len) % 8192 + 1;
                    let data = vec![b'w'; len];
                    write_quietly(fd, &data);
                }
            }
            Call::AddReader(r, f, reenter) | Call::AddWriter(r, f, reenter) => {
                let cb: rl_callback = if reenter {
                    Some(on_reenter)
                } else {
                    Some(on_anything)
                };
                let (lp, fd) = (self.lp(r), self.fd(f));
                let rc = if matches!(call, Call::AddReader(..)) {
                    rl_add_reader(lp, fd, cb, null)
                } else {
                    rl_add_writer(lp, fd, cb, null)
                };
                check(rc, "rl_add_reader/writer");
                check(rl_add_reader(lp, fd, None, null), "null callback");
                assert!(rl_add_reader(lp, fd, None, null) < 0);
            }
            Call::RemoveReader(r, f) => check(rl_remove_reader(self.lp(r), self.fd(f)), "remove"),
            Call::RemoveWriter(r, f) => check(rl_remove_writer(self.lp(r), self.fd(f)), "remove"),
            Call::Watch(r, f, interest, reserved) => {
                let token = if reserved {
                    RL_TOKEN_RESERVED | u64::from(interest)
                } else {
                    self.token(TOKEN_OTHER)
                };
                let mut op = 0;
                // SAFETY: `op` is writable.
                let rc = unsafe {
                    rl_op_watch(
                        self.lp(r),
                        self.fd(f),
                        u32::from(interest % 5),
                        token,
                        &mut op,
                    )
                };
                check(rc, "rl_op_watch");
                if reserved {
                    assert!(rc < 0);
                }
                self.record_op(rc, op, true);
            }
            Call::Recv(r, f, raw) => {
                let (lp, fd) = (self.lp(r), self.fd(f));
                let mut op = 0;
                let rc = if raw {
                    let token = self.token(TOKEN_OTHER);
                    // SAFETY: `op` is writable.
                    unsafe { rl_op_recv(lp, fd, token, &mut op) }
                } else {
                    // SAFETY: `op` is writable.
                    unsafe { rl_recv(lp, fd, Some(on_anything), null, &mut op) }
                };
                check(rc, "recv");
                self.record_op(rc, op, raw);
            }
            Call::RecvMsg(r, f, raw) => {
                let (lp, fd) = (self.lp(r), self.fd(f));
                let mut op = 0;
                let rc = if raw {
                    let token = self.token(TOKEN_OTHER);
                    // SAFETY: `op` is writable.
                    unsafe { rl_op_recvmsg(lp, fd, token, &mut op) }
                } else {
                    // SAFETY: `op` is writable.
                    unsafe { rl_recvmsg(lp, fd, Some(on_datagram), null, &mut op) }
                };
                check(rc, "recvmsg");
                self.record_op(rc, op, raw);
            }
            Call::RecvKeep(r, f) => {
                let (lp, fd) = (self.lp(r), self.fd(f));
                let mut op = 0;
                // SAFETY: `op` is writable.
                let rc = unsafe { rl_recv(lp, fd, Some(on_recv_keep), null, &mut op) };
                check(rc, "recv (keeping)");
                self.record_op(rc, op, false);
            }
            Call::Send(r, f, len, raw, null_buf) => {
                let (lp, fd) = (self.lp(r), self.fd(f));
                let len = usize::from(len);
                let buf: *const c_void = if null_buf {
                    std::ptr::null()
                } else {
                    SEND_DATA.as_ptr().cast()
                };
                let mut op = 0;
                let rc = if raw {
                    let token = self.token(TOKEN_OTHER);
                    // SAFETY: `buf` is NULL or static data of at least `len` bytes.
                    unsafe { rl_op_send(lp, fd, buf, len, token, &mut op) }
                } else {
                    // SAFETY: as above.
                    unsafe { rl_send(lp, fd, buf, len, Some(on_anything), null, &mut op) }
                };
                check(rc, "send");
                if null_buf && len > 0 {
                    assert!(rc < 0, "a NULL send buffer must be refused");
                }
                self.record_op(rc, op, raw);
            }
            Call::SendTo(r, f, len, raw, target) => {
                let (lp, fd) = (self.lp(r), self.fd(f));
                let len = usize::from(len);
                let buf: *const c_void = SEND_DATA.as_ptr().cast();
                let mut storage = [0u8; 128];
                let (addr_ptr, addr_len) = match target {
                    Some(target) => self.target_addr(target, &mut storage),
                    None => (std::ptr::null(), 0),
                };
                let mut op = 0;
                let rc = if raw {
                    let token = self.token(TOKEN_OTHER);
                    // SAFETY: `buf` is static data of at least `len` bytes; `addr_ptr` is NULL or
                    // `storage` (128 bytes >= addr_len).
                    unsafe { rl_op_sendto(lp, fd, buf, len, addr_ptr, addr_len, token, &mut op) }
                } else {
                    // SAFETY: as above.
                    unsafe {
                        rl_sendto(
                            lp,
                            fd,
                            buf,
                            len,
                            addr_ptr,
                            addr_len,
                            Some(on_anything),
                            null,
                            &mut op,
                        )
                    }
                };
                check(rc, "sendto");
                if addr_ptr.is_null() && addr_len > 0 {
                    assert!(rc < 0, "a NULL address with a length must be refused");
                }
                self.record_op(rc, op, raw);
            }
            Call::Accept(r, f, raw) => {
                let (lp, fd) = (self.lp(r), self.fd(f));
                let mut op = 0;
                let rc = if raw {
                    let token = self.token(TOKEN_ACCEPT);
                    // SAFETY: `op` is writable.
                    unsafe { rl_op_accept(lp, fd, token, &mut op) }
                } else {
                    // SAFETY: `op` is writable.
                    unsafe { rl_accept(lp, fd, Some(on_accept), null, &mut op) }
                };
                check(rc, "accept");
                self.record_op(rc, op, raw);
            }
            Call::Connect(r, target, raw) => {
                let lp = self.lp(r);
                if self.fds.len() >= MAX_FDS {
                    return;
                }
                // SAFETY: plain socket creation.
                let fd = unsafe {
                    libc::socket(
                        libc::AF_INET,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                    )
                };
                assert!(fd >= 0);
                // SAFETY: fresh fd from socket().
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                let mut storage = [0u8; 128];
                let (addr_ptr, addr_len) = self.target_addr(target, &mut storage);
                let mut op = 0;
                let rc = if raw {
                    let token = self.token(TOKEN_OTHER);
                    // SAFETY: `addr_ptr` is NULL or `storage` (128 bytes >= addr_len).
                    unsafe { rl_op_connect(lp, fd.as_raw_fd(), addr_ptr, addr_len, token, &mut op) }
                } else {
                    // SAFETY: as above.
                    unsafe {
                        rl_connect(
                            lp,
                            fd.as_raw_fd(),
                            addr_ptr,
                            addr_len,
                            Some(on_anything),
                            null,
                            &mut op,
                        )
                    }
                };
                check(rc, "connect");
                if addr_ptr.is_null() {
                    assert!(rc < 0);
                }
                self.record_op(rc, op, raw);
                self.keep_fd(fd);
            }
            Call::LoopClose(r, i, raw) => {
                let lp = self.lp(r);
                let Some(fd) = self.take_fd(i) else {
                    return;
                };
                let raw_fd = fd.into_raw_fd();
                let mut op = 0;
                let rc = if raw {
                    let token = self.token(TOKEN_OTHER);
                    // SAFETY: the harness owns `raw_fd` and gives it away (taken back below when
                    // the call refuses it).
                    unsafe { rl_op_close(lp, raw_fd, token, &mut op) }
                } else {
                    // SAFETY: as above.
                    unsafe { rl_close(lp, raw_fd, Some(on_anything), null, &mut op) }
                };
                check(rc, "close");
                if [RL_EHANDLE, RL_ESTATE, -libc::EINVAL, -libc::EBADF].contains(&rc) {
                    // Refused: the fd is still the caller's.
                    // SAFETY: ownership did not pass (documented), so it is still ours.
                    drop(unsafe { OwnedFd::from_raw_fd(raw_fd) });
                } else {
                    self.record_op(rc, op, raw);
                }
            }
            Call::LoopCloseInvalid(r, f, raw) => {
                // Only never-valid numbers: closing a number the harness does not own could close
                // someone else's fd, which no library can protect against.
                let FdRef::Invalid(i) = f else { return };
                let fd = self.fd(FdRef::Invalid(i));
                let lp = self.lp(r);
                // SAFETY: an fd number that is never open; nothing is given away.
                let rc = unsafe {
                    if raw {
                        rl_op_close(lp, fd, 1, std::ptr::null_mut())
                    } else {
                        rl_close(
                            lp,
                            fd,
                            Some(on_anything),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                        )
                    }
                };
                check(rc, "close(invalid fd)");
                assert!(rc < 0, "closing fd {fd} must fail");
            }
            Call::Cancel(r, i, raw_hint) => {
                let lp = self.lp(r);
                let (op, raw) = pick(&self.ops, i).unwrap_or((0, raw_hint));
                let rc = if raw {
                    rl_op_cancel(lp, op)
                } else {
                    rl_cancel(lp, op)
                };
                check(rc, "cancel");
                // Cancelling again is harmless.
                let again = if raw {
                    rl_op_cancel(lp, op)
                } else {
                    rl_cancel(lp, op)
                };
                check(again, "cancel again");
                if rc >= 0 && again >= 0 {
                    assert!(
                        (raw && again == -libc::ENOENT) || (!raw && again == 0) || again < 0,
                        "second cancel of op {op} returned {again}"
                    );
                }
            }
            Call::CancelForged(r, op, raw) => {
                let lp = self.lp(r);
                let rc = if raw {
                    rl_op_cancel(lp, op)
                } else {
                    rl_cancel(lp, op)
                };
                check(rc, "cancel(forged)");
            }
            Call::CancelToken(r, i) => {
                let lp = self.lp(r);
                let token = TOKEN_OTHER | u64::from(i);
                check(rl_op_cancel_token(lp, token), "cancel_token");
                check(
                    rl_op_cancel_token(lp, RL_TOKEN_RESERVED | 5),
                    "cancel_token(reserved)",
                );
            }
            Call::CallSoon(r, reenter) => {
                let cb: rl_callback = if reenter {
                    Some(on_reenter)
                } else {
                    Some(on_anything)
                };
                check(rl_call_soon(self.lp(r), cb, null), "call_soon");
                assert!(rl_call_soon(self.lp(r), None, null) < 0);
            }
            Call::CallSoonThreadsafe(r) => {
                check(
                    rl_call_soon_threadsafe(self.lp(r), Some(on_anything), null),
                    "threadsafe",
                );
            }
            Call::CallLater(r, delay_us, keep) => {
                let mut timer = 0;
                // SAFETY: `timer` is writable.
                let rc = unsafe {
                    rl_call_later(
                        self.lp(r),
                        u64::from(delay_us) * 1000,
                        Some(on_anything),
                        null,
                        if keep {
                            &mut timer
                        } else {
                            std::ptr::null_mut()
                        },
                    )
                };
                check(rc, "call_later");
                if rc == 0 && keep && self.timers.len() < 256 {
                    self.timers.push(timer);
                }
            }
            Call::CallAt(r, deadline) => {
                let mut timer = 0;
                // SAFETY: `timer` is writable.
                let rc = unsafe {
                    rl_call_at(self.lp(r), deadline, Some(on_anything), null, &mut timer)
                };
                check(rc, "call_at");
                if rc == 0 && self.timers.len() < 256 {
                    self.timers.push(timer);
                }
            }
            Call::RawTimer(r, delay_us, reserved) => {
                let lp = self.lp(r);
                let token = if reserved {
                    RL_TOKEN_RESERVED
                } else {
                    self.token(TOKEN_OTHER)
                };
                let mut timer = 0;
                // SAFETY: `timer` is writable.
                let rc = unsafe {
                    rl_op_timer(
                        lp,
                        rl_now(lp) + u64::from(delay_us) * 1000,
                        token,
                        &mut timer,
                    )
                };
                check(rc, "rl_op_timer");
                if reserved {
                    assert!(rc < 0);
                }
                if rc == 0 && self.timers.len() < 256 {
                    self.timers.push(timer);
                }
            }
            Call::TimerCancel(r, i) => {
                let lp = self.lp(r);
                let timer = pick(&self.timers, i).unwrap_or(0);
                let first = rl_timer_cancel(lp, timer);
                check(first, "timer_cancel");
                let second = rl_timer_cancel(lp, timer);
                check(second, "timer_cancel again");
                if first >= 0 {
                    assert_eq!(second, 0, "cancelling timer {timer} twice");
                }
            }
            Call::TimerCancelForged(r, timer) => {
                check(rl_timer_cancel(self.lp(r), timer), "timer_cancel(forged)");
            }
            Call::FutureNew(r, null_out) => {
                let lp = self.lp(r);
                if null_out {
                    // SAFETY: NULL out-pointer is allowed (and refused).
                    let rc = unsafe { rl_future_new(lp, std::ptr::null_mut()) };
                    assert!(rc < 0);
                    return;
                }
                let mut fut: *mut rl_future = std::ptr::null_mut();
                // SAFETY: `fut` is writable.
                let rc = unsafe { rl_future_new(lp, &mut fut) };
                check(rc, "future_new");
                if rc == 0 {
                    self.futures.push(fut);
                }
            }
            Call::FutureSetResult(f, v) => check(rl_future_set_result(self.future(f), v), "set"),
            Call::FutureSetError(f, code) => {
                let rc = rl_future_set_error(self.future(f), code);
                check(rc, "set_error");
                if code >= 0 {
                    assert!(rc < 0);
                }
            }
            Call::FutureCancel(f) => check(rl_future_cancel(self.future(f)), "future_cancel"),
            Call::FutureState(f) => {
                let state = rl_future_state(self.future(f));
                assert!([
                    RL_FUTURE_PENDING,
                    RL_FUTURE_DONE,
                    RL_FUTURE_CANCELLED,
                    RL_EHANDLE
                ]
                .contains(&state));
            }
            Call::FutureResult(f, null_out) => {
                let mut value: u64 = 0;
                let out = if null_out {
                    std::ptr::null_mut()
                } else {
                    &mut value as *mut u64
                };
                // SAFETY: `out` is NULL or writable.
                check(
                    unsafe { rl_future_result(self.future(f), out) },
                    "future_result",
                );
            }
            Call::FutureAddDone(f, reenter) => {
                let cb: rl_callback = if reenter {
                    Some(on_reenter)
                } else {
                    Some(on_anything)
                };
                check(
                    rl_future_add_done_callback(self.future(f), cb, null),
                    "add_done",
                );
            }
            Call::FutureRelease(f) => {
                let fut = self.future(f);
                let rc = rl_future_release(fut);
                check(rc, "release");
                if let Some(pos) = self.futures.iter().position(|&x| x == fut) {
                    assert_eq!(rc, 0);
                    self.futures.swap_remove(pos);
                    self.released_futures.push(fut);
                    assert_eq!(rl_future_release(fut), RL_EHANDLE, "double release");
                    assert_eq!(rl_future_state(fut), RL_EHANDLE);
                } else {
                    assert_ne!(rc, 0);
                }
            }
            Call::RunInThread(r, fail) => {
                let mut fut: *mut rl_future = std::ptr::null_mut();
                let data = if fail { 1usize as *mut c_void } else { null };
                // SAFETY: `fut` is writable; `work` only reads `data` as a flag.
                let rc = unsafe { rl_run_in_thread(self.lp(r), Some(work), data, &mut fut) };
                check(rc, "run_in_thread");
                if rc == 0 {
                    self.futures.push(fut);
                }
            }
            Call::SetPoolSize(r, n) => {
                check(rl_set_pool_size(self.lp(r), u32::from(n % 8)), "pool")
            }
            Call::Signal(r, which, raw, stop) => {
                // Never a signal libFuzzer relies on (SIGALRM, SIGINT, SIGSEGV, ...).
                let signo = [
                    libc::SIGUSR1,
                    libc::SIGUSR2,
                    libc::SIGWINCH,
                    0,
                    libc::SIGKILL,
                    libc::SIGSTOP,
                    65,
                    -3,
                ][which as usize % 8];
                let lp = self.lp(r);
                if stop {
                    check(rl_signal_stop(lp, signo), "signal_stop");
                } else if raw {
                    let token = self.token(TOKEN_OTHER);
                    let mut op = 0;
                    // SAFETY: `op` is writable.
                    let rc = unsafe { rl_op_signal(lp, signo, token, &mut op) };
                    check(rc, "rl_op_signal");
                    self.record_op(rc, op, true);
                } else {
                    check(
                        rl_signal_start(lp, signo, Some(on_anything), null),
                        "signal_start",
                    );
                }
            }
            Call::Run(r, mode) => {
                let lp = self.lp(r);
                match mode % 4 {
                    // Bounded: a queued call makes ONCE return, and a stop makes DEFAULT return
                    // after its first iteration.
                    0 => {
                        if rl_call_soon(lp, Some(on_anything), null) == 0 {
                            check(rl_run(lp, RL_RUN_ONCE), "run once");
                        }
                    }
                    1 => {
                        if rl_call_soon(lp, Some(on_anything), null) == 0 && rl_stop(lp) == 0 {
                            check(rl_run(lp, RL_RUN_DEFAULT), "run default");
                        }
                    }
                    2 => check(rl_run(lp, RL_RUN_NOWAIT), "run nowait"),
                    _ => assert!(rl_run(lp, 7 + i32::from(mode)) < 0, "unknown run mode"),
                }
            }
            Call::Poll(r, capacity, null_events) => self.poll(r, capacity, null_events),
            Call::Wake(r) => check(rl_wake(self.lp(r)), "wake"),
            Call::Stop(r) => check(rl_stop(self.lp(r)), "stop"),
            Call::Buffers(r, nulls) => {
                let lp = self.lp(r);
                let mut base: *const u8 = std::ptr::null();
                let (mut size, mut count) = (0u32, 0u32);
                let pick_ptr = |bit: u8, p: *mut u32| {
                    if nulls & bit != 0 {
                        std::ptr::null_mut()
                    } else {
                        p
                    }
                };
                // SAFETY: each out-pointer is NULL or writable.
                let rc = unsafe {
                    rl_buffers(
                        lp,
                        if nulls & 1 != 0 {
                            std::ptr::null_mut()
                        } else {
                            &mut base
                        },
                        pick_ptr(2, &mut size),
                        pick_ptr(4, &mut count),
                    )
                };
                check(rc, "rl_buffers");
            }
            Call::BufferKeep(r, id, recent) | Call::BufferRelease(r, id, recent) => {
                let lp = self.lp(r);
                let id = match pick(&self.last_buffers, id as u8) {
                    Some(polled) if recent => polled,
                    _ => u32::from(id),
                };
                let rc = if matches!(call, Call::BufferKeep(..)) {
                    rl_buffer_keep(lp, id)
                } else {
                    rl_buffer_release(lp, id)
                };
                check(rc, "rl_buffer_keep/release");
                assert!(
                    [0, -libc::EINVAL, -libc::ENOENT, RL_EHANDLE, RL_ESTATE].contains(&rc),
                    "keep/release returned {rc}"
                );
            }
            // A code the input made up (RL_EPANIC among them, which libFuzzer finds by its
            // comparisons): only its description is checked.
            Call::Strerror(code) => check_description(code),
        }
    }

    /// Frees everything the input created: loops (which cancel and drain their work), futures,
    /// fds.
    fn finish(mut self) {
        // Drain raw events first so accepted fds are closed by their owner (the harness); whatever
        // is still queued afterwards the loop must close itself when freed.
        for i in 0..self.loops.len() {
            self.poll(LoopRef::Live(i as u8), 64, false);
        }
        for lp in std::mem::take(&mut self.loops) {
            assert_eq!(rl_loop_free(lp), 0);
        }
        for fut in std::mem::take(&mut self.futures) {
            assert_eq!(rl_future_release(fut), 0);
        }
        self.fds.clear();
    }
}

/// Writes to a socket or pipe the harness owns without raising SIGPIPE: the harness keeps SIGPIPE
/// at its default action so that a library call raising it kills the run and is reported.
fn write_quietly(fd: RawFd, data: &[u8]) {
    // SAFETY: sending from a valid buffer on an fd the harness owns.
    let sent = unsafe { libc::send(fd, data.as_ptr().cast(), data.len(), libc::MSG_NOSIGNAL) };
    if sent >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOTSOCK) {
        return;
    }
    // A pipe: block SIGPIPE around the write and discard one raised by it.
    // SAFETY: plain signal-mask calls on this thread with valid, initialised sets.
    unsafe {
        let mut pipe_only: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut pipe_only);
        libc::sigaddset(&mut pipe_only, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &pipe_only, &mut previous);
        let _ = libc::write(fd, data.as_ptr().cast(), data.len());
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let _ = libc::sigtimedwait(&pipe_only, std::ptr::null_mut(), &zero);
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn run(data: &[u8]) {
    let before = open_fds();
    let mut u = Unstructured::new(data);
    let mut harness = Harness::new();
    for _ in 0..MAX_CALLS {
        let Ok(call) = Call::arbitrary(&mut u) else {
            break;
        };
        if trace() {
            eprintln!("call: {call:?}");
        }
        harness.call(call);
        if u.is_empty() {
            break;
        }
    }
    harness.finish();
    let after = open_fds();
    assert_eq!(
        before, after,
        "fds leaked by this input ({before} open before, {after} after)"
    );
}

fuzz_target!(|data: &[u8]| run(data));
