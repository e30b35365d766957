//! A minimal echo round trip on every backend available here: the first thing to break if the
//! core breaks. The full suite is `reactor_suite.rs`.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use ringloop::{flags, BackendChoice, Event, Options, Reactor};

fn echo_once(choice: BackendChoice) {
    let opts = Options {
        backend: choice,
        ..Options::default()
    };
    let mut reactor = match Reactor::new(&opts) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {
            eprintln!("skipping {choice:?}: {e}");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    reactor.accept_multi(listener.as_raw_fd(), 1).unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let mut events = [Event::default(); 16];
    let mut server_fd = -1;
    let mut echoed = Vec::new();
    let mut outgoing: Vec<Vec<u8>> = Vec::new();
    client.write_all(b"hello ringloop").unwrap();
    while echoed.len() < 14 {
        let n = reactor
            .poll(Some(Duration::from_secs(5)), &mut events)
            .unwrap();
        assert!(n > 0, "timed out");
        for ev in &events[..n] {
            match ev.token {
                1 => {
                    assert!(ev.result >= 0, "accept failed: {}", ev.result);
                    assert_eq!(ev.flags & flags::MORE, flags::MORE);
                    server_fd = ev.result;
                    reactor.recv_multi(server_fd, 2).unwrap();
                }
                2 => {
                    assert!(ev.result > 0, "recv ended: {}", ev.result);
                    let data = reactor.event_data(ev).unwrap().to_vec();
                    outgoing.push(data);
                    let last = outgoing.last().unwrap();
                    // SAFETY: `outgoing` keeps the bytes alive (never shrunk in this test).
                    unsafe {
                        reactor
                            .send(server_fd, last.as_ptr(), last.len(), 3)
                            .unwrap()
                    };
                }
                3 => {
                    assert!(ev.result > 0);
                    let mut buf = vec![0u8; ev.result as usize];
                    client.read_exact(&mut buf).unwrap();
                    echoed.extend_from_slice(&buf);
                }
                other => panic!("unexpected token {other}"),
            }
        }
    }
    assert_eq!(echoed, b"hello ringloop");
    // SAFETY: the accepted fd belongs to the test now.
    let fd = unsafe { std::os::fd::FromRawFd::from_raw_fd(server_fd) };
    reactor.close(fd, 4).unwrap();
    loop {
        let n = reactor
            .poll(Some(Duration::from_secs(5)), &mut events)
            .unwrap();
        assert!(n > 0, "timed out");
        if let Some(ev) = events[..n].iter().find(|e| e.token == 4) {
            assert_eq!(ev.result, 0);
            break;
        }
    }
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn echo_once_io_uring() {
    echo_once(BackendChoice::IoUring);
}

#[test]
fn echo_once_epoll() {
    echo_once(BackendChoice::Epoll);
}
