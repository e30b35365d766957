//! The op table (a slab whose keys carry a generation) and the per-fd index of ops.
//!
//! A key is `generation << 32 | slot`. Generations start at 1 and skip 0 when they wrap, so a key
//! is never 0 and any key with a zero generation (the backends use a few as tags, e.g. for cancel
//! requests whose completions are ignored) never names an op. A removed op bumps its slot's
//! generation, so an old [`crate::OpId`] (or an io_uring completion carrying an old key) is simply
//! not found.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use crate::buffers::BufferPool;

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// A generational slab. Slots are reused (LIFO) so a steady state allocates nothing.
pub(crate) struct OpTable<T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
}

const fn split(key: u64) -> (usize, u32) {
    ((key & 0xffff_ffff) as usize, (key >> 32) as u32)
}

impl<T> OpTable<T> {
    pub(crate) fn new() -> Self {
        OpTable {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Stores `value` and returns its key.
    pub(crate) fn insert(&mut self, value: T) -> u64 {
        self.len += 1;
        if let Some(index) = self.free.pop() {
            let slot = &mut self.slots[index as usize];
            slot.value = Some(value);
            (u64::from(slot.generation) << 32) | u64::from(index)
        } else {
            let index = u32::try_from(self.slots.len()).expect("more than 2^32 live ops");
            self.slots.push(Slot {
                generation: 1,
                value: Some(value),
            });
            (1u64 << 32) | u64::from(index)
        }
    }

    pub(crate) fn get(&self, key: u64) -> Option<&T> {
        let (index, generation) = split(key);
        match self.slots.get(index) {
            Some(slot) if slot.generation == generation => slot.value.as_ref(),
            _ => None,
        }
    }

    pub(crate) fn get_mut(&mut self, key: u64) -> Option<&mut T> {
        let (index, generation) = split(key);
        match self.slots.get_mut(index) {
            Some(slot) if slot.generation == generation => slot.value.as_mut(),
            _ => None,
        }
    }

    pub(crate) fn remove(&mut self, key: u64) -> Option<T> {
        let (index, generation) = split(key);
        let slot = self.slots.get_mut(index)?;
        if slot.generation != generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1).max(1);
        self.free.push(index as u32);
        self.len -= 1;
        Some(value)
    }

    /// Number of stored ops.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every stored op, for changes that apply to all of them.
    pub(crate) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.slots.iter_mut().filter_map(|slot| slot.value.as_mut())
    }

    /// Appends the keys of every stored op for which `pred` holds to `out`.
    pub(crate) fn keys_where(&self, out: &mut Vec<u64>, mut pred: impl FnMut(&T) -> bool) {
        for (index, slot) in self.slots.iter().enumerate() {
            if let Some(value) = &slot.value {
                if pred(value) {
                    out.push((u64::from(slot.generation) << 32) | index as u64);
                }
            }
        }
    }
}

/// What the reactor tracks per caller fd: the ops on it (for `close` and, on epoll, for combining
/// interests), the FIFO of sends (only the head is ever in flight, so bytes of two sends on one
/// stream never interleave; the head is kept apart, so the usual lone send is queued and taken
/// off without touching the queue), the epoll registration mask (unused by io_uring), and the
/// stash.
///
/// The stash keeps bytes a cancelled recv had already taken out of the socket (buffers queued
/// for delivery, or completions that raced with the cancel): a stream must not lose them, so the
/// next recv on the same open socket delivers them first. `stash_identity` (device and inode at
/// stash time) tells the same socket from a new one that reused the fd number.
#[derive(Default)]
pub(crate) struct FdEntry {
    pub(crate) ops: Vec<u64>,
    /// The head of the send FIFO, 0 when no send is queued (keys are never 0).
    send_head: u64,
    /// The sends behind the head, in order.
    send_queue: VecDeque<u64>,
    pub(crate) registered: u32,
    stash: Vec<Stashed>,
    stash_identity: (u64, u64),
}

impl FdEntry {
    /// No send is queued on the fd: a new one would be the head.
    #[inline]
    pub(crate) fn send_idle(&self) -> bool {
        self.send_head == 0
    }

    /// Appends send `key` to the FIFO; `true` when it is the head (may go out now).
    #[inline]
    pub(crate) fn push_send(&mut self, key: u64) -> bool {
        if self.send_head == 0 {
            self.send_head = key;
            true
        } else {
            self.send_queue.push_back(key);
            false
        }
    }
}

/// Stashed bytes: `len` bytes at offset `off` of pool buffer `bid`. Only the head of a stash can
/// have `off > 0`: a one-shot receive smaller than it took its first bytes (see
/// [`FdTable::next_stashed`]).
#[derive(Clone, Copy)]
struct Stashed {
    bid: u16,
    off: u32,
    len: i32,
}

/// What [`FdTable::next_stashed`] found.
pub(crate) enum Unstashed {
    /// No stash: receive from the socket.
    Empty,
    /// The stash came from a socket the fd no longer names: release it
    /// ([`FdTable::release_stash`]), then receive from the socket.
    Stale,
    /// The head's buffer still holds bytes lent to the caller (the previous chunk of it): nothing
    /// can be delivered before the next `poll` recycles that lend, and the socket must wait too.
    Busy,
    /// Deliver `len` bytes in place from the start of buffer `bid`, as a normal buffer event.
    Chunk { bid: u16, len: i32 },
}

/// Fd-indexed table of [`FdEntry`]. Fd numbers are small and dense, so a vector beats a hash map,
/// and entries keep their capacity when an fd number is reused: no allocation in steady state.
///
/// `pinned` lists stash buffers whose first bytes are out with the caller (lent by a `poll`, or
/// queued to be) while the rest of them stays stashed: when the lend ends the backend must not
/// recycle such a buffer ([`FdTable::unpin`]), and the rest moves to its start only then.
#[derive(Default)]
pub(crate) struct FdTable {
    entries: Vec<FdEntry>,
    pinned: Vec<u16>,
}

impl FdTable {
    /// Refuses an fd number that cannot name an open file before the table is indexed by it:
    /// negative numbers, and numbers past the table that are not open (checked with one
    /// `fcntl` only when the table would have to grow, so `i32::MAX` cannot make it allocate
    /// gigabytes).
    pub(crate) fn check(&self, fd: RawFd) -> io::Result<()> {
        if fd < 0 || (fd as usize >= self.entries.len() && !crate::sys::fd_is_open(fd)) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        Ok(())
    }

    #[inline]
    pub(crate) fn entry(&mut self, fd: RawFd) -> &mut FdEntry {
        let index = fd as usize;
        if index >= self.entries.len() {
            self.grow(index);
        }
        &mut self.entries[index]
    }

    /// Makes room for fd number `index` (rare: only the first time a number that high is seen).
    #[cold]
    #[inline(never)]
    fn grow(&mut self, index: usize) {
        self.entries.resize_with(index + 1, FdEntry::default);
    }

    pub(crate) fn get(&self, fd: RawFd) -> Option<&FdEntry> {
        self.entries.get(fd as usize)
    }

    pub(crate) fn get_mut(&mut self, fd: RawFd) -> Option<&mut FdEntry> {
        self.entries.get_mut(fd as usize)
    }

    pub(crate) fn add_op(&mut self, fd: RawFd, key: u64) {
        self.entry(fd).ops.push(key);
    }

    /// Removes `key` from `fd`'s op list and from its send FIFO.
    pub(crate) fn remove_op(&mut self, fd: RawFd, key: u64) {
        self.remove_indexed(fd, key);
        self.remove_send(fd, key);
    }

    /// Removes `key` from `fd`'s op list only.
    pub(crate) fn remove_indexed(&mut self, fd: RawFd, key: u64) {
        if let Some(entry) = self.get_mut(fd) {
            if let Some(pos) = entry.ops.iter().position(|&k| k == key) {
                entry.ops.swap_remove(pos);
            }
        }
    }

    /// Appends send `key` to `fd`'s send FIFO; `true` when it is the head (may go out now).
    #[inline]
    pub(crate) fn push_send(&mut self, fd: RawFd, key: u64) -> bool {
        self.entry(fd).push_send(key)
    }

    /// Takes send `key` out of `fd`'s send FIFO. When it was the head (the usual case: sends end
    /// in order, and the head is taken without a search), returns the new head, which may go out
    /// now.
    #[inline]
    pub(crate) fn remove_send(&mut self, fd: RawFd, key: u64) -> Option<u64> {
        let entry = self.get_mut(fd)?;
        if entry.send_head == key {
            entry.send_head = entry.send_queue.pop_front().unwrap_or(0);
            return (entry.send_head != 0).then_some(entry.send_head);
        }
        if let Some(pos) = entry.send_queue.iter().position(|&k| k == key) {
            entry.send_queue.remove(pos);
        }
        None
    }

    /// Whether send `key` is the head of `fd`'s send FIFO (the one allowed in flight).
    pub(crate) fn is_send_head(&self, fd: RawFd, key: u64) -> bool {
        self.get(fd).is_some_and(|e| e.send_head == key)
    }

    /// Keeps buffer `bid` holding `len` bytes of a cancelled recv on `fd` for the next recv on the
    /// same socket. `false` when the fd cannot be identified (closed): the caller recycles it.
    pub(crate) fn stash(&mut self, fd: RawFd, bid: u16, len: i32) -> bool {
        let entry = self.entry(fd);
        if entry.stash.is_empty() {
            match crate::sys::file_identity(fd) {
                Some(identity) => entry.stash_identity = identity,
                None => return false,
            }
        }
        entry.stash.push(Stashed { bid, off: 0, len });
        true
    }

    /// Whether `fd` has stashed bytes (no system call).
    pub(crate) fn has_stash(&self, fd: RawFd) -> bool {
        self.get(fd).is_some_and(|entry| !entry.stash.is_empty())
    }

    /// Takes the next chunk of at most `max` bytes off `fd`'s stash, to be delivered in place.
    ///
    /// A head longer than `max` is split: its first `max` bytes are delivered from the start of
    /// its buffer, which stays stashed (and pinned) with the rest; once the lend has ended (see
    /// [`FdTable::unpin`]) the rest is moved to the start of the buffer and can go out in turn.
    pub(crate) fn next_stashed(&mut self, fd: RawFd, max: usize, pool: &BufferPool) -> Unstashed {
        let Some(entry) = self.entries.get_mut(fd as usize) else {
            return Unstashed::Empty;
        };
        let Some(head) = entry.stash.first_mut() else {
            return Unstashed::Empty;
        };
        if crate::sys::file_identity(fd) != Some(entry.stash_identity) {
            return Unstashed::Stale;
        }
        if head.off > 0 {
            if self.pinned.contains(&head.bid) {
                return Unstashed::Busy;
            }
            let start = pool.buffer_ptr(head.bid);
            // SAFETY: `off + len <= size`, so both ranges lie inside buffer `bid`, which the stash
            // owns: neither the kernel nor the caller holds it (not pinned, so no lend is
            // running). `copy` allows the overlap.
            unsafe { std::ptr::copy(start.add(head.off as usize), start, head.len as usize) };
            head.off = 0;
        }
        let bid = head.bid;
        let max = i32::try_from(max).unwrap_or(i32::MAX).max(1);
        if head.len <= max {
            let len = head.len;
            entry.stash.remove(0);
            return Unstashed::Chunk { bid, len };
        }
        head.off = max as u32;
        head.len -= max;
        self.pinned.push(bid);
        Unstashed::Chunk { bid, len: max }
    }

    /// Empties `fd`'s stash (its socket is closing or gone), handing each buffer nobody holds to
    /// `recycle`. A pinned buffer is only unpinned: the lend of its first bytes recycles it.
    pub(crate) fn release_stash(&mut self, fd: RawFd, mut recycle: impl FnMut(u16)) {
        let Some(entry) = self.entries.get_mut(fd as usize) else {
            return;
        };
        for Stashed { bid, .. } in entry.stash.drain(..) {
            if let Some(pos) = self.pinned.iter().position(|&b| b == bid) {
                self.pinned.swap_remove(pos);
            } else {
                recycle(bid);
            }
        }
    }

    /// Called for every buffer whose lend ends: `true` when `bid` is pinned (still stashed, must
    /// not be recycled); it is unpinned, so the rest of its bytes can go out.
    pub(crate) fn unpin(&mut self, bid: u16) -> bool {
        if self.pinned.is_empty() {
            return false;
        }
        match self.pinned.iter().position(|&b| b == bid) {
            Some(pos) => {
                self.pinned.swap_remove(pos);
                true
            }
            None => false,
        }
    }

    /// Copies the keys of the ops on `fd` into `out` (cleared first), followed by its queued
    /// sends when `with_sends` (for a backend that keeps sends out of the op list).
    pub(crate) fn ops_on(&self, fd: RawFd, out: &mut Vec<u64>, with_sends: bool) {
        out.clear();
        if let Some(entry) = self.get(fd) {
            out.extend_from_slice(&entry.ops);
            if with_sends && entry.send_head != 0 {
                out.push(entry.send_head);
                out.extend(entry.send_queue.iter().copied());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_keys_are_not_found() {
        let mut table = OpTable::new();
        let a = table.insert("a");
        assert_eq!(table.get(a), Some(&"a"));
        assert_eq!(table.remove(a), Some("a"));
        let b = table.insert("b");
        assert_ne!(a, b, "a reused slot gets a new generation");
        assert_eq!(table.get(a), None);
        assert_eq!(table.remove(a), None);
        assert_eq!(table.get(b), Some(&"b"));
        assert_eq!(table.len(), 1);
        assert_ne!(a >> 32, 0);
    }
}
