//! `rl_loop`: creation, destruction, the options struct, and the guard that gives a function
//! exclusive use of a loop.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ringloop::{BackendChoice, BackendKind, Options, Reactor, Waker};

use crate::error;
use crate::guard::{guard, guard_or};
use crate::registry::{Kind, Registry};
use crate::{
    RL_BACKEND_AUTO, RL_BACKEND_EPOLL, RL_BACKEND_IO_URING, RL_EHANDLE, RL_ESTATE,
    RL_OPT_IGNORE_ENV, RL_WAKE_TOKEN,
};

/// An event loop. Opaque: created by `rl_loop_new`, destroyed by `rl_loop_free`.
///
/// The pointer value is a registry handle, never dereferenced by the library: a null, freed or
/// foreign value is detected and rejected with `RL_EHANDLE`.
pub struct rl_loop {
    _opaque: [u8; 0],
}

/// Loop options. Initialise with `rl_options_init`, then change fields.
///
/// `size` must be `sizeof(rl_options)` as the caller compiled it: the struct only grows at the
/// end, so a caller built against an older header keeps working (missing fields take their
/// defaults), and a newer caller's extra fields are accepted when they are zero.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rl_options {
    /// `sizeof(rl_options)`.
    pub size: u32,
    /// `RL_BACKEND_AUTO`, `RL_BACKEND_IO_URING` or `RL_BACKEND_EPOLL`.
    pub backend: u32,
    /// Size in bytes of each loop-owned receive buffer; 0 = default (16384).
    pub buffer_size: u32,
    /// Number of receive buffers, a power of two up to 32768; 0 = default (512).
    pub buffer_count: u32,
    /// io_uring submission queue entries, a power of two; 0 = default (1024). Ignored by epoll.
    pub ring_entries: u32,
    /// Bit set of `RL_OPT_*`.
    pub flags: u32,
}

impl Default for rl_options {
    fn default() -> rl_options {
        rl_options {
            size: std::mem::size_of::<rl_options>() as u32,
            backend: RL_BACKEND_AUTO,
            buffer_size: 0,
            buffer_count: 0,
            ring_entries: 0,
            flags: 0,
        }
    }
}

impl rl_options {
    /// Reads a caller's options struct of any `size`, older or newer than this one.
    ///
    /// # Safety
    /// `opts` must point to at least `opts->size` readable bytes (the caller's promise).
    unsafe fn read(opts: *const rl_options) -> Result<rl_options, c_int> {
        // SAFETY: every version of the struct starts with its `u32` size; the caller promises a
        // struct, and `read_unaligned` does not require the caller's alignment.
        let size = unsafe { std::ptr::read_unaligned(opts.cast::<u32>()) } as usize;
        if size < std::mem::size_of::<u32>() {
            return Err(-libc::EINVAL);
        }
        let ours = std::mem::size_of::<rl_options>();
        let mut out = rl_options::default();
        // SAFETY: `size` bytes are readable at `opts` (the caller's promise); we copy at most
        // `ours` of them into our own struct, which is plain integers, so any bytes are valid.
        unsafe {
            std::ptr::copy_nonoverlapping(
                opts.cast::<u8>(),
                (&mut out as *mut rl_options).cast::<u8>(),
                size.min(ours),
            );
        }
        if size > ours {
            // SAFETY: bytes `ours..size` are readable (the caller's promise).
            let tail =
                unsafe { std::slice::from_raw_parts(opts.cast::<u8>().add(ours), size - ours) };
            if tail.iter().any(|&b| b != 0) {
                // A newer caller asked for something this library does not know.
                return Err(-libc::E2BIG);
            }
        }
        out.size = ours as u32;
        Ok(out)
    }

    fn to_options(self) -> Result<Options, c_int> {
        let mut o = Options::default();
        o.backend = match self.backend {
            RL_BACKEND_AUTO => BackendChoice::Auto,
            RL_BACKEND_IO_URING => BackendChoice::IoUring,
            RL_BACKEND_EPOLL => BackendChoice::Epoll,
            _ => return Err(-libc::EINVAL),
        };
        if self.flags & !RL_OPT_IGNORE_ENV != 0 {
            return Err(-libc::EINVAL);
        }
        o.honor_env = self.flags & RL_OPT_IGNORE_ENV == 0;
        if self.buffer_size != 0 {
            o.buffer_size = self.buffer_size;
        }
        if self.buffer_count != 0 {
            o.buffer_count = self.buffer_count;
        }
        if self.ring_entries != 0 {
            o.ring_entries = self.ring_entries;
        }
        o.wake_token = RL_WAKE_TOKEN;
        Ok(o)
    }
}

/// What a loop owns that only its current user thread may touch.
pub(crate) struct LoopState {
    pub(crate) reactor: Reactor,
}

impl LoopState {
    pub(crate) fn reactor_mut(&mut self) -> &mut Reactor {
        &mut self.reactor
    }
}

/// A registered loop.
///
/// Thread-safe parts (the waker) are used directly; the rest sits behind [`LoopEntry::enter`],
/// which admits one thread at a time and lets that thread re-enter (callbacks calling back into
/// the library).
pub(crate) struct LoopEntry {
    /// Id of the thread currently inside a loop-thread function, 0 when none.
    owner: AtomicU64,
    /// Nesting depth of the owner's calls. Only the owner touches it.
    depth: UnsafeCell<u32>,
    /// `None` once `rl_loop_free` has run (other threads may still hold the entry briefly).
    state: UnsafeCell<Option<LoopState>>,
    pub(crate) waker: Waker,
    pub(crate) backend: BackendKind,
}

// SAFETY: `depth` and `state` are only accessed by the thread that holds `owner` (see `enter`);
// everything else is `Sync` on its own.
unsafe impl Sync for LoopEntry {}
// SAFETY: `LoopState` is `Send` (the reactor is `Send`), and the entry adds only atomics.
unsafe impl Send for LoopEntry {}

static LOOPS: Registry<LoopEntry> = Registry::new(Kind::Loop);

/// A small, nonzero, process-unique id for the calling thread.
fn thread_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local!(static ID: u64 = NEXT.fetch_add(1, Ordering::Relaxed));
    ID.with(|id| *id)
}

/// Proof that the current thread holds a loop; released on drop.
pub(crate) struct Entered {
    entry: Arc<LoopEntry>,
}

impl LoopEntry {
    /// Admits the calling thread, or fails with `RL_ESTATE` while another thread is inside a
    /// loop-thread function of this loop (a contract violation that must not become a data race).
    fn enter(self: Arc<LoopEntry>) -> Result<Entered, c_int> {
        let me = thread_id();
        match self
            .owner
            .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        {
            // SAFETY: we now own the entry: no other thread touches `depth`.
            Ok(_) => unsafe { *self.depth.get() = 1 },
            // SAFETY: we already own the entry (a nested call from a callback on this thread).
            Err(current) if current == me => unsafe { *self.depth.get() += 1 },
            Err(_) => return Err(RL_ESTATE),
        }
        Ok(Entered { entry: self })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        // SAFETY: this thread owns the entry until the store below.
        let depth = unsafe {
            let depth = &mut *self.entry.depth.get();
            *depth -= 1;
            *depth
        };
        if depth == 0 {
            self.entry.owner.store(0, Ordering::Release);
        }
    }
}

impl Entered {
    /// The nesting depth of this thread's calls into the loop (1 = outermost).
    pub(crate) fn depth(&self) -> u32 {
        // SAFETY: this thread owns the entry.
        unsafe { *self.entry.depth.get() }
    }

    /// The loop's state, or `RL_EHANDLE` when the loop has been freed meanwhile.
    ///
    /// # Safety
    /// The returned reference must not outlive `self`, and no other reference obtained from this
    /// entry may be live while it is used: callers never hold it across a call that can run user
    /// callbacks (which may re-enter and call `state` again).
    pub(crate) unsafe fn state(&self) -> Result<&mut LoopState, c_int> {
        // SAFETY: this thread owns the entry; exclusivity across nesting is the caller's promise.
        unsafe { (*self.entry.state.get()).as_mut().ok_or(RL_EHANDLE) }
    }

    pub(crate) fn entry(&self) -> &Arc<LoopEntry> {
        &self.entry
    }
}

/// Looks up a loop for a thread-safe function (no exclusive access).
pub(crate) fn lookup(handle: *const rl_loop) -> Result<Arc<LoopEntry>, c_int> {
    LOOPS.get(handle as usize as u64).ok_or(RL_EHANDLE)
}

/// Looks up a loop and enters it for a loop-thread function.
pub(crate) fn enter(handle: *const rl_loop) -> Result<Entered, c_int> {
    lookup(handle)?.enter()
}

/// Runs `body` with exclusive use of the loop's state, mapping every failure to a code.
pub(crate) fn with_state(
    handle: *const rl_loop,
    body: impl FnOnce(&mut LoopState) -> c_int,
) -> c_int {
    guard(|| {
        let entered = match enter(handle) {
            Ok(e) => e,
            Err(code) => return code,
        };
        // SAFETY: `body` gets the only live reference; it does not run user callbacks.
        match unsafe { entered.state() } {
            Ok(state) => body(state),
            Err(code) => code,
        }
    })
}

/// Writes `value` through `out` when `out` is not null.
///
/// # Safety
/// `out` is null or valid for a write of `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: non-null `out` is writable (the caller's promise).
        unsafe { out.write(value) }
    }
}

/// Fills `*opts` with the defaults, `size` included.
///
/// Does nothing when `opts` is NULL. Thread-safe.
///
/// # Safety
/// `opts` is NULL or points to a writable `rl_options`.
#[no_mangle]
pub unsafe extern "C" fn rl_options_init(opts: *mut rl_options) {
    // SAFETY: the caller's promise.
    guard_or((), || unsafe { write_out(opts, rl_options::default()) })
}

/// Creates a loop and stores its handle in `*out`.
///
/// `opts` may be NULL for the defaults. Returns 0; `-EINVAL` when `out` is NULL or an option is
/// out of range, `-E2BIG` when `opts->size` is larger than this library's `rl_options` and the
/// extra bytes are not zero, `RL_EUNSUPPORTED` when `RL_BACKEND_IO_URING` was forced and io_uring
/// is unavailable, or another `-errno` from the kernel (`-EMFILE`, `-ENOMEM`, ...). On failure
/// `*out` is left unchanged.
///
/// The caller owns the loop and releases it with `rl_loop_free`. The loop may be created on one
/// thread and used on another, but is used by one thread at a time. Thread-safe.
///
/// # Safety
/// `opts` is NULL or points to at least `opts->size` readable bytes; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rl_loop_new(opts: *const rl_options, out: *mut *mut rl_loop) -> c_int {
    guard(|| {
        if out.is_null() {
            return -libc::EINVAL;
        }
        let opts = if opts.is_null() {
            rl_options::default()
        } else {
            // SAFETY: the caller's promise.
            match unsafe { rl_options::read(opts) } {
                Ok(o) => o,
                Err(code) => return code,
            }
        };
        let options = match opts.to_options() {
            Ok(o) => o,
            Err(code) => return code,
        };
        let reactor = match Reactor::new(&options) {
            Ok(r) => r,
            Err(e) => return error::from_io(&e),
        };
        let entry = Arc::new(LoopEntry {
            owner: AtomicU64::new(0),
            depth: UnsafeCell::new(0),
            waker: reactor.waker(),
            backend: reactor.backend(),
            state: UnsafeCell::new(Some(LoopState { reactor })),
        });
        match LOOPS.insert(entry) {
            Ok(handle) => {
                // SAFETY: `out` is non-null and writable (the caller's promise).
                unsafe { out.write(handle as usize as *mut rl_loop) };
                0
            }
            Err(code) => code,
        }
    })
}

/// Destroys a loop: cancels every operation, timer, watch and signal handler still registered,
/// waits until the kernel no longer touches any caller memory (pending sends), and releases the
/// loop's resources. Closes no fd the caller owns; pending callbacks are dropped without being
/// called, pending futures of the loop are cancelled.
///
/// Returns 0, `RL_EHANDLE` for a null, stale or foreign handle (so a double free is an error, not
/// a crash), or `RL_ESTATE` when called from inside a callback of this loop (during `rl_run` or
/// `rl_poll`) or while another thread is using it. After success the handle is stale everywhere.
///
/// Loop thread only.
#[no_mangle]
pub extern "C" fn rl_loop_free(r#loop: *mut rl_loop) -> c_int {
    guard(|| {
        let entered = match enter(r#loop) {
            Ok(e) => e,
            Err(code) => return code,
        };
        if entered.depth() > 1 {
            return RL_ESTATE;
        }
        let Some(entry) = LOOPS.remove(r#loop as usize as u64) else {
            return RL_EHANDLE;
        };
        // SAFETY: this thread owns the entry at depth 1: no other reference to the state exists.
        let state = unsafe { (*entry.state.get()).take() };
        drop(state);
        drop(entered);
        0
    })
}

/// The name of the loop's backend: `"io_uring"` or `"epoll"` (a static string), or NULL for a
/// null, stale or foreign handle. Thread-safe.
#[no_mangle]
pub extern "C" fn rl_loop_backend(r#loop: *const rl_loop) -> *const c_char {
    guard_or(std::ptr::null(), || match lookup(r#loop) {
        Ok(entry) => match entry.backend {
            BackendKind::IoUring => c"io_uring".as_ptr(),
            BackendKind::Epoll => c"epoll".as_ptr(),
        },
        Err(_) => std::ptr::null(),
    })
}

/// The loop's clock: CLOCK_MONOTONIC in nanoseconds, the clock of `rl_call_at` and `rl_op_timer`
/// deadlines. 0 for a null, stale or foreign handle. Thread-safe.
#[no_mangle]
pub extern "C" fn rl_now(r#loop: *const rl_loop) -> u64 {
    guard_or(0, || match lookup(r#loop) {
        Ok(_) => Reactor::now_ns(),
        Err(_) => 0,
    })
}
