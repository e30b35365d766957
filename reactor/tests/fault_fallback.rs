//! Fallback for real: io_uring made unavailable to one process by a seccomp filter (io_uring_setup
//! fails with EPERM, as in a locked-down container), in a forked child so nothing else is
//! affected. There the default reactor must come up on epoll and work, and forcing io_uring must
//! fail with `Unsupported` and a message that says io_uring is unavailable and why.
//!
//! The whole reactor suite also runs under the same filter: `make -C reliability test` runs it
//! through `reliability/no_uring`.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use ringloop::{BackendChoice, BackendKind, Event, Options, Reactor};

#[cfg(target_arch = "x86_64")]
const THIS_AUDIT_ARCH: u32 = 0xC000_003E; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const THIS_AUDIT_ARCH: u32 = 0xC000_00B7; // AUDIT_ARCH_AARCH64

/// Installs, in the calling process, a filter under which io_uring_setup fails with EPERM.
fn deny_io_uring_setup() -> std::io::Result<()> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k, jt, jf| libc::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    };
    // struct seccomp_data: nr at offset 0, arch at offset 4.
    let program = [
        stmt(LD_W_ABS, 4),
        jump(THIS_AUDIT_ARCH, 1, 0),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        stmt(LD_W_ABS, 0),
        jump(libc::SYS_io_uring_setup as u32, 0, 1),
        stmt(
            RET_K,
            libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA),
        ),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl and seccomp with a valid, live filter program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The child's checks; returns 0 or the number of the failed step (and prints why).
fn child_checks() -> i32 {
    if let Err(err) = deny_io_uring_setup() {
        eprintln!("cannot install the seccomp filter: {err}");
        return 1;
    }
    // Forcing io_uring: a clear error, never a silent switch.
    match Reactor::new(&Options {
        backend: BackendChoice::IoUring,
        ..Options::default()
    }) {
        Ok(_) => {
            eprintln!("io_uring came up despite the filter");
            return 2;
        }
        Err(err) => {
            let text = err.to_string();
            eprintln!("forced io_uring: {text}");
            if err.kind() != std::io::ErrorKind::Unsupported
                || !text.contains("io_uring backend unavailable")
                || !text.contains("io_uring_setup")
            {
                return 3;
            }
        }
    }
    // The default falls back to epoll (the environment override is ignored here).
    let mut reactor = match Reactor::new(&Options {
        honor_env: false,
        ..Options::default()
    }) {
        Ok(r) => r,
        Err(err) => {
            eprintln!("default reactor failed: {err}");
            return 4;
        }
    };
    if reactor.backend() != BackendKind::Epoll {
        return 5;
    }
    // And it works: a receive and a timer.
    let (a, mut b) = UnixStream::pair().unwrap();
    reactor.recv_multi(a.as_raw_fd(), 1).unwrap();
    reactor.add_timer(Reactor::now_ns(), 2);
    b.write_all(b"over epoll").unwrap();
    let mut events = [Event::default(); 8];
    let (mut got, mut timer) = (Vec::new(), false);
    for _ in 0..100 {
        let n = reactor
            .poll(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
        for ev in &events[..n] {
            match ev.token {
                1 => got.extend_from_slice(reactor.event_data(ev).unwrap()),
                2 => timer = true,
                _ => return 6,
            }
        }
        if timer && got == b"over epoll" {
            return 0;
        }
    }
    7
}

#[test]
fn without_io_uring_the_default_is_epoll_and_forcing_it_is_a_clear_error() {
    // SAFETY: the child runs only `child_checks` and leaves with `_exit`. This binary has no
    // other test, so no other thread of the harness holds a lock the child needs.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let code = std::panic::catch_unwind(child_checks).unwrap_or(99);
        // SAFETY: leaving the child without returning into the harness.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed at step {} (status {status:#x}); see its stderr above",
        libc::WEXITSTATUS(status)
    );
}
