//! Panic guarding: nothing unwinds across the C boundary.

use std::ffi::c_int;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::RL_EPANIC;

/// Runs `body`, turning a panic into [`RL_EPANIC`].
///
/// `AssertUnwindSafe` is sound here because a panic inside the library leaves no broken invariant
/// visible to C: loop state is only mutated through the `ringloop` crate, whose operations are
/// panic-safe, and the handle registry's locks recover from poisoning.
pub(crate) fn guard(body: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(RL_EPANIC)
}

/// Runs `body`, returning `fallback` when it panics (for functions that return a pointer or a
/// plain value instead of an error code).
pub(crate) fn guard_or<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}
