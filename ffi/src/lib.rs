//! The C ABI of ringloop. See `include/ringloop.h` for the C reference.
