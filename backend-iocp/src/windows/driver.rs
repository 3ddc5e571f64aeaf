//! [`IocpDriver`]: the loop core's [`Driver`] on one I/O completion port.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loop_api::driver::{Driver, IoEvent, Notify};
use loop_api::events::RawFd;
use loop_api::Error;
use windows_sys::Win32::System::IO::OVERLAPPED_ENTRY;

use super::afd::Afd;
use super::port::{self, CompletionPort, Key};

/// Packets dequeued per `GetQueuedCompletionStatusEx` call.
const ENTRIES: usize = 256;
/// How long dropping a driver waits for cancelled AFD polls to come back
/// before it leaks their buffers instead.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// The loop core's driver on an I/O completion port.
///
/// See the crate docs for how `poll`, the wakeup and readiness map onto
/// the port.
pub struct IocpDriver {
    port: Arc<CompletionPort>,
    wake: Arc<PortNotify>,
    entries: Vec<OVERLAPPED_ENTRY>,
    /// Opened on the first `set_interest`, so a loop that never watches a
    /// socket never touches AFD.
    afd: Option<Afd>,
}

/// The notifier: posts a [`Key::Wake`] packet. `pending` coalesces
/// wakeups: while one packet is queued and not yet dequeued, further
/// notifications add nothing (that packet already makes `poll` return).
struct PortNotify {
    port: Arc<CompletionPort>,
    pending: AtomicBool,
}

impl Notify for PortNotify {
    fn notify(&self) -> io::Result<()> {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.port.post(Key::Wake) {
                self.pending.store(false, Ordering::Release);
                return Err(e);
            }
        }
        Ok(())
    }
}

impl IocpDriver {
    /// A driver on a fresh completion port.
    pub fn new() -> io::Result<Self> {
        let port = Arc::new(CompletionPort::new()?);
        Ok(IocpDriver {
            wake: Arc::new(PortNotify {
                port: port.clone(),
                pending: AtomicBool::new(false),
            }),
            port,
            entries: port::entries(ENTRIES),
            afd: None,
        })
    }

    fn dispatch(&mut self, n: usize, out: &mut Vec<IoEvent>) {
        for entry in &self.entries[..n] {
            match Key::of(entry.lpCompletionKey) {
                Some(Key::Wake) => {
                    // Cleared once the packet is out of the port: a
                    // notification after this point posts a new one.
                    self.wake.pending.store(false, Ordering::Release);
                }
                Some(Key::Afd) => {
                    if let Some(afd) = self.afd.as_mut() {
                        afd.complete(entry, out);
                    }
                }
                // Issue 5: overlapped socket operations. Nothing issues
                // them yet, and nothing else is associated with the port.
                Some(Key::Operation) | None => {}
            }
        }
    }
}

impl Driver for IocpDriver {
    fn name(&self) -> &'static str {
        "iocp"
    }

    fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<IoEvent>) -> io::Result<()> {
        if let Some(afd) = self.afd.as_mut() {
            afd.arm(out)?;
        }
        // A socket found closed while arming is an event already: don't block.
        let timeout = if out.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        let n = self
            .port
            .wait(&mut self.entries, port::timeout_ms(timeout))?;
        self.dispatch(n, out);
        Ok(())
    }

    fn notifier(&self) -> Arc<dyn Notify> {
        self.wake.clone()
    }

    fn set_interest(&mut self, fd: RawFd, readable: bool, writable: bool) -> Result<(), Error> {
        if self.afd.is_none() {
            if !readable && !writable {
                return Ok(());
            }
            let afd = Afd::new(&self.port).map_err(|e| Error::NotSupported {
                feature: "add_reader",
                reason: format!("cannot open \\Device\\Afd for readiness polling: {e}"),
            })?;
            self.afd = Some(afd);
        }
        let afd = self.afd.as_mut().expect("opened above");
        afd.set_interest(fd, readable, writable)?;
        Ok(())
    }
}

impl Drop for IocpDriver {
    fn drop(&mut self) {
        let Some(afd) = self.afd.as_mut() else {
            return;
        };
        // The kernel writes each poll's buffers when it completes, so wait
        // for the cancelled polls to come back before freeing them.
        afd.cancel_all();
        let deadline = Instant::now() + DRAIN_LIMIT;
        let mut sink = Vec::new();
        while afd.in_flight() > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                afd.leak_in_flight();
                break;
            }
            match self
                .port
                .wait(&mut self.entries, port::timeout_ms(Some(left)))
            {
                Ok(n) => {
                    for entry in &self.entries[..n] {
                        if Key::of(entry.lpCompletionKey) == Some(Key::Afd) {
                            afd.complete(entry, &mut sink);
                        }
                    }
                }
                Err(_) => {
                    afd.leak_in_flight();
                    break;
                }
            }
        }
    }
}
