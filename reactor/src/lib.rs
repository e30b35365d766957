//! ringloop: a Linux event-loop reactor with two backends, io_uring (completion-based) where the
//! kernel allows it and epoll (readiness-based, emulating completions) everywhere else.
//!
//! The core model: every operation carries a caller-chosen `u64` token and every outcome is an
//! [`Event`] `{token, result, flags, aux}`. [`Reactor::poll`] flushes pending submissions and waits
//! in one system call where the backend allows it. The [`callback`] module holds the callback
//! dispatcher over the same core.

mod backend;
mod buffers;
pub mod callback;
mod event;
mod ops;
mod options;
mod reactor;
mod signals;
mod sys;
mod timers;
mod wake;

pub use event::{datagram, flags, Event, Interest, OpId, TimerId};
pub use options::{BackendChoice, BackendKind, Options, DEFAULT_ACCEPT_RETRY_DELAY};
pub use reactor::{ForkedChildError, Reactor, Waker};
