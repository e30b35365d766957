//! The ABI test: reads `include/ringloop.h` back with bindgen, compiles a small Rust program
//! against those generated declarations (not against this crate's Rust signatures), links it to
//! the built `libringloop.so` and runs it on both backends. If the committed header and the
//! library disagree on a name, a signature, a struct layout or a constant, this fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory holding the `libringloop.so` cargo built for this test run: `target/<profile>/deps`
/// (next to this test binary) when only tests were built, `target/<profile>` after a plain build.
fn library_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("target/<profile>/deps").to_path_buf();
    let candidates = [
        deps.clone(),
        deps.parent().expect("target/<profile>").to_path_buf(),
    ];
    candidates
        .iter()
        .find(|dir| dir.join("libringloop.so").exists())
        .unwrap_or_else(|| panic!("no libringloop.so in {candidates:?}"))
        .clone()
}

fn generate_bindings(header: &Path, out: &Path) {
    let bindings = bindgen::Builder::default()
        .header(header.to_str().expect("utf-8 path"))
        .allowlist_function("rl_.*")
        .allowlist_type("rl_.*")
        .allowlist_var("RL_.*")
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .expect("bindgen parses include/ringloop.h");
    bindings.write_to_file(out).expect("writing the bindings");
}

#[test]
fn header_read_back_by_bindgen_drives_the_library() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let header = crate_dir.join("../include/ringloop.h");
    let libdir = library_dir();
    let work = libdir.join("abi-test");
    std::fs::create_dir_all(&work).expect("work dir");
    // The library's SONAME is libringloop.so.0 (what an installed copy is found by); the build
    // tree only has libringloop.so, so the scenario finds it through a link named by the SONAME.
    let runtime = work.join("lib");
    std::fs::create_dir_all(&runtime).expect("runtime dir");
    let soname_link = runtime.join("libringloop.so.0");
    let _ = std::fs::remove_file(&soname_link);
    std::os::unix::fs::symlink(libdir.join("libringloop.so"), &soname_link).expect("SONAME link");
    let bindings = work.join("ringloop_h.rs");
    generate_bindings(&header, &bindings);

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let exe = work.join("abi_scenario");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "-g",
            "-D",
            "warnings",
            "-o",
        ])
        .arg(&exe)
        .arg(crate_dir.join("tests/abi/scenario.rs"))
        .arg("-L")
        .arg(&libdir)
        .args(["-l", "dylib=ringloop"])
        .arg(format!("-Clink-arg=-Wl,-rpath,{}", runtime.display()))
        .env("RINGLOOP_H_RS", &bindings)
        .status()
        .expect("running rustc");
    assert!(
        status.success(),
        "the scenario does not compile against the header's bindings"
    );

    for backend in ["io_uring", "epoll"] {
        let out = Command::new(&exe)
            .env("RINGLOOP_BACKEND", backend)
            .output()
            .expect("running the scenario");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "scenario failed on {backend}:\n{stdout}\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("backend {backend}")),
            "ran on the wrong backend:\n{stdout}"
        );
        assert!(
            stdout.contains("scenario: all checks passed"),
            "incomplete run:\n{stdout}"
        );
    }
}
