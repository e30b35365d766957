//! ping_pongs (after libuv's benchmark of that name): one TCP connection over loopback with both
//! ends on one reactor; the client sends a 4-byte PING, the server end echoes it, and the next PING
//! goes out once the whole echo is back. One criterion iteration = one round trip. Compare with
//! `benches/out/bin/uv_ping_pongs`.

mod common;

use std::os::fd::AsRawFd;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringloop::{flags, Reactor};

const PING: &[u8; 4] = b"PING";
const CLIENT_RECV: u64 = 1;
const SERVER_RECV: u64 = 2;
const CLIENT_SEND: u64 = 3;
const SERVER_SEND: u64 = 4;

/// Runs one round trip; panics on anything but a clean echo (a benchmark of a broken echo is
/// worthless).
fn round_trip(reactor: &mut Reactor, client: i32, server: i32, events: &mut [ringloop::Event]) {
    // SAFETY: PING is a 'static constant, valid for as long as the kernel may read it.
    unsafe { reactor.send(client, PING.as_ptr(), PING.len(), CLIENT_SEND) }.expect("client send");
    let mut echoed = 0;
    while echoed < PING.len() {
        let n = reactor
            .poll(Some(Duration::from_secs(5)), events)
            .expect("poll");
        assert!(n > 0, "no event within 5 s");
        for event in &events[..n] {
            match event.token {
                SERVER_RECV => {
                    assert!(event.result > 0, "server side recv ended: {}", event.result);
                    assert!(
                        event.flags & flags::MORE != 0,
                        "server side recv was not re-armed"
                    );
                    let data = reactor
                        .event_data(event)
                        .expect("recv events carry a buffer");
                    assert!(
                        PING.windows(data.len()).any(|piece| piece == data),
                        "server received {data:?}"
                    );
                    // The echo goes out from the constant (the received buffer is recycled by the
                    // next poll, before a send may have finished with it).
                    // SAFETY: as above, a 'static buffer of at least data.len() bytes.
                    unsafe { reactor.send(server, PING.as_ptr(), data.len(), SERVER_SEND) }
                        .expect("server send");
                }
                CLIENT_RECV => {
                    assert!(event.result > 0, "client recv ended: {}", event.result);
                    echoed += event.result as usize;
                }
                CLIENT_SEND | SERVER_SEND => {
                    assert!(event.result > 0, "send failed: {}", event.result)
                }
                other => panic!("unexpected event token {other}"),
            }
        }
    }
    assert_eq!(echoed, PING.len(), "echo longer than the ping");
}

fn ping_pongs(c: &mut Criterion) {
    let mut group = c.benchmark_group("ping_pongs");
    group.throughput(Throughput::Elements(1));
    for (name, backend) in common::BACKENDS {
        let Some(mut reactor) = common::reactor(name, backend) else {
            continue;
        };
        let (client, server) = common::tcp_pair().expect("loopback pair");
        reactor
            .recv_multi(client.as_raw_fd(), CLIENT_RECV)
            .expect("client recv");
        reactor
            .recv_multi(server.as_raw_fd(), SERVER_RECV)
            .expect("server recv");
        let mut events = common::events(64);
        group.bench_function(name, |b| {
            b.iter(|| {
                round_trip(
                    &mut reactor,
                    client.as_raw_fd(),
                    server.as_raw_fd(),
                    &mut events,
                )
            })
        });
        // Cancel before the fds close so no op refers to a closed descriptor.
        reactor.cancel_token(CLIENT_RECV);
        reactor.cancel_token(SERVER_RECV);
        drop(reactor);
    }
    group.finish();
}

criterion_group!(benches, ping_pongs);
criterion_main!(benches);
