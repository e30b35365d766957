//! fork() with a running reactor (ops armed in the kernel, events pending). In the child: using
//! the inherited reactor fails with an error that says why, dropping it (as any child that goes
//! out of scope does) must not touch the parent's ring or epoll set, and a new reactor works. In
//! the parent, after the child is gone: every armed op still delivers, nothing was cancelled.

mod support;

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ringloop::{flags, BackendChoice, Event, Interest, Options, Reactor};
use support::*;

/// fork() is only sound here with no other test thread forking or holding locks the child
/// needs; tests of this binary take turns.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What the child checks; returns the exit code (0 = all good, else which step failed).
fn child_body(inherited: Reactor, choice: BackendChoice) -> i32 {
    let mut inherited = inherited;
    let mut events = [Event::default(); 8];
    match inherited.poll(Some(Duration::ZERO), &mut events) {
        Ok(_) => return 10,
        Err(err) => {
            if !err.to_string().contains("fork") {
                return 11;
            }
        }
    }
    // Dropping the inherited reactor in the child: the parent's kernel objects must survive.
    drop(inherited);
    let Some(mut fresh) = make(choice, Options::default()) else {
        return 0;
    };
    let (a, mut b) = match UnixStream::pair() {
        Ok(pair) => pair,
        Err(_) => return 20,
    };
    if fresh.recv_multi(a.as_raw_fd(), 7).is_err() {
        return 21;
    }
    fresh.add_timer(Reactor::now_ns(), 8);
    if b.write_all(b"child").is_err() {
        return 22;
    }
    let mut got = Vec::new();
    let mut timer = false;
    for _ in 0..100 {
        let n = match fresh.poll(Some(Duration::from_millis(50)), &mut events) {
            Ok(n) => n,
            Err(_) => return 23,
        };
        for ev in &events[..n] {
            match ev.token {
                7 => got.extend_from_slice(fresh.event_data(ev).unwrap_or_default()),
                8 => timer = true,
                _ => return 24,
            }
        }
        if timer && got == b"child" {
            return 0;
        }
    }
    25
}

fn fork_with_running_reactor(choice: BackendChoice) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, mut peer) = tcp_pair();
    let (watched, mut poke) = UnixStream::pair().unwrap();
    reactor.recv_multi(ours.as_raw_fd(), 1).unwrap();
    reactor
        .watch(watched.as_raw_fd(), Interest::READABLE, 2)
        .unwrap();
    reactor.add_timer(Reactor::now_ns() + 300_000_000, 3);
    // Running: data received and the ring has completions pending at fork time.
    peer.write_all(b"before").unwrap();
    let mut events = [Event::default(); 8];
    let mut got = Vec::new();
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            assert_eq!(ev.token, 1);
            got.extend_from_slice(r.event_data(ev).unwrap());
        }
        got == b"before"
    });
    peer.write_all(b" during").unwrap();
    std::thread::sleep(Duration::from_millis(20));

    // SAFETY: the child runs only `child_body` and leaves with `_exit`, never returning into the
    // test harness; other test threads of this binary are serialized by SERIAL.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let code =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child_body(reactor, choice)))
                .unwrap_or(99);
        // SAFETY: leaving the child without running the parent's atexit handlers or destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed at step {} (status {status:#x})",
        libc::WEXITSTATUS(status)
    );

    // The parent's reactor is intact: pending data, new data, the watch and the timer.
    peer.write_all(b" after").unwrap();
    poke.write_all(b"!").unwrap();
    let mut watch_seen = false;
    let mut timer_seen = false;
    poll_until(&mut reactor, &mut events, |r, batch| {
        for ev in batch {
            match ev.token {
                1 => {
                    assert!(ev.result > 0 && ev.flags & flags::MORE != 0, "{ev:?}");
                    got.extend_from_slice(r.event_data(ev).unwrap());
                }
                2 => watch_seen = true,
                3 => timer_seen = true,
                other => panic!("unexpected token {other}"),
            }
        }
        got == b"before during after" && watch_seen && timer_seen
    });
    // And it still sends.
    let reply = b"parent ok".to_vec();
    // SAFETY: `reply` outlives the send's final event (awaited below).
    unsafe { reactor.send(ours.as_raw_fd(), reply.as_ptr(), reply.len(), 4) }.unwrap();
    poll_until(&mut reactor, &mut events, |_, batch| {
        batch
            .iter()
            .any(|e| e.token == 4 && e.result == reply.len() as i32)
    });
    let mut buf = [0u8; 9];
    peer.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"parent ok");
}

per_backend!(fork_with_running_reactor);
