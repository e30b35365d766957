//! Helpers shared by the reactor test binaries (`reactor_suite.rs`, `fault_*.rs`): reactor
//! construction per backend, bounded polling, deterministic data, loopback pairs, and the macro
//! that instantiates a test for both backends.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ringloop::{BackendChoice, BackendKind, Event, Options, Reactor};

/// No test may hang: every wait is bounded by this.
pub const LIMIT: Duration = Duration::from_secs(60);

/// `RINGLOOP_TEST_SINGLE_THREAD=1` runs the tests with [`Options::single_thread`] set (the
/// io_uring ring then uses `SINGLE_ISSUER | DEFER_TASKRUN`); tests that use a reactor from a
/// second thread leave it off.
pub fn single_thread_from_env() -> bool {
    std::env::var_os("RINGLOOP_TEST_SINGLE_THREAD").is_some_and(|v| v == "1")
}

/// A reactor on `choice`, or `None` (with the reason printed) when io_uring is unavailable here.
pub fn make(choice: BackendChoice, opts: Options) -> Option<Reactor> {
    let opts = Options {
        backend: choice,
        single_thread: opts.single_thread || single_thread_from_env(),
        ..opts
    };
    match Reactor::new(&opts) {
        Ok(reactor) => {
            match choice {
                BackendChoice::IoUring => assert_eq!(reactor.backend(), BackendKind::IoUring),
                BackendChoice::Epoll => assert_eq!(reactor.backend(), BackendKind::Epoll),
                BackendChoice::Auto => {}
            }
            Some(reactor)
        }
        Err(err)
            if choice == BackendChoice::IoUring
                && err.kind() == std::io::ErrorKind::Unsupported =>
        {
            eprintln!("SKIPPED: io_uring backend unavailable on this kernel: {err}");
            None
        }
        Err(err) => panic!("Reactor::new({choice:?}) failed: {err}"),
    }
}

/// Polls until `handle` returns true for some batch; panics after [`LIMIT`].
pub fn poll_until(
    reactor: &mut Reactor,
    events: &mut [Event],
    mut handle: impl FnMut(&mut Reactor, &[Event]) -> bool,
) {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < LIMIT,
            "test did not finish within {LIMIT:?}"
        );
        let n = reactor
            .poll(Some(Duration::from_millis(200)), events)
            .expect("poll failed");
        let batch = events[..n].to_vec();
        if handle(reactor, &batch) {
            return;
        }
    }
}

/// Polls for `dur` and returns every event seen.
pub fn poll_for(reactor: &mut Reactor, dur: Duration) -> Vec<Event> {
    let mut events = [Event::default(); 64];
    let mut all = Vec::new();
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let n = reactor
            .poll(
                Some(end.saturating_duration_since(Instant::now())),
                &mut events,
            )
            .unwrap();
        all.extend_from_slice(&events[..n]);
    }
    all
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    (0..len).map(|_| rng.next() as u8).collect()
}

/// A small deterministic generator (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 8
    }
    /// Uniform-enough value in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A connected loopback pair: (reactor side, non-blocking; peer side, blocking).
pub fn tcp_pair() -> (OwnedFd, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (ours, _) = listener.accept().unwrap();
    ours.set_nonblocking(true).unwrap();
    (OwnedFd::from(ours), peer)
}

/// SO_LINGER 0: closing `stream` then sends RST (a peer reset) instead of FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid option value of the right size on a socket the test owns.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// Number of open fds of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Sets the soft fd limit (`RLIMIT_NOFILE`) of this process; returns the previous limits.
pub fn set_fd_limit(soft: u64) -> libc::rlimit {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut old), 0);
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &new), 0);
    }
    old
}

/// Puts back limits [`set_fd_limit`] returned.
pub fn restore_fd_limit(old: &libc::rlimit) {
    // SAFETY: restoring limits getrlimit returned.
    unsafe { assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, old), 0) };
}

/// The lowest fd number not in use.
pub fn lowest_free_fd() -> u64 {
    let probe = std::fs::File::open("/dev/null").unwrap();
    probe.as_raw_fd() as u64
}

/// Runs the ignored test `test_path` of this test binary alone in a child process with
/// `child_env=1` set, for bodies that change process-wide state (the fd limit); asserts that the
/// child succeeded and printed `marker`, and returns its stdout.
pub fn run_in_child(test_path: &str, child_env: &str, marker: &str) -> String {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            test_path,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(child_env, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.contains(marker),
        "child {test_path} failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Instantiates each listed `fn name(choice: BackendChoice)` as a test per backend:
/// `uring::name` and `epoll::name`.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(
                #[test]
                fn $name() {
                    super::$name(ringloop::BackendChoice::IoUring);
                }
            )*
        }
        mod epoll {
            $(
                #[test]
                fn $name() {
                    super::$name(ringloop::BackendChoice::Epoll);
                }
            )*
        }
    };
}
