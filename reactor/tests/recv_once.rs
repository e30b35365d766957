//! The one-shot receive (`Reactor::recv_once`), written once and run on both backends: exactly one
//! event per op, byte-exact streams through small and default limits, end of stream and reset,
//! cancel, the stash a cancelled receive leaves behind (drained in order, in pieces), clear errors
//! for fds it cannot read, and pool back-pressure with many sockets. Outcomes only, never timing.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use ringloop::{flags, BackendChoice, Event, Options, Reactor};
use support::*;

/// Checks the shape every recv_once event has and returns its bytes (empty for `result <= 0`).
fn once_event(reactor: &Reactor, ev: &Event, limit: usize) -> Vec<u8> {
    assert_eq!(
        ev.flags & flags::MORE,
        0,
        "a one-shot never has MORE: {ev:?}"
    );
    if ev.result <= 0 {
        assert_eq!(ev.flags & flags::BUFFER, 0, "{ev:?}");
        return Vec::new();
    }
    assert_ne!(ev.flags & flags::BUFFER, 0, "{ev:?}");
    assert!(
        ev.result as usize <= limit,
        "{} bytes received with a limit of {limit}",
        ev.result
    );
    reactor.event_data(ev).unwrap().to_vec()
}

/// The one event of recv_once `token` (and nothing else within a short grace period after it).
fn only_event(reactor: &mut Reactor, token: u64) -> Event {
    let mut events = [Event::default(); 8];
    let mut seen = Vec::new();
    poll_until(reactor, &mut events, |_, batch| {
        seen.extend_from_slice(batch);
        !seen.is_empty()
    });
    seen.extend(poll_for(reactor, Duration::from_millis(30)));
    assert_eq!(seen.len(), 1, "exactly one event expected: {seen:?}");
    assert_eq!(seen[0].token, token);
    seen[0]
}

/// Reads from `fd` with recv_once (limit `max_len`) until `want` bytes arrived; checks each event.
fn read_exact_once(reactor: &mut Reactor, fd: RawFd, max_len: u32, want: usize) -> Vec<u8> {
    let limit = if max_len == 0 {
        reactor.buffer_region().1
    } else {
        (max_len as usize).min(reactor.buffer_region().1)
    };
    let mut got = Vec::new();
    let mut events = [Event::default(); 4];
    reactor.recv_once(fd, max_len, 1).unwrap();
    poll_until(reactor, &mut events, |r, batch| {
        for ev in batch {
            assert_eq!(ev.token, 1);
            assert!(ev.result > 0, "unexpected {ev:?}");
            got.extend(once_event(r, ev, limit));
            if got.len() < want {
                r.recv_once(fd, max_len, 1).unwrap();
            }
        }
        got.len() >= want
    });
    assert_eq!(got.len(), want);
    got
}

// ---------------------------------------------------------------------------------------------
// 1. Echo of 200 messages of 1 B .. 200 KiB through recv_once, byte-exact.

fn echo_messages(choice: BackendChoice, max_len: u32) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let size = reactor.buffer_region().1;
    let limit = if max_len == 0 {
        size
    } else {
        (max_len as usize).min(size)
    };
    let (ours, peer) = tcp_pair();
    let fd = ours.as_raw_fd();
    let mut rng = Rng::new(u64::from(max_len) + 7);
    let mut data = Vec::new();
    for i in 0..200 {
        let len = 1 + rng.below(200 * 1024) as usize;
        data.extend(random_bytes(len, i));
    }
    let expected = data.clone();
    let mut reader_side = peer.try_clone().unwrap();
    let mut writer_side = peer;
    let writer = std::thread::spawn(move || {
        writer_side.write_all(&data).unwrap();
        writer_side.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let reader = std::thread::spawn(move || {
        let mut back = Vec::new();
        reader_side.read_to_end(&mut back).unwrap();
        back
    });

    const RECV: u64 = 1;
    const SEND: u64 = 2;
    let mut received = Vec::with_capacity(expected.len());
    // Echo chunks in flight, oldest first (sends on one fd complete in order). Each chunk's heap
    // block stays put while the Vec is moved around.
    let mut sending: std::collections::VecDeque<Vec<u8>> = Default::default();
    let mut eof = false;
    let mut events = [Event::default(); 16];
    reactor.recv_once(fd, max_len, RECV).unwrap();
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            match ev.token {
                RECV => {
                    assert!(!eof, "event after end of stream");
                    assert!(ev.result >= 0, "recv_once failed: {ev:?}");
                    let bytes = once_event(r, ev, limit);
                    if ev.result == 0 {
                        eof = true;
                        continue;
                    }
                    received.extend_from_slice(&bytes);
                    // SAFETY: the chunk's heap block is kept in `sending` until its event.
                    unsafe { r.send(fd, bytes.as_ptr(), bytes.len(), SEND) }.unwrap();
                    sending.push_back(bytes);
                    r.recv_once(fd, max_len, RECV).unwrap();
                }
                SEND => {
                    let chunk = sending.pop_front().expect("send event without a send");
                    assert_eq!(ev.result as usize, chunk.len());
                }
                other => panic!("unexpected token {other}"),
            }
        }
        eof && sending.is_empty()
    });
    writer.join().unwrap();
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "bytes differ (max_len {max_len})");
    // SAFETY: shutting down the write side of a socket the test owns.
    assert_eq!(unsafe { libc::shutdown(fd, libc::SHUT_WR) }, 0);
    let back = reader.join().unwrap();
    assert!(back == expected, "echo differs (max_len {max_len})");
    assert_eq!(reactor.pending(), 0);
}

fn echo_200_messages_max_len_1000(choice: BackendChoice) {
    echo_messages(choice, 1000);
}

fn echo_200_messages_max_len_0(choice: BackendChoice) {
    echo_messages(choice, 0);
}

fn echo_200_messages_max_len_above_buffer_size(choice: BackendChoice) {
    echo_messages(choice, u32::MAX);
}

// ---------------------------------------------------------------------------------------------
// 2. End of stream and reset.

fn eof_once_and_reset(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    let fd = ours.as_raw_fd();
    peer.write_all(b"abc").unwrap();
    peer.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_exact_once(&mut reactor, fd, 0, 3), b"abc");
    reactor.recv_once(fd, 0, 9).unwrap();
    let ev = only_event(&mut reactor, 9);
    assert_eq!((ev.result, ev.flags), (0, 0), "EOF: {ev:?}");
    assert_eq!(reactor.pending(), 0);

    // Reset: SO_LINGER 0 + close sends RST.
    let (ours, peer) = tcp_pair();
    set_linger_zero(&peer);
    reactor.recv_once(ours.as_raw_fd(), 100, 10).unwrap();
    drop(peer);
    let ev = only_event(&mut reactor, 10);
    assert_eq!(ev.result, -libc::ECONNRESET, "{ev:?}");
    assert_eq!(ev.flags, 0);
    assert_eq!(reactor.pending(), 0);
}

// ---------------------------------------------------------------------------------------------
// 3. Cancel before data.

fn cancel_before_data(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    let fd = ours.as_raw_fd();
    let op = reactor.recv_once(fd, 1000, 5).unwrap();
    // Submitted and waiting in the kernel (io_uring) or in the epoll set.
    assert!(poll_for(&mut reactor, Duration::from_millis(20)).is_empty());
    reactor.cancel(op).unwrap();
    assert_eq!(reactor.pending(), 0);
    let ev = only_event(&mut reactor, 5);
    assert_eq!((ev.result, ev.flags), (-libc::ECANCELED, 0));
    assert!(reactor.cancel(op).is_err(), "a cancelled id is stale");

    // Cancelled by token, before it even reached the kernel.
    reactor.recv_once(fd, 1000, 6).unwrap();
    assert_eq!(reactor.cancel_token(6), 1);
    let ev = only_event(&mut reactor, 6);
    assert_eq!((ev.result, ev.flags), (-libc::ECANCELED, 0));

    // Nothing was taken from the socket: a following recv_once reads every byte sent later.
    let data = random_bytes(3000, 3);
    peer.write_all(&data).unwrap();
    assert_eq!(read_exact_once(&mut reactor, fd, 1000, data.len()), data);
    assert_eq!(reactor.pending(), 0);
}

/// Cancelled after the kernel already received for it (io_uring: the completion sits unreaped in
/// the CQ; epoll: the socket is readable but not yet read): one `-ECANCELED` event, and every byte
/// still reaches the next recv_once, in order.
fn cancel_after_bytes_arrived(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    let fd = ours.as_raw_fd();
    for round in 0..20u64 {
        let op = reactor.recv_once(fd, 700, 7).unwrap();
        // Submitted, nothing to receive yet.
        assert!(poll_for(&mut reactor, Duration::from_millis(2)).is_empty());
        let data = random_bytes(1000 + round as usize * 37, round);
        peer.write_all(&data).unwrap();
        std::thread::sleep(Duration::from_millis(10));
        reactor.cancel(op).unwrap();
        let ev = only_event(&mut reactor, 7);
        assert_eq!((ev.result, ev.flags), (-libc::ECANCELED, 0));
        let got = read_exact_once(&mut reactor, fd, 700, data.len());
        assert!(got == data, "round {round}: bytes lost or reordered");
    }
    assert_eq!(reactor.pending(), 0);
}

// ---------------------------------------------------------------------------------------------
// 4. A multishot recv cancelled with bytes stashed; recv_once drains the stash in small pieces,
//    in order, before newer socket data; a multishot may take over mid-buffer.

fn stash_then_recv_once(choice: BackendChoice, switch_to_multi: bool) {
    let opts = Options {
        buffer_size: 1024,
        buffer_count: 64,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    let fd = ours.as_raw_fd();
    let first = random_bytes(6000, 1);
    let later = random_bytes(5000, 2);
    let op = reactor.recv_multi(fd, 1).unwrap();
    peer.write_all(&first).unwrap();
    // Let the bytes reach the socket (and, on io_uring, the multishot buffers) in one go.
    std::thread::sleep(Duration::from_millis(50));
    let mut received = Vec::new();
    let mut one = [Event::default(); 1];
    poll_until(&mut reactor, &mut one, |r, batch| {
        for ev in batch {
            assert_eq!(ev.token, 1);
            assert!(ev.result > 0);
            received.extend_from_slice(r.event_data(ev).unwrap());
        }
        !received.is_empty()
    });
    // More bytes were taken from the socket than handed out (queued, or in the CQ): they are
    // stashed by the cancel.
    reactor.cancel(op).unwrap();
    peer.write_all(&later).unwrap();
    let mut expected = first.clone();
    expected.extend_from_slice(&later);

    let max_len = 100;
    let mut events = [Event::default(); 4];
    let mut pieces = 0;
    let target = if switch_to_multi {
        received.len() + 350
    } else {
        expected.len()
    };
    reactor.recv_once(fd, max_len, 2).unwrap();
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            assert_eq!(ev.token, 2, "{ev:?}");
            assert!(ev.result > 0, "{ev:?}");
            received.extend(once_event(r, ev, max_len as usize));
            pieces += 1;
            if received.len() < target {
                // At once, while this chunk is still lent: the next one must wait for it.
                r.recv_once(fd, max_len, 2).unwrap();
            }
        }
        received.len() >= target
    });
    assert!(pieces >= 4, "only {pieces} recv_once events");
    if switch_to_multi {
        // Mid-buffer (350 is not a multiple of 1024): the multishot gets the rest of the stash
        // first, then the socket.
        reactor.recv_multi(fd, 3).unwrap();
        poll_until(&mut reactor, &mut events, |r, batch| {
            for ev in batch {
                assert_eq!(ev.token, 3, "{ev:?}");
                assert!(ev.result > 0, "{ev:?}");
                received.extend_from_slice(r.event_data(ev).unwrap());
            }
            received.len() >= expected.len()
        });
    }
    assert_eq!(received.len(), expected.len());
    assert!(received == expected, "stash lost or reordered bytes");
}

fn stash_drained_by_small_recv_once(choice: BackendChoice) {
    stash_then_recv_once(choice, false);
}

fn stash_split_by_recv_once_then_multishot(choice: BackendChoice) {
    stash_then_recv_once(choice, true);
}

/// Closing an fd whose stash is split (a chunk still lent) recycles every buffer exactly once:
/// the pool keeps working, with all of its buffers.
fn close_with_split_stash(choice: BackendChoice) {
    let opts = Options {
        buffer_size: 1024,
        buffer_count: 8,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    for round in 0..20 {
        let (ours, mut peer) = tcp_pair();
        let fd = ours.as_raw_fd();
        let op = reactor.recv_multi(fd, 1).unwrap();
        peer.write_all(&random_bytes(4000, round)).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut one = [Event::default(); 1];
        poll_until(&mut reactor, &mut one, |_, batch| !batch.is_empty());
        reactor.cancel(op).unwrap();
        // io_uring: completions left in the CQ go to the stash now; no event comes out.
        assert!(poll_for(&mut reactor, Duration::from_millis(5)).is_empty());
        reactor.recv_once(fd, 10, 2).unwrap();
        reactor.recv_once(fd, 10, 2).unwrap();
        reactor.close(ours, 3).unwrap();
        let seen = poll_for(&mut reactor, Duration::from_millis(10));
        assert!(seen.iter().any(|ev| ev.token == 3), "{seen:?}");
    }
    // All 8 buffers still circulate: 8 x 1024 bytes in one go, through a pool of 8.
    let (ours, mut peer) = tcp_pair();
    let data = random_bytes(8 * 1024, 99);
    peer.write_all(&data).unwrap();
    assert_eq!(
        read_exact_once(&mut reactor, ours.as_raw_fd(), 0, data.len()),
        data
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Errors: stale ids, closed fds, fds recv cannot read.

fn clear_errors(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    // A stale id (the op completed) is refused by cancel.
    let (ours, mut peer) = tcp_pair();
    peer.write_all(b"x").unwrap();
    let op = reactor.recv_once(ours.as_raw_fd(), 0, 1).unwrap();
    assert_eq!(only_event(&mut reactor, 1).result, 1);
    let err = reactor.cancel(op).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);

    // A closed fd (a high number nobody reuses meanwhile): EBADF, nothing started.
    let devnull = std::fs::File::open("/dev/null").unwrap();
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd that this test owns and closes right away.
    let high = unsafe { libc::fcntl(devnull.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 4000) };
    assert!(high >= 4000);
    // SAFETY: closing the duplicate made above.
    assert_eq!(unsafe { libc::close(high) }, 0);
    for fd in [high, -1, i32::MAX] {
        let err = reactor.recv_once(fd, 0, 2).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF), "fd {fd}");
    }
    assert_eq!(reactor.pending(), 0);

    // A listening socket (with a connection pending, so that it is readable): ENOTCONN.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    reactor.recv_once(listener.as_raw_fd(), 0, 3).unwrap();
    let ev = only_event(&mut reactor, 3);
    assert_eq!((ev.result, ev.flags), (-libc::ENOTCONN, 0), "{ev:?}");

    // A pipe (readable) and a regular file: not sockets.
    let (rx, tx) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap();
    nix::unistd::write(&tx, b"p").unwrap();
    reactor.recv_once(rx.as_raw_fd(), 0, 4).unwrap();
    let ev = only_event(&mut reactor, 4);
    assert_eq!((ev.result, ev.flags), (-libc::ENOTSOCK, 0), "{ev:?}");
    let file = std::env::current_exe().unwrap();
    let file = OwnedFd::from(std::fs::File::open(file).unwrap());
    reactor.recv_once(file.as_raw_fd(), 0, 5).unwrap();
    let ev = only_event(&mut reactor, 5);
    assert_eq!((ev.result, ev.flags), (-libc::ENOTSOCK, 0), "{ev:?}");
    assert_eq!(reactor.pending(), 0);
}

// ---------------------------------------------------------------------------------------------
// 6. 100 sockets, concurrent recv_once ops, a pool of 4 small buffers: back-pressure, no loss.

fn many_sockets_squeezed_pool(choice: BackendChoice) {
    const CONNS: usize = 100;
    const BYTES: usize = 40_000;
    let opts = Options {
        buffer_size: 512,
        buffer_count: 4,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let mut ours = Vec::new();
    let mut peers = Vec::new();
    for _ in 0..CONNS {
        let (o, p) = tcp_pair();
        ours.push(o);
        peers.push(p);
    }
    let expected: Vec<Vec<u8>> = (0..CONNS).map(|i| random_bytes(BYTES, i as u64)).collect();
    let to_send = expected.clone();
    let writer = std::thread::spawn(move || {
        // Interleaved, so that many sockets have data at once.
        for offset in (0..BYTES).step_by(4000) {
            for (peer, data) in peers.iter_mut().zip(&to_send) {
                peer.write_all(&data[offset..(offset + 4000).min(BYTES)])
                    .unwrap();
            }
        }
        for peer in &peers {
            peer.shutdown(std::net::Shutdown::Write).unwrap();
        }
        peers
    });
    for (i, fd) in ours.iter().enumerate() {
        reactor.recv_once(fd.as_raw_fd(), 0, i as u64).unwrap();
    }
    let mut received = vec![Vec::new(); CONNS];
    let mut done = 0;
    let mut events = [Event::default(); 64];
    let start = Instant::now();
    poll_until(&mut reactor, &mut events, |r, batch| {
        assert!(start.elapsed() < LIMIT);
        for ev in batch {
            let i = ev.token as usize;
            assert!(
                ev.result >= 0,
                "conn {i}: {ev:?} (ENOBUFS must never reach the caller)"
            );
            if ev.result == 0 {
                done += 1;
                continue;
            }
            received[i].extend(once_event(r, ev, 512));
            r.recv_once(ours[i].as_raw_fd(), 0, i as u64).unwrap();
        }
        done == CONNS
    });
    let _peers = writer.join().unwrap();
    for (i, (got, want)) in received.iter().zip(&expected).enumerate() {
        assert!(
            got == want,
            "conn {i}: {} of {} bytes, or reordered",
            got.len(),
            want.len()
        );
    }
    assert_eq!(reactor.pending(), 0);
}

// 7. Receives that found the pool empty are served before receives started after them.

fn waiting_receives_go_first(choice: BackendChoice) {
    let opts = Options {
        buffer_size: 512,
        buffer_count: 2,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let (c, mut c_peer) = tcp_pair();
    let (a, mut a_peer) = tcp_pair();
    let (b, mut b_peer) = tcp_pair();
    // Keep both buffers of the pool: from now on every receive waits.
    let mut kept = Vec::new();
    for byte in [b"x", b"y"] {
        c_peer.write_all(byte).unwrap();
        reactor.recv_once(c.as_raw_fd(), 0, 9).unwrap();
        let mut events = [Event::default(); 4];
        poll_until(&mut reactor, &mut events, |r, batch| {
            for ev in batch {
                assert_eq!(ev.token, 9);
                assert_eq!(once_event(r, ev, 512), byte);
                // Kept while the poll that returned it is the last one.
                r.keep_buffer(ev.aux as u32).unwrap();
                kept.push(ev.aux as u32);
            }
            !batch.is_empty()
        });
    }
    // A's receive finds no buffer and waits (its bytes stay in the socket).
    a_peer.write_all(b"from a").unwrap();
    reactor.recv_once(a.as_raw_fd(), 0, 1).unwrap();
    assert!(poll_for(&mut reactor, Duration::from_millis(50)).is_empty());
    // B's receive starts later, and one buffer comes back before the next poll: it is A's.
    b_peer.write_all(b"from b").unwrap();
    reactor.recv_once(b.as_raw_fd(), 0, 2).unwrap();
    reactor.release_buffer(kept[0]).unwrap();
    let mut events = [Event::default(); 4];
    let mut first = Vec::new();
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            first.push((ev.token, once_event(r, ev, 512)));
        }
        !batch.is_empty()
    });
    assert_eq!(
        first,
        [(1, b"from a".to_vec())],
        "one buffer, and it goes to A"
    );
    // Then B's turn.
    reactor.release_buffer(kept[1]).unwrap();
    let ev = only_event(&mut reactor, 2);
    assert_eq!(once_event(&reactor, &ev, 512), b"from b");
    assert_eq!(reactor.pending(), 0);
}

per_backend!(
    echo_200_messages_max_len_1000,
    echo_200_messages_max_len_0,
    echo_200_messages_max_len_above_buffer_size,
    eof_once_and_reset,
    cancel_before_data,
    cancel_after_bytes_arrived,
    stash_drained_by_small_recv_once,
    stash_split_by_recv_once_then_multishot,
    close_with_split_stash,
    clear_errors,
    many_sockets_squeezed_pool,
    waiting_receives_go_first,
);
