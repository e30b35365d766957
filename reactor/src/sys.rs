//! The one place where raw system-call results become [`io::Error`]s, plus the few process-wide
//! facts the reactor needs (the monotonic clock, fork detection).

#![warn(clippy::undocumented_unsafe_blocks)]

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Maps a raw result to `io::Result`: a negative value is `-errno` (io_uring completion results,
/// and libc calls after [`errno_result`] folded `-1`/`errno` into that form); anything else is the
/// success value.
///
/// Every syscall failure in the crate goes through here, so there is exactly one place that turns
/// errno into `io::Error`.
pub(crate) fn neg_errno<T: Into<i64> + Copy>(ret: T) -> io::Result<T> {
    let value: i64 = ret.into();
    if value < 0 {
        if value == -1 {
            // -1 from a libc wrapper: the real code is in errno, and must be read before anything
            // else can overwrite it.
            Err(io::Error::last_os_error())
        } else {
            Err(io::Error::from_raw_os_error((-value) as i32))
        }
    } else {
        Ok(ret)
    }
}

/// The `-errno` form of an error, as event results carry it (`-EIO` when the error has no code).
pub(crate) fn errno_of(err: &io::Error) -> i32 {
    -err.raw_os_error().unwrap_or(libc::EIO)
}

/// The `-errno` form of a `nix` error, as event results carry it.
pub(crate) fn neg_errno_of(err: nix::Error) -> i32 {
    -(err as i32)
}

/// Converts a `nix` error into the crate's error type.
pub(crate) fn from_nix(err: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(err as i32)
}

/// The calling thread's kernel thread id, cached per thread (a close on a single-issuer ring asks
/// for it; a system call each time would be one per close) and asked again after a fork.
pub(crate) fn current_tid() -> libc::pid_t {
    thread_local! {
        static CACHED: Cell<(u64, libc::pid_t)> = const { Cell::new((u64::MAX, 0)) };
    }
    let generation = fork_generation();
    CACHED.with(|cached| {
        let (seen, tid) = cached.get();
        if seen == generation {
            return tid;
        }
        // SAFETY: gettid takes no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        cached.set((generation, tid));
        tid
    })
}

/// Whether thread `tid` of this process still exists. `ESRCH` means it is gone and its exit is
/// complete (the kernel has run the thread's exit work, io_uring's cancellation included); a
/// thread id reused by a newer thread reads as "exists", the cautious answer.
pub(crate) fn thread_exists(tid: libc::pid_t) -> bool {
    // SAFETY: signal 0 delivers nothing, it only checks that the thread can be signalled.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, 0) };
    !matches!(neg_errno(rc), Err(err) if err.raw_os_error() == Some(libc::ESRCH))
}

/// Closes `fd` now; the result as a completion event carries it (`0` or `-errno`).
pub(crate) fn close_now(fd: std::os::fd::OwnedFd) -> i32 {
    use std::os::fd::IntoRawFd;
    match nix::unistd::close(fd.into_raw_fd()) {
        Ok(()) => 0,
        Err(errno) => neg_errno_of(errno),
    }
}

/// Whether `fd` names an open file (`fcntl(F_GETFD)` succeeds).
pub(crate) fn fd_is_open(fd: std::os::fd::RawFd) -> bool {
    // SAFETY: F_GETFD only reads the fd's flags; a bad fd only yields an error.
    neg_errno(unsafe { libc::fcntl(fd, libc::F_GETFD) }).is_ok()
}

/// Whether `fd` is a regular file or a directory, which epoll refuses (EPERM) and a poll on which
/// would report "ready" forever; the io_uring backend refuses them the same way.
pub(crate) fn is_always_ready_file(fd: std::os::fd::RawFd) -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success; a bad fd only yields an error.
    let rc = unsafe { libc::fstat(fd, stat.as_mut_ptr()) };
    if neg_errno(rc).is_err() {
        return false;
    }
    // SAFETY: initialised by the successful call above.
    let mode = unsafe { stat.assume_init() }.st_mode & libc::S_IFMT;
    mode == libc::S_IFREG || mode == libc::S_IFDIR
}

/// Whether `fd` is a pipe or FIFO: receive ops read these (sockets are received from; other
/// files are refused with `ENOTSOCK`).
pub(crate) fn is_fifo(fd: std::os::fd::RawFd) -> bool {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success; a bad fd only yields an error.
    let rc = unsafe { libc::fstat(fd, stat.as_mut_ptr()) };
    if neg_errno(rc).is_err() {
        return false;
    }
    // SAFETY: initialised by the successful call above.
    unsafe { stat.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFIFO
}

/// One `read` from a pipe into `buf` that never blocks, whatever the pipe's `O_NONBLOCK` flag
/// (`preadv2` with `RWF_NOWAIT`, at the file position: pipes have none). `EAGAIN` when empty.
pub(crate) fn read_nowait(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: one iovec describing `buf`, which is writable for its whole length and outlives the
    // call; offset -1 reads at the current position.
    let rc = unsafe { libc::preadv2(fd, &iov, 1, -1, libc::RWF_NOWAIT) };
    neg_errno(rc as i64).map(|n| n as usize)
}

/// One `recvmsg` of a datagram from `fd` into the receive buffer at `buf` (`size` bytes), laid out
/// as [`crate::datagram`] says: header, sender's address, payload. Never blocks. Returns the payload
/// bytes the buffer holds (the header keeps the datagram's full length).
///
/// # Safety
/// `buf..buf + size` is writable and nobody else uses it during the call; `size` is larger than
/// [`crate::datagram::PAYLOAD`].
pub(crate) unsafe fn recv_datagram(
    fd: std::os::fd::RawFd,
    buf: *mut u8,
    size: usize,
) -> io::Result<usize> {
    use crate::datagram::{MSG_FLAGS, NAME, NAME_LEN, NAME_MAX, PAYLOAD, PAYLOAD_LEN};
    let room = size - PAYLOAD;
    let mut iov = libc::iovec {
        // SAFETY: PAYLOAD < size (the caller's promise): inside the buffer.
        iov_base: unsafe { buf.add(PAYLOAD) }.cast(),
        iov_len: room,
    };
    // SAFETY: an all-zero msghdr is valid (no name, no iovecs, no control); filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // SAFETY: NAME + NAME_MAX = PAYLOAD < size: the address room is inside the buffer.
    msg.msg_name = unsafe { buf.add(NAME) }.cast();
    msg.msg_namelen = NAME_MAX as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // MSG_TRUNC: the result is the datagram's real length even when it did not fit.
    // SAFETY: `msg` describes memory inside the buffer, valid for the call.
    let rc = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
    let full = neg_errno(rc as i64)? as usize;
    let header = [
        (NAME_LEN, (msg.msg_namelen as usize).min(NAME_MAX) as u32),
        (NAME_LEN + 4, 0), // no control data
        (PAYLOAD_LEN, u32::try_from(full).unwrap_or(u32::MAX)),
        (MSG_FLAGS, msg.msg_flags as u32),
    ];
    for (at, value) in header {
        // SAFETY: the header's 16 bytes are inside the buffer; unaligned writes are allowed.
        unsafe { buf.add(at).cast::<u32>().write_unaligned(value) };
    }
    Ok(full.min(room))
}

/// The payload bytes a received datagram's buffer holds, from its header (as io_uring or
/// [`recv_datagram`] wrote it), at most `room` (the buffer's size after the header and address).
///
/// # Safety
/// `buf` points at a buffer holding such a header, which nobody writes during the call.
pub(crate) unsafe fn datagram_held(buf: *const u8, room: usize) -> usize {
    // SAFETY: the header is at the start of the buffer (the caller's promise).
    let full = unsafe {
        buf.add(crate::datagram::PAYLOAD_LEN)
            .cast::<u32>()
            .read_unaligned()
    };
    (full as usize).min(room)
}

/// An integer `SOL_SOCKET` option of `fd` (`SO_ERROR`, `SO_TYPE`...).
pub(crate) fn socket_option(fd: std::os::fd::RawFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value`/`len` are valid out-parameters of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    neg_errno(rc)?;
    Ok(value)
}

/// Whether `fd` is a datagram socket (`SO_TYPE` is `SOCK_DGRAM`): `ENOTSOCK`, `EBADF`... when
/// the question has no answer.
pub(crate) fn is_datagram_socket(fd: std::os::fd::RawFd) -> io::Result<bool> {
    Ok(socket_option(fd, libc::SO_TYPE)? == libc::SOCK_DGRAM)
}

/// `(st_dev, st_ino)` of an open fd, or `None` when it is not open.
pub(crate) fn file_identity(fd: std::os::fd::RawFd) -> Option<(u64, u64)> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success; a bad fd only yields an error.
    let rc = unsafe { libc::fstat(fd, stat.as_mut_ptr()) };
    neg_errno(rc).ok()?;
    // SAFETY: initialised by the successful call above.
    let stat = unsafe { stat.assume_init() };
    Some((stat.st_dev, stat.st_ino))
}

/// CLOCK_MONOTONIC in nanoseconds.
pub(crate) fn monotonic_ns() -> u64 {
    // CLOCK_MONOTONIC cannot fail on Linux; vDSO makes this a plain memory read.
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64
}

/// Bumped in every child right after `fork()`; a reactor remembers the value it was created under
/// and refuses to touch its kernel objects (the parent's ring, epoll set) when it differs.
static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static FORK_HOOK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// The current fork generation. Installs the `pthread_atfork` hook on first use.
pub(crate) fn fork_generation() -> u64 {
    FORK_HOOK.call_once(|| {
        // SAFETY: registering a plain `extern "C"` function that only touches an atomic, which is
        // async-signal-safe and therefore fine in a child after fork.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        // pthread_atfork only fails with ENOMEM; fork detection is then unavailable, which only
        // weakens a diagnostic, so it is not worth failing reactor creation over.
        let _ = rc;
    });
    FORK_GENERATION.load(Ordering::Relaxed)
}

/// The error a reactor reports when used in a forked child.
pub(crate) fn forked_child_error() -> io::Error {
    io::Error::other(crate::ForkedChildError)
}
