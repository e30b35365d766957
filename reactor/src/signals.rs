//! Signal masks for signal ops: a signal delivered through a signalfd must be blocked, or its
//! default action (or handler) runs instead. The reactor blocks it in the calling thread when the
//! first op for it starts and unblocks it when the last one ends — unless it was already blocked
//! before, in which case the caller's mask is left as it was.

use std::io;

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::sys::from_nix;
use crate::OpId;

struct SignalOp {
    op: OpId,
    token: u64,
    signal: Signal,
}

pub(crate) struct SignalRegistry {
    ops: Vec<SignalOp>,
    /// Signals this registry blocked (and so must unblock).
    blocked_here: SigSet,
}

impl Default for SignalRegistry {
    fn default() -> Self {
        SignalRegistry {
            ops: Vec::new(),
            blocked_here: SigSet::empty(),
        }
    }
}

impl SignalRegistry {
    /// Validates `signo`, blocks it in this thread and opens a non-blocking signalfd for it.
    pub(crate) fn open(&mut self, signo: i32) -> io::Result<(Signal, SignalFd)> {
        let signal = Signal::try_from(signo).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{signo} is not a signal number"),
            )
        })?;
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "SIGKILL and SIGSTOP cannot be caught",
            ));
        }
        let mut set = SigSet::empty();
        set.add(signal);
        if !self.ops.iter().any(|s| s.signal == signal) && !self.blocked_here.contains(signal) {
            let mut old = SigSet::empty();
            pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)).map_err(from_nix)?;
            if !old.contains(signal) {
                self.blocked_here.add(signal);
            }
        }
        let signalfd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(from_nix)?;
        Ok((signal, signalfd))
    }

    pub(crate) fn started(&mut self, op: OpId, token: u64, signal: Signal) {
        self.ops.push(SignalOp { op, token, signal });
    }

    /// Forgets the ops for which `ended` holds and unblocks signals nobody wants any more.
    pub(crate) fn release_where(&mut self, mut ended: impl FnMut(OpId, u64) -> bool) {
        let before = self.ops.len();
        self.ops.retain(|s| !ended(s.op, s.token));
        if self.ops.len() != before {
            self.unblock_unused();
        }
    }

    /// Unblocks the signals this registry blocked that no op wants any more.
    pub(crate) fn unblock_unused(&mut self) {
        let mut unblock = SigSet::empty();
        let mut any = false;
        for signal in self.blocked_here.iter() {
            if !self.ops.iter().any(|s| s.signal == signal) {
                unblock.add(signal);
                any = true;
            }
        }
        if any {
            for signal in unblock.iter() {
                self.blocked_here.remove(signal);
            }
            // Unblocking a signal cannot fail for valid signal numbers.
            let _ = pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&unblock), None);
        }
    }

    /// Ends everything (reactor drop).
    pub(crate) fn release_all(&mut self) {
        self.ops.clear();
        self.unblock_unused();
    }
}
