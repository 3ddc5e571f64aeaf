//! [`Driver`] over `polling`.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use loop_api::driver::{Driver, IoEvent, Notify};
use loop_api::events::RawFd;
use loop_api::idle_memory::trim_map;
use loop_api::selector_events::SelectorIo;
use loop_api::Error;
use polling::{Event, Events, PollMode, Poller};

/// Readiness through `polling`, level-triggered.
pub struct PollingDriver {
    poller: Arc<Poller>,
    events: Events,
    /// What each registered descriptor is watched for.
    interest: HashMap<RawFd, (bool, bool)>,
}

struct PollerNotify(Arc<Poller>);

impl Notify for PollerNotify {
    fn notify(&self) -> io::Result<()> {
        self.0.notify()
    }
}

impl PollingDriver {
    /// A driver with a fresh poller.
    pub fn new() -> io::Result<Self> {
        Ok(PollingDriver {
            poller: Arc::new(Poller::new()?),
            events: Events::new(),
            interest: HashMap::new(),
        })
    }

    fn event(fd: RawFd, r: bool, w: bool) -> Event {
        Event::new(fd as usize, r, w)
    }

    fn add(&self, fd: RawFd, ev: Event) -> io::Result<()> {
        // SAFETY: the loop deletes the registration (set_interest with no
        // interest) in remove_reader/remove_writer and close(); a user who
        // closes a watched descriptor first gets what epoll does on close:
        // the kernel drops the registration.
        unsafe { self.poller.add_with_mode(fd, ev, PollMode::Level) }
    }

    fn modify(&self, fd: RawFd, ev: Event) -> io::Result<()> {
        self.poller
            .modify_with_mode(borrow(fd), ev, PollMode::Level)
    }
}

#[cfg(unix)]
fn borrow(fd: RawFd) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: the descriptor is only used for the duration of one
    // modify/delete call, while the caller's registration keeps it meaningful;
    // polling never closes it.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

#[cfg(windows)]
fn borrow(fd: RawFd) -> std::os::windows::io::BorrowedSocket<'static> {
    // SAFETY: as on Unix: used for one call, never closed by polling.
    unsafe { std::os::windows::io::BorrowedSocket::borrow_raw(fd) }
}

impl Driver for PollingDriver {
    type Io = SelectorIo;

    fn name(&self) -> &'static str {
        "select"
    }

    fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<IoEvent>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) && self.interest.is_empty() {
            // Nothing to observe but a wakeup, which carries no event and
            // stays pending for the next wait: skip the poller's syscalls
            // (it re-arms a timerfd and its notifier on every wait).
            return Ok(());
        }
        self.events.clear();
        self.poller.wait(&mut self.events, timeout)?;
        out.extend(self.events.iter().map(|ev| IoEvent {
            fd: ev.key as RawFd,
            readable: ev.readable,
            writable: ev.writable,
        }));
        Ok(())
    }

    fn notifier(&self) -> Arc<dyn Notify> {
        Arc::new(PollerNotify(self.poller.clone()))
    }

    fn trim(&mut self) {
        trim_map(&mut self.interest);
    }

    fn set_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> Result<(), Error> {
        let ev = Self::event(fd, readable, writable);
        match (self.interest.get(&fd).copied(), readable || writable) {
            (None, false) => Ok(()),
            (None, true) => {
                self.add(fd, ev)?;
                self.interest.insert(fd, (readable, writable));
                Ok(())
            }
            (Some(_), false) => {
                self.interest.remove(&fd);
                // The descriptor may be closed already; nothing is left to undo.
                let _ = self.poller.delete(borrow(fd));
                Ok(())
            }
            (Some(_), true) => {
                match self.modify(fd, ev) {
                    Ok(()) => {}
                    // Closed and reopened under the same number since:
                    // register it afresh.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => self.add(fd, ev)?,
                    Err(e) => return Err(e.into()),
                }
                self.interest.insert(fd, (readable, writable));
                Ok(())
            }
        }
    }
}
