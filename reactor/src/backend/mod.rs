//! Backends: the small contract each kernel interface fulfils. (Filled in by the reactor core.)
