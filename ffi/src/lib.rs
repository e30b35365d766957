//! The C ABI of ringloop: `libringloop.so` / `libringloop.a`. See `include/ringloop.h` (generated
//! from this crate by cbindgen) for the C reference, and `ffi/CONTRACT.md` for the fixed names.
//!
//! This crate holds no event-loop logic. Every `extern "C"` function does three things around a
//! call into the `ringloop` crate: it checks its arguments (null pointers, lengths, handle
//! validity), it catches panics so nothing unwinds into C ([`RL_EPANIC`]), and it maps Rust errors
//! to `-errno` or one of the `RL_E*` codes.
//!
//! Handles (`rl_loop *`, `rl_future *`) are not pointers: they encode a registry slot and a
//! generation (see `registry`), so a null, freed or foreign handle is detected without ever
//! dereferencing it.

// The C names are part of the fixed ABI.
#![allow(non_camel_case_types)]

mod callback;
mod error;
mod future;
mod guard;
mod handle;
mod raw;
mod registry;

use std::ffi::{c_char, c_int};

pub use callback::*;
pub use future::*;
pub use handle::*;
pub use raw::*;

/// Major version of the library this header describes (incompatible ABI changes).
pub const RL_VERSION_MAJOR: u32 = 0;
/// Minor version (backwards-compatible additions).
pub const RL_VERSION_MINOR: u32 = 7;
/// Patch version (fixes only).
pub const RL_VERSION_PATCH: u32 = 0;

/// Base of ringloop's own error codes: they are all below `-RL_ERR_BASE`, far outside the errno
/// range, so `-errno` and library codes never collide.
pub const RL_ERR_BASE: c_int = 100000;
/// A null, stale (freed) or foreign handle was passed.
pub const RL_EHANDLE: c_int = -100001;
/// The library caught an internal panic; the operation did not take place. The loop stays usable.
pub const RL_EPANIC: c_int = -100002;
/// The requested backend is unavailable on this kernel (e.g. io_uring disabled by sysctl).
pub const RL_EUNSUPPORTED: c_int = -100003;
/// The object is in the wrong state for the call (freeing a running loop, reading the result of
/// a pending future, completing a done future, using a loop from a second thread concurrently).
pub const RL_ESTATE: c_int = -100004;

/// Readiness interest / ready-mask bit: readable (hang-up and error count as readable).
pub const RL_READABLE: u32 = 1;
/// Readiness interest / ready-mask bit: writable (error counts as writable).
pub const RL_WRITABLE: u32 = 2;

/// `rl_event.flags` bit: more events follow for this operation (a multishot op is still armed).
pub const RL_EV_MORE: u32 = 1;
/// `rl_event.flags` bit: `aux` is the id of a loop-owned receive buffer holding `result` bytes,
/// valid until the next `rl_poll`.
pub const RL_EV_BUFFER: u32 = 2;
/// `rl_event.flags` bit, with `RL_EV_BUFFER` (`rl_op_recvmsg`'s events): the buffer holds one
/// datagram, laid out as the `RL_DGRAM_*` offsets say; its `result` payload bytes start at
/// `RL_DGRAM_PAYLOAD`, not at the start of the buffer.
pub const RL_EV_DATAGRAM: u32 = 4;

/// Offset, in a datagram's buffer, of the `uint32_t` length of the sender's address.
pub const RL_DGRAM_NAME_LEN: u32 = 0;
/// Offset of the `uint32_t` full length of the datagram: more than the event's `result` when it
/// did not fit in the buffer.
pub const RL_DGRAM_PAYLOAD_LEN: u32 = 8;
/// Offset of the `uint32_t` `recvmsg` flags (`MSG_TRUNC` for a datagram cut short).
pub const RL_DGRAM_MSG_FLAGS: u32 = 12;
/// Offset of the sender's address, a `struct sockaddr` of the length at `RL_DGRAM_NAME_LEN`.
pub const RL_DGRAM_NAME: u32 = 16;
/// Room for the sender's address: `sizeof(struct sockaddr_storage)`.
pub const RL_DGRAM_NAME_MAX: u32 = 128;
/// Offset of the payload.
pub const RL_DGRAM_PAYLOAD: u32 = 144;

/// The token of the event `rl_wake` produces in raw mode.
pub const RL_WAKE_TOKEN: u64 = 0xFFFF_FFFF_FFFF_FFFF;
/// Tokens at or above this value belong to the library; raw operations given one fail `-EINVAL`.
pub const RL_TOKEN_RESERVED: u64 = 0x8000_0000_0000_0000;

// The C values must equal the reactor's (they are spelled as literals so cbindgen can print them).
const _: () = {
    assert!(RL_EHANDLE == -(RL_ERR_BASE + 1));
    assert!(RL_EPANIC == -(RL_ERR_BASE + 2));
    assert!(RL_EUNSUPPORTED == -(RL_ERR_BASE + 3));
    assert!(RL_ESTATE == -(RL_ERR_BASE + 4));
    assert!(RL_EV_MORE == ringloop::flags::MORE);
    assert!(RL_EV_BUFFER == ringloop::flags::BUFFER);
    assert!(RL_EV_DATAGRAM == ringloop::flags::DATAGRAM);
    assert!(RL_DGRAM_NAME_LEN as usize == ringloop::datagram::NAME_LEN);
    assert!(RL_DGRAM_PAYLOAD_LEN as usize == ringloop::datagram::PAYLOAD_LEN);
    assert!(RL_DGRAM_MSG_FLAGS as usize == ringloop::datagram::MSG_FLAGS);
    assert!(RL_DGRAM_NAME as usize == ringloop::datagram::NAME);
    assert!(RL_DGRAM_NAME_MAX as usize == ringloop::datagram::NAME_MAX);
    assert!(RL_DGRAM_PAYLOAD as usize == ringloop::datagram::PAYLOAD);
    assert!(RL_READABLE == ringloop::Interest::READABLE.bits());
    assert!(RL_WRITABLE == ringloop::Interest::WRITABLE.bits());
    assert!(RL_TOKEN_RESERVED == 1 << 63);
    assert!(RL_TOKEN_RESERVED == ringloop::callback::TOKEN_RESERVED);
    assert!(RL_WAKE_TOKEN == u64::MAX);
};

/// `rl_options.backend`: io_uring when the kernel supports what ringloop needs, else epoll;
/// `RINGLOOP_BACKEND=io_uring|epoll` overrides unless `RL_OPT_IGNORE_ENV` is set.
pub const RL_BACKEND_AUTO: u32 = 0;
/// `rl_options.backend`: io_uring, or `RL_EUNSUPPORTED` when unavailable (never a silent switch).
pub const RL_BACKEND_IO_URING: u32 = 1;
/// `rl_options.backend`: epoll.
pub const RL_BACKEND_EPOLL: u32 = 2;
/// `rl_options.flags` bit: ignore the `RINGLOOP_BACKEND` environment variable.
pub const RL_OPT_IGNORE_ENV: u32 = 1;
/// `rl_options.flags` bit: the loop is only ever polled on one thread (the first that polls it;
/// it may be created on another). Thread-safe functions stay thread-safe. Lets io_uring use
/// `SINGLE_ISSUER | DEFER_TASKRUN` (falls back where the kernel lacks them), which runs completion
/// work in batches inside the loop's own wait. Polling from a second thread then fails
/// (`-EEXIST`); cancels made on another thread reach the kernel at the polling thread's next
/// poll (closes happen at once); freeing the loop on another thread releases everything once
/// the polling thread has exited, and while it lives keeps the buffer memory that operations
/// still in flight may use until it has exited.
pub const RL_OPT_SINGLE_THREAD: u32 = 2;

/// `rl_run` mode: run until `rl_stop` is called or no work is left that could wake the loop.
pub const RL_RUN_DEFAULT: c_int = 0;
/// `rl_run` mode: wait for at least one event (or a due timer) and dispatch once.
pub const RL_RUN_ONCE: c_int = 1;
/// `rl_run` mode: dispatch what is ready now without waiting.
pub const RL_RUN_NOWAIT: c_int = 2;

/// The library version as `(major << 16) | (minor << 8) | patch`.
///
/// Compare with `RL_VERSION_MAJOR`/`MINOR`/`PATCH` from the header to detect a header/library
/// mismatch at run time. Thread-safe.
#[no_mangle]
pub extern "C" fn rl_version() -> u32 {
    (RL_VERSION_MAJOR << 16) | (RL_VERSION_MINOR << 8) | RL_VERSION_PATCH
}

/// A static, NUL-terminated description of `code`: ringloop's `RL_E*` codes, `-errno` values
/// (and positive errno values) and `0`.
///
/// Never returns NULL; an unknown code gives `"unknown error"`. The string is owned by the library
/// and must not be freed. Thread-safe.
#[no_mangle]
pub extern "C" fn rl_strerror(code: c_int) -> *const c_char {
    guard::guard_or(error::UNKNOWN_ERROR.as_ptr(), || {
        error::strerror(code).as_ptr()
    })
}
