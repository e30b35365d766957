//! A timer storm: one million timers with deadlines spread over 300 ms (some already past), a
//! third of them cancelled at random — before any fires, while they fire, and again after
//! (harmless). The fired set must be exactly the scheduled minus the cancelled, each once, in
//! deadline order (ties in scheduling order).

mod support;

use ringloop::{BackendChoice, Event, Options, Reactor, TimerId};
use support::*;

const TIMERS: usize = 1_000_000;
const SPREAD_NS: u64 = 300_000_000;

fn million_timers(choice: BackendChoice) {
    let Some(mut reactor) = make(choice, Options::default()) else {
        return;
    };
    let mut rng = Rng::new(77);
    let start = Reactor::now_ns();
    let mut deadlines = Vec::with_capacity(TIMERS);
    let mut ids: Vec<TimerId> = Vec::with_capacity(TIMERS);
    for token in 0..TIMERS {
        // A few deadlines in the past and many exact ties.
        let deadline = (start - 1_000_000) + rng.below(SPREAD_NS / 1000) * 1000;
        deadlines.push(deadline);
        ids.push(reactor.add_timer(deadline, token as u64));
    }
    let mut cancelled = vec![false; TIMERS];
    let mut fired = vec![false; TIMERS];
    for _ in 0..TIMERS / 4 {
        let i = rng.below(TIMERS as u64) as usize;
        let was_pending = !cancelled[i];
        assert_eq!(reactor.cancel_timer(ids[i]), was_pending);
        cancelled[i] = true;
    }
    let mut remaining = cancelled.iter().filter(|&&c| !c).count();
    let mut last: Option<(u64, usize)> = None;
    let mut fired_count = 0usize;
    let mut events = vec![Event::default(); 4096];
    let mut batches = 0u64;
    poll_until(&mut reactor, &mut events, |r, batch| {
        batches += 1;
        for ev in batch {
            let i = ev.token as usize;
            assert!(i < TIMERS && ev.result == 0, "unexpected {ev:?}");
            assert!(!cancelled[i], "cancelled timer {i} fired");
            assert!(!fired[i], "timer {i} fired twice");
            fired[i] = true;
            fired_count += 1;
            remaining -= 1;
            let key = (deadlines[i], i);
            if let Some(prev) = last {
                assert!(prev < key, "out of order: {prev:?} then {key:?}");
            }
            last = Some(key);
        }
        // While they fire, cancel more at random (pending ones only count).
        if batches.is_multiple_of(8) {
            for _ in 0..2000 {
                let i = rng.below(TIMERS as u64) as usize;
                let pending = !cancelled[i] && !fired[i];
                assert_eq!(r.cancel_timer(ids[i]), pending, "cancel of timer {i}");
                if pending {
                    cancelled[i] = true;
                    remaining -= 1;
                }
            }
        }
        remaining == 0 && r.pending() == 0
    });
    let expected: Vec<usize> = (0..TIMERS).filter(|&i| !cancelled[i]).collect();
    let got: Vec<usize> = (0..TIMERS).filter(|&i| fired[i]).collect();
    assert_eq!(got, expected, "fired set != scheduled minus cancelled");
    // Cancelling fired or cancelled timers again is harmless.
    for &id in ids.iter().step_by(997) {
        assert!(!reactor.cancel_timer(id));
    }
    eprintln!(
        "{choice:?}: {} fired, {} cancelled",
        got.len(),
        TIMERS - got.len()
    );
}

per_backend!(million_timers);
