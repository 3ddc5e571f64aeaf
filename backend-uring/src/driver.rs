//! [`Driver`] on io_uring.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{opcode, squeue, types, IoUring};
use loop_api::driver::{Driver, IoEvent, Notify};
use loop_api::Error;

/// Completion tag of the eventfd poll that wakes the loop.
const WAKE: u64 = u64::MAX;
/// Completion tag of requests whose completion carries no news (removals).
const IGNORE: u64 = u64::MAX - 1;

/// Ring size; the driver flushes the submission queue when it fills, so
/// this bounds batching, not the number of watched descriptors.
const ENTRIES: u32 = 256;

struct Watch {
    readable: bool,
    writable: bool,
    /// Tag of the poll request in flight, if armed.
    armed: Option<u64>,
}

/// Readiness on io_uring: one-shot polls, re-armed each iteration.
pub struct UringDriver {
    ring: IoUring,
    wake: Arc<EventFd>,
    wake_armed: bool,
    watches: HashMap<RawFd, Watch>,
    generation: u32,
    /// Events reaped early, to make room in a full completion queue.
    pending: Vec<IoEvent>,
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

fn tag(fd: RawFd, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(fd as u32)
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

impl UringDriver {
    /// A driver with a fresh ring; fails where io_uring is unavailable.
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::new(ENTRIES)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the kernel lacks IORING_FEAT_EXT_ARG (Linux 5.11+)",
            ));
        }
        // SAFETY: eventfd returns a new descriptor we take ownership of, or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh, owned, open descriptor.
        let wake = Arc::new(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }));
        Ok(UringDriver {
            ring,
            wake,
            wake_armed: false,
            watches: HashMap::new(),
            generation: 0,
            pending: Vec::new(),
        })
    }

    /// Queues one request, flushing the submission queue if it is full.
    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: poll and poll-remove requests carry no buffers or
            // pointers into our memory; nothing must outlive the call.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            match self.ring.submit() {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full: the kernel takes no more
                    // submissions until we reap. Keep what we reap for the
                    // next poll().
                    let mut early = std::mem::take(&mut self.pending);
                    self.reap(&mut early);
                    self.pending = early;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1).max(1);
        self.generation
    }

    /// Arms a poll for every watched descriptor that has none in flight.
    fn arm_all(&mut self) -> io::Result<()> {
        if !self.wake_armed {
            let fd = types::Fd(self.wake.0.as_raw_fd());
            self.push(
                opcode::PollAdd::new(fd, libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(WAKE),
            )?;
            self.wake_armed = true;
        }
        let to_arm: Vec<(RawFd, u32)> = self
            .watches
            .iter()
            .filter(|(_, w)| w.armed.is_none())
            .map(|(fd, w)| (*fd, poll_mask(w.readable, w.writable)))
            .collect();
        for (fd, mask) in to_arm {
            let generation = self.next_generation();
            let t = tag(fd, generation);
            self.push(
                opcode::PollAdd::new(types::Fd(fd), mask)
                    .build()
                    .user_data(t),
            )?;
            if let Some(w) = self.watches.get_mut(&fd) {
                w.armed = Some(t);
            }
        }
        Ok(())
    }

    fn disarm(&mut self, t: u64) -> io::Result<()> {
        self.push(opcode::PollRemove::new(t).build().user_data(IGNORE))
    }

    fn reap(&mut self, out: &mut Vec<IoEvent>) {
        let mut wake_fired = false;
        for cqe in self.ring.completion() {
            let t = cqe.user_data();
            if t == WAKE {
                wake_fired = true;
                if !io_uring::cqueue::more(cqe.flags()) {
                    self.wake_armed = false;
                }
                continue;
            }
            if t == IGNORE {
                continue;
            }
            let fd = (t & 0xffff_ffff) as u32 as RawFd;
            let Some(w) = self.watches.get_mut(&fd) else {
                continue;
            };
            if w.armed != Some(t) {
                continue; // a poll replaced since; its news is stale
            }
            w.armed = None;
            let res = cqe.result();
            if res < 0 {
                // EBADF and friends: report it ready, so the callback's own
                // I/O surfaces the error, as a selector does.
                out.push(IoEvent {
                    fd,
                    readable: w.readable,
                    writable: w.writable,
                });
                continue;
            }
            let m = res as u32;
            let err = m & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) as u32 != 0;
            out.push(IoEvent {
                fd,
                readable: w.readable && (m & (libc::POLLIN | libc::POLLPRI) as u32 != 0 || err),
                writable: w.writable && (m & libc::POLLOUT as u32 != 0 || err),
            });
        }
        if wake_fired {
            self.wake.drain();
        }
    }
}

impl Driver for UringDriver {
    fn name(&self) -> &'static str {
        "uring"
    }

    fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<IoEvent>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO)
            && self.watches.is_empty()
            && self.wake_armed
            && self.ring.submission().is_empty()
        {
            // Nothing to submit and nothing to wait for: completions are in
            // shared memory, so reap without entering the kernel.
            out.append(&mut self.pending);
            self.reap(out);
            return Ok(());
        }
        self.arm_all()?;
        let r = match timeout {
            None => self.ring.submit_and_wait(1),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
        };
        match r {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // The completion queue overflowed: reaping below makes room.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
            Err(e) => return Err(e),
        }
        out.append(&mut self.pending);
        self.reap(out);
        Ok(())
    }

    fn notifier(&self) -> Arc<dyn Notify> {
        self.wake.clone()
    }

    fn flush(&mut self) -> io::Result<()> {
        loop {
            match self.ring.submit() {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    // The completion queue is full: reap into `pending`
                    // (the next poll, if any, reports them) and retry.
                    let mut early = std::mem::take(&mut self.pending);
                    self.reap(&mut early);
                    self.pending = early;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn set_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> Result<(), Error> {
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
