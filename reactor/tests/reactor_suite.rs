//! The reactor test suite, written once and instantiated per backend (`mod uring`, `mod epoll`).
//! io_uring tests skip (saying why) only when the kernel cannot run the io_uring backend. A few
//! tests at the end use the default backend, so `RINGLOOP_BACKEND=epoll cargo test` exercises the
//! environment override.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, SockaddrStorage};
use ringloop::{
    flags, BackendChoice, BackendKind, Event, Interest, OpId, Options, Reactor, TimerId,
};

mod support;

use support::{
    lowest_free_fd, make, poll_for, poll_until, random_bytes, restore_fd_limit, run_in_child,
    set_fd_limit, set_linger_zero, tcp_pair, LIMIT,
};

const WAKE: u64 = u64::MAX;

fn listener() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    listener
}

fn nonblocking_tcp_socket() -> OwnedFd {
    socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap()
}

fn sockaddr(addr: SocketAddr) -> SockaddrStorage {
    SockaddrStorage::from(addr)
}

fn fd_flags(fd: RawFd) -> (i32, i32) {
    // SAFETY: fcntl queries on an fd the test owns.
    unsafe {
        (
            libc::fcntl(fd, libc::F_GETFL),
            libc::fcntl(fd, libc::F_GETFD),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Echo: >= 200 concurrent connections, 1 byte .. 1 MiB, byte-exact.

const LISTEN: u64 = 1 << 40;
const S_RECV: u64 = 2 << 40;
const S_SEND: u64 = 3 << 40;
const S_CLOSE: u64 = 4 << 40;
const C_CONNECT: u64 = 5 << 40;
const C_SEND: u64 = 6 << 40;
const C_RECV: u64 = 7 << 40;
const C_CLOSE: u64 = 8 << 40;
const ROLE: u64 = 0xff << 40;
const INDEX: u64 = (1 << 40) - 1;

struct ServerConn {
    fd: Option<OwnedFd>,
    /// Echo chunks in flight, oldest first (sends on one fd complete in order).
    sending: VecDeque<Vec<u8>>,
    eof: bool,
}

struct ClientConn {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
    received: Vec<u8>,
    sent: bool,
    closed: bool,
}

fn echo_many(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    const CONNS: usize = 200;
    const SIZES: [usize; 10] = [1, 7, 100, 1500, 4096, 16384, 16385, 65536, 200_000, 1 << 20];
    let listener = listener();
    let addr = sockaddr(listener.local_addr().unwrap());
    reactor.accept_multi(listener.as_raw_fd(), LISTEN).unwrap();
    let mut clients: Vec<ClientConn> = (0..CONNS)
        .map(|i| ClientConn {
            fd: Some(nonblocking_tcp_socket()),
            data: random_bytes(SIZES[i % SIZES.len()], i as u64),
            received: Vec::new(),
            sent: false,
            closed: false,
        })
        .collect();
    for (i, client) in clients.iter().enumerate() {
        reactor
            .connect(
                client.fd.as_ref().unwrap().as_raw_fd(),
                &addr,
                C_CONNECT | i as u64,
            )
            .unwrap();
    }
    let mut servers: Vec<ServerConn> = Vec::new();
    let mut server_closed = 0;
    let mut events = vec![Event::default(); 64];
    poll_until(&mut reactor, &mut events, |reactor, batch| {
        for ev in batch {
            let index = (ev.token & INDEX) as usize;
            match ev.token & ROLE {
                LISTEN => {
                    assert!(ev.result >= 0, "accept failed: {}", ev.result);
                    // SAFETY: a fresh fd from accept, owned by the test.
                    let fd = unsafe { OwnedFd::from_raw_fd(ev.result) };
                    let id = servers.len() as u64;
                    reactor.recv_multi(fd.as_raw_fd(), S_RECV | id).unwrap();
                    servers.push(ServerConn {
                        fd: Some(fd),
                        sending: VecDeque::new(),
                        eof: false,
                    });
                }
                S_RECV => {
                    let conn = &mut servers[index];
                    if ev.result == 0 {
                        assert_eq!(ev.flags & flags::MORE, 0);
                        conn.eof = true;
                    } else {
                        assert!(ev.result > 0, "server recv failed: {}", ev.result);
                        assert_ne!(ev.flags & flags::MORE, 0);
                        let chunk = reactor.event_data(ev).unwrap().to_vec();
                        assert_eq!(chunk.len(), ev.result as usize);
                        conn.sending.push_back(chunk);
                        let chunk = conn.sending.back().unwrap();
                        let fd = conn.fd.as_ref().unwrap().as_raw_fd();
                        // SAFETY: the chunk's heap storage stays in `sending` until its event.
                        unsafe {
                            reactor.send(fd, chunk.as_ptr(), chunk.len(), S_SEND | index as u64)
                        }
                        .unwrap();
                    }
                }
                S_SEND => {
                    let conn = &mut servers[index];
                    let chunk = conn.sending.pop_front().expect("send event without a send");
                    assert_eq!(ev.result, chunk.len() as i32, "short or failed echo send");
                }
                S_CLOSE => {
                    assert_eq!(ev.result, 0);
                    server_closed += 1;
                }
                C_CONNECT => {
                    assert_eq!(ev.result, 0, "connect failed");
                    let client = &mut clients[index];
                    let fd = client.fd.as_ref().unwrap().as_raw_fd();
                    reactor.recv_multi(fd, C_RECV | index as u64).unwrap();
                    // SAFETY: `data` is never touched until the connection is done.
                    unsafe {
                        reactor.send(
                            fd,
                            client.data.as_ptr(),
                            client.data.len(),
                            C_SEND | index as u64,
                        )
                    }
                    .unwrap();
                }
                C_SEND => {
                    let client = &mut clients[index];
                    assert_eq!(
                        ev.result,
                        client.data.len() as i32,
                        "client send incomplete"
                    );
                    client.sent = true;
                }
                C_RECV => {
                    let client = &mut clients[index];
                    assert!(ev.result > 0, "client recv ended early: {}", ev.result);
                    client
                        .received
                        .extend_from_slice(reactor.event_data(ev).unwrap());
                    assert!(
                        client.received.len() <= client.data.len(),
                        "echo longer than request"
                    );
                    if client.received.len() == client.data.len() {
                        assert!(
                            client.received == client.data,
                            "echo differs from request on connection {index}"
                        );
                        reactor
                            .close(client.fd.take().unwrap(), C_CLOSE | index as u64)
                            .unwrap();
                    }
                }
                C_CLOSE => {
                    assert_eq!(ev.result, 0);
                    clients[index].closed = true;
                }
                _ => panic!("unexpected event {ev:?}"),
            }
        }
        for (id, conn) in servers.iter_mut().enumerate() {
            if conn.eof && conn.sending.is_empty() {
                if let Some(fd) = conn.fd.take() {
                    reactor.close(fd, S_CLOSE | id as u64).unwrap();
                }
            }
        }
        server_closed == CONNS && clients.iter().all(|c| c.closed && c.sent)
    });
    assert_eq!(servers.len(), CONNS);
    // Only the listener's accept is left.
    assert_eq!(reactor.pending(), 1);
}

// ---------------------------------------------------------------------------------------------

fn timers_fire_in_order(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let start = Reactor::now_ns();
    let mut deadlines = HashMap::new();
    let mut ids: Vec<(u64, TimerId)> = Vec::new();
    for token in 0..200u64 {
        // 1..60 ms, scrambled, with repeats.
        let deadline = start + 1_000_000 + (token * 7_919 % 59) * 1_000_000;
        deadlines.insert(token, deadline);
        ids.push((token, reactor.add_timer(deadline, token)));
    }
    let mut cancelled = HashSet::new();
    for &(token, id) in ids.iter().filter(|(t, _)| t % 3 == 0) {
        assert!(reactor.cancel_timer(id));
        assert!(
            !reactor.cancel_timer(id),
            "cancelling twice is harmless and reports false"
        );
        cancelled.insert(token);
    }
    assert_eq!(reactor.pending(), 200 - cancelled.len());
    let mut fired = Vec::new();
    let mut events = [Event::default(); 7];
    poll_until(&mut reactor, &mut events, |_, batch| {
        let now = Reactor::now_ns();
        for ev in batch {
            assert_eq!(ev.result, 0);
            assert!(
                deadlines[&ev.token] <= now,
                "timer fired before its deadline"
            );
            assert!(!cancelled.contains(&ev.token), "cancelled timer fired");
            fired.push(ev.token);
        }
        fired.len() == 200 - cancelled.len()
    });
    for pair in fired.windows(2) {
        assert!(
            deadlines[&pair[0]] <= deadlines[&pair[1]],
            "timers out of deadline order"
        );
    }
    assert_eq!(
        fired.iter().collect::<HashSet<_>>().len(),
        fired.len(),
        "a timer fired twice"
    );
    for (_, id) in ids {
        assert!(
            !reactor.cancel_timer(id),
            "fired/cancelled timer ids are stale"
        );
    }
    assert!(poll_for(&mut reactor, Duration::from_millis(20)).is_empty());
    assert_eq!(reactor.pending(), 0);
}

fn timer_bounds_poll_timeout(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let deadline = Reactor::now_ns() + 30_000_000;
    reactor.add_timer(deadline, 9);
    let mut events = [Event::default(); 4];
    // Waits "forever", but the timer bounds the wait.
    let n = reactor.poll(None, &mut events).unwrap();
    let n = if n == 0 {
        reactor.poll(None, &mut events).unwrap()
    } else {
        n
    };
    assert_eq!(n, 1);
    assert_eq!(events[0].token, 9);
    assert!(Reactor::now_ns() >= deadline);
    // Nothing pending, zero timeout: returns at once with nothing.
    assert_eq!(reactor.poll(Some(Duration::ZERO), &mut events).unwrap(), 0);
}

fn wakes_from_threads(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    const THREADS: u64 = 8;
    const WAKES: u64 = 100_000;
    let counter = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let waker = reactor.waker();
            let counter = counter.clone();
            std::thread::spawn(move || {
                for _ in 0..WAKES {
                    counter.fetch_add(1, Ordering::Relaxed);
                    waker.wake();
                }
            })
        })
        .collect();
    let mut wake_events = 0u64;
    let mut events = [Event::default(); 8];
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < LIMIT);
        // A lost wake would leave this waiting for the whole second with increments unseen.
        let n = reactor
            .poll(Some(Duration::from_secs(10)), &mut events)
            .unwrap();
        assert!(
            n > 0 || counter.load(Ordering::Relaxed) == THREADS * WAKES,
            "a wake was lost"
        );
        assert!(
            n <= 1,
            "wakes between two polls must coalesce into one event"
        );
        for ev in &events[..n] {
            assert_eq!(
                *ev,
                Event {
                    token: WAKE,
                    result: 0,
                    flags: 0,
                    aux: 0
                }
            );
            wake_events += 1;
        }
        if counter.load(Ordering::Relaxed) == THREADS * WAKES
            && threads.iter().all(|t| t.is_finished())
        {
            break;
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    assert!((1..=THREADS * WAKES).contains(&wake_events));
    // Drain whatever the last wakes left: at most one event, then silence.
    let rest = poll_for(&mut reactor, Duration::from_millis(20));
    assert!(rest.len() <= 1);
    assert!(poll_for(&mut reactor, Duration::from_millis(20)).is_empty());
    // A later wake still works.
    reactor.waker().wake();
    reactor.waker().wake();
    let seen = poll_for(&mut reactor, Duration::from_millis(30));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].token, WAKE);
}

fn custom_wake_token(choice: BackendChoice) {
    let Some(mut reactor) = make(
        choice,
        Options {
            wake_token: 77,
            ..Options::default()
        },
    ) else {
        return;
    };
    let waker = reactor.waker();
    std::thread::spawn(move || waker.wake()).join().unwrap();
    let mut events = [Event::default(); 4];
    let n = reactor
        .poll(Some(Duration::from_secs(5)), &mut events)
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(events[0].token, 77);
}

fn signal_delivered(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let op = reactor.add_signal(libc::SIGUSR1, 5).unwrap();
    for round in 0..3 {
        // raise() targets this thread, which the reactor blocked the signal in.
        // SAFETY: plain libc call; the signal is blocked here, so no handler runs.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR1) }, 0);
        let mut events = [Event::default(); 4];
        poll_until(&mut reactor, &mut events, |_, batch| {
            for ev in batch {
                assert_eq!(ev.token, 5);
                assert_eq!(ev.result, libc::SIGUSR1, "round {round}");
                assert_ne!(ev.flags & flags::MORE, 0);
            }
            !batch.is_empty()
        });
    }
    reactor.cancel(op).unwrap();
    assert_eq!(reactor.pending(), 0);
    assert!(reactor.cancel(op).is_err());
    assert!(reactor.add_signal(0, 1).is_err());
    assert!(reactor.add_signal(libc::SIGKILL, 1).is_err());
}

fn accept_storm(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    const CLIENTS: usize = 400;
    let listener = listener();
    let addr = listener.local_addr().unwrap();
    reactor.accept_multi(listener.as_raw_fd(), 1).unwrap();
    let connector = std::thread::spawn(move || {
        (0..CLIENTS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect::<Vec<_>>()
    });
    let mut accepted = Vec::new();
    let mut events = [Event::default(); 32];
    poll_until(&mut reactor, &mut events, |_, batch| {
        for ev in batch {
            assert_eq!(ev.token, 1);
            assert!(ev.result >= 0, "accept failed: {}", ev.result);
            assert_ne!(ev.flags & flags::MORE, 0);
            let (status, fd_flags) = fd_flags(ev.result);
            assert_ne!(
                status & libc::O_NONBLOCK,
                0,
                "accepted fd must be non-blocking"
            );
            assert_ne!(
                fd_flags & libc::FD_CLOEXEC,
                0,
                "accepted fd must be close-on-exec"
            );
            // SAFETY: fresh fd from accept.
            accepted.push(unsafe { OwnedFd::from_raw_fd(ev.result) });
        }
        accepted.len() == CLIENTS
    });
    let clients = connector.join().unwrap();
    assert_eq!(clients.len(), CLIENTS);
    assert_eq!(reactor.cancel_token(1), 1);
    // A connection made after the cancel is not accepted by the reactor.
    let _late = TcpStream::connect(addr).unwrap();
    assert!(poll_for(&mut reactor, Duration::from_millis(50)).is_empty());
}

fn peer_reset_mid_stream(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    reactor.recv_multi(ours.as_raw_fd(), 3).unwrap();
    peer.write_all(b"first").unwrap();
    let mut got = Vec::new();
    let mut events = [Event::default(); 8];
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            assert!(ev.result > 0);
            got.extend_from_slice(r.event_data(ev).unwrap());
        }
        got.len() == 5
    });
    assert_eq!(got, b"first");
    // SO_LINGER 0 + close sends RST.
    set_linger_zero(&peer);
    drop(peer);
    let mut final_result = None;
    poll_until(&mut reactor, &mut events, |_, batch| {
        for ev in batch {
            assert_eq!(ev.token, 3);
            assert!(final_result.is_none(), "event after the final one");
            if ev.flags & flags::MORE == 0 {
                final_result = Some(ev.result);
            }
        }
        final_result.is_some()
    });
    assert_eq!(final_result, Some(-libc::ECONNRESET));
    assert_eq!(reactor.pending(), 0);
    // The loop is fine afterwards.
    reactor.add_timer(Reactor::now_ns(), 4);
    let n = reactor
        .poll(Some(Duration::from_secs(1)), &mut events)
        .unwrap();
    assert_eq!((n, events[0].token), (1, 4));
}

/// Closes `old` and puts a fresh socket (readable: one byte queued) under its fd number in one
/// atomic `dup2`, as when the caller closes an fd and the number is reused (atomically, so that no
/// other test thread can take the number in between). Returns the new fd and its peer.
fn replace_with_new_socket(old: OwnedFd) -> (OwnedFd, UnixStream) {
    let (fresh, mut peer) = UnixStream::pair().unwrap();
    peer.write_all(b"x").unwrap();
    let target = old.into_raw_fd();
    // SAFETY: `target` was ours (taken from `old`); dup2 closes what it named and makes it a
    // second fd for `fresh`'s socket, owned by the new OwnedFd alone.
    let fd = unsafe { OwnedFd::from_raw_fd(libc::dup2(fresh.as_raw_fd(), target)) };
    assert_eq!(fd.as_raw_fd(), target);
    (fd, peer)
}

fn watched_fd_closed_by_caller(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (a, b) = UnixStream::pair().unwrap();
    let op = reactor.watch(a.as_raw_fd(), Interest::READABLE, 1).unwrap();
    drop(b);
    // The caller closes the fd, the number is reused by a new socket, the old watch is removed.
    let (watched, _peer) = replace_with_new_socket(OwnedFd::from(a));
    reactor.cancel(op).unwrap();
    reactor
        .watch(watched.as_raw_fd(), Interest::READABLE, 2)
        .unwrap();
    let seen = poll_for(&mut reactor, Duration::from_millis(50));
    assert!(!seen.is_empty(), "the new watch must report readiness");
    assert!(
        seen.iter().all(|ev| ev.token == 2),
        "event for a removed watch: {seen:?}"
    );
    // Closing a watched fd without removing the watch does not crash the loop either.
    let (e, f) = UnixStream::pair().unwrap();
    reactor.watch(e.as_raw_fd(), Interest::BOTH, 3).unwrap();
    drop(f);
    let _ = poll_for(&mut reactor, Duration::from_millis(20));
    // A new socket under that fd number, watched while the stale watch still exists, is seen.
    let (g, _h) = replace_with_new_socket(OwnedFd::from(e));
    let _ = poll_for(&mut reactor, Duration::from_millis(20));
    reactor.watch(g.as_raw_fd(), Interest::READABLE, 6).unwrap();
    let seen = poll_for(&mut reactor, Duration::from_millis(50));
    assert!(
        seen.iter().any(|ev| ev.token == 6),
        "watch on a reused fd number never fired"
    );
    // The stale watch either still exists (epoll dropped the closed file from its set; it now sees
    // the new socket, which is the caller's bug to avoid) or already ended with an error event
    // (io_uring re-armed it on a closed fd number): both are fine.
    assert!(reactor.cancel_token(3) <= 1);
    let _ = poll_for(&mut reactor, Duration::from_millis(20));
}

fn reader_and_writer_watches(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (a, mut b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let _reader = reactor.watch(a.as_raw_fd(), Interest::READABLE, 1).unwrap();
    let writer = reactor.watch(a.as_raw_fd(), Interest::WRITABLE, 2).unwrap();
    let mut events = [Event::default(); 8];
    // Writable, not readable; level-triggered: reported on every poll, once per poll.
    for _ in 0..3 {
        let n = reactor
            .poll(Some(Duration::from_secs(1)), &mut events)
            .unwrap();
        assert_eq!(n, 1, "{:?}", &events[..n]);
        assert_eq!(
            (events[0].token, events[0].result),
            (2, Interest::WRITABLE.bits() as i32)
        );
        assert_ne!(events[0].flags & flags::MORE, 0);
    }
    b.write_all(b"ping").unwrap();
    for _ in 0..3 {
        let n = reactor
            .poll(Some(Duration::from_secs(1)), &mut events)
            .unwrap();
        let mut tokens: Vec<_> = events[..n].iter().map(|e| (e.token, e.result)).collect();
        tokens.sort();
        assert_eq!(
            tokens,
            vec![(1, 1), (2, 2)],
            "both watches, once each, while the data is unread"
        );
    }
    reactor.cancel(writer).unwrap();
    for _ in 0..2 {
        let n = reactor
            .poll(Some(Duration::from_secs(1)), &mut events)
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(events[0].token, 1);
    }
    let mut buf = [0u8; 4];
    (&a).read_exact(&mut buf).unwrap();
    assert!(
        poll_for(&mut reactor, Duration::from_millis(30)).is_empty(),
        "drained fd must go quiet"
    );
    // Hang-up is reported to readers.
    drop(b);
    let n = reactor
        .poll(Some(Duration::from_secs(1)), &mut events)
        .unwrap();
    assert_eq!((n, events[0].token, events[0].result), (1, 1, 1));
}

fn pool_exhaustion_loses_nothing(choice: BackendChoice, events_len: usize) {
    // Four 512-byte buffers against a multi-megabyte stream: the pool runs dry constantly.
    let opts = Options {
        buffer_size: 512,
        buffer_count: 4,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    assert_eq!(reactor.buffer_region().1, 512);
    assert_eq!(reactor.buffer_region().2, 4);
    let (ours, mut peer) = tcp_pair();
    let data = random_bytes(3 << 20, 42);
    let expected = data.clone();
    let writer = std::thread::spawn(move || {
        peer.write_all(&data).unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        peer
    });
    reactor.recv_multi(ours.as_raw_fd(), 8).unwrap();
    let mut received = Vec::with_capacity(expected.len());
    let mut events = vec![Event::default(); events_len];
    let (base, size, count) = reactor.buffer_region();
    poll_until(&mut reactor, &mut events, |r, batch| {
        let mut done = false;
        for ev in batch {
            assert_eq!(ev.token, 8);
            assert!(
                ev.result >= 0,
                "recv failed: {} (ENOBUFS must never reach the caller)",
                ev.result
            );
            if ev.result == 0 {
                assert_eq!(ev.flags & flags::MORE, 0);
                done = true;
                continue;
            }
            assert_ne!(ev.flags & flags::BUFFER, 0);
            assert!((ev.aux as usize) < count);
            let data = r.event_data(ev).unwrap();
            // The region is the same memory event_data returns.
            assert_eq!(data.as_ptr(), base.wrapping_add(ev.aux as usize * size));
            received.extend_from_slice(data);
        }
        done
    });
    writer.join().unwrap();
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "bytes differ");
}

/// Large messages, one after another, cycle through a few warm buffers, not the whole pool: the
/// io_uring ring offers only part of the pool while receives are large, and epoll lends its most
/// recently used free buffers first. Every byte still arrives, in order.
fn large_receives_reuse_a_few_buffers(choice: BackendChoice) {
    let opts = Options {
        buffer_size: 64 * 1024,
        buffer_count: 64,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    reactor.recv_multi(ours.as_raw_fd(), 1).unwrap();
    let mut events = vec![Event::default(); 64];
    let mut ids = HashSet::new();
    // The first messages drain the buffers a new io_uring ring starts with (all of them); the
    // last 100 show which buffers the reactor keeps using.
    for i in 0..200u32 {
        let message: Vec<u8> = (0..100_000u32).map(|j| (i * 7 + j / 997) as u8).collect();
        peer.write_all(&message).unwrap();
        let mut received = Vec::with_capacity(message.len());
        poll_until(&mut reactor, &mut events, |r, batch| {
            for ev in batch {
                assert_eq!(ev.token, 1);
                assert!(ev.result > 0, "recv failed: {}", ev.result);
                if i >= 100 {
                    ids.insert(ev.aux);
                }
                received.extend_from_slice(r.event_data(ev).unwrap());
            }
            received.len() >= message.len()
        });
        assert!(received == message, "message {i} arrived changed");
    }
    assert!(
        ids.len() <= 24,
        "100 messages of 100 KB went through {} of 64 buffers",
        ids.len()
    );
}

/// A multishot receive reads a pipe: byte-exact to its end of stream through a small pool, with
/// the read end blocking or not (neither may block the loop), and with the receive cancelled and
/// started again halfway (bytes it had taken come first).
fn pipes_are_received_from(choice: BackendChoice) {
    for nonblocking in [true, false] {
        let opts = Options {
            buffer_size: 4096,
            buffer_count: 8,
            ..Options::default()
        };
        let Some(mut reactor) = make(choice, opts) else {
            return;
        };
        let flags = if nonblocking {
            nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK
        } else {
            nix::fcntl::OFlag::O_CLOEXEC
        };
        let (rx, tx) = nix::unistd::pipe2(flags).unwrap();
        let _ = nix::fcntl::fcntl(
            &tx,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        );
        let fd = rx.as_raw_fd();
        // Bytes already in the pipe come with the first poll, which must not wait for more.
        nix::unistd::write(&tx, b"first").unwrap();
        let mut op = reactor.recv_multi(fd, 1).unwrap();
        let mut events = [Event::default(); 16];
        let n = reactor
            .poll(Some(Duration::from_secs(20)), &mut events)
            .unwrap();
        if choice == BackendChoice::IoUring && n == 1 && events[0].result == -libc::ENOTSOCK {
            eprintln!("SKIPPED: this kernel's io_uring cannot read pipes (no READ_MULTISHOT)");
            return;
        }
        assert_eq!(n, 1, "{:?}", &events[..n]);
        assert_eq!(events[0].flags, flags::MORE | flags::BUFFER);
        assert_eq!(reactor.event_data(&events[0]).unwrap(), b"first");

        let sent = random_bytes(1 << 20, 11);
        let to_send = sent.clone();
        let writer = std::thread::spawn(move || {
            let mut tx = std::fs::File::from(tx);
            for (i, chunk) in to_send.chunks(10_007).enumerate() {
                tx.write_all(chunk).unwrap();
                if i % 16 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            // Dropping the write end is the reader's end of stream.
        });
        let mut received = Vec::new();
        let mut restarted = false;
        let mut ended = false;
        poll_until(&mut reactor, &mut events, |r, batch| {
            for ev in batch {
                assert_eq!(ev.token, 1);
                assert!(!ended, "an event after the end of stream: {ev:?}");
                if ev.result == 0 {
                    assert_eq!(ev.flags, 0, "{ev:?}");
                    ended = true;
                    continue;
                }
                assert!(ev.result > 0, "reading the pipe failed: {ev:?}");
                assert_eq!(ev.flags, flags::MORE | flags::BUFFER, "{ev:?}");
                received.extend_from_slice(r.event_data(ev).unwrap());
            }
            if !restarted && received.len() >= sent.len() / 2 {
                restarted = true;
                r.cancel(op).unwrap();
                op = r.recv_multi(fd, 1).unwrap();
                // Bytes the cancelled receive had taken but not delivered yet come first
                // through the new one.
                return false;
            }
            ended
        });
        writer.join().unwrap();
        assert_eq!(received.len(), sent.len(), "nonblocking: {nonblocking}");
        assert!(received == sent, "the pipe's bytes arrived changed");
        assert_eq!(reactor.pending(), 0);
    }
}

/// A datagram receive: every datagram once, byte-exact, with its sender's address, through a small
/// pool; empty and exactly-fitting datagrams; one too long for the buffer is cut short and says
/// so; an ICMP error on a connected socket ends the receive; bad fds and sockets are refused.
fn datagrams_are_received_with_their_senders(choice: BackendChoice) {
    use ringloop::datagram;
    use std::net::UdpSocket;

    let size = 4096;
    let opts = Options {
        buffer_size: size as u32,
        buffer_count: 8,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let senders = [
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    ];
    let op = reactor.recvmsg_multi(server.as_raw_fd(), 9).unwrap();
    let room = size - datagram::PAYLOAD;
    let lengths = [0, 1, 100, room, room + 904];
    let mut events = [Event::default(); 16];
    for round in 0..40usize {
        // A burst of 8 (the pool's size), each from either sender, received before the next.
        let mut expected = Vec::new();
        for i in 0..8usize {
            let len = lengths[(round + i) % lengths.len()];
            let payload = random_bytes(len, (round * 8 + i) as u64);
            let sender = &senders[i % 2];
            sender
                .send_to(&payload, server.local_addr().unwrap())
                .unwrap();
            expected.push((sender.local_addr().unwrap().port(), payload));
        }
        let mut got = Vec::new();
        poll_until(&mut reactor, &mut events, |r, batch| {
            for ev in batch {
                assert_eq!(ev.token, 9);
                let all = flags::MORE | flags::BUFFER | flags::DATAGRAM;
                assert_eq!(ev.flags, all, "{ev:?}");
                let source = r.event_source(ev).unwrap();
                // A sockaddr_in: family, then the port in network order.
                assert_eq!(source.len(), std::mem::size_of::<libc::sockaddr_in>());
                assert_eq!(
                    u16::from_ne_bytes([source[0], source[1]]),
                    libc::AF_INET as u16
                );
                let port = u16::from_be_bytes([source[2], source[3]]);
                let header = region_bytes(r, ev.aux as u32, datagram::PAYLOAD);
                let word = |at: usize| u32::from_ne_bytes(header[at..at + 4].try_into().unwrap());
                got.push((
                    port,
                    r.event_data(ev).unwrap().to_vec(),
                    word(datagram::PAYLOAD_LEN) as usize,
                    word(datagram::MSG_FLAGS) as i32 & libc::MSG_TRUNC != 0,
                ));
            }
            got.len() >= expected.len()
        });
        for ((port, payload), (got_port, data, full, truncated)) in expected.iter().zip(&got) {
            assert_eq!(port, got_port, "the sender's port");
            assert_eq!(*full, payload.len(), "the datagram's full length");
            assert_eq!(*truncated, payload.len() > room);
            assert!(
                data[..] == payload[..payload.len().min(room)],
                "round {round}: payload"
            );
        }
    }
    reactor.cancel(op).unwrap();
    assert_eq!(reactor.pending(), 0);

    // A connected socket whose peer is gone: the ICMP error ends the receive.
    let gone = UdpSocket::bind("127.0.0.1:0").unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.set_nonblocking(true).unwrap();
    client.connect(gone_addr).unwrap();
    reactor.recvmsg_multi(client.as_raw_fd(), 10).unwrap();
    client.send(b"anyone?").unwrap();
    let mut last = None;
    poll_until(&mut reactor, &mut events, |_, batch| {
        last = batch.last().copied();
        last.is_some()
    });
    let last = last.unwrap();
    assert_eq!(
        (last.token, last.result, last.flags),
        (10, -libc::ECONNREFUSED, 0)
    );
    assert_eq!(reactor.pending(), 0);

    // What cannot receive datagrams.
    let stream = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = |r: &mut Reactor, fd: RawFd| r.recvmsg_multi(fd, 11).unwrap_err().raw_os_error();
    assert_eq!(
        refused(&mut reactor, stream.as_raw_fd()),
        Some(libc::EOPNOTSUPP)
    );
    let (rx, _tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    assert_eq!(refused(&mut reactor, rx.as_raw_fd()), Some(libc::ENOTSOCK));
    assert_eq!(refused(&mut reactor, -1), Some(libc::EBADF));
    let tiny = Options {
        buffer_size: datagram::PAYLOAD as u32,
        buffer_count: 2,
        ..Options::default()
    };
    let mut tiny = make(choice, tiny).unwrap();
    assert_eq!(refused(&mut tiny, server.as_raw_fd()), Some(libc::EINVAL));
    assert_eq!(reactor.pending(), 0);
}

/// Reads `count` datagrams from `socket` on a thread of its own (blocking, 5 s at most each).
fn read_datagrams(
    socket: std::os::unix::net::UnixDatagram,
    count: usize,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 1024];
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        while got.len() < count {
            let n = socket.recv(&mut buf).unwrap();
            got.push(buf[..n].to_vec());
        }
        got
    })
}

/// Datagram sends: a burst to two receivers, all in flight at once, arrives whole, in call order,
/// from the sender's address, one final event each with the byte count (empty datagrams too);
/// a connected socket sends to its peer without an address; a peer that cannot keep up holds the
/// sends back without losing one; errors come as events or at submission; cancel and close
/// leave exactly one final event per send.
fn datagrams_are_sent_to_their_addresses(choice: BackendChoice) {
    use std::net::UdpSocket;
    use std::os::unix::net::UnixDatagram;

    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.set_nonblocking(true).unwrap();
    let receivers = [
        UdpSocket::bind("127.0.0.1:0").unwrap(),
        UdpSocket::bind("127.0.0.1:0").unwrap(),
    ];
    let addrs: Vec<SockaddrStorage> = receivers
        .iter()
        .map(|r| SockaddrStorage::from(r.local_addr().unwrap()))
        .collect();
    let mut events = [Event::default(); 64];
    for round in 0..3u64 {
        let payloads: Vec<Vec<u8>> = (0..64u64)
            .map(|i| random_bytes(((i * 37 + round * 11) % 1400) as usize, round * 64 + i))
            .collect();
        for (i, payload) in payloads.iter().enumerate() {
            // SAFETY: `payloads` outlives every send's final event (all collected below).
            unsafe {
                reactor.send_to(
                    sender.as_raw_fd(),
                    payload.as_ptr(),
                    payload.len(),
                    Some(&addrs[i % 2]),
                    i as u64,
                )
            }
            .unwrap();
        }
        let mut results = vec![None; payloads.len()];
        let mut done = 0;
        poll_until(&mut reactor, &mut events, |_, batch| {
            for ev in batch {
                assert_eq!(ev.flags, 0, "one final event: {ev:?}");
                let slot = &mut results[ev.token as usize];
                assert!(slot.is_none(), "a second event for send {}", ev.token);
                *slot = Some(ev.result);
                done += 1;
            }
            done == payloads.len()
        });
        for (i, payload) in payloads.iter().enumerate() {
            assert_eq!(results[i], Some(payload.len() as i32), "send {i}");
        }
        assert_eq!(reactor.pending(), 0);
        let mut buf = vec![0u8; 2048];
        for (i, payload) in payloads.iter().enumerate() {
            let receiver = &receivers[i % 2];
            receiver
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let (n, from) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(from, sender.local_addr().unwrap());
            assert!(
                buf[..n] == payload[..],
                "round {round}: datagram {i} (in call order)"
            );
        }
    }

    // A connected socket sends to its peer without an address; an unconnected one cannot.
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    // SAFETY: the literal is static.
    unsafe { reactor.send_to(sender.as_raw_fd(), b"where?".as_ptr(), 6, None, 100) }.unwrap();
    // A datagram larger than UDP allows.
    let huge = vec![7u8; 70_000];
    // SAFETY: `huge` outlives the event (collected below).
    unsafe {
        reactor.send_to(
            sender.as_raw_fd(),
            huge.as_ptr(),
            huge.len(),
            Some(&addrs[0]),
            101,
        )
    }
    .unwrap();
    let mut errors = HashMap::new();
    poll_until(&mut reactor, &mut events, |_, batch| {
        errors.extend(batch.iter().map(|ev| (ev.token, ev.result)));
        errors.len() == 2
    });
    assert_eq!(errors[&100], -libc::EDESTADDRREQ);
    assert_eq!(errors[&101], -libc::EMSGSIZE);

    // A peer that does not read, with a small send buffer in between: the sends wait, none is
    // lost or duplicated, and each ends once.
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let burst: Vec<Vec<u8>> = (0..200u64)
        .map(|i| random_bytes(100 + i as usize, i))
        .collect();
    for (i, payload) in burst.iter().enumerate() {
        // SAFETY: `burst` outlives the final events (all collected below).
        unsafe {
            reactor.send_to(
                ours.as_raw_fd(),
                payload.as_ptr(),
                payload.len(),
                None,
                i as u64,
            )
        }
        .unwrap();
    }
    let first = poll_for(&mut reactor, Duration::from_millis(50));
    assert!(
        first.len() < burst.len(),
        "the peer's queue cannot take {} datagrams unread",
        burst.len()
    );
    let reader = read_datagrams(theirs, burst.len());
    let mut ended: Vec<Event> = first;
    poll_until(&mut reactor, &mut events, |_, batch| {
        ended.extend_from_slice(batch);
        ended.len() >= burst.len()
    });
    let mut got = reader.join().unwrap();
    let mut tokens: Vec<u64> = ended.iter().map(|ev| ev.token).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, (0..200).collect::<Vec<u64>>(), "one event per send");
    for ev in &ended {
        assert_eq!(ev.result, burst[ev.token as usize].len() as i32);
    }
    let mut expected = burst.clone();
    got.sort();
    expected.sort();
    assert!(got == expected, "every datagram arrived once");

    // An unconnected Unix datagram socket sending to a receiver whose queue is full: Linux
    // reports the socket writable all the same, so the sends wait on a back-off (not a retry at
    // every wakeup) and go out once the receiver reads.
    let path = std::env::temp_dir().join(format!(
        "ringloop-dgram-{}-{}",
        std::process::id(),
        reactor.backend() as u8
    ));
    let _ = std::fs::remove_file(&path);
    let receiver = UnixDatagram::bind(&path).unwrap();
    let unconnected = UnixDatagram::unbound().unwrap();
    unconnected.set_nonblocking(true).unwrap();
    let to = {
        let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
        // SAFETY: `addr` holds a valid sockaddr_un of `addr.len()` bytes.
        unsafe {
            <SockaddrStorage as nix::sys::socket::SockaddrLike>::from_raw(
                nix::sys::socket::SockaddrLike::as_ptr(&addr),
                Some(nix::sys::socket::SockaddrLike::len(&addr)),
            )
        }
        .unwrap()
    };
    for (i, payload) in burst.iter().enumerate() {
        // SAFETY: `burst` outlives the final events (all collected below).
        unsafe {
            reactor.send_to(
                unconnected.as_raw_fd(),
                payload.as_ptr(),
                payload.len(),
                Some(&to),
                1000 + i as u64,
            )
        }
        .unwrap();
    }
    let mut ended = poll_for(&mut reactor, Duration::from_millis(50));
    assert!(ended.len() < burst.len(), "the receiver's queue is full");
    let reader = read_datagrams(receiver, burst.len());
    poll_until(&mut reactor, &mut events, |_, batch| {
        ended.extend_from_slice(batch);
        ended.len() >= burst.len()
    });
    let mut got = reader.join().unwrap();
    let _ = std::fs::remove_file(&path);
    for ev in &ended {
        assert_eq!(ev.result, burst[ev.token as usize - 1000].len() as i32);
    }
    got.sort();
    // (io_uring once sent empty datagrams here, reporting 0: see `Kind::SendTo` in uring.rs.)
    assert!(got == expected, "every datagram arrived once, whole");

    // Refused at submission.
    let null = std::ptr::null::<u8>();
    // SAFETY: the pointers are not read (refused before anything is sent).
    unsafe {
        let err = reactor
            .send_to(sender.as_raw_fd(), null, 1, None, 1)
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        let err = reactor.send_to(-1, b"x".as_ptr(), 1, None, 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        let err = reactor
            .send_to(sender.as_raw_fd(), b"x".as_ptr(), 1 << 31, None, 1)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMSGSIZE));
        // An empty datagram needs no buffer.
        reactor
            .send_to(sender.as_raw_fd(), null, 0, Some(&addrs[1]), 102)
            .unwrap();
    }
    poll_until(&mut reactor, &mut events, |_, batch| {
        assert!(
            batch.iter().all(|ev| (ev.token, ev.result) == (102, 0)),
            "{batch:?}"
        );
        !batch.is_empty()
    });
    let mut buf = [0u8; 16];
    assert_eq!(receivers[1].recv(&mut buf).unwrap(), 0, "an empty datagram");

    // Cancelled at once, and closed while waiting for a full peer: one final event each.
    let (ours, theirs) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    nix::sys::socket::setsockopt(&ours, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let filler = [1u8; 64];
    let mut ids = Vec::new();
    for token in 0..40u64 {
        // SAFETY: `filler` outlives the final events (all collected below).
        ids.push(
            unsafe { reactor.send_to(ours.as_raw_fd(), filler.as_ptr(), 64, None, token) }.unwrap(),
        );
    }
    reactor.cancel(ids[39]).unwrap();
    let mut ended = poll_for(&mut reactor, Duration::from_millis(30));
    assert!(ended.len() < 40, "the small send buffer holds sends back");
    reactor.close(OwnedFd::from(ours), 999).unwrap();
    ended.extend(poll_for(&mut reactor, Duration::from_millis(100)));
    drop(theirs);
    assert_eq!(reactor.pending(), 0, "the close ended every send");
    let mut per_token: HashMap<u64, Vec<i32>> = HashMap::new();
    for ev in &ended {
        per_token.entry(ev.token).or_default().push(ev.result);
    }
    assert_eq!(per_token.remove(&999), Some(vec![0]), "the close's event");
    assert_eq!(per_token.len(), 40, "every send ended: {per_token:?}");
    for (token, results) in &per_token {
        assert!(
            results.len() == 1 && (results[0] == 64 || results[0] == -libc::ECANCELED),
            "send {token}: {results:?}"
        );
    }
    assert!(
        per_token.values().any(|r| r[0] == -libc::ECANCELED),
        "the close cancelled the sends still waiting"
    );
}

fn errno_of(result: std::io::Result<()>) -> i32 {
    result
        .expect_err("expected an error")
        .raw_os_error()
        .unwrap()
}

/// The bytes of buffer `id`, read through the region (as a binding would), not `event_data`.
fn region_bytes(reactor: &Reactor, id: u32, len: usize) -> Vec<u8> {
    let (base, size, _) = reactor.buffer_region();
    // SAFETY: `id` is below the pool's count and `len` below its buffer size (the caller's
    // promise); the region lives as long as the reactor.
    unsafe { std::slice::from_raw_parts(base.add(id as usize * size), len).to_vec() }
}

/// A kept buffer survives later polls unchanged and is not handed out again; keeping the whole
/// pool pauses the receive without losing bytes; a release brings the buffer back; an echo can
/// send straight from a kept buffer. Bad ids and double keeps/releases are refused.
fn kept_buffers_stay_until_released(choice: BackendChoice) {
    let opts = Options {
        buffer_size: 512,
        buffer_count: 4,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    reactor.recv_multi(ours.as_raw_fd(), 1).unwrap();
    let mut events = vec![Event::default(); 16];

    // Nothing lent yet.
    assert_eq!(errno_of(reactor.keep_buffer(0)), libc::ENOENT);
    assert_eq!(errno_of(reactor.keep_buffer(4)), libc::EINVAL);
    assert_eq!(errno_of(reactor.release_buffer(0)), libc::ENOENT);
    assert_eq!(errno_of(reactor.release_buffer(u32::MAX)), libc::EINVAL);

    // One message per poll, each buffer kept: after four, the whole pool is kept.
    let mut kept: Vec<(u32, Vec<u8>)> = Vec::new();
    for i in 0..4u8 {
        let message = vec![b'a' + i; 100 + usize::from(i)];
        peer.write_all(&message).unwrap();
        poll_until(&mut reactor, &mut events, |r, batch| {
            for ev in batch {
                assert_eq!((ev.token, ev.result), (1, message.len() as i32));
                let id = ev.aux as u32;
                assert!(
                    kept.iter().all(|(k, _)| *k != id),
                    "kept buffer {id} was handed out again"
                );
                assert_eq!(r.event_data(ev).unwrap(), &message[..]);
                r.keep_buffer(id).unwrap();
                assert_eq!(errno_of(r.keep_buffer(id)), libc::ENOENT, "kept twice");
                kept.push((id, message.clone()));
            }
            !batch.is_empty()
        });
    }
    for (id, bytes) in &kept {
        assert_eq!(region_bytes(&reactor, *id, bytes.len()), *bytes);
    }

    // No buffer left: the next message waits in the socket, and the kept bytes stay intact.
    let waiting = random_bytes(300, 9);
    peer.write_all(&waiting).unwrap();
    let seen = poll_for(&mut reactor, Duration::from_millis(300));
    assert!(seen.is_empty(), "received with every buffer kept: {seen:?}");
    for (id, bytes) in &kept {
        assert_eq!(region_bytes(&reactor, *id, bytes.len()), *bytes);
    }

    // Echo the first kept buffer straight from the pool, then release it: the waiting message
    // arrives (in that buffer, the only free one), whole.
    let (first, first_bytes) = kept.remove(0);
    let (base, size, _) = reactor.buffer_region();
    // SAFETY: the buffer is kept, so the loop leaves it alone until it is released below,
    // after the send's event.
    unsafe {
        reactor.send(
            ours.as_raw_fd(),
            base.add(first as usize * size),
            first_bytes.len(),
            2,
        )
    }
    .unwrap();
    let mut received = Vec::new();
    let mut sent = false;
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            match ev.token {
                2 => {
                    assert_eq!(ev.result, first_bytes.len() as i32);
                    r.release_buffer(first).unwrap();
                    assert_eq!(errno_of(r.release_buffer(first)), libc::ENOENT);
                    sent = true;
                }
                1 => {
                    assert!(ev.result > 0);
                    assert!(
                        kept.iter().all(|(k, _)| *k as u64 != ev.aux),
                        "a kept buffer was handed out"
                    );
                    received.extend_from_slice(r.event_data(ev).unwrap());
                }
                other => panic!("unexpected token {other}"),
            }
        }
        sent && received.len() == waiting.len()
    });
    assert!(received == waiting);
    let mut echoed = vec![0u8; first_bytes.len()];
    peer.read_exact(&mut echoed).unwrap();
    assert_eq!(echoed, first_bytes);
    for (id, bytes) in &kept {
        assert_eq!(region_bytes(&reactor, *id, bytes.len()), *bytes);
    }

    // A buffer lent two polls ago can no longer be kept; released buffers serve receives again.
    let stale = first;
    for (id, _) in kept.drain(..) {
        reactor.release_buffer(id).unwrap();
    }
    let more = random_bytes(2000, 10);
    peer.write_all(&more).unwrap();
    let mut received = Vec::new();
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            received.extend_from_slice(r.event_data(ev).unwrap());
        }
        received.len() == more.len()
    });
    assert!(received == more);
    let _ = reactor.poll(Some(Duration::ZERO), &mut events).unwrap();
    assert_eq!(errno_of(reactor.keep_buffer(stale)), libc::ENOENT);
}

/// Child-process half of the EMFILE test (run by [`emfile_on_accept`] with a low fd limit).
fn emfile_child(choice: BackendChoice) {
    if std::env::var_os("RINGLOOP_EMFILE_CHILD").is_none() {
        return;
    }
    // A short accept back-off, so the retry after the limit is raised comes quickly.
    let opts = Options {
        accept_retry_delay: Duration::from_millis(20),
        ..Options::default()
    };
    let mut reactor = make(choice, opts).unwrap();
    let listener = listener();
    let addr = listener.local_addr().unwrap();
    const CLIENTS: usize = 12;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    reactor.accept_multi(listener.as_raw_fd(), 1).unwrap();
    // The lowest free fd number; allow it and one more, then accept must fail with EMFILE.
    let old = set_fd_limit(lowest_free_fd() + 2);
    let mut accepted = Vec::new();
    let mut saw_emfile = false;
    let mut events = [Event::default(); 16];
    poll_until(&mut reactor, &mut events, |_, batch| {
        for ev in batch {
            assert_eq!(ev.token, 1);
            assert_ne!(
                ev.flags & flags::MORE,
                0,
                "accept must stay armed after EMFILE"
            );
            if ev.result == -libc::EMFILE {
                saw_emfile = true;
            } else {
                assert!(ev.result >= 0, "unexpected accept error {}", ev.result);
                // SAFETY: fresh fd from accept.
                accepted.push(unsafe { OwnedFd::from_raw_fd(ev.result) });
            }
        }
        saw_emfile
    });
    restore_fd_limit(&old);
    poll_until(&mut reactor, &mut events, |_, batch| {
        for ev in batch {
            if ev.result >= 0 {
                // SAFETY: fresh fd from accept.
                accepted.push(unsafe { OwnedFd::from_raw_fd(ev.result) });
            }
        }
        accepted.len() == CLIENTS
    });
    drop(clients);
    println!("EMFILE-CHILD-OK");
}

fn emfile_on_accept(choice: BackendChoice, module: &str) {
    if make(choice, Options::default()).is_none() {
        return;
    }
    run_in_child(
        &format!("{module}::emfile_child"),
        "RINGLOOP_EMFILE_CHILD",
        "EMFILE-CHILD-OK",
    );
}

fn stale_ids_are_harmless(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (a, _b) = UnixStream::pair().unwrap();
    let op = reactor.watch(a.as_raw_fd(), Interest::READABLE, 1).unwrap();
    reactor.cancel(op).unwrap();
    assert_eq!(
        reactor.cancel(op).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    // The slot is reused by a new op; the old id must not reach it.
    let op2 = reactor.watch(a.as_raw_fd(), Interest::READABLE, 2).unwrap();
    assert_ne!(op, op2);
    assert!(reactor.cancel(op).is_err());
    assert_eq!(reactor.pending(), 1);
    assert!(reactor.cancel(OpId::from_raw(0)).is_err());
    assert!(reactor.cancel(OpId::from_raw(u64::MAX)).is_err());
    assert!(reactor.cancel(OpId::from_raw(0xdead_beef_1234)).is_err());
    reactor.cancel(op2).unwrap();
    let timer = reactor.add_timer(0, 3);
    let mut events = [Event::default(); 4];
    let n = reactor
        .poll(Some(Duration::from_secs(1)), &mut events)
        .unwrap();
    assert_eq!((n, events[0].token), (1, 3));
    assert!(!reactor.cancel_timer(timer));
    assert!(!reactor.cancel_timer(TimerId::from_raw(u64::MAX)));
    // A new timer reusing the slot is not cancelled through the stale id.
    let timer2 = reactor.add_timer(Reactor::now_ns() + 1_000_000, 4);
    assert!(!reactor.cancel_timer(timer));
    assert!(reactor.cancel_timer(timer2));
    // An op that completed has a stale id too.
    let listener = listener();
    let sock = nonblocking_tcp_socket();
    let connect = reactor
        .connect(
            sock.as_raw_fd(),
            &sockaddr(listener.local_addr().unwrap()),
            5,
        )
        .unwrap();
    poll_until(&mut reactor, &mut events, |_, batch| {
        batch.iter().any(|e| e.token == 5 && e.result == 0)
    });
    assert!(reactor.cancel(connect).is_err());
    assert_eq!(reactor.cancel_token(12345), 0);
    assert_eq!(reactor.pending(), 0);
}

fn small_events_array_loses_nothing(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let now = Reactor::now_ns();
    for token in 0..50 {
        reactor.add_timer(now, 100 + token);
    }
    let pairs: Vec<_> = (0..20).map(|_| UnixStream::pair().unwrap()).collect();
    for (i, (a, b)) in pairs.iter().enumerate() {
        (&*b).write_all(b"z").unwrap();
        reactor
            .watch(a.as_raw_fd(), Interest::READABLE, i as u64)
            .unwrap();
    }
    let (ours, mut peer) = tcp_pair();
    reactor.recv_multi(ours.as_raw_fd(), 500).unwrap();
    let payload = random_bytes(100_000, 7);
    peer.write_all(&payload).unwrap();
    reactor.waker().wake();
    let mut timers = HashSet::new();
    let mut watches = HashSet::new();
    let mut wakes = 0;
    let mut received = Vec::new();
    let mut events = [Event::default(); 1];
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            match ev.token {
                0..=19 => {
                    watches.insert(ev.token);
                }
                100..=149 => assert!(timers.insert(ev.token), "timer delivered twice"),
                500 => received.extend_from_slice(r.event_data(ev).unwrap()),
                WAKE => wakes += 1,
                other => panic!("unexpected token {other}"),
            }
        }
        timers.len() == 50 && watches.len() == 20 && wakes == 1 && received.len() == payload.len()
    });
    assert!(received == payload);
}

fn cancel_send_gives_one_final_event(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, peer) = tcp_pair();
    // Far more than the socket buffers hold while the peer does not read.
    let big = random_bytes(32 << 20, 3);
    let small = b"queued behind".to_vec();
    // SAFETY: both buffers outlive the final events (checked below).
    let first = unsafe { reactor.send(ours.as_raw_fd(), big.as_ptr(), big.len(), 1) }.unwrap();
    // SAFETY: as above.
    let second = unsafe { reactor.send(ours.as_raw_fd(), small.as_ptr(), small.len(), 2) }.unwrap();
    let _ = poll_for(&mut reactor, Duration::from_millis(30));
    reactor.cancel(first).unwrap();
    reactor.cancel(second).unwrap();
    assert!(reactor.cancel(first).is_err());
    let mut results: HashMap<u64, Vec<i32>> = HashMap::new();
    for ev in poll_for(&mut reactor, Duration::from_millis(100)) {
        results.entry(ev.token).or_default().push(ev.result);
    }
    let first_results = &results[&1];
    assert_eq!(
        first_results.len(),
        1,
        "exactly one final event: {first_results:?}"
    );
    assert!(
        first_results[0] == -libc::ECANCELED
            || (first_results[0] > 0 && (first_results[0] as usize) < big.len()),
        "{first_results:?}"
    );
    assert_eq!(
        results[&2],
        vec![-libc::ECANCELED],
        "a queued send is cancelled without touching the socket"
    );
    assert_eq!(reactor.pending(), 0);
    drop(peer);
}

/// Sends queued on one fd go out in order, one final event each; `close` ends the one in flight
/// and the queued ones (each exactly once) along with the fd's other ops.
fn queued_sends_complete_in_order_and_close_ends_them(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    let parts: Vec<Vec<u8>> = (0..3)
        .map(|i| random_bytes(100_000 + i, i as u64))
        .collect();
    for (i, part) in parts.iter().enumerate() {
        // SAFETY: `parts` outlives the final events (all collected below).
        unsafe { reactor.send(ours.as_raw_fd(), part.as_ptr(), part.len(), 10 + i as u64) }
            .unwrap();
    }
    let expected: Vec<u8> = parts.concat();
    let reader = std::thread::spawn(move || {
        let mut got = vec![0u8; expected.len()];
        peer.read_exact(&mut got).unwrap();
        assert!(
            got == expected,
            "the bytes of queued sends interleaved or were lost"
        );
        peer
    });
    let mut order = Vec::new();
    let mut events = [Event::default(); 8];
    poll_until(&mut reactor, &mut events, |_, batch| {
        for ev in batch {
            let i = (ev.token - 10) as usize;
            assert_eq!(ev.result as usize, parts[i].len(), "{ev:?}");
            assert_eq!(ev.flags & flags::MORE, 0);
            order.push(ev.token);
        }
        order.len() == 3
    });
    assert_eq!(order, [10, 11, 12], "sends on one fd end in order");
    let peer = reader.join().unwrap();
    assert_eq!(reactor.pending(), 0);

    // The peer stops reading: a big send stays in flight, two more wait behind it.
    let big = random_bytes(32 << 20, 9);
    let small = b"queued".to_vec();
    reactor.recv_multi(ours.as_raw_fd(), 1).unwrap();
    // SAFETY: the buffers outlive the final events (collected below).
    unsafe { reactor.send(ours.as_raw_fd(), big.as_ptr(), big.len(), 2) }.unwrap();
    // SAFETY: as above.
    unsafe { reactor.send(ours.as_raw_fd(), small.as_ptr(), small.len(), 3) }.unwrap();
    // SAFETY: as above.
    unsafe { reactor.send(ours.as_raw_fd(), small.as_ptr(), small.len(), 4) }.unwrap();
    let _ = poll_for(&mut reactor, Duration::from_millis(30));
    reactor.close(ours, 5).unwrap();
    let mut results: HashMap<u64, Vec<i32>> = HashMap::new();
    for ev in poll_for(&mut reactor, Duration::from_millis(200)) {
        results.entry(ev.token).or_default().push(ev.result);
    }
    assert_eq!(results[&5], vec![0], "the close itself succeeds");
    let head = &results[&2];
    assert_eq!(head.len(), 1, "exactly one final event: {head:?}");
    assert!(
        head[0] == -libc::ECANCELED || (head[0] > 0 && (head[0] as usize) < big.len()),
        "{head:?}"
    );
    for token in [3, 4] {
        assert_eq!(
            results[&token],
            vec![-libc::ECANCELED],
            "a queued send is cancelled without touching the socket"
        );
    }
    assert!(results
        .get(&1)
        .is_none_or(|r| r.iter().all(|&res| res <= 0)));
    assert_eq!(reactor.pending(), 0);
    drop(peer);
}

fn connect_and_close(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    // Refused: bind a port, close it, connect to it.
    let closed_addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sock = nonblocking_tcp_socket();
    reactor
        .connect(sock.as_raw_fd(), &sockaddr(closed_addr), 1)
        .unwrap();
    let mut events = [Event::default(); 4];
    let mut result = None;
    poll_until(&mut reactor, &mut events, |_, batch| {
        result = batch.iter().find(|e| e.token == 1).map(|e| e.result);
        result.is_some()
    });
    assert_eq!(result, Some(-libc::ECONNREFUSED));
    // Close cancels the reactor's ops on the fd, then closes it: the peer sees EOF.
    let (ours, mut peer) = tcp_pair();
    reactor.recv_multi(ours.as_raw_fd(), 2).unwrap();
    reactor
        .watch(ours.as_raw_fd(), Interest::READABLE, 3)
        .unwrap();
    assert_eq!(reactor.pending(), 2);
    reactor.close(ours, 4).unwrap();
    let seen = poll_for(&mut reactor, Duration::from_millis(50));
    assert_eq!(
        seen,
        vec![Event {
            token: 4,
            result: 0,
            flags: 0,
            aux: 0
        }]
    );
    let mut buf = [0u8; 1];
    assert_eq!(peer.read(&mut buf).unwrap(), 0, "the fd was really closed");
    assert_eq!(reactor.pending(), 0);
    // Bad fds are refused or reported, never a crash.
    assert!(reactor.watch(-1, Interest::READABLE, 5).is_err());
    assert!(reactor.recv_multi(-1, 5).is_err());
    // A regular file has no readiness to watch: refused on both backends, as epoll does.
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    let err = reactor
        .watch(file.as_raw_fd(), Interest::READABLE, 5)
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    // A huge fd number is refused before any per-fd table is sized for it.
    assert!(reactor.watch(i32::MAX, Interest::READABLE, 5).is_err());
    assert!(reactor.accept_multi(i32::MAX - 1, 5).is_err());
    // SAFETY: the call fails before anything could read the (valid, static) buffer.
    assert!(unsafe { reactor.send(i32::MAX, b"x".as_ptr(), 1, 5) }.is_err());
    assert_eq!(reactor.pending(), 0);
}

fn drop_with_ops_in_flight(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let listener = listener();
    reactor.accept_multi(listener.as_raw_fd(), 1).unwrap();
    let (ours, _peer) = tcp_pair();
    reactor.recv_multi(ours.as_raw_fd(), 2).unwrap();
    let big = random_bytes(16 << 20, 1);
    // SAFETY: `big` outlives the reactor, which drains before it is gone.
    unsafe { reactor.send(ours.as_raw_fd(), big.as_ptr(), big.len(), 3) }.unwrap();
    reactor.add_timer(u64::MAX, 4);
    let _ = poll_for(&mut reactor, Duration::from_millis(10));
    drop(reactor);
    drop(big);
    // The fds are still the caller's and usable.
    assert!(listener.local_addr().is_ok());
}

fn invalid_options_are_rejected(choice: BackendChoice) {
    for opts in [
        Options {
            buffer_count: 3,
            ..Options::default()
        },
        Options {
            buffer_count: 0,
            ..Options::default()
        },
        Options {
            buffer_size: 0,
            ..Options::default()
        },
        Options {
            ring_entries: 1000,
            ..Options::default()
        },
    ] {
        let err = Reactor::new(&Options {
            backend: choice,
            ..opts
        })
        .err()
        .expect("invalid options accepted");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    }
}

/// Pausing reading (cancel the recv) and resuming (a new recv) loses no byte, even when the
/// reactor had already taken bytes out of the socket for the cancelled op.
fn cancel_and_rearm_recv_loses_nothing(choice: BackendChoice) {
    let opts = Options {
        buffer_size: 1024,
        buffer_count: 64,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    let data = random_bytes(1 << 20, 11);
    let expected = data.clone();
    let writer = std::thread::spawn(move || {
        for chunk in data.chunks(10_000) {
            peer.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_micros(200));
        }
        peer
    });
    let mut received = Vec::new();
    let mut events = [Event::default(); 1];
    let mut token = 1u64;
    let mut op = reactor.recv_multi(ours.as_raw_fd(), token).unwrap();
    let start = Instant::now();
    while received.len() < expected.len() {
        assert!(start.elapsed() < LIMIT);
        let n = reactor
            .poll(Some(Duration::from_millis(100)), &mut events)
            .unwrap();
        for ev in &events[..n] {
            assert_eq!(ev.token, token, "event for a cancelled recv");
            assert!(ev.result > 0);
            received.extend_from_slice(reactor.event_data(ev).unwrap());
            // Pause and resume after every third chunk, often with bytes still queued.
            if received.len() % 3 == 0 || ev.aux % 3 == 0 {
                reactor.cancel(op).unwrap();
                token += 1;
                op = reactor.recv_multi(ours.as_raw_fd(), token).unwrap();
            }
        }
    }
    let _peer = writer.join().unwrap();
    assert!(
        received == expected,
        "bytes lost or reordered across cancel/re-arm"
    );
    assert!(token > 10, "the test paused reading only {token} times");

    // A paused socket closed behind the reactor's back: its bytes never reach a new socket that
    // reuses the fd number.
    let (a, mut a_peer) = tcp_pair();
    let op = reactor.recv_multi(a.as_raw_fd(), 100).unwrap();
    a_peer.write_all(&[0xee; 5000]).unwrap();
    let mut got = 0;
    poll_until(&mut reactor, &mut events, |_, batch| {
        got += batch.len();
        got > 0
    });
    std::thread::sleep(Duration::from_millis(20));
    reactor.cancel(op).unwrap();
    let old_fd = a.as_raw_fd();
    let (fresh, mut b_peer) = tcp_pair();
    // The caller closes the paused socket and the number is reused by a new connection (one
    // atomic dup2, so no other test thread can take the number in between).
    let target = a.into_raw_fd();
    // SAFETY: `target` was ours (taken from `a`); dup2 closes the old socket and makes the number
    // a second fd for `fresh`'s socket, owned by the new OwnedFd alone.
    let b = unsafe { OwnedFd::from_raw_fd(libc::dup2(fresh.as_raw_fd(), target)) };
    assert_eq!(b.as_raw_fd(), old_fd);
    drop(fresh);
    reactor.recv_multi(b.as_raw_fd(), 101).unwrap();
    b_peer.write_all(b"fresh").unwrap();
    let mut bytes = Vec::new();
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            assert_eq!(ev.token, 101);
            let Some(data) = r.event_data(ev) else {
                panic!("unexpected {ev:?}")
            };
            bytes.extend_from_slice(data);
        }
        bytes.len() >= 5
    });
    assert_eq!(
        bytes, b"fresh",
        "stale bytes of a closed socket leaked into a new one"
    );
}

/// Cancel and close take effect in the kernel before they return: no `poll` is needed for the
/// socket to really close (io_uring requests hold a reference to their file until cancelled).
fn cancel_and_close_act_without_poll(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let expect_eof = |peer: &mut TcpStream, what: &str| {
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            peer.read(&mut buf).unwrap(),
            0,
            "{what}: the socket is still open"
        );
    };
    let (ours, mut peer) = tcp_pair();
    let watch = reactor
        .watch(ours.as_raw_fd(), Interest::READABLE, 1)
        .unwrap();
    let recv = reactor.recv_multi(ours.as_raw_fd(), 2).unwrap();
    let _ = reactor
        .poll(Some(Duration::ZERO), &mut [Event::default(); 4])
        .unwrap();
    reactor.cancel(watch).unwrap();
    reactor.cancel(recv).unwrap();
    drop(ours);
    expect_eof(&mut peer, "cancel");

    let (ours, mut peer) = tcp_pair();
    reactor.recv_multi(ours.as_raw_fd(), 3).unwrap();
    let _ = reactor
        .poll(Some(Duration::ZERO), &mut [Event::default(); 4])
        .unwrap();
    reactor.close(ours, 4).unwrap();
    expect_eof(&mut peer, "close");
    let seen = poll_for(&mut reactor, Duration::from_millis(20));
    assert_eq!(
        seen,
        vec![Event {
            token: 4,
            result: 0,
            flags: 0,
            aux: 0
        }]
    );

    let listener = listener();
    let addr = listener.local_addr().unwrap();
    assert_eq!(reactor.cancel_token(99), 0);
    reactor.accept_multi(listener.as_raw_fd(), 99).unwrap();
    let _ = reactor
        .poll(Some(Duration::ZERO), &mut [Event::default(); 4])
        .unwrap();
    assert_eq!(reactor.cancel_token(99), 1);
    drop(listener);
    let refused = TcpStream::connect(addr).unwrap_err();
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "the listener is still open"
    );
}

fn poll_in_forked_child_is_an_error(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (a, _b) = UnixStream::pair().unwrap();
    reactor.watch(a.as_raw_fd(), Interest::WRITABLE, 1).unwrap();
    // SAFETY: the child only polls (an atomic load and an error value; glibc keeps malloc usable
    // after fork) and leaves with _exit, touching nothing the parent's threads hold.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut events = [Event::default(); 4];
        let mut code = match reactor.poll(Some(Duration::ZERO), &mut events) {
            Err(err) if err.to_string().contains("fork") => 0,
            _ => 1,
        };
        // Starting or cancelling ops must neither crash (the parent's rings are not mapped here on
        // io_uring) nor change the parent's registrations (the epoll set is shared).
        let (c, _d) = UnixStream::pair().unwrap();
        if choice == BackendChoice::IoUring
            && reactor.watch(c.as_raw_fd(), Interest::READABLE, 2).is_ok()
        {
            code = 2;
        }
        let _ = reactor.cancel_token(1);
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the child's poll must fail"
    );
    // The parent's reactor is untouched.
    let mut events = [Event::default(); 4];
    let n = reactor
        .poll(Some(Duration::from_secs(1)), &mut events)
        .unwrap();
    assert_eq!((n, events[0].token), (1, 1));
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn signal_interrupt_is_not_an_error(choice: BackendChoice) {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    // A handler without SA_RESTART, so the blocking wait really is interrupted.
    let action = SigAction::new(
        SigHandler::Handler(ignore_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, which is async-signal-safe.
    unsafe { sigaction(Signal::SIGURG, &action) }.unwrap();
    // SAFETY: pthread_self is always safe.
    let poller = unsafe { libc::pthread_self() } as u64;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let kicker = std::thread::spawn(move || {
        while !stop2.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: the poller thread outlives this thread (joined below).
            unsafe { libc::pthread_kill(poller as libc::pthread_t, libc::SIGURG) };
        }
    });
    let mut events = [Event::default(); 4];
    for _ in 0..5 {
        assert_eq!(
            reactor
                .poll(Some(Duration::from_millis(200)), &mut events)
                .unwrap(),
            0
        );
    }
    stop.store(true, Ordering::Release);
    kicker.join().unwrap();
}

macro_rules! suite {
    ($module:ident, $choice:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn echo_200_connections_1_byte_to_1_mib() {
                echo_many($choice);
            }
            #[test]
            fn timers_fire_in_deadline_order() {
                timers_fire_in_order($choice);
            }
            #[test]
            fn timers_bound_the_poll_timeout() {
                timer_bounds_poll_timeout($choice);
            }
            #[test]
            fn wakes_from_8_threads_are_never_lost() {
                wakes_from_threads($choice);
            }
            #[test]
            fn wake_token_option() {
                custom_wake_token($choice);
            }
            #[test]
            fn signal_is_delivered() {
                signal_delivered($choice);
            }
            #[test]
            fn accept_storm() {
                super::accept_storm($choice);
            }
            #[test]
            fn peer_reset_mid_stream() {
                super::peer_reset_mid_stream($choice);
            }
            #[test]
            fn watched_fd_closed_by_caller() {
                super::watched_fd_closed_by_caller($choice);
            }
            #[test]
            fn reader_and_writer_watches_on_one_fd() {
                reader_and_writer_watches($choice);
            }
            #[test]
            fn buffer_pool_exhaustion_loses_no_data() {
                pool_exhaustion_loses_nothing($choice, 64);
            }
            #[test]
            fn buffer_pool_exhaustion_with_one_event_per_poll() {
                pool_exhaustion_loses_nothing($choice, 1);
            }
            #[test]
            fn datagrams_are_received_with_their_senders() {
                super::datagrams_are_received_with_their_senders($choice);
            }
            #[test]
            fn datagrams_are_sent_to_their_addresses() {
                super::datagrams_are_sent_to_their_addresses($choice);
            }
            #[test]
            fn pipes_are_received_from() {
                super::pipes_are_received_from($choice);
            }
            #[test]
            fn large_receives_reuse_a_few_buffers() {
                super::large_receives_reuse_a_few_buffers($choice);
            }
            #[test]
            fn kept_buffers_stay_until_released() {
                super::kept_buffers_stay_until_released($choice);
            }
            #[test]
            fn emfile_on_accept_is_reported_and_survived() {
                emfile_on_accept($choice, stringify!($module));
            }
            #[test]
            #[ignore = "run by emfile_on_accept_is_reported_and_survived in a child process"]
            fn emfile_child() {
                super::emfile_child($choice);
            }
            #[test]
            fn stale_ids_are_harmless() {
                super::stale_ids_are_harmless($choice);
            }
            #[test]
            fn small_events_array_loses_nothing() {
                super::small_events_array_loses_nothing($choice);
            }
            #[test]
            fn cancelled_send_gives_exactly_one_final_event() {
                cancel_send_gives_one_final_event($choice);
            }
            #[test]
            fn queued_sends_complete_in_order_and_close_ends_them() {
                super::queued_sends_complete_in_order_and_close_ends_them($choice);
            }
            #[test]
            fn connect_and_close() {
                super::connect_and_close($choice);
            }
            #[test]
            fn drop_with_ops_in_flight() {
                super::drop_with_ops_in_flight($choice);
            }
            #[test]
            fn cancel_and_rearm_recv_loses_nothing() {
                super::cancel_and_rearm_recv_loses_nothing($choice);
            }
            #[test]
            fn cancel_and_close_act_without_poll() {
                super::cancel_and_close_act_without_poll($choice);
            }
            #[test]
            fn poll_in_forked_child_is_an_error() {
                super::poll_in_forked_child_is_an_error($choice);
            }
            #[test]
            fn signal_interrupt_is_not_an_error() {
                super::signal_interrupt_is_not_an_error($choice);
            }
            #[test]
            fn invalid_options_are_rejected() {
                super::invalid_options_are_rejected($choice);
            }
        }
    };
}

suite!(uring, BackendChoice::IoUring);
suite!(epoll, BackendChoice::Epoll);

/// Tests on the default backend: they follow `RINGLOOP_BACKEND` when it is set.
mod default_backend {
    use super::*;

    #[test]
    fn reactor_is_send_and_waker_is_send_sync() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<Reactor>();
        send_sync::<ringloop::Waker>();
    }

    #[test]
    fn respects_ringloop_backend_env() {
        let reactor = Reactor::new(&Options::default()).unwrap();
        match std::env::var("RINGLOOP_BACKEND").as_deref() {
            Ok("epoll") => assert_eq!(reactor.backend(), BackendKind::Epoll),
            Ok("io_uring") => assert_eq!(reactor.backend(), BackendKind::IoUring),
            _ => {}
        }
        // Forced choices and honor_env=false ignore the variable.
        let epoll = Reactor::new(&Options {
            backend: BackendChoice::Epoll,
            ..Options::default()
        })
        .unwrap();
        assert_eq!(epoll.backend(), BackendKind::Epoll);
    }

    #[test]
    fn echo() {
        echo_many(BackendChoice::Auto);
    }

    #[test]
    fn timers_and_wakes() {
        timers_fire_in_order(BackendChoice::Auto);
        custom_wake_token(BackendChoice::Auto);
    }
}

/// An io_uring reactor with `single_thread` set, or `None` where io_uring cannot run.
fn single_thread_uring() -> Option<Reactor> {
    let opts = Options {
        single_thread: true,
        ..Options::default()
    };
    make(BackendChoice::IoUring, opts)
}

/// A loop created with `single_thread` binds its io_uring ring to the thread that first polls it:
/// a second thread gets `EEXIST` from the kernel (no crash, nothing lost), and the loop still
/// works and drops cleanly back on its own thread.
#[test]
fn single_thread_loop_refuses_a_second_thread() {
    let Some(mut reactor) = single_thread_uring() else {
        return;
    };
    let mut events = [Event::default(); 4];
    let waker = reactor.waker();
    waker.wake();
    assert_eq!(reactor.poll(Some(LIMIT), &mut events).unwrap(), 1);
    let mut reactor = std::thread::spawn(move || {
        let mut events = [Event::default(); 4];
        let err = reactor
            .poll(Some(Duration::from_millis(1)), &mut events)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        reactor
    })
    .join()
    .unwrap();
    waker.wake();
    assert_eq!(reactor.poll(Some(LIMIT), &mut events).unwrap(), 1);
    assert_eq!(events[0].token, u64::MAX);
}

/// Whether any of the `len` bytes at `base` is mapped (from `/proc/self/maps`, where adjacent
/// anonymous mappings show merged).
fn is_mapped(base: *const u8, len: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let (start, end) = (base as usize, base as usize + len);
    maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        usize::from_str_radix(lo, 16).unwrap() < end
            && usize::from_str_radix(hi, 16).unwrap() > start
    })
}

/// Polls until the events of `token` carried exactly `expected`; any other receive event fails.
fn receive_exactly(reactor: &mut Reactor, token: u64, expected: &[u8]) {
    let mut events = [Event::default(); 8];
    let mut got = Vec::new();
    poll_until(reactor, &mut events, |r, batch| {
        for ev in batch.iter().filter(|ev| ev.token != WAKE) {
            assert_eq!(ev.token, token, "{ev:?}");
            got.extend_from_slice(r.event_data(ev).unwrap());
        }
        got == expected
    });
}

fn cancel_on_another_thread(mut reactor: Reactor, op: OpId) -> Reactor {
    std::thread::spawn(move || {
        reactor.cancel(op).unwrap();
        reactor
    })
    .join()
    .unwrap()
}

/// A cancel made on another thread than a single-thread loop's poller reaches the kernel at the
/// poller's next poll: the receive it stopped loses no byte, and the kernel lets go of the socket
/// (closing our end then really closes it: the peer reads EOF).
#[test]
fn single_thread_loop_takes_cancels_from_another_thread_at_its_next_poll() {
    let Some(mut reactor) = single_thread_uring() else {
        return;
    };
    let (mut peer, ours) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut events = [Event::default(); 8];
    let recv = reactor.recv_multi(ours.as_raw_fd(), 7).unwrap();
    peer.write_all(b"first").unwrap();
    receive_exactly(&mut reactor, 7, b"first");
    let mut reactor = cancel_on_another_thread(reactor, recv);
    // The poller's next poll submits the cancel.
    let n = reactor.poll(Some(Duration::ZERO), &mut events).unwrap();
    assert!(
        events[..n].iter().all(|ev| ev.token != 7),
        "{:?}",
        &events[..n]
    );
    peer.write_all(b"second").unwrap();
    let again = reactor.recv_multi(ours.as_raw_fd(), 8).unwrap();
    receive_exactly(&mut reactor, 8, b"second");
    let mut reactor = cancel_on_another_thread(reactor, again);
    reactor.poll(Some(Duration::ZERO), &mut events).unwrap();
    drop(ours);
    peer.set_read_timeout(Some(LIMIT)).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(peer.read(&mut buf).unwrap(), 0, "the socket stayed open");
}

/// A single-thread loop dropped on another thread than its poller: while the poller lives the
/// drop must not touch the ring (it would be refused) and must not crash, and it keeps the buffer
/// memory until the poller has exited; once the poller has exited, the drop frees it at once (the
/// kernel cancelled the poller's requests).
/// Run alone in a child process, where no other test can map the freed range again.
#[test]
fn single_thread_loop_dropped_on_another_thread_frees_its_memory_once_the_poller_exited() {
    if make(BackendChoice::IoUring, Options::default()).is_none() {
        return;
    }
    run_in_child(
        "single_thread_drop_child",
        "RINGLOOP_SINGLE_THREAD_DROP_CHILD",
        "SINGLE-THREAD-DROP-OK",
    );
}

#[test]
#[ignore = "run by single_thread_loop_dropped_on_another_thread_frees_its_memory_once_the_poller_exited in a child process"]
fn single_thread_drop_child() {
    if std::env::var_os("RINGLOOP_SINGLE_THREAD_DROP_CHILD").is_none() {
        return;
    }
    for poller_exits_first in [true, false] {
        let opts = Options {
            single_thread: true,
            buffer_size: 64 * 1024,
            buffer_count: 4,
            ..Options::default()
        };
        let Some(reactor) = make(BackendChoice::IoUring, opts) else {
            return;
        };
        let (base, size, count) = reactor.buffer_region();
        assert!(is_mapped(base, size * count));
        let (mut peer, ours) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let (give_back, returned) = std::sync::mpsc::channel();
        let (finish, finished) = std::sync::mpsc::channel::<()>();
        let fd = ours.as_raw_fd();
        let poller = std::thread::spawn(move || {
            let mut reactor = reactor;
            let mut events = [Event::default(); 8];
            reactor.recv_multi(fd, 7).unwrap();
            reactor.poll(Some(Duration::ZERO), &mut events).unwrap();
            give_back.send(reactor).unwrap();
            let _ = finished.recv();
        });
        let reactor = returned.recv().unwrap();
        let mut poller = Some((finish, poller));
        let mut end_poller = || {
            if let Some((finish, handle)) = poller.take() {
                drop(finish);
                handle.join().unwrap();
            }
        };
        if poller_exits_first {
            end_poller();
        }
        // Data for the armed receive, which nobody may copy into the buffers any more.
        peer.write_all(b"late").unwrap();
        drop(reactor);
        assert_eq!(is_mapped(base, size * count), !poller_exits_first);
        end_poller();
        // Kept only while the poller lived: the next ring created or dropped frees it.
        drop(make(BackendChoice::IoUring, Options::default()).unwrap());
        assert!(!is_mapped(base, size * count));
        // The bytes were never taken from the socket.
        let mut buf = [0u8; 8];
        let mut ours = ours;
        assert_eq!(ours.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"late");
    }
    println!("SINGLE-THREAD-DROP-OK");
}
