//! The backend contract: what an OS mechanism supplies to the generic loop.
//!
//! [`crate::base_events::BaseEventLoop`] owns the ready queue, timers,
//! tasks, executor, signals and error handling; a [`Driver`] only waits for
//! the OS and reports what happened. This mirrors asyncio's `BaseEventLoop`
//! over a `selectors` selector or an IOCP proactor, and compio's one driver
//! contract over epoll, io_uring and IOCP.
//!
//! # Readiness
//! [`Driver::set_interest`] declares, per descriptor, whether the loop wants
//! readable and/or writable events; interest is level-triggered, as a
//! selector's is: while a descriptor stays readable, every `poll` reports it.
//! A driver without readiness (a pure proactor) returns
//! [`Error::NotSupported`] and `add_reader` fails with it.
//!
//! # Waking
//! [`Driver::notifier`] is a `Send + Sync` handle that makes a blocked
//! [`Driver::poll`] return. A notification sent before `poll` starts is not
//! lost: that `poll` returns at once. Spurious returns are allowed.
//!
//! # Completions
//! Completion-based drivers (io_uring, IOCP) will add operations whose
//! buffers they own until the kernel is done with them; the loop core
//! reaches them through the same `poll`, as [`IoEvent`]s carrying a
//! completion. The readiness part of the contract does not change.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::events::RawFd;
use crate::exceptions::Error;

/// One readiness event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoEvent {
    /// The descriptor.
    pub fd: RawFd,
    /// Readable (or hung up / in error: reading will not block).
    pub readable: bool,
    /// Writable (or in error).
    pub writable: bool,
}

/// Wakes a driver blocked in `poll`, from any thread.
pub trait Notify: Send + Sync {
    /// Makes the current or next `poll` return.
    fn notify(&self) -> io::Result<()>;
}

/// An OS I/O mechanism the loop core runs on.
pub trait Driver: 'static {
    /// The backend's name, as `AbstractEventLoop::backend_name` reports it.
    fn name(&self) -> &'static str;

    /// Waits up to `timeout` (`None`: until an event or a notification) and
    /// appends what happened to `events`. `EINTR` is returned as
    /// `ErrorKind::Interrupted`; the loop retries.
    fn poll(&mut self, timeout: Option<Duration>, events: &mut Vec<IoEvent>) -> io::Result<()>;

    /// The cross-thread wakeup.
    fn notifier(&self) -> Arc<dyn Notify>;

    /// Sets what the loop watches `fd` for; both false stops watching it.
    fn set_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> Result<(), Error>;

    /// Hands the OS what the driver has queued and not yet submitted. The
    /// loop calls it when it closes, since no `poll` follows: a driver that
    /// batches requests (io_uring's poll removals, which hold a reference to
    /// the file until processed) must not keep sockets alive past `close`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
