//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19+): the
//! buffers multishot receives fill.
//!
//! The kernel picks a free buffer when data arrives and names it in the
//! completion's flags; from then on the buffer is ours until we give it
//! back with [`BufRing::recycle`]. The ring and the buffers are one
//! allocation each, never moved, and outlive the registration: the driver
//! drops its ring (which unregisters) before this, and leaks this if any
//! operation that may still pick a buffer is left in flight.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

/// The buffers receives share.
pub(crate) struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    bufs: NonNull<u8>,
    bufs_layout: Layout,
    entries: u16,
    buf_size: usize,
    /// Our copy of the tail; the kernel reads the one in the ring.
    tail: Cell<u16>,
    /// Buffers the kernel handed us that are not recycled yet.
    lent: Cell<u32>,
}

/// The group id our receives name.
pub(crate) const BGID: u16 = 0;

impl BufRing {
    /// `entries` (a power of two) buffers of `buf_size` bytes, all free.
    /// The caller registers [`BufRing::ring_addr`] with the ring.
    pub fn new(entries: u16, buf_size: usize) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two(), "ring entries are a power of two");
        let ring_layout =
            Layout::from_size_align(entries as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let bufs_layout = Layout::from_size_align(entries as usize * buf_size, 64)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: both layouts have a non-zero size.
        let ring = NonNull::new(unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: as above.
        let Some(bufs) = NonNull::new(unsafe { alloc_zeroed(bufs_layout) }) else {
            // SAFETY: allocated just above with this layout.
            unsafe { dealloc(ring.as_ptr().cast(), ring_layout) };
            return Err(io::ErrorKind::OutOfMemory.into());
        };
        let r = BufRing {
            ring,
            ring_layout,
            bufs,
            bufs_layout,
            entries,
            buf_size,
            tail: Cell::new(0),
            lent: Cell::new(0),
        };
        for bid in 0..entries {
            r.push(bid);
        }
        r.publish();
        Ok(r)
    }

    /// The ring's address, for `register_buf_ring_with_flags`.
    pub fn ring_addr(&self) -> u64 {
        self.ring.as_ptr() as u64
    }

    /// How many entries the ring has.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    fn push(&self, bid: u16) {
        let tail = self.tail.get();
        let slot = (tail & (self.entries - 1)) as usize;
        // SAFETY: `slot < entries`, inside the ring allocation. The kernel
        // reads only entries below the published tail, and this one is at
        // or past it, so we are its only user until `publish`.
        let e = unsafe { &mut *self.ring.as_ptr().add(slot) };
        e.set_addr(self.bufs.as_ptr() as u64 + u64::from(bid) * self.buf_size as u64);
        e.set_len(self.buf_size as u32);
        e.set_bid(bid);
        self.tail.set(tail.wrapping_add(1));
    }

    fn publish(&self) {
        // SAFETY: the ring's first entry is initialised (zeroed, then
        // written by `push`); `tail` points into it, at the field the
        // kernel reads the tail from, 2-aligned since entries are 16 bytes.
        let tail = unsafe { BufRingEntry::tail(self.ring.as_ptr()) } as *const AtomicU16;
        // SAFETY: as above; the kernel reads it with an acquire load, so
        // the entries written before are visible to it.
        unsafe { &*tail }.store(self.tail.get(), Ordering::Release);
    }

    /// Notes that a completion handed us a buffer.
    pub fn lent(&self) {
        self.lent.set(self.lent.get() + 1);
    }

    /// Buffers handed to us and not given back yet.
    pub fn outstanding(&self) -> u32 {
        self.lent.get()
    }

    /// Gives buffer `bid` back to the kernel.
    pub fn recycle(&self, bid: u16) {
        self.lent.set(self.lent.get().saturating_sub(1));
        self.push(bid);
        self.publish();
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    /// The kernel handed `bid` to us (a completion named it) and it has
    /// not been recycled since; the slice must be gone before it is.
    pub unsafe fn buf(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buf_size);
        // SAFETY: in bounds by the assertion; the kernel wrote `len` bytes
        // and does not touch the buffer until it is recycled (caller).
        unsafe {
            std::slice::from_raw_parts(self.bufs.as_ptr().add(bid as usize * self.buf_size), len)
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts. The driver drops
        // this only after the ring that registered it is gone and nothing
        // in flight may pick a buffer (it leaks it otherwise).
        unsafe {
            dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            dealloc(self.bufs.as_ptr(), self.bufs_layout);
        }
    }
}
