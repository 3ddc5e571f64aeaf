//! [`Driver`] on io_uring: completion-based operations, readiness through
//! polls, and the loop's wait, all on one ring.
//!
//! # One submission per iteration
//! Requests are queued in the submission queue as the loop's callbacks
//! make them and handed to the kernel by the one `io_uring_enter` that
//! also waits, in [`Driver::poll`]. Only a full submission queue submits
//! early.
//!
//! # Completion tags
//! A request's `user_data` says what it is: the top two bits are the
//! class (a driver request, a readiness poll, an operation) and the rest
//! names the slot and its generation, so that a stale completion (a poll
//! replaced since, an operation whose slot was reused) is recognised.
//!
//! # Errors from `io_uring_enter`
//! `EINTR` is retried by the loop. `EBUSY` (the completion queue and the
//! kernel's overflow list are full) and `EAGAIN` (the kernel is short of
//! memory for requests) mean "reap first": the driver reaps, and the
//! requests stay queued for the next enter. Completions the kernel had to
//! hold back when the completion queue overflowed (`IORING_FEAT_NODROP`)
//! are flushed by an enter with `GETEVENTS`, which `poll` makes while the
//! overflow flag is up.
//!
//! # Closing
//! [`Driver::flush`] (the loop's `close`) cancels every operation still in
//! flight and waits, for at most [`CLOSE_DRAIN`], for their completions,
//! dropping what they kept. Dropping the driver does the same for what is
//! left. An operation the kernel still has not finished by then keeps its
//! memory forever (it is leaked, never freed under the kernel), and so does
//! the provided-buffer ring it may write into.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring, Probe};
use loop_api::base_events::server::Server;
use loop_api::base_events::BaseEventLoop;
use loop_api::driver::{Driver, IoEvent, IoModel, Notify};
use loop_api::events::LocalBoxFuture;
use loop_api::futures::Future;
use loop_api::idle_memory::trim_map;
use loop_api::proactor_events::accept::{self, Acceptors};
use loop_api::proactor_events::ops::{OpId, Operations, Owner, Proactor};
use loop_api::protocols::{Protocol, ProtocolFactory};
use loop_api::selector_events::SelectorIo;
use loop_api::transports::Transport;
use loop_api::{Error, Result};
use socket2::{SockAddr, Socket};

use crate::buf_ring::{BufRing, BGID};
use crate::ops::{Completion, Keep};

/// Tag of the eventfd poll that wakes the loop.
const WAKE: u64 = 0;
/// Tag of requests whose completion carries no news (removals, cancels).
const IGNORE: u64 = 1;
const CLASS_SHIFT: u32 = 62;
const CLASS_POLL: u64 = 1;
const CLASS_OP: u64 = 2;
const GENERATION_MASK: u32 = 0x3fff_ffff;

/// How long closing waits for cancelled operations to complete.
pub const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// How long the loop waits with nothing arriving before the buffer ring
/// gives memory back ([`BufRing::trim`]).
const TRIM_AFTER: Duration = Duration::from_secs(1);

/// How a [`UringDriver`] is set up.
#[derive(Clone, Debug)]
pub struct UringConfig {
    /// Submission queue entries (the completion queue has twice as many).
    /// This bounds batching, not the number of operations in flight: a
    /// full queue is submitted early, and a full completion queue overflows
    /// into the kernel's list, which the driver drains.
    pub entries: u32,
    /// Receive with multishot requests into a provided-buffer ring, where
    /// the kernel has them (Linux 6.0+); otherwise one receive request at a
    /// time into the transport's own buffer.
    pub provided_buffers: bool,
    /// Buffers in the provided-buffer ring (a power of two). 16 of them
    /// are offered to the kernel at first, twice as many each time it
    /// runs short, the most recently used first, so that the buffers in
    /// use stay in the CPU's caches.
    pub ring_buffers: u16,
    /// Size of each provided buffer. The default, 256 KiB, lets one
    /// completion carry a large message whole (one `data_received`, one
    /// write back) where 64 KiB split it; filled incrementally, small
    /// messages still share a buffer. Where incremental filling is asked
    /// for but the kernel lacks it, the same memory is cut into buffers of
    /// 64 KiB (256 of them by default), since each receive then takes a
    /// whole buffer.
    pub ring_buffer_size: usize,
    /// Have the kernel fill each provided buffer incrementally where it
    /// can (`IOU_PBUF_RING_INC`, Linux 6.12+): a receive takes only the
    /// bytes it fills, and the next one goes on in the same buffer, so a
    /// small message does not use up a whole buffer.
    pub incremental_buffers: bool,
    /// Accept with one multishot request per listener (Linux 5.19+);
    /// otherwise one accept request at a time.
    pub multishot_accept: bool,
}

impl Default for UringConfig {
    fn default() -> Self {
        UringConfig {
            entries: 256,
            provided_buffers: true,
            ring_buffers: 64,
            ring_buffer_size: 256 * 1024,
            incremental_buffers: true,
            multishot_accept: true,
        }
    }
}

/// Where incremental filling was asked for but the kernel lacks it, the
/// same memory cut into buffers of at most 64 KiB: filled whole, every
/// receive takes a buffer, however little it brings.
fn whole_buffers(mut count: u16, mut size: usize) -> (u16, usize) {
    const WHOLE_MAX: usize = 64 * 1024;
    while size > WHOLE_MAX && size & 1 == 0 && count <= u16::MAX / 4 {
        size /= 2;
        count *= 2;
    }
    (count, size)
}

/// What the running kernel offers, probed when the driver starts.
#[derive(Clone, Copy, Debug)]
pub struct Features {
    /// Multishot receives into the provided-buffer ring are in use.
    pub multishot_recv: bool,
    /// The ring's buffers are filled incrementally (`IOU_PBUF_RING_INC`,
    /// Linux 6.12+): a receive takes only what it fills of a buffer.
    pub incremental_buffers: bool,
    /// Multishot accepts are in use.
    pub multishot_accept: bool,
    /// Completions run only when the loop enters (`IORING_SETUP_DEFER_TASKRUN`).
    pub defer_taskrun: bool,
}

struct Watch {
    readable: bool,
    writable: bool,
    /// Tag of the poll request in flight, if armed.
    armed: Option<u64>,
}

/// The io_uring driver.
pub struct UringDriver {
    ring: ManuallyDrop<IoUring>,
    features: Features,
    wake: Arc<EventFd>,
    wake_armed: bool,
    watches: HashMap<RawFd, Watch>,
    poll_generation: u32,
    ops: Operations<Keep, Completion>,
    buf_ring: Option<Rc<BufRing>>,
    /// Events reaped early, to make room in a full completion queue.
    pending: Vec<IoEvent>,
    /// Completions copied out of the queue before they are dispatched.
    cqes: Vec<(u64, i32, u32)>,
    /// The loop is closing: completions are dropped, not dispatched.
    closing: bool,
    /// The listeners being served.
    pub(crate) acceptors: Acceptors<UringDriver>,
}

struct EventFd(OwnedFd);

impl Notify for EventFd {
    fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
        let n = unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // EAGAIN: the counter is saturated, so the loop is woken already.
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(());
        }
        Err(e)
    }
}

impl EventFd {
    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd.
        unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }
}

fn tag(class: u64, generation: u32, low: u32) -> u64 {
    (class << CLASS_SHIFT) | (u64::from(generation & GENERATION_MASK) << 32) | u64::from(low)
}

fn poll_mask(readable: bool, writable: bool) -> u32 {
    let mut m = 0;
    if readable {
        m |= libc::POLLIN | libc::POLLPRI;
    }
    if writable {
        m |= libc::POLLOUT;
    }
    m as u32
}

/// The running kernel's `(major, minor)`.
fn kernel_version() -> (u32, u32) {
    // SAFETY: `utsname` is plain old data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (0, 0);
    }
    let release: String = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8 as char)
        .collect();
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().unwrap_or(0));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Operations the backend cannot run without.
const REQUIRED_OPS: &[(u8, &str)] = &[
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::PollRemove::CODE, "POLL_REMOVE"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::Recv::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::Accept::CODE, "ACCEPT"),
    (opcode::Connect::CODE, "CONNECT"),
];

fn build_ring(entries: u32) -> io::Result<(IoUring, bool)> {
    let entries = entries.max(2);
    // A single-threaded loop: completions are best run when it enters,
    // not by interrupting whatever it is doing (Linux 6.1+).
    if let Ok(ring) = IoUring::builder()
        .setup_cqsize(entries * 2)
        .setup_single_issuer()
        .setup_defer_taskrun()
        // Raises IORING_SQ_TASKRUN while deferred work waits, so that a
        // non-waiting enter still asks for it to run (GETEVENTS).
        .setup_taskrun_flag()
        .build(entries)
    {
        return Ok((ring, true));
    }
    let ring = IoUring::builder()
        .setup_cqsize(entries * 2)
        .build(entries)?;
    Ok((ring, false))
}

impl UringDriver {
    /// A driver with the default configuration; fails where io_uring is
    /// unavailable or too old.
    pub fn new() -> io::Result<Self> {
        Self::with_config(&UringConfig::default())
    }

    /// A driver set up as `config` says.
    pub fn with_config(config: &UringConfig) -> io::Result<Self> {
        let (ring, defer_taskrun) = build_ring(config.entries)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11+)",
            ));
        }
        if !ring.params().is_feature_nodrop() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel lacks IORING_FEAT_NODROP (Linux 5.5+)",
            ));
        }
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in REQUIRED_OPS {
            if !probe.is_supported(*code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("the kernel lacks IORING_OP_{name}"),
                ));
            }
        }
        let version = kernel_version();
        let mut buf_ring = None;
        if config.provided_buffers && version >= (6, 0) {
            // SAFETY: the ring memory is owned by `r`, which the driver
            // keeps until the io_uring is closed (see `Drop`), or leaks; a
            // ring whose registration failed is not the kernel's.
            let register = |r: &BufRing, flags| unsafe {
                ring.submitter().register_buf_ring_with_flags(
                    r.ring_addr(),
                    r.entries(),
                    BGID,
                    flags,
                )
            };
            // Incremental consumption (Linux 6.12+) first: a receive takes
            // only what it fills of a buffer, so small messages share one.
            if config.incremental_buffers && version >= (6, 12) {
                let r = BufRing::new(config.ring_buffers, config.ring_buffer_size)?;
                if register(&r, io_uring::types::IOU_PBUF_RING_INC as u16).is_ok() {
                    r.set_incremental();
                    buf_ring = Some(Rc::new(r));
                }
            }
            if buf_ring.is_none() {
                let (n, size) = if config.incremental_buffers {
                    whole_buffers(config.ring_buffers, config.ring_buffer_size)
                } else {
                    (config.ring_buffers, config.ring_buffer_size)
                };
                let r = BufRing::new(n, size)?;
                if register(&r, 0).is_ok() {
                    buf_ring = Some(Rc::new(r));
                }
            }
        }
        let features = Features {
            multishot_recv: buf_ring.is_some(),
            incremental_buffers: buf_ring.as_ref().is_some_and(|r| r.is_incremental()),
            multishot_accept: config.multishot_accept && version >= (5, 19),
            defer_taskrun,
        };
        // SAFETY: eventfd returns a new descriptor we take ownership of, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, owned, open descriptor.
        let wake = Arc::new(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }));
        Ok(UringDriver {
            ring: ManuallyDrop::new(ring),
            features,
            wake,
            wake_armed: false,
            watches: HashMap::new(),
            poll_generation: 0,
            ops: Operations::new(GENERATION_MASK),
            buf_ring,
            pending: Vec::new(),
            cqes: Vec::new(),
            closing: false,
            acceptors: Acceptors::default(),
        })
    }

    /// What the kernel offered when the driver started.
    pub fn features(&self) -> Features {
        self.features
    }

    /// Operations in flight (submitted or queued, not yet completed).
    pub fn ops_in_flight(&self) -> usize {
        self.ops.len()
    }

    /// Provided buffers the kernel filled and the loop has not given back
    /// yet (always 0 without provided buffers).
    pub fn buffers_outstanding(&self) -> u32 {
        self.buf_ring.as_ref().map_or(0, |r| r.outstanding())
    }

    /// The provided-buffer ring, where multishot receives are in use.
    pub(crate) fn buf_ring(&self) -> Option<Rc<BufRing>> {
        self.buf_ring.clone()
    }

    /// Queues `entry` as an operation of `owner`'s; its completions go to
    /// `owner.complete` with `kind`, and `keep` comes back with the last.
    ///
    /// # Safety
    /// Every pointer in `entry` points into `keep`'s heap memory (which the
    /// driver holds, unmoved, until the last completion), or to memory that
    /// the caller otherwise keeps valid for as long (the provided-buffer
    /// ring, which the driver owns).
    pub(crate) unsafe fn submit(
        &mut self,
        entry: squeue::Entry,
        keep: Keep,
        owner: Rc<dyn Owner<Completion>>,
        kind: u8,
    ) -> Result<OpId> {
        if self.closing {
            return Err(Error::loop_closed());
        }
        let id = self.ops.insert(keep, owner, kind);
        let entry = entry.user_data(tag(CLASS_OP, id.generation, id.key));
        // SAFETY: the entry's pointers point into the `keep` just stored
        // in `self.ops` (caller's promise), where it stays until the
        // completion tagged with this key and generation is reaped.
        if let Err(e) = unsafe { self.push(entry) } {
            self.ops.remove(id);
            return Err(e.into());
        }
        Ok(id)
    }

    /// Submits what is queued now, and lets the kernel finish what that
    /// settles (a cancelled request's completion runs as deferred task work),
    /// so that the files cancelled requests held are released before this
    /// returns: what closing a transport's socket needs, for the peer to
    /// see the connection end without waiting for the loop's next enter.
    pub(crate) fn settle(&mut self) {
        if self.closing {
            return;
        }
        let _ = self.submit_now();
        for _ in 0..2 {
            if !self.ring.submission().taskrun() {
                break;
            }
            let _ = self.ring.submit();
        }
        let mut early = std::mem::take(&mut self.pending);
        self.reap(&mut early);
        self.pending = early;
    }

    /// Queues one request, submitting early if the queue is full.
    ///
    /// # Safety
    /// The memory `entry` points at stays valid until its completion.
    unsafe fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller's promise.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            self.submit_now()?;
        }
    }

    /// Submits what is queued, reaping first when the kernel says the
    /// completion side is full.
    fn submit_now(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => {
                    // Completions must be reaped before the kernel takes
                    // more; readiness news is kept for the next poll().
                    let mut early = std::mem::take(&mut self.pending);
                    let reaped = self.reap(&mut early);
                    self.pending = early;
                    if reaped == 0 {
                        // Nothing to reap: flush the overflow list, or give
                        // the kernel a moment to find memory (bounded: this
                        // runs inside a callback's write, which must not
                        // block on completions that may never come).
                        let _ = self.enter(Some(Duration::from_millis(1)));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn next_poll_generation(&mut self) -> u32 {
        self.poll_generation = (self.poll_generation.wrapping_add(1) & GENERATION_MASK).max(1);
        self.poll_generation
    }

    /// Arms a poll for every watched descriptor that has none in flight.
    fn arm_all(&mut self) -> io::Result<()> {
        if !self.wake_armed {
            let fd = types::Fd(self.wake.0.as_raw_fd());
            // SAFETY: a poll request carries no pointer into our memory.
            unsafe {
                self.push(
                    opcode::PollAdd::new(fd, libc::POLLIN as u32)
                        .multi(true)
                        .build()
                        .user_data(WAKE),
                )?;
            }
            self.wake_armed = true;
        }
        if self.watches.is_empty() {
            return Ok(());
        }
        let to_arm: Vec<(RawFd, u32)> = self
            .watches
            .iter()
            .filter(|(_, w)| w.armed.is_none())
            .map(|(fd, w)| (*fd, poll_mask(w.readable, w.writable)))
            .collect();
        for (fd, mask) in to_arm {
            let generation = self.next_poll_generation();
            let t = tag(CLASS_POLL, generation, fd as u32);
            // SAFETY: a poll request carries no pointer into our memory.
            unsafe {
                self.push(
                    opcode::PollAdd::new(types::Fd(fd), mask)
                        .build()
                        .user_data(t),
                )?;
            }
            if let Some(w) = self.watches.get_mut(&fd) {
                w.armed = Some(t);
            }
        }
        Ok(())
    }

    fn disarm(&mut self, t: u64) -> io::Result<()> {
        // SAFETY: a poll removal carries no pointer, only the tag.
        unsafe { self.push(opcode::PollRemove::new(t).build().user_data(IGNORE)) }
    }

    /// Reaps every completion in the queue: readiness into `out`,
    /// operations to their owners. Returns how many were reaped.
    fn reap(&mut self, out: &mut Vec<IoEvent>) -> usize {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let mut wake_fired = false;
        for &(t, res, flags) in &cqes {
            match t >> CLASS_SHIFT {
                CLASS_OP => self.complete_op(t, res, flags),
                CLASS_POLL => self.complete_poll(t, res, out),
                _ if t == WAKE => {
                    wake_fired = true;
                    if !cqueue::more(flags) {
                        self.wake_armed = false;
                    }
                }
                _ => {} // IGNORE
            }
        }
        if wake_fired {
            self.wake.drain();
        }
        let n = cqes.len();
        self.cqes = cqes;
        n
    }

    fn complete_op(&mut self, t: u64, res: i32, flags: u32) {
        // Placed now, in the kernel's order: the owners may process their
        // completions in another.
        let buf = match (cqueue::buffer_select(flags), &self.buf_ring) {
            (Some(bid), Some(r)) => Some((bid, r.reap(bid, res.max(0) as usize, flags))),
            _ => None,
        };
        let id = OpId {
            key: (t & 0xffff_ffff) as u32,
            generation: ((t >> 32) as u32) & GENERATION_MASK,
        };
        let more = cqueue::more(flags);
        if more {
            if self.closing {
                return;
            }
            let Some(op) = self.ops.get(id) else { return };
            let (owner, kind) = (op.owner.clone(), op.kind);
            owner.complete(Completion {
                id,
                kind,
                res,
                more,
                keep: None,
                buf,
            });
            return;
        }
        let Some(op) = self.ops.remove(id) else {
            return;
        };
        if self.closing {
            return; // dropped: the kernel is done with its memory
        }
        op.owner.complete(Completion {
            id,
            kind: op.kind,
            res,
            more,
            keep: Some(op.memory),
            buf,
        });
    }

    fn complete_poll(&mut self, t: u64, res: i32, out: &mut Vec<IoEvent>) {
        let fd = (t & 0xffff_ffff) as u32 as RawFd;
        let Some(w) = self.watches.get_mut(&fd) else {
            return;
        };
        if w.armed != Some(t) {
            return; // a poll replaced since; its news is stale
        }
        w.armed = None;
        if res < 0 {
            // EBADF and friends: report it ready, so the callback's own
            // I/O surfaces the error, as a selector does.
            out.push(IoEvent {
                fd,
                readable: w.readable,
                writable: w.writable,
            });
            return;
        }
        let m = res as u32;
        let err = m & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) as u32 != 0;
        out.push(IoEvent {
            fd,
            readable: w.readable && (m & (libc::POLLIN | libc::POLLPRI) as u32 != 0 || err),
            writable: w.writable && (m & libc::POLLOUT as u32 != 0 || err),
        });
    }

    /// Enters the kernel: submits, and waits up to `timeout` for one
    /// completion (`None`: no limit; zero: no wait).
    fn enter(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) if t.is_zero() => self.ring.submit(),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
            // Reaping makes room; what was not submitted stays queued.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EAGAIN)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Cancels every operation and waits, up to `limit`, for them all to
    /// complete (their memory is dropped as they do). Returns how many are
    /// still in flight.
    fn cancel_all_and_drain(&mut self, limit: Duration) -> usize {
        self.closing = true;
        for id in self.ops.ids() {
            self.cancel(id);
        }
        let deadline = Instant::now() + limit;
        let mut sink = Vec::new();
        loop {
            self.reap(&mut sink);
            if self.ops.is_empty() {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.enter(Some(left.min(Duration::from_millis(100)))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.reap(&mut sink);
        self.ops.len()
    }
}

impl Driver for UringDriver {
    type Io = Self;

    fn name(&self) -> &'static str {
        "uring"
    }

    fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<IoEvent>) -> io::Result<()> {
        out.append(&mut self.pending);
        if timeout == Some(Duration::ZERO)
            && self.watches.is_empty()
            && self.wake_armed
            && self.ring.submission().is_empty()
            && !self.ring.submission().cq_overflow()
            && !self.ring.submission().taskrun()
        {
            // Nothing to submit and nothing to wait for: completions are in
            // shared memory, so reap without entering the kernel.
            self.reap(out);
            return Ok(());
        }
        self.arm_all()?;
        // With completions waiting already, do not sleep: submit only.
        let mut timeout = if self.ring.completion().is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        // About to sleep long while the buffer ring holds more than an
        // idle loop needs: wake after `TRIM_AFTER` to give it back if
        // nothing came (memory follows the load; a few extra wakeups once
        // a load ends, none while idle and trimmed).
        let trim_wait = timeout.is_none_or(|t| t > TRIM_AFTER)
            && self.buf_ring.as_ref().is_some_and(|r| r.can_trim());
        if trim_wait {
            timeout = Some(TRIM_AFTER);
        }
        let entered = self.enter(timeout);
        if self.reap(out) == 0 && out.is_empty() && trim_wait {
            if let Some(r) = &self.buf_ring {
                r.trim();
            }
        }
        // Completions held back by an overflow come out by entering again.
        while self.ring.submission().cq_overflow() {
            if self.enter(Some(Duration::ZERO)).is_err() {
                break;
            }
            if self.reap(out) == 0 {
                break;
            }
        }
        entered
    }

    fn notifier(&self) -> Arc<dyn Notify> {
        self.wake.clone()
    }

    fn trim(&mut self) {
        self.ops.trim();
        trim_map(&mut self.watches);
    }

    fn flush(&mut self) -> io::Result<()> {
        // The loop is closing: hand the kernel the queued removals and
        // cancels, and finish what is in flight, so that no socket stays
        // open in the kernel and nothing keeps this loop alive.
        self.submit_now()?;
        self.cancel_all_and_drain(CLOSE_DRAIN);
        self.acceptors.clear();
        Ok(())
    }

    fn set_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> Result<()> {
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF).into());
        }
        // A selector refuses a descriptor that cannot be polled at once;
        // io_uring would only say so later, in a completion.
        if readable || writable {
            // SAFETY: fcntl(F_GETFD) only inspects the descriptor table.
            if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                return Err(io::Error::last_os_error().into());
            }
        }
        let old = self.watches.remove(&fd);
        if let Some(t) = old.as_ref().and_then(|w| w.armed) {
            self.disarm(t)?;
            if !readable && !writable {
                // An armed poll holds the file: hand the kernel its removal
                // now, and let the cancelled poll complete (deferred task
                // work runs only on an enter with GETEVENTS, which a second
                // submit makes now that the TASKRUN flag is up), so that
                // `remove_reader(fd); close(fd)` closes the socket at once
                // (a listener refuses connections), as on a selector. The
                // completion stays queued for the next poll.
                self.submit_now()?;
                let _ = self.ring.submit();
            }
        }
        if readable || writable {
            self.watches.insert(
                fd,
                Watch {
                    readable,
                    writable,
                    armed: None,
                },
            );
        }
        Ok(())
    }
}

/// Stream transports, serving and the stream `sock_*` methods as
/// completion-based operations; datagrams and `sendto`/`recvfrom` on
/// readiness.
impl IoModel<UringDriver> for UringDriver {
    fn make_socket_transport(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>> {
        crate::transport::create(lp, sock, protocol, waiter, server)
    }

    fn make_read_pipe_transport(
        lp: &Rc<BaseEventLoop<Self>>,
        pipe: std::fs::File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>> {
        if crate::pipe::takes_requests(&pipe) {
            crate::pipe::create_read(lp, pipe, protocol, waiter)
        } else {
            <SelectorIo as IoModel<Self>>::make_read_pipe_transport(lp, pipe, protocol, waiter)
        }
    }

    fn make_write_pipe_transport(
        lp: &Rc<BaseEventLoop<Self>>,
        pipe: std::fs::File,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn Transport>> {
        if crate::pipe::takes_requests(&pipe) {
            crate::pipe::create_write(lp, pipe, protocol, waiter)
        } else {
            <SelectorIo as IoModel<Self>>::make_write_pipe_transport(lp, pipe, protocol, waiter)
        }
    }

    fn start_serving(
        lp: &Rc<BaseEventLoop<Self>>,
        protocol_factory: ProtocolFactory,
        sock: Rc<Socket>,
        server: Rc<Server>,
        backlog: i32,
    ) -> Result<()> {
        accept::start_serving(lp, protocol_factory, sock, server, backlog)
    }

    fn stop_serving(lp: &Rc<BaseEventLoop<Self>>, sock: &Socket) {
        accept::stop_serving(lp, sock)
    }

    fn sock_recv(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        nbytes: usize,
    ) -> LocalBoxFuture<'static, Result<Vec<u8>>> {
        Box::pin(crate::sock_ops::sock_recv(lp.clone(), sock, nbytes))
    }

    fn sock_recv_into(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        buf: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<(Vec<u8>, usize)>> {
        Box::pin(crate::sock_ops::sock_recv_into(lp.clone(), sock, buf))
    }

    fn sock_sendall(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        data: Vec<u8>,
    ) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(crate::sock_ops::sock_sendall(lp.clone(), sock, data))
    }

    fn sock_connect(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        address: SockAddr,
    ) -> LocalBoxFuture<'static, Result<()>> {
        Box::pin(crate::sock_ops::sock_connect(lp.clone(), sock, address))
    }

    fn sock_accept(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
    ) -> LocalBoxFuture<'static, Result<(Socket, SockAddr)>> {
        Box::pin(crate::sock_ops::sock_accept(lp.clone(), sock))
    }

    loop_api::datagrams_on_readiness!();

    fn sock_sendfile_native(
        lp: &Rc<BaseEventLoop<Self>>,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> LocalBoxFuture<'static, Result<u64>> {
        SelectorIo::sock_sendfile_native(lp, sock, file, offset, count)
    }
}

impl Proactor for UringDriver {
    type Completion = Completion;

    /// Asks the kernel to cancel `id`; its completion (`-ECANCELED`, or its
    /// result if it finished first) still comes, and only then is its
    /// memory released. Cancelling an operation that is done does nothing.
    fn cancel(&mut self, id: OpId) {
        if !self.ops.request_cancel(id) {
            return;
        }
        let target = tag(CLASS_OP, id.generation, id.key);
        // SAFETY: a cancel request carries no pointer, only the tag.
        let _ = unsafe { self.push(opcode::AsyncCancel::new(target).build().user_data(IGNORE)) };
    }

    fn settle(&mut self) {
        UringDriver::settle(self)
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        let left = if self.ops.is_empty() {
            0
        } else {
            self.cancel_all_and_drain(CLOSE_DRAIN)
        };
        if left > 0 {
            // The kernel still holds these operations' memory: leak it
            // rather than free it under the kernel, and the buffer ring
            // they may still write into with it.
            self.ops.leak_all();
            std::mem::forget(self.buf_ring.take());
        }
        // SAFETY: dropped once, here; nothing uses the ring afterwards.
        // Closing it unregisters the buffer ring, which `buf_ring` (a field
        // dropped after this body) keeps allocated until then.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
    }
}

#[cfg(test)]
mod tests {
    use super::whole_buffers;

    #[test]
    fn whole_buffers_keep_the_memory_in_64_kib_pieces() {
        assert_eq!(whole_buffers(64, 256 * 1024), (256, 64 * 1024));
        assert_eq!(whole_buffers(4, 4096), (4, 4096));
        assert_eq!(whole_buffers(8, 64 * 1024), (8, 64 * 1024));
        // The ring holds at most 32768 entries.
        assert_eq!(whole_buffers(8192, 1 << 20), (16384, 512 * 1024));
    }
}
