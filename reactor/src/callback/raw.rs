//! Raw token mode next to callback mode: submitting ops whose events come out of
//! [`EventLoop::poll_raw`].

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::SockaddrStorage;

use crate::{Interest, OpId, TimerId};

use super::{EventLoop, TOKEN_RESERVED};

/// Submission access to the loop's reactor for raw-mode ops (see [`EventLoop::reactor_mut`]).
///
/// Mirrors [`crate::Reactor`]'s submission methods, with two differences: tokens with the top bit
/// set (>= [`TOKEN_RESERVED`]) are the loop's and are refused with `EINVAL`; and there is no
/// `poll` — events come from [`EventLoop::poll_raw`], which also runs callback-mode work. Every
/// method fails with a [`super::StateError`] on a closed loop.
pub struct RawOps<'a> {
    pub(crate) lp: &'a mut EventLoop,
}

fn check_token(token: u64) -> io::Result<()> {
    if token & TOKEN_RESERVED != 0 {
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    } else {
        Ok(())
    }
}

impl RawOps<'_> {
    fn check(&self, token: u64) -> io::Result<()> {
        self.lp.check_open()?;
        check_token(token)
    }

    /// See [`crate::Reactor::watch`].
    pub fn watch(&mut self, fd: RawFd, interest: Interest, token: u64) -> io::Result<OpId> {
        self.check(token)?;
        self.lp.reactor.watch(fd, interest, token)
    }

    /// See [`crate::Reactor::recv_multi`].
    pub fn recv_multi(&mut self, fd: RawFd, token: u64) -> io::Result<OpId> {
        self.check(token)?;
        self.lp.reactor.recv_multi(fd, token)
    }

    /// See [`crate::Reactor::recvmsg_multi`].
    pub fn recvmsg_multi(&mut self, fd: RawFd, token: u64) -> io::Result<OpId> {
        self.check(token)?;
        self.lp.reactor.recvmsg_multi(fd, token)
    }

    /// See [`crate::Reactor::recv_once`].
    pub fn recv_once(&mut self, fd: RawFd, max_len: u32, token: u64) -> io::Result<OpId> {
        self.check(token)?;
        self.lp.reactor.recv_once(fd, max_len, token)
    }

    /// See [`crate::Reactor::send`].
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unmodified until this op's final event has been
    /// returned by [`EventLoop::poll_raw`] (also after [`RawOps::cancel`]).
    pub unsafe fn send(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: usize,
        token: u64,
    ) -> io::Result<OpId> {
        self.check(token)?;
        // SAFETY: forwarded verbatim: the caller upholds `Reactor::send`'s contract, stated
        // identically above.
        unsafe { self.lp.reactor.send(fd, buf, len, token) }
    }

    /// See [`crate::Reactor::send_to`].
    ///
    /// # Safety
    /// `buf..buf+len` must stay valid and unmodified until this op's final event has been
    /// returned by [`EventLoop::poll_raw`] (also after [`RawOps::cancel`]).
    pub unsafe fn send_to(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: usize,
        to: Option<&SockaddrStorage>,
        token: u64,
    ) -> io::Result<OpId> {
        self.check(token)?;
        // SAFETY: forwarded verbatim: the caller upholds `Reactor::send_to`'s contract, stated
        // identically above.
        unsafe { self.lp.reactor.send_to(fd, buf, len, to, token) }
    }

    /// See [`crate::Reactor::accept_multi`].
    pub fn accept_multi(&mut self, fd: RawFd, token: u64) -> io::Result<OpId> {
        self.check(token)?;
        self.lp.reactor.accept_multi(fd, token)
    }

    /// See [`crate::Reactor::connect`].
    pub fn connect(&mut self, fd: RawFd, addr: &SockaddrStorage, token: u64) -> io::Result<OpId> {
        self.check(token)?;
        self.lp.reactor.connect(fd, addr, token)
    }

    /// See [`crate::Reactor::close`]. Callback-mode ops and watches on the fd end too (as with
    /// [`EventLoop::close`]).
    pub fn close(&mut self, fd: OwnedFd, token: u64) -> io::Result<OpId> {
        self.check(token)?;
        self.lp.forget_fd(fd.as_raw_fd());
        self.lp.reactor.close(fd, token)
    }

    /// See [`crate::Reactor::cancel`].
    pub fn cancel(&mut self, op: OpId) -> io::Result<()> {
        self.lp.reactor.cancel(op)
    }

    /// See [`crate::Reactor::cancel_token`]; a reserved token cancels nothing (returns 0).
    pub fn cancel_token(&mut self, token: u64) -> usize {
        if check_token(token).is_err() {
            return 0;
        }
        self.lp.reactor.cancel_token(token)
    }

    /// See [`crate::Reactor::keep_buffer`]: a buffer of an event [`super::EventLoop::poll_raw`]
    /// returned, kept beyond the next poll.
    pub fn keep_buffer(&mut self, id: u32) -> io::Result<()> {
        self.lp.reactor.keep_buffer(id)
    }

    /// See [`crate::Reactor::release_buffer`].
    pub fn release_buffer(&mut self, id: u32) -> io::Result<()> {
        self.lp.reactor.release_buffer(id)
    }

    /// See [`crate::Reactor::add_timer`].
    pub fn add_timer(&mut self, deadline_ns: u64, token: u64) -> io::Result<TimerId> {
        self.check(token)?;
        Ok(self.lp.reactor.add_timer(deadline_ns, token))
    }

    /// See [`crate::Reactor::cancel_timer`].
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.lp.reactor.cancel_timer(timer)
    }

    /// See [`crate::Reactor::add_signal`].
    pub fn add_signal(&mut self, signo: i32, token: u64) -> io::Result<OpId> {
        self.check(token)?;
        self.lp.reactor.add_signal(signo, token)
    }

    /// See [`crate::Reactor::pending`] (counts callback-mode ops too).
    pub fn pending(&self) -> usize {
        self.lp.reactor.pending()
    }

    /// A thread-safe waker ([`crate::Reactor::waker`]).
    pub fn waker(&self) -> crate::Waker {
        self.lp.reactor.waker()
    }
}
