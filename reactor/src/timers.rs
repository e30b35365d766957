//! Timers: a 4-ary min-heap of deadlines with index tracking, so add, cancel and expire are all
//! O(log n) and cancel needs no tombstones. Slots are reused, so a steady state allocates nothing.
//!
//! A [`TimerId`] is `generation << 32 | slot`; a fired or cancelled timer's slot gets a new
//! generation, so its old id is harmlessly not found. Equal deadlines fire in insertion order.

use crate::TimerId;

const ARITY: usize = 4;
const NOT_QUEUED: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct HeapEntry {
    deadline: u64,
    /// Insertion order, the tie-breaker for equal deadlines.
    seq: u64,
    slot: u32,
}

impl HeapEntry {
    fn before(&self, other: &HeapEntry) -> bool {
        (self.deadline, self.seq) < (other.deadline, other.seq)
    }
}

struct TimerSlot {
    generation: u32,
    /// Position in the heap, or `NOT_QUEUED` when the slot is free.
    heap_pos: u32,
    token: u64,
}

#[derive(Default)]
pub(crate) struct Timers {
    heap: Vec<HeapEntry>,
    slots: Vec<TimerSlot>,
    free: Vec<u32>,
    next_seq: u64,
}

impl Timers {
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    pub(crate) fn add(&mut self, deadline: u64, token: u64) -> TimerId {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(self.slots.len()).expect("more than 2^32 timers");
                self.slots.push(TimerSlot {
                    generation: 1,
                    heap_pos: NOT_QUEUED,
                    token: 0,
                });
                slot
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let pos = self.heap.len();
        self.heap.push(HeapEntry {
            deadline,
            seq,
            slot,
        });
        let timer = &mut self.slots[slot as usize];
        timer.token = token;
        timer.heap_pos = pos as u32;
        let id = (u64::from(timer.generation) << 32) | u64::from(slot);
        self.sift_up(pos);
        TimerId(id)
    }

    /// Removes a queued timer; `false` for a fired, cancelled or forged id.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        let slot = (id.0 & 0xffff_ffff) as usize;
        let generation = (id.0 >> 32) as u32;
        match self.slots.get(slot) {
            Some(timer) if timer.generation == generation && timer.heap_pos != NOT_QUEUED => {
                let pos = timer.heap_pos as usize;
                self.remove_at(pos);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<u64> {
        self.heap.first().map(|e| e.deadline)
    }

    /// Removes and returns the token of the earliest timer if its deadline is `<= now`.
    pub(crate) fn pop_expired(&mut self, now: u64) -> Option<u64> {
        let first = *self.heap.first()?;
        if first.deadline > now {
            return None;
        }
        let token = self.slots[first.slot as usize].token;
        self.remove_at(0);
        Some(token)
    }

    fn remove_at(&mut self, pos: usize) {
        let removed = self.heap.swap_remove(pos);
        let timer = &mut self.slots[removed.slot as usize];
        timer.heap_pos = NOT_QUEUED;
        timer.generation = timer.generation.wrapping_add(1).max(1);
        self.free.push(removed.slot);
        if pos < self.heap.len() {
            self.slots[self.heap[pos].slot as usize].heap_pos = pos as u32;
            // The entry moved in from the end may belong above or below `pos`.
            if pos > 0 && self.heap[pos].before(&self.heap[(pos - 1) / ARITY]) {
                self.sift_up(pos);
            } else {
                self.sift_down(pos);
            }
        }
    }

    fn sift_up(&mut self, mut pos: usize) {
        let entry = self.heap[pos];
        while pos > 0 {
            let parent = (pos - 1) / ARITY;
            if !entry.before(&self.heap[parent]) {
                break;
            }
            self.heap[pos] = self.heap[parent];
            self.slots[self.heap[pos].slot as usize].heap_pos = pos as u32;
            pos = parent;
        }
        self.heap[pos] = entry;
        self.slots[entry.slot as usize].heap_pos = pos as u32;
    }

    fn sift_down(&mut self, mut pos: usize) {
        let entry = self.heap[pos];
        let len = self.heap.len();
        loop {
            let first_child = pos * ARITY + 1;
            if first_child >= len {
                break;
            }
            let last_child = (first_child + ARITY).min(len);
            let mut best = first_child;
            for child in first_child + 1..last_child {
                if self.heap[child].before(&self.heap[best]) {
                    best = child;
                }
            }
            if !self.heap[best].before(&entry) {
                break;
            }
            self.heap[pos] = self.heap[best];
            self.slots[self.heap[pos].slot as usize].heap_pos = pos as u32;
            pos = best;
        }
        self.heap[pos] = entry;
        self.slots[entry.slot as usize].heap_pos = pos as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_in_order_and_cancel_anywhere() {
        let mut timers = Timers::default();
        let mut ids = Vec::new();
        // A scrambled but deterministic set of deadlines, with duplicates.
        for i in 0..1000u64 {
            let deadline = (i * 7919) % 500;
            ids.push((deadline, i, timers.add(deadline, i)));
        }
        let mut cancelled = std::collections::HashSet::new();
        for (n, (_, token, id)) in ids.iter().enumerate() {
            if n % 3 == 0 {
                assert!(timers.cancel(*id));
                assert!(!timers.cancel(*id), "cancel twice is harmless");
                cancelled.insert(*token);
            }
        }
        let mut fired = Vec::new();
        while let Some(token) = timers.pop_expired(u64::MAX) {
            fired.push(token);
        }
        let mut expected: Vec<_> = ids
            .iter()
            .filter(|(_, t, _)| !cancelled.contains(t))
            .map(|&(d, t, _)| (d, t))
            .collect();
        expected.sort();
        assert_eq!(
            fired,
            expected.into_iter().map(|(_, t)| t).collect::<Vec<_>>()
        );
        for (_, _, id) in ids {
            assert!(!timers.cancel(id), "fired or cancelled ids are stale");
        }
    }

    #[test]
    fn pop_respects_now() {
        let mut timers = Timers::default();
        timers.add(10, 1);
        timers.add(20, 2);
        assert_eq!(timers.pop_expired(5), None);
        assert_eq!(timers.pop_expired(15), Some(1));
        assert_eq!(timers.next_deadline(), Some(20));
        assert_eq!(timers.pop_expired(15), None);
        assert_eq!(timers.pop_expired(20), Some(2));
        assert_eq!(timers.len(), 0);
    }
}
