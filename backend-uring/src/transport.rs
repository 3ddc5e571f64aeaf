//! The stream socket transport on io_uring (asyncio's
//! `_ProactorSocketTransport`), for TCP and Unix stream sockets.
//!
//! # How it runs
//! - Reading: one multishot receive into the driver's provided-buffer ring
//!   delivers data as it arrives, with no request per read; each chunk is
//!   handed to `data_received` straight from the ring buffer, which is then
//!   given back. Without provided buffers, one receive request at a time
//!   fills the transport's own 256 KiB buffer. A receive of zero bytes is
//!   EOF. Pausing cancels the receive; data that was already on its way is
//!   kept and delivered on resume, so nothing is lost.
//! - Writing: `write` appends to the buffer and, when no send is in flight,
//!   sends the whole buffer as one vectored `sendmsg` request (the chunks
//!   move into the request, no copy). More writes meanwhile wait for its
//!   completion and go out in the next. `get_write_buffer_size` counts what
//!   is buffered and what is in flight, as asyncio's proactor does; flow
//!   control is the shared [`FlowControl`].
//! - Closing: as on every backend (`transports::lifecycle`): `close`
//!   flushes, `abort` drops the buffer, `connection_lost` runs once, then
//!   the socket is closed. Requests still in flight are cancelled; their
//!   memory stays with the driver until their completions arrive.
//! - Completions only record and schedule (see `ops::Owner`); the protocol
//!   is called from this transport's step on the ready queue, in order.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use io_uring::{cqueue, opcode, types};
use loop_api::base_events::server::Server;
use loop_api::events::options::MAX_READ_SIZE;
use loop_api::events::{AbstractEventLoop, LocalBoxFuture, Loop, RawFd, Step};
use loop_api::futures::Future;
use loop_api::log::{self, Level};
use loop_api::protocols::Protocol;
use loop_api::transports::flow_control::FlowControl;
use loop_api::transports::lifecycle::{self, SocketInfo};
use loop_api::transports::{BaseTransport, ExtraInfo, ReadTransport, Transport, WriteTransport};
use loop_api::{Error, Result};
use socket2::Socket;

use crate::buf_ring::{BufRing, BGID};
use crate::ops::{Completion, Keep, OpId, Owner, SendBufs};
use crate::UringEventLoop;

const RECV: u8 = 0;
const SEND: u8 = 1;
/// The most chunks one `sendmsg` hands the kernel (well under `IOV_MAX`).
const MAX_IOV: usize = 64;

/// Buffered outgoing bytes, as whole chunks.
#[derive(Default)]
struct Outgoing {
    chunks: VecDeque<Vec<u8>>,
    /// Bytes of the first chunk already sent.
    head: usize,
    size: usize,
}

/// asyncio's `_ProactorSocketTransport`, on io_uring.
pub struct UringSocketTransport {
    lp: Rc<UringEventLoop>,
    this: Weak<UringSocketTransport>,
    /// `None` once closed.
    sock: RefCell<Option<Rc<Socket>>>,
    fd: RawFd,
    protocol: RefCell<Rc<dyn Protocol>>,
    server: RefCell<Option<Rc<Server>>>,
    ring: Option<Rc<BufRing>>,
    recv_op: Cell<Option<OpId>>,
    /// The receive went as far as it can: EOF or an error.
    read_done: Cell<bool>,
    /// Received while paused (or cancelling), for `resume_reading`.
    held: RefCell<Vec<u8>>,
    held_eof: Cell<bool>,
    send_op: Cell<Option<OpId>>,
    in_flight: Cell<usize>,
    outgoing: RefCell<Outgoing>,
    inbox: RefCell<VecDeque<Completion>>,
    scheduled: Cell<bool>,
    /// Inside this transport's step: writes only buffer, and the step
    /// sends them all in one request when it ends.
    in_step: Cell<bool>,
    flow: FlowControl,
    /// asyncio's `_conn_lost`.
    conn_lost: Cell<u32>,
    closing: Cell<bool>,
    eof: Cell<bool>,
    paused: Cell<bool>,
    empty_waiters: RefCell<Vec<Future<()>>>,
    info: SocketInfo,
}

impl UringSocketTransport {
    /// Wraps a connected stream socket: `TCP_NODELAY` on TCP, then
    /// `connection_made`, the first receive, and `waiter`'s result.
    pub fn create(
        lp: &Rc<UringEventLoop>,
        sock: Rc<Socket>,
        protocol: Rc<dyn Protocol>,
        waiter: Option<Future<()>>,
        server: Option<Rc<Server>>,
    ) -> Result<Rc<dyn Transport>> {
        if lp.is_closed() {
            return Err(Error::loop_closed());
        }
        sock.set_nonblocking(true)?;
        let sockname = sock.local_addr().ok();
        let peername = sock.peer_addr().ok();
        if sockname
            .as_ref()
            .is_some_and(|a| a.is_ipv4() || a.is_ipv6())
        {
            let _ = sock.set_tcp_nodelay(true);
        }
        let fd = sock.as_raw_fd();
        let ring = lp.with_driver(|d| d.buf_ring());
        let t = Rc::new_cyclic(|this| UringSocketTransport {
            lp: lp.clone(),
            this: this.clone(),
            sock: RefCell::new(Some(sock)),
            fd,
            protocol: RefCell::new(protocol),
            server: RefCell::new(server.clone()),
            ring,
            recv_op: Cell::new(None),
            read_done: Cell::new(false),
            held: RefCell::new(Vec::new()),
            held_eof: Cell::new(false),
            send_op: Cell::new(None),
            in_flight: Cell::new(0),
            outgoing: RefCell::new(Outgoing::default()),
            inbox: RefCell::new(VecDeque::new()),
            scheduled: Cell::new(false),
            in_step: Cell::new(false),
            flow: FlowControl::default(),
            conn_lost: Cell::new(0),
            closing: Cell::new(false),
            eof: Cell::new(false),
            paused: Cell::new(false),
            empty_waiters: RefCell::new(Vec::new()),
            info: SocketInfo::new(fd, sockname, peername),
        });
        if let Some(s) = &server {
            let weak: Weak<dyn Transport> = t.this.clone();
            s._attach(weak);
        }
        let weak: Weak<dyn BaseTransport> = t.this.clone();
        lp._register_transport(fd, weak);
        let (me, me2) = (t.clone(), t.clone());
        let made = move || {
            let proto = me.protocol.borrow().clone();
            let tr: Rc<dyn Transport> = me.clone();
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| proto.connection_made(tr))) {
                me.report(
                    Error::from_panic(e),
                    "Exception in callback Protocol.connection_made()",
                );
            }
        };
        lifecycle::schedule_start(&lp.as_loop(), made, move || me2.start_reading(), waiter)?;
        Ok(t)
    }

    fn me(&self) -> Rc<UringSocketTransport> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    fn lp(&self) -> Loop {
        self.lp.clone()
    }

    fn socket(&self) -> Option<Rc<Socket>> {
        self.sock.borrow().clone()
    }

    fn cancel(&self, op: &Cell<Option<OpId>>) {
        if let Some(id) = op.get() {
            let _ = self.lp.try_with_driver(|d| d.cancel(id));
        }
    }

    // ----- reading -------------------------------------------------------------------

    /// Arms the receive if reading is on and none is in flight.
    fn start_reading(&self) {
        if !self.is_reading()
            || self.read_done.get()
            || self.recv_op.get().is_some()
            || self.sock.borrow().is_none()
        {
            return;
        }
        let owner: Rc<dyn Owner> = self.me();
        let fd = types::Fd(self.fd);
        let submitted = match &self.ring {
            Some(_) => {
                let entry = opcode::RecvMulti::new(fd, BGID).build();
                // SAFETY: the request points at no memory of ours: the
                // kernel picks buffers from the provided ring, which the
                // driver owns and keeps registered while it lives.
                self.lp
                    .with_driver(|d| unsafe { d.submit(entry, Keep::Nothing, owner, RECV) })
            }
            None => {
                let mut buf = vec![0u8; MAX_READ_SIZE];
                let entry = opcode::Recv::new(fd, buf.as_mut_ptr(), buf.len() as u32).build();
                // SAFETY: the request writes into `buf`'s allocation, which
                // moves into the driver with it until the completion.
                self.lp
                    .with_driver(|d| unsafe { d.submit(entry, Keep::Buf(buf), owner, RECV) })
            }
        };
        match submitted {
            Ok(id) => self.recv_op.set(Some(id)),
            Err(e) => self.fatal_error(e, "Fatal error: cannot start receiving."),
        }
    }

    fn on_recv(&self, c: Completion) {
        if !c.more {
            self.recv_op.set(None);
        }
        let res = c.res;
        if res > 0 {
            let n = res as usize;
            match (&self.ring, c.keep) {
                (Some(ring), _) => {
                    let bid = cqueue::buffer_select(c.flags)
                        .expect("a receive with data names its buffer");
                    // SAFETY: the completion handed us buffer `bid`, filled
                    // with `n` bytes; it is recycled only after this use.
                    let data = unsafe { ring.buf(bid, n) };
                    self.received(data);
                    ring.recycle(bid);
                }
                (None, Some(Keep::Buf(buf))) => self.received(&buf[..n]),
                (None, _) => unreachable!("a plain receive keeps its buffer"),
            }
        } else if res == 0 {
            self.read_done.set(true);
            if self.paused.get() {
                self.held_eof.set(true);
            } else if self.conn_lost.get() == 0 && !self.closing.get() {
                self.on_eof();
            }
            return;
        } else {
            match -res {
                // Out of provided buffers, or cancelled (paused): re-armed
                // below if reading is on.
                libc::ENOBUFS | libc::ECANCELED | libc::EAGAIN | libc::EINTR => {}
                errno => {
                    self.read_done.set(true);
                    if self.conn_lost.get() == 0 {
                        self.fatal_error(
                            io::Error::from_raw_os_error(errno).into(),
                            "Fatal read error on socket transport",
                        );
                    }
                    return;
                }
            }
        }
        if !c.more {
            self.start_reading();
        }
    }

    /// Data from the socket: to the protocol, or held while paused.
    fn received(&self, data: &[u8]) {
        if self.conn_lost.get() > 0 || self.closing.get() {
            return;
        }
        if self.paused.get() {
            self.held.borrow_mut().extend_from_slice(data);
            return;
        }
        self.deliver(data);
    }

    fn deliver(&self, data: &[u8]) {
        let proto = self.protocol.borrow().clone();
        if let Some(bp) = proto.as_buffered() {
            let mut rest = data;
            while !rest.is_empty() && self.conn_lost.get() == 0 {
                let mut buf = match lifecycle::get_buffer(bp, rest.len()) {
                    Ok(b) => b,
                    Err(e) => {
                        self.fatal_error(e, "Fatal error: protocol.get_buffer() call failed.");
                        return;
                    }
                };
                let n = buf.len().min(rest.len());
                buf[..n].copy_from_slice(&rest[..n]);
                rest = &rest[n..];
                if let Err(e) = lifecycle::buffer_updated(bp, buf, n) {
                    self.fatal_error(e, "Fatal error: protocol.buffer_updated() call failed.");
                    return;
                }
            }
            return;
        }
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.data_received(data))) {
            self.fatal_error(
                Error::from_panic(p),
                "Fatal error: protocol.data_received() call failed.",
            );
        }
    }

    fn on_eof(&self) {
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} received EOF", self.repr()));
        }
        let proto = self.protocol.borrow().clone();
        match lifecycle::eof_received(&*proto) {
            Err(e) => self.fatal_error(e, "Fatal error: protocol.eof_received() call failed."),
            Ok(true) => {} // half-closed: nothing more to read
            Ok(false) => self.close(),
        }
    }

    /// What was held while paused, now that reading resumed.
    fn deliver_held(&self) {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        if !held.is_empty() && self.conn_lost.get() == 0 && !self.closing.get() {
            self.deliver(&held);
        }
        if self.held_eof.replace(false) && self.conn_lost.get() == 0 && !self.closing.get() {
            self.on_eof();
        }
    }

    // ----- writing -------------------------------------------------------------------

    fn write_allowed(&self, empty: bool, method: &str) -> Result<bool> {
        lifecycle::check_write(self.eof.get(), empty, method, &self.conn_lost)
    }

    fn buffer_size(&self) -> usize {
        self.outgoing.borrow().size + self.in_flight.get()
    }

    /// Sends what is buffered, if no send is in flight.
    fn start_send(&self) {
        if self.send_op.get().is_some() || self.conn_lost.get() > 0 || self.in_step.get() {
            return;
        }
        let (chunks, head) = {
            let mut o = self.outgoing.borrow_mut();
            if o.size == 0 {
                return;
            }
            let take = o.chunks.len().min(MAX_IOV);
            let chunks: VecDeque<Vec<u8>> = o.chunks.drain(..take).collect();
            let head = std::mem::take(&mut o.head);
            (chunks, head)
        };
        let bufs = SendBufs::new(chunks, head);
        let len = bufs.len();
        {
            let mut o = self.outgoing.borrow_mut();
            o.size -= len;
        }
        self.in_flight.set(len);
        let entry = opcode::SendMsg::new(types::Fd(self.fd), &bufs.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build();
        let owner: Rc<dyn Owner> = self.me();
        // SAFETY: the request reads the header, the iovecs and the chunks,
        // all inside the boxed `SendBufs`, which the driver keeps until the
        // completion (moving the box does not move its contents).
        let r = self
            .lp
            .with_driver(|d| unsafe { d.submit(entry, Keep::Send(bufs), owner, SEND) });
        match r {
            Ok(id) => self.send_op.set(Some(id)),
            Err(e) => {
                self.in_flight.set(0);
                self.fatal_error(e, "Fatal write error on socket transport");
            }
        }
    }

    fn on_send(&self, c: Completion) {
        self.send_op.set(None);
        self.in_flight.set(0);
        let Some(Keep::Send(mut bufs)) = c.keep else {
            unreachable!("a send keeps its buffers")
        };
        if self.conn_lost.get() > 0 {
            return; // aborted: the rest is dropped
        }
        if c.res < 0 {
            // `fatal_error` drops what is buffered.
            let e: Error = io::Error::from_raw_os_error(-c.res).into();
            for w in self.empty_waiters.borrow_mut().drain(..) {
                let _ = w.set_exception(e.clone());
            }
            self.fatal_error(e, "Fatal write error on socket transport");
            return;
        }
        // What the kernel did not take goes back to the front, in order
        // (nothing else is at the front: the send took the head).
        let mut sent = c.res as usize;
        let mut head = bufs.head;
        let mut unsent = std::mem::take(&mut bufs.chunks);
        while let Some(front) = unsent.front() {
            let left = front.len() - head;
            if sent < left {
                head += sent;
                break;
            }
            sent -= left;
            head = 0;
            unsent.pop_front();
        }
        if !unsent.is_empty() {
            let extra = unsent.iter().map(Vec::len).sum::<usize>() - head;
            let mut o = self.outgoing.borrow_mut();
            for chunk in unsent.into_iter().rev() {
                o.chunks.push_front(chunk);
            }
            o.head = head;
            o.size += extra;
        }
        self.maybe_resume_protocol(); // may write and grow the buffer
        if self.buffer_size() > 0 {
            self.start_send();
            return;
        }
        for w in self.empty_waiters.borrow_mut().drain(..) {
            let _ = w.set_result(());
        }
        if self.closing.get() {
            self.conn_lost.set(self.conn_lost.get() + 1);
            let me = self.me();
            lifecycle::call_soon_or_now(&self.lp(), move || me.call_connection_lost(None));
        } else if self.eof.get() {
            if let Some(s) = self.socket() {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
    }

    fn maybe_pause_protocol(&self) {
        let proto = self.protocol.borrow().clone();
        if let Some(e) = self.flow.pause_if_over(self.buffer_size(), &*proto) {
            self.report(e, "protocol.pause_writing() failed");
        }
    }

    fn maybe_resume_protocol(&self) {
        let proto = self.protocol.borrow().clone();
        if let Some(e) = self.flow.resume_if_drained(self.buffer_size(), &*proto) {
            self.report(e, "protocol.resume_writing() failed");
        }
    }

    fn push_outgoing(&self, parts: &[&[u8]]) {
        let mut o = self.outgoing.borrow_mut();
        for p in parts.iter().filter(|p| !p.is_empty()) {
            o.size += p.len();
            o.chunks.push_back(p.to_vec());
        }
    }

    // ----- closing -------------------------------------------------------------------

    fn report(&self, exc: Error, message: &str) {
        let proto: Rc<dyn Any> = Rc::new(self.protocol.borrow().clone());
        let tr: Rc<dyn Any> = Rc::new(self.me() as Rc<dyn Transport>);
        lifecycle::report(&self.lp(), exc, message, tr, proto);
    }

    fn fatal_error(&self, exc: Error, message: &str) {
        lifecycle::report_fatal(&self.lp(), &exc, message, &self.repr(), || {
            self.report(exc.clone(), message)
        });
        self.force_close(Some(exc));
    }

    fn force_close(&self, exc: Option<Error>) {
        if self.conn_lost.get() > 0 {
            return;
        }
        {
            let mut o = self.outgoing.borrow_mut();
            o.chunks.clear();
            o.size = 0;
            o.head = 0;
        }
        // What is in flight is dropped too (cancelled; whatever the kernel
        // sent before it saw the cancel is gone already).
        self.cancel(&self.send_op);
        self.in_flight.set(0);
        self.closing.set(true);
        self.cancel(&self.recv_op);
        self.conn_lost.set(self.conn_lost.get() + 1);
        let me = self.me();
        lifecycle::call_soon_or_now(&self.lp(), move || me.call_connection_lost(exc));
    }

    fn call_connection_lost(&self, exc: Option<Error>) {
        if self.sock.borrow().is_none() {
            return; // already torn down
        }
        let proto = self.protocol.borrow().clone();
        let e = exc.clone();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.connection_lost(e))) {
            self.report(
                Error::from_panic(p),
                "Fatal error: protocol.connection_lost() call failed.",
            );
        }
        self.cancel(&self.recv_op);
        self.cancel(&self.send_op);
        // Requests still in flight hold the file in the kernel until their
        // cancellation is processed: have it processed now, so that closing
        // the descriptor closes the socket (the peer sees the end at once).
        if self.recv_op.get().is_some() || self.send_op.get().is_some() {
            let _ = self.lp.try_with_driver(|d| d.settle());
        }
        self.sock.borrow_mut().take();
        *self.protocol.borrow_mut() = Rc::new(lifecycle::Detached);
        self.held.borrow_mut().clear();
        let closed = exc.unwrap_or_else(lifecycle::connection_closed);
        for w in self.empty_waiters.borrow_mut().drain(..) {
            let _ = w.set_exception(closed.clone());
        }
        if let Some(server) = self.server.borrow_mut().take() {
            let weak: Weak<dyn Transport> = self.this.clone();
            server._detach(&weak);
        }
    }

    fn repr(&self) -> String {
        loop_api::transports::describe(self)
    }
}

impl Owner for UringSocketTransport {
    fn complete(self: Rc<Self>, c: Completion) {
        self.inbox.borrow_mut().push_back(c);
        if !self.scheduled.replace(true) && self.lp.call_soon_step(self.clone()).is_err() {
            self.scheduled.set(false);
        }
    }
}

impl Step for UringSocketTransport {
    fn run_step(self: Rc<Self>) {
        self.scheduled.set(false);
        self.in_step.set(true);
        loop {
            let next = self.inbox.borrow_mut().pop_front();
            let Some(c) = next else { break };
            match c.kind {
                RECV => self.on_recv(c),
                _ => self.on_send(c),
            }
        }
        self.in_step.set(false);
        // What the protocol wrote while its data came in, in one request.
        self.start_send();
    }

    fn describe(&self) -> String {
        format!("<completions of {}>", self.repr())
    }
}

impl BaseTransport for UringSocketTransport {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.info.get(name, self.sock.borrow().is_some())
    }

    fn is_closing(&self) -> bool {
        self.closing.get()
    }

    fn close(&self) {
        if self.lp.is_closed() {
            // Nothing will flush or run a scheduled `connection_lost` any
            // more: tear down now.
            self.closing.set(true);
            self.conn_lost.set(self.conn_lost.get().max(1));
            self.outgoing.borrow_mut().chunks.clear();
            self.call_connection_lost(None);
            return;
        }
        if self.closing.replace(true) {
            return;
        }
        self.cancel(&self.recv_op);
        if self.buffer_size() == 0 {
            self.conn_lost.set(self.conn_lost.get() + 1);
            let me = self.me();
            lifecycle::call_soon_or_now(&self.lp(), move || me.call_connection_lost(None));
        }
    }

    fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        *self.protocol.borrow_mut() = protocol;
    }

    fn get_protocol(&self) -> Rc<dyn Protocol> {
        self.protocol.borrow().clone()
    }
}

impl ReadTransport for UringSocketTransport {
    fn is_reading(&self) -> bool {
        !self.paused.get() && !self.closing.get()
    }

    fn pause_reading(&self) {
        if !self.is_reading() {
            return;
        }
        self.paused.set(true);
        self.cancel(&self.recv_op);
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} pauses reading", self.repr()));
        }
    }

    fn resume_reading(&self) {
        if self.closing.get() || !self.paused.get() {
            return;
        }
        self.paused.set(false);
        if !self.held.borrow().is_empty() || self.held_eof.get() {
            let me = self.me();
            lifecycle::call_soon_or_now(&self.lp(), move || {
                if me.is_reading() {
                    me.deliver_held();
                }
            });
        }
        self.start_reading();
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} resumes reading", self.repr()));
        }
    }
}

impl WriteTransport for UringSocketTransport {
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        self.flow.set_limits(high, low)?;
        self.maybe_pause_protocol();
        Ok(())
    }

    fn get_write_buffer_limits(&self) -> (usize, usize) {
        self.flow.get_limits()
    }

    fn get_write_buffer_size(&self) -> usize {
        self.buffer_size()
    }

    fn write(&self, data: &[u8]) -> Result<()> {
        if !self.write_allowed(data.is_empty(), "write")? {
            return Ok(());
        }
        self.push_outgoing(&[data]);
        self.start_send();
        self.maybe_pause_protocol();
        Ok(())
    }

    fn writelines(&self, data: &[&[u8]]) -> Result<()> {
        let total: usize = data.iter().map(|d| d.len()).sum();
        if !self.write_allowed(total == 0, "writelines")? {
            return Ok(());
        }
        self.push_outgoing(data);
        self.start_send();
        self.maybe_pause_protocol();
        Ok(())
    }

    fn write_eof(&self) -> Result<()> {
        if self.closing.get() || self.eof.get() {
            return Ok(());
        }
        self.eof.set(true);
        if self.buffer_size() == 0 {
            if let Some(s) = self.socket() {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn abort(&self) {
        self.force_close(None);
    }

    fn _make_empty_waiter(&self) -> Option<Future<()>> {
        Some(lifecycle::empty_waiter(
            &self.lp(),
            self.conn_lost.get() > 0 || self.sock.borrow().is_none(),
            self.buffer_size() == 0,
            &self.empty_waiters,
        ))
    }

    fn _sendfile_native(
        &self,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> Option<LocalBoxFuture<'static, Result<u64>>> {
        let sock = self.socket()?;
        Some(lifecycle::sendfile_native(
            self.me(),
            self.lp(),
            sock,
            file,
            offset,
            count,
        ))
    }
}

impl Transport for UringSocketTransport {}
