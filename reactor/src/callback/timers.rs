//! The loop's timers: a binary heap ordered by (deadline, schedule order) over a generation slab.
//!
//! Cancelling removes the slab entry and leaves the heap entry behind (it is recognised as stale
//! by its generation and skipped when it reaches the top); the heap is rebuilt when stale entries
//! outnumber live ones, so cancelling many far-future timers does not grow memory without bound.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::genslab::{GenSlab, Key};
use super::handler::Handler;

/// Identifies a timer scheduled with `call_later`/`call_at`. Carries a generation: cancelling a
/// timer that fired or was cancelled is harmless and returns `false`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerHandle(u64);

impl TimerHandle {
    /// The handle as a plain integer, for the C ABI. Never `0`, and the top four bits are always
    /// clear (the generation has 28 bits), so an embedder may tag handles with them.
    pub const fn into_raw(self) -> u64 {
        self.0
    }

    /// Rebuilds a handle from [`TimerHandle::into_raw`]; a forged or stale value is not found.
    pub const fn from_raw(raw: u64) -> TimerHandle {
        TimerHandle(raw)
    }

    fn from_key(key: Key) -> TimerHandle {
        TimerHandle(u64::from(key.gen) << 32 | u64::from(key.index))
    }

    fn key(self) -> Key {
        Key {
            index: self.0 as u32,
            gen: (self.0 >> 32) as u32,
        }
    }
}

struct Timer {
    handler: Handler,
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct HeapEntry {
    deadline: u64,
    seq: u64,
    index: u32,
    gen: u32,
}

pub(crate) struct Timers {
    slots: GenSlab<Timer>,
    heap: BinaryHeap<Reverse<HeapEntry>>,
    next_seq: u64,
}

/// Below this many heap entries, stale ones are never worth a rebuild.
const COMPACT_MIN: usize = 64;

impl Timers {
    pub(crate) const fn new() -> Timers {
        Timers {
            slots: GenSlab::new(),
            heap: BinaryHeap::new(),
            next_seq: 0,
        }
    }

    /// Live timers.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn insert(&mut self, deadline: u64, handler: Handler) -> Option<TimerHandle> {
        let key = self.slots.insert(Timer { handler })?;
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Reverse(HeapEntry {
            deadline,
            seq,
            index: key.index,
            gen: key.gen,
        }));
        Some(TimerHandle::from_key(key))
    }

    /// Removes a live timer and returns its callback (the caller decides what dropping means).
    pub(crate) fn cancel(&mut self, handle: TimerHandle) -> Option<Handler> {
        let timer = self.slots.remove(handle.key())?;
        if self.heap.len() > COMPACT_MIN && self.heap.len() > 2 * self.slots.len() {
            let slots = &self.slots;
            self.heap.retain(|Reverse(e)| {
                slots.contains(Key {
                    index: e.index,
                    gen: e.gen,
                })
            });
        }
        Some(timer.handler)
    }

    fn drop_stale_top(&mut self) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if self.slots.contains(Key {
                index: top.index,
                gen: top.gen,
            }) {
                return;
            }
            self.heap.pop();
        }
    }

    /// The earliest live deadline.
    pub(crate) fn next_deadline(&mut self) -> Option<u64> {
        self.drop_stale_top();
        self.heap.peek().map(|Reverse(e)| e.deadline)
    }

    /// The sequence number the next scheduled timer will get.
    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Takes the earliest timer due at `now` that was scheduled before sequence number
    /// `before_seq`, if that is the earliest timer. Ties come out in schedule order. The sequence
    /// bound keeps a timer that (re)schedules itself with a zero delay from running again in the
    /// same pass.
    pub(crate) fn pop_due(&mut self, now: u64, before_seq: u64) -> Option<Handler> {
        self.drop_stale_top();
        let Reverse(top) = self.heap.peek()?;
        if top.deadline > now || top.seq >= before_seq {
            return None;
        }
        let Reverse(top) = self.heap.pop()?;
        self.slots
            .remove(Key {
                index: top.index,
                gen: top.gen,
            })
            .map(|t| t.handler)
    }

    /// Removes every timer (closing the loop), earliest first.
    pub(crate) fn pop_any(&mut self) -> Option<Handler> {
        self.pop_due(u64::MAX, u64::MAX)
    }
}
