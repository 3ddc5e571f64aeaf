//! Serving a listener with accept requests (asyncio's proactor
//! `_start_serving`).
//!
//! One multishot accept per listener (Linux 5.19+; one accept request at a
//! time otherwise) delivers each new connection as a completion; each is
//! wrapped in a transport attached to the server. `backlog` bounds nothing
//! here: the kernel hands over connections as they come, with no readiness
//! event to drain.
//!
//! When the process or system is out of descriptors or memory, the request
//! ends with that error: it is reported ("socket.accept() out of system
//! resource") and accepting resumes after `ACCEPT_RETRY_DELAY` seconds, as
//! on the readiness backends. Stopping cancels the request and shuts the
//! listener down; a connection the kernel accepted meanwhile is closed.

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::{Rc, Weak};

use io_uring::{opcode, types};
use loop_api::base_events::server::Server;
use loop_api::events::{AbstractEventLoop, ExceptionContext, Step};
use loop_api::proactor_events::Inbox;
use loop_api::protocols::ProtocolFactory;
use loop_api::selector_events::accept::{accept_one, out_of_resources, ACCEPT_RETRY_DELAY};
use loop_api::Result;
use socket2::Socket;

use crate::ops::{Completion, Keep, OpId, Owner};
use crate::UringEventLoop;

/// One listener being served; the driver keeps it (by descriptor) until
/// the server stops serving or the loop closes.
pub(crate) struct Acceptor {
    lp: Rc<UringEventLoop>,
    this: Weak<Acceptor>,
    factory: ProtocolFactory,
    sock: Rc<Socket>,
    server: Rc<Server>,
    multishot: bool,
    op: Cell<Option<OpId>>,
    /// Completions not yet handled: accepted descriptors or `-errno`, and
    /// whether the request goes on.
    inbox: Inbox<(i32, bool)>,
    stopped: Cell<bool>,
}

/// Starts accepting on `sock` for `server`.
pub(crate) fn start_serving(
    lp: &Rc<UringEventLoop>,
    factory: ProtocolFactory,
    sock: Rc<Socket>,
    server: Rc<Server>,
) -> Result<()> {
    let multishot = lp.with_driver(|d| d.features().multishot_accept);
    let a = Rc::new_cyclic(|this| Acceptor {
        lp: lp.clone(),
        this: this.clone(),
        factory,
        sock,
        server,
        multishot,
        op: Cell::new(None),
        inbox: Inbox::default(),
        stopped: Cell::new(false),
    });
    a.arm()?;
    let fd = a.sock.as_raw_fd();
    if let Some(old) = lp.with_driver(|d| d.acceptors.insert(fd, a)) {
        old.stop();
    }
    Ok(())
}

/// Stops accepting on `sock` and shuts the listener down, so that new
/// connections are refused even while someone holds a clone of it.
pub(crate) fn stop_serving(lp: &Rc<UringEventLoop>, sock: &Socket) {
    let fd = sock.as_raw_fd();
    if let Some(a) = lp.try_with_driver(|d| d.acceptors.remove(&fd)).flatten() {
        a.stop();
        // Release the listener in the kernel now, not at the next enter.
        let _ = lp.try_with_driver(|d| d.settle());
    }
    let _ = sock.shutdown(Shutdown::Both);
}

impl Acceptor {
    fn me(&self) -> Rc<Acceptor> {
        self.this.upgrade().expect("used through its Rc")
    }

    fn arm(&self) -> Result<()> {
        if self.stopped.get() || self.op.get().is_some() {
            return Ok(());
        }
        let fd = types::Fd(self.sock.as_raw_fd());
        let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        let entry = if self.multishot {
            opcode::AcceptMulti::new(fd).flags(flags).build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut())
                .flags(flags)
                .build()
        };
        let owner: Rc<dyn Owner> = self.me();
        // SAFETY: an accept without an address carries no pointer.
        let id = self
            .lp
            .with_driver(|d| unsafe { d.submit(entry, Keep::Nothing, owner, 0) })?;
        self.op.set(Some(id));
        Ok(())
    }

    fn stop(&self) {
        self.stopped.set(true);
        if let Some(id) = self.op.get() {
            let _ = self.lp.try_with_driver(|d| d.cancel(id));
        }
    }

    fn handle(&self, res: i32, more: bool) {
        if !more {
            self.op.set(None);
        }
        if res >= 0 {
            // SAFETY: a successful accept returns a new descriptor, ours.
            let conn = unsafe { Socket::from_raw_fd(res) };
            if self.stopped.get() || self.lp.is_closed() {
                return; // dropped: closed
            }
            let lp = self.lp.as_loop();
            accept_one(&lp, &self.factory, conn, &self.server);
            if !more {
                self.rearm();
            }
            return;
        }
        let e = io::Error::from_raw_os_error(-res);
        if self.stopped.get() || matches!(-res, libc::ECANCELED | libc::EINVAL | libc::EBADF) {
            return; // stopped, or the listener was shut down or closed
        }
        if out_of_resources(&e) {
            self.lp.call_exception_handler(
                ExceptionContext::new("socket.accept() out of system resource")
                    .with_exception(e.into())
                    .with_socket(self.sock.as_raw_fd()),
            );
            if let Some(id) = self.op.get() {
                self.lp.with_driver(|d| d.cancel(id));
            }
            let me = self.me();
            let _ = self.lp.call_later(
                ACCEPT_RETRY_DELAY,
                Box::new(move || {
                    if me.server._is_listening_on(&me.sock) {
                        me.rearm();
                    }
                }),
                None,
            );
            return;
        }
        if !matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::WouldBlock
                | io::ErrorKind::Interrupted
        ) {
            self.lp.call_exception_handler(
                ExceptionContext::new("Error accepting a connection")
                    .with_exception(e.into())
                    .with_socket(self.sock.as_raw_fd()),
            );
        }
        if !more {
            self.rearm();
        }
    }

    fn rearm(&self) {
        if let Err(e) = self.arm() {
            self.lp.call_exception_handler(
                ExceptionContext::new("Error accepting a connection")
                    .with_exception(e)
                    .with_socket(self.sock.as_raw_fd()),
            );
        }
    }
}

impl Owner for Acceptor {
    fn complete(self: Rc<Self>, c: Completion) {
        self.inbox
            .push((c.res, c.more), self.lp.as_ref(), || self.clone());
    }
}

impl Step for Acceptor {
    fn run_step(self: Rc<Self>) {
        while let Some((res, more)) = self.inbox.pop() {
            self.handle(res, more);
        }
    }

    fn describe(&self) -> String {
        format!("<accept on fd {}>", self.sock.as_raw_fd())
    }
}
