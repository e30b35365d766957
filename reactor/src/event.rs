//! The event record and the identifiers operations hand back.

/// One outcome of one operation.
///
/// `#[repr(C)]`, 24 bytes, identical to `rl_event` in the C header: bindings read arrays of these
/// directly.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// The caller's token for the operation this event belongs to.
    pub token: u64,
    /// A byte count, a new fd, a readiness mask, a signal number, or `-errno`.
    pub result: i32,
    /// Bit set of [`flags`].
    pub flags: u32,
    /// Extra data: the receive buffer id when [`flags::BUFFER`] is set.
    pub aux: u64,
}

/// Bits of [`Event::flags`].
pub mod flags {
    /// More events will follow for this operation (a multishot operation is still armed).
    pub const MORE: u32 = 1;
    /// `aux` is the id of a reactor-owned receive buffer holding `result` bytes. The buffer stays
    /// valid until the next `poll`, which recycles it.
    pub const BUFFER: u32 = 2;
    /// With [`BUFFER`]: the buffer holds one datagram laid out as [`crate::datagram`] says, its
    /// `result` payload bytes at [`crate::datagram::PAYLOAD`] (a datagram receive's events).
    pub const DATAGRAM: u32 = 4;
}

/// Where a datagram receive ([`crate::Reactor::recvmsg_multi`]) puts one datagram in its buffer:
/// a 16-byte header of four native-endian `u32`s, the sender's address, the payload. (It is the
/// layout of io_uring's multishot `recvmsg`, with no control data; the epoll backend writes the
/// same.)
pub mod datagram {
    /// Header offset of the `u32` length of the sender's address (at most [`NAME_MAX`]).
    pub const NAME_LEN: usize = 0;
    /// Header offset of the `u32` full length of the datagram, which exceeds the event's `result`
    /// when the datagram did not fit in the buffer.
    pub const PAYLOAD_LEN: usize = 8;
    /// Header offset of the `u32` `recvmsg` flags (`MSG_TRUNC` for a datagram cut short).
    pub const MSG_FLAGS: usize = 12;
    /// Offset of the sender's address (a `sockaddr` of `NAME_LEN` bytes).
    pub const NAME: usize = 16;
    /// Room reserved for the address: `sizeof(struct sockaddr_storage)`.
    pub const NAME_MAX: usize = 128;
    /// Offset of the payload: the header and the address room before it.
    pub const PAYLOAD: usize = NAME + NAME_MAX;
}

/// Readiness interest of a watch, and the readiness mask reported in a watch event's `result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Interest(u32);

impl Interest {
    /// The fd is readable (or has hung up / errored: reported to readers too, as asyncio does).
    pub const READABLE: Interest = Interest(1);
    /// The fd is writable (or has errored: reported to writers too).
    pub const WRITABLE: Interest = Interest(2);
    /// Both.
    pub const BOTH: Interest = Interest(3);

    /// The raw bits (1 = readable, 2 = writable).
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Builds an interest from raw bits; `None` when no known bit is set or unknown bits are.
    pub const fn from_bits(bits: u32) -> Option<Interest> {
        if bits == 0 || bits & !3 != 0 {
            None
        } else {
            Some(Interest(bits))
        }
    }

    /// Whether every bit of `other` is in `self`.
    pub const fn contains(self, other: Interest) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Interest {
    type Output = Interest;
    fn bitor(self, rhs: Interest) -> Interest {
        Interest(self.0 | rhs.0)
    }
}

/// Identifies one submitted operation. Carries a generation: an id whose operation has ended is
/// stale, and using it is a harmless `NotFound` error, never another operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(pub(crate) u64);

impl OpId {
    /// The id as a plain integer, for handing across the C ABI.
    pub const fn into_raw(self) -> u64 {
        self.0
    }
    /// Rebuilds an id from [`OpId::into_raw`]; a forged or stale value is simply not found.
    pub const fn from_raw(raw: u64) -> OpId {
        OpId(raw)
    }
}

/// Identifies one timer. Carries a generation, so cancelling a fired or cancelled timer is harmless.
/// Bit 63 of the raw value is always clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId(pub(crate) u64);

impl TimerId {
    /// The id as a plain integer, for handing across the C ABI.
    pub const fn into_raw(self) -> u64 {
        self.0
    }
    /// Rebuilds an id from [`TimerId::into_raw`].
    pub const fn from_raw(raw: u64) -> TimerId {
        TimerId(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_layout_matches_the_c_header() {
        assert_eq!(std::mem::size_of::<Event>(), 24);
        assert_eq!(std::mem::align_of::<Event>(), 8);
    }
}
