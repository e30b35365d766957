//! The callback-mode (`ringloop::callback`) test suite, written once and instantiated per backend
//! (`mod uring`, `mod epoll`). io_uring tests skip, saying why, only when the kernel cannot run the
//! io_uring backend.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{socket, socketpair, AddressFamily, SockFlag, SockType, SockaddrStorage};
use ringloop::callback::{
    EventLoop, FutureState, LoopFuture, OpHandle, Outcome, RawCallback, RunMode, StateError,
    TimerHandle, ERR_PANICKED, TOKEN_RESERVED,
};
use ringloop::{flags, BackendChoice, BackendKind, Event, Interest, Options};

const MS: u64 = 1_000_000;

/// A loop on `choice`, or `None` (with the reason printed) when io_uring is unavailable here.
fn make(choice: BackendChoice) -> Option<EventLoop> {
    let opts = Options {
        backend: choice,
        honor_env: false,
        // See reactor/tests/support: the same switch, for the suite run with a bound ring.
        single_thread: std::env::var_os("RINGLOOP_TEST_SINGLE_THREAD").is_some_and(|v| v == "1"),
        ..Options::default()
    };
    match EventLoop::new(&opts) {
        Ok(lp) => {
            let expected = if choice == BackendChoice::IoUring {
                BackendKind::IoUring
            } else {
                BackendKind::Epoll
            };
            assert_eq!(lp.backend(), expected);
            Some(lp)
        }
        Err(err)
            if choice == BackendChoice::IoUring && err.kind() == io::ErrorKind::Unsupported =>
        {
            eprintln!("SKIPPED: io_uring backend unavailable on this kernel: {err}");
            None
        }
        Err(err) => panic!("EventLoop::new({choice:?}) failed: {err}"),
    }
}

/// Arms a timer that fails the test if the loop is still running after `secs` (no test may hang).
fn watchdog(lp: &mut EventLoop, secs: u64) -> TimerHandle {
    lp.call_later(secs * 1000 * MS, move |_| {
        panic!("test did not finish within {secs}s")
    })
    .unwrap()
}

fn pair() -> (OwnedFd, OwnedFd) {
    socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
    )
    .unwrap()
}

fn write_fd(fd: &OwnedFd, data: &[u8]) {
    let n = nix::unistd::write(fd, data).unwrap();
    assert_eq!(n, data.len());
}

fn drain_fd(fd: RawFd) -> usize {
    let mut buf = [0u8; 4096];
    let mut total = 0;
    loop {
        // SAFETY: `buf` is a valid writable buffer of its length; `fd` is open.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return total;
        }
        total += n as usize;
    }
}

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

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

// ---------------------------------------------------------------------------------------------
// call_soon / timers / run modes

fn call_soon_runs_in_fifo_order(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let order = Rc::new(RefCell::new(Vec::new()));
    for i in 0..100 {
        let order = order.clone();
        lp.call_soon(move |lp| {
            order.borrow_mut().push(i);
            if i == 0 {
                // Scheduled while the ready queue runs: goes after everything already queued.
                let order = order.clone();
                lp.call_soon(move |_| order.borrow_mut().push(1000))
                    .unwrap();
            }
        })
        .unwrap();
    }
    assert!(
        !lp.run(RunMode::Default).unwrap(),
        "nothing left to keep the loop alive"
    );
    let mut expected: Vec<i32> = (0..100).collect();
    expected.push(1000);
    assert_eq!(*order.borrow(), expected);
}

fn call_later_runs_in_deadline_order(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let fired = Rc::new(RefCell::new(Vec::new()));
    let base = lp.now();
    // (label, delay): two ties at 10 ms keep their schedule order.
    let plan = [
        ("30", 30),
        ("10a", 10),
        ("20", 20),
        ("10b", 10),
        ("0", 0),
        ("cancelled", 5),
        ("15", 15),
    ];
    let mut handles = HashMap::new();
    for (label, delay) in plan {
        let fired = fired.clone();
        let deadline = base + delay * MS;
        let handle = lp
            .call_at(deadline, move |lp| {
                assert!(lp.now() >= deadline, "{label} fired before its deadline");
                fired.borrow_mut().push(label);
            })
            .unwrap();
        handles.insert(label, handle);
    }
    assert!(lp.cancel_timer(handles["cancelled"]));
    assert!(!lp.run(RunMode::Default).unwrap());
    assert_eq!(*fired.borrow(), ["0", "10a", "10b", "15", "20", "30"]);
}

fn cancelling_a_timer_twice_is_harmless(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    let t = lp.call_later(MS, move |_| r.set(r.get() + 1)).unwrap();
    assert!(lp.cancel_timer(t));
    assert!(!lp.cancel_timer(t), "second cancel must report false");
    let r = ran.clone();
    let fired = lp.call_later(0, move |_| r.set(r.get() + 10)).unwrap();
    lp.run(RunMode::Default).unwrap();
    assert_eq!(ran.get(), 10, "the cancelled timer must not run");
    assert!(
        !lp.cancel_timer(fired),
        "cancelling a fired timer reports false"
    );
    assert!(
        !lp.cancel_timer(TimerHandle::from_raw(0xdead_beef_0000_0001)),
        "a forged handle is not found"
    );
    // A new timer reusing the slot is not reachable through the old handle.
    let r = ran.clone();
    let reuse = lp.call_later(0, move |_| r.set(r.get() + 100)).unwrap();
    assert!(!lp.cancel_timer(t));
    assert!(!lp.cancel_timer(fired));
    lp.run(RunMode::Default).unwrap();
    assert_eq!(ran.get(), 110);
    assert!(!lp.cancel_timer(reuse));
}

fn zero_delay_timer_rescheduling_itself_does_not_starve_the_loop(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    fn again(lp: &mut EventLoop, count: Rc<Cell<u32>>) {
        count.set(count.get() + 1);
        if count.get() < 50 {
            lp.call_later(0, move |lp| again(lp, count)).unwrap();
        }
    }
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    lp.call_later(0, move |lp| again(lp, c)).unwrap();
    // Each NoWait iteration runs the timers due when it started, not those they schedule.
    lp.run(RunMode::NoWait).unwrap();
    assert!(
        count.get() <= 2,
        "a zero-delay timer re-ran within one pass: {}",
        count.get()
    );
    lp.run(RunMode::Default).unwrap();
    assert_eq!(count.get(), 50);
}

fn call_soon_threadsafe_from_8_threads(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    const THREADS: usize = 8;
    const CALLS: usize = 10_000;
    let next: Arc<Vec<AtomicUsize>> = Arc::new((0..THREADS).map(|_| AtomicUsize::new(0)).collect());
    let total = Arc::new(AtomicUsize::new(0));
    let loop_thread = std::thread::current().id();
    // A future with a done-callback keeps the loop alive until the last call completes it.
    let all_done = lp.create_future();
    let finished = Rc::new(Cell::new(false));
    let f = finished.clone();
    let dog = watchdog(&mut lp, 60);
    lp.add_done_callback(&all_done, move |lp, fut| {
        assert_eq!(fut.result(), Some(Ok((THREADS * CALLS) as u64)));
        f.set(true);
        assert!(lp.cancel_timer(dog));
    })
    .unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = lp.handle();
            let next = next.clone();
            let total = total.clone();
            let all_done = all_done.clone();
            std::thread::spawn(move || {
                for i in 0..CALLS {
                    let next = next.clone();
                    let total = total.clone();
                    let all_done = all_done.clone();
                    handle
                        .call_soon_threadsafe(move |lp| {
                            assert_eq!(std::thread::current().id(), loop_thread);
                            // Calls from one thread run in the order they were made, each once.
                            assert_eq!(
                                next[t].swap(i + 1, Ordering::Relaxed),
                                i,
                                "thread {t} call {i}"
                            );
                            let n = total.fetch_add(1, Ordering::Relaxed) + 1;
                            if n == THREADS * CALLS {
                                assert!(all_done.set_result(n as u64));
                                lp.call_soon(|_| ()).unwrap();
                            }
                        })
                        .unwrap();
                }
            })
        })
        .collect();
    lp.run(RunMode::Default).unwrap_or_else(|e| panic!("{e}"));
    for t in threads {
        t.join().unwrap();
    }
    assert!(finished.get());
    assert_eq!(total.load(Ordering::Relaxed), THREADS * CALLS);
    for t in 0..THREADS {
        assert_eq!(next[t].load(Ordering::Relaxed), CALLS);
    }
    assert!(!lp.run(RunMode::NoWait).unwrap());
}

fn stop_from_a_callback(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    fn tick(lp: &mut EventLoop, n: Rc<Cell<u32>>) {
        n.set(n.get() + 1);
        if n.get() == 10 {
            lp.stop();
        }
        lp.call_soon(move |lp| tick(lp, n)).unwrap();
    }
    let n = Rc::new(Cell::new(0));
    let c = n.clone();
    lp.call_soon(move |lp| tick(lp, c)).unwrap();
    assert!(
        lp.run(RunMode::Default).unwrap(),
        "stopped with work left: still alive"
    );
    assert_eq!(
        n.get(),
        10,
        "run returned after the iteration that called stop"
    );
    // The stop request was consumed: the next run continues; stop it from another thread.
    let handle = lp.handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        handle.stop();
    });
    assert!(lp.run(RunMode::Default).unwrap());
    stopper.join().unwrap();
    assert!(n.get() > 10);
}

fn run_once_and_nowait(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    assert!(
        !lp.run(RunMode::NoWait).unwrap(),
        "an empty loop is not alive"
    );
    assert!(
        !lp.run(RunMode::Once).unwrap(),
        "Once on an empty loop returns at once"
    );
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    lp.call_later(100 * MS, move |_| f.set(true)).unwrap();
    assert!(
        lp.run(RunMode::NoWait).unwrap(),
        "a pending timer keeps the loop alive"
    );
    assert!(!fired.get(), "NoWait does not wait for the timer");
    assert!(
        !lp.run(RunMode::Once).unwrap(),
        "Once waits for the timer, then nothing is left"
    );
    assert!(fired.get());
    let ran = Rc::new(Cell::new(0));
    let r = ran.clone();
    lp.call_soon(move |lp| {
        r.set(r.get() + 1);
        let r = r.clone();
        lp.call_soon(move |_| r.set(r.get() + 1)).unwrap();
    })
    .unwrap();
    assert!(
        lp.run(RunMode::NoWait).unwrap(),
        "the callback scheduled another one"
    );
    assert_eq!(ran.get(), 1);
    assert!(!lp.run(RunMode::Once).unwrap());
    assert_eq!(ran.get(), 2);
}

fn run_cannot_be_reentered(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let checked = Rc::new(Cell::new(false));
    let c = checked.clone();
    lp.call_soon(move |lp| {
        assert!(lp.is_running());
        let err = lp.run(RunMode::NoWait).unwrap_err();
        assert!(StateError::is(&err), "{err}");
        let mut events = [Event::default(); 4];
        assert!(StateError::is(
            &lp.poll_raw(Some(Duration::ZERO), &mut events).unwrap_err()
        ));
        assert!(StateError::is(&lp.shutdown().unwrap_err()));
        c.set(true);
    })
    .unwrap();
    lp.run(RunMode::Default).unwrap();
    assert!(checked.get());
    assert!(!lp.is_running());
}

fn panicking_callback_leaves_the_loop_consistent(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let ran = Rc::new(RefCell::new(Vec::new()));
    for i in 0..3 {
        let ran = ran.clone();
        lp.call_soon(move |_| {
            ran.borrow_mut().push(i);
            if i == 1 {
                panic!("callback 1 panics (expected by the test)");
            }
        })
        .unwrap();
    }
    let result = catch_unwind(AssertUnwindSafe(|| lp.run(RunMode::Default)));
    assert!(result.is_err(), "the panic reaches run's caller");
    assert!(!lp.is_running());
    assert_eq!(*ran.borrow(), [0, 1]);
    // The rest of the queue is still there and runs next time.
    assert!(!lp.run(RunMode::Default).unwrap());
    assert_eq!(*ran.borrow(), [0, 1, 2]);

    // A persistent reader whose callback panics stays registered.
    let (a, b) = pair();
    write_fd(&b, b"x");
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let fd = a.as_raw_fd();
    lp.add_reader(fd, move |lp| {
        c.set(c.get() + 1);
        if c.get() == 1 {
            panic!("reader panics once (expected by the test)");
        }
        lp.remove_reader(fd);
    })
    .unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| lp.run(RunMode::Default))).is_err());
    assert!(!lp.run(RunMode::Default).unwrap());
    assert_eq!(calls.get(), 2);
}

// ---------------------------------------------------------------------------------------------
// readers and writers

fn reader_and_writer_callbacks(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let (a, b) = pair();
    let fd = a.as_raw_fd();
    let reads = Rc::new(Cell::new(0));
    let r = reads.clone();
    lp.add_reader(fd, move |_| r.set(r.get() + 1)).unwrap();
    // Not readable yet: an iteration calls nothing.
    lp.run(RunMode::NoWait).unwrap();
    assert_eq!(reads.get(), 0);
    write_fd(&b, b"ping");
    lp.run(RunMode::Once).unwrap();
    assert_eq!(reads.get(), 1);
    // Level-triggered: still readable, called again.
    lp.run(RunMode::Once).unwrap();
    assert_eq!(reads.get(), 2);
    // Adding again replaces the callback.
    let replaced = Rc::new(Cell::new(0));
    let r = replaced.clone();
    lp.add_reader(fd, move |_| {
        r.set(r.get() + 1);
        assert_eq!(drain_fd(fd), 4);
    })
    .unwrap();
    lp.run(RunMode::Once).unwrap();
    assert_eq!((reads.get(), replaced.get()), (2, 1));
    assert!(lp.remove_reader(fd));
    assert!(!lp.remove_reader(fd), "second remove reports false");
    assert!(!lp.remove_reader(-1));
    write_fd(&b, b"more");
    assert!(!lp.run(RunMode::NoWait).unwrap(), "no watches left");
    assert_eq!(replaced.get(), 1);

    // A writer on an empty socket buffer is writable at once.
    let writes = Rc::new(Cell::new(0));
    let w = writes.clone();
    lp.add_writer(fd, move |lp| {
        w.set(w.get() + 1);
        assert!(lp.remove_writer(fd));
    })
    .unwrap();
    assert!(!lp.run(RunMode::Default).unwrap());
    assert_eq!(writes.get(), 1);
    assert_eq!(
        lp.add_reader(-1, |_| ()).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    // A forged huge fd number is refused, not used to size the per-fd table.
    assert_eq!(
        lp.add_reader(1 << 30, |_| ()).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    assert!(!lp.is_alive());
}

fn remove_reader_takes_effect_within_the_batch(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    // Two readable sockets: whichever callback runs first removes the other's reader, whose event
    // is then already in the same batch and must not be delivered.
    let (a1, b1) = pair();
    let (a2, b2) = pair();
    write_fd(&b1, b"1");
    write_fd(&b2, b"2");
    let (fd1, fd2) = (a1.as_raw_fd(), a2.as_raw_fd());
    let calls = Rc::new(RefCell::new(Vec::new()));
    for (me, other) in [(fd1, fd2), (fd2, fd1)] {
        let calls = calls.clone();
        lp.add_reader(me, move |lp| {
            calls.borrow_mut().push(me);
            lp.remove_reader(other);
            lp.remove_reader(me);
        })
        .unwrap();
    }
    // Both sockets are readable already, so the first poll reports both; once either callback
    // ran, nothing keeps the loop alive.
    let dog = watchdog(&mut lp, 30);
    while calls.borrow().is_empty() {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    for _ in 0..3 {
        lp.run(RunMode::NoWait).unwrap();
    }
    assert_eq!(
        calls.borrow().len(),
        1,
        "exactly one reader ran: {:?}",
        calls.borrow()
    );
    assert!(!lp.is_alive());
    drop((b1, b2));
}

fn writer_fires_when_a_full_socket_drains(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let (a, b) = pair();
    // Fill `a`'s send buffer until the kernel refuses more.
    let chunk = [0x5au8; 4096];
    let mut filled = 0;
    loop {
        match nix::unistd::write(&a, &chunk) {
            Ok(n) => filled += n,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let fd = a.as_raw_fd();
    let writable = Rc::new(Cell::new(0));
    let w = writable.clone();
    lp.add_writer(fd, move |lp| {
        w.set(w.get() + 1);
        lp.remove_writer(fd);
    })
    .unwrap();
    for _ in 0..3 {
        lp.run(RunMode::NoWait).unwrap();
    }
    assert_eq!(writable.get(), 0, "a full socket is not writable");
    assert_eq!(drain_fd(b.as_raw_fd()), filled);
    let dog = watchdog(&mut lp, 30);
    while writable.get() == 0 {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    assert_eq!(writable.get(), 1);
    assert!(!lp.is_alive());
}

fn many_timers_with_random_cancels_keep_deadline_order(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    const TIMERS: usize = 20_000;
    let fired: Rc<RefCell<Vec<(u64, usize)>>> = Rc::new(RefCell::new(Vec::new()));
    let base = lp.now();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut handles = Vec::with_capacity(TIMERS);
    let mut deadlines = Vec::with_capacity(TIMERS);
    for i in 0..TIMERS {
        // Deadlines within 20 ms, many ties.
        let deadline = base + (next() % 200) * 100_000;
        let fired = fired.clone();
        handles.push(
            lp.call_at(deadline, move |_| fired.borrow_mut().push((deadline, i)))
                .unwrap(),
        );
        deadlines.push(deadline);
    }
    let mut cancelled = vec![false; TIMERS];
    for _ in 0..TIMERS * 3 / 4 {
        let i = (next() % TIMERS as u64) as usize;
        assert_eq!(lp.cancel_timer(handles[i]), !cancelled[i]);
        cancelled[i] = true;
    }
    assert!(!lp.run(RunMode::Default).unwrap());
    let fired = fired.borrow();
    let mut expected: Vec<(u64, usize)> = (0..TIMERS)
        .filter(|&i| !cancelled[i])
        .map(|i| (deadlines[i], i))
        .collect();
    // Deadline order, ties in schedule order.
    expected.sort();
    assert_eq!(fired.len(), expected.len());
    assert!(*fired == expected, "timers fired out of order");
}

fn raw_events_seen_by_run_are_kept_for_poll_raw(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    // A raw timer does not keep run() alive, but its event, if run() sees it, is kept.
    let deadline = lp.now() + MS;
    lp.reactor_mut().add_timer(deadline, 9).unwrap();
    lp.call_later(5 * MS, |_| ()).unwrap();
    assert!(!lp.run(RunMode::Default).unwrap());
    let mut events = [Event::default(); 4];
    let n = lp.poll_raw(Some(Duration::ZERO), &mut events).unwrap();
    assert_eq!(n, 1);
    assert_eq!((events[0].token, events[0].result), (9, 0));
    assert_eq!(lp.poll_raw(Some(Duration::ZERO), &mut events).unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// completion ops

struct Conn {
    fd: Option<OwnedFd>,
    pending: Vec<u8>,
    sending: bool,
    eof: bool,
}

/// Sends what is pending on one connection, one send at a time (so bytes stay in order).
fn pump(
    lp: &mut EventLoop,
    conns: &Rc<RefCell<HashMap<RawFd, Conn>>>,
    fd: RawFd,
    closed: &Rc<Cell<usize>>,
) {
    let mut map = conns.borrow_mut();
    let conn = map.get_mut(&fd).unwrap();
    if conn.sending {
        return;
    }
    if !conn.pending.is_empty() {
        conn.sending = true;
        let data = std::mem::take(&mut conn.pending);
        let len = data.len();
        drop(map);
        let (conns, closed) = (conns.clone(), closed.clone());
        lp.send(fd, data, move |lp, sent| {
            assert_eq!(sent.expect("send failed"), len);
            conns.borrow_mut().get_mut(&fd).unwrap().sending = false;
            pump(lp, &conns, fd, &closed);
        })
        .unwrap();
    } else if conn.eof {
        let owned = conn.fd.take().unwrap();
        drop(map);
        let closed = closed.clone();
        lp.close(owned, move |_, r| {
            r.expect("close failed");
            closed.set(closed.get() + 1);
        })
        .unwrap();
    }
}

fn accept_recv_send_echo(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    const CLIENTS: usize = 6;
    let listener = listener();
    let addr = listener.local_addr().unwrap();
    let conns: Rc<RefCell<HashMap<RawFd, Conn>>> = Rc::new(RefCell::new(HashMap::new()));
    let closed = Rc::new(Cell::new(0));
    let accept_op: Rc<Cell<Option<OpHandle>>> = Rc::new(Cell::new(None));
    let (c, cl, ao) = (conns.clone(), closed.clone(), accept_op.clone());
    let accepted = Rc::new(Cell::new(0));
    let acc = accepted.clone();
    let op = lp
        .accept(listener.as_raw_fd(), move |lp, conn| {
            let conn = conn.expect("accept failed");
            let fd = conn.as_raw_fd();
            acc.set(acc.get() + 1);
            if acc.get() == CLIENTS {
                // Every client is in: stop accepting so the loop can finish.
                assert!(lp.cancel(ao.get().unwrap()));
            }
            c.borrow_mut().insert(
                fd,
                Conn {
                    fd: Some(conn),
                    pending: Vec::new(),
                    sending: false,
                    eof: false,
                },
            );
            let (c, cl) = (c.clone(), cl.clone());
            lp.recv(fd, move |lp, data| {
                let data = data.expect("recv failed");
                {
                    let mut map = c.borrow_mut();
                    let conn = map.get_mut(&fd).unwrap();
                    if data.is_empty() {
                        conn.eof = true;
                    } else {
                        conn.pending.extend_from_slice(data);
                    }
                }
                pump(lp, &c, fd, &cl);
            })
            .unwrap();
        })
        .unwrap();
    accept_op.set(Some(op));
    let dog = watchdog(&mut lp, 60);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let payload = random_bytes(1 + i * 200_000, i as u64);
                let mut stream = TcpStream::connect(addr).unwrap();
                let mut reader = stream.try_clone().unwrap();
                let expected = payload.len();
                let read = std::thread::spawn(move || {
                    let mut got = Vec::with_capacity(expected);
                    reader.read_to_end(&mut got).unwrap();
                    got
                });
                for chunk in payload.chunks(7919) {
                    stream.write_all(chunk).unwrap();
                }
                stream.shutdown(std::net::Shutdown::Write).unwrap();
                let got = read.join().unwrap();
                assert_eq!(got.len(), payload.len(), "client {i}: length");
                assert!(got == payload, "client {i}: bytes differ");
            })
        })
        .collect();
    loop {
        let alive = lp.run(RunMode::Once).unwrap();
        if closed.get() == CLIENTS {
            break;
        }
        assert!(alive);
    }
    for c in clients {
        c.join().unwrap();
    }
    assert!(lp.cancel_timer(dog));
    assert_eq!(accepted.get(), CLIENTS);
    assert!(!lp.cancel(op), "the accept was already cancelled");
    assert!(!lp.run(RunMode::Default).unwrap());
    for conn in conns.borrow().values() {
        assert!(
            conn.fd.is_none(),
            "every connection was closed through the loop"
        );
    }
}

fn connect_to_a_closed_port_is_refused(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let sock = nonblocking_tcp_socket();
    let got = Rc::new(RefCell::new(None));
    let g = got.clone();
    lp.connect(sock.as_raw_fd(), &sockaddr(addr), move |_, r| {
        *g.borrow_mut() = Some(r.map_err(|e| e.raw_os_error()));
    })
    .unwrap();
    let dog = watchdog(&mut lp, 30);
    while got.borrow().is_none() {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    assert_eq!(*got.borrow(), Some(Err(Some(libc::ECONNREFUSED))));

    // And a successful connect + close through the loop closes the fd.
    let listener = listener();
    let sock = nonblocking_tcp_socket();
    let raw = sock.as_raw_fd();
    let state = Rc::new(Cell::new(0));
    let s = state.clone();
    lp.connect(
        sock.as_raw_fd(),
        &sockaddr(listener.local_addr().unwrap()),
        move |lp, r| {
            r.expect("connect failed");
            s.set(1);
            let s = s.clone();
            lp.close(sock, move |_, r| {
                r.expect("close failed");
                s.set(2);
            })
            .unwrap();
        },
    )
    .unwrap();
    let dog = watchdog(&mut lp, 30);
    while state.get() != 2 {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    assert!(
        !fd_is_open(raw) || raw == listener.as_raw_fd(),
        "close closed the fd"
    );
}

fn recv_reports_eof_and_cancel_stops_callbacks(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let (a, b) = pair();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    lp.recv(a.as_raw_fd(), move |_, data| {
        s.borrow_mut()
            .push(data.map(|d| d.to_vec()).map_err(|e| e.raw_os_error()))
    })
    .unwrap();
    write_fd(&b, b"hello");
    let dog = watchdog(&mut lp, 30);
    while seen.borrow().is_empty() {
        lp.run(RunMode::Once).unwrap();
    }
    drop(b);
    while seen.borrow().len() < 2 {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    assert_eq!(*seen.borrow(), [Ok(b"hello".to_vec()), Ok(Vec::new())]);
    assert!(!lp.is_alive(), "the recv ended at EOF");

    // Cancel: no callback after cancel returns.
    let (a, b) = pair();
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let op = lp
        .recv(a.as_raw_fd(), move |_, _| c.set(c.get() + 1))
        .unwrap();
    write_fd(&b, b"data");
    std::thread::sleep(Duration::from_millis(5));
    assert!(lp.cancel(op));
    assert!(!lp.cancel(op), "second cancel reports false");
    assert!(!lp.run(RunMode::NoWait).unwrap());
    assert_eq!(calls.get(), 0);
    assert!(
        !lp.cancel(OpHandle::from_raw(12345)),
        "a forged handle is not found"
    );

    // Closing an fd through the loop ends the loop's ops and watches on it first.
    let (a, b) = pair();
    let raw = a.as_raw_fd();
    let calls = Rc::new(Cell::new(0));
    let (c1, c2) = (calls.clone(), calls.clone());
    lp.recv(raw, move |_, _| c1.set(c1.get() + 1)).unwrap();
    lp.add_reader(raw, move |_| c2.set(c2.get() + 1)).unwrap();
    write_fd(&b, b"unread");
    std::thread::sleep(Duration::from_millis(5));
    let closed = Rc::new(Cell::new(false));
    let cl = closed.clone();
    lp.close(a, move |_, r| {
        r.expect("close failed");
        cl.set(true);
    })
    .unwrap();
    assert!(!lp.remove_reader(raw), "the close removed the reader");
    let dog = watchdog(&mut lp, 30);
    while !closed.get() {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    assert_eq!(calls.get(), 0, "no callback for ops on a closed fd");
    assert!(!lp.is_alive());
    drop(b);
}

/// `recvmsg`: each datagram once and in order with its sender (an empty one too), no callback
/// after a cancel, a stream socket refused.
fn recvmsg_delivers_datagrams_with_their_senders(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let op = lp
        .recvmsg(server.as_raw_fd(), move |_, datagram| {
            let (payload, source) = datagram.expect("recvmsg failed");
            // A sockaddr_in: family, then the port in network order.
            let port = u16::from_be_bytes([source[2], source[3]]);
            s.borrow_mut().push((payload.to_vec(), port));
        })
        .unwrap();
    let to = server.local_addr().unwrap();
    for message in [&b"first"[..], b"", b"third"] {
        client.send_to(message, to).unwrap();
    }
    let dog = watchdog(&mut lp, 30);
    while seen.borrow().len() < 3 {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    let port = client.local_addr().unwrap().port();
    assert_eq!(
        *seen.borrow(),
        [
            (b"first".to_vec(), port),
            (Vec::new(), port),
            (b"third".to_vec(), port)
        ]
    );
    client.send_to(b"after the cancel", to).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    assert!(lp.cancel(op));
    assert!(!lp.run(RunMode::NoWait).unwrap());
    assert_eq!(seen.borrow().len(), 3, "no callback after the cancel");

    // A stream socket is refused, with no callback.
    let (a, _b) = pair();
    let err = lp
        .recvmsg(a.as_raw_fd(), |_, _| panic!("called"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EOPNOTSUPP));
    assert!(!lp.is_alive());
}

/// A UDP echo in callback mode: each datagram goes back to its sender with `send_to`, whose
/// callback gets the byte count; without an address an unconnected socket's send fails in its
/// callback.
fn send_to_answers_each_sender(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let fd = server.as_raw_fd();
    let sent = Rc::new(RefCell::new(Vec::new()));
    let s = sent.clone();
    let op = lp
        .recvmsg(fd, move |lp, datagram| {
            let (payload, source) = datagram.expect("recvmsg failed");
            // SAFETY: `source` holds the sender's sockaddr, `source.len()` bytes.
            let to = unsafe {
                <SockaddrStorage as nix::sys::socket::SockaddrLike>::from_raw(
                    source.as_ptr().cast(),
                    Some(source.len() as u32),
                )
            }
            .expect("a socket address");
            let s = s.clone();
            lp.send_to(fd, payload.to_vec(), Some(&to), move |_, result| {
                s.borrow_mut().push(result.expect("send_to failed"));
            })
            .unwrap();
        })
        .unwrap();
    let clients = [
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
    ];
    let messages: [&[u8]; 4] = [b"one", b"", b"three, from the second client", b"four"];
    for (i, message) in messages.iter().enumerate() {
        clients[i % 2]
            .send_to(message, server.local_addr().unwrap())
            .unwrap();
    }
    let dog = watchdog(&mut lp, 30);
    while sent.borrow().len() < messages.len() {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    assert_eq!(*sent.borrow(), messages.map(|m| m.len()));
    let mut buf = [0u8; 64];
    for (i, message) in messages.iter().enumerate() {
        let client = &clients[i % 2];
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], *message, "echo {i}, to its sender");
    }
    assert!(lp.cancel(op));

    let failed = Rc::new(Cell::new(0));
    let f = failed.clone();
    lp.send_to(fd, &b"to nobody"[..], None, move |_, result| {
        f.set(result.unwrap_err().raw_os_error().unwrap());
    })
    .unwrap();
    let dog = watchdog(&mut lp, 30);
    while failed.get() == 0 {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    assert_eq!(failed.get(), libc::EDESTADDRREQ);
    assert!(!lp.is_alive());
}

/// Starts a recv on `fd` that appends to `got` and cancels itself (restarting from a fresh
/// callback) after every 64 KiB, as a server applying backpressure does.
fn start_stuttering_recv(
    lp: &mut EventLoop,
    fd: RawFd,
    got: Rc<RefCell<Vec<u8>>>,
    restarts: Rc<Cell<usize>>,
) {
    let op: Rc<Cell<Option<OpHandle>>> = Rc::new(Cell::new(None));
    let own_op = op.clone();
    let handle = lp
        .recv(fd, move |lp, data| {
            let data = data.expect("recv failed");
            if data.is_empty() {
                return;
            }
            let before = got.borrow().len();
            got.borrow_mut().extend_from_slice(data);
            if before / (64 << 10) != got.borrow().len() / (64 << 10) {
                assert!(lp.cancel(own_op.get().expect("the op is live")));
                restarts.set(restarts.get() + 1);
                let (got, restarts) = (got.clone(), restarts.clone());
                lp.call_soon(move |lp| start_stuttering_recv(lp, fd, got, restarts))
                    .unwrap();
            }
        })
        .unwrap();
    op.set(Some(handle));
}

fn cancelling_and_restarting_recv_loses_no_bytes(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let (a, b) = pair();
    const TOTAL: usize = 4 << 20;
    let payload = random_bytes(TOTAL, 99);
    let to_send = payload.clone();
    let writer = std::thread::spawn(move || {
        let mut peer = std::os::unix::net::UnixStream::from(b);
        peer.set_nonblocking(false).unwrap();
        peer.write_all(&to_send).unwrap();
    });
    let got = Rc::new(RefCell::new(Vec::with_capacity(TOTAL)));
    let restarts = Rc::new(Cell::new(0));
    start_stuttering_recv(&mut lp, a.as_raw_fd(), got.clone(), restarts.clone());
    let dog = watchdog(&mut lp, 60);
    while got.borrow().len() < TOTAL {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    writer.join().unwrap();
    let got = got.borrow();
    assert_eq!(got.len(), TOTAL);
    assert!(*got == payload, "bytes lost or reordered across cancels");
    // Stashed bytes arrive in larger chunks, so there are fewer restarts than 64 KiB steps.
    assert!(restarts.get() >= 2, "only {} restarts", restarts.get());
}

// ---------------------------------------------------------------------------------------------
// futures and the thread pool

fn futures_completed_from_other_threads(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let loop_thread = std::thread::current().id();
    let results = Rc::new(RefCell::new(HashMap::new()));
    let mut futures = Vec::new();
    for i in 0..16u64 {
        let fut = lp.create_future();
        for order in 0..2 {
            let results = results.clone();
            lp.add_done_callback(&fut, move |_, f: &LoopFuture| {
                assert_eq!(
                    std::thread::current().id(),
                    loop_thread,
                    "done-callbacks run on the loop thread"
                );
                let mut map = results.borrow_mut();
                let entry = map.entry(i).or_insert_with(Vec::new);
                entry.push((order, f.state(), f.result()));
            })
            .unwrap();
        }
        futures.push(fut);
    }
    let dog = watchdog(&mut lp, 30);
    let completers: Vec<_> = futures
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, fut)| {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(2 * (i as u64 % 4)));
                match i % 3 {
                    0 => assert!(fut.set_result(i as u64 * 7)),
                    1 => assert!(fut.set_error(-(i as i32))),
                    _ => assert!(fut.cancel()),
                }
                // Only the first completion counts.
                assert!(!fut.set_result(1));
                assert!(!fut.cancel());
            })
        })
        .collect();
    lp.run(RunMode::Once).unwrap();
    while results.borrow().len() < 16 || results.borrow().values().any(|v| v.len() < 2) {
        lp.run(RunMode::Once).unwrap();
    }
    for c in completers {
        c.join().unwrap();
    }
    for (i, calls) in results.borrow().iter() {
        let expected = match i % 3 {
            0 => (FutureState::Done, Some(Ok(i * 7))),
            1 => (FutureState::Done, Some(Err(-(*i as i32)))),
            _ => (FutureState::Cancelled, None),
        };
        assert_eq!(calls.len(), 2, "future {i}: each callback once");
        for (order, call) in calls.iter().enumerate() {
            assert_eq!(call.0, order, "future {i}: callbacks in the order added");
            assert_eq!((call.1, call.2), expected, "future {i}");
        }
    }
    // A callback added after completion still runs, on the next iteration.
    let late = Rc::new(Cell::new(false));
    let l = late.clone();
    lp.add_done_callback(&futures[0], move |_, f| {
        assert_eq!(f.result(), Some(Ok(0)));
        l.set(true);
    })
    .unwrap();
    assert!(lp.cancel_timer(dog));
    assert!(!lp.run(RunMode::Default).unwrap());
    assert!(late.get());
    // A future of another loop is refused.
    if let Some(other) = make(choice) {
        let foreign = other.create_future();
        let err = lp.add_done_callback(&foreign, |_, _| ()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}

fn run_in_thread_results(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    lp.set_pool_size(3).unwrap();
    assert!(lp.set_pool_size(0).is_err());
    let loop_thread = std::thread::current().id();
    let results = Rc::new(RefCell::new(Vec::new()));
    let mut futures = Vec::new();
    for i in 0..12u64 {
        let fut = lp
            .run_in_thread(move || {
                assert_ne!(std::thread::current().id(), loop_thread);
                std::thread::sleep(Duration::from_millis(1));
                match i {
                    5 => Err(-libc::EIO),
                    7 => panic!("work 7 panics (expected by the test)"),
                    _ => Ok(i * i),
                }
            })
            .unwrap();
        let r = results.clone();
        lp.add_done_callback(&fut, move |_, f| r.borrow_mut().push((i, f.result())))
            .unwrap();
        futures.push(fut);
    }
    // Worker threads run with every signal blocked.
    let mask = lp
        .run_in_thread(|| {
            let mut set = nix::sys::signal::SigSet::empty();
            nix::sys::signal::pthread_sigmask(
                nix::sys::signal::SigmaskHow::SIG_BLOCK,
                None,
                Some(&mut set),
            )
            .unwrap();
            let blocked = [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1, libc::SIGCHLD]
                .iter()
                .all(|&s| set.contains(nix::sys::signal::Signal::try_from(s).unwrap()));
            Ok(u64::from(blocked))
        })
        .unwrap();
    let dog = watchdog(&mut lp, 30);
    // Pool jobs keep the loop alive by themselves (the mask future has no callback).
    while !mask.is_complete() || results.borrow().len() < 12 {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    assert_eq!(
        mask.result(),
        Some(Ok(1)),
        "worker threads block all signals"
    );
    let mut got = results.borrow().clone();
    got.sort_by_key(|r| r.0);
    for (i, result) in got {
        let expected = match i {
            5 => Some(Err(-libc::EIO)),
            7 => Some(Err(ERR_PANICKED)),
            _ => Some(Ok(i * i)),
        };
        assert_eq!(result, expected, "job {i}");
    }
    assert!(!lp.run(RunMode::Default).unwrap());
}

// ---------------------------------------------------------------------------------------------
// signals

fn signal_handler_runs_on_the_loop(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    lp.add_signal(libc::SIGUSR2, move |_, signo| s.borrow_mut().push(signo))
        .unwrap();
    let dog = watchdog(&mut lp, 30);
    for round in 1..=3 {
        // raise() targets this thread, where the loop blocked the signal.
        // SAFETY: plain libc call; the signal is blocked in this thread, so no handler runs.
        assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
        while seen.borrow().len() < round {
            lp.run(RunMode::Once).unwrap();
        }
    }
    // Replacing the callback keeps the signal handled.
    let replaced = Rc::new(Cell::new(0));
    let r = replaced.clone();
    lp.add_signal(libc::SIGUSR2, move |_, _| r.set(r.get() + 1))
        .unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
    while replaced.get() == 0 {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    assert_eq!(*seen.borrow(), [libc::SIGUSR2; 3]);
    assert!(lp.remove_signal(libc::SIGUSR2));
    assert!(!lp.remove_signal(libc::SIGUSR2));
    assert!(lp.add_signal(0, |_, _| ()).is_err());
    assert!(lp.add_signal(65, |_, _| ()).is_err());
    assert!(!lp.run(RunMode::NoWait).unwrap());
}

// ---------------------------------------------------------------------------------------------
// raw mode and raw callbacks

/// Raw callback: counts calls and records the last result in the `Log` `data` points at.
struct Log {
    calls: Cell<usize>,
    results: RefCell<Vec<i32>>,
}

unsafe fn log_cb(
    _lp: &mut EventLoop,
    outcome: &Outcome<'_>,
    data: *mut c_void,
    _extra: *mut c_void,
) {
    // SAFETY: every registration in these tests passes a `Log` that outlives the loop.
    let log = unsafe { &*(data as *const Log) };
    log.calls.set(log.calls.get() + 1);
    log.results.borrow_mut().push(outcome.result);
}

fn log_callback(log: &Log) -> RawCallback {
    // SAFETY: `log_cb` only reads the `Log` behind `data`, which the tests keep alive (declared
    // before the loop, so dropped after it) and use only on this thread.
    unsafe {
        RawCallback::new(
            log_cb,
            log as *const Log as *mut c_void,
            std::ptr::null_mut(),
        )
    }
}

fn new_log() -> Log {
    Log {
        calls: Cell::new(0),
        results: RefCell::new(Vec::new()),
    }
}

fn poll_raw_returns_only_raw_events(choice: BackendChoice) {
    let log = new_log();
    let Some(mut lp) = make(choice) else { return };
    let (a, b) = pair();
    write_fd(&b, b"x");
    // A raw watch and a callback-mode timer plus a raw-callback call_soon.
    lp.reactor_mut()
        .watch(a.as_raw_fd(), Interest::READABLE, 42)
        .unwrap();
    let err = lp
        .reactor_mut()
        .watch(a.as_raw_fd(), Interest::READABLE, TOKEN_RESERVED | 1)
        .unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EINVAL),
        "reserved tokens are refused"
    );
    assert_eq!(lp.reactor_mut().cancel_token(TOKEN_RESERVED | 1), 0);
    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    lp.call_later(MS, move |_| f.set(true)).unwrap();
    lp.call_soon_raw(log_callback(&log)).unwrap();
    let mut events = [Event::default(); 8];
    let mut raw_seen = 0;
    let start = Instant::now();
    while !fired.get() || raw_seen == 0 {
        assert!(start.elapsed() < Duration::from_secs(30));
        let n = lp
            .poll_raw(Some(Duration::from_millis(100)), &mut events)
            .unwrap();
        for ev in &events[..n] {
            assert!(
                ev.token == 42 || ev.token == u64::MAX,
                "unexpected token {:#x}",
                ev.token
            );
            if ev.token == 42 {
                assert_eq!(
                    ev.result as u32 & Interest::READABLE.bits(),
                    Interest::READABLE.bits()
                );
                raw_seen += 1;
            }
        }
    }
    assert_eq!(log.calls.get(), 1);
    assert_eq!(*log.results.borrow(), [0]);
    // The wake event passes through poll_raw.
    lp.handle().wake();
    let mut woke = false;
    for _ in 0..10 {
        let n = lp
            .poll_raw(Some(Duration::from_millis(100)), &mut events)
            .unwrap();
        woke |= events[..n].iter().any(|e| e.token == u64::MAX);
        if woke {
            break;
        }
    }
    assert!(woke);
}

/// An events array at least as large as the loop's batch is polled into directly: the loop's own
/// events mixed in with the raw ones are taken out and dispatched, the raw ones compacted.
fn poll_raw_with_a_large_array_separates_loop_events(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let pairs: Vec<(OwnedFd, OwnedFd)> = (0..8).map(|_| pair()).collect();
    let fired: Rc<RefCell<HashSet<usize>>> = Rc::default();
    for (i, (a, b)) in pairs.iter().enumerate() {
        write_fd(b, b"x");
        // Raw watches and callback readers alternate, so the loop's events land between raw ones.
        if i % 2 == 0 {
            lp.reactor_mut()
                .watch(a.as_raw_fd(), Interest::READABLE, 200 + i as u64)
                .unwrap();
        } else {
            let f = fired.clone();
            lp.add_reader(a.as_raw_fd(), move |_| {
                f.borrow_mut().insert(i);
            })
            .unwrap();
        }
    }
    let mut events = [Event::default(); 1024];
    let mut raw: HashSet<u64> = HashSet::new();
    let start = Instant::now();
    while raw.len() < 4 || fired.borrow().len() < 4 {
        assert!(start.elapsed() < Duration::from_secs(30));
        let n = lp
            .poll_raw(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
        for ev in &events[..n] {
            assert!(
                ev.token == u64::MAX || (200..208).contains(&ev.token),
                "unexpected token {:#x}",
                ev.token
            );
            if ev.token != u64::MAX {
                assert_eq!(ev.result as u32, Interest::READABLE.bits());
                raw.insert(ev.token);
            }
        }
    }
    assert_eq!(raw, HashSet::from([200, 202, 204, 206]));
    assert_eq!(*fired.borrow(), HashSet::from([1, 3, 5, 7]));
}

fn poll_raw_with_a_tiny_array_loses_nothing(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let pairs: Vec<(OwnedFd, OwnedFd)> = (0..6).map(|_| pair()).collect();
    for (i, (a, b)) in pairs.iter().enumerate() {
        lp.reactor_mut()
            .recv_multi(a.as_raw_fd(), 100 + i as u64)
            .unwrap();
        write_fd(b, format!("message {i}").as_bytes());
    }
    // Callback-mode work runs even through an empty array.
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    lp.call_soon(move |_| r.set(true)).unwrap();
    assert_eq!(lp.poll_raw(Some(Duration::ZERO), &mut []).unwrap(), 0);
    assert!(ran.get());
    let mut got: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut one = [Event::default(); 1];
    let start = Instant::now();
    while got.len() < pairs.len() {
        assert!(start.elapsed() < Duration::from_secs(30), "got {got:?}");
        if lp
            .poll_raw(Some(Duration::from_millis(50)), &mut one)
            .unwrap()
            == 1
        {
            let ev = one[0];
            if ev.token == u64::MAX {
                continue;
            }
            assert_ne!(ev.flags & flags::BUFFER, 0);
            let data = lp
                .event_data(&ev)
                .expect("the buffer is still valid")
                .to_vec();
            got.entry(ev.token).or_default().extend_from_slice(&data);
        }
    }
    for i in 0..pairs.len() {
        assert_eq!(got[&(100 + i as u64)], format!("message {i}").as_bytes());
    }
}

/// A raw-mode caller with no callback-mode work of its own (the Python loop) still runs a
/// callback another thread sends while it waits in `poll_raw`, and a timer that callback sets.
fn poll_raw_runs_callbacks_sent_from_another_thread(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let ran = Arc::new(AtomicUsize::new(0));
    let handle = lp.handle();
    let remote_ran = ran.clone();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        handle
            .call_soon_threadsafe(move |lp| {
                remote_ran.fetch_add(1, Ordering::SeqCst);
                let timer_ran = remote_ran.clone();
                lp.call_later(MS, move |_| {
                    timer_ran.fetch_add(10, Ordering::SeqCst);
                })
                .unwrap();
            })
            .unwrap();
    });
    let mut events = [Event::default(); 8];
    let start = Instant::now();
    while ran.load(Ordering::SeqCst) != 11 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ran {}",
            ran.load(Ordering::SeqCst)
        );
        // Wait without a deadline: only the wake of the sender, then the timer, end it.
        let n = lp.poll_raw(None, &mut events).unwrap();
        assert!(events[..n].iter().all(|e| e.token == u64::MAX));
    }
    sender.join().unwrap();
}

fn raw_buffer_events_seen_by_run_wait_for_poll_raw(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    let (a, b) = pair();
    lp.reactor_mut().recv_multi(a.as_raw_fd(), 7).unwrap();
    write_fd(&b, b"raw bytes");
    let dog = watchdog(&mut lp, 30);
    // run() holds the raw event back and returns without polling again.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(30));
        assert!(lp.run(RunMode::Once).unwrap());
        let mut events = [Event::default(); 4];
        let n = lp.poll_raw(Some(Duration::ZERO), &mut events).unwrap();
        if let Some(ev) = events[..n].iter().find(|e| e.token == 7) {
            assert_ne!(ev.flags & flags::BUFFER, 0);
            assert_eq!(lp.event_data(ev), Some(&b"raw bytes"[..]));
            break;
        }
    }
    lp.cancel_timer(dog);
}

fn raw_callbacks_echo(choice: BackendChoice) {
    // A recv_raw/send_raw echo on a socketpair through raw callbacks and `extra` pointing at the
    // connection state.
    struct State {
        fd: RawFd,
        buf: Vec<u8>,
        echoed: usize,
        sends: usize,
    }
    unsafe fn on_sent(
        _lp: &mut EventLoop,
        outcome: &Outcome<'_>,
        data: *mut c_void,
        _: *mut c_void,
    ) {
        // SAFETY: `data` is the test's `State`, alive for the whole test.
        let state = unsafe { &mut *(data as *mut State) };
        assert!(outcome.result > 0, "send failed: {}", outcome.result);
        state.echoed += outcome.result as usize;
        state.sends -= 1;
    }
    unsafe fn on_recv(
        lp: &mut EventLoop,
        outcome: &Outcome<'_>,
        data: *mut c_void,
        _: *mut c_void,
    ) {
        // SAFETY: as above.
        let state = unsafe { &mut *(data as *mut State) };
        if outcome.result <= 0 {
            return;
        }
        assert_eq!(outcome.bytes.len(), outcome.result as usize);
        assert_eq!(state.sends, 0, "the peer waits for each echo");
        state.buf.clear();
        state.buf.extend_from_slice(outcome.bytes);
        state.sends += 1;
        // SAFETY: on_sent only touches `State`; the buffer is not modified while the send is in
        // flight (the peer only writes again after reading the echo).
        unsafe {
            let cb = RawCallback::new(on_sent, data, std::ptr::null_mut());
            lp.send_raw(state.fd, state.buf.as_ptr(), state.buf.len(), cb)
                .unwrap();
        }
    }
    let Some(mut lp) = make(choice) else { return };
    let (a, b) = pair();
    // Owned through a raw pointer for the whole test: the callbacks mutate it through `data`.
    let state_ptr = Box::into_raw(Box::new(State {
        fd: a.as_raw_fd(),
        buf: Vec::with_capacity(4096),
        echoed: 0,
        sends: 0,
    }));
    let data = state_ptr as *mut c_void;
    // SAFETY: the state outlives the loop's use of it (the recv is cancelled and the last send
    // completes before it is freed).
    let recv_cb = unsafe { RawCallback::new(on_recv, data, std::ptr::null_mut()) };
    let op = lp.recv_raw(a.as_raw_fd(), recv_cb).unwrap();
    let mut peer = std::os::unix::net::UnixStream::from(b);
    peer.set_nonblocking(false).unwrap();
    let handle = lp.handle();
    let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let fin = finished.clone();
    let peer_thread = std::thread::spawn(move || {
        for i in 0..200usize {
            let msg = random_bytes(1 + i * 13, i as u64);
            peer.write_all(&msg).unwrap();
            let mut back = vec![0u8; msg.len()];
            peer.read_exact(&mut back).unwrap();
            assert!(back == msg, "message {i} echoed wrong");
        }
        // Interrupts the loop's `run(Once)` so it sees this thread has finished.
        fin.store(true, Ordering::Release);
        handle.wake();
        peer
    });
    let dog = watchdog(&mut lp, 30);
    while !finished.load(Ordering::Acquire) {
        lp.run(RunMode::Once).unwrap();
    }
    let _peer = peer_thread.join().unwrap();
    lp.cancel_timer(dog);
    assert!(lp.cancel(op));
    let expected: usize = (0..200usize).map(|i| 1 + i * 13).sum();
    // The last send's completion may still be on its way.
    loop {
        // SAFETY: `state_ptr` is live; no callback runs during this read (only inside `run`).
        if unsafe { (*state_ptr).sends } == 0 {
            break;
        }
        lp.run(RunMode::Once).unwrap();
    }
    assert!(!lp.is_alive(), "no op references the state any more");
    // SAFETY: created by Box::into_raw above; the loop holds no registration using it now.
    let state = unsafe { Box::from_raw(state_ptr) };
    assert_eq!(state.echoed, expected);
}

fn raw_forms_of_futures_pool_and_threadsafe_calls(choice: BackendChoice) {
    let done_log = new_log();
    let remote_log = new_log();
    let Some(mut lp) = make(choice) else { return };
    unsafe fn square(data: *mut c_void, extra: *mut c_void) -> Result<u64, i32> {
        let (a, b) = (data as u64, extra as u64);
        if b == 0 {
            Err(-libc::EDOM)
        } else {
            Ok(a * b)
        }
    }
    unsafe fn record_future(
        _lp: &mut EventLoop,
        outcome: &Outcome<'_>,
        data: *mut c_void,
        _: *mut c_void,
    ) {
        // SAFETY: `data` is the test's `Log`, alive for the whole test.
        let log = unsafe { &*(data as *const Log) };
        let future = outcome.future.expect("a done-callback is given its future");
        log.calls.set(log.calls.get() + 1);
        log.results.borrow_mut().push(match future.result() {
            Some(Ok(v)) => v as i32,
            Some(Err(e)) => e,
            None => i32::MIN,
        });
        assert_eq!(future.tag(), 77);
    }
    // SAFETY: `square` only multiplies the two words as integers.
    let work =
        unsafe { ringloop::callback::RawWork::new(square, 6 as *mut c_void, 7 as *mut c_void) };
    let ok = lp.run_in_thread_raw(work).unwrap();
    // SAFETY: as above.
    let work =
        unsafe { ringloop::callback::RawWork::new(square, 6 as *mut c_void, std::ptr::null_mut()) };
    let err = lp.run_in_thread_raw(work).unwrap();
    for fut in [&ok, &err] {
        fut.set_tag(77);
        // SAFETY: `record_future` only reads the `Log` behind `data`, declared before the loop.
        let cb = unsafe {
            RawCallback::new(
                record_future,
                &done_log as *const Log as *mut c_void,
                std::ptr::null_mut(),
            )
        };
        lp.add_done_callback_raw(fut, cb).unwrap();
    }
    let handle = lp.handle();
    let cb = log_callback(&remote_log);
    std::thread::spawn(move || handle.call_soon_threadsafe_raw(cb).unwrap())
        .join()
        .unwrap();
    let dog = watchdog(&mut lp, 30);
    while done_log.calls.get() < 2 || remote_log.calls.get() < 1 {
        lp.run(RunMode::Once).unwrap();
    }
    lp.cancel_timer(dog);
    // The two jobs may finish in either order.
    let mut results = done_log.results.borrow().clone();
    results.sort();
    assert_eq!(results, [-libc::EDOM, 42]);
    assert_eq!(*remote_log.results.borrow(), [0]);
}

// ---------------------------------------------------------------------------------------------
// closing with work in flight

fn dropping_a_loop_with_work_in_flight(choice: BackendChoice) {
    let timer_log = new_log();
    let reader_log = new_log();
    let recv_log = new_log();
    let soon_log = new_log();
    let send_log = new_log();
    let remote_log = new_log();
    let Some(mut lp) = make(choice) else { return };
    let (a, _b) = pair();
    let (c, d) = pair();
    let (e, _f) = pair();
    // Closures that must be dropped (not run): their captured Rc's count shows it.
    let token = Rc::new(());
    let t = token.clone();
    lp.call_later(3600 * 1000 * MS, move |_| drop(t)).unwrap();
    let t = token.clone();
    lp.add_reader(c.as_raw_fd(), move |_| drop(t.clone()))
        .unwrap();
    // Raw callbacks: each gets one -ECANCELED call.
    lp.call_later_raw(3600 * 1000 * MS, log_callback(&timer_log))
        .unwrap();
    lp.add_reader_raw(a.as_raw_fd(), log_callback(&reader_log))
        .unwrap();
    lp.recv_raw(e.as_raw_fd(), log_callback(&recv_log)).unwrap();
    // A send that cannot finish: far more than a socketpair buffers, nobody reading.
    let big = vec![0xabu8; 8 << 20];
    // SAFETY: `big` outlives the loop (declared before it is dropped below).
    unsafe {
        lp.send_raw(
            c.as_raw_fd(),
            big.as_ptr(),
            big.len(),
            log_callback(&send_log),
        )
        .unwrap()
    };
    let owned_send_done = Rc::new(Cell::new(false));
    let o = owned_send_done.clone();
    lp.send(c.as_raw_fd(), vec![1u8; 1 << 20], move |_, r| {
        assert!(r.is_err(), "the owned send is cancelled");
        o.set(true);
    })
    .unwrap();
    // Futures: a pending one with a callback, and pool work — one running, more queued.
    let pending = lp.create_future();
    let done_called = Rc::new(Cell::new(None));
    let dc = done_called.clone();
    lp.add_done_callback(&pending, move |_, f| dc.set(Some(f.state())))
        .unwrap();
    lp.set_pool_size(1).unwrap();
    let started = Arc::new(Mutex::new(false));
    let s = started.clone();
    let running = lp
        .run_in_thread(move || {
            *s.lock().unwrap() = true;
            std::thread::sleep(Duration::from_millis(100));
            Ok(1)
        })
        .unwrap();
    let queued: Vec<LoopFuture> = (0..4)
        .map(|_| lp.run_in_thread(|| Ok(2)).unwrap())
        .collect();
    // Let the loop start the send and the running job.
    for _ in 0..3 {
        lp.run(RunMode::NoWait).unwrap();
    }
    // Scheduled but never run: cancelled by the close.
    let t = token.clone();
    lp.call_soon(move |_| panic!("must not run during close {t:?}"))
        .unwrap();
    lp.call_soon_raw(log_callback(&soon_log)).unwrap();
    lp.handle()
        .call_soon_threadsafe_raw(log_callback(&remote_log))
        .unwrap();
    let handle = lp.handle();
    let start = Instant::now();
    drop(lp);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "closing must not hang"
    );
    assert_eq!(
        Rc::strong_count(&token),
        1,
        "closures were dropped, not kept"
    );
    assert_eq!(*timer_log.results.borrow(), [-libc::ECANCELED]);
    assert_eq!(*reader_log.results.borrow(), [-libc::ECANCELED]);
    assert_eq!(*recv_log.results.borrow(), [-libc::ECANCELED]);
    assert_eq!(*soon_log.results.borrow(), [-libc::ECANCELED]);
    assert_eq!(*remote_log.results.borrow(), [-libc::ECANCELED]);
    assert_eq!(
        send_log.calls.get(),
        1,
        "the send got exactly one final call"
    );
    let send_result = send_log.results.borrow()[0];
    assert!(send_result == -libc::ECANCELED || (0..big.len() as i32).contains(&send_result));
    assert!(owned_send_done.get());
    assert_eq!(
        done_called.get(),
        Some(FutureState::Cancelled),
        "pending future cancelled, callback ran"
    );
    assert_eq!(pending.state(), FutureState::Cancelled);
    if *started.lock().unwrap() {
        assert_eq!(running.result(), Some(Ok(1)), "the running job finished");
    }
    for q in &queued {
        assert!(
            q.state() != FutureState::Pending,
            "queued jobs were cancelled or ran"
        );
    }
    assert!(
        queued.iter().any(|q| q.state() == FutureState::Cancelled),
        "the queue was dropped"
    );
    // The handle outlives the loop: calls fail cleanly.
    assert!(handle.is_closed());
    let err = handle.call_soon_threadsafe(|_| ()).unwrap_err();
    assert!(StateError::is(&err));
    let fut = handle.create_future();
    assert!(fut.set_result(3), "futures of a closed loop still complete");
    drop((a, c, d, e, big));
}

fn shutdown_refuses_new_work(choice: BackendChoice) {
    let Some(mut lp) = make(choice) else { return };
    lp.shutdown().unwrap();
    lp.shutdown().unwrap();
    assert!(lp.is_closed());
    assert!(StateError::is(&lp.call_soon(|_| ()).unwrap_err()));
    assert!(StateError::is(&lp.call_later(0, |_| ()).unwrap_err()));
    assert!(StateError::is(&lp.run(RunMode::Default).unwrap_err()));
    let (a, _b) = pair();
    assert!(StateError::is(
        &lp.add_reader(a.as_raw_fd(), |_| ()).unwrap_err()
    ));
    assert!(StateError::is(&lp.run_in_thread(|| Ok(0)).unwrap_err()));
    assert!(StateError::is(
        &lp.reactor_mut()
            .watch(a.as_raw_fd(), Interest::READABLE, 1)
            .unwrap_err()
    ));
}

macro_rules! suite {
    ($($test:ident),* $(,)?) => {
        mod uring {
            $(
                #[test]
                fn $test() {
                    super::$test(super::BackendChoice::IoUring);
                }
            )*
        }
        mod epoll {
            $(
                #[test]
                fn $test() {
                    super::$test(super::BackendChoice::Epoll);
                }
            )*
        }
    };
}

suite!(
    call_soon_runs_in_fifo_order,
    call_later_runs_in_deadline_order,
    cancelling_a_timer_twice_is_harmless,
    zero_delay_timer_rescheduling_itself_does_not_starve_the_loop,
    call_soon_threadsafe_from_8_threads,
    stop_from_a_callback,
    run_once_and_nowait,
    run_cannot_be_reentered,
    panicking_callback_leaves_the_loop_consistent,
    reader_and_writer_callbacks,
    remove_reader_takes_effect_within_the_batch,
    writer_fires_when_a_full_socket_drains,
    many_timers_with_random_cancels_keep_deadline_order,
    raw_events_seen_by_run_are_kept_for_poll_raw,
    accept_recv_send_echo,
    connect_to_a_closed_port_is_refused,
    recv_reports_eof_and_cancel_stops_callbacks,
    recvmsg_delivers_datagrams_with_their_senders,
    send_to_answers_each_sender,
    cancelling_and_restarting_recv_loses_no_bytes,
    futures_completed_from_other_threads,
    run_in_thread_results,
    signal_handler_runs_on_the_loop,
    poll_raw_returns_only_raw_events,
    poll_raw_with_a_tiny_array_loses_nothing,
    poll_raw_runs_callbacks_sent_from_another_thread,
    poll_raw_with_a_large_array_separates_loop_events,
    raw_buffer_events_seen_by_run_wait_for_poll_raw,
    raw_callbacks_echo,
    raw_forms_of_futures_pool_and_threadsafe_calls,
    dropping_a_loop_with_work_in_flight,
    shutdown_refuses_new_work,
);
