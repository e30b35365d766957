//! Generates `include/ringloop.h` from this crate's source with cbindgen.
//!
//! `gen_header OUT` writes the header to `OUT`; `gen_header --check OUT` exits 1 with a message
//! when `OUT` differs from what the source produces (the header drifted). `make -C ffi header` and
//! `make -C ffi check-header` call it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn generate(crate_dir: &Path) -> Result<Vec<u8>, String> {
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .map_err(|e| format!("reading cbindgen.toml: {e}"))?;
    let bindings = cbindgen::Builder::new()
        .with_crate(crate_dir)
        .with_config(config)
        .generate()
        .map_err(|e| format!("cbindgen: {e}"))?;
    let mut out = Vec::new();
    bindings.write(&mut out);
    Ok(out)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (check, out) = match args.as_slice() {
        [out] => (false, PathBuf::from(out)),
        [flag, out] if flag == "--check" => (true, PathBuf::from(out)),
        _ => {
            eprintln!("usage: gen_header [--check] OUT.h");
            return ExitCode::from(2);
        }
    };
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = match generate(crate_dir) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("gen_header: {e}");
            return ExitCode::FAILURE;
        }
    };
    if check {
        match std::fs::read(&out) {
            Ok(current) if current == header => ExitCode::SUCCESS,
            Ok(_) => {
                eprintln!(
                    "gen_header: {} is out of date with ffi/src; run `make -C ffi header` and commit it",
                    out.display()
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("gen_header: reading {}: {e}", out.display());
                ExitCode::FAILURE
            }
        }
    } else {
        match std::fs::write(&out, &header) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gen_header: writing {}: {e}", out.display());
                ExitCode::FAILURE
            }
        }
    }
}
