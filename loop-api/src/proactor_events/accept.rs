//! Serving a listener with accept operations (asyncio's proactor
//! `_start_serving`), written once for every completion driver.
//!
//! A driver supplies [`AcceptIo`]: how to start one accept on a listener
//! and what a completion of one came to. The [`Acceptor`] here keeps
//! [`AcceptIo::ACCEPTS_IN_FLIGHT`] accepts outstanding (one multishot
//! accept counts as one), handles each completion on the ready queue
//! (never inside `poll`), wraps each connection in a transport attached to
//! the server ([`accept_one`]), and starts another accept in the finished
//! one's place. `backlog` bounds nothing here: the kernel completes an
//! accept per connection, with no readiness event to drain.
//!
//! Out of descriptors or memory, whether starting an accept or in its
//! completion, it takes the shared back-off ([`crate::base_events::serving`]):
//! the error is reported, the outstanding accepts are cancelled, and new
//! ones wait [`ACCEPT_RETRY_DELAY`](crate::base_events::serving::ACCEPT_RETRY_DELAY)
//! seconds. Stopping cancels the outstanding accepts and lets go of the
//! listener at once, so that it closes as soon as the server drops it; a
//! connection the kernel accepted meanwhile is closed.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::rc::{Rc, Weak};

use socket2::Socket;

use super::ops::{OpId, Owner, Proactor};
use super::Inbox;
use crate::base_events::server::Server;
use crate::base_events::serving::{accept_one, back_off, out_of_resources, report_accept_error};
use crate::base_events::sockets::raw_fd;
use crate::base_events::{BaseEventLoop, BaseLoop};
use crate::events::{AbstractEventLoop, RawFd, Step};
use crate::exceptions::{Error, Result};
use crate::protocols::ProtocolFactory;
use crate::selector_events;

/// What one accept's completion came to.
#[derive(Debug)]
pub enum Accepted {
    /// A new connection, ready to be wrapped (non-blocking, its accept
    /// context set).
    Connection(Socket),
    /// Nothing to wrap and nothing wrong: the peer gave up before it was
    /// accepted, or the call was interrupted. Accepting goes on.
    Skip,
    /// The listener was closed or shut down, or the accept was cancelled:
    /// this accept is over, and none replaces it.
    Gone,
    /// The accept failed: out of resources (back off), or reported to the
    /// exception handler.
    Failed(io::Error),
}

/// What a completion driver supplies to serve listeners with accept
/// operations.
pub trait AcceptIo: Proactor {
    /// Accepts kept outstanding per listener.
    const ACCEPTS_IN_FLIGHT: usize;

    /// Whether accept operations can serve `listener` on this driver; if
    /// not, the readiness accept loop serves it.
    fn can_accept_on(&mut self, _listener: &Socket) -> Result<bool> {
        Ok(true)
    }

    /// Starts one accept on `listener`; its completions go to `owner`.
    fn start_accept(
        &mut self,
        listener: &Socket,
        owner: Rc<dyn Owner<Self::Completion>>,
    ) -> Result<OpId>;

    /// Which accept `completion` is of, whether that accept goes on (a
    /// multishot accept), and what it came to. Runs on the ready queue.
    fn accepted(listener: &Socket, completion: Self::Completion) -> (OpId, bool, Accepted);

    /// The listeners this driver serves.
    fn acceptors(&mut self) -> &mut Acceptors<Self>;
}

/// The listeners a driver serves, by descriptor; the driver keeps them
/// until serving stops or the loop closes.
pub struct Acceptors<D: AcceptIo>(HashMap<RawFd, Rc<Acceptor<D>>>);

impl<D: AcceptIo> Default for Acceptors<D> {
    fn default() -> Self {
        Acceptors(HashMap::new())
    }
}

impl<D: AcceptIo> Acceptors<D> {
    /// Lets go of every listener (the loop is closing: their accepts were
    /// cancelled with everything else in flight).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

/// One listener being served.
pub struct Acceptor<D: AcceptIo> {
    lp: Rc<BaseEventLoop<D>>,
    this: Weak<Acceptor<D>>,
    factory: ProtocolFactory,
    /// The listener, until serving stops.
    sock: RefCell<Option<Rc<Socket>>>,
    fd: RawFd,
    server: Rc<Server>,
    /// The accepts outstanding.
    ops: RefCell<Vec<OpId>>,
    /// Completions not handled yet.
    inbox: Inbox<D::Completion>,
    stopped: Cell<bool>,
    /// Out of resources: no new accepts until the back-off ends.
    paused: Cell<bool>,
}

/// `_start_serving` on a completion driver: accepts on `sock` for `server`.
pub fn start_serving<D: AcceptIo>(
    lp: &Rc<BaseEventLoop<D>>,
    factory: ProtocolFactory,
    sock: Rc<Socket>,
    server: Rc<Server>,
    backlog: i32,
) -> Result<()> {
    if !lp.with_driver(|d| d.can_accept_on(&sock))? {
        return selector_events::accept::start_serving(lp.clone(), factory, sock, server, backlog);
    }
    let fd = raw_fd(&sock);
    let a = Rc::new_cyclic(|this| Acceptor {
        lp: lp.clone(),
        this: this.clone(),
        factory,
        sock: RefCell::new(Some(sock)),
        fd,
        server,
        ops: RefCell::new(Vec::new()),
        inbox: Inbox::default(),
        stopped: Cell::new(false),
        paused: Cell::new(false),
    });
    if let Some(old) = lp.with_driver(|d| d.acceptors().0.insert(fd, a.clone())) {
        old.stop();
    }
    if let Err(e) = a.fill() {
        lp.with_driver(|d| d.acceptors().0.remove(&fd));
        a.stop();
        return Err(e);
    }
    Ok(())
}

/// `_stop_serving` on a completion driver: stops accepting on `sock` and
/// shuts the listener down, so that new connections are refused even while
/// someone holds a clone of it.
pub fn stop_serving<D: AcceptIo>(lp: &Rc<BaseEventLoop<D>>, sock: &Socket) {
    let fd = raw_fd(sock);
    if let Some(a) = lp
        .try_with_driver(|d| d.acceptors().0.remove(&fd))
        .flatten()
    {
        a.stop();
        // Release the listener in the kernel now, not at the next poll.
        let _ = lp.try_with_driver(|d| d.settle());
    }
    // Undoes the readiness accept loop too, if it served this listener.
    let base: Rc<dyn BaseLoop> = lp.clone();
    selector_events::accept::stop_serving(&base, sock);
}

impl<D: AcceptIo> Acceptor<D> {
    fn me(&self) -> Rc<Self> {
        self.this.upgrade().expect("used through its Rc")
    }

    fn listener(&self) -> Option<Rc<Socket>> {
        self.sock.borrow().clone()
    }

    /// Starts accepts until [`AcceptIo::ACCEPTS_IN_FLIGHT`] are
    /// outstanding. Out of resources, it backs off and returns `Ok`.
    fn fill(&self) -> Result<()> {
        while !self.stopped.get()
            && !self.paused.get()
            && self.ops.borrow().len() < D::ACCEPTS_IN_FLIGHT
        {
            let Some(listener) = self.listener() else {
                return Ok(());
            };
            let owner: Rc<dyn Owner<D::Completion>> = self.me();
            match self.lp.with_driver(|d| d.start_accept(&listener, owner)) {
                Ok(id) => self.ops.borrow_mut().push(id),
                Err(Error::Io(e)) if out_of_resources(&e) => {
                    self.back_off(Error::Io(e));
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// [`fill`](Self::fill), reporting what goes wrong.
    fn refill(&self) {
        if let Err(e) = self.fill() {
            report_accept_error(&*self.lp, e, self.fd);
        }
    }

    /// Out of resources: reports `e`, cancels the outstanding accepts, and
    /// starts new ones after the back-off.
    fn back_off(&self, e: Error) {
        if self.paused.replace(true) {
            return;
        }
        for id in self.ops.borrow().iter() {
            self.lp.with_driver(|d| d.cancel(*id));
        }
        let Some(listener) = self.listener() else {
            return;
        };
        let me = self.me();
        back_off(&*self.lp, e, &self.server, &listener, move || {
            me.paused.set(false);
            me.refill();
        });
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
    fn handle(&self, c: D::Completion) {
        let Some(listener) = self.listener() else {
            return; // stopped: a connection accepted meanwhile is closed
        };
        let (id, more, outcome) = D::accepted(&listener, c);
        if !more {
            self.ops.borrow_mut().retain(|op| *op != id);
        }
        if self.stopped.get() || self.lp.is_closed() {
            return;
        }
        match outcome {
            Accepted::Connection(conn) => accept_one(&*self.lp, &self.factory, conn, &self.server),
            Accepted::Skip => {}
            Accepted::Gone => return,
            Accepted::Failed(e) if out_of_resources(&e) => {
                self.back_off(e.into());
                return;
            }
            Accepted::Failed(e) => report_accept_error(&*self.lp, e.into(), self.fd),
        }
        self.refill();
    }
}

impl<D: AcceptIo> Owner<D::Completion> for Acceptor<D> {
    fn complete(self: Rc<Self>, c: D::Completion) {
        self.inbox.push(c, &*self.lp, || self.clone());
    }
}

impl<D: AcceptIo> Step for Acceptor<D> {
    fn run_step(self: Rc<Self>) {
        while let Some(c) = self.inbox.pop() {
            self.handle(c);
        }
    }

    fn describe(&self) -> String {
        format!("<accept on {}>", self.fd)
    }
}
