//! Shared pieces of the ringloop benchmark kit.
