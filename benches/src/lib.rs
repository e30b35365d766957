//! Shared pieces of the ringloop benchmark kit.
//!
//! The echo load generator (`echoload`) deliberately does not use ringloop: it measures it. What
//! lives here is the small amount of process accounting it needs, kept in the library so that it
//! can be unit-tested.

pub mod cpu;
pub mod rng;
