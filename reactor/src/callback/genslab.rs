//! A slab whose keys carry a generation, so a key that outlived its entry is simply not found.
//!
//! The loop hands keys out to callers (timer handles, op handles) and encodes them in reactor
//! tokens; an entry's index is reused after removal, and the generation is what tells a stale key
//! (or a stale event already sitting in a poll batch) from the new occupant.

/// Largest generation; generations wrap within 28 bits because op tokens carry them in 28 bits.
pub(crate) const GEN_MASK: u32 = (1 << 28) - 1;

/// No entry: the end of the free list.
const NONE: u32 = u32::MAX;

/// One index and the generation of the entry it named when handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub(crate) index: u32,
    pub(crate) gen: u32,
}

struct Entry<T> {
    gen: u32,
    value: Option<T>,
    next_free: u32,
}

/// Entries grow the backing vector, removed entries go on a free list and are reused first, so a
/// steady state of inserts and removals allocates nothing.
pub(crate) struct GenSlab<T> {
    entries: Vec<Entry<T>>,
    free_head: u32,
    len: usize,
}

impl<T> GenSlab<T> {
    pub(crate) const fn new() -> GenSlab<T> {
        GenSlab {
            entries: Vec::new(),
            free_head: NONE,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value`. Fails only when 2^32 - 1 entries are live, which the loop reports as
    /// `ENOMEM` rather than wrapping indices.
    pub(crate) fn insert(&mut self, value: T) -> Option<Key> {
        if self.free_head != NONE {
            let index = self.free_head;
            let entry = &mut self.entries[index as usize];
            self.free_head = entry.next_free;
            entry.next_free = NONE;
            entry.value = Some(value);
            self.len += 1;
            return Some(Key {
                index,
                gen: entry.gen,
            });
        }
        let index = u32::try_from(self.entries.len())
            .ok()
            .filter(|&i| i != NONE)?;
        self.entries.push(Entry {
            gen: 1,
            value: Some(value),
            next_free: NONE,
        });
        self.len += 1;
        Some(Key { index, gen: 1 })
    }

    pub(crate) fn get(&self, key: Key) -> Option<&T> {
        let entry = self.entries.get(key.index as usize)?;
        if entry.gen == key.gen {
            entry.value.as_ref()
        } else {
            None
        }
    }

    pub(crate) fn get_mut(&mut self, key: Key) -> Option<&mut T> {
        let entry = self.entries.get_mut(key.index as usize)?;
        if entry.gen == key.gen {
            entry.value.as_mut()
        } else {
            None
        }
    }

    pub(crate) fn contains(&self, key: Key) -> bool {
        self.get(key).is_some()
    }

    /// Removes the entry `key` names; `None` when it is stale. The index's generation moves on,
    /// so `key` and every copy of it are stale from now on.
    pub(crate) fn remove(&mut self, key: Key) -> Option<T> {
        let entry = self.entries.get_mut(key.index as usize)?;
        if entry.gen != key.gen {
            return None;
        }
        let value = entry.value.take()?;
        entry.gen = (entry.gen % GEN_MASK) + 1;
        entry.next_free = self.free_head;
        self.free_head = key.index;
        self.len -= 1;
        Some(value)
    }

    /// The live entry at `index`, whatever its generation (for intrusive links between entries,
    /// which only ever point at live entries).
    pub(crate) fn get_index_mut(&mut self, index: u32) -> Option<&mut T> {
        self.entries.get_mut(index as usize)?.value.as_mut()
    }

    /// The key of the live entry at `index`.
    pub(crate) fn keys_at(&self, index: u32) -> Option<Key> {
        let entry = self.entries.get(index as usize)?;
        entry.value.as_ref().map(|_| Key {
            index,
            gen: entry.gen,
        })
    }

    /// The keys of every live entry (allocates; used when closing the loop, never on a hot path).
    pub(crate) fn keys(&self) -> Vec<Key> {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.value.is_some())
            .map(|(i, e)| Key {
                index: i as u32,
                gen: e.gen,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_are_not_found_after_reuse() {
        let mut slab = GenSlab::new();
        let a = slab.insert("a").unwrap();
        assert_eq!(slab.remove(a), Some("a"));
        let b = slab.insert("b").unwrap();
        assert_eq!(a.index, b.index, "the freed index is reused");
        assert_ne!(a.gen, b.gen);
        assert_eq!(slab.get(a), None);
        assert_eq!(slab.remove(a), None);
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(slab.len(), 1);
    }

    #[test]
    fn generations_stay_within_their_bits() {
        let mut slab = GenSlab::new();
        let mut key = slab.insert(0u8).unwrap();
        for _ in 0..3 {
            slab.remove(key);
            key = slab.insert(0).unwrap();
            assert!(key.gen >= 1 && key.gen <= GEN_MASK);
        }
    }
}
