//! Raw token mode: the caller submits operations with its own `u64` tokens and drains completion
//! events with `rl_poll`. This is what language bindings use (one foreign call per iteration).

use std::ffi::{c_int, c_void};
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

use ringloop::callback::EventLoop;
use ringloop::{Event, Interest, OpId};

use crate::error;
use crate::guard::guard;
use crate::handle::{lookup, rl_loop, with_loop, write_out};
use crate::RL_TOKEN_RESERVED;

/// One completion event, identical in layout to the reactor's event record (24 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct rl_event {
    /// The token the operation was submitted with (`RL_WAKE_TOKEN` for a wake-up).
    pub token: u64,
    /// Bytes transferred, a new fd, a ready mask (`RL_READABLE`/`RL_WRITABLE`), a signal number,
    /// 0, or `-errno`.
    pub result: i32,
    /// Bit set of `RL_EV_MORE` and `RL_EV_BUFFER`.
    pub flags: u32,
    /// The receive buffer id when `RL_EV_BUFFER` is set, else 0.
    pub aux: u64,
}

// `rl_poll` hands the caller's `rl_event` array to the reactor as `[Event]`: the two records must
// be the same in every respect.
const _: () = {
    use std::mem::{align_of, offset_of, size_of};
    assert!(size_of::<rl_event>() == size_of::<Event>());
    assert!(align_of::<rl_event>() == align_of::<Event>());
    assert!(offset_of!(rl_event, token) == offset_of!(Event, token));
    assert!(offset_of!(rl_event, result) == offset_of!(Event, result));
    assert!(offset_of!(rl_event, flags) == offset_of!(Event, flags));
    assert!(offset_of!(rl_event, aux) == offset_of!(Event, aux));
};

fn check_token(token: u64) -> Result<u64, c_int> {
    if token >= RL_TOKEN_RESERVED {
        Err(-libc::EINVAL)
    } else {
        Ok(token)
    }
}

fn check_fd(fd: c_int) -> Result<c_int, c_int> {
    if fd < 0 {
        Err(-libc::EBADF)
    } else {
        Ok(fd)
    }
}

/// Takes ownership of an fd the caller hands over (`rl_op_close`, `rl_close`). A number that is not
/// open is refused with `-EBADF` before an `OwnedFd` exists, so the error path can never close a
/// number the caller did not own (or that another thread has opened meanwhile).
pub(crate) fn take_fd(fd: c_int) -> Result<OwnedFd, c_int> {
    let fd = check_fd(fd)?;
    nix::fcntl::fcntl(
        // SAFETY: the borrow only lives for this F_GETFD query, which reads the fd table.
        unsafe { BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(|errno| -(errno as c_int))?;
    // SAFETY: `fd` is open and the caller transfers its ownership to the library (documented).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Submits an op with the common checks and writes its id to `op_out`.
fn submit(
    r#loop: *mut rl_loop,
    token: u64,
    op_out: *mut u64,
    body: impl FnOnce(&mut EventLoop, u64) -> Result<OpId, c_int>,
) -> c_int {
    with_loop(r#loop, |state| {
        let token = match check_token(token) {
            Ok(t) => t,
            Err(code) => return code,
        };
        match body(state, token) {
            Ok(op) => {
                // SAFETY: `op_out` is NULL or writable (the caller's promise, stated per function).
                unsafe { write_out(op_out, op.into_raw()) };
                0
            }
            Err(code) => code,
        }
    })
}

/// Converts the C timeout convention to the reactor's.
pub(crate) fn timeout_from_ns(timeout_ns: i64) -> Option<Duration> {
    u64::try_from(timeout_ns).ok().map(Duration::from_nanos)
}

/// Waits for events and writes up to `capacity` of them to `events`.
///
/// `timeout_ns < 0` waits until at least one event is ready, `0` does not wait, `> 0` waits at
/// most that long. Submissions made since the last call go to the kernel in the same system call
/// where the backend allows it. Events that do not fit stay queued for the next call; nothing is
/// dropped. The receive buffers named by the previous call's `RL_EV_BUFFER` events are recycled
/// by this call: read (or copy) their bytes before calling `rl_poll` again.
///
/// If callback-mode work is registered on the loop (timers, readers, futures, ...), this call
/// dispatches it and returns only raw-mode events and the `RL_WAKE_TOKEN` event.
///
/// Returns the number of events written (0 on timeout or signal interruption), `-EINVAL` when
/// `events` is NULL (or not 8-byte aligned) with a nonzero `capacity`, `RL_EHANDLE`, `RL_ESTATE`
/// when another thread is using the loop or when called from a callback of this loop, or
/// `-errno`.
///
/// Loop thread only. Blocking here holds no lock another thread's thread-safe call needs, so
/// bindings may call it with their interpreter lock released (Python: through `ctypes.CDLL`).
///
/// # Safety
/// `events` is valid for writing `capacity` records (or `capacity` is 0).
#[no_mangle]
pub unsafe extern "C" fn rl_poll(
    r#loop: *mut rl_loop,
    timeout_ns: i64,
    events: *mut rl_event,
    capacity: u32,
) -> c_int {
    guard(|| {
        if capacity > 0 && (events.is_null() || !events.is_aligned()) {
            return -libc::EINVAL;
        }
        let capacity = capacity.min(c_int::MAX as u32) as usize;
        let out: &mut [Event] = if capacity == 0 {
            &mut []
        } else {
            // SAFETY: `events` is non-null, aligned and valid for `capacity` records (the
            // caller's promise); `rl_event` and `Event` have the same layout (checked above) and
            // every bit pattern is a valid record.
            unsafe { std::slice::from_raw_parts_mut(events.cast::<Event>(), capacity) }
        };
        let timeout = timeout_from_ns(timeout_ns);
        with_loop(r#loop, |lp| {
            error::code(lp.poll_raw(timeout, out).map(|n| n as i64))
        })
    })
}

/// Watches `fd` for readiness: a persistent, level-triggered watch (asyncio's add_reader /
/// add_writer). While `fd` is ready, each `rl_poll` returns one event with `token`, `result` =
/// the ready bits of `interest`, and `RL_EV_MORE`; until the watch is cancelled with
/// `rl_op_cancel`.
///
/// `interest` is `RL_READABLE`, `RL_WRITABLE` or both. Several watches may exist on one fd.
/// Stores the op id in `*op_out` when `op_out` is not NULL. Returns 0, `-EINVAL` (bad interest or
/// reserved token), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, or `-errno`. The fd stays the caller's.
///
/// Loop thread only.
///
/// # Safety
/// `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_watch(
    r#loop: *mut rl_loop,
    fd: c_int,
    interest: u32,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        let fd = check_fd(fd)?;
        let interest = Interest::from_bits(interest).ok_or(-libc::EINVAL)?;
        state
            .reactor_mut()
            .watch(fd, interest, token)
            .map_err(|e| error::from_io(&e))
    })
}

/// Starts a multishot receive on the stream socket or pipe `fd` into loop-owned buffers.
///
/// A pipe is read without ever blocking the loop, whatever its `O_NONBLOCK`. On the io_uring
/// backend pipes need Linux 6.7; before that, and for other kinds of files, the receive ends with
/// `-ENOTSOCK`.
///
/// Each event has `RL_EV_BUFFER`, `aux` = the buffer id and `result` = the byte count; the bytes
/// are at `base + aux * buffer_size` (see `rl_buffers`) until the next `rl_poll` (or until
/// `rl_buffer_release`, see `rl_buffer_keep`). Every event but the last has `RL_EV_MORE`; the
/// last has `result` 0 (end of stream) or `-errno`, or comes after `rl_op_cancel`. When the loop
/// runs out of buffers the receive pauses and resumes after the next `rl_poll`: no `-ENOBUFS`, no
/// lost bytes.
///
/// Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL`, `-EBADF`, `RL_EHANDLE`,
/// `RL_ESTATE`, `-errno`. The fd stays the caller's. Loop thread only.
///
/// # Safety
/// `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_recv(
    r#loop: *mut rl_loop,
    fd: c_int,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        let fd = check_fd(fd)?;
        state
            .reactor_mut()
            .recv_multi(fd, token)
            .map_err(|e| error::from_io(&e))
    })
}

/// Starts a multishot datagram receive on the `SOCK_DGRAM` socket `fd` (UDP, Unix datagram) into
/// loop-owned buffers: one event per datagram, with `RL_EV_MORE | RL_EV_BUFFER | RL_EV_DATAGRAM`
/// and `aux` = the buffer id. In the buffer at `base + aux * buffer_size` (see `rl_buffers`):
/// the sender's address at `RL_DGRAM_NAME` (its length a `uint32_t` at `RL_DGRAM_NAME_LEN`), and
/// `result` payload bytes at `RL_DGRAM_PAYLOAD` (0 for an empty datagram). A datagram longer
/// than `buffer_size - RL_DGRAM_PAYLOAD` is cut short: its full length is the `uint32_t` at
/// `RL_DGRAM_PAYLOAD_LEN` and `MSG_TRUNC` is set in the one at `RL_DGRAM_MSG_FLAGS`. Valid until
/// the next `rl_poll`, as other receive buffers (`rl_buffer_keep` keeps one).
///
/// An error (`-ECONNREFUSED` after an ICMP error on a connected socket, ...) is the last event,
/// without `RL_EV_MORE`: start a new receive to go on. Datagrams the op had received but not
/// delivered when it is cancelled are dropped with it. When the loop runs out of buffers the
/// receive pauses until the next `rl_poll` (datagrams wait in the socket, as the kernel keeps
/// them).
///
/// Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (reserved token, or
/// buffers of `RL_DGRAM_PAYLOAD` bytes or less), `-EBADF`, `-ENOTSOCK`, `-EOPNOTSUPP` (not a
/// datagram socket), `RL_EHANDLE`, `RL_ESTATE`, `-errno`. The fd stays the caller's. Loop thread
/// only.
///
/// # Safety
/// `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_recvmsg(
    r#loop: *mut rl_loop,
    fd: c_int,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        let fd = check_fd(fd)?;
        state
            .reactor_mut()
            .recvmsg_multi(fd, token)
            .map_err(|e| error::from_io(&e))
    })
}

/// One receive of at most `max_len` bytes from the stream socket `fd` into a loop-owned buffer
/// (`max_len` 0 means the loop's buffer size; larger values are capped at it). The receive goes
/// to the kernel with the next `rl_poll`; no readiness round trip.
///
/// Exactly one event carries `token`, never with `RL_EV_MORE`: `result > 0` is the byte count,
/// with `RL_EV_BUFFER` and `aux` = the buffer id (bytes at `base + aux * buffer_size`, see
/// `rl_buffers`, until the next `rl_poll` unless kept with `rl_buffer_keep`); `result` 0 is end
/// of stream; `result < 0` is `-errno`, `-ECANCELED` after `rl_op_cancel` / `rl_op_cancel_token`
/// (that event is queued by the cancel itself). When the loop runs out of buffers the receive
/// waits for the next `rl_poll`: no `-ENOBUFS`, no lost bytes.
///
/// Lossless with cancels: bytes a cancelled receive on this socket (`rl_op_recv` or
/// `rl_op_recv_once`) had already taken from it come first, at most `max_len` of them (the rest
/// stays for the next receive, in order); such a receive may complete before `rl_poll`, its id
/// already stale. Bytes the kernel hands over after the cancel are kept the same way. Once its
/// event is queued the op is over: `rl_op_cancel` then returns `-ENOENT` and the event, bytes
/// included, is still delivered. Run one receive at a time per socket: two at once get the bytes
/// in an unspecified split.
///
/// Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (reserved token),
/// `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. An fd the kernel cannot receive from completes
/// with its error as the event (`-ENOTSOCK`; `-ENOTCONN` for a listening socket, on the epoll
/// backend once a connection is pending). The fd stays the caller's. Loop thread only.
///
/// # Safety
/// `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_recv_once(
    r#loop: *mut rl_loop,
    fd: c_int,
    max_len: u32,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        let fd = check_fd(fd)?;
        state
            .reactor_mut()
            .recv_once(fd, max_len, token)
            .map_err(|e| error::from_io(&e))
    })
}

/// Sends `len` bytes from `buf` on the stream socket `fd`. One event: the total bytes sent (the
/// loop finishes short writes itself), or `-errno` if the send failed (bytes sent before the
/// error are not reported separately).
///
/// The library reads `buf` until that event has been returned by `rl_poll` (also after
/// `rl_op_cancel`, which still delivers the one final event, `-ECANCELED` or a count): the
/// caller keeps it alive and unchanged until then. `len` 0 completes with 0.
///
/// Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (NULL `buf` with nonzero
/// `len`, reserved token), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
///
/// # Safety
/// `buf..buf+len` stays readable and unmodified until the op's event; `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_send(
    r#loop: *mut rl_loop,
    fd: c_int,
    buf: *const c_void,
    len: usize,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        let fd = check_fd(fd)?;
        if buf.is_null() && len > 0 {
            return Err(-libc::EINVAL);
        }
        let buf = if buf.is_null() {
            std::ptr::NonNull::<u8>::dangling().as_ptr()
        } else {
            buf.cast::<u8>()
        };
        // SAFETY: the caller keeps `buf..buf+len` valid until the op's final event (documented).
        unsafe { state.reactor_mut().send(fd, buf, len, token) }.map_err(|e| error::from_io(&e))
    })
}

/// Sends one datagram of `len` bytes from `buf` on the datagram socket `fd` (UDP, Unix
/// datagram) to the address `sockaddr` (`addrlen` bytes, copied before return), or to the
/// socket's connected peer when `sockaddr` is NULL and `addrlen` 0: `sendto(2)` through the
/// loop. One event: the bytes sent (a datagram goes whole or not at all) or `-errno`
/// (`-EDESTADDRREQ` without an address on an unconnected socket, `-EMSGSIZE`, `-ECONNREFUSED`
/// after an ICMP error on a connected socket, `-ECANCELED` after `rl_op_cancel`). `len` 0 sends
/// an empty datagram.
///
/// Unlike `rl_op_send`, whose sends on one fd wait for each other, datagram sends go to the
/// kernel with the next `rl_poll` without waiting for earlier ones: many can be in flight on one
/// socket, and the kernel sends them in call order while the socket's send buffer has room (past
/// that, UDP does not promise order). A datagram the socket cannot take now waits: for
/// writability, or in pauses of 10 ms where polling cannot tell. On a stream socket use
/// `rl_op_send`: this one does not finish a short send.
///
/// The library reads `buf` until the op's event has been returned by `rl_poll` (also after
/// `rl_op_cancel`): the caller keeps it alive and unchanged until then.
///
/// Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (NULL `buf` with nonzero
/// `len`; malformed address, or NULL `sockaddr` with nonzero `addrlen`; reserved token),
/// `-EMSGSIZE` (`len` above `INT32_MAX`), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop
/// thread only.
///
/// # Safety
/// `buf..buf+len` stays readable and unmodified until the op's event; `sockaddr` is NULL or
/// points to `addrlen` readable bytes; `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_sendto(
    r#loop: *mut rl_loop,
    fd: c_int,
    buf: *const c_void,
    len: usize,
    sockaddr: *const c_void,
    addrlen: u32,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        let fd = check_fd(fd)?;
        // SAFETY: the caller's promise.
        let to = unsafe { optional_sockaddr_from_c(sockaddr, addrlen) }?;
        // SAFETY: the caller keeps `buf..buf+len` valid until the op's final event (documented).
        unsafe {
            state
                .reactor_mut()
                .send_to(fd, buf.cast::<u8>(), len, to.as_ref(), token)
        }
        .map_err(|e| error::from_io(&e))
    })
}

/// Starts a multishot accept on the listening socket `fd`: one event per connection with
/// `result` = the new fd (non-blocking, close-on-exec, owned by the caller from then on) and
/// `RL_EV_MORE`; a final event without `RL_EV_MORE` carries `-errno` if accepting stops.
/// Per-connection errors (`-ECONNABORTED`, ...) and resource errors (`-EMFILE`, `-ENFILE`,
/// `-ENOBUFS`, `-ENOMEM`) come with `RL_EV_MORE`: accepting goes on, after a resource error only
/// once the back-off delay has passed (`rl_set_accept_retry`, default 1 s).
///
/// Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL`, `-EBADF`, `RL_EHANDLE`,
/// `RL_ESTATE`, `-errno`. The listening fd stays the caller's. Loop thread only.
///
/// # Safety
/// `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_accept(
    r#loop: *mut rl_loop,
    fd: c_int,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        let fd = check_fd(fd)?;
        state
            .reactor_mut()
            .accept_multi(fd, token)
            .map_err(|e| error::from_io(&e))
    })
}

/// Reads a C socket address into nix's storage type.
///
/// # Safety
/// `addr` is NULL or points to `addrlen` readable bytes.
pub(crate) unsafe fn sockaddr_from_c(
    addr: *const c_void,
    addrlen: u32,
) -> Result<nix::sys::socket::SockaddrStorage, c_int> {
    use nix::sys::socket::{SockaddrLike, SockaddrStorage};
    let family_len = std::mem::size_of::<libc::sa_family_t>() as u32;
    if addr.is_null()
        || addrlen < family_len
        || addrlen as usize > std::mem::size_of::<libc::sockaddr_storage>()
    {
        return Err(-libc::EINVAL);
    }
    // nix reads the address through a `sockaddr` pointer; copy it into aligned storage first so
    // a caller's unaligned buffer is fine.
    // SAFETY: all-zero bytes are a valid `sockaddr_storage`.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: `addr` has `addrlen` readable bytes (caller's promise) and `addrlen` fits `storage`.
    unsafe {
        std::ptr::copy_nonoverlapping(
            addr.cast::<u8>(),
            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
            addrlen as usize,
        );
    }
    // SAFETY: `storage` is a valid, aligned `sockaddr_storage` holding `addrlen` meaningful bytes.
    unsafe {
        SockaddrStorage::from_raw(
            (&storage as *const libc::sockaddr_storage).cast(),
            Some(addrlen),
        )
    }
    .ok_or(-libc::EINVAL)
}

/// [`sockaddr_from_c`] for an optional address: NULL with `addrlen` 0 is none.
///
/// # Safety
/// `addr` is NULL or points to `addrlen` readable bytes.
pub(crate) unsafe fn optional_sockaddr_from_c(
    addr: *const c_void,
    addrlen: u32,
) -> Result<Option<nix::sys::socket::SockaddrStorage>, c_int> {
    if addr.is_null() && addrlen == 0 {
        return Ok(None);
    }
    // SAFETY: the caller's promise.
    unsafe { sockaddr_from_c(addr, addrlen) }.map(Some)
}

/// Connects the non-blocking socket `fd` to the address `sockaddr` (`addrlen` bytes, copied
/// before return). One event: 0 or `-errno` (e.g. `-ECONNREFUSED`).
///
/// Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (NULL or malformed
/// address), `-EBADF`, `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
///
/// # Safety
/// `sockaddr` points to `addrlen` readable bytes; `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_connect(
    r#loop: *mut rl_loop,
    fd: c_int,
    sockaddr: *const c_void,
    addrlen: u32,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        let fd = check_fd(fd)?;
        // SAFETY: the caller's promise.
        let addr = unsafe { sockaddr_from_c(sockaddr, addrlen) }?;
        state
            .reactor_mut()
            .connect(fd, &addr, token)
            .map_err(|e| error::from_io(&e))
    })
}

/// Closes `fd` after cancelling every operation the loop has on it. One event: 0 or `-errno`.
///
/// Ownership of `fd` passes to the loop once the handle, token and fd have been checked (that is,
/// unless the call returns `RL_EHANDLE`, `RL_ESTATE`, `-EINVAL` or `-EBADF`): from then on the
/// caller must not use or close it, even if the call returns another error (the fd is closed
/// then too).
///
/// Returns 0 and the op id in `*op_out` (when not NULL), or an error as above. Loop thread only.
///
/// # Safety
/// `fd` is an open fd the caller owns and gives away; `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_close(
    r#loop: *mut rl_loop,
    fd: c_int,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        let fd = take_fd(fd)?;
        state
            .reactor_mut()
            .close(fd, token)
            .map_err(|e| error::from_io(&e))
    })
}

/// Delivers signal `signo` as events (`result` = signo, `RL_EV_MORE`) through a signalfd: the
/// signal is blocked in the calling thread (and threads it creates afterwards) until the op is
/// cancelled with `rl_op_cancel`. Block the signal in every other thread of the process too, or
/// the kernel may deliver it to one of them instead.
///
/// Returns 0 and the op id in `*op_out` (when not NULL), or `-EINVAL` (bad signal number,
/// SIGKILL/SIGSTOP, reserved token), `-EEXIST` (signal already handled by this loop),
/// `RL_EHANDLE`, `RL_ESTATE`, `-errno`. Loop thread only.
///
/// # Safety
/// `op_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_signal(
    r#loop: *mut rl_loop,
    signo: c_int,
    token: u64,
    op_out: *mut u64,
) -> c_int {
    submit(r#loop, token, op_out, |state, token| {
        state
            .reactor_mut()
            .add_signal(signo, token)
            .map_err(|e| error::from_io(&e))
    })
}

/// A one-shot timer at `deadline_ns` on the loop clock (`rl_now`). Its event has `result` 0 and
/// no flags. A deadline in the past fires on the next `rl_poll`.
///
/// Stores the timer id in `*timer_out` (when not NULL); cancel with `rl_timer_cancel`. Returns 0,
/// `-EINVAL` (reserved token), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
///
/// # Safety
/// `timer_out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_op_timer(
    r#loop: *mut rl_loop,
    deadline_ns: u64,
    token: u64,
    timer_out: *mut u64,
) -> c_int {
    with_loop(r#loop, |state| {
        let token = match check_token(token) {
            Ok(t) => t,
            Err(code) => return code,
        };
        match state.reactor_mut().add_timer(deadline_ns, token) {
            Ok(timer) => {
                // SAFETY: the caller's promise.
                unsafe { write_out(timer_out, crate::callback::raw_timer_id(timer)) };
                0
            }
            Err(e) => error::from_io(&e),
        }
    })
}

/// Cancels one operation by the id an `rl_op_*` call returned.
///
/// Takes effect before it returns: no event of the op is delivered afterwards, except for a send,
/// which delivers exactly one final event (`-ECANCELED` or the bytes sent) once the kernel no
/// longer reads its buffer, and an `rl_op_recv_once`, whose one event (`-ECANCELED`) is queued by
/// the cancel. Returns 0, `-ENOENT` for an op that already ended or was cancelled
/// (harmless: ids carry a generation and never name another op), `RL_EHANDLE`, `RL_ESTATE`.
///
/// Loop thread only.
#[no_mangle]
pub extern "C" fn rl_op_cancel(r#loop: *mut rl_loop, op: u64) -> c_int {
    with_loop(r#loop, |state| {
        match state.reactor_mut().cancel(OpId::from_raw(op)) {
            Ok(()) => 0,
            Err(e) => error::from_io(&e),
        }
    })
}

/// Cancels every live operation carrying `token` (timers not included), with the same guarantees
/// as `rl_op_cancel`. Returns how many were cancelled (0 is not an error), or `-EINVAL` for a
/// reserved token, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
#[no_mangle]
pub extern "C" fn rl_op_cancel_token(r#loop: *mut rl_loop, token: u64) -> c_int {
    with_loop(r#loop, |state| match check_token(token) {
        Ok(token) => error::code(Ok::<i64, std::io::Error>(
            state.reactor_mut().cancel_token(token) as i64,
        )),
        Err(code) => code,
    })
}

/// Describes the loop's receive-buffer region: buffer `id` (the `aux` of an `RL_EV_BUFFER` event)
/// starts at `*base + id * *buffer_size`. The region never moves for the loop's lifetime, so a
/// binding may map it once. Each out pointer may be NULL.
///
/// Returns 0, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only. The region belongs to the loop and is
/// freed by `rl_loop_free`.
///
/// # Safety
/// Each out pointer is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_buffers(
    r#loop: *mut rl_loop,
    base: *mut *const u8,
    buffer_size: *mut u32,
    buffer_count: *mut u32,
) -> c_int {
    with_loop(r#loop, |state| {
        let (region, size, count) = state.buffer_region();
        // SAFETY: the caller's promise.
        unsafe {
            write_out(base, region);
            write_out(buffer_size, u32::try_from(size).unwrap_or(u32::MAX));
            write_out(buffer_count, u32::try_from(count).unwrap_or(u32::MAX));
        }
        0
    })
}

/// Keeps receive buffer `buffer_id` — the `aux` of an `RL_EV_BUFFER` event the last `rl_poll`
/// returned — beyond the next `rl_poll`: its bytes stay valid and unchanged until
/// `rl_buffer_release`, so they can be sent on without a copy (`rl_op_send` straight from the
/// buffer, released at the send's event: an echo, a proxy). Without this, a buffer's bytes are
/// valid only until the next `rl_poll`.
///
/// A kept buffer is out of the loop's pool meanwhile: keeping many makes receives wait for
/// buffers (no bytes are lost, see `rl_op_recv`). A buffer still kept when the loop is freed is
/// freed with it.
///
/// Returns 0, `-EINVAL` (an id past the pool), `-ENOENT` (a buffer the last `rl_poll` did not
/// return, or one already kept), `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
#[no_mangle]
pub extern "C" fn rl_buffer_keep(r#loop: *mut rl_loop, buffer_id: u32) -> c_int {
    with_loop(r#loop, |state| {
        error::code(state.reactor_mut().keep_buffer(buffer_id).map(|()| 0i64))
    })
}

/// Gives back a buffer kept with `rl_buffer_keep`: the next `rl_poll` returns it to the pool, and
/// its bytes must not be used after that.
///
/// Returns 0, `-EINVAL` (an id past the pool), `-ENOENT` (a buffer that is not kept),
/// `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
#[no_mangle]
pub extern "C" fn rl_buffer_release(r#loop: *mut rl_loop, buffer_id: u32) -> c_int {
    with_loop(r#loop, |state| {
        error::code(state.reactor_mut().release_buffer(buffer_id).map(|()| 0i64))
    })
}

/// Wakes the loop if it is blocked in `rl_poll` or `rl_run`. Wakes coalesce: any number of calls
/// between two polls produce one `RL_WAKE_TOKEN` event in raw mode (callback mode consumes it
/// internally). A wake is never lost.
///
/// Returns 0 or `RL_EHANDLE`. **Thread-safe**; never blocks.
#[no_mangle]
pub extern "C" fn rl_wake(r#loop: *mut rl_loop) -> c_int {
    guard(|| match lookup(r#loop) {
        Ok(entry) => {
            entry.remote.wake();
            0
        }
        Err(code) => code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(timeout_from_ns(-1), None);
        assert_eq!(timeout_from_ns(0), Some(Duration::ZERO));
        assert_eq!(timeout_from_ns(1500), Some(Duration::from_nanos(1500)));
    }
}
