//! Timers: a 4-ary min-heap of 16-byte entries with lazy cancellation.
//!
//! Adding is O(log n) (usually O(1): new timers tend to be the latest), expiring is O(log n), and
//! cancelling is O(1): it only marks the timer's slot, and the heap entry, now a tombstone, is
//! dropped when it reaches the top or when tombstones outnumber live timers (then the heap is
//! rebuilt in O(n), so cancel stays amortised O(1) and memory stays bounded). Sifting touches
//! nothing but the heap array — no per-level back-pointer updates into a second array — which is
//! what makes a million expirations cheap. Slots and the heap reuse their storage, so a steady
//! state allocates nothing.
//!
//! A [`TimerId`] is `generation << 32 | slot`. A slot stays allocated while its heap entry exists
//! (live or tombstone), so a heap entry always names its own timer; firing or cancelling bumps the
//! slot's generation, so an old id is harmlessly not found. Generations are 31 bits, so bit 63 of
//! an id is always clear: the C ABI uses it to tell its callback timers from raw ones.
//!
//! Equal deadlines fire in insertion order: entries carry a 32-bit sequence number compared with
//! wrap-around arithmetic, which is exact for timers with equal deadlines added fewer than 2^31
//! additions apart.

use crate::TimerId;

/// Generations run 1..=2^31-1 and never reach bit 31 (bit 63 of the id); 0 is never issued.
fn next_generation(generation: u32) -> u32 {
    (generation.wrapping_add(1) & 0x7fff_ffff).max(1)
}

const ARITY: usize = 4;
/// Heaps smaller than this are never rebuilt just to drop tombstones.
const MIN_REBUILD: usize = 1024;

#[derive(Clone, Copy)]
struct Entry {
    deadline: u64,
    seq: u32,
    slot: u32,
}

impl Entry {
    #[inline]
    fn before(&self, other: &Entry) -> bool {
        self.deadline < other.deadline
            || (self.deadline == other.deadline && (self.seq.wrapping_sub(other.seq) as i32) < 0)
    }
}

struct Slot {
    generation: u32,
    /// Queued and not cancelled.
    live: bool,
    token: u64,
}

#[derive(Default)]
pub(crate) struct Timers {
    heap: Vec<Entry>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    next_seq: u32,
    live: usize,
}

impl Timers {
    /// Live (queued, not cancelled) timers.
    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn add(&mut self, deadline: u64, token: u64) -> TimerId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len()).expect("more than 2^32 timers");
                self.slots.push(Slot {
                    generation: 1,
                    live: false,
                    token: 0,
                });
                slot
            }
        };
        let timer = &mut self.slots[slot as usize];
        timer.live = true;
        timer.token = token;
        let id = TimerId((u64::from(timer.generation) << 32) | u64::from(slot));
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.live += 1;
        self.heap.push(Entry {
            deadline,
            seq,
            slot,
        });
        self.sift_up(self.heap.len() - 1);
        id
    }

    /// Cancels a queued timer; `false` for a fired, cancelled or forged id.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let slot = (id.0 & 0xffff_ffff) as usize;
        let generation = (id.0 >> 32) as u32;
        match self.slots.get_mut(slot) {
            Some(timer) if timer.generation == generation && timer.live => {
                timer.live = false;
                timer.generation = next_generation(timer.generation);
                self.live -= 1;
                let tombstones = self.heap.len() - self.live;
                if self.heap.len() >= MIN_REBUILD && tombstones > self.live {
                    self.rebuild();
                }
                true
            }
            _ => false,
        }
    }

    /// The earliest live deadline (drops tombstones that reached the top).
    pub(crate) fn next_deadline(&mut self) -> Option<u64> {
        loop {
            let top = *self.heap.first()?;
            if self.slots[top.slot as usize].live {
                return Some(top.deadline);
            }
            self.pop_top();
            self.free.push(top.slot);
        }
    }

    /// Removes and returns the token of the earliest live timer if its deadline is `<= now`.
    pub(crate) fn pop_expired(&mut self, now: u64) -> Option<u64> {
        loop {
            let top = *self.heap.first()?;
            if top.deadline > now {
                // A tombstone with a later deadline may stay: it is dropped when it surfaces.
                return None;
            }
            self.pop_top();
            let timer = &mut self.slots[top.slot as usize];
            let fired = timer.live.then_some(timer.token);
            if timer.live {
                timer.live = false;
                timer.generation = next_generation(timer.generation);
                self.live -= 1;
            }
            self.free.push(top.slot);
            if fired.is_some() {
                return fired;
            }
        }
    }

    /// Removes the root: the last entry takes its place and sinks (the hole walks down first,
    /// following the smallest child, then the entry rises from there: fewer comparisons than
    /// testing it at every level, since it usually belongs near the bottom).
    fn pop_top(&mut self) {
        let last = self.heap.pop().expect("pop_top on an empty heap");
        let len = self.heap.len();
        if len == 0 {
            return;
        }
        let mut hole = 0;
        loop {
            let first = hole * ARITY + 1;
            if first >= len {
                break;
            }
            let end = (first + ARITY).min(len);
            let mut best = first;
            for child in first + 1..end {
                if self.heap[child].before(&self.heap[best]) {
                    best = child;
                }
            }
            self.heap[hole] = self.heap[best];
            hole = best;
        }
        self.heap[hole] = last;
        self.sift_up(hole);
    }

    fn sift_up(&mut self, mut pos: usize) {
        let entry = self.heap[pos];
        while pos > 0 {
            let parent = (pos - 1) / ARITY;
            if !entry.before(&self.heap[parent]) {
                break;
            }
            self.heap[pos] = self.heap[parent];
            pos = parent;
        }
        self.heap[pos] = entry;
    }

    /// Drops every tombstone and restores the heap order bottom-up, in O(n).
    fn rebuild(&mut self) {
        let slots = &self.slots;
        let free = &mut self.free;
        self.heap.retain(|entry| {
            let live = slots[entry.slot as usize].live;
            if !live {
                free.push(entry.slot);
            }
            live
        });
        let len = self.heap.len();
        if len < 2 {
            return;
        }
        for start in (0..=(len - 2) / ARITY).rev() {
            self.sift_down(start);
        }
    }

    fn sift_down(&mut self, mut pos: usize) {
        let entry = self.heap[pos];
        let len = self.heap.len();
        loop {
            let first = pos * ARITY + 1;
            if first >= len {
                break;
            }
            let end = (first + ARITY).min(len);
            let mut best = first;
            for child in first + 1..end {
                if self.heap[child].before(&self.heap[best]) {
                    best = child;
                }
            }
            if !self.heap[best].before(&entry) {
                break;
            }
            self.heap[pos] = self.heap[best];
            pos = best;
        }
        self.heap[pos] = entry;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn generations_wrap_below_bit_31_and_skip_zero() {
        assert_eq!(super::next_generation(1), 2);
        assert_eq!(super::next_generation(0x7fff_fffe), 0x7fff_ffff);
        assert_eq!(super::next_generation(0x7fff_ffff), 1);
    }

    use super::*;

    fn drain(timers: &mut Timers) -> Vec<u64> {
        let mut fired = Vec::new();
        while let Some(token) = timers.pop_expired(u64::MAX) {
            fired.push(token);
        }
        fired
    }

    #[test]
    fn fire_in_order_and_cancel_anywhere() {
        let mut timers = Timers::default();
        let mut ids = Vec::new();
        // A scrambled but deterministic set of deadlines, with duplicates; enough cancels to
        // trigger rebuilds.
        for i in 0..5000u64 {
            let deadline = (i * 7919) % 500;
            ids.push((deadline, i, timers.add(deadline, i)));
        }
        let mut cancelled = std::collections::HashSet::new();
        for (n, (_, token, id)) in ids.iter().enumerate() {
            if n % 3 != 1 {
                assert!(timers.cancel(*id));
                assert!(!timers.cancel(*id), "cancel twice is harmless");
                cancelled.insert(*token);
            }
        }
        assert_eq!(timers.len(), 5000 - cancelled.len());
        let fired = drain(&mut timers);
        let mut expected: Vec<_> = ids
            .iter()
            .filter(|(_, t, _)| !cancelled.contains(t))
            .map(|&(d, t, _)| (d, t))
            .collect();
        // Insertion order breaks ties, and tokens were assigned in insertion order.
        expected.sort();
        assert_eq!(
            fired,
            expected.into_iter().map(|(_, t)| t).collect::<Vec<_>>()
        );
        for (_, _, id) in ids {
            assert!(!timers.cancel(id), "fired or cancelled ids are stale");
        }
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn pop_respects_now_and_skips_tombstones() {
        let mut timers = Timers::default();
        let early = timers.add(5, 0);
        timers.add(10, 1);
        timers.add(20, 2);
        assert!(timers.cancel(early));
        assert_eq!(timers.next_deadline(), Some(10));
        assert_eq!(timers.pop_expired(5), None);
        assert_eq!(timers.pop_expired(15), Some(1));
        assert_eq!(timers.next_deadline(), Some(20));
        assert_eq!(timers.pop_expired(15), None);
        assert_eq!(timers.pop_expired(20), Some(2));
        assert_eq!(timers.len(), 0);
        assert_eq!(timers.next_deadline(), None);
    }

    #[test]
    fn slots_are_reused_without_confusing_ids() {
        let mut timers = Timers::default();
        let a = timers.add(1, 1);
        assert_eq!(timers.pop_expired(1), Some(1));
        let b = timers.add(2, 2);
        assert_ne!(a, b);
        assert!(!timers.cancel(a));
        assert!(timers.cancel(b));
        assert_eq!(drain(&mut timers), Vec::<u64>::new());
    }

    #[test]
    fn equal_deadlines_keep_insertion_order_across_sequence_wrap() {
        let mut timers = Timers {
            next_seq: u32::MAX - 2,
            ..Timers::default()
        };
        for token in 0..6 {
            timers.add(7, token);
        }
        assert_eq!(drain(&mut timers), vec![0, 1, 2, 3, 4, 5]);
    }
}
