//! The loop's thread pool: a bounded set of worker threads, started lazily, that run blocking work
//! and complete a future with its result.
//!
//! Workers are spawned with every signal blocked (the mask is set in the spawning thread around
//! `spawn`, so there is no window in which a new worker could take a signal), which keeps
//! signalfd-based delivery on the loop thread working: a signal the loop watches is blocked in the
//! loop thread and must not be handled by some other thread of the process instead.

use std::collections::VecDeque;
use std::ffi::c_void;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

use super::future::{LoopFuture, ERR_PANICKED};
use super::remote::{Remote, RemoteItem};

/// The function of a [`RawWork`]: runs on a pool thread and returns the future's value or error.
pub type RawWorkFn = unsafe fn(data: *mut c_void, extra: *mut c_void) -> Result<u64, i32>;

/// Thread-pool work that costs no allocation: a function pointer plus two opaque words.
#[derive(Clone, Copy, Debug)]
pub struct RawWork {
    func: RawWorkFn,
    data: *mut c_void,
    extra: *mut c_void,
}

// SAFETY: the words are opaque to the pool; `RawWork::new`'s caller promised that `func` may use
// them on a pool thread.
unsafe impl Send for RawWork {}

impl RawWork {
    /// Bundles a function with the two words it will be called with.
    ///
    /// # Safety
    /// Calling `func(data, extra)` once, on another thread than the one creating the work, must be
    /// sound until the work's future completes; the work may also never be called (when it is
    /// cancelled before it starts), so it must not be the only owner of resources it frees.
    pub unsafe fn new(func: RawWorkFn, data: *mut c_void, extra: *mut c_void) -> RawWork {
        RawWork { func, data, extra }
    }
}

pub(crate) enum Work {
    Raw(RawWork),
    Boxed(Box<dyn FnOnce() -> Result<u64, i32> + Send>),
}

impl Work {
    fn run(self) -> Result<u64, i32> {
        match self {
            // SAFETY: RawWork::new's caller promised calling `func` with these words on a pool
            // thread is sound; each job runs at most once.
            Work::Raw(w) => unsafe { (w.func)(w.data, w.extra) },
            Work::Boxed(f) => f(),
        }
    }
}

struct Job {
    work: Work,
    future: LoopFuture,
}

struct Queue {
    jobs: VecDeque<Job>,
    /// Workers blocked waiting for a job.
    idle: usize,
    shutdown: bool,
}

struct PoolShared {
    queue: Mutex<Queue>,
    available: Condvar,
}

impl PoolShared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Critical sections are pushes, pops and counter updates: never left half-done.
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) struct Pool {
    shared: Arc<PoolShared>,
    workers: Vec<JoinHandle<()>>,
    max_workers: usize,
    remote: Arc<Remote>,
}

/// Default number of worker threads.
pub const DEFAULT_POOL_SIZE: usize = 4;
/// Largest accepted pool size.
pub const MAX_POOL_SIZE: usize = 1024;

impl Pool {
    pub(crate) fn new(max_workers: usize, remote: Arc<Remote>) -> Pool {
        let queue = Queue {
            jobs: VecDeque::new(),
            idle: 0,
            shutdown: false,
        };
        Pool {
            shared: Arc::new(PoolShared {
                queue: Mutex::new(queue),
                available: Condvar::new(),
            }),
            workers: Vec::new(),
            max_workers,
            remote,
        }
    }

    pub(crate) fn set_max_workers(&mut self, n: usize) {
        self.max_workers = n;
    }

    pub(crate) fn submit(&mut self, work: Work, future: LoopFuture) -> io::Result<()> {
        let mut queue = self.shared.lock();
        queue.jobs.push_back(Job { work, future });
        let need_worker = queue.jobs.len() > queue.idle && self.workers.len() < self.max_workers;
        drop(queue);
        self.shared.available.notify_one();
        if need_worker {
            if let Err(e) = self.spawn_worker() {
                // Without any worker the job would wait forever: undo it and report.
                if self.workers.is_empty() {
                    let mut queue = self.shared.lock();
                    queue.jobs.pop_back();
                    return Err(e);
                }
                // Otherwise the running workers will get to it.
            }
        }
        Ok(())
    }

    fn spawn_worker(&mut self) -> io::Result<()> {
        let shared = self.shared.clone();
        let remote = self.remote.clone();
        let mut previous = SigSet::empty();
        pthread_sigmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut previous),
        )?;
        let spawned = std::thread::Builder::new()
            .name(format!("ringloop-pool-{}", self.workers.len()))
            .spawn(move || worker(&shared, &remote));
        pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)?;
        self.workers.push(spawned?);
        Ok(())
    }

    /// Stops the pool: jobs not started yet are dropped and their futures cancelled (returns how
    /// many), running jobs are waited for.
    pub(crate) fn shutdown(&mut self) -> usize {
        let dropped: Vec<Job> = {
            let mut queue = self.shared.lock();
            queue.shutdown = true;
            queue.jobs.drain(..).collect()
        };
        self.shared.available.notify_all();
        let count = dropped.len();
        for job in dropped {
            job.future.cancel();
        }
        for handle in self.workers.drain(..) {
            // A worker only panics if the pool itself is broken; the jobs' panics are caught.
            let _ = handle.join();
        }
        count
    }
}

fn worker(shared: &PoolShared, remote: &Remote) {
    loop {
        let job = {
            let mut queue = shared.lock();
            loop {
                if let Some(job) = queue.jobs.pop_front() {
                    break job;
                }
                if queue.shutdown {
                    return;
                }
                queue.idle += 1;
                queue = shared
                    .available
                    .wait(queue)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                queue.idle -= 1;
            }
        };
        // A future cancelled before its job started skips the work, as a cancelled task that
        // never ran should.
        if !job.future.is_complete() {
            match catch_unwind(AssertUnwindSafe(|| job.work.run())) {
                Ok(Ok(value)) => {
                    job.future.set_result(value);
                }
                Ok(Err(code)) => {
                    job.future.set_error(code);
                }
                Err(_) => {
                    job.future.set_error(ERR_PANICKED);
                }
            }
        }
        // Tells the loop this job no longer keeps it alive. Refused once the loop has closed,
        // which is fine: nobody is counting any more.
        let _ = remote.push(RemoteItem::PoolDone);
    }
}
