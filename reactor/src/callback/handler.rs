//! How callbacks are represented: a raw form (a function pointer plus two opaque words, never
//! allocated) for the C ABI and for allocation-free hot paths, and boxed Rust closures for
//! convenience.

use std::ffi::c_void;
use std::fmt;
use std::os::fd::RawFd;

use super::future::LoopFuture;
use super::EventLoop;

/// What a callback is told about the event that triggered it.
///
/// | registered with | `result` | `fd` | `bytes` |
/// |---|---|---|---|
/// | `call_soon*`, `call_later*`, `call_at*` | `0` | `-1` | empty |
/// | `add_reader*` / `add_writer*` | ready [`crate::Interest`] bits | the watched fd | empty |
/// | `recv*` | byte count, `0` = EOF, or `-errno` | the socket | the received bytes |
/// | `recvmsg*` | payload bytes (`0`: an empty datagram) or `-errno` | the socket | the payload (`source`: the sender) |
/// | `accept*` | the new fd (the callback owns it) or `-errno` | the listening socket | empty |
/// | `send*` | total bytes sent or `-errno` | the socket | empty |
/// | `connect*`, `close*` | `0` or `-errno` | the socket | empty |
/// | `add_signal*` | the signal number | `-1` | empty |
/// | done-callbacks | `0` | `-1` | empty (`future` is set) |
///
/// When the loop is closed with a raw callback still registered, that callback is called once
/// more with `result == -ECANCELED` (see [`EventLoop::shutdown`]).
#[derive(Clone, Copy, Debug)]
pub struct Outcome<'a> {
    /// See the table above.
    pub result: i32,
    /// The fd the operation is about, or `-1`.
    pub fd: RawFd,
    /// Received bytes (recv only). Valid only during the callback: the buffer goes back to the
    /// reactor's pool when the callback returns.
    pub bytes: &'a [u8],
    /// The sender's address of a datagram (`recvmsg` only): `sockaddr` bytes, valid as long as
    /// `bytes`. Empty for everything else.
    pub source: &'a [u8],
    /// Whether more calls will follow for this registration (multishot ops and watches).
    pub more: bool,
    /// The future whose done-callback this is.
    pub future: Option<&'a LoopFuture>,
}

impl Outcome<'_> {
    pub(crate) const fn simple(result: i32) -> Outcome<'static> {
        Outcome {
            result,
            fd: -1,
            bytes: &[],
            source: &[],
            more: false,
            future: None,
        }
    }
}

/// The function of a [`RawCallback`]: called on the loop thread with the loop, the outcome, and
/// the two words the callback was created with.
pub type RawFn =
    unsafe fn(lp: &mut EventLoop, outcome: &Outcome<'_>, data: *mut c_void, extra: *mut c_void);

/// A callback that costs no allocation: a function pointer plus two opaque words.
///
/// The C ABI stores a C function pointer in one word and the C caller's `void *data` in the
/// other, and registers a per-kind trampoline as `func`. The loop never dereferences the words.
#[derive(Clone, Copy)]
pub struct RawCallback {
    func: RawFn,
    data: *mut c_void,
    extra: *mut c_void,
}

// SAFETY: a RawCallback is only ever *called* on the loop's thread; moving it between threads
// moves two opaque words the loop never dereferences. Whether `func` may use `data`/`extra` on the
// loop thread is the promise made to `RawCallback::new`.
unsafe impl Send for RawCallback {}

impl RawCallback {
    /// Bundles a function with the two words it will be called with.
    ///
    /// # Safety
    /// Calling `func(lp, outcome, data, extra)` on the thread that runs the loop must be sound for
    /// as long as the callback stays registered, every time the loop calls it (persistent
    /// registrations are called many times; each registration's last call is documented with the
    /// registering method, and closing the loop makes one final call with `-ECANCELED`). In
    /// particular `data` and `extra` must stay valid for that long, and usable from the loop
    /// thread even when the callback was created on another thread.
    pub unsafe fn new(func: RawFn, data: *mut c_void, extra: *mut c_void) -> RawCallback {
        RawCallback { func, data, extra }
    }

    /// The function.
    pub fn func(&self) -> RawFn {
        self.func
    }

    /// The first word.
    pub fn data(&self) -> *mut c_void {
        self.data
    }

    /// The second word.
    pub fn extra(&self) -> *mut c_void {
        self.extra
    }

    pub(crate) fn call(self, lp: &mut EventLoop, outcome: &Outcome<'_>) {
        // SAFETY: whoever built this callback promised (RawCallback::new) that calling `func`
        // with these words on the loop thread is sound while it is registered; the loop calls it
        // only on its own thread and only while the registration lives.
        unsafe { (self.func)(lp, outcome, self.data, self.extra) }
    }
}

impl fmt::Debug for RawCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawCallback")
            .field("func", &(self.func as *const ()))
            .field("data", &self.data)
            .field("extra", &self.extra)
            .finish()
    }
}

/// A one-shot closure told the outcome.
pub(crate) type OnceFn = Box<dyn FnOnce(&mut EventLoop, &Outcome<'_>)>;
/// A persistent closure told the outcome.
pub(crate) type ManyFn = Box<dyn FnMut(&mut EventLoop, &Outcome<'_>)>;

/// A stored callback.
pub(crate) enum Handler {
    Raw(RawCallback),
    /// A closure without an outcome (`call_soon`, timers, threadsafe calls).
    Plain(Box<dyn FnOnce(&mut EventLoop)>),
    /// A one-shot closure told the outcome.
    Once(OnceFn),
    /// A persistent closure (watches, multishot ops, signals).
    Many(ManyFn),
    /// A persistent closure that is running right now (taken out of its slot for the call).
    Running,
}

impl Handler {
    /// Runs a callback that is over after this call.
    pub(crate) fn call_once(self, lp: &mut EventLoop, outcome: &Outcome<'_>) {
        match self {
            Handler::Raw(cb) => cb.call(lp, outcome),
            Handler::Plain(f) => f(lp),
            Handler::Once(f) => f(lp, outcome),
            Handler::Many(mut f) => f(lp, outcome),
            Handler::Running => {}
        }
    }

    /// What closing the loop does with a callback that never got its event: a raw callback is
    /// told `-ECANCELED` (its data may need freeing), a closure is dropped, which frees what it
    /// captured.
    pub(crate) fn cancel(self, lp: &mut EventLoop, fd: RawFd) {
        if let Handler::Raw(cb) = self {
            let outcome = Outcome {
                fd,
                ..Outcome::simple(-libc::ECANCELED)
            };
            cb.call(lp, &outcome);
        }
    }
}
