//! The receive-buffer pool: `count` buffers of `size` bytes in one anonymous mapping whose address
//! never changes (bindings map it once), plus the list of buffers lent to the caller by the last
//! `poll` and the buffers the caller keeps beyond it ([`BufferPool::keep`]). How a free buffer
//! reaches the kernel again is the backend's business (io_uring: the provided-buffer ring; epoll:
//! a free list); a kept buffer reaches it only after [`BufferPool::release`].
//!
//! The pool is deliberately not `MADV_DONTFORK`: a forked child keeps a readable copy of bytes it
//! was handed before the fork (the kernel only ever writes the parent's pages), instead of a hole
//! that faults. The rings themselves are `dontfork` (see the io_uring backend).

#![warn(clippy::undocumented_unsafe_blocks)]

use std::io;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::sys::mman::{mmap_anonymous, munmap, MapFlags, ProtFlags};

use crate::sys::from_nix;

/// An anonymous, page-aligned, zero-filled mapping, unmapped on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; which thread unmaps it does not matter.
unsafe impl Send for Mapping {}

impl Mapping {
    pub(crate) fn new(len: usize) -> io::Result<Mapping> {
        let len = NonZeroUsize::new(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty mapping"))?;
        // SAFETY: a fresh private anonymous mapping aliases nothing.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                // Not populated: a reactor that never receives much never pays for the whole
                // pool, and the pages fault in once, on first use.
                MapFlags::MAP_PRIVATE,
            )
        }
        .map_err(from_nix)?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len: len.get(),
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` is exactly the mapping created in `new`, and whoever owns this
        // value has made sure the kernel no longer uses it (backends drain first).
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// Where a buffer is, as far as lending goes (see [`BufferPool::keep`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lend {
    /// With the kernel, in a free list, or stashed: the backend's business.
    Pool,
    /// Listed in `lent`: handed out by the last `poll` (or released by the caller), recycled by
    /// the next one.
    Lent,
    /// Kept by the caller, and still listed in `lent` (kept since the last `poll`).
    KeptListed,
    /// Kept by the caller, no longer listed.
    Kept,
}

pub(crate) struct BufferPool {
    region: Mapping,
    size: usize,
    count: usize,
    /// Buffers handed to the caller by the last `poll` (and released ones), for the next `poll`
    /// to recycle. An entry whose buffer was kept meanwhile stays listed and is skipped by
    /// [`BufferPool::take_lent`]: keeping and releasing are O(1), with no search of this list.
    /// A buffer is listed at most once; capacity `count` is reserved up front, so pushing never
    /// allocates.
    lent: Vec<u16>,
    /// Per buffer.
    state: Vec<Lend>,
}

impl BufferPool {
    /// Checks the option values without mapping anything, so they are refused the same way
    /// whichever backend would have used them.
    pub(crate) fn validate(size: u32, count: u32) -> io::Result<()> {
        if size == 0 || size > (1 << 30) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer_size must be between 1 byte and 1 GiB",
            ));
        }
        if count == 0 || count > 32768 || !count.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer_count must be a power of two between 1 and 32768",
            ));
        }
        // 2^30 * 2^15 fits in 64 bits: the region size cannot overflow.
        Ok(())
    }

    /// Maps the region for `count` buffers of `size` bytes (see [`BufferPool::validate`]).
    pub(crate) fn new(size: u32, count: u32) -> io::Result<BufferPool> {
        Self::validate(size, count)?;
        Ok(BufferPool {
            region: Mapping::new(size as usize * count as usize)?,
            size: size as usize,
            count: count as usize,
            lent: Vec::with_capacity(count as usize),
            state: vec![Lend::Pool; count as usize],
        })
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    pub(crate) fn count(&self) -> usize {
        self.count
    }

    pub(crate) fn base(&self) -> *mut u8 {
        self.region.as_ptr()
    }

    /// Start of buffer `id`. `id < count` is the caller's invariant.
    pub(crate) fn buffer_ptr(&self, id: u16) -> *mut u8 {
        debug_assert!((id as usize) < self.count);
        // SAFETY: `id < count`, so the offset stays inside the mapping.
        unsafe { self.region.as_ptr().add(id as usize * self.size) }
    }

    /// The first `len` bytes of buffer `id`, or `None` for an out-of-range id or length.
    pub(crate) fn data(&self, id: u64, len: i32) -> Option<&[u8]> {
        self.data_at(id, 0, len)
    }

    /// `len` bytes from `offset` in buffer `id`, if that lies inside it.
    pub(crate) fn data_at(&self, id: u64, offset: usize, len: i32) -> Option<&[u8]> {
        let end = usize::try_from(len).ok()?.checked_add(offset)?;
        if id >= self.count as u64 || end > self.size {
            return None;
        }
        // SAFETY: in bounds (checked above); a lent buffer is not written by the kernel nor by the
        // reactor until the next `poll` (which needs `&mut` of the reactor, ending this borrow).
        Some(unsafe {
            std::slice::from_raw_parts(self.buffer_ptr(id as u16).add(offset), end - offset)
        })
    }

    /// Records that buffer `id` was handed to the caller by this `poll`.
    pub(crate) fn lend(&mut self, id: u16) {
        self.state[usize::from(id)] = Lend::Lent;
        self.lent.push(id);
    }

    /// Takes the buffers lent by the previous `poll` (not those kept since), to give them back to
    /// the kernel or free list. The caller must run the iterator to its end.
    pub(crate) fn take_lent(&mut self) -> impl Iterator<Item = u16> + '_ {
        let state = &mut self.state;
        self.lent.drain(..).filter(move |&id| {
            let lend = &mut state[usize::from(id)];
            match *lend {
                Lend::Lent => {
                    *lend = Lend::Pool;
                    true
                }
                Lend::KeptListed => {
                    // Kept since it was lent: the caller has it until it is released.
                    *lend = Lend::Kept;
                    false
                }
                // Never listed in these states.
                Lend::Pool | Lend::Kept => false,
            }
        })
    }

    /// Keeps buffer `id`, lent by the last `poll`, out of the next one's recycling until
    /// [`BufferPool::release`]: `EINVAL` for an id past the pool, `ENOENT` for a buffer the last
    /// `poll` did not lend (or one already kept).
    pub(crate) fn keep(&mut self, id: u32) -> io::Result<()> {
        let lend = self.lend_state(id)?;
        if *lend != Lend::Lent {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        *lend = Lend::KeptListed;
        Ok(())
    }

    /// Gives a kept buffer back: the next `poll` recycles it as if that `poll` had lent it.
    /// `EINVAL` for an id past the pool, `ENOENT` for a buffer that is not kept.
    pub(crate) fn release(&mut self, id: u32) -> io::Result<()> {
        let lend = self.lend_state(id)?;
        let listed = match *lend {
            Lend::KeptListed => true,
            Lend::Kept => false,
            _ => return Err(io::Error::from_raw_os_error(libc::ENOENT)),
        };
        *lend = Lend::Lent;
        if !listed {
            self.lent.push(id as u16);
        }
        Ok(())
    }

    /// Buffer `id`'s state, or `EINVAL` for an id past the pool.
    fn lend_state(&mut self, id: u32) -> io::Result<&mut Lend> {
        self.state
            .get_mut(id as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errno(result: io::Result<()>) -> i32 {
        result.unwrap_err().raw_os_error().unwrap()
    }

    #[test]
    fn keep_and_release_move_buffers_in_and_out_of_recycling() {
        let mut pool = BufferPool::new(64, 8).unwrap();
        pool.lend(1);
        pool.lend(2);
        pool.lend(3);
        assert_eq!(errno(pool.keep(8)), libc::EINVAL);
        assert_eq!(errno(pool.keep(0)), libc::ENOENT, "never lent");
        pool.keep(2).unwrap();
        // Kept and released again and again before the next poll: listed once, recycled once.
        for _ in 0..100 {
            pool.keep(3).unwrap();
            pool.release(3).unwrap();
        }
        assert_eq!(pool.take_lent().collect::<Vec<_>>(), [1, 3]);
        // Buffer 2 stays with the caller over any number of polls.
        assert_eq!(pool.take_lent().count(), 0);
        assert_eq!(errno(pool.keep(1)), libc::ENOENT, "recycled");
        assert_eq!(errno(pool.release(1)), libc::ENOENT, "not kept");
        pool.release(2).unwrap();
        assert_eq!(errno(pool.release(2)), libc::ENOENT, "released twice");
        assert_eq!(pool.take_lent().collect::<Vec<_>>(), [2]);
        assert!(pool.lent.capacity() == 8, "the list never grew");
    }
}
