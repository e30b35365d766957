//! Link settings of `libringloop.so`: the SONAME C programs record, and a version script so the
//! library exports the `rl_*` ABI and nothing else (no Rust std symbols leak into the dynamic
//! symbol table, whatever rustc decides to export).

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the package version");
    println!("cargo:rerun-if-changed=ringloop.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libringloop.so.{major}");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/ringloop.map");
}
