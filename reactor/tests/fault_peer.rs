//! The peer misbehaves mid-transfer: it resets the connection while the reactor is in the middle
//! of a large send (with another send queued behind it and a receive armed), or it half-closes its
//! side while the reactor is still writing. Each op ends with exactly one final event, no byte is
//! lost or invented, and the loop keeps working.

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::Duration;

use ringloop::{flags, BackendChoice, Event, Options, Reactor};
use support::*;

fn loop_still_works(reactor: &mut Reactor) {
    reactor.add_timer(Reactor::now_ns(), 99);
    let mut events = [Event::default(); 4];
    poll_until(reactor, &mut events, |_, batch| {
        batch.iter().any(|e| e.token == 99)
    });
}

fn reset_during_send(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    let big = random_bytes(32 << 20, 5);
    let queued = random_bytes(1000, 6);
    reactor.recv_multi(ours.as_raw_fd(), 1).unwrap();
    // SAFETY: both buffers outlive the reactor's final events for them (checked below).
    unsafe {
        reactor
            .send(ours.as_raw_fd(), big.as_ptr(), big.len(), 2)
            .unwrap();
        reactor
            .send(ours.as_raw_fd(), queued.as_ptr(), queued.len(), 3)
            .unwrap();
    }
    // The peer reads a little, so the send is really under way, then resets.
    // (The reactor submits on poll, so it polls while the peer reads.)
    peer.set_nonblocking(true).unwrap();
    let mut head = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while head.len() < 256 * 1024 {
        let _ = poll_for(&mut reactor, Duration::from_millis(5));
        match peer.read(&mut chunk) {
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("peer read: {e}"),
        }
    }
    assert!(head == big[..head.len()], "the first bytes arrive intact");
    set_linger_zero(&peer);
    drop(peer);
    let mut finals: HashMap<u64, Vec<i32>> = HashMap::new();
    let mut events = [Event::default(); 16];
    poll_until(&mut reactor, &mut events, |_, batch| {
        for ev in batch {
            assert!((1..=3).contains(&ev.token), "unexpected {ev:?}");
            if ev.flags & flags::MORE == 0 {
                finals.entry(ev.token).or_default().push(ev.result);
            } else {
                assert_eq!(ev.token, 1, "only the recv is multishot");
            }
        }
        finals.len() == 3
    });
    // Nothing more arrives for any of them.
    let late = poll_for(&mut reactor, Duration::from_millis(50));
    assert!(late.is_empty(), "events after the final ones: {late:?}");
    let reset_errors = [-libc::ECONNRESET, -libc::EPIPE];
    assert_eq!(finals[&1].len(), 1);
    assert!(
        reset_errors.contains(&finals[&1][0]) || finals[&1][0] == 0,
        "recv ended with {}",
        finals[&1][0]
    );
    assert_eq!(finals[&2].len(), 1, "exactly one final event for the send");
    let sent = finals[&2][0];
    assert!(
        reset_errors.contains(&sent) || (sent > 0 && (sent as usize) < big.len()),
        "big send ended with {sent}"
    );
    assert_eq!(finals[&3].len(), 1);
    let queued_result = finals[&3][0];
    assert!(
        reset_errors.contains(&queued_result) || queued_result == -libc::ECANCELED,
        "queued send ended with {queued_result}"
    );
    assert_eq!(reactor.pending(), 0);
    loop_still_works(&mut reactor);
}

fn half_close_during_send(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, peer) = tcp_pair();
    let big = random_bytes(8 << 20, 8);
    let after_eof = random_bytes(70_000, 9);
    reactor.recv_multi(ours.as_raw_fd(), 1).unwrap();
    // SAFETY: `big` outlives the send's final event.
    unsafe { reactor.send(ours.as_raw_fd(), big.as_ptr(), big.len(), 2) }.unwrap();
    let expected_total = big.len() + after_eof.len();
    // The peer half-closes at once, then reads everything the reactor sends.
    let reader = std::thread::spawn(move || {
        let mut peer = peer;
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        let mut got = Vec::with_capacity(expected_total);
        let mut chunk = vec![0u8; 1 << 16];
        while got.len() < expected_total {
            // Read slowly at first, so the shutdown lands mid-send.
            if got.len() < 1 << 20 {
                std::thread::sleep(Duration::from_millis(1));
            }
            let n = peer.read(&mut chunk).unwrap();
            assert!(n > 0, "the reactor's side closed early");
            got.extend_from_slice(&chunk[..n]);
        }
        got
    });
    let mut eof = false;
    let mut big_done = None;
    let mut events = [Event::default(); 16];
    poll_until(&mut reactor, &mut events, |_, batch| {
        for ev in batch {
            match ev.token {
                1 => {
                    assert_eq!(ev.result, 0, "only EOF arrives on the reactor's side");
                    assert_eq!(ev.flags & flags::MORE, 0);
                    assert!(!eof, "EOF twice");
                    eof = true;
                }
                2 => {
                    assert!(big_done.is_none(), "two final events for one send");
                    big_done = Some(ev.result);
                }
                other => panic!("unexpected token {other}"),
            }
        }
        eof && big_done.is_some()
    });
    assert_eq!(big_done, Some(big.len() as i32), "the whole send completes");
    // The half-open connection still carries data the other way.
    // SAFETY: `after_eof` outlives the send's final event.
    unsafe { reactor.send(ours.as_raw_fd(), after_eof.as_ptr(), after_eof.len(), 3) }.unwrap();
    poll_until(&mut reactor, &mut events, |_, batch| {
        batch
            .iter()
            .any(|e| e.token == 3 && e.result == after_eof.len() as i32)
    });
    let got = reader.join().unwrap();
    assert_eq!(got.len(), expected_total);
    assert!(got[..big.len()] == big[..], "bytes differ");
    assert!(got[big.len()..] == after_eof[..], "bytes differ after EOF");
    assert_eq!(reactor.pending(), 0);
    loop_still_works(&mut reactor);
}

per_backend!(reset_during_send, half_close_during_send);
