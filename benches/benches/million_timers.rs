//! million_timers (after libuv's benchmark of that name): 1M one-shot timers are scheduled, then
//! the reactor is polled until every one has fired. Deadlines are spread over 1 ms in a scrambled
//! order (so the timer structure really sorts) and are all due by the time the first poll runs:
//! the measurement is schedule + fire, not waiting. Compare with the "all due" line of
//! `benches/out/bin/uv_million_timers`.

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ringloop::Reactor;

fn schedule_and_fire(reactor: &mut Reactor, count: u64, events: &mut [ringloop::Event]) {
    let base = Reactor::now_ns();
    for i in 0..count {
        // A permutation of 0..1000 µs offsets (7919 is prime, coprime with 1000).
        let offset_ns = (i * 7919 % 1000) * 1000;
        reactor.add_timer(base + offset_ns, i);
    }
    let mut fired = 0u64;
    let mut last_token_sum = 0u64;
    while fired < count {
        let n = reactor
            .poll(Some(Duration::from_secs(5)), events)
            .expect("poll");
        assert!(n > 0, "timers stopped firing after {fired} of {count}");
        for event in &events[..n] {
            assert_eq!(event.result, 0, "timer events have result 0");
            last_token_sum = last_token_sum.wrapping_add(event.token);
        }
        fired += n as u64;
    }
    assert_eq!(fired, count);
    assert_eq!(
        last_token_sum,
        count * (count - 1) / 2,
        "every timer fired exactly once"
    );
}

fn million_timers(c: &mut Criterion) {
    let count: u64 = if common::measuring() {
        1_000_000
    } else {
        10_000
    };
    let mut group = c.benchmark_group("million_timers");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(count));
    for (name, backend) in common::BACKENDS {
        let Some(mut reactor) = common::reactor(name, backend) else {
            continue;
        };
        let mut events = common::events(4096);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    schedule_and_fire(&mut reactor, count, &mut events);
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, million_timers);
criterion_main!(benches);
