//! Shared set-up of the criterion benches: one reactor per backend, loopback socket pairs.
//!
//! Each bench file includes this module, so not every helper is used by every bench.
#![allow(dead_code)]

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::OwnedFd;

use ringloop::{BackendChoice, Event, Options, Reactor};

/// Both backends, by the names the results are reported under.
pub const BACKENDS: [(&str, BackendChoice); 2] = [
    ("io_uring", BackendChoice::IoUring),
    ("epoll", BackendChoice::Epoll),
];

/// A single-thread reactor on exactly `backend` (no environment override), or `None` with a note
/// on stderr when that backend cannot run here, so the other backend is still measured.
pub fn reactor(name: &str, backend: BackendChoice) -> Option<Reactor> {
    let opts = Options {
        backend,
        honor_env: false,
        // Each bench polls its loop on one thread, as the C examples and the Python loop do:
        // io_uring then runs with SINGLE_ISSUER | DEFER_TASKRUN (epoll ignores it).
        single_thread: true,
        ..Options::default()
    };
    match Reactor::new(&opts) {
        Ok(reactor) => Some(reactor),
        Err(err) => {
            eprintln!("skipping the {name} backend: {err}");
            None
        }
    }
}

/// Whether criterion runs for real (`cargo bench` passes `--bench`) rather than in test mode
/// (`cargo test --benches`: every benchmark once), where big workloads are scaled down.
pub fn measuring() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// A connected, non-blocking, TCP_NODELAY loopback pair: (client, server side).
pub fn tcp_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?)?;
    let (server, _) = listener.accept()?;
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
    }
    Ok((client.into(), server.into()))
}

/// An event array for `poll`.
pub fn events(capacity: usize) -> Vec<Event> {
    vec![Event::default(); capacity]
}
