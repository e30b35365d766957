//! `echoload` — an echo-server load generator that verifies every byte.
//!
//! Each connection keeps `--pipeline` messages of `--size` random bytes in flight; a message's
//! latency runs from the moment it is queued until its last echoed byte is back. Every echoed byte
//! is compared with what was sent; a mismatch, a short echo or an early EOF is an error, counted and
//! reported, and makes the exit status non-zero.
//!
//! It deliberately uses plain epoll and not ringloop (it measures ringloop). Per round trip it costs
//! one `writev` (pipelined messages go out together) and usually one `read`: sockets are registered
//! edge-triggered once, so no `epoll_ctl` happens after start-up, and a short read proves the
//! socket drained, which saves the trailing `EAGAIN` read. Payloads are slices of one pre-filled
//! random pool at random offsets, so nothing is allocated or generated per request.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, IoSlice, Write as _};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use ringloop_benches::cpu;
use ringloop_benches::rng::XorShift64;

/// Most iovecs one `writev` takes (Linux IOV_MAX); it bounds `--pipeline`.
const MAX_PIPELINE: usize = 1024;
/// Messages gathered into one `writev`; deeper pipelines take several calls.
const IOV_BATCH: usize = 64;
/// Per-thread receive buffer: big reads, one syscall for many echoed messages.
const READ_BUFFER: usize = 256 * 1024;
/// How long after the measured window outstanding echoes may take before they count as lost.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Echo-server load generator: throughput, latency, CPU cost; verifies every echoed byte"
)]
struct Args {
    /// Server host name or address.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Server TCP port.
    #[arg(long, short = 'P', default_value_t = 25000)]
    port: u16,
    /// Connect to this Unix stream socket instead of TCP.
    #[arg(long, conflicts_with_all = ["host", "port"])]
    unix: Option<PathBuf>,
    /// Number of concurrent connections.
    #[arg(long, short = 'c', default_value_t = 10)]
    connections: usize,
    /// Message size in bytes.
    #[arg(long, short = 's', default_value_t = 1024)]
    size: usize,
    /// Messages in flight per connection.
    #[arg(long, short = 'p', default_value_t = 1)]
    pipeline: usize,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds measured.
    #[arg(long, short = 'd', default_value_t = 5.0)]
    duration: f64,
    /// Measure exactly this many round trips (split over threads) instead of `--duration` seconds.
    #[arg(long)]
    requests: Option<u64>,
    /// Worker threads; connections are spread over them.
    #[arg(long, short = 't', default_value_t = 1)]
    threads: usize,
    /// Process id of the server, to report its CPU time over the measured window.
    #[arg(long)]
    server_pid: Option<i32>,
    /// Seed of the payload generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print one JSON object instead of the human-readable report.
    #[arg(long)]
    json: bool,
}

impl Args {
    fn validate(&self) -> Result<(), String> {
        if self.connections == 0 {
            return Err("--connections must be at least 1".into());
        }
        if self.size == 0 {
            return Err("--size must be at least 1 byte".into());
        }
        if self.size > 1 << 30 {
            return Err("--size must be at most 1 GiB".into());
        }
        if self.pipeline == 0 || self.pipeline > MAX_PIPELINE {
            return Err(format!("--pipeline must be between 1 and {MAX_PIPELINE}"));
        }
        if self.threads == 0 || self.threads > self.connections {
            return Err("--threads must be between 1 and --connections".into());
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0 && self.warmup <= 3600.0) {
            return Err("--warmup must be between 0 and 3600 seconds".into());
        }
        if self.requests.is_none()
            && !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= 86400.0)
        {
            return Err("--duration must be more than 0 and at most 86400 seconds".into());
        }
        if self.requests == Some(0) {
            return Err("--requests must be at least 1".into());
        }
        if let Some(pid) = self.server_pid {
            cpu::process_cpu_time(pid)
                .map_err(|e| format!("--server-pid {pid}: cannot read its CPU time: {e}"))?;
        }
        Ok(())
    }

    fn target(&self) -> String {
        match &self.unix {
            Some(path) => format!("unix:{}", path.display()),
            None => format!("{}:{}", self.host, self.port),
        }
    }
}

/// What went wrong on a connection; each occurrence is one error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorKind {
    /// Echoed bytes differ from the bytes sent.
    Mismatch,
    /// The server closed the connection with echoes outstanding.
    EarlyEof,
    /// The server sent more bytes than were sent to it.
    ExtraBytes,
    /// A socket call failed (reset, broken pipe, ...).
    Io,
    /// Outstanding echoes did not arrive within the drain timeout.
    DrainTimeout,
}

const ERROR_KINDS: [(ErrorKind, &str); 5] = [
    (ErrorKind::Mismatch, "mismatch"),
    (ErrorKind::EarlyEof, "early_eof"),
    (ErrorKind::ExtraBytes, "extra_bytes"),
    (ErrorKind::Io, "io"),
    (ErrorKind::DrainTimeout, "drain_timeout"),
];

#[derive(Clone, Debug, Default)]
struct ErrorCounts([u64; ERROR_KINDS.len()]);

impl ErrorCounts {
    fn add(&mut self, kind: ErrorKind) {
        let index = ERROR_KINDS
            .iter()
            .position(|(k, _)| *k == kind)
            .expect("every kind is listed");
        self.0[index] += 1;
    }
    fn merge(&mut self, other: &ErrorCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }
    fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// A message sent (or being sent) and not yet fully echoed.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// Offset of the payload in the shared random pool.
    pool_offset: usize,
    queued_at: Instant,
}

struct Connection {
    fd: OwnedFd,
    /// Messages in order; those before `first_unsent` are fully written.
    inflight: VecDeque<InFlight>,
    first_unsent: usize,
    /// Bytes of `inflight[first_unsent]` already written.
    written_of_first_unsent: usize,
    /// Bytes of `inflight[0]` already echoed and verified.
    echoed_of_head: usize,
    /// Closed after an error or after draining; no longer polled.
    closed: bool,
}

/// The measurement phases a worker goes through, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Warmup,
    Measure,
    Drain,
}

/// What a worker measured in the measured phase.
struct WorkerReport {
    latency_ns: Histogram<u64>,
    round_trips: u64,
    errors: ErrorCounts,
    first_error: Option<String>,
    /// When this worker's measured phase ended (fixed-count mode finishes at different times).
    measure_end: Instant,
}

struct Plan {
    size: usize,
    pipeline: usize,
    pool: Arc<Vec<u8>>,
    measure_start: Instant,
    /// `None` in fixed-count mode.
    measure_end: Option<Instant>,
    /// Round trips this worker measures in fixed-count mode.
    quota: Option<u64>,
    seed: u64,
}

struct Worker {
    plan: Plan,
    epoll: Epoll,
    conns: Vec<Connection>,
    rng: XorShift64,
    read_buf: Vec<u8>,
    phase: Phase,
    latency_ns: Histogram<u64>,
    round_trips: u64,
    /// Round trips started in the measured phase (fixed-count mode stops issuing at the quota).
    issued: u64,
    errors: ErrorCounts,
    first_error: Option<String>,
    measure_end_seen: Option<Instant>,
    /// Connections not closed yet.
    open_conns: usize,
}

impl Worker {
    fn new(plan: Plan, sockets: Vec<OwnedFd>) -> io::Result<Worker> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let mut conns = Vec::with_capacity(sockets.len());
        for (index, fd) in sockets.into_iter().enumerate() {
            // Edge-triggered for both directions, registered once: see the module doc.
            let flags = EpollFlags::EPOLLIN
                | EpollFlags::EPOLLOUT
                | EpollFlags::EPOLLRDHUP
                | EpollFlags::EPOLLET;
            epoll.add(fd.as_fd(), EpollEvent::new(flags, index as u64))?;
            conns.push(Connection {
                fd,
                inflight: VecDeque::with_capacity(plan.pipeline),
                first_unsent: 0,
                written_of_first_unsent: 0,
                echoed_of_head: 0,
                closed: false,
            });
        }
        let rng = XorShift64::new(plan.seed);
        let open_conns = conns.len();
        Ok(Worker {
            open_conns,
            plan,
            epoll,
            conns,
            rng,
            read_buf: vec![0; READ_BUFFER],
            phase: Phase::Warmup,
            latency_ns: new_histogram(),
            round_trips: 0,
            issued: 0,
            errors: ErrorCounts::default(),
            first_error: None,
            measure_end_seen: None,
        })
    }

    fn run(mut self) -> WorkerReport {
        let start = Instant::now();
        self.update_phase(start);
        for index in 0..self.conns.len() {
            self.top_up(index, start);
            self.flush(index);
        }
        let mut events = vec![EpollEvent::empty(); self.conns.len().min(1024)];
        let drain_deadline_after = |end: Instant| end + DRAIN_TIMEOUT;
        loop {
            let now = Instant::now();
            self.update_phase(now);
            if self.open_conns == 0 {
                break;
            }
            // Only the drain phase has to look at every connection, once per wait.
            if self.phase == Phase::Drain
                && self.conns.iter().all(|c| c.closed || c.inflight.is_empty())
            {
                break;
            }
            let next_boundary = match self.phase {
                Phase::Warmup => Some(self.plan.measure_start),
                Phase::Measure => self.plan.measure_end,
                Phase::Drain => self.measure_end_seen.map(drain_deadline_after),
            };
            if self.phase == Phase::Drain && next_boundary.is_some_and(|deadline| now >= deadline) {
                self.fail_outstanding();
                break;
            }
            let timeout = next_boundary.map_or(EpollTimeout::from(100u16), |at| {
                // Round up so that the boundary has passed when epoll_wait returns by timeout.
                let ms = at
                    .saturating_duration_since(now)
                    .as_micros()
                    .div_ceil(1000)
                    .min(100);
                EpollTimeout::from(ms as u16)
            });
            let ready = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    self.record_error(ErrorKind::Io, format!("epoll_wait: {err}"));
                    break;
                }
            };
            let now = Instant::now();
            for event in &events[..ready] {
                let index = event.data() as usize;
                if self.conns[index].closed {
                    continue;
                }
                let flags = event.events();
                if flags.intersects(
                    EpollFlags::EPOLLIN
                        | EpollFlags::EPOLLRDHUP
                        | EpollFlags::EPOLLHUP
                        | EpollFlags::EPOLLERR,
                ) {
                    self.on_readable(index, now);
                }
                if !self.conns[index].closed && flags.contains(EpollFlags::EPOLLOUT) {
                    self.flush(index);
                }
            }
        }
        WorkerReport {
            latency_ns: self.latency_ns,
            round_trips: self.round_trips,
            errors: self.errors,
            first_error: self.first_error,
            measure_end: self.measure_end_seen.unwrap_or_else(Instant::now),
        }
    }

    fn update_phase(&mut self, now: Instant) {
        if self.phase == Phase::Warmup && now >= self.plan.measure_start {
            self.phase = Phase::Measure;
            // Only the measured window counts; errors are kept from every phase.
            self.latency_ns.reset();
            self.round_trips = 0;
            self.issued = 0;
        }
        if self.phase == Phase::Measure {
            let over = match (self.plan.measure_end, self.plan.quota) {
                (Some(end), _) => now >= end,
                (None, Some(quota)) => self.round_trips >= quota,
                (None, None) => unreachable!("a plan has a window or a quota"),
            };
            if over {
                self.phase = Phase::Drain;
                self.measure_end_seen = Some(now);
            }
        }
    }

    fn may_issue(&self) -> bool {
        match self.phase {
            Phase::Warmup => true,
            Phase::Measure => self.plan.quota.is_none_or(|quota| self.issued < quota),
            Phase::Drain => false,
        }
    }

    /// Queues new messages until the connection has `pipeline` in flight.
    fn top_up(&mut self, index: usize, now: Instant) {
        let span = self.plan.pool.len() - self.plan.size + 1;
        while self.conns[index].inflight.len() < self.plan.pipeline && self.may_issue() {
            let pool_offset = self.rng.below(span);
            self.conns[index].inflight.push_back(InFlight {
                pool_offset,
                queued_at: now,
            });
            if self.phase == Phase::Measure {
                self.issued += 1;
            }
        }
    }

    /// Writes as much of the queued, unwritten messages as the socket takes, up to
    /// [`IOV_BATCH`] messages per `writev`.
    fn flush(&mut self, index: usize) {
        let size = self.plan.size;
        loop {
            let conn = &self.conns[index];
            if conn.first_unsent >= conn.inflight.len() {
                return;
            }
            let mut iov = [IoSlice::new(&[]); IOV_BATCH];
            let mut count = 0;
            let mut requested = 0;
            for (n, msg) in conn
                .inflight
                .iter()
                .skip(conn.first_unsent)
                .take(IOV_BATCH)
                .enumerate()
            {
                let skip = if n == 0 {
                    conn.written_of_first_unsent
                } else {
                    0
                };
                iov[count] =
                    IoSlice::new(&self.plan.pool[msg.pool_offset + skip..msg.pool_offset + size]);
                requested += size - skip;
                count += 1;
            }
            let result = nix::sys::uio::writev(conn.fd.as_fd(), &iov[..count]);
            let conn = &mut self.conns[index];
            match result {
                Ok(written) => {
                    // Advance over whole messages, then into the partially written one.
                    let mut left_to_account = written;
                    while left_to_account > 0 {
                        let rest_of_message = size - conn.written_of_first_unsent;
                        if left_to_account >= rest_of_message {
                            left_to_account -= rest_of_message;
                            conn.first_unsent += 1;
                            conn.written_of_first_unsent = 0;
                        } else {
                            conn.written_of_first_unsent += left_to_account;
                            left_to_account = 0;
                        }
                    }
                    if written < requested {
                        // The send buffer is full: edge-triggered EPOLLOUT says when to go on.
                        return;
                    }
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    self.fail(index, ErrorKind::Io, format!("write: {err}"));
                    return;
                }
            }
        }
    }

    fn on_readable(&mut self, index: usize, now: Instant) {
        loop {
            let result = nix::unistd::read(self.conns[index].fd.as_fd(), &mut self.read_buf);
            match result {
                Ok(0) => {
                    if self.conns[index].inflight.is_empty() && self.phase == Phase::Drain {
                        self.close(index);
                    } else {
                        let outstanding = self.conns[index].inflight.len();
                        self.fail(index, ErrorKind::EarlyEof, format!("server closed the connection with {outstanding} echo(es) outstanding"));
                    }
                    return;
                }
                Ok(n) => {
                    if !self.consume(index, n, now) {
                        return;
                    }
                    self.top_up(index, now);
                    self.flush(index);
                    if n < self.read_buf.len() {
                        // Drained for now; edge-triggered epoll reports the next arrival.
                        return;
                    }
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    self.fail(index, ErrorKind::Io, format!("read: {err}"));
                    return;
                }
            }
        }
    }

    /// Verifies `read_buf[..n]` against the expected echo stream; `false` if the connection failed.
    fn consume(&mut self, index: usize, n: usize, now: Instant) -> bool {
        let size = self.plan.size;
        let mut pos = 0;
        while pos < n {
            let conn = &mut self.conns[index];
            let Some(head) = conn.inflight.front().copied() else {
                self.fail(
                    index,
                    ErrorKind::ExtraBytes,
                    format!("{} byte(s) arrived with no message outstanding", n - pos),
                );
                return false;
            };
            // Bytes of the head message that have been written so far bound what may come back.
            let written_of_head = if conn.first_unsent > 0 {
                size
            } else {
                conn.written_of_first_unsent
            };
            let take = (n - pos).min(size - conn.echoed_of_head);
            if conn.echoed_of_head + take > written_of_head {
                self.fail(
                    index,
                    ErrorKind::ExtraBytes,
                    "more bytes echoed than were sent".into(),
                );
                return false;
            }
            let expected = &self.plan.pool[head.pool_offset + conn.echoed_of_head..][..take];
            if expected != &self.read_buf[pos..pos + take] {
                let at = conn.echoed_of_head
                    + expected
                        .iter()
                        .zip(&self.read_buf[pos..])
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                self.fail(
                    index,
                    ErrorKind::Mismatch,
                    format!("echo differs from the message at byte {at} of {size}"),
                );
                return false;
            }
            pos += take;
            conn.echoed_of_head += take;
            if conn.echoed_of_head == size {
                conn.inflight.pop_front();
                conn.first_unsent -= 1;
                conn.echoed_of_head = 0;
                if self.phase == Phase::Measure {
                    let elapsed = now.saturating_duration_since(head.queued_at).as_nanos() as u64;
                    self.latency_ns.saturating_record(elapsed.max(1));
                    self.round_trips += 1;
                    if self.plan.quota.is_some() {
                        self.update_phase(now);
                    }
                }
            }
        }
        true
    }

    fn fail_outstanding(&mut self) {
        for index in 0..self.conns.len() {
            if !self.conns[index].closed && !self.conns[index].inflight.is_empty() {
                let outstanding = self.conns[index].inflight.len();
                self.fail(
                    index,
                    ErrorKind::DrainTimeout,
                    format!(
                        "{outstanding} echo(es) still outstanding {DRAIN_TIMEOUT:?} after the run"
                    ),
                );
            }
        }
    }

    fn fail(&mut self, index: usize, kind: ErrorKind, message: String) {
        self.record_error(kind, format!("connection {index}: {message}"));
        self.close(index);
    }

    fn record_error(&mut self, kind: ErrorKind, message: String) {
        self.errors.add(kind);
        self.first_error.get_or_insert(message);
    }

    fn close(&mut self, index: usize) {
        let conn = &mut self.conns[index];
        if !conn.closed {
            conn.closed = true;
            self.open_conns -= 1;
            conn.inflight.clear();
            // Stop polling it and tell the server it is over; the fd itself stays open until the
            // worker ends, so its number cannot be reused under a live epoll registration.
            let _ = self.epoll.delete(conn.fd.as_fd());
            let _ =
                nix::sys::socket::shutdown(conn.fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("static histogram bounds are valid")
}

fn connect_all(args: &Args) -> Result<Vec<OwnedFd>, String> {
    let addrs: Vec<std::net::SocketAddr> = match &args.unix {
        Some(_) => Vec::new(),
        None => (args.host.as_str(), args.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", args.target()))?
            .collect(),
    };
    let mut sockets = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        let fd: OwnedFd = match &args.unix {
            Some(path) => {
                let stream = UnixStream::connect(path)
                    .map_err(|e| format!("connection {n} to {}: {e}", args.target()))?;
                stream
                    .set_nonblocking(true)
                    .map_err(|e| format!("set_nonblocking: {e}"))?;
                stream.into()
            }
            None => {
                let stream = TcpStream::connect(&addrs[..])
                    .map_err(|e| format!("connection {n} to {}: {e}", args.target()))?;
                stream
                    .set_nodelay(true)
                    .map_err(|e| format!("TCP_NODELAY: {e}"))?;
                stream
                    .set_nonblocking(true)
                    .map_err(|e| format!("set_nonblocking: {e}"))?;
                stream.into()
            }
        };
        sockets.push(fd);
    }
    Ok(sockets)
}

struct CpuSample {
    client: Duration,
    server: Option<Duration>,
}

fn sample_cpu(server_pid: Option<i32>) -> CpuSample {
    CpuSample {
        client: cpu::own_cpu_time().unwrap_or_default(),
        // The server may have died mid-run: that shows up as errors, not as a crash here.
        server: server_pid.and_then(|pid| cpu::process_cpu_time(pid).ok()),
    }
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        thread::sleep(at - now);
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(message) = args.validate() {
        eprintln!("echoload: {message}");
        return ExitCode::from(2);
    }
    let sockets = match connect_all(&args) {
        Ok(sockets) => sockets,
        Err(message) => {
            eprintln!("echoload: {message}");
            return ExitCode::from(2);
        }
    };

    // The pool is several messages long so that random offsets give distinct payloads.
    let mut pool = vec![0u8; args.size + args.size.max(4 << 20)];
    XorShift64::new(args.seed).fill(&mut pool);
    let pool = Arc::new(pool);

    let start = Instant::now();
    let measure_start = start + Duration::from_secs_f64(args.warmup);
    let measure_end = args
        .requests
        .is_none()
        .then(|| measure_start + Duration::from_secs_f64(args.duration));

    // Spread connections (and the fixed count) evenly over the threads.
    let mut groups: Vec<Vec<OwnedFd>> = (0..args.threads).map(|_| Vec::new()).collect();
    for (n, fd) in sockets.into_iter().enumerate() {
        groups[n % args.threads].push(fd);
    }
    let mut handles = Vec::with_capacity(args.threads);
    for (t, group) in groups.into_iter().enumerate() {
        let quota = args.requests.map(|total| {
            total / args.threads as u64 + u64::from((t as u64) < total % args.threads as u64)
        });
        let plan = Plan {
            size: args.size,
            pipeline: args.pipeline,
            pool: Arc::clone(&pool),
            measure_start,
            measure_end,
            quota,
            seed: args.seed.wrapping_add(t as u64 + 1),
        };
        let worker = match Worker::new(plan, group) {
            Ok(worker) => worker,
            Err(err) => {
                eprintln!("echoload: cannot set up epoll: {err}");
                return ExitCode::from(2);
            }
        };
        let spawned = thread::Builder::new()
            .name(format!("echoload-{t}"))
            .spawn(move || worker.run());
        match spawned {
            Ok(handle) => handles.push(handle),
            Err(err) => {
                eprintln!("echoload: cannot start a worker thread: {err}");
                return ExitCode::from(2);
            }
        }
    }

    sleep_until(measure_start);
    let cpu_start = sample_cpu(args.server_pid);
    // In duration mode the window is fixed; sample at its end while the workers drain.
    let cpu_end_timed = measure_end.map(|end| {
        sleep_until(end);
        (sample_cpu(args.server_pid), Instant::now())
    });

    let mut latency_ns = new_histogram();
    let mut round_trips = 0u64;
    let mut errors = ErrorCounts::default();
    let mut first_error = None;
    let mut last_end = measure_start;
    for handle in handles {
        match handle.join() {
            Ok(report) => {
                latency_ns
                    .add(&report.latency_ns)
                    .expect("histograms share bounds");
                round_trips += report.round_trips;
                errors.merge(&report.errors);
                if first_error.is_none() {
                    first_error = report.first_error;
                }
                last_end = last_end.max(report.measure_end);
            }
            Err(_) => {
                eprintln!("echoload: a worker thread panicked");
                return ExitCode::from(3);
            }
        }
    }
    let (cpu_end, window_end) =
        cpu_end_timed.unwrap_or_else(|| (sample_cpu(args.server_pid), last_end));
    let window = window_end
        .saturating_duration_since(measure_start)
        .max(Duration::from_micros(1));

    let report = Report::new(
        &args,
        window,
        round_trips,
        &latency_ns,
        &cpu_start,
        &cpu_end,
    );
    let output = if args.json {
        report
            .json(&args, &errors, first_error.as_deref())
            .to_string()
            + "\n"
    } else {
        report.text(&args, &errors, first_error.as_deref())
    };
    // A closed stdout (e.g. `| head`) is reported, not a panic.
    if let Err(err) = io::stdout().lock().write_all(output.as_bytes()) {
        eprintln!("echoload: cannot write the report: {err}");
        return ExitCode::from(2);
    }
    if errors.total() > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

struct Report {
    window_s: f64,
    round_trips: u64,
    rps: f64,
    mb_per_s: f64,
    /// (label, microseconds)
    latency_us: Vec<(&'static str, f64)>,
    mean_us: f64,
    client_cpu_s: f64,
    server_cpu_s: Option<f64>,
    bottleneck: &'static str,
}

impl Report {
    fn new(
        args: &Args,
        window: Duration,
        round_trips: u64,
        latency_ns: &Histogram<u64>,
        start: &CpuSample,
        end: &CpuSample,
    ) -> Report {
        let window_s = window.as_secs_f64();
        let rps = round_trips as f64 / window_s;
        let us = |ns: u64| ns as f64 / 1000.0;
        let latency_us = if round_trips == 0 {
            Vec::new()
        } else {
            vec![
                ("p50", us(latency_ns.value_at_quantile(0.50))),
                ("p90", us(latency_ns.value_at_quantile(0.90))),
                ("p99", us(latency_ns.value_at_quantile(0.99))),
                ("p99.9", us(latency_ns.value_at_quantile(0.999))),
                ("max", us(latency_ns.max())),
            ]
        };
        let client_cpu_s = end.client.saturating_sub(start.client).as_secs_f64();
        let server_cpu_s = match (start.server, end.server) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64()),
            _ => None,
        };
        // Busy share of one core; the client's is per worker thread (each is one core's worth).
        let client_share = client_cpu_s / window_s / args.threads as f64;
        let server_share = server_cpu_s.map(|s| s / window_s);
        let bottleneck = match server_share {
            Some(server) if server >= 0.9 && server >= client_share => "server",
            _ if client_share >= 0.9 => "client",
            Some(_) => "neither (latency-bound)",
            None => "unknown (no --server-pid)",
        };
        Report {
            window_s,
            round_trips,
            rps,
            mb_per_s: rps * args.size as f64 / 1e6,
            latency_us,
            mean_us: latency_ns.mean() / 1000.0,
            client_cpu_s,
            server_cpu_s,
            bottleneck,
        }
    }

    /// The human-readable report.
    fn text(&self, args: &Args, errors: &ErrorCounts, first_error: Option<&str>) -> String {
        // Writing into a String cannot fail.
        let mut out = String::new();
        let mode = match args.requests {
            Some(n) => format!("{n} round trips"),
            None => format!("{:.2} s after {:.2} s warm-up", args.duration, args.warmup),
        };
        let _ = writeln!(
            out,
            "echoload: {} — {} connection(s) x {} in flight, {}-byte messages, {} thread(s), {mode}",
            args.target(),
            args.connections,
            args.pipeline,
            args.size,
            args.threads
        );
        let _ = writeln!(
            out,
            "  round trips   {} in {:.3} s",
            self.round_trips, self.window_s
        );
        let _ = writeln!(out, "  requests/s    {:.0}", self.rps);
        let _ = writeln!(out, "  throughput    {:.2} MB/s each way", self.mb_per_s);
        if self.latency_us.is_empty() {
            let _ = writeln!(out, "  latency       (no round trip completed)");
        } else {
            let parts: Vec<String> = self
                .latency_us
                .iter()
                .map(|(label, v)| format!("{label} {v:.1}"))
                .collect();
            let _ = writeln!(
                out,
                "  latency (µs)  {}  mean {:.1}",
                parts.join("  "),
                self.mean_us
            );
        }
        let _ = writeln!(out, "  errors        {}", errors.total());
        for ((_, name), count) in ERROR_KINDS.iter().zip(errors.0.iter()) {
            if *count > 0 {
                let _ = writeln!(out, "    {name:<14}{count}");
            }
        }
        if let Some(message) = first_error {
            let _ = writeln!(out, "    first: {message}");
        }
        let _ = writeln!(
            out,
            "  client CPU    {:.3} s ({:.0}% of {} core(s))",
            self.client_cpu_s,
            100.0 * self.client_cpu_s / self.window_s / args.threads as f64,
            args.threads
        );
        match self.server_cpu_s {
            Some(s) => writeln!(
                out,
                "  server CPU    {:.3} s ({:.0}% of one core), {:.2} µs per round trip",
                s,
                100.0 * s / self.window_s,
                self.server_us_per_round_trip().unwrap_or(f64::NAN)
            ),
            None => writeln!(out, "  server CPU    (pass --server-pid)"),
        }
        .ok();
        let _ = writeln!(out, "  bottleneck    {}", self.bottleneck);
        out
    }

    fn server_us_per_round_trip(&self) -> Option<f64> {
        let s = self.server_cpu_s?;
        (self.round_trips > 0).then(|| s * 1e6 / self.round_trips as f64)
    }

    fn json(
        &self,
        args: &Args,
        errors: &ErrorCounts,
        first_error: Option<&str>,
    ) -> serde_json::Value {
        let latency: serde_json::Map<String, serde_json::Value> = self
            .latency_us
            .iter()
            .map(|(label, v)| (label.replace('.', ""), serde_json::json!(v)))
            .chain(std::iter::once((
                "mean".to_string(),
                serde_json::json!(self.mean_us),
            )))
            .collect();
        let kinds: serde_json::Map<String, serde_json::Value> = ERROR_KINDS
            .iter()
            .zip(errors.0.iter())
            .map(|((_, name), count)| (name.to_string(), serde_json::json!(count)))
            .collect();
        serde_json::json!({
            "target": args.target(),
            "connections": args.connections,
            "size": args.size,
            "pipeline": args.pipeline,
            "threads": args.threads,
            "warmup_s": args.warmup,
            "window_s": self.window_s,
            "round_trips": self.round_trips,
            "requests_per_s": self.rps,
            "mb_per_s": self.mb_per_s,
            "latency_us": latency,
            "errors": errors.total(),
            "error_kinds": kinds,
            "first_error": first_error,
            "client_cpu_s": self.client_cpu_s,
            "client_cpu_share": self.client_cpu_s / self.window_s / args.threads as f64,
            "server_cpu_s": self.server_cpu_s,
            "server_cpu_share": self.server_cpu_s.map(|s| s / self.window_s),
            "server_cpu_us_per_round_trip": self.server_us_per_round_trip(),
            "bottleneck": self.bottleneck,
        })
    }
}
