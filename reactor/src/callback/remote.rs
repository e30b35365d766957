//! The part of a loop other threads touch: a mutex-protected queue that the loop swaps out once
//! per iteration, and the reactor's coalesced [`Waker`].

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Waker;

use super::future::LoopFuture;
use super::handler::RawCallback;
use super::{EventLoop, StateError};

/// Something another thread (or a future completed on any thread) hands to the loop thread.
pub(crate) enum RemoteItem {
    Raw(RawCallback),
    Boxed(Box<dyn FnOnce(&mut EventLoop) + Send>),
    /// A future with done-callbacks completed; run them.
    FutureDone(LoopFuture),
    /// A thread-pool job finished (its future is already complete).
    PoolDone,
}

pub(crate) struct RemoteQueue {
    pub(crate) items: VecDeque<RemoteItem>,
    /// Set when the loop closes; pushes fail from then on.
    pub(crate) closed: bool,
}

pub(crate) struct Remote {
    queue: Mutex<RemoteQueue>,
    /// Whether `queue.items` may be non-empty: lets the loop skip the lock on idle iterations.
    pending: AtomicBool,
    /// A stop request, from `EventLoop::stop` or `LoopHandle::stop`.
    pub(crate) stop: AtomicBool,
    waker: Waker,
}

impl Remote {
    pub(crate) fn new(waker: Waker) -> Remote {
        Remote {
            queue: Mutex::new(RemoteQueue {
                items: VecDeque::new(),
                closed: false,
            }),
            pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            waker,
        }
    }

    /// The queue lock. A panic while it is held cannot leave the queue inconsistent (every
    /// critical section is a push, a swap or a flag store), so poisoning is ignored.
    pub(crate) fn lock(&self) -> MutexGuard<'_, RemoteQueue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` for the loop thread and wakes the loop. Only the push that finds the queue
    /// empty wakes: a wake for the earlier pushes is already pending (wakes are never lost), so a
    /// burst of pushes costs one wake-up.
    pub(crate) fn push(&self, item: RemoteItem) -> Result<(), RemoteItem> {
        let mut queue = self.lock();
        if queue.closed {
            return Err(item);
        }
        let was_empty = queue.items.is_empty();
        queue.items.push_back(item);
        self.pending.store(true, Ordering::Release);
        drop(queue);
        if was_empty {
            self.waker.wake();
        }
        Ok(())
    }

    pub(crate) fn has_pending(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Moves every queued item into `into` (which must be empty), keeping both allocations.
    pub(crate) fn take_all(&self, into: &mut VecDeque<RemoteItem>) {
        if !self.has_pending() {
            return;
        }
        let mut queue = self.lock();
        std::mem::swap(&mut queue.items, into);
        self.pending.store(false, Ordering::Release);
    }

    pub(crate) fn wake(&self) {
        self.waker.wake();
    }
}

/// A thread-safe handle to an [`EventLoop`]: `Send + Sync + Clone`, usable from any thread and
/// after the loop is gone (calls then fail with a [`StateError`]).
#[derive(Clone)]
pub struct LoopHandle {
    pub(crate) remote: Arc<Remote>,
}

fn closed_error() -> io::Error {
    StateError::new("the event loop is closed").into()
}

impl LoopHandle {
    /// Schedules `f` to run on the loop thread, in the loop's next iteration; calls from one
    /// thread run in the order they were made. Thread-safe. Fails with a [`StateError`] once the
    /// loop is closed (then `f` is dropped here, not run).
    pub fn call_soon_threadsafe(
        &self,
        f: impl FnOnce(&mut EventLoop) + Send + 'static,
    ) -> io::Result<()> {
        self.remote
            .push(RemoteItem::Boxed(Box::new(f)))
            .map_err(|_| closed_error())
    }

    /// [`LoopHandle::call_soon_threadsafe`] for a raw callback (no allocation once the queue has
    /// grown). The callback's outcome has `result == 0`. If the loop closes before the call runs,
    /// the callback is called with `-ECANCELED` during the close; if the loop is already closed,
    /// it is not called and a [`StateError`] is returned.
    pub fn call_soon_threadsafe_raw(&self, cb: RawCallback) -> io::Result<()> {
        self.remote
            .push(RemoteItem::Raw(cb))
            .map_err(|_| closed_error())
    }

    /// Wakes the loop if it is blocked waiting for events. Thread-safe, never blocks.
    pub fn wake(&self) {
        self.remote.wake();
    }

    /// Asks a running loop to return from [`EventLoop::run`] after its current iteration (or a
    /// loop that is not running to return after the first iteration of its next `run`).
    /// Thread-safe.
    pub fn stop(&self) {
        self.remote.stop.store(true, Ordering::Release);
        self.remote.wake();
    }

    /// A new pending future bound to this loop: its done-callbacks run on the loop thread.
    pub fn create_future(&self) -> LoopFuture {
        LoopFuture::new(self.remote.clone())
    }

    /// Whether the loop has been closed.
    pub fn is_closed(&self) -> bool {
        self.remote.lock().closed
    }
}

impl std::fmt::Debug for LoopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopHandle")
            .field("remote", &Arc::as_ptr(&self.remote))
            .finish()
    }
}
