//! `rl_loop`: creation, destruction, the options struct, and the guard that gives a function
//! exclusive use of a loop.

use std::cell::{RefCell, UnsafeCell};
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use ringloop::callback::{EventLoop, LoopHandle};
use ringloop::{BackendChoice, BackendKind, Options, Reactor};

use crate::error;
use crate::guard::{guard, guard_or};
use crate::registry::{Kind, Registry};
use crate::{
    RL_BACKEND_AUTO, RL_BACKEND_EPOLL, RL_BACKEND_IO_URING, RL_EHANDLE, RL_ESTATE,
    RL_OPT_IGNORE_ENV, RL_OPT_SINGLE_THREAD, RL_WAKE_TOKEN,
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
/// `size` must be `sizeof(rl_options)` as the caller compiled it: a caller built against an older
/// header keeps working (missing fields take their defaults), and a newer caller's extra fields
/// are accepted when they are zero. Note that `rl_options_init` writes this library's whole
/// struct: a field added here would be written past the end of an older caller's struct, so
/// later settings come as functions on the loop instead (`rl_set_accept_retry`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct rl_options {
    /// `sizeof(rl_options)`.
    pub size: u32,
    /// `RL_BACKEND_AUTO`, `RL_BACKEND_IO_URING` or `RL_BACKEND_EPOLL`.
    pub backend: u32,
    /// Size in bytes of each loop-owned receive buffer; 0 = default (65536).
    pub buffer_size: u32,
    /// Number of receive buffers, a power of two up to 32768; 0 = default (256).
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
        let backend = match self.backend {
            RL_BACKEND_AUTO => BackendChoice::Auto,
            RL_BACKEND_IO_URING => BackendChoice::IoUring,
            RL_BACKEND_EPOLL => BackendChoice::Epoll,
            _ => return Err(-libc::EINVAL),
        };
        if self.flags & !(RL_OPT_IGNORE_ENV | RL_OPT_SINGLE_THREAD) != 0 {
            return Err(-libc::EINVAL);
        }
        let defaults = Options::default();
        let or_default = |value: u32, default: u32| if value == 0 { default } else { value };
        Ok(Options {
            backend,
            honor_env: self.flags & RL_OPT_IGNORE_ENV == 0,
            buffer_size: or_default(self.buffer_size, defaults.buffer_size),
            buffer_count: or_default(self.buffer_count, defaults.buffer_count),
            ring_entries: or_default(self.ring_entries, defaults.ring_entries),
            wake_token: RL_WAKE_TOKEN,
            // Not in the struct (see `rl_options`): set with `rl_set_accept_retry`.
            accept_retry_delay: defaults.accept_retry_delay,
            single_thread: self.flags & RL_OPT_SINGLE_THREAD != 0,
        })
    }
}

/// A registered loop.
///
/// The thread-safe parts (`remote`, `backend`) are used directly from any thread; the event loop
/// itself sits behind [`LoopEntry::enter`], which admits one thread at a time and lets that thread
/// re-enter (C callbacks calling back into the library).
///
/// Re-entrant calls and `&mut` exclusivity: while the loop dispatches a callback it has lent
/// `&mut EventLoop` to the callback trampoline, which publishes it in `current` for the duration
/// of the C call. A nested library call then uses that pointer (derived from the lent reference)
/// instead of creating a second `&mut` to the loop, so there is only ever one live path to it.
pub(crate) struct LoopEntry {
    /// Id of the thread currently inside a loop-thread function, 0 when none.
    owner: AtomicU64,
    /// Nesting depth of the owner's calls. Only the owner touches it.
    depth: UnsafeCell<u32>,
    /// The loop lent to the C callback running right now, or null. Only the owner touches it.
    current: UnsafeCell<*mut EventLoop>,
    /// `None` once `rl_loop_free` has run (other threads may still hold the entry briefly).
    state: UnsafeCell<Option<EventLoop>>,
    /// This loop's `rl_loop *` value, handed to its callbacks.
    pub(crate) handle: AtomicU64,
    pub(crate) remote: LoopHandle,
    pub(crate) backend: BackendKind,
}

// SAFETY: `depth`, `current` and `state` are only accessed by the thread that holds `owner` (see
// `enter`), so sharing the entry between threads never shares them. Everything else is `Sync`.
unsafe impl Sync for LoopEntry {}
// SAFETY: the event loop is `!Send` only because it can store Rust closures (and an opaque context
// word); the C ABI registers nothing but `RawCallback`s, which are `Send`, and stores the entry's
// own address as context. Moving the entry between threads therefore moves only `Send` data,
// and `enter` keeps two threads from ever using the loop at once.
unsafe impl Send for LoopEntry {}

static LOOPS: Registry<LoopEntry> = Registry::new(Kind::Loop);

/// What the C ABI keeps per thread: one thread-local, so one TLS access per call.
struct ThreadState {
    /// A small, nonzero, process-unique id for the thread.
    id: u64,
    /// The handle this thread entered last, and its entry, held weakly: a cache in front of the
    /// registry for loop-thread calls. Only a handle that was registered is cached; while its
    /// entry is alive, the handle either is still registered or has been freed, in which case
    /// the entry's loop is gone and `Entered::event_loop` reports `RL_EHANDLE`, exactly as the
    /// registry would (`rl_loop_free` unregisters and takes the loop as one step under `owner`).
    /// Weak, so a freed loop's resources are never kept alive by another thread's cache.
    last: RefCell<Option<(u64, Weak<LoopEntry>)>>,
}

thread_local!(static THREAD: ThreadState = ThreadState {
    id: {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        NEXT.fetch_add(1, Ordering::Relaxed)
    },
    last: RefCell::new(None),
});

/// Proof that the current thread holds a loop; released on drop.
pub(crate) struct Entered {
    entry: Arc<LoopEntry>,
}

impl LoopEntry {
    /// Admits the calling thread, or fails with `RL_ESTATE` while another thread is inside a
    /// loop-thread function of this loop (a contract violation that must not become a data race).
    /// `me` is the calling thread's id ([`ThreadState::id`]).
    fn enter(self: Arc<LoopEntry>, me: u64) -> Result<Entered, c_int> {
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

    /// Publishes the loop lent to a C callback for nested calls; returns the previous value.
    ///
    /// # Safety
    /// Called on the loop's owner thread (callbacks run there, inside `rl_run`/`rl_poll`/
    /// `rl_loop_free`, which hold the entry).
    pub(crate) unsafe fn swap_current(&self, lent: *mut EventLoop) -> *mut EventLoop {
        // SAFETY: the caller is the owner thread.
        unsafe { std::ptr::replace(self.current.get(), lent) }
    }

    /// The `rl_loop *` C callbacks of this loop receive.
    pub(crate) fn c_handle(&self) -> *mut rl_loop {
        self.handle.load(Ordering::Relaxed) as usize as *mut rl_loop
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

    /// The event loop, or `RL_EHANDLE` when it has been freed meanwhile.
    ///
    /// Inside a callback this is the loop lent to that callback; otherwise the loop itself.
    ///
    /// # Safety
    /// The returned reference must be dropped before this thread calls into the library again
    /// or returns to a caller that holds another reference from this entry; every use is a
    /// single call into the event loop (which may run callbacks: those re-enter through
    /// `current`, set by the trampoline from the reference the loop lends them).
    #[allow(clippy::mut_from_ref)] // exclusivity comes from `owner` and the nesting protocol
    pub(crate) unsafe fn event_loop(&self) -> Result<&mut EventLoop, c_int> {
        // SAFETY: this thread owns the entry, so `current` and `state` are ours to read.
        unsafe {
            let lent = *self.entry.current.get();
            if !lent.is_null() {
                // SAFETY: set by the trampoline from the `&mut EventLoop` the loop lent to the
                // running callback; it stays valid until the trampoline resets it.
                return Ok(&mut *lent);
            }
            (*self.entry.state.get()).as_mut().ok_or(RL_EHANDLE)
        }
    }
}

/// Looks up a loop for a thread-safe function (no exclusive access).
pub(crate) fn lookup(handle: *const rl_loop) -> Result<Arc<LoopEntry>, c_int> {
    LOOPS.get(handle as usize as u64).ok_or(RL_EHANDLE)
}

/// Looks up a loop and enters it for a loop-thread function.
pub(crate) fn enter(handle: *const rl_loop) -> Result<Entered, c_int> {
    let raw = handle as usize as u64;
    let (me, cached) = THREAD.with(|t| {
        let cached = match &*t.last.borrow() {
            Some((last, entry)) if *last == raw => entry.upgrade(),
            _ => None,
        };
        (t.id, cached)
    });
    let entry = match cached {
        Some(entry) => entry,
        None => {
            let entry = lookup(handle)?;
            let weak = Arc::downgrade(&entry);
            // The previous entry's `Weak` is dropped here, outside any borrow of the loop.
            let old = THREAD.with(|t| t.last.replace(Some((raw, weak))));
            drop(old);
            entry
        }
    };
    entry.enter(me)
}

/// Runs `body` with exclusive use of the event loop, mapping every failure to a code and
/// catching panics.
pub(crate) fn with_loop(
    handle: *const rl_loop,
    body: impl FnOnce(&mut EventLoop) -> c_int,
) -> c_int {
    guard(|| {
        let entered = match enter(handle) {
            Ok(e) => e,
            Err(code) => return code,
        };
        // SAFETY: the reference lives for this one call into the loop (see `event_loop`).
        match unsafe { entered.event_loop() } {
            Ok(lp) => body(lp),
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
        let event_loop = match EventLoop::new(&options) {
            Ok(lp) => lp,
            Err(e) => return error::from_io(&e),
        };
        let entry = Arc::new(LoopEntry {
            owner: AtomicU64::new(0),
            depth: UnsafeCell::new(0),
            current: UnsafeCell::new(std::ptr::null_mut()),
            handle: AtomicU64::new(0),
            remote: event_loop.handle(),
            backend: event_loop.backend(),
            state: UnsafeCell::new(Some(event_loop)),
        });
        // SAFETY: the entry is not shared yet: this is the only access to its loop. The context
        // is the entry's address, valid as long as the loop, which lives inside the entry.
        unsafe {
            if let Some(lp) = (*entry.state.get()).as_mut() {
                lp.set_context(Arc::as_ptr(&entry) as *mut c_void);
            }
        }
        let registered = entry.clone();
        match LOOPS.insert(entry) {
            Ok(handle) => {
                registered.handle.store(handle, Ordering::Relaxed);
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
        // Shut down while the loop is still registered: the shutdown calls C callbacks with
        // -ECANCELED, and those may call back into the library with this handle.
        // SAFETY: one call into the loop (see `event_loop`).
        let shutdown = match unsafe { entered.event_loop() } {
            Ok(lp) => lp.shutdown(),
            Err(code) => return code,
        };
        if let Err(e) = shutdown {
            return error::from_io(&e);
        }
        let Some(entry) = LOOPS.remove(r#loop as usize as u64) else {
            return RL_EHANDLE;
        };
        // SAFETY: this thread owns the entry at depth 1, so no reference to the loop is live;
        // other threads only reach the thread-safe fields.
        let event_loop = unsafe { (*entry.state.get()).take() };
        drop(event_loop);
        drop(entered);
        0
    })
}

/// Returns the name of the loop's backend, `"io_uring"` or `"epoll"` (a static string the caller
/// must not free), or NULL for a null, stale or foreign handle. Thread-safe.
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

/// Sets how long an accept (`rl_op_accept`, `rl_accept`) pauses after a resource error
/// (`-EMFILE`, `-ENFILE`, `-ENOBUFS`, `-ENOMEM`), as asyncio's `ACCEPT_RETRY_DELAY`. The error is
/// delivered once, with `RL_EV_MORE` (the accept stays active); the listening socket is then left
/// alone for `delay_ns` before accepting is tried again, so a process whose fd table stays full
/// gets one such event per delay instead of a busy loop. The default is 1 s (1000000000);
/// 0 retries at the next poll (no back-off). An accept already paused keeps its deadline.
/// Per-connection errors (`-ECONNABORTED`, `-EPERM`, ...) never pause accepting.
///
/// Returns 0, `RL_EHANDLE`, `RL_ESTATE`. Loop thread only.
#[no_mangle]
pub extern "C" fn rl_set_accept_retry(r#loop: *mut rl_loop, delay_ns: u64) -> c_int {
    with_loop(r#loop, |lp| {
        lp.set_accept_retry_delay(std::time::Duration::from_nanos(delay_ns));
        0
    })
}

/// Returns the loop's clock, CLOCK_MONOTONIC in nanoseconds (the clock of `rl_call_at` and
/// `rl_op_timer` deadlines), or 0 for a null, stale or foreign handle. Thread-safe.
#[no_mangle]
pub extern "C" fn rl_now(r#loop: *const rl_loop) -> u64 {
    guard_or(0, || match lookup(r#loop) {
        Ok(_) => Reactor::now_ns(),
        Err(_) => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_of_older_and_newer_callers() {
        // An older caller whose struct ends after `backend`: the rest takes the defaults.
        let old: [u32; 2] = [8, RL_BACKEND_EPOLL];
        // SAFETY: `old` has the 8 bytes its size field announces.
        let read = unsafe { rl_options::read(old.as_ptr().cast()) }.unwrap();
        assert_eq!(read.backend, RL_BACKEND_EPOLL);
        assert_eq!((read.buffer_size, read.flags), (0, 0));
        assert_eq!(read.size as usize, std::mem::size_of::<rl_options>());

        // A newer caller: extra fields are fine while zero, refused when set.
        let mut new = [0u32; 8];
        new[0] = 32;
        new[1] = RL_BACKEND_IO_URING;
        // SAFETY: `new` has the 32 bytes its size field announces.
        assert_eq!(
            unsafe { rl_options::read(new.as_ptr().cast()) }
                .unwrap()
                .backend,
            RL_BACKEND_IO_URING
        );
        new[7] = 1;
        // SAFETY: as above.
        assert_eq!(
            unsafe { rl_options::read(new.as_ptr().cast()) }.unwrap_err(),
            -libc::E2BIG
        );

        // A size that cannot even hold itself.
        let tiny: [u32; 1] = [2];
        // SAFETY: 4 readable bytes.
        assert_eq!(
            unsafe { rl_options::read(tiny.as_ptr().cast()) }.unwrap_err(),
            -libc::EINVAL
        );
    }

    #[test]
    fn options_are_validated() {
        let bad_backend = rl_options {
            backend: 9,
            ..rl_options::default()
        };
        assert_eq!(bad_backend.to_options().unwrap_err(), -libc::EINVAL);
        let bad_flags = rl_options {
            flags: 0x10,
            ..rl_options::default()
        };
        assert_eq!(bad_flags.to_options().unwrap_err(), -libc::EINVAL);
        let custom = rl_options {
            buffer_size: 4096,
            flags: RL_OPT_IGNORE_ENV,
            ..rl_options::default()
        };
        let o = custom.to_options().unwrap();
        assert_eq!(o.buffer_size, 4096);
        assert!(!o.honor_env);
        assert_eq!(o.buffer_count, Options::default().buffer_count);
        assert_eq!(o.wake_token, RL_WAKE_TOKEN);
        assert_eq!(o.accept_retry_delay, ringloop::DEFAULT_ACCEPT_RETRY_DELAY);
        assert!(!o.single_thread);
        let single = rl_options {
            flags: RL_OPT_SINGLE_THREAD,
            ..rl_options::default()
        };
        let o = single.to_options().unwrap();
        assert!(o.single_thread && o.honor_env);
    }

    #[test]
    fn the_per_thread_cache_never_outlives_a_free() {
        let mut a: *mut rl_loop = std::ptr::null_mut();
        // SAFETY: `a` is a valid out pointer.
        assert_eq!(unsafe { rl_loop_new(std::ptr::null(), &mut a) }, 0);
        drop(enter(a).unwrap()); // now this thread's cached loop
        let weak = Arc::downgrade(&lookup(a).unwrap());
        assert_eq!(rl_loop_free(a), 0);
        assert_eq!(
            weak.strong_count(),
            0,
            "the cache must not keep a freed loop alive"
        );
        assert_eq!(enter(a).err(), Some(RL_EHANDLE));
        assert_eq!(rl_loop_free(a), RL_EHANDLE);
        // A new loop (possibly in the same registry slot, with a new generation).
        let mut b: *mut rl_loop = std::ptr::null_mut();
        // SAFETY: as above.
        assert_eq!(unsafe { rl_loop_new(std::ptr::null(), &mut b) }, 0);
        assert_ne!(a, b);
        assert_eq!(enter(b).unwrap().depth(), 1);
        assert_eq!(
            enter(a).err(),
            Some(RL_EHANDLE),
            "a stale handle stays stale"
        );
        assert_eq!(enter(b).unwrap().depth(), 1);
        assert_eq!(rl_loop_free(b), 0);
        assert_eq!(enter(b).err(), Some(RL_EHANDLE));
    }

    #[test]
    fn a_loop_is_refused_to_a_second_thread_while_in_use() {
        let mut handle: *mut rl_loop = std::ptr::null_mut();
        // SAFETY: `handle` is a valid out pointer.
        assert_eq!(unsafe { rl_loop_new(std::ptr::null(), &mut handle) }, 0);
        let entered = enter(handle).unwrap();
        let raw = handle as usize;
        let other = std::thread::spawn(move || enter(raw as *const rl_loop).err())
            .join()
            .unwrap();
        assert_eq!(other, Some(RL_ESTATE));
        // The owner may re-enter (a callback calling back in).
        let nested = enter(handle).unwrap();
        assert_eq!(nested.depth(), 2);
        drop(nested);
        // Freeing from inside is refused; after the owner leaves, another thread may use it.
        assert_eq!(rl_loop_free(handle), RL_ESTATE);
        drop(entered);
        let freed = std::thread::spawn(move || rl_loop_free(raw as *mut rl_loop))
            .join()
            .unwrap();
        assert_eq!(freed, 0);
        assert_eq!(rl_loop_free(handle), RL_EHANDLE);
    }
}
