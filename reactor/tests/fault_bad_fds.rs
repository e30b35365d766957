//! Fd numbers no process can have open (negative, above any RLIMIT_NOFILE, `i32::MAX`) given to
//! every fd-taking operation: each is refused with an error (`EBADF`), promptly, without the
//! reactor sizing anything by the number.

mod support;

use std::net::SocketAddr;

use nix::sys::socket::SockaddrStorage;
use ringloop::{BackendChoice, Interest, Options};
use support::*;

/// Numbers above the kernel's hard ceiling for fds (fs.nr_open is at most 2^30).
const NEVER_OPEN: [i32; 4] = [-1, i32::MIN, 1 << 30, i32::MAX];

fn every_op_refuses(choice: BackendChoice, fds: &[i32]) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let addr = SockaddrStorage::from("127.0.0.1:9".parse::<SocketAddr>().unwrap());
    let data = [0u8; 16];
    for &fd in fds {
        assert!(
            reactor.watch(fd, Interest::READABLE, 1).is_err(),
            "watch({fd})"
        );
        assert!(reactor.recv_multi(fd, 1).is_err(), "recv_multi({fd})");
        assert!(reactor.accept_multi(fd, 1).is_err(), "accept_multi({fd})");
        assert!(reactor.connect(fd, &addr, 1).is_err(), "connect({fd})");
        // SAFETY: `data` outlives the reactor.
        assert!(
            unsafe { reactor.send(fd, data.as_ptr(), data.len(), 1) }.is_err(),
            "send({fd})"
        );
    }
    assert_eq!(reactor.pending(), 0);
}

fn negative_fds_are_refused(choice: BackendChoice) {
    every_op_refuses(choice, &NEVER_OPEN[..2]);
}

fn huge_fds_are_refused(choice: BackendChoice) {
    every_op_refuses(choice, &NEVER_OPEN[2..]);
}

per_backend!(negative_fds_are_refused, huge_fds_are_refused);
