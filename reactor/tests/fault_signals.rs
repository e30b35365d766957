//! Signals arriving while the reactor waits in `poll`: a thread interrupts the polling thread with
//! an ordinary handled signal (no `SA_RESTART`, so every blocking system call returns `EINTR`)
//! thousands of times while a stream, timers and a signalfd-delivered signal are in flight.
//! `poll` must never fail, no byte, timer or signal may be lost.

mod support;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringloop::{flags, BackendChoice, Event, Options, Reactor};
use support::*;

static INTERRUPTS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_interrupt(_: libc::c_int) {
    INTERRUPTS.fetch_add(1, Ordering::Relaxed);
}

/// Installs a handler for SIGUSR2 without `SA_RESTART`.
fn install_interrupting_handler() {
    // SAFETY: installing an async-signal-safe handler (it only bumps an atomic).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = 0;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
            0
        );
    }
}

fn poll_through_signal_storm(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    install_interrupting_handler();
    // SAFETY: pthread_self has no preconditions.
    let me = unsafe { libc::pthread_self() } as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let interrupter = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: the polling thread outlives this thread (joined before it returns).
                unsafe { libc::pthread_kill(me as libc::pthread_t, libc::SIGUSR2) };
                sent.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };

    // A stream written slowly, so most polls wait (and get interrupted) between chunks.
    let (ours, mut peer) = tcp_pair();
    reactor.recv_multi(ours.as_raw_fd(), 1).unwrap();
    let payload = random_bytes(512 * 1024, 11);
    let expected = payload.clone();
    let writer = std::thread::spawn(move || {
        for chunk in payload.chunks(4096) {
            peer.write_all(chunk).unwrap();
            std::thread::sleep(Duration::from_millis(4));
        }
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        peer
    });
    // Timers spread over the same time, in deadline order.
    let start = Reactor::now_ns();
    const TIMERS: u64 = 200;
    for t in 0..TIMERS {
        reactor.add_timer(start + t * 1_000_000, 100 + t);
    }
    // A signal delivered through the reactor while the others interrupt it.
    reactor.add_signal(libc::SIGUSR1, 2).unwrap();
    // SAFETY: sending a signal the reactor handles (blocked in this thread) to this thread.
    unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };

    let mut received = Vec::new();
    let mut eof = false;
    let mut next_timer = 100;
    let mut usr1 = 0;
    let mut events = [Event::default(); 16];
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            match ev.token {
                1 if ev.result == 0 => {
                    assert_eq!(ev.flags & flags::MORE, 0);
                    eof = true;
                }
                1 => {
                    assert!(ev.result > 0, "recv error {}", ev.result);
                    received.extend_from_slice(r.event_data(ev).unwrap());
                }
                2 => {
                    assert_eq!(ev.result, libc::SIGUSR1);
                    usr1 += 1;
                }
                t => {
                    assert_eq!(t, next_timer, "timers out of order");
                    next_timer += 1;
                }
            }
        }
        eof && next_timer == 100 + TIMERS && usr1 > 0
    });
    stop.store(true, Ordering::Relaxed);
    interrupter.join().unwrap();
    writer.join().unwrap();
    assert!(received == expected, "bytes differ");
    assert!(
        INTERRUPTS.load(Ordering::Relaxed) > 100,
        "the storm did not happen"
    );
    eprintln!(
        "{choice:?}: {} interrupting signals sent, {} handled in total",
        sent.load(Ordering::Relaxed),
        INTERRUPTS.load(Ordering::Relaxed)
    );
    assert_eq!(reactor.cancel_token(2), 1);
}

per_backend!(poll_through_signal_storm);
