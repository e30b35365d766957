//! Completion-queue overflow: a tiny ring (2 or 4 submission entries, so a completion queue of 4
//! or 8) flooded with completions from hundreds of sockets, writable watches that are ready on
//! every poll and a batch of expired timers. Nothing may be dropped: every byte arrives, in
//! order per socket, every stream ends with exactly one EOF, every timer fires once.

mod support;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use ringloop::{flags, BackendChoice, Event, Interest, Options, Reactor};
use support::*;

const SOCKETS: usize = 200;
const BYTES_PER_SOCKET: usize = 32 * 1024;
const TIMERS: u64 = 1000;
const TIMER_BASE: u64 = 1 << 40;
const WATCH_BASE: u64 = 1 << 41;

fn flood(choice: BackendChoice, ring_entries: u32, events_len: usize) {
    let opts = Options {
        ring_entries,
        buffer_size: 1024,
        buffer_count: 64,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let pairs: Vec<(UnixStream, UnixStream)> =
        (0..SOCKETS).map(|_| UnixStream::pair().unwrap()).collect();
    for (i, (ours, _)) in pairs.iter().enumerate() {
        ours.set_nonblocking(true).unwrap();
        reactor.recv_multi(ours.as_raw_fd(), i as u64).unwrap();
        reactor
            .watch(ours.as_raw_fd(), Interest::WRITABLE, WATCH_BASE + i as u64)
            .unwrap();
    }
    let now = Reactor::now_ns();
    for t in 0..TIMERS {
        reactor.add_timer(now, TIMER_BASE + t);
    }
    let peers: Vec<UnixStream> = pairs.iter().map(|(_, p)| p.try_clone().unwrap()).collect();
    // Round-robin writes in 4 KiB slices, so completions for all sockets interleave.
    let writer = std::thread::spawn(move || {
        let data: Vec<Vec<u8>> = (0..SOCKETS)
            .map(|i| random_bytes(BYTES_PER_SOCKET, i as u64 + 1))
            .collect();
        let mut peers = peers;
        for offset in (0..BYTES_PER_SOCKET).step_by(4096) {
            for (i, peer) in peers.iter_mut().enumerate() {
                peer.write_all(&data[i][offset..offset + 4096]).unwrap();
            }
        }
        for peer in &peers {
            peer.shutdown(std::net::Shutdown::Write).unwrap();
        }
    });
    let mut received: Vec<Vec<u8>> = vec![Vec::new(); SOCKETS];
    let mut eof = [false; SOCKETS];
    let mut timers_fired: HashMap<u64, usize> = HashMap::new();
    let mut watch_seen = [false; SOCKETS];
    let mut events = vec![Event::default(); events_len];
    let mut eofs = 0;
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            match ev.token {
                t if t < SOCKETS as u64 => {
                    let i = t as usize;
                    assert!(!eof[i], "event after EOF on socket {i}");
                    assert!(ev.result >= 0, "recv error {} on socket {i}", ev.result);
                    if ev.result == 0 {
                        assert_eq!(ev.flags & flags::MORE, 0);
                        eof[i] = true;
                        eofs += 1;
                    } else {
                        assert_ne!(ev.flags & flags::MORE, 0);
                        received[i].extend_from_slice(r.event_data(ev).unwrap());
                    }
                }
                t if (TIMER_BASE..TIMER_BASE + TIMERS).contains(&t) => {
                    *timers_fired.entry(t).or_default() += 1;
                }
                t if (WATCH_BASE..WATCH_BASE + SOCKETS as u64).contains(&t) => {
                    assert_eq!(ev.result, Interest::WRITABLE.bits() as i32);
                    watch_seen[(t - WATCH_BASE) as usize] = true;
                }
                other => panic!("unexpected token {other:#x}"),
            }
        }
        eofs == SOCKETS
    });
    writer.join().unwrap();
    for (i, got) in received.iter().enumerate() {
        assert_eq!(got.len(), BYTES_PER_SOCKET, "socket {i}: byte count");
        assert!(
            *got == random_bytes(BYTES_PER_SOCKET, i as u64 + 1),
            "socket {i}: bytes differ"
        );
    }
    assert_eq!(timers_fired.len(), TIMERS as usize, "every timer fires");
    assert!(
        timers_fired.values().all(|&n| n == 1),
        "no timer fires twice"
    );
    assert!(
        watch_seen.iter().all(|&seen| seen),
        "every writable watch reported"
    );
    // The watches are still armed and level-triggered after the overflow.
    let mut seen_again = [false; SOCKETS];
    poll_until(&mut reactor, &mut events, |_, batch| {
        for ev in batch {
            assert!(ev.token >= WATCH_BASE, "unexpected event {ev:?}");
            seen_again[(ev.token - WATCH_BASE) as usize] = true;
        }
        seen_again.iter().all(|&s| s)
    });
    for i in 0..SOCKETS {
        assert_eq!(reactor.cancel_token(WATCH_BASE + i as u64), 1);
    }
    assert_eq!(reactor.pending(), 0);
    drop(pairs);
}

fn tiny_ring_2_entries(choice: BackendChoice) {
    flood(choice, 2, 16);
}

fn tiny_ring_4_entries_7_events_per_poll(choice: BackendChoice) {
    flood(choice, 4, 7);
}

per_backend!(tiny_ring_2_entries, tiny_ring_4_entries_7_events_per_poll);
