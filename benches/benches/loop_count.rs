//! loop_count (after libuv's benchmark of that name): the cost of one empty loop iteration, a
//! non-blocking `poll` with nothing pending. Compare with `benches/out/bin/uv_loop_count` (libuv
//! spinning with an idle handle).

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn loop_count(c: &mut Criterion) {
    let mut group = c.benchmark_group("loop_count");
    group.throughput(Throughput::Elements(1));
    for (name, backend) in common::BACKENDS {
        let Some(mut reactor) = common::reactor(name, backend) else {
            continue;
        };
        let mut events = common::events(64);
        group.bench_function(name, |b| {
            b.iter(|| {
                let n = reactor
                    .poll(Some(Duration::ZERO), &mut events)
                    .expect("poll");
                assert_eq!(n, 0, "an idle reactor produced an event");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, loop_count);
criterion_main!(benches);
