//! Serving a listener with `AcceptEx` (asyncio's proactor
//! `_start_serving`).
//!
//! [`ACCEPTS_IN_FLIGHT`] accepts are kept outstanding per listener, each
//! into a fresh socket of the listener's family. Each completion is handled
//! on the ready queue (never inside `poll`): the connection inherits the
//! listener's context (`SO_UPDATE_ACCEPT_CONTEXT`), goes non-blocking, and
//! is wrapped in the loop's socket transport and attached to the server
//! (`loop_api::selector_events::accept::accept_one`: the protocol factory,
//! the server's bookkeeping, errors reported as asyncio does); then another
//! accept takes the finished one's place. `backlog` bounds nothing here:
//! the kernel completes an accept per connection, with no readiness event
//! to drain.
//!
//! When the process or system is out of sockets or memory (`WSAEMFILE`,
//! `WSAENOBUFS`), whether creating the accept socket or accepting, the
//! error goes to the exception handler ("socket.accept() out of system
//! resource"), and new accepts wait [`ACCEPT_RETRY_DELAY`] seconds, as on
//! the readiness backends. A connection the peer reset before it was
//! accepted is skipped silently.
//!
//! Stopping cancels the outstanding accepts and lets go of the listener at
//! once, so that it closes as soon as the server drops it (the cancelled
//! accepts' memory, their sockets included, stays with the driver until
//! their packets arrive, and those sockets are closed then). Listeners the
//! overlapped accepts do not fit (non-IP, or associated with another
//! port) are served by the readiness accept loop instead.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::{Rc, Weak};

use loop_api::base_events::server::Server;
use loop_api::events::{AbstractEventLoop, ExceptionContext, Loop, Step};
use loop_api::proactor_events::Inbox;
use loop_api::protocols::ProtocolFactory;
use loop_api::selector_events::accept::{
    self as readiness, accept_one, out_of_resources, ACCEPT_RETRY_DELAY,
};
use loop_api::{Error, Result};
use socket2::{Domain, Socket, Type};
use windows_sys::Win32::Foundation::{
    ERROR_INVALID_HANDLE, ERROR_NETNAME_DELETED, ERROR_OPERATION_ABORTED,
};
use windows_sys::Win32::Networking::WinSock::{SOCKET, WSAEINVAL, WSAENOTSOCK};

use super::driver::SubmitError;
use super::ops::{Completion, OpId, Owner, Request};
use super::sock_ops::{finish_accept, raw};
use super::IocpEventLoop;

/// Accepts kept outstanding per listener.
pub const ACCEPTS_IN_FLIGHT: usize = 2;

/// One listener being served; the driver keeps it (by socket) until the
/// server stops serving or the loop closes.
pub(crate) struct Acceptor {
    lp: Rc<IocpEventLoop>,
    this: Weak<Acceptor>,
    factory: ProtocolFactory,
    /// The listener, until serving stops.
    sock: RefCell<Option<Rc<Socket>>>,
    handle: SOCKET,
    domain: Domain,
    server: Rc<Server>,
    /// The accepts outstanding.
    ops: RefCell<Vec<OpId>>,
    /// Completions not handled yet.
    inbox: Inbox<Completion>,
    stopped: Cell<bool>,
    /// Out of resources: no new accepts until the retry timer.
    paused: Cell<bool>,
}

/// Starts accepting on `sock` for `server`.
pub(crate) fn start_serving(
    lp: &Rc<IocpEventLoop>,
    factory: ProtocolFactory,
    sock: Rc<Socket>,
    server: Rc<Server>,
    backlog: i32,
) -> Result<()> {
    let domain = match sock.local_addr() {
        Ok(a) if a.is_ipv4() => Some(Domain::IPV4),
        Ok(a) if a.is_ipv6() => Some(Domain::IPV6),
        _ => None,
    };
    let stream = matches!(sock.r#type(), Ok(t) if t == Type::STREAM);
    let domain = match domain {
        Some(d) if stream && associate(lp, &sock)? => d,
        _ => return readiness::start_serving(as_loop(lp), factory, sock, server, backlog),
    };
    let handle = raw(&sock);
    let a = Rc::new_cyclic(|this| Acceptor {
        lp: lp.clone(),
        this: this.clone(),
        factory,
        sock: RefCell::new(Some(sock)),
        handle,
        domain,
        server,
        ops: RefCell::new(Vec::new()),
        inbox: Inbox::default(),
        stopped: Cell::new(false),
        paused: Cell::new(false),
    });
    if let Some(old) = lp.with_driver(|d| d.acceptors.insert(handle, a.clone())) {
        old.stop();
    }
    if let Err(e) = a.fill() {
        if !a.out_of_resources(&e) {
            lp.with_driver(|d| d.acceptors.remove(&handle));
            a.stop();
            return Err(e);
        }
    }
    Ok(())
}

/// Stops accepting on `sock` and shuts the listener down.
pub(crate) fn stop_serving(lp: &Rc<IocpEventLoop>, sock: &Socket) {
    let handle = raw(sock);
    if let Some(a) = lp
        .try_with_driver(|d| d.acceptors.remove(&handle))
        .flatten()
    {
        a.stop();
    }
    // Whatever the readiness loop did (if it served this one), undone; and
    // the listener shut down.
    readiness::stop_serving(&as_loop(lp), sock);
}

/// Whether overlapped accepts on `sock` complete on this loop's port.
fn associate(lp: &IocpEventLoop, sock: &Socket) -> Result<bool> {
    match lp.with_driver(|d| d.associate(raw(sock))) {
        Ok(()) => Ok(true),
        Err(SubmitError::Closed) => Err(Error::loop_closed()),
        Err(SubmitError::ForeignPort | SubmitError::Io(_)) => Ok(false),
    }
}

fn as_loop(lp: &Rc<IocpEventLoop>) -> Loop {
    lp.clone()
}

impl Acceptor {
    fn me(&self) -> Rc<Acceptor> {
        self.this.upgrade().expect("used through its Rc")
    }

    /// Starts accepts until [`ACCEPTS_IN_FLIGHT`] are outstanding.
    fn fill(&self) -> Result<()> {
        while !self.stopped.get()
            && !self.paused.get()
            && self.ops.borrow().len() < ACCEPTS_IN_FLIGHT
        {
            let conn = Socket::new(self.domain, Type::STREAM, None)?;
            let owner: Rc<dyn Owner> = self.me();
            let id = self
                .lp
                .with_driver(|d| d.submit(self.handle, Request::accept(conn), owner, 0))?;
            self.ops.borrow_mut().push(id);
        }
        Ok(())
    }

    /// [`fill`](Self::fill), reporting what goes wrong.
    fn refill(&self) {
        if let Err(e) = self.fill() {
            if !self.out_of_resources(&e) {
                self.report("Error accepting a connection", e);
            }
        }
    }

    /// If `e` says the process or system is out of resources: reports it,
    /// and pauses new accepts for [`ACCEPT_RETRY_DELAY`] seconds.
    fn out_of_resources(&self, e: &Error) -> bool {
        let Error::Io(io) = e else { return false };
        if !out_of_resources(io) {
            return false;
        }
        self.report("socket.accept() out of system resource", e.clone());
        if !self.paused.replace(true) {
            let me = self.me();
            let _ = self.lp.call_later(
                ACCEPT_RETRY_DELAY,
                Box::new(move || {
                    me.paused.set(false);
                    let listening = me
                        .sock
                        .borrow()
                        .as_ref()
                        .is_some_and(|s| me.server._is_listening_on(s));
                    if listening {
                        me.refill();
                    }
                }),
                None,
            );
        }
        true
    }

    fn report(&self, message: &str, e: Error) {
        self.lp.call_exception_handler(
            ExceptionContext::new(message)
                .with_exception(e)
                .with_socket(self.handle as u64),
        );
    }

    fn stop(&self) {
        self.stopped.set(true);
        let ops = std::mem::take(&mut *self.ops.borrow_mut());
        for id in ops {
            let _ = self.lp.try_with_driver(|d| d.cancel(id));
        }
        // Let go of the listener now: the server closes it when it drops
        // its own reference, cancelled accepts or not.
        self.sock.borrow_mut().take();
    }

    /// Handles one accept's completion (on the ready queue).
    fn handle(&self, c: Completion) {
        self.ops.borrow_mut().retain(|id| *id != c.id);
        if self.stopped.get() || self.lp.is_closed() {
            return; // dropped: a connection accepted meanwhile is closed
        }
        let Some(listener) = self.sock.borrow().clone() else {
            return;
        };
        match c.result {
            Ok(_) => {
                let Request::Accept { conn, addrs } = c.request else {
                    unreachable!("an accept completes with its accept request")
                };
                match finish_accept(&listener, conn, &addrs) {
                    Ok((conn, _peer)) => {
                        accept_one(&as_loop(&self.lp), &self.factory, conn, &self.server)
                    }
                    Err(e) if is_reset(&e) => {}
                    Err(e) => self.report("Error accepting a connection", e.into()),
                }
                self.refill();
            }
            Err(e) => {
                let code = e.raw_os_error().unwrap_or(0);
                let gone = [
                    ERROR_OPERATION_ABORTED as i32,
                    ERROR_INVALID_HANDLE as i32,
                    WSAENOTSOCK,
                    WSAEINVAL,
                ];
                if gone.contains(&code) {
                    // The listener was closed (or cancelled) under us:
                    // nothing more to accept on it.
                    return;
                }
                if is_reset(&e) {
                    self.refill();
                    return;
                }
                let e = Error::from(e);
                if !self.out_of_resources(&e) {
                    self.report("Error accepting a connection", e);
                    self.refill();
                }
            }
        }
    }
}

/// The peer gave up on the connection before it was accepted.
fn is_reset(e: &io::Error) -> bool {
    e.raw_os_error() == Some(ERROR_NETNAME_DELETED as i32)
        || matches!(
            e.kind(),
            io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
        )
}

impl Owner for Acceptor {
    fn complete(self: Rc<Self>, c: Completion) {
        self.inbox.push(c, self.lp.as_ref(), || self.clone());
    }
}

impl Step for Acceptor {
    fn run_step(self: Rc<Self>) {
        while let Some(c) = self.inbox.pop() {
            self.handle(c);
        }
    }

    fn describe(&self) -> String {
        format!("<accept on socket {}>", self.handle)
    }
}
