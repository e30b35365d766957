//! Driven by `tests/abi.rs`: compiled against bindgen's reading of `include/ringloop.h` (the
//! `RINGLOOP_H_RS` file), linked to `libringloop.so`, run once per backend. Exits non-zero (a
//! panic) on the first failed check.

#![allow(non_camel_case_types, non_upper_case_globals, non_snake_case, dead_code)]

mod sys {
    include!(env!("RINGLOOP_H_RS"));
}

use std::ffi::CStr;
use std::io::Write;
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::net::UnixStream;
use std::ptr;

use sys::*;

fn check(rc: i32, what: &str) -> i32 {
    if rc < 0 {
        // SAFETY: rl_strerror returns a static NUL-terminated string.
        let msg = unsafe { CStr::from_ptr(rl_strerror(rc)) };
        panic!("{what}: {rc} ({})", msg.to_string_lossy());
    }
    rc
}

fn poll(lp: *mut rl_loop, timeout_ns: i64) -> Vec<rl_event> {
    let mut events = vec![rl_event { token: 0, result: 0, flags: 0, aux: 0 }; 64];
    // SAFETY: `events` has room for 64 records.
    let n = check(unsafe { rl_poll(lp, timeout_ns, events.as_mut_ptr(), 64) }, "rl_poll");
    events.truncate(n as usize);
    events
}

fn library_basics() {
    // SAFETY (whole function): plain calls with valid or deliberately invalid handles.
    unsafe {
        let v = rl_version();
        assert_eq!(v, (RL_VERSION_MAJOR << 16) | (RL_VERSION_MINOR << 8) | RL_VERSION_PATCH);
        let name = CStr::from_ptr(rl_strerror(RL_EHANDLE)).to_str().unwrap();
        assert!(name.starts_with("RL_EHANDLE"), "{name}");
        assert!(!rl_strerror(i32::MIN).is_null());
        let mut opts: rl_options = std::mem::zeroed();
        rl_options_init(&mut opts);
        assert_eq!(opts.size as usize, std::mem::size_of::<rl_options>());
        // Null, forged and foreign handles are errors, not crashes.
        assert_eq!(rl_poll(ptr::null_mut(), 0, ptr::null_mut(), 0), RL_EHANDLE);
        assert_eq!(rl_loop_free(0x1234 as *mut rl_loop), RL_EHANDLE);
        assert_eq!(rl_wake(usize::MAX as *mut rl_loop), RL_EHANDLE);
        assert!(rl_loop_backend(ptr::null()).is_null());
        let mut out: *mut rl_loop = ptr::null_mut();
        opts.backend = 77;
        assert_eq!(rl_loop_new(&opts, &mut out), -(libc_errno::EINVAL));
        assert!(out.is_null());
    }
}

mod libc_errno {
    pub const EINVAL: i32 = 22;
    pub const ENOENT: i32 = 2;
    pub const ECANCELED: i32 = 125;
}

fn raw_timers(lp: *mut rl_loop) {
    // SAFETY: valid loop; out pointers are locals.
    unsafe {
        let now = rl_now(lp);
        assert!(now > 0);
        let ms = 1_000_000u64;
        let mut cancelled = 0u64;
        check(rl_op_timer(lp, now + 30 * ms, 3, ptr::null_mut()), "timer 3");
        check(rl_op_timer(lp, now + 10 * ms, 1, ptr::null_mut()), "timer 1");
        check(rl_op_timer(lp, now + 25 * ms, 9, &mut cancelled), "timer 9");
        check(rl_op_timer(lp, now + 20 * ms, 2, ptr::null_mut()), "timer 2");
        assert_eq!(rl_timer_cancel(lp, cancelled), 1);
        assert_eq!(rl_timer_cancel(lp, cancelled), 0, "a cancelled timer's id is harmless");
        let mut fired = Vec::new();
        while fired.len() < 3 {
            for ev in poll(lp, -1) {
                assert_eq!(ev.result, 0);
                fired.push(ev.token);
            }
        }
        assert_eq!(fired, [1, 2, 3]);
        assert!(rl_now(lp) >= now + 30 * ms);
    }
    println!("raw timers: fired in deadline order, cancelled one never fired");
}

fn raw_echo(lp: *mut rl_loop) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let payload: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut received = Vec::with_capacity(payload.len());
    // SAFETY: valid loop; `payload` outlives the send (we wait for its event below).
    unsafe {
        let mut base: *const u8 = ptr::null();
        let (mut size, mut count) = (0u32, 0u32);
        check(rl_buffers(lp, &mut base, &mut size, &mut count), "rl_buffers");
        assert!(!base.is_null() && size > 0 && count > 0);
        check(rl_op_recv(lp, a.as_raw_fd(), 10, ptr::null_mut()), "rl_op_recv");
        check(
            rl_op_send(lp, b.as_raw_fd(), payload.as_ptr().cast(), payload.len(), 11, ptr::null_mut()),
            "rl_op_send",
        );
        let mut sent = None;
        while sent.is_none() || received.len() < payload.len() {
            for ev in poll(lp, -1) {
                match ev.token {
                    10 => {
                        assert!(ev.result > 0, "recv failed: {}", ev.result);
                        assert_ne!(ev.flags & RL_EV_BUFFER, 0);
                        assert_ne!(ev.flags & RL_EV_MORE, 0);
                        assert!(ev.aux < u64::from(count));
                        let data = std::slice::from_raw_parts(
                            base.add(ev.aux as usize * size as usize),
                            ev.result as usize,
                        );
                        received.extend_from_slice(data);
                    }
                    11 => sent = Some(ev.result),
                    other => panic!("unexpected token {other}"),
                }
            }
        }
        assert_eq!(sent, Some(payload.len() as i32));
        assert!(received == payload, "echo differs");

        // Closing the peer through the loop ends the multishot receive with EOF.
        let mut close_result = None;
        let mut eof = false;
        check(rl_op_close(lp, b.into_raw_fd(), 12, ptr::null_mut()), "rl_op_close");
        while close_result.is_none() || !eof {
            for ev in poll(lp, -1) {
                match ev.token {
                    12 => close_result = Some(ev.result),
                    10 => {
                        assert_eq!(ev.result, 0, "expected EOF");
                        assert_eq!(ev.flags & RL_EV_MORE, 0, "EOF is the last event");
                        eof = true;
                    }
                    other => panic!("unexpected token {other}"),
                }
            }
        }
        assert_eq!(close_result, Some(0));

        // A level-triggered watch reports writability until cancelled.
        let mut watch = 0u64;
        check(rl_op_watch(lp, a.as_raw_fd(), RL_WRITABLE, 20, &mut watch), "rl_op_watch");
        let evs = poll(lp, -1);
        assert!(evs.iter().any(|e| e.token == 20 && e.result as u32 & RL_WRITABLE != 0), "{evs:?}");
        check(rl_op_cancel(lp, watch), "rl_op_cancel");
        assert_eq!(rl_op_cancel(lp, watch), -libc_errno::ENOENT, "stale op id");
        assert!(poll(lp, 0).iter().all(|e| e.token != 20), "no event after cancel");
        // Reserved tokens belong to the library.
        assert_eq!(rl_op_watch(lp, a.as_raw_fd(), RL_READABLE, RL_TOKEN_RESERVED as u64, ptr::null_mut()), -22);
    }
    drop(a);
    println!("raw echo: {} bytes echoed byte for byte, EOF after close", payload.len());
}

fn raw_wake(lp: *mut rl_loop) {
    let handle = lp as usize;
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(20));
        // SAFETY: rl_wake is thread-safe; the loop outlives this thread (joined below).
        assert_eq!(unsafe { rl_wake(handle as *mut rl_loop) }, 0);
        assert_eq!(unsafe { rl_wake(handle as *mut rl_loop) }, 0);
    });
    let evs = poll(lp, -1);
    t.join().unwrap();
    let mut wakes = evs.iter().filter(|e| e.token == RL_WAKE_TOKEN as u64).count();
    wakes += poll(lp, 0).iter().filter(|e| e.token == RL_WAKE_TOKEN as u64).count();
    assert!((1..=2).contains(&wakes), "wakes coalesce and are not lost: {wakes}");
    println!("raw wake: woken from another thread");
}

fn main() {
    library_basics();
    let mut lp: *mut rl_loop = ptr::null_mut();
    // SAFETY: `lp` is a valid out pointer.
    check(unsafe { rl_loop_new(ptr::null(), &mut lp) }, "rl_loop_new");
    // SAFETY: valid loop; the backend name is a static string.
    let backend = unsafe { CStr::from_ptr(rl_loop_backend(lp)) }.to_str().unwrap().to_owned();
    println!("backend {backend}");
    raw_timers(lp);
    raw_echo(lp);
    raw_wake(lp);
    // SAFETY: valid loop, freed once; the second free must be detected.
    unsafe {
        check(rl_loop_free(lp), "rl_loop_free");
        assert_eq!(rl_loop_free(lp), RL_EHANDLE, "double free is an error");
        assert_eq!(rl_poll(lp, 0, ptr::null_mut(), 0), RL_EHANDLE, "freed handle is stale");
    }
    println!("scenario: all checks passed");
    std::io::stdout().flush().unwrap();
}
