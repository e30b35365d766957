//! Callback mode: an event loop that dispatches events to callbacks, futures, a thread pool.
