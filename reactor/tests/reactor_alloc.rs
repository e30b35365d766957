//! Proves the steady-state hot path allocates nothing: an echo over loopback (recv into pool
//! buffers, send from caller memory, buffers recycled by the next poll, a timer per round trip)
//! runs under a counting global allocator, on both backends; once with multishot receives and once
//! with a one-shot `recv_once` per chunk (a small limit, so each message takes several). Its own test binary, so the counter
//! sees only this.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ringloop::{BackendChoice, Event, Options, Reactor};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Only the measuring thread counts: the test harness allocates on its own threads.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn note_allocation() {
    if COUNTING.with(|c| c.get()) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; counting has no effect on the memory.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const CLIENT_SEND: u64 = 1;
const CLIENT_RECV: u64 = 2;
const SERVER_SEND: u64 = 3;
const SERVER_RECV: u64 = 4;
const TICK: u64 = 5;
const MSG: usize = 100;
/// The recv_once limit: each 100-byte message arrives in at least four pieces.
const ONCE_MAX: u32 = 30;

/// How the echo receives.
#[derive(Clone, Copy, PartialEq)]
enum Recv {
    Multishot,
    /// One `recv_once` per chunk, started again after each of its events.
    Once,
}

/// Runs `rounds` echo round trips; returns how many completed. Allocation-free by construction on
/// the test's side: fixed arrays only.
fn echo_rounds(
    reactor: &mut Reactor,
    client: &OwnedFd,
    server: &OwnedFd,
    rounds: usize,
    round_base: usize,
    mode: Recv,
) {
    let mut events = [Event::default(); 16];
    let mut request = [0u8; MSG];
    let mut echo = [0u8; MSG];
    let mut echo_len = 0usize;
    let mut got_back = 0usize;
    for round in 0..rounds {
        let stamp = (round + round_base) as u8;
        request
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = stamp.wrapping_add(i as u8));
        // SAFETY: `request` is not touched until the client send's event (awaited below).
        unsafe { reactor.send(client.as_raw_fd(), request.as_ptr(), MSG, CLIENT_SEND) }.unwrap();
        reactor.add_timer(Reactor::now_ns(), TICK);
        let (mut client_sent, mut server_sent, mut ticked) = (false, false, false);
        got_back = 0;
        while !(client_sent && server_sent && ticked && got_back == MSG) {
            let n = reactor
                .poll(Some(Duration::from_secs(5)), &mut events)
                .unwrap();
            assert!(n > 0, "echo stalled");
            for ev in &events[..n] {
                match ev.token {
                    CLIENT_SEND => {
                        assert_eq!(ev.result, MSG as i32);
                        client_sent = true;
                    }
                    SERVER_RECV => {
                        if mode == Recv::Once {
                            assert!(ev.result > 0 && ev.result <= ONCE_MAX as i32);
                        }
                        let data = reactor.event_data(ev).unwrap();
                        echo[echo_len..echo_len + data.len()].copy_from_slice(data);
                        echo_len += data.len();
                        if echo_len == MSG {
                            // SAFETY: `echo` is not touched until the server send's event.
                            unsafe {
                                reactor.send(server.as_raw_fd(), echo.as_ptr(), MSG, SERVER_SEND)
                            }
                            .unwrap();
                        }
                        if mode == Recv::Once {
                            reactor
                                .recv_once(server.as_raw_fd(), ONCE_MAX, SERVER_RECV)
                                .unwrap();
                        }
                    }
                    SERVER_SEND => {
                        assert_eq!(ev.result, MSG as i32);
                        echo_len = 0;
                        server_sent = true;
                    }
                    CLIENT_RECV => {
                        let data = reactor.event_data(ev).unwrap();
                        assert_eq!(data, &request[got_back..got_back + data.len()]);
                        got_back += data.len();
                        if mode == Recv::Once {
                            reactor
                                .recv_once(client.as_raw_fd(), ONCE_MAX, CLIENT_RECV)
                                .unwrap();
                        }
                    }
                    TICK => ticked = true,
                    other => panic!("unexpected token {other}"),
                }
            }
        }
    }
    assert_eq!(got_back, MSG);
}

fn steady_state_allocates_nothing(choice: BackendChoice, mode: Recv) {
    let mut reactor = match Reactor::new(&Options {
        backend: choice,
        ..Options::default()
    }) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            eprintln!("SKIPPED {choice:?}: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    client.set_nonblocking(true).unwrap();
    server.set_nonblocking(true).unwrap();
    client.set_nodelay(true).unwrap();
    server.set_nodelay(true).unwrap();
    let (client, server) = (OwnedFd::from(client), OwnedFd::from(server));
    match mode {
        Recv::Multishot => {
            reactor.recv_multi(client.as_raw_fd(), CLIENT_RECV).unwrap();
            reactor.recv_multi(server.as_raw_fd(), SERVER_RECV).unwrap();
        }
        Recv::Once => {
            reactor
                .recv_once(client.as_raw_fd(), ONCE_MAX, CLIENT_RECV)
                .unwrap();
            reactor
                .recv_once(server.as_raw_fd(), ONCE_MAX, SERVER_RECV)
                .unwrap();
        }
    }
    // Warm-up: lets every internal table reach its steady-state capacity.
    echo_rounds(&mut reactor, &client, &server, 200, 0, mode);
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    echo_rounds(&mut reactor, &client, &server, 2000, 200, mode);
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(
        allocations,
        0,
        "{choice:?}: {allocations} heap allocations in 2000 steady-state echo round trips ({})",
        if mode == Recv::Once {
            "recv_once"
        } else {
            "multishot recv"
        }
    );
}

#[test]
fn steady_state_echo_allocates_nothing_on_either_backend() {
    // The counter itself works.
    ALLOCATIONS.store(0, Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    let boxed = std::hint::black_box(Box::new(7u64));
    COUNTING.with(|c| c.set(false));
    drop(boxed);
    assert_eq!(ALLOCATIONS.load(Ordering::Relaxed), 1);
    for mode in [Recv::Multishot, Recv::Once] {
        steady_state_allocates_nothing(BackendChoice::IoUring, mode);
        steady_state_allocates_nothing(BackendChoice::Epoll, mode);
    }
}
