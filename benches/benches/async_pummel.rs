//! async_pummel (after libuv's benchmark of that name): another thread calls `Waker::wake` as fast
//! as it can while the reactor polls and counts wake events (wakes coalesce, so events <= calls).
//! One criterion iteration = one wake event delivered. Compare with
//! `benches/out/bin/uv_async_pummel`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const WAKE_TOKEN: u64 = u64::MAX;

fn async_pummel(c: &mut Criterion) {
    let mut group = c.benchmark_group("async_pummel");
    group.throughput(Throughput::Elements(1));
    for (name, backend) in common::BACKENDS {
        let Some(mut reactor) = common::reactor(name, backend) else {
            continue;
        };
        let mut events = common::events(64);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let stop = Arc::new(AtomicBool::new(false));
                let waker = reactor.waker();
                let pummel = {
                    let stop = Arc::clone(&stop);
                    thread::spawn(move || {
                        let mut calls = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            waker.wake();
                            calls += 1;
                        }
                        calls
                    })
                };
                let start = Instant::now();
                let mut delivered = 0;
                while delivered < iters {
                    let polled_at = Instant::now();
                    let n = reactor
                        .poll(Some(Duration::from_secs(5)), &mut events)
                        .expect("poll");
                    // A wake is never lost: with another thread waking non-stop, a poll that
                    // comes back empty must not have waited out its timeout.
                    assert!(
                        n > 0 || polled_at.elapsed() < Duration::from_secs(5),
                        "no wake event within 5 s while another thread kept calling wake() \
                         ({delivered} delivered before)"
                    );
                    for event in &events[..n] {
                        assert_eq!(event.token, WAKE_TOKEN, "only wake events are expected");
                    }
                    delivered += n as u64;
                }
                let elapsed = start.elapsed();
                stop.store(true, Ordering::Relaxed);
                let calls = pummel.join().expect("pummel thread");
                assert!(
                    calls >= delivered,
                    "more wake events ({delivered}) than wake calls ({calls})"
                );
                // Drain the wake the last calls may have left pending, so the next sample starts clean.
                reactor
                    .poll(Some(Duration::ZERO), &mut events)
                    .expect("poll");
                elapsed
            })
        });
    }
    group.finish();
}

criterion_group!(benches, async_pummel);
criterion_main!(benches);
