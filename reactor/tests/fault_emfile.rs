//! EMFILE during an accept flood: 300 connections wait in the accept queue while the process may
//! open only 8 more fds. The reactor reports `-EMFILE` (with `MORE`: accepting stays armed), and
//! each time the test frees the fds it holds — as asyncio backs off and closes connections — the
//! reactor accepts again (after its accept back-off, kept short here), until every connection has
//! been accepted exactly once with its data.
//!
//! The fd limit is process-wide, so the body runs in a child process (this test binary re-run
//! with a filter), away from the other tests' threads. ENFILE (the system-wide table) cannot be
//! provoked without changing a global sysctl; the reactor treats it exactly like EMFILE
//! (`accept_error_is_transient`).

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use ringloop::{flags, BackendChoice, Event, Options};
use support::*;

const CLIENTS: u32 = 300;
const FREE_FDS: u64 = 8;
const CHILD_ENV: &str = "RINGLOOP_FAULT_EMFILE_CHILD";

fn flood_child(choice: BackendChoice) {
    // Each recovery waits out the accept back-off (see `fault_accept_backoff.rs`): keep it short,
    // as there are dozens of recoveries.
    let opts = Options {
        accept_retry_delay: Duration::from_millis(5),
        ..Options::default()
    };
    let Some(mut reactor) = make(choice, opts) else {
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    // SAFETY: re-listening on a bound socket only raises its backlog, so all clients queue.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 4096) }, 0);
    let addr = listener.local_addr().unwrap();
    let clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(&i.to_le_bytes()).unwrap();
            c
        })
        .collect();
    reactor.accept_multi(listener.as_raw_fd(), 1).unwrap();
    let old = set_fd_limit(lowest_free_fd() + FREE_FDS);

    let mut held: Vec<OwnedFd> = Vec::new();
    let mut seen = HashSet::new();
    let mut emfile_events = 0u64;
    let mut recoveries = 0u64;
    let mut events = [Event::default(); 32];
    poll_until(&mut reactor, &mut events, |_, batch| {
        let mut hit_limit = false;
        for ev in batch {
            assert_eq!(ev.token, 1);
            assert_ne!(ev.flags & flags::MORE, 0, "accept must stay armed: {ev:?}");
            if ev.result == -libc::EMFILE {
                emfile_events += 1;
                hit_limit = true;
                continue;
            }
            assert!(ev.result >= 0, "unexpected accept error {}", ev.result);
            // SAFETY: a fresh fd from accept, owned by the test from now on.
            let fd = unsafe { OwnedFd::from_raw_fd(ev.result) };
            let mut index = [0u8; 4];
            // SAFETY: reading into a 4-byte buffer from an fd the test owns.
            let n = unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    index.as_mut_ptr().cast(),
                    4,
                    libc::MSG_DONTWAIT,
                )
            };
            assert_eq!(n, 4, "the client's bytes arrive with its connection");
            assert!(
                seen.insert(u32::from_le_bytes(index)),
                "connection accepted twice"
            );
            held.push(fd);
        }
        // Out of fds: free them all (the application backs off), and accepting must resume.
        if hit_limit && !held.is_empty() {
            held.clear();
            recoveries += 1;
        }
        seen.len() == CLIENTS as usize
    });
    restore_fd_limit(&old);
    assert!(emfile_events > 0, "the flood never hit the fd limit");
    assert!(recoveries > 0);
    drop(clients);
    println!(
        "EMFILE-CHILD-OK accepted={} emfile_events={emfile_events} recoveries={recoveries}",
        seen.len()
    );
}

fn emfile_flood(choice: BackendChoice, module: &str) {
    if make(choice, Options::default()).is_none() {
        return;
    }
    let stdout = run_in_child(&format!("{module}::child"), CHILD_ENV, "EMFILE-CHILD-OK");
    let line = stdout
        .lines()
        .find(|l| l.contains("EMFILE-CHILD-OK"))
        .unwrap();
    eprintln!("{module}: {line}");
}

macro_rules! emfile_suite {
    ($module:ident, $choice:expr) => {
        mod $module {
            #[test]
            fn accept_flood_survives_emfile() {
                super::emfile_flood($choice, stringify!($module));
            }
            #[test]
            #[ignore = "run by accept_flood_survives_emfile in a child process"]
            fn child() {
                if std::env::var_os(super::CHILD_ENV).is_some() {
                    super::flood_child($choice);
                }
            }
        }
    };
}

emfile_suite!(uring, ringloop::BackendChoice::IoUring);
emfile_suite!(epoll, ringloop::BackendChoice::Epoll);
