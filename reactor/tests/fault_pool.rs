//! The receive-buffer pool exhausted for a long time: two 256-byte buffers shared by 16 busy
//! connections, and a reader that stops polling for a while (several times, while holding the
//! buffers of its last batch). The peers' writes back up into the kernel; the reactor must hold
//! its receives back and resume them: no byte lost or reordered, no `ENOBUFS` seen.

mod support;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use ringloop::{flags, BackendChoice, Event, Options};
use support::*;

const CONNECTIONS: usize = 16;
const BYTES: usize = 192 * 1024;

fn starved_reader(choice: BackendChoice, events_len: usize) {
    let opts = Options {
        buffer_size: 256,
        buffer_count: 2,
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let mut ours = Vec::new();
    let mut writers = Vec::new();
    for i in 0..CONNECTIONS {
        let (fd, mut peer) = tcp_pair();
        reactor.recv_multi(fd.as_raw_fd(), i as u64).unwrap();
        ours.push(fd);
        writers.push(std::thread::spawn(move || {
            peer.write_all(&random_bytes(BYTES, 100 + i as u64))
                .unwrap();
            peer.shutdown(std::net::Shutdown::Write).unwrap();
            peer
        }));
    }
    // Not polling at all while the peers write: their data piles up in the kernel.
    std::thread::sleep(Duration::from_millis(300));
    let mut received = vec![Vec::new(); CONNECTIONS];
    let mut done = [false; CONNECTIONS];
    let mut finished = 0;
    let mut polls = 0u64;
    let mut events = vec![Event::default(); events_len];
    poll_until(&mut reactor, &mut events, |r, batch| {
        polls += 1;
        for ev in batch {
            let i = ev.token as usize;
            assert!(i < CONNECTIONS, "unexpected token {}", ev.token);
            assert!(!done[i], "event after the final one on connection {i}");
            assert!(
                ev.result >= 0,
                "connection {i}: error {} (ENOBUFS must never reach the caller)",
                ev.result
            );
            if ev.result == 0 {
                assert_eq!(ev.flags & flags::MORE, 0);
                done[i] = true;
                finished += 1;
            } else {
                received[i].extend_from_slice(r.event_data(ev).unwrap());
            }
        }
        // Every 500 polls the reader stalls again while it still holds this batch's buffers.
        if polls.is_multiple_of(500) {
            std::thread::sleep(Duration::from_millis(100));
        }
        finished == CONNECTIONS
    });
    for writer in writers {
        writer.join().unwrap();
    }
    for (i, got) in received.iter().enumerate() {
        assert_eq!(got.len(), BYTES, "connection {i}: byte count");
        assert!(
            *got == random_bytes(BYTES, 100 + i as u64),
            "connection {i}: bytes differ"
        );
    }
    assert_eq!(reactor.pending(), 0);
}

fn pool_of_two_starved_reader(choice: BackendChoice) {
    starved_reader(choice, 64);
}

fn pool_of_two_one_event_per_poll(choice: BackendChoice) {
    starved_reader(choice, 1);
}

per_backend!(pool_of_two_starved_reader, pool_of_two_one_event_per_poll);
