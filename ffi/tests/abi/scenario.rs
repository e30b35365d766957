//! Driven by `tests/abi.rs`: compiled against bindgen's reading of `include/ringloop.h` (the
//! `RINGLOOP_H_RS` file), linked to `libringloop.so`, run once per backend. Exits non-zero (a
//! panic) on the first failed check.

#![allow(
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    dead_code
)]

mod sys {
    include!(env!("RINGLOOP_H_RS"));
}

use std::ffi::CStr;
use std::io::{Read, Write};
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
    let mut events = vec![
        rl_event {
            token: 0,
            result: 0,
            flags: 0,
            aux: 0
        };
        64
    ];
    // SAFETY: `events` has room for 64 records.
    let n = check(
        unsafe { rl_poll(lp, timeout_ns, events.as_mut_ptr(), 64) },
        "rl_poll",
    );
    events.truncate(n as usize);
    events
}

fn library_basics() {
    // SAFETY (whole function): plain calls with valid or deliberately invalid handles.
    unsafe {
        let v = rl_version();
        assert_eq!(
            v,
            (RL_VERSION_MAJOR << 16) | (RL_VERSION_MINOR << 8) | RL_VERSION_PATCH
        );
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
    pub const EBADF: i32 = 9;
    pub const EOPNOTSUPP: i32 = 95;
    pub const EDESTADDRREQ: i32 = 89;
}

/// A `struct sockaddr_in` for an IPv4 address, as C code builds one.
fn sockaddr_in(addr: std::net::SocketAddr) -> [u8; 16] {
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("an IPv4 address expected: {addr}");
    };
    let mut raw = [0u8; 16];
    raw[..2].copy_from_slice(&2u16.to_ne_bytes()); // AF_INET
    raw[2..4].copy_from_slice(&v4.port().to_be_bytes());
    raw[4..8].copy_from_slice(&v4.ip().octets());
    raw
}

fn raw_timers(lp: *mut rl_loop) {
    // SAFETY: valid loop; out pointers are locals.
    unsafe {
        let now = rl_now(lp);
        assert!(now > 0);
        let ms = 1_000_000u64;
        let mut cancelled = 0u64;
        check(
            rl_op_timer(lp, now + 30 * ms, 3, ptr::null_mut()),
            "timer 3",
        );
        check(
            rl_op_timer(lp, now + 10 * ms, 1, ptr::null_mut()),
            "timer 1",
        );
        check(rl_op_timer(lp, now + 25 * ms, 9, &mut cancelled), "timer 9");
        check(
            rl_op_timer(lp, now + 20 * ms, 2, ptr::null_mut()),
            "timer 2",
        );
        assert_eq!(rl_timer_cancel(lp, cancelled), 1);
        assert_eq!(
            rl_timer_cancel(lp, cancelled),
            0,
            "a cancelled timer's id is harmless"
        );
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

/// `rl_buffer_keep` / `rl_buffer_release`: a kept buffer's bytes outlive later polls and can be
/// sent straight from the pool; bad ids and double keeps or releases are errors.
fn raw_kept_buffer(lp: *mut rl_loop) {
    let (a, mut b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).unwrap();
    // SAFETY (whole function): a valid loop; the kept buffer stays valid until its release,
    // which comes after the send from it has completed.
    unsafe {
        let mut base: *const u8 = ptr::null();
        let mut size = 0u32;
        let mut count = 0u32;
        check(rl_buffers(lp, &mut base, &mut size, &mut count), "rl_buffers");
        assert_eq!(rl_buffer_keep(ptr::null_mut(), 0), RL_EHANDLE);
        assert_eq!(rl_buffer_release(ptr::null_mut(), 0), RL_EHANDLE);
        assert_eq!(rl_buffer_keep(lp, count), -libc_errno::EINVAL);
        assert_eq!(rl_buffer_release(lp, 0), -libc_errno::ENOENT, "nothing kept");
        check(rl_op_recv(lp, a.as_raw_fd(), 20, ptr::null_mut()), "rl_op_recv");
        b.write_all(b"kept across polls").unwrap();
        let mut kept = None;
        while kept.is_none() {
            for ev in poll(lp, -1) {
                assert_eq!(ev.token, 20);
                assert_eq!(ev.result, 17);
                let id = ev.aux as u32;
                check(rl_buffer_keep(lp, id), "rl_buffer_keep");
                assert_eq!(rl_buffer_keep(lp, id), -libc_errno::ENOENT, "kept twice");
                kept = Some(id);
            }
        }
        let id = kept.unwrap();
        let bytes = base.add(id as usize * size as usize);
        // Later receives, over several polls, never reuse the kept buffer.
        for round in 0..5u8 {
            b.write_all(&[round; 64]).unwrap();
            let mut got = 0;
            while got < 64 {
                for ev in poll(lp, -1) {
                    assert_eq!(ev.token, 20);
                    assert_ne!(ev.aux, u64::from(id), "the kept buffer was reused");
                    got += ev.result;
                }
            }
        }
        assert_eq!(std::slice::from_raw_parts(bytes, 17), b"kept across polls");
        // Echo it back from the pool itself, then release it.
        check(
            rl_op_send(lp, a.as_raw_fd(), bytes.cast(), 17, 21, ptr::null_mut()),
            "rl_op_send",
        );
        let mut sent = None;
        while sent.is_none() {
            for ev in poll(lp, -1) {
                assert_eq!(ev.token, 21);
                sent = Some(ev.result);
            }
        }
        assert_eq!(sent, Some(17));
        check(rl_buffer_release(lp, id), "rl_buffer_release");
        assert_eq!(rl_buffer_release(lp, id), -libc_errno::ENOENT, "released twice");
        let mut echoed = [0u8; 17];
        b.read_exact(&mut echoed).unwrap();
        assert_eq!(&echoed, b"kept across polls");
        check(rl_op_cancel_token(lp, 20), "rl_op_cancel_token");
        let _ = poll(lp, 0);
    }
    println!("raw kept buffer: outlived 5 polls, echoed from the pool, released once");
}

fn raw_echo(lp: *mut rl_loop) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let payload: Vec<u8> = (0..(3 << 20))
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut received = Vec::with_capacity(payload.len());
    // SAFETY: valid loop; `payload` outlives the send (we wait for its event below).
    unsafe {
        let mut base: *const u8 = ptr::null();
        let (mut size, mut count) = (0u32, 0u32);
        check(
            rl_buffers(lp, &mut base, &mut size, &mut count),
            "rl_buffers",
        );
        assert!(!base.is_null() && size > 0 && count > 0);
        check(
            rl_op_recv(lp, a.as_raw_fd(), 10, ptr::null_mut()),
            "rl_op_recv",
        );
        check(
            rl_op_send(
                lp,
                b.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                11,
                ptr::null_mut(),
            ),
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
        check(
            rl_op_close(lp, b.into_raw_fd(), 12, ptr::null_mut()),
            "rl_op_close",
        );
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
        check(
            rl_op_watch(lp, a.as_raw_fd(), RL_WRITABLE, 20, &mut watch),
            "rl_op_watch",
        );
        let evs = poll(lp, -1);
        assert!(
            evs.iter()
                .any(|e| e.token == 20 && e.result as u32 & RL_WRITABLE != 0),
            "{evs:?}"
        );
        check(rl_op_cancel(lp, watch), "rl_op_cancel");
        assert_eq!(rl_op_cancel(lp, watch), -libc_errno::ENOENT, "stale op id");
        assert!(
            poll(lp, 0).iter().all(|e| e.token != 20),
            "no event after cancel"
        );
        // Reserved tokens belong to the library.
        assert_eq!(
            rl_op_watch(
                lp,
                a.as_raw_fd(),
                RL_READABLE,
                RL_TOKEN_RESERVED as u64,
                ptr::null_mut()
            ),
            -22
        );
    }
    drop(a);
    println!(
        "raw echo: {} bytes echoed byte for byte, EOF after close",
        payload.len()
    );
}

/// `rl_op_recv_once`: one event per op, at most `max_len` bytes, `-ECANCELED` on cancel, EOF 0.
fn raw_recv_once(lp: *mut rl_loop) {
    let (a, mut b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).unwrap();
    // SAFETY: valid loop; out pointers are locals or NULL; buffer bytes are read before the next
    // rl_poll.
    unsafe {
        let mut base: *const u8 = ptr::null();
        let mut size = 0u32;
        check(
            rl_buffers(lp, &mut base, &mut size, ptr::null_mut()),
            "rl_buffers",
        );
        // Cancelled before any byte: exactly one -ECANCELED event.
        let mut op = 0u64;
        check(
            rl_op_recv_once(lp, a.as_raw_fd(), 10, 30, &mut op),
            "rl_op_recv_once",
        );
        assert!(poll(lp, 0).is_empty());
        check(rl_op_cancel(lp, op), "rl_op_cancel");
        let evs = poll(lp, 0);
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!(
            (evs[0].token, evs[0].result, evs[0].flags),
            (30, -libc_errno::ECANCELED, 0)
        );
        assert_eq!(rl_op_cancel(lp, op), -libc_errno::ENOENT, "stale op id");

        // 25 bytes through max_len 10: 10 + 10 + 5, one event each, never RL_EV_MORE.
        let payload: Vec<u8> = (0..25u8).collect();
        b.write_all(&payload).unwrap();
        let mut received = Vec::new();
        while received.len() < payload.len() {
            check(
                rl_op_recv_once(lp, a.as_raw_fd(), 10, 31, ptr::null_mut()),
                "rl_op_recv_once",
            );
            let evs = poll(lp, -1);
            assert_eq!(evs.len(), 1, "{evs:?}");
            let ev = evs[0];
            assert_eq!(ev.token, 31);
            assert!(ev.result > 0 && ev.result <= 10, "{ev:?}");
            assert_eq!(ev.flags, RL_EV_BUFFER, "{ev:?}");
            received.extend_from_slice(std::slice::from_raw_parts(
                base.add(ev.aux as usize * size as usize),
                ev.result as usize,
            ));
        }
        assert_eq!(received, payload);

        // End of stream: one event with 0. Bad fds are refused.
        drop(b);
        check(
            rl_op_recv_once(lp, a.as_raw_fd(), 0, 32, ptr::null_mut()),
            "rl_op_recv_once",
        );
        let evs = poll(lp, -1);
        assert_eq!(evs.len(), 1, "{evs:?}");
        assert_eq!((evs[0].token, evs[0].result, evs[0].flags), (32, 0, 0));
        assert_eq!(
            rl_op_recv_once(lp, -1, 0, 33, ptr::null_mut()),
            -libc_errno::EBADF
        );
        assert_eq!(
            rl_op_recv_once(ptr::null_mut(), a.as_raw_fd(), 0, 33, ptr::null_mut()),
            RL_EHANDLE
        );
    }
    println!("raw recv_once: cancel, 25 bytes in pieces of <= 10, EOF");
}

/// `rl_op_recv` on a pipe (0.5.0): its bytes byte for byte, then EOF once the writer is gone.
fn raw_pipe(lp: *mut rl_loop) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let to_write = payload.clone();
    let writer = std::thread::spawn(move || {
        let mut writer = writer;
        writer.write_all(&to_write).unwrap();
    });
    let mut received = Vec::new();
    // SAFETY: valid loop; out pointers are locals or NULL; buffer bytes are read before the next
    // rl_poll.
    unsafe {
        let mut base: *const u8 = ptr::null();
        let mut size = 0u32;
        check(
            rl_buffers(lp, &mut base, &mut size, ptr::null_mut()),
            "rl_buffers",
        );
        check(
            rl_op_recv(lp, reader.as_raw_fd(), 40, ptr::null_mut()),
            "rl_op_recv on a pipe",
        );
        'reading: loop {
            for ev in poll(lp, -1) {
                assert_eq!(ev.token, 40, "{ev:?}");
                if ev.result == 0 {
                    assert_eq!(ev.flags, 0, "{ev:?}");
                    break 'reading;
                }
                if ev.result < 0 && backend_is_io_uring(lp) && received.is_empty() {
                    // Linux before 6.7 cannot read pipes through io_uring: -ENOTSOCK.
                    println!("raw pipe: skipped ({ev:?})");
                    drop(reader);
                    let _ = writer.join();
                    return;
                }
                assert!(ev.result > 0, "{ev:?}");
                assert_eq!(ev.flags, RL_EV_MORE | RL_EV_BUFFER, "{ev:?}");
                received.extend_from_slice(std::slice::from_raw_parts(
                    base.add(ev.aux as usize * size as usize),
                    ev.result as usize,
                ));
            }
        }
    }
    writer.join().unwrap();
    assert!(received == payload, "the pipe's bytes arrived changed");
    println!("raw pipe: {} bytes read byte for byte, EOF", payload.len());
}

/// `rl_op_recvmsg` (0.6.0): UDP datagrams with their sender, read through the `RL_DGRAM_*`
/// offsets; a stream socket is refused.
fn raw_datagrams(lp: *mut rl_loop) {
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let word = |buf: *const u8, at: u32| {
        // SAFETY: `buf` is a datagram buffer of the last poll; the header is inside it.
        unsafe { buf.add(at as usize).cast::<u32>().read_unaligned() }
    };
    // SAFETY: valid loop; out pointers are locals or NULL; buffer bytes are read before the next
    // rl_poll.
    unsafe {
        let mut base: *const u8 = ptr::null();
        let mut size = 0u32;
        check(
            rl_buffers(lp, &mut base, &mut size, ptr::null_mut()),
            "rl_buffers",
        );
        let mut op = 0u64;
        check(
            rl_op_recvmsg(lp, server.as_raw_fd(), 50, &mut op),
            "rl_op_recvmsg",
        );
        let messages: [&[u8]; 3] = [b"one", b"", b"three"];
        for message in messages {
            client.send_to(message, server.local_addr().unwrap()).unwrap();
        }
        let mut received = Vec::new();
        while received.len() < messages.len() {
            for ev in poll(lp, -1) {
                assert_eq!(ev.token, 50, "{ev:?}");
                assert_eq!(ev.flags, RL_EV_MORE | RL_EV_BUFFER | RL_EV_DATAGRAM, "{ev:?}");
                let buf = base.add(ev.aux as usize * size as usize);
                assert_eq!(word(buf, RL_DGRAM_PAYLOAD_LEN), ev.result as u32);
                assert_eq!(word(buf, RL_DGRAM_NAME_LEN), 16, "a sockaddr_in");
                // sin_port, in network order, after the 2-byte family.
                let name = buf.add(RL_DGRAM_NAME as usize);
                let port = u16::from_be_bytes([*name.add(2), *name.add(3)]);
                assert_eq!(port, client.local_addr().unwrap().port());
                let payload = std::slice::from_raw_parts(
                    buf.add(RL_DGRAM_PAYLOAD as usize),
                    ev.result as usize,
                );
                received.push(payload.to_vec());
            }
        }
        assert_eq!(received, messages);

        // `rl_op_sendto` (0.7.0): an echo straight from kept receive buffers, to the address
        // each datagram came from; each buffer is released at its send's event.
        let mut echoes = 0;
        let client_fd = client.as_raw_fd();
        let to_client = sockaddr_in(client.local_addr().unwrap());
        for message in messages {
            client.send_to(message, server.local_addr().unwrap()).unwrap();
        }
        let mut sends = std::collections::HashMap::new();
        while echoes < messages.len() {
            for ev in poll(lp, -1) {
                if ev.token == 50 {
                    check(rl_buffer_keep(lp, ev.aux as u32), "rl_buffer_keep");
                    let buf = base.add(ev.aux as usize * size as usize);
                    let token = 60 + sends.len() as u64;
                    check(
                        rl_op_sendto(
                            lp,
                            server.as_raw_fd(),
                            buf.add(RL_DGRAM_PAYLOAD as usize).cast(),
                            ev.result as usize,
                            buf.add(RL_DGRAM_NAME as usize).cast(),
                            word(buf, RL_DGRAM_NAME_LEN),
                            token,
                            ptr::null_mut(),
                        ),
                        "rl_op_sendto",
                    );
                    sends.insert(token, (ev.aux as u32, ev.result));
                } else {
                    let (buffer, len) = sends[&ev.token];
                    assert_eq!(ev.result, len, "the echo's send: {ev:?}");
                    assert_eq!(ev.flags, 0);
                    check(rl_buffer_release(lp, buffer), "rl_buffer_release");
                    echoes += 1;
                }
            }
        }
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut echo = [0u8; 16];
        for message in messages {
            let (n, from) = client.recv_from(&mut echo).unwrap();
            assert_eq!((&echo[..n], from), (message, server.local_addr().unwrap()));
        }
        // A NULL address means the connected peer: there is none.
        check(
            rl_op_sendto(lp, client_fd, b"x".as_ptr().cast(), 1, ptr::null(), 0, 61, ptr::null_mut()),
            "rl_op_sendto",
        );
        let evs = poll(lp, -1);
        assert_eq!((evs[0].token, evs[0].result), (61, -libc_errno::EDESTADDRREQ));
        assert_eq!(
            rl_op_sendto(lp, client_fd, b"x".as_ptr().cast(), 1, ptr::null(), 16, 62, ptr::null_mut()),
            -libc_errno::EINVAL,
            "NULL address with a length"
        );
        assert_eq!(
            rl_op_sendto(lp, client_fd, ptr::null(), 1, to_client.as_ptr().cast(), 16, 62, ptr::null_mut()),
            -libc_errno::EINVAL,
            "NULL buffer"
        );

        check(rl_op_cancel(lp, op), "rl_op_cancel");
        let (stream, _peer) = UnixStream::pair().unwrap();
        assert_eq!(
            rl_op_recvmsg(lp, stream.as_raw_fd(), 51, ptr::null_mut()),
            -libc_errno::EOPNOTSUPP
        );
    }
    println!(
        "raw datagrams: 3 datagrams with their sender, echoed from kept buffers with rl_op_sendto, \
         a stream socket refused"
    );
}

/// `rl_recvmsg`'s callback: records the payload and the sender's port, from `outcome` alone.
unsafe extern "C" fn on_datagram(_lp: *mut rl_loop, o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: registered with a `Vec` that outlives the runs; `o` is valid during the call, and
    // its bytes and source are valid for their lengths.
    unsafe {
        let seen = &mut *(data as *mut Vec<(Vec<u8>, u16)>);
        let o = &*o;
        assert!(o.result >= 0, "{}", o.result);
        assert_eq!(o.flags, RL_EV_MORE);
        assert_eq!(o.nbytes, o.result as usize);
        let payload = if o.nbytes == 0 {
            assert!(o.bytes.is_null());
            Vec::new()
        } else {
            std::slice::from_raw_parts(o.bytes, o.nbytes).to_vec()
        };
        assert_eq!(o.source_len, 16, "a sockaddr_in");
        let name = std::slice::from_raw_parts(o.source.cast::<u8>(), 4);
        seen.push((payload, u16::from_be_bytes([name[2], name[3]])));
    }
}

/// `rl_sendto`'s callback: stores the result in the `i32` at `data`.
unsafe extern "C" fn on_sent(_lp: *mut rl_loop, o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: registered with an `i32` that outlives the run; `o` is valid during the call.
    unsafe { *(data as *mut i32) = (*o).result };
}

/// Callback mode's `rl_recvmsg` (0.6.0): datagrams with their sender in `rl_outcome.source`.
fn callback_datagrams(lp: *mut rl_loop) {
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seen: Vec<(Vec<u8>, u16)> = Vec::new();
    let mut op = 0u64;
    // SAFETY: valid loop; `seen` outlives the runs and the receive (cancelled below).
    unsafe {
        check(
            rl_recvmsg(
                lp,
                server.as_raw_fd(),
                Some(on_datagram),
                &mut seen as *mut _ as *mut c_void,
                &mut op,
            ),
            "rl_recvmsg",
        );
        for message in [&b"uno"[..], b"", b"tres"] {
            client.send_to(message, server.local_addr().unwrap()).unwrap();
        }
        while seen.len() < 3 {
            check(rl_run(lp, RL_RUN_ONCE as i32), "rl_run");
        }
        assert_eq!(rl_cancel(lp, op), 1);

        // `rl_sendto` (0.7.0): one datagram back to the client; the callback gets the count.
        let to = sockaddr_in(client.local_addr().unwrap());
        let mut sent: i32 = i32::MIN;
        check(
            rl_sendto(
                lp,
                server.as_raw_fd(),
                b"back".as_ptr().cast(),
                4,
                to.as_ptr().cast(),
                to.len() as u32,
                Some(on_sent),
                &mut sent as *mut i32 as *mut c_void,
                ptr::null_mut(),
            ),
            "rl_sendto",
        );
        while sent == i32::MIN {
            check(rl_run(lp, RL_RUN_ONCE as i32), "rl_run");
        }
        assert_eq!(sent, 4);
        let mut back = [0u8; 8];
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(client.recv(&mut back).unwrap(), 4);
        assert_eq!(&back[..4], b"back");
    }
    let port = client.local_addr().unwrap().port();
    assert_eq!(
        seen,
        [
            (b"uno".to_vec(), port),
            (Vec::new(), port),
            (b"tres".to_vec(), port)
        ]
    );
    println!("callback datagrams: 3 datagrams with their sender, one sent back with rl_sendto");
}

fn backend_is_io_uring(lp: *mut rl_loop) -> bool {
    // SAFETY: a valid loop; the name is a static string.
    unsafe { CStr::from_ptr(rl_loop_backend(lp)) }.to_bytes() == b"io_uring"
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
    let mut wakes = evs
        .iter()
        .filter(|e| e.token == RL_WAKE_TOKEN as u64)
        .count();
    wakes += poll(lp, 0)
        .iter()
        .filter(|e| e.token == RL_WAKE_TOKEN as u64)
        .count();
    assert!(
        (1..=2).contains(&wakes),
        "wakes coalesce and are not lost: {wakes}"
    );
    println!("raw wake: woken from another thread");
}

// ----- callback mode -----

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};

/// What the callbacks below record; `data` points at one of these.
#[derive(Default)]
struct Log {
    entries: Vec<(u64, i32, u64)>,
}

unsafe extern "C" fn record(lp: *mut rl_loop, o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: registered with a `(Log, tag)` pair that outlives the loop run; `o` is valid here.
    unsafe {
        let (log, tag) = &mut *(data as *mut (*mut Log, u64));
        (**log).entries.push((*tag, (*o).result, (*o).value));
        assert!(!lp.is_null());
    }
}

unsafe extern "C" fn reenter(lp: *mut rl_loop, _o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: `data` is an `AtomicUsize` the test owns; nested calls on `lp` are the point.
    unsafe {
        assert_eq!(
            rl_run(lp, RL_RUN_NOWAIT as i32),
            RL_ESTATE,
            "rl_run inside a callback"
        );
        assert_eq!(
            rl_poll(lp, 0, ptr::null_mut(), 0),
            RL_ESTATE,
            "rl_poll inside a callback"
        );
        assert_eq!(
            rl_loop_free(lp),
            RL_ESTATE,
            "rl_loop_free inside a callback"
        );
        // Scheduling from a callback is fine.
        check(rl_call_soon(lp, Some(count), data), "nested rl_call_soon");
        // While this thread is inside the loop, another thread gets RL_ESTATE from loop-thread
        // functions (no data race), and the thread-safe ones work.
        let handle = lp as usize;
        std::thread::spawn(move || {
            let lp = handle as *mut rl_loop;
            assert_eq!(
                rl_call_soon(lp, Some(count), ptr::null_mut()),
                RL_ESTATE,
                "second thread"
            );
            assert_eq!(rl_timer_cancel(lp, 1), RL_ESTATE, "second thread");
            assert_eq!(rl_wake(lp), 0, "rl_wake is thread-safe");
            assert!(
                !rl_loop_backend(lp).is_null(),
                "rl_loop_backend is thread-safe"
            );
        })
        .join()
        .unwrap();
    }
}

unsafe extern "C" fn count(_lp: *mut rl_loop, o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: `data` is an `AtomicUsize` the test owns.
    unsafe {
        assert_eq!((*o).result, 0);
        (*(data as *const AtomicUsize)).fetch_add(1, Ordering::SeqCst);
    }
}

unsafe extern "C" fn square(data: *mut c_void, value: *mut u64) -> i32 {
    // SAFETY: `data` is a `u64` the test owns; `value` is the library's out slot.
    unsafe {
        let n = *(data as *const u64);
        *value = n * n;
    }
    0
}

fn callback_mode(lp: *mut rl_loop) {
    let mut log = Log::default();
    let ms = 1_000_000u64;
    let mut tags: Vec<Box<(*mut Log, u64)>> = (0..10)
        .map(|t| Box::new((&mut log as *mut Log, t)))
        .collect();
    let data =
        |tags: &mut Vec<Box<(*mut Log, u64)>>, t: usize| &mut *tags[t] as *mut _ as *mut c_void;
    let calls = AtomicUsize::new(0);
    // SAFETY (whole block): valid loop; every `data` outlives the runs below.
    unsafe {
        // Timers in deadline order; a cancelled one never fires.
        let mut cancelled = 0u64;
        check(
            rl_call_later(
                lp,
                30 * ms,
                Some(record),
                data(&mut tags, 3),
                ptr::null_mut(),
            ),
            "later 3",
        );
        check(
            rl_call_later(
                lp,
                10 * ms,
                Some(record),
                data(&mut tags, 1),
                ptr::null_mut(),
            ),
            "later 1",
        );
        check(
            rl_call_later(
                lp,
                15 * ms,
                Some(record),
                data(&mut tags, 9),
                &mut cancelled,
            ),
            "later 9",
        );
        check(
            rl_call_at(
                lp,
                rl_now(lp) + 20 * ms,
                Some(record),
                data(&mut tags, 2),
                ptr::null_mut(),
            ),
            "at 2",
        );
        assert_eq!(rl_timer_cancel(lp, cancelled), 1);
        assert_eq!(rl_timer_cancel(lp, cancelled), 0);
        assert_eq!(
            rl_call_soon(lp, None, ptr::null_mut()),
            -libc_errno::EINVAL,
            "NULL callback"
        );
        check(
            rl_call_soon(lp, Some(reenter), &calls as *const _ as *mut c_void),
            "call_soon",
        );
        assert_eq!(
            rl_run(lp, RL_RUN_DEFAULT as i32),
            0,
            "rl_run returns 0 when nothing is left"
        );
        let order: Vec<u64> = log.entries.iter().map(|e| e.0).collect();
        assert_eq!(
            order,
            [1, 2, 3],
            "timers in deadline order, the cancelled one never"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the nested call_soon ran");
        log.entries.clear();

        // A future completed from another thread, and one from the loop's thread pool.
        let mut fut: *mut rl_future = ptr::null_mut();
        check(rl_future_new(lp, &mut fut), "rl_future_new");
        assert_eq!(rl_future_state(fut), RL_FUTURE_PENDING as i32);
        check(
            rl_future_add_done_callback(fut, Some(record), data(&mut tags, 5)),
            "add_done_callback",
        );
        let mut n = 12u64;
        let mut pooled: *mut rl_future = ptr::null_mut();
        check(
            rl_run_in_thread(
                lp,
                Some(square),
                &mut n as *mut u64 as *mut c_void,
                &mut pooled,
            ),
            "run_in_thread",
        );
        check(
            rl_future_add_done_callback(pooled, Some(record), data(&mut tags, 6)),
            "add_done_callback",
        );
        let (handle, loop_handle, counter) = (
            fut as usize,
            lp as usize,
            &calls as *const AtomicUsize as usize,
        );
        let worker = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(10));
            // The completers and rl_call_soon_threadsafe are thread-safe; the future, the loop
            // and the counter outlive this thread (joined before they are released). (This
            // closure is inside the function's `unsafe` block.)
            check(
                rl_call_soon_threadsafe(
                    loop_handle as *mut rl_loop,
                    Some(count),
                    counter as *mut c_void,
                ),
                "threadsafe",
            );
            assert_eq!(rl_future_set_result(handle as *mut rl_future, 4242), 1);
            assert_eq!(
                rl_future_set_result(handle as *mut rl_future, 1),
                0,
                "second completion refused"
            );
        });
        // Pending futures with done callbacks keep the loop running.
        check(rl_run(lp, RL_RUN_DEFAULT as i32), "rl_run");
        worker.join().unwrap();
        let mut done: Vec<(u64, i32, u64)> = log.entries.clone();
        done.sort();
        assert_eq!(
            done,
            [(5, 0, 4242), (6, 0, 144)],
            "done callbacks saw the results"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the threadsafe call ran");
        let mut value = 0u64;
        assert_eq!(rl_future_result(fut, &mut value), 0);
        assert_eq!(value, 4242);
        check(rl_future_release(fut), "release");
        check(rl_future_release(pooled), "release");
        assert_eq!(rl_future_release(fut), RL_EHANDLE, "double release");
        assert_eq!(rl_future_state(fut), RL_EHANDLE, "released handle is stale");
        assert_eq!(
            rl_future_state(lp as *const rl_future),
            RL_EHANDLE,
            "a loop is not a future"
        );
    }
    println!("callback mode: timers in order, re-entrancy refused cleanly, futures completed from threads");
}

// ----- both modes on one loop -----

unsafe extern "C" fn echo_recv(lp: *mut rl_loop, o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: `data` is the `Vec<u8>` the test owns; `bytes` is valid during the callback.
    unsafe {
        let received = &mut *(data as *mut Vec<u8>);
        let o = &*o;
        if o.nbytes > 0 {
            received.extend_from_slice(std::slice::from_raw_parts(o.bytes, o.nbytes));
        }
        assert!(!lp.is_null());
    }
}

/// What `keep_recv` saw: the ids it kept, with the bytes at each, and the outcome of its first
/// callback (to try again once that callback is over).
#[derive(Default)]
struct Keeping {
    kept: Vec<(i32, *const u8, usize)>,
    first: Option<rl_outcome>,
    sent: Vec<i32>,
}

unsafe extern "C" fn keep_recv(lp: *mut rl_loop, o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: `data` is the test's `Keeping`; `o` is valid during the callback.
    unsafe {
        let state = &mut *(data as *mut Keeping);
        let outcome = &*o;
        if outcome.nbytes == 0 {
            assert_eq!(rl_recv_keep(lp, o), -libc_errno::EINVAL, "no bytes to keep");
            return;
        }
        assert_eq!(rl_recv_keep(lp, ptr::null()), -libc_errno::EINVAL);
        assert_eq!(rl_recv_keep(ptr::null_mut(), o), RL_EHANDLE);
        let id = rl_recv_keep(lp, o);
        assert!(id >= 0, "rl_recv_keep: {id}");
        assert_eq!(rl_recv_keep(lp, o), -libc_errno::ENOENT, "kept twice");
        state.kept.push((id, outcome.bytes, outcome.nbytes));
        state.first.get_or_insert(*outcome);
    }
}

unsafe extern "C" fn kept_sent(lp: *mut rl_loop, o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: `data` is the test's `Keeping`; `o` is valid during the callback.
    unsafe {
        let state = &mut *(data as *mut Keeping);
        state.sent.push((*o).result);
        // The send is over: the buffer may go back to the pool.
        let (id, _, _) = state.kept[state.sent.len() - 1];
        check(rl_buffer_release(lp, id as u32), "rl_buffer_release");
    }
}

fn callback_kept_buffers(lp: *mut rl_loop) {
    let (a, mut b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).unwrap();
    let mut state = Keeping::default();
    let data = &mut state as *mut Keeping as *mut c_void;
    let messages: [&[u8]; 3] = [b"first message", b"second, longer message", b"third"];
    // SAFETY (whole block): a valid loop; `state` outlives the runs below; the kept bytes stay
    // valid until their release, which comes in the callback of the send that reads them.
    unsafe {
        let mut op = 0u64;
        check(rl_recv(lp, a.as_raw_fd(), Some(keep_recv), data, &mut op), "rl_recv");
        for (i, message) in messages.iter().enumerate() {
            b.write_all(message).unwrap();
            while state.kept.len() <= i {
                check(rl_run(lp, RL_RUN_ONCE as i32), "rl_run");
            }
        }
        // More receives over several iterations: the kept buffers are never reused or changed.
        for round in 0..5u8 {
            b.write_all(&[round; 100]).unwrap();
            let before = state.kept.len();
            while state.kept.len() == before {
                check(rl_run(lp, RL_RUN_ONCE as i32), "rl_run");
            }
        }
        let ids: Vec<i32> = state.kept.iter().map(|k| k.0).collect();
        let mut unique = ids.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ids.len(), "a kept buffer was handed out again: {ids:?}");
        for (i, message) in messages.iter().enumerate() {
            let (_, bytes, len) = state.kept[i];
            assert_eq!(std::slice::from_raw_parts(bytes, len), *message);
        }
        // An outcome whose callback is over: its buffer is kept already (and a buffer that was
        // not kept is back in the pool), so nothing more can be kept from it.
        let first = state.first.unwrap();
        assert_eq!(rl_recv_keep(lp, &first), -libc_errno::ENOENT);
        // Echo the three messages straight from the loop's buffers; each send's callback
        // releases its buffer.
        for i in 0..messages.len() {
            let (_, bytes, len) = state.kept[i];
            check(
                rl_send(lp, a.as_raw_fd(), bytes.cast(), len, Some(kept_sent), data, ptr::null_mut()),
                "rl_send",
            );
        }
        while state.sent.len() < messages.len() {
            check(rl_run(lp, RL_RUN_ONCE as i32), "rl_run");
        }
        let lengths: Vec<i32> = messages.iter().map(|m| m.len() as i32).collect();
        assert_eq!(state.sent, lengths);
        let mut echoed = vec![0u8; lengths.iter().sum::<i32>() as usize];
        b.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, messages.concat());
        for &(id, _, _) in &state.kept[..messages.len()] {
            assert_eq!(rl_buffer_release(lp, id as u32), -libc_errno::ENOENT, "released twice");
        }
        // The round buffers stay kept: the loop frees them with itself.
        check(rl_cancel(lp, op), "rl_cancel");
        check(rl_run(lp, RL_RUN_NOWAIT as i32), "rl_run");
    }
    drop((a, b));
    println!("callback kept buffers: 8 kept over many iterations, 3 echoed from the pool and released");
}

fn mixed_modes(lp: *mut rl_loop) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut received: Vec<u8> = Vec::new();
    // SAFETY: valid loop; `payload` and `received` outlive the polls below.
    unsafe {
        // Callback-mode receive, raw-mode send: rl_poll runs the callbacks and returns only the
        // raw event.
        check(
            rl_recv(
                lp,
                a.as_raw_fd(),
                Some(echo_recv),
                &mut received as *mut Vec<u8> as *mut c_void,
                ptr::null_mut(),
            ),
            "rl_recv",
        );
        check(
            rl_op_send(
                lp,
                b.as_raw_fd(),
                payload.as_ptr().cast(),
                payload.len(),
                77,
                ptr::null_mut(),
            ),
            "rl_op_send",
        );
        let mut sent = None;
        while sent.is_none() || received.len() < payload.len() {
            for ev in poll(lp, 100_000_000) {
                assert_eq!(ev.token, 77, "only raw events come out of rl_poll");
                sent = Some(ev.result);
            }
        }
        assert_eq!(sent, Some(payload.len() as i32));
        assert!(received == payload, "callback-mode receive got every byte");
    }
    drop((a, b));
    println!("mixed modes: rl_poll dispatched callback-mode work and returned only raw events");
}

// ----- connect and accept, both modes -----

mod sock {
    extern "C" {
        pub fn socket(domain: i32, ty: i32, protocol: i32) -> i32;
        pub fn close(fd: i32) -> i32;
    }
    pub const AF_INET: i32 = 2;
    pub const SOCK_STREAM: i32 = 1;
    pub const SOCK_NONBLOCK: i32 = 0o4000;
    pub const SOCK_CLOEXEC: i32 = 0o2000000;
    pub const ECONNREFUSED: i32 = 111;

    /// A `struct sockaddr_in` for 127.0.0.1:port.
    pub fn loopback(port: u16) -> [u8; 16] {
        let mut addr = [0u8; 16];
        addr[..2].copy_from_slice(&(AF_INET as u16).to_ne_bytes());
        addr[2..4].copy_from_slice(&port.to_be_bytes());
        addr[4..8].copy_from_slice(&[127, 0, 0, 1]);
        addr
    }

    pub fn nonblocking_tcp() -> i32 {
        // SAFETY: plain socket(2).
        let fd = unsafe { socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "socket failed");
        fd
    }
}

unsafe extern "C" fn store_result(_lp: *mut rl_loop, o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: `data` is an `Option<i32>` the test owns.
    unsafe { *(data as *mut Option<i32>) = Some((*o).result) };
}

fn connect_and_accept(lp: *mut rl_loop) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr = sock::loopback(port);
    // SAFETY (whole block): valid loop; out slots and `addr` outlive the polls.
    unsafe {
        // Raw mode: accept and connect with tokens.
        check(
            rl_op_accept(lp, listener.as_raw_fd(), 30, ptr::null_mut()),
            "rl_op_accept",
        );
        let client = sock::nonblocking_tcp();
        check(
            rl_op_connect(lp, client, addr.as_ptr().cast(), 16, 31, ptr::null_mut()),
            "rl_op_connect",
        );
        assert_eq!(
            rl_op_connect(lp, client, ptr::null(), 16, 32, ptr::null_mut()),
            -libc_errno::EINVAL,
            "NULL address"
        );
        let (mut accepted, mut connected) = (None, None);
        while accepted.is_none() || connected.is_none() {
            for ev in poll(lp, -1) {
                match ev.token {
                    30 => {
                        assert_ne!(ev.flags & RL_EV_MORE, 0, "accept is multishot");
                        accepted = Some(ev.result);
                    }
                    31 => connected = Some(ev.result),
                    other => panic!("unexpected token {other}"),
                }
            }
        }
        assert_eq!(connected, Some(0));
        let server_side = accepted.unwrap();
        assert!(server_side >= 0);
        assert_eq!(rl_op_cancel_token(lp, 30), 1, "the accept was live");

        // Callback mode: connect refused, then accepted.
        let mut refused: Option<i32> = None;
        let closed_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let bad = sock::loopback(closed_port);
        let c2 = sock::nonblocking_tcp();
        check(
            rl_connect(
                lp,
                c2,
                bad.as_ptr().cast(),
                16,
                Some(store_result),
                &mut refused as *mut _ as *mut c_void,
                ptr::null_mut(),
            ),
            "rl_connect",
        );
        let mut new_fd: Option<i32> = None;
        let mut accept_op = 0u64;
        check(
            rl_accept(
                lp,
                listener.as_raw_fd(),
                Some(store_result),
                &mut new_fd as *mut _ as *mut c_void,
                &mut accept_op,
            ),
            "rl_accept",
        );
        let c3 = sock::nonblocking_tcp();
        let mut ok: Option<i32> = None;
        check(
            rl_connect(
                lp,
                c3,
                addr.as_ptr().cast(),
                16,
                Some(store_result),
                &mut ok as *mut _ as *mut c_void,
                ptr::null_mut(),
            ),
            "rl_connect",
        );
        while refused.is_none() || ok.is_none() || new_fd.is_none() {
            check(rl_run(lp, RL_RUN_ONCE as i32), "rl_run once");
        }
        assert_eq!(refused, Some(-sock::ECONNREFUSED));
        assert_eq!(ok, Some(0));
        assert!(new_fd.unwrap() >= 0);
        assert_eq!(rl_cancel(lp, accept_op), 1);
        assert_eq!(rl_cancel(lp, accept_op), 0, "stale op");

        // Close through the loop, in callback mode.
        let mut closed: Option<i32> = None;
        check(
            rl_close(
                lp,
                c3,
                Some(store_result),
                &mut closed as *mut _ as *mut c_void,
                ptr::null_mut(),
            ),
            "rl_close",
        );
        while closed.is_none() {
            check(rl_run(lp, RL_RUN_ONCE as i32), "rl_run once");
        }
        assert_eq!(closed, Some(0));
        assert_eq!(
            rl_close(lp, -1, Some(store_result), ptr::null_mut(), ptr::null_mut()),
            -9,
            "EBADF"
        );
        for fd in [client, server_side, c2, new_fd.unwrap()] {
            sock::close(fd);
        }
    }
    println!("connect/accept: both modes, refused connect reported, stale op ids harmless");
}

// ----- freeing a loop with work still registered -----

unsafe extern "C" fn collect_result(_lp: *mut rl_loop, o: *const rl_outcome, data: *mut c_void) {
    // SAFETY: `data` is a `Vec<i32>` the test owns.
    unsafe { (*(data as *mut Vec<i32>)).push((*o).result) };
}

fn free_cancels_registered_callbacks() {
    let (a, _b) = UnixStream::pair().expect("socketpair");
    a.set_nonblocking(true).unwrap();
    let mut results: Vec<i32> = Vec::new();
    let data = &mut results as *mut Vec<i32> as *mut c_void;
    let mut lp: *mut rl_loop = ptr::null_mut();
    // SAFETY: a fresh loop; `results` outlives it.
    unsafe {
        check(rl_loop_new(ptr::null(), &mut lp), "rl_loop_new");
        check(
            rl_call_later(
                lp,
                60_000_000_000,
                Some(collect_result),
                data,
                ptr::null_mut(),
            ),
            "later",
        );
        check(rl_call_soon(lp, Some(collect_result), data), "soon");
        check(
            rl_add_reader(lp, a.as_raw_fd(), Some(collect_result), data),
            "reader",
        );
        check(
            rl_recv(
                lp,
                a.as_raw_fd(),
                Some(collect_result),
                data,
                ptr::null_mut(),
            ),
            "recv",
        );
        check(rl_loop_free(lp), "rl_loop_free");
    }
    // Every callback still registered was told -ECANCELED exactly once, so C can free its data.
    assert_eq!(results, [-libc_errno::ECANCELED; 4], "{results:?}");
    println!("rl_loop_free: every registered callback got -ECANCELED once");
}

fn main() {
    library_basics();
    let mut lp: *mut rl_loop = ptr::null_mut();
    // SAFETY: `lp` is a valid out pointer.
    check(unsafe { rl_loop_new(ptr::null(), &mut lp) }, "rl_loop_new");
    // SAFETY: valid loop; the backend name is a static string.
    let backend = unsafe { CStr::from_ptr(rl_loop_backend(lp)) }
        .to_str()
        .unwrap()
        .to_owned();
    println!("backend {backend}");
    // SAFETY: a valid loop, and a null handle (an error, not a crash).
    unsafe {
        check(rl_set_accept_retry(lp, 50_000_000), "rl_set_accept_retry");
        assert_eq!(rl_set_accept_retry(ptr::null_mut(), 0), RL_EHANDLE);
    }
    raw_timers(lp);
    raw_echo(lp);
    raw_kept_buffer(lp);
    raw_recv_once(lp);
    raw_pipe(lp);
    raw_datagrams(lp);
    raw_wake(lp);
    callback_mode(lp);
    callback_kept_buffers(lp);
    callback_datagrams(lp);
    mixed_modes(lp);
    connect_and_accept(lp);
    free_cancels_registered_callbacks();
    // SAFETY: valid loop, freed once; the second free must be detected.
    unsafe {
        check(rl_loop_free(lp), "rl_loop_free");
        assert_eq!(rl_loop_free(lp), RL_EHANDLE, "double free is an error");
        assert_eq!(
            rl_poll(lp, 0, ptr::null_mut(), 0),
            RL_EHANDLE,
            "freed handle is stale"
        );
    }
    println!("scenario: all checks passed");
    std::io::stdout().flush().unwrap();
}
