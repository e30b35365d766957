//! Handle registries: how `rl_loop *` and `rl_future *` values are validated without ever being
//! dereferenced.
//!
//! A handle is an integer disguised as a pointer: `generation << 32 | kind << 28 | (slot + 1)`.
//! Slots live in chunks that are allocated on first use and never freed, so decoding a handle
//! and looking at its slot is always memory-safe, whatever value C passes in. The slot holds the
//! object and its current generation; freeing the object bumps the generation, so every copy of
//! the old handle turns stale. A handle of another registry has a different `kind` and is
//! rejected the same way. Generations are 32 bits: a stale handle is recognised as long as its
//! slot has not been reused 2^32 times since.
//!
//! Each slot has its own lock, so threads using different loops never contend; the free list has
//! a lock that only creation and destruction take.

use std::ffi::c_int;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

#[cfg(not(target_pointer_width = "64"))]
compile_error!("ringloop's C ABI encodes handles in 64-bit pointers");

/// Slots per chunk.
const CHUNK_SLOTS: usize = 1024;
/// Chunks per registry: at most `CHUNKS * CHUNK_SLOTS` (about a million) live handles of a kind.
const CHUNKS: usize = 1024;

const SLOT_BITS: u32 = 28;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
const KIND_MASK: u64 = 0xf;

/// Which registry a handle belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Kind {
    Loop = 1,
    Future = 2,
}

struct SlotState<T> {
    generation: u32,
    value: Option<Arc<T>>,
}

struct Slot<T> {
    state: Mutex<SlotState<T>>,
}

struct FreeList {
    /// Released slot indices, reused last-in first-out.
    free: Vec<u32>,
    /// Slots below this index have been handed out at least once.
    high_water: u32,
}

/// A registry of live objects of one kind. Meant to live in a `static`.
pub(crate) struct Registry<T> {
    kind: Kind,
    chunks: [OnceLock<Box<[Slot<T>]>>; CHUNKS],
    free: Mutex<FreeList>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a slot lock is held cannot leave the slot half-updated (every update is a
    // single assignment), so a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> Registry<T> {
    pub(crate) const fn new(kind: Kind) -> Registry<T> {
        Registry {
            kind,
            chunks: [const { OnceLock::new() }; CHUNKS],
            free: Mutex::new(FreeList {
                free: Vec::new(),
                high_water: 0,
            }),
        }
    }

    fn slot(&self, index: u32) -> Option<&Slot<T>> {
        let index = index as usize;
        let chunk = self.chunks.get(index / CHUNK_SLOTS)?.get()?;
        chunk.get(index % CHUNK_SLOTS)
    }

    fn decode(&self, raw: u64) -> Option<(u32, u32)> {
        let slot_plus_one = raw & SLOT_MASK;
        if slot_plus_one == 0 || (raw >> SLOT_BITS) & KIND_MASK != self.kind as u64 {
            return None;
        }
        Some(((slot_plus_one - 1) as u32, (raw >> 32) as u32))
    }

    fn encode(&self, index: u32, generation: u32) -> u64 {
        (u64::from(generation) << 32) | ((self.kind as u64) << SLOT_BITS) | (u64::from(index) + 1)
    }

    /// Stores `value` and returns its handle, or `-ENOMEM` when the registry is full.
    pub(crate) fn insert(&self, value: Arc<T>) -> Result<u64, c_int> {
        let index = {
            let mut free = lock(&self.free);
            match free.free.pop() {
                Some(index) => index,
                None => {
                    let index = free.high_water;
                    if index as usize >= CHUNKS * CHUNK_SLOTS {
                        return Err(-libc::ENOMEM);
                    }
                    self.chunks[index as usize / CHUNK_SLOTS].get_or_init(|| {
                        (0..CHUNK_SLOTS)
                            .map(|_| Slot {
                                state: Mutex::new(SlotState {
                                    generation: 1,
                                    value: None,
                                }),
                            })
                            .collect()
                    });
                    free.high_water += 1;
                    index
                }
            }
        };
        let slot = self.slot(index).expect("allocated slots have a chunk");
        let mut state = lock(&slot.state);
        debug_assert!(state.value.is_none());
        state.value = Some(value);
        Ok(self.encode(index, state.generation))
    }

    /// The object behind `raw`, or `None` for a null, stale or foreign handle.
    pub(crate) fn get(&self, raw: u64) -> Option<Arc<T>> {
        let (index, generation) = self.decode(raw)?;
        let state = lock(&self.slot(index)?.state);
        if state.generation != generation {
            return None;
        }
        state.value.clone()
    }

    /// Removes the object behind `raw`, turning every copy of the handle stale. `None` when the
    /// handle already was stale (a double free) or never valid.
    pub(crate) fn remove(&self, raw: u64) -> Option<Arc<T>> {
        let (index, generation) = self.decode(raw)?;
        let value = {
            let mut state = lock(&self.slot(index)?.state);
            if state.generation != generation {
                return None;
            }
            let value = state.value.take()?;
            state.generation = state.generation.wrapping_add(1);
            value
        };
        lock(&self.free).free.push(index);
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_foreign_and_forged_handles_are_rejected() {
        static LOOPS: Registry<u32> = Registry::new(Kind::Loop);
        static FUTURES: Registry<u32> = Registry::new(Kind::Future);
        let a = LOOPS.insert(Arc::new(7)).unwrap();
        assert_eq!(LOOPS.get(a).as_deref(), Some(&7));
        assert!(
            FUTURES.get(a).is_none(),
            "a loop handle is not a future handle"
        );
        assert!(LOOPS.get(0).is_none());
        assert!(LOOPS.get(0xdead_beef_0000).is_none());
        assert!(LOOPS.get(u64::MAX).is_none());
        assert_eq!(LOOPS.remove(a).as_deref(), Some(&7));
        assert!(LOOPS.get(a).is_none(), "freed handle is stale");
        assert!(LOOPS.remove(a).is_none(), "double free is detected");
        let b = LOOPS.insert(Arc::new(8)).unwrap();
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert!(LOOPS.get(a).is_none());
        assert_eq!(LOOPS.get(b).as_deref(), Some(&8));
    }
}
