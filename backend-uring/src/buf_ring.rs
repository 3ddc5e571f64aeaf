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
//! Not every buffer is offered at once. The kernel takes buffers from the
//! ring in the order they were offered, so offering all of them would
//! cycle every receive through all of the buffers' memory, which the CPU's
//! caches cannot hold. Instead 16 are offered at first, twice as many each
//! time the kernel finds none left (`ENOBUFS`, which ends a multishot
//! receive; its transport starts another), and a buffer given back goes to
//! the top of a stack of free ones: the next buffer offered is the one
//! released last, whose memory is still in the caches.
//!
//! Memory follows the load. The buffers are one anonymous mapping, whose
//! pages the kernel provides only when first written: a loop that never
//! receives holds none of it, and a light load touches only the few
//! buffers it cycles through. When the load falls ([`BufRing::trim`], once
//! the loop has been idle a while), the number offered shrinks back, and
//! buffers neither offered nor holding data give their pages back
//! (`MADV_DONTNEED`; the next write faults in zeroed pages).
//!
//! The ring and the buffers are one allocation each, never moved, and
//! outlive the registration: the driver drops its ring (which unregisters)
//! before this, and leaks this if any operation that may still pick a
//! buffer is left in flight.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::cell::{Cell, RefCell};
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::cqueue;
use io_uring::types::BufRingEntry;

/// The buffers receives share.
pub(crate) struct BufRing {
    ring: NonNull<BufRingEntry>,
    ring_layout: Layout,
    /// `entries * buf_size` bytes, mapped (not allocated) so that pages
    /// are only resident once written.
    bufs: NonNull<u8>,
    bufs_len: usize,
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
    /// Buffers neither in the ring nor ours to read: the next to offer
    /// the kernel is the one released last (still in the CPU's caches).
    free: RefCell<Vec<u16>>,
    /// Buffers offered to the kernel that it has not finished filling.
    in_ring: Cell<u16>,
    /// How many buffers to keep offered; doubled each time the kernel
    /// finds none left, halved by [`BufRing::trim`] while they are not.
    target: Cell<u16>,
    /// The kernel ran short since the last trim.
    grew: Cell<bool>,
    /// Per buffer: its pages may be resident (it was offered since its
    /// pages were last given back).
    resident: Box<[Cell<bool>]>,
}

/// How many buffers are offered at first: few, so that the ones in use stay
/// in the CPU's caches while the load is light.
const INITIAL_OFFERED: u16 = 16;

/// How few buffers [`BufRing::trim`] may go down to.
const MIN_OFFERED: u16 = 2;

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
        let bufs_len = (entries as usize)
            .checked_mul(buf_size)
            .filter(|&n| n > 0)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffer ring size"))?;
        // SAFETY: the layout has a non-zero size.
        let ring = NonNull::new(unsafe { alloc_zeroed(ring_layout) }.cast::<BufRingEntry>())
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: a fresh private anonymous mapping, at an address of the
        // kernel's choice; no existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bufs_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            // SAFETY: allocated just above with this layout.
            unsafe { dealloc(ring.as_ptr().cast(), ring_layout) };
            return Err(e);
        }
        let bufs = NonNull::new(addr.cast::<u8>()).expect("mmap returned a mapping");
        let r = BufRing {
            ring,
            ring_layout,
            bufs,
            bufs_len,
            entries,
            buf_size,
            tail: Cell::new(0),
            incremental: Cell::new(false),
            consumed: (0..entries).map(|_| Cell::new(0)).collect(),
            pending: (0..entries).map(|_| Cell::new(0)).collect(),
            filled: (0..entries).map(|_| Cell::new(false)).collect(),
            // Popped from the end: buffer 0 first.
            free: RefCell::new((0..entries).rev().collect()),
            in_ring: Cell::new(0),
            target: Cell::new(INITIAL_OFFERED.min(entries)),
            grew: Cell::new(false),
            resident: (0..entries).map(|_| Cell::new(false)).collect(),
        };
        r.top_up();
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
            self.in_ring.set(self.in_ring.get().saturating_sub(1));
        }
        start
    }

    /// The kernel found no buffer for a receive (`ENOBUFS`): offer twice
    /// as many from now on (up to all of them).
    pub fn grow(&self) {
        let target = self.target.get().saturating_mul(2).min(self.entries);
        self.target.set(target);
        self.grew.set(true);
        self.top_up();
    }

    /// The load fell (the driver calls this when the loop has waited a
    /// while with nothing arriving): unless the kernel ran short since the
    /// last call, offer half as many buffers from now on (down to
    /// [`MIN_OFFERED`]), and give back the pages of every buffer that is
    /// neither offered nor holding data. A buffer the kernel holds cannot
    /// be taken back; it leaves the ring when filled, and a later trim
    /// gives its pages back then.
    ///
    /// Returns the bytes given back.
    pub fn trim(&self) -> usize {
        if !self.grew.replace(false) {
            self.target
                .set((self.target.get() / 2).max(MIN_OFFERED.min(self.entries)));
        }
        let mut given = 0;
        for &bid in self.free.borrow().iter() {
            let i = bid as usize;
            if !self.resident[i].replace(false) {
                continue;
            }
            // SAFETY: buffer `bid` is inside the mapping; it is free (not
            // offered to the kernel, no reaped data of it pending), so
            // nothing reads or writes it until it is offered again, and
            // then the kernel's writes fault in fresh zeroed pages.
            let r = unsafe {
                libc::madvise(
                    self.bufs.as_ptr().add(i * self.buf_size).cast(),
                    self.buf_size,
                    libc::MADV_DONTNEED,
                )
            };
            if r == 0 {
                given += self.buf_size;
            } else {
                self.resident[i].set(true);
            }
        }
        given
    }

    /// [`BufRing::trim`] has something to do: more buffers are to be
    /// offered than an idle loop needs, or a free buffer may be resident.
    pub fn can_trim(&self) -> bool {
        self.target.get() > MIN_OFFERED.min(self.entries)
            || self
                .free
                .borrow()
                .iter()
                .any(|&b| self.resident[b as usize].get())
    }

    /// How many buffers are offered to the kernel now.
    #[cfg(test)]
    fn offered(&self) -> u16 {
        self.in_ring.get()
    }

    /// Offers free buffers, the most recently released first, until
    /// `target` are in the ring.
    fn top_up(&self) {
        let mut pushed = false;
        while self.in_ring.get() < self.target.get() {
            let Some(bid) = self.free.borrow_mut().pop() else {
                break;
            };
            self.push(bid);
            self.resident[bid as usize].set(true);
            self.in_ring.set(self.in_ring.get() + 1);
            pushed = true;
        }
        if pushed {
            self.publish();
        }
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
            self.free.borrow_mut().push(bid);
            self.top_up();
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
        // SAFETY: allocated and mapped in `new` with these sizes. The driver drops
        // this only after the ring that registered it is gone and nothing
        // in flight may pick a buffer (it leaks it otherwise).
        unsafe {
            dealloc(self.ring.as_ptr().cast(), self.ring_layout);
            libc::munmap(self.bufs.as_ptr().cast(), self.bufs_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffer ids offered to the kernel, oldest first.
    fn offered(r: &BufRing) -> Vec<u16> {
        let n = r.in_ring.get();
        (0..n)
            .map(|k| {
                let slot = (r.tail.get().wrapping_sub(n - k) & (r.entries - 1)) as usize;
                // SAFETY: `slot < entries`; the entry was written by `push`.
                unsafe { (*r.ring.as_ptr().add(slot)).bid() }
            })
            .collect()
    }

    /// A whole-buffer completion of `bid`, reaped and released.
    fn receive(r: &BufRing, bid: u16) {
        assert_eq!(r.reap(bid, 10, 0), 0);
        assert_eq!(r.outstanding(), 1);
        r.release(bid);
    }

    #[test]
    fn few_buffers_offered_at_first_then_twice_as_many_when_short() {
        let r = BufRing::new(64, 4096).unwrap();
        assert_eq!(offered(&r), (0..16).collect::<Vec<_>>());
        r.grow();
        assert_eq!(r.in_ring.get(), 32);
        r.grow();
        r.grow();
        r.grow();
        assert_eq!(r.in_ring.get(), 64, "never more than there are");
        assert!(r.free.borrow().is_empty());
    }

    #[test]
    fn the_buffer_released_last_is_offered_next() {
        let r = BufRing::new(64, 4096).unwrap();
        // The kernel fills 0, then 1; they come back in the order released.
        receive(&r, 0);
        receive(&r, 1);
        let o = offered(&r);
        assert_eq!(o.len(), 16);
        assert_eq!(
            &o[14..],
            &[0, 1],
            "released buffers go back, not fresh ones"
        );
        assert!(
            !o[..14].contains(&16),
            "no buffer beyond the first 16 was touched"
        );
        assert_eq!(r.outstanding(), 0);
    }

    /// Resident pages of buffer `bid` (`mincore`).
    fn resident_pages(r: &BufRing, bid: u16) -> usize {
        let page = 4096;
        let pages = r.buf_size.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is inside the mapping, page-aligned (the
        // mapping is, and buffer sizes here are multiples of a page);
        // `vec` has a byte per page.
        let rc = unsafe {
            libc::mincore(
                r.bufs.as_ptr().add(bid as usize * r.buf_size).cast(),
                r.buf_size,
                vec.as_mut_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mincore: {}", io::Error::last_os_error());
        vec.iter().filter(|b| *b & 1 == 1).count()
    }

    /// What the kernel does when it fills buffer `bid`: writes it.
    fn fill(r: &BufRing, bid: u16) {
        // SAFETY: in the mapping; nothing else uses it in these tests.
        unsafe {
            std::ptr::write_bytes(
                r.bufs.as_ptr().add(bid as usize * r.buf_size),
                7,
                r.buf_size,
            )
        };
    }

    #[test]
    fn a_new_ring_holds_no_resident_memory() {
        let r = BufRing::new(64, 256 * 1024).unwrap();
        let resident: usize = (0..64).map(|b| resident_pages(&r, b)).sum();
        assert_eq!(resident, 0, "16 MiB of buffers, none of it touched");
    }

    #[test]
    fn trimming_offers_fewer_and_gives_back_free_buffers() {
        let r = BufRing::new(64, 64 * 1024).unwrap();
        r.grow();
        r.grow();
        assert_eq!(r.offered(), 64);
        // A load passes: the kernel fills buffers 0..8, which come back.
        for bid in 0..8 {
            fill(&r, bid);
            receive(&r, bid);
        }
        assert_eq!(resident_pages(&r, 3), 16);
        // The load ends: each trim halves what is offered, down to 2.
        assert!(r.can_trim());
        for _ in 0..6 {
            r.trim();
        }
        assert_eq!(r.target.get(), MIN_OFFERED);
        // The kernel still holds all 64 (it cannot be asked to give one
        // back); as it fills them, they are not offered again...
        for bid in 8..16 {
            fill(&r, bid);
            receive(&r, bid);
        }
        assert_eq!(r.offered(), 56);
        assert_eq!(r.free.borrow().len(), 8);
        // ...and the next trim gives their memory back.
        assert_eq!(r.trim(), 8 * 64 * 1024);
        for bid in 8..16 {
            assert_eq!(resident_pages(&r, bid), 0, "buffer {bid} given back");
        }
        // A load again: they are offered again and written afresh.
        for _ in 0..5 {
            r.grow();
        }
        assert_eq!(r.offered(), 64);
        fill(&r, 8);
        assert_eq!(resident_pages(&r, 8), 16);
    }

    #[test]
    fn a_run_short_since_the_last_trim_keeps_the_offer() {
        let r = BufRing::new(64, 4096).unwrap();
        r.grow();
        assert_eq!(r.target.get(), 32);
        r.trim();
        assert_eq!(r.target.get(), 32, "the kernel ran short meanwhile");
        r.trim();
        assert_eq!(r.target.get(), 16);
    }

    #[test]
    fn incremental_data_follows_on_and_the_buffer_returns_when_filled() {
        let r = BufRing::new(16, 4096).unwrap();
        r.set_incremental();
        let more = 1 << 4; // IORING_CQE_F_BUF_MORE
        assert!(cqueue::buffer_more(more));
        // Two completions share buffer 0, reaped in the kernel's order...
        assert_eq!(r.reap(0, 100, more), 0);
        assert_eq!(r.reap(0, 50, 0), 100);
        // ...released in another: the buffer waits for both.
        r.release(0);
        assert_eq!(r.outstanding(), 1);
        r.release(0);
        assert_eq!(r.outstanding(), 0);
        assert_eq!(*offered(&r).last().unwrap(), 0);
    }
}
