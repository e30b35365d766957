//! Futures: one-shot result cells bound to a loop, completable from any thread, whose
//! done-callbacks always run on the loop thread.
//!
//! The callbacks themselves live in the loop (they need not be `Send`); the future only records,
//! under its lock, whether it has any. Completing a future that has callbacks posts it to the
//! loop's thread-safe queue, and the loop thread runs the callbacks. The check ("has callbacks?")
//! and the registration happen under the same lock, so a completion racing with
//! `add_done_callback` either sees the callback (and posts) or the registration sees the
//! completion (and schedules the callback directly): never neither.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::remote::{Remote, RemoteItem};

/// The state of a [`LoopFuture`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FutureState {
    /// Not completed yet.
    Pending,
    /// Completed with [`LoopFuture::set_result`] or [`LoopFuture::set_error`].
    Done,
    /// Completed with [`LoopFuture::cancel`] (also: the loop closed, or its thread-pool job was
    /// dropped before it started).
    Cancelled,
}

/// The error code a thread-pool job's future gets when the job panicked. Equal to the C ABI's
/// `RL_EPANIC`.
pub const ERR_PANICKED: i32 = -100_002;

pub(crate) struct Cell {
    pub(crate) state: FutureState,
    pub(crate) value: u64,
    pub(crate) error: Option<i32>,
    /// The key of this future's entry in its loop's table of futures with done-callbacks.
    pub(crate) watch: Option<usize>,
}

pub(crate) struct Shared {
    cell: Mutex<Cell>,
    pub(crate) remote: Arc<Remote>,
    /// The embedder's word (see `LoopFuture::tag`).
    tag: AtomicU64,
}

/// A one-shot result cell bound to one loop: pending, then done (a `u64` value and an optional
/// `i32` error code) or cancelled. `Clone` (an `Arc`), `Send + Sync`.
///
/// Completers ([`LoopFuture::set_result`], [`LoopFuture::set_error`], [`LoopFuture::cancel`]) work
/// from any thread and return whether this call completed the future (only the first one does).
/// Done-callbacks are added with [`super::EventLoop::add_done_callback`] before or after
/// completion and always run on the loop thread, in the order they were added. While a future has
/// callbacks and is pending, it keeps [`super::EventLoop::run`] in
/// [`super::RunMode::Default`] running.
#[derive(Clone)]
pub struct LoopFuture {
    pub(crate) shared: Arc<Shared>,
}

impl LoopFuture {
    pub(crate) fn new(remote: Arc<Remote>) -> LoopFuture {
        let cell = Cell {
            state: FutureState::Pending,
            value: 0,
            error: None,
            watch: None,
        };
        LoopFuture {
            shared: Arc::new(Shared {
                cell: Mutex::new(cell),
                remote,
                tag: AtomicU64::new(0),
            }),
        }
    }

    /// The lock. Every critical section leaves the cell consistent, so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Cell> {
        self.shared
            .cell
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn complete(&self, state: FutureState, value: u64, error: Option<i32>) -> bool {
        let mut cell = self.lock();
        if cell.state != FutureState::Pending {
            return false;
        }
        cell.state = state;
        cell.value = value;
        cell.error = error;
        if cell.watch.is_some() {
            // Posted under the cell lock, so the loop cannot see the registration without the
            // completion. A closed loop refuses the post; its close already cancelled every
            // future it was watching, so there is nothing left to run.
            let _ = self
                .shared
                .remote
                .push(RemoteItem::FutureDone(self.clone()));
        }
        true
    }

    /// Completes the future with `value`. Thread-safe. `true` if this call completed it.
    pub fn set_result(&self, value: u64) -> bool {
        self.complete(FutureState::Done, value, None)
    }

    /// Completes the future with the error code `code` (by convention a negative errno, as in the
    /// C ABI). Thread-safe. `true` if this call completed it.
    pub fn set_error(&self, code: i32) -> bool {
        self.complete(FutureState::Done, 0, Some(code))
    }

    /// Cancels the future. Thread-safe. `true` if this call completed it (it was pending).
    pub fn cancel(&self) -> bool {
        self.complete(FutureState::Cancelled, 0, None)
    }

    /// The current state.
    pub fn state(&self) -> FutureState {
        self.lock().state
    }

    /// Whether the future is done or cancelled.
    pub fn is_complete(&self) -> bool {
        self.state() != FutureState::Pending
    }

    /// `Some(Ok(value))` or `Some(Err(code))` once done; `None` while pending or when cancelled.
    pub fn result(&self) -> Option<Result<u64, i32>> {
        let cell = self.lock();
        match (cell.state, cell.error) {
            (FutureState::Done, None) => Some(Ok(cell.value)),
            (FutureState::Done, Some(code)) => Some(Err(code)),
            _ => None,
        }
    }

    /// A word the embedder stores with the future (0 until set). The C ABI keeps the future's
    /// `rl_future *` handle here, so a done-callback trampoline, which is handed the
    /// `LoopFuture`, can pass the handle to the C callback. Thread-safe.
    pub fn tag(&self) -> u64 {
        self.shared.tag.load(Ordering::Acquire)
    }

    /// Sets the word [`LoopFuture::tag`] returns (shared by every clone). Thread-safe.
    pub fn set_tag(&self, tag: u64) {
        self.shared.tag.store(tag, Ordering::Release);
    }

    /// Whether `self` and `other` are the same future.
    pub fn ptr_eq(&self, other: &LoopFuture) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// An address identifying this future while any clone of it lives (for maps keyed by future).
    pub fn as_ptr(&self) -> *const () {
        Arc::as_ptr(&self.shared).cast()
    }
}

impl fmt::Debug for LoopFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cell = self.lock();
        f.debug_struct("LoopFuture")
            .field("state", &cell.state)
            .field("value", &cell.value)
            .field("error", &cell.error)
            .finish()
    }
}
