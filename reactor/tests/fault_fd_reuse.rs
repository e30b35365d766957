//! An fd closed while the reactor had a watch, a receive or a send pending on it, and its number
//! reused at once by a new socket with a new owner (new tokens). No event of the old ops may
//! reach the new owner, no byte of the old send may reach the new socket, and the new owner's ops
//! work normally. Two ways to close: the reactor's close op, and cancel-then-close by the caller.

mod support;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ringloop::{BackendChoice, Event, Interest, Options, Reactor};
use support::*;

/// The tests rely on "the lowest free fd number is the one just closed", so no two of them may
/// open fds at the same time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

const OLD_WATCH: u64 = 1;
const OLD_RECV: u64 = 2;
const OLD_SEND: u64 = 3;
const CLOSE: u64 = 4;
const NEW_WATCH: u64 = 10;
const NEW_RECV: u64 = 11;
const NEW_SEND: u64 = 12;

/// A socket pair whose first end has number `fd` (the lowest free number, which it must be).
fn pair_at(fd: RawFd) -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    assert_eq!(a.as_raw_fd(), fd, "the fd number was not reused");
    a.set_nonblocking(true).unwrap();
    (a, b)
}

/// Arms a watch and a receive on `fd` and makes data pending on it, some of it already collected
/// by a poll whose events array was too small (so events are queued inside the reactor).
fn arm_old(reactor: &mut Reactor, fd: RawFd, peer: &mut UnixStream) {
    reactor.watch(fd, Interest::READABLE, OLD_WATCH).unwrap();
    reactor.recv_multi(fd, OLD_RECV).unwrap();
    peer.write_all(&random_bytes(50_000, 1)).unwrap();
    let mut one = [Event::default(); 1];
    reactor
        .poll(Some(Duration::from_millis(100)), &mut one)
        .unwrap();
    peer.write_all(&random_bytes(50_000, 2)).unwrap();
}

/// The new owner's view: only new tokens, its bytes intact, nothing from the old send.
fn check_new_owner(
    reactor: &mut Reactor,
    new: &UnixStream,
    mut new_peer: UnixStream,
    old_send_len: Option<usize>,
) {
    let fd = new.as_raw_fd();
    reactor.watch(fd, Interest::READABLE, NEW_WATCH).unwrap();
    reactor.recv_multi(fd, NEW_RECV).unwrap();
    let payload = random_bytes(20_000, 3);
    new_peer.write_all(&payload).unwrap();
    let reply = b"to the new peer only".to_vec();
    // SAFETY: `reply` outlives its final event (awaited below).
    unsafe { reactor.send(fd, reply.as_ptr(), reply.len(), NEW_SEND) }.unwrap();
    let mut got = Vec::new();
    let mut finals: HashMap<u64, Vec<i32>> = HashMap::new();
    let mut events = [Event::default(); 32];
    poll_until(reactor, &mut events, |r, batch| {
        for ev in batch {
            match ev.token {
                NEW_RECV => got.extend_from_slice(r.event_data(ev).unwrap()),
                NEW_WATCH => {}
                NEW_SEND | OLD_SEND => finals.entry(ev.token).or_default().push(ev.result),
                other => {
                    panic!("event of a closed fd's op reached the new owner: {ev:?} ({other})")
                }
            }
        }
        got.len() == payload.len()
            && finals.contains_key(&NEW_SEND)
            && (old_send_len.is_none() || finals.contains_key(&OLD_SEND))
    });
    assert!(got == payload, "new owner's bytes differ");
    assert_eq!(finals[&NEW_SEND], vec![reply.len() as i32]);
    if let Some(len) = old_send_len {
        let old = &finals[&OLD_SEND];
        assert_eq!(old.len(), 1, "exactly one final event for the old send");
        assert!(
            old[0] == -libc::ECANCELED || (old[0] >= 0 && old[0] as usize <= len),
            "{old:?}"
        );
    }
    // Quiet afterwards except the new watch (level-triggered, data consumed by the recv).
    for ev in poll_for(reactor, Duration::from_millis(50)) {
        assert!(
            ev.token >= NEW_WATCH,
            "late event of a closed fd's op: {ev:?}"
        );
    }
    new_peer
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let n = new_peer.read(&mut buf).unwrap();
    assert_eq!(
        &buf[..n],
        &reply[..],
        "the new peer receives only the new send"
    );
    assert_eq!(reactor.cancel_token(NEW_WATCH), 1);
    assert_eq!(reactor.cancel_token(NEW_RECV), 1);
}

fn reused_after_close_op(choice: BackendChoice) {
    let _serial = serial();
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, mut peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let fd = ours.as_raw_fd();
    arm_old(&mut reactor, fd, &mut peer);
    reactor.close(OwnedFd::from(ours), CLOSE).unwrap();
    let mut events = [Event::default(); 32];
    let mut closed = None;
    poll_until(&mut reactor, &mut events, |_, batch| {
        for ev in batch {
            assert_eq!(
                ev.token, CLOSE,
                "event of a closed fd's op after close: {ev:?}"
            );
            closed = Some(ev.result);
        }
        closed.is_some()
    });
    assert_eq!(closed, Some(0));
    let (new, new_peer) = pair_at(fd);
    check_new_owner(&mut reactor, &new, new_peer, None);
    assert_eq!(reactor.pending(), 0);
}

fn reused_after_cancel_then_close(choice: BackendChoice) {
    let _serial = serial();
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, mut peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let fd = ours.as_raw_fd();
    arm_old(&mut reactor, fd, &mut peer);
    assert_eq!(reactor.cancel_token(OLD_WATCH), 1);
    assert_eq!(reactor.cancel_token(OLD_RECV), 1);
    // Closed and reused with no poll in between: the kernel may still hold the old ops.
    drop(ours);
    let (new, new_peer) = pair_at(fd);
    check_new_owner(&mut reactor, &new, new_peer, None);
    assert_eq!(reactor.pending(), 0);
}

fn reused_while_send_pending(choice: BackendChoice) {
    let _serial = serial();
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let (ours, peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let fd = ours.as_raw_fd();
    // Far more than the socket buffer holds while the peer does not read.
    let big = random_bytes(8 << 20, 4);
    // SAFETY: `big` outlives the old send's final event (awaited in check_new_owner).
    unsafe { reactor.send(fd, big.as_ptr(), big.len(), OLD_SEND) }.unwrap();
    let _ = poll_for(&mut reactor, Duration::from_millis(20));
    reactor.cancel_token(OLD_SEND);
    drop(ours);
    let (new, new_peer) = pair_at(fd);
    check_new_owner(&mut reactor, &new, new_peer, Some(big.len()));
    drop(peer);
    assert_eq!(reactor.pending(), 0);
}

per_backend!(
    reused_after_close_op,
    reused_after_cancel_then_close,
    reused_while_send_pending
);
