//! [`Driver`] straight on Linux's epoll, level-triggered, through `rustix`.
//!
//! `polling` re-arms a timerfd and its notifier with four extra system
//! calls on every wait; a loop that polls once per iteration pays that on
//! every round trip. Here a wait is one `epoll_pwait`: the timeout is
//! epoll's own (milliseconds, rounded up, so the loop never wakes before a
//! timer is due), and the cross-thread wakeup is an eventfd that stays
//! registered and is read only when it fired.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use loop_api::driver::{Driver, IoEvent, Notify};
use loop_api::events::RawFd;
use loop_api::idle_memory::trim_map;
use loop_api::selector_events::SelectorIo;
use loop_api::Error;
use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{eventfd, EventfdFlags};
use rustix::time::Timespec;

/// The key of the wakeup eventfd (descriptors are never this large).
const WAKE_KEY: u64 = u64::MAX;
/// Events taken per wait; more stay pending for the next one.
const EVENTS_PER_WAIT: usize = 1024;

/// Readiness from epoll, level-triggered, as a selector's.
pub struct EpollDriver {
    epoll: OwnedFd,
    wake: Arc<EventFd>,
    events: Vec<epoll::Event>,
    /// What each registered descriptor is watched for.
    interest: HashMap<RawFd, (bool, bool)>,
}

/// The wakeup: writing makes the eventfd readable until it is read.
struct EventFd(OwnedFd);

impl Notify for EventFd {
    fn notify(&self) -> io::Result<()> {
        match rustix::io::write(&self.0, &1u64.to_ne_bytes()) {
            // A full counter is still readable: the wakeup is not lost.
            Ok(_) | Err(rustix::io::Errno::AGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn flags(readable: bool, writable: bool) -> EventFlags {
    let mut f = EventFlags::empty();
    if readable {
        f |= EventFlags::IN | EventFlags::RDHUP;
    }
    if writable {
        f |= EventFlags::OUT;
    }
    f
}

fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the descriptor is used for one epoll_ctl call while the loop's
    // registration keeps it meaningful; epoll never closes it. A descriptor
    // the user closed early makes that call fail (EBADF/ENOENT), which is
    // handled, not undefined.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

impl EpollDriver {
    /// A driver with a fresh epoll instance and wakeup eventfd.
    pub fn new() -> io::Result<Self> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(&epoll, &wake, EventData::new_u64(WAKE_KEY), EventFlags::IN)?;
        Ok(EpollDriver {
            epoll,
            wake: Arc::new(EventFd(wake)),
            events: Vec::with_capacity(EVENTS_PER_WAIT),
            interest: HashMap::new(),
        })
    }

    fn drain_wakeup(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(self.wake.0.as_fd(), &mut buf);
    }
}

impl Driver for EpollDriver {
    type Io = SelectorIo;

    fn name(&self) -> &'static str {
        "select"
    }

    fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<IoEvent>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) && self.interest.is_empty() {
            // Nothing to observe but a wakeup, which carries no event and
            // stays pending for the next wait.
            return Ok(());
        }
        let ts = timeout.map(|d| Timespec {
            tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: d.subsec_nanos().into(),
        });
        self.events.clear();
        epoll::wait(&self.epoll, spare_capacity(&mut self.events), ts.as_ref())?;
        for ev in &self.events {
            let key = ev.data.u64();
            if key == WAKE_KEY {
                self.drain_wakeup();
                continue;
            }
            let fd = key as RawFd;
            let (r, w) = self.interest.get(&fd).copied().unwrap_or((false, false));
            let f = ev.flags;
            let err = f.intersects(EventFlags::ERR | EventFlags::HUP);
            let readable =
                r && (err || f.intersects(EventFlags::IN | EventFlags::PRI | EventFlags::RDHUP));
            let writable = w && (err || f.contains(EventFlags::OUT));
            if readable || writable {
                out.push(IoEvent {
                    fd,
                    readable,
                    writable,
                });
            }
        }
        Ok(())
    }

    fn notifier(&self) -> Arc<dyn Notify> {
        self.wake.clone()
    }

    fn trim(&mut self) {
        trim_map(&mut self.interest);
    }

    fn set_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> Result<(), Error> {
        let data = EventData::new_u64(fd as u64);
        let fl = flags(readable, writable);
        match (self.interest.get(&fd).copied(), readable || writable) {
            (None, false) => Ok(()),
            (None, true) => {
                epoll::add(&self.epoll, borrow(fd), data, fl).map_err(io::Error::from)?;
                self.interest.insert(fd, (readable, writable));
                Ok(())
            }
            (Some(_), false) => {
                self.interest.remove(&fd);
                // The descriptor may be closed already; nothing is left to undo.
                let _ = epoll::delete(&self.epoll, borrow(fd));
                Ok(())
            }
            (Some(_), true) => {
                match epoll::modify(&self.epoll, borrow(fd), data, fl) {
                    Ok(()) => {}
                    // Closed and reopened under the same number since:
                    // register it afresh.
                    Err(rustix::io::Errno::NOENT) => {
                        epoll::add(&self.epoll, borrow(fd), data, fl).map_err(io::Error::from)?
                    }
                    Err(e) => return Err(io::Error::from(e).into()),
                }
                self.interest.insert(fd, (readable, writable));
                Ok(())
            }
        }
    }
}
