//! A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19+): the
//! buffers multishot receives fill.
//!
//! The kernel picks a free buffer when data arrives and names it in the
//! completion's flags. Registered with `IOU_PBUF_RING_INC` (Linux 6.12+),
//! it fills a buffer a part at a time: each completion's data follows the
//! previous one's in the same buffer, and `IORING_CQE_F_BUF_MORE` says the
//! kernel will go on filling it. Where each completion's data starts is
//! worked out as completions are reaped ([`BufRing::reap`]), in the order
//! the kernel filled the buffer, since their owners may process them in
//! another. A buffer goes back to the kernel ([`BufRing::release`]) once
//! the kernel is done filling it and the data of every completion reaped
//! from it has been released.
//!
//! The ring and the buffers are one allocation each, never moved, and
//! outlive the registration: the driver drops its ring (which unregisters)
//! before this, and leaks this if any operation that may still pick a
//! buffer is left in flight.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::Cell;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::cqueue;
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
    /// Registered with `IOU_PBUF_RING_INC`: the kernel fills a buffer a
    /// part at a time, each completion taking the next bytes of it.
    incremental: Cell<bool>,
    /// Per buffer: where the next completion's data starts.
    consumed: Box<[Cell<u32>]>,
    /// Per buffer: completions reaped whose data is not released yet.
    pending: Box<[Cell<u32>]>,
    /// Per buffer: the kernel is done filling it (it goes back to the
    /// kernel when nothing reaped from it is pending).
    filled: Box<[Cell<bool>]>,
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
            incremental: Cell::new(false),
            consumed: (0..entries).map(|_| Cell::new(0)).collect(),
            pending: (0..entries).map(|_| Cell::new(0)).collect(),
            filled: (0..entries).map(|_| Cell::new(false)).collect(),
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

    /// Notes that the ring was registered for incremental consumption.
    pub fn set_incremental(&self) {
        self.incremental.set(true);
    }

    /// Registered for incremental consumption.
    pub fn is_incremental(&self) -> bool {
        self.incremental.get()
    }

    /// A completion with `flags` handed us `len` bytes of buffer `bid`:
    /// where in the buffer they start. Called as completions are reaped,
    /// in the kernel's order, which is the order it filled the buffer in
    /// (the owners may process them in another).
    pub fn reap(&self, bid: u16, len: usize, flags: u32) -> u32 {
        let i = bid as usize;
        self.pending[i].set(self.pending[i].get() + 1);
        let start = self.consumed[i].get();
        if self.incremental.get() && cqueue::buffer_more(flags) {
            self.consumed[i].set(start + len as u32);
        } else {
            self.consumed[i].set(0);
            self.filled[i].set(true);
        }
        start
    }

    /// Buffers the kernel cannot fill now because of us: data of them is
    /// reaped and not released, or they are full and not given back yet.
    pub fn outstanding(&self) -> u32 {
        let held = |i: usize| self.pending[i].get() > 0 || self.filled[i].get();
        (0..self.entries as usize).filter(|&i| held(i)).count() as u32
    }

    /// Done with the data of one reaped completion in buffer `bid`: the
    /// buffer goes back to the kernel once the kernel is done filling it
    /// and no reaped data of it is left.
    pub fn release(&self, bid: u16) {
        let i = bid as usize;
        let left = self.pending[i].get().saturating_sub(1);
        self.pending[i].set(left);
        if left == 0 && self.filled[i].replace(false) {
            self.push(bid);
            self.publish();
        }
    }

    /// The `len` bytes at `start` of buffer `bid`, as [`BufRing::reap`]
    /// placed a completion's data.
    ///
    /// # Safety
    /// A reaped completion named these bytes and has not been released;
    /// the slice must be gone before it is.
    pub unsafe fn buf(&self, bid: u16, start: u32, len: usize) -> &[u8] {
        assert!(bid < self.entries);
        let start = start as usize;
        assert!(start + len <= self.buf_size);
        // SAFETY: in bounds by the assertions; the kernel wrote these
        // `len` bytes and writes only past them until the buffer is given
        // back (caller).
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.as_ptr().add(bid as usize * self.buf_size + start),
                len,
            )
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
