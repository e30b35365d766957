//! Loop construction options and backend identity.

use std::time::Duration;

/// Which kernel interface a loop runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// io_uring: completion-based.
    IoUring,
    /// epoll: readiness-based, completions emulated.
    Epoll,
}

impl BackendKind {
    /// `"io_uring"` or `"epoll"`, the names `RINGLOOP_BACKEND` accepts.
    pub const fn as_str(self) -> &'static str {
        match self {
            BackendKind::IoUring => "io_uring",
            BackendKind::Epoll => "epoll",
        }
    }
}

/// How to pick the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackendChoice {
    /// io_uring when a probe shows the ops the reactor needs, else epoll. `RINGLOOP_BACKEND`
    /// (`io_uring` or `epoll`) overrides this choice when [`Options::honor_env`] is set.
    #[default]
    Auto,
    /// io_uring or an error that says why it is unavailable; never a silent switch.
    IoUring,
    /// epoll.
    Epoll,
}

/// Options for [`crate::Reactor::new`].
#[derive(Clone, Debug)]
pub struct Options {
    /// Backend selection.
    pub backend: BackendChoice,
    /// Whether `RINGLOOP_BACKEND` may override [`BackendChoice::Auto`].
    pub honor_env: bool,
    /// Size in bytes of each reactor-owned receive buffer.
    pub buffer_size: u32,
    /// Number of receive buffers (a power of two, at most 32768).
    pub buffer_count: u32,
    /// io_uring submission queue entries (a power of two); ignored by epoll.
    pub ring_entries: u32,
    /// The token of the event a [`crate::Waker`] produces.
    pub wake_token: u64,
    /// How long a multishot accept pauses after a resource error (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`, `ENOMEM`), as asyncio's `ACCEPT_RETRY_DELAY`: the error is reported once (with
    /// [`crate::flags::MORE`]), then the listening socket is left alone until the delay has
    /// passed, so a process whose fd table stays full does not spin. Default 1 s.
    /// `Duration::ZERO` re-arms at the next `poll` (no back-off). Per-connection errors
    /// (`ECONNABORTED`, `EPERM`...) never pause accepting. Changeable later with
    /// [`crate::Reactor::set_accept_retry_delay`].
    pub accept_retry_delay: Duration,
    /// The loop is only ever polled from one thread: the first thread that polls it (it may be
    /// created on another). Thread-safe calls ([`crate::Waker`]) are unaffected. Lets the io_uring
    /// backend set up its ring with `IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN`
    /// (completion work runs in batches inside the loop's own `io_uring_enter` instead of on
    /// every return from a system call); kernels older than 6.1 fall back to the default setup.
    /// Polling from a second thread then fails (`EEXIST` from the kernel); cancels made on
    /// another thread reach the kernel at the polling thread's next poll (closes happen at
    /// once); dropping the loop on another thread frees everything once the polling thread has
    /// exited, and while it lives keeps the buffer memory in-flight operations may still use
    /// until it has exited. Default `false`. Ignored by epoll.
    pub single_thread: bool,
}

/// The default [`Options::accept_retry_delay`]: asyncio's `ACCEPT_RETRY_DELAY` (1 s).
pub const DEFAULT_ACCEPT_RETRY_DELAY: Duration = Duration::from_secs(1);

impl Default for Options {
    fn default() -> Options {
        Options {
            backend: BackendChoice::Auto,
            honor_env: true,
            // 64 KiB, as libuv suggests for a read: a 100 KiB echo costs ~57 µs of server CPU per
            // round trip with 16 KiB buffers (7 receives and sends per message) and ~31 µs with
            // 64 KiB ones (32 KiB: ~50 µs); 1 and 10 KiB messages do not notice.
            buffer_size: 64 * 1024,
            buffer_count: 256,
            ring_entries: 1024,
            wake_token: u64::MAX,
            accept_retry_delay: DEFAULT_ACCEPT_RETRY_DELAY,
            single_thread: false,
        }
    }
}
