//! Accept back-off on resource errors (asyncio's `ACCEPT_RETRY_DELAY`): while the fd table stays
//! full, a multishot accept reports `-EMFILE` (with `MORE`) once per
//! [`Options::accept_retry_delay`], not once per `poll` — the loop does not spin — and `poll`
//! never sleeps past the end of the delay. Once fds are free again every queued connection is
//! accepted and served. Cancelling a paused accept delivers nothing more (as for any accept), and
//! dropping a reactor with a paused accept leaks nothing.
//!
//! The fd limit is process-wide, so each body runs in a child process (this test binary re-run
//! with a filter), away from the other tests' threads, as in `fault_emfile.rs`.
//!
//! `RINGLOOP_BACKOFF_TEST_OLD=1` configures the reactor with a zero delay — exactly the behaviour
//! before back-off existed (re-armed at the next `poll`) — while the test still expects 200 ms:
//! the spin test must then fail, and does (about 900 000 EMFILE events a second here).

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use ringloop::{flags, BackendChoice, Event, Options, Reactor};
use support::*;

const CLIENTS: u32 = 16;
const PAYLOAD: usize = 64;
/// The back-off the test configures and expects.
const DELAY: Duration = Duration::from_millis(200);
/// How long the table is kept full.
const FULL_FOR: Duration = Duration::from_millis(1200);
/// Each poll's timeout while the table is full: far longer than the delay, so a poll that does
/// not wake up at the end of the back-off shows as a poll without events.
const LONG_POLL: Duration = Duration::from_secs(5);
const CHILD_ENV: &str = "RINGLOOP_FAULT_BACKOFF_CHILD";
const ACCEPT: u64 = 1;
const CONN: u64 = 1000;

/// Lowers the soft limit to the lowest free fd number: the table is full from here on.
fn fill_fd_table() -> libc::rlimit {
    set_fd_limit(lowest_free_fd())
}

fn backlogged_listener() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    // SAFETY: re-listening on a bound socket only raises its backlog, so all clients queue.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);
    listener
}

fn payload(i: u32) -> Vec<u8> {
    let mut bytes = i.to_le_bytes().to_vec();
    bytes.extend(random_bytes(PAYLOAD - 4, u64::from(i)));
    bytes
}

/// [`DELAY`], or zero (no back-off: the old behaviour) under `RINGLOOP_BACKOFF_TEST_OLD=1`.
fn configured_delay() -> Duration {
    if std::env::var_os("RINGLOOP_BACKOFF_TEST_OLD").is_some_and(|v| v == "1") {
        Duration::ZERO
    } else {
        DELAY
    }
}

/// The table stays full for [`FULL_FOR`]: the number of EMFILE events is bounded by the time
/// over the delay, every poll wakes up for the retry, then every connection is served.
fn spin_child(choice: BackendChoice) {
    let opts = Options {
        accept_retry_delay: configured_delay(),
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let listener = backlogged_listener();
    let addr = listener.local_addr().unwrap();
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(LIMIT)).unwrap();
            c.write_all(&payload(i)).unwrap();
            c
        })
        .collect();
    reactor.accept_multi(listener.as_raw_fd(), ACCEPT).unwrap();

    let old = fill_fd_table();
    let mut events = [Event::default(); 64];
    let mut emfile_events = 0u64;
    let mut polls = 0u64;
    let mut empty_polls = 0u64;
    let mut min_gap = Duration::MAX;
    let mut last_emfile: Option<Instant> = None;
    let start = Instant::now();
    while start.elapsed() < FULL_FOR {
        let n = reactor.poll(Some(LONG_POLL), &mut events).unwrap();
        polls += 1;
        if n == 0 {
            empty_polls += 1;
        }
        for ev in &events[..n] {
            assert_eq!(ev.token, ACCEPT);
            assert_ne!(ev.flags & flags::MORE, 0, "accept must stay armed: {ev:?}");
            assert_eq!(ev.result, -libc::EMFILE, "nothing can be accepted: {ev:?}");
            emfile_events += 1;
            let now = Instant::now();
            if let Some(last) = last_emfile {
                min_gap = min_gap.min(now - last);
            }
            last_emfile = Some(now);
        }
    }
    let elapsed = start.elapsed();
    restore_fd_limit(&old);
    let per_sec = emfile_events as f64 / elapsed.as_secs_f64();
    println!(
        "BACKOFF-CHILD full_for_ms={} configured_delay_ms={} emfile_events={emfile_events} \
         per_sec={per_sec:.1} polls={polls} empty_polls={empty_polls} min_gap_ms={}",
        elapsed.as_millis(),
        configured_delay().as_millis(),
        if min_gap == Duration::MAX {
            0
        } else {
            min_gap.as_millis()
        }
    );
    // One event at once, then one per delay: elapsed/delay + 1, plus slack for scheduling.
    let bound = elapsed.as_nanos() / DELAY.as_nanos() + 3;
    assert!(
        u128::from(emfile_events) <= bound,
        "the accept spins: {emfile_events} EMFILE events in {elapsed:?} (bound {bound})"
    );
    assert!(
        emfile_events >= 2,
        "the accept was never retried while the table was full"
    );
    assert_eq!(
        empty_polls, 0,
        "a poll slept past the end of the back-off (timeout {LONG_POLL:?})"
    );

    // The table has room again: every queued connection is accepted and echoed.
    let freed = Instant::now();
    let mut first_accept: Option<Duration> = None;
    let mut conns: HashMap<u64, OwnedFd> = HashMap::new();
    // Echo copies, alive until their send's event (the caller's side of `send`'s contract).
    let mut pending_sends: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut echoed = 0usize;
    let mut next_conn = CONN;
    // Odd tokens above every receive's (receives are even, from CONN).
    let mut next_send = 1_000_001u64;
    poll_until(&mut reactor, &mut events, |r: &mut Reactor, batch| {
        for ev in batch {
            if ev.token == ACCEPT {
                assert_ne!(ev.flags & flags::MORE, 0);
                if ev.result == -libc::EMFILE {
                    continue; // a retry that raced with the limit being raised
                }
                assert!(ev.result >= 0, "unexpected accept error {}", ev.result);
                first_accept.get_or_insert_with(|| freed.elapsed());
                // SAFETY: a fresh fd from accept, owned by the test from now on.
                let fd = unsafe { OwnedFd::from_raw_fd(ev.result) };
                r.recv_multi(fd.as_raw_fd(), next_conn).unwrap();
                conns.insert(next_conn, fd);
                next_conn += 2;
            } else if ev.token % 2 == 0 {
                // A receive: echo it.
                if ev.flags & flags::BUFFER == 0 {
                    assert!(ev.result <= 0, "{ev:?}");
                    continue;
                }
                let copy = r.event_data(ev).unwrap().to_vec();
                let fd: RawFd = conns[&ev.token].as_raw_fd();
                let send_token = next_send;
                next_send += 2;
                // SAFETY: `copy` lives in `pending_sends` (its heap buffer does not move) until
                // the send's event has been returned.
                unsafe { r.send(fd, copy.as_ptr(), copy.len(), send_token) }.unwrap();
                pending_sends.insert(send_token, copy);
            } else {
                let sent = pending_sends.remove(&ev.token).expect("a send of ours");
                assert_eq!(ev.result, sent.len() as i32, "short or failed echo: {ev:?}");
                echoed += sent.len();
            }
        }
        echoed == CLIENTS as usize * PAYLOAD
    });
    let mut seen = vec![false; CLIENTS as usize];
    for (i, client) in clients.iter_mut().enumerate() {
        let mut back = vec![0u8; PAYLOAD];
        client.read_exact(&mut back).unwrap();
        assert_eq!(
            back,
            payload(i as u32),
            "client {i} got someone else's bytes"
        );
        seen[i] = true;
    }
    assert!(seen.iter().all(|&s| s));
    assert_eq!(conns.len(), CLIENTS as usize, "a connection accepted twice");
    println!(
        "BACKOFF-CHILD-OK served={} first_accept_after_free_ms={}",
        conns.len(),
        first_accept.unwrap_or_default().as_millis()
    );
}

/// Cancel and drop while an accept is paused.
fn cancel_child(choice: BackendChoice) {
    // Short enough that a cancelled accept wrongly resumed would show within the test (it would
    // accept the queued connection); long enough that it is normally still paused when cancelled
    // (if a stall makes it re-arm first, the cancel of an armed accept is tested instead).
    let opts = Options {
        accept_retry_delay: Duration::from_millis(150),
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts.clone()) else {
        return;
    };
    let listener = backlogged_listener();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let fds_before = open_fds();
    let mut dropped = make(choice, opts).unwrap();
    let op = reactor.accept_multi(listener.as_raw_fd(), ACCEPT).unwrap();
    dropped.accept_multi(listener.as_raw_fd(), 2).unwrap();

    let old = fill_fd_table();
    let mut events = [Event::default(); 8];
    for r in [&mut reactor, &mut dropped] {
        poll_until(r, &mut events, |_, batch| {
            batch.iter().any(|e| e.result == -libc::EMFILE)
        });
    }
    // Paused now: cancel one, drop the other.
    reactor.cancel(op).unwrap();
    assert_eq!(reactor.pending(), 0);
    assert!(reactor.cancel(op).is_err(), "the id is stale after cancel");
    drop(dropped);
    restore_fd_limit(&old);
    // Nothing more for the cancelled accept (no final event: cancel delivers none for an
    // accept), and the connection is still queued for whoever accepts next.
    let late = poll_for(&mut reactor, Duration::from_millis(500));
    assert!(late.is_empty(), "events after cancel: {late:?}");
    // The dropped reactor's fds are gone (the connection is still in the listener's queue).
    assert_eq!(
        open_fds(),
        fds_before,
        "dropping a paused accept leaked fds"
    );
    let (accepted, _) = listener.accept().expect("the connection is still queued");
    drop((accepted, client));
    println!("BACKOFF-CANCEL-OK");
}

fn run_child(module: &str, child: &str, marker: &str) -> String {
    let stdout = run_in_child(&format!("{module}::{child}"), CHILD_ENV, marker);
    for line in stdout.lines().filter(|l| l.contains("BACKOFF-")) {
        eprintln!("{module}: {line}");
    }
    stdout
}

fn backend_available(choice: BackendChoice) -> bool {
    make(choice, Options::default()).is_some()
}

macro_rules! backoff_suite {
    ($module:ident, $choice:expr) => {
        mod $module {
            #[test]
            fn emfile_does_not_spin_and_all_connections_are_served() {
                if super::backend_available($choice) {
                    super::run_child(stringify!($module), "spin_child", "BACKOFF-CHILD-OK");
                }
            }
            #[test]
            fn cancel_and_drop_during_backoff() {
                if super::backend_available($choice) {
                    super::run_child(stringify!($module), "cancel_child", "BACKOFF-CANCEL-OK");
                }
            }
            #[test]
            #[ignore = "run by emfile_does_not_spin_and_all_connections_are_served in a child"]
            fn spin_child() {
                if std::env::var_os(super::CHILD_ENV).is_some() {
                    super::spin_child($choice);
                }
            }
            #[test]
            #[ignore = "run by cancel_and_drop_during_backoff in a child process"]
            fn cancel_child() {
                if std::env::var_os(super::CHILD_ENV).is_some() {
                    super::cancel_child($choice);
                }
            }
        }
    };
}

backoff_suite!(uring, ringloop::BackendChoice::IoUring);
backoff_suite!(epoll, ringloop::BackendChoice::Epoll);
