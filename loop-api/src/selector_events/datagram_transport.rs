//! The datagram transport on readiness (asyncio's
//! `_SelectorDatagramTransport`), for UDP and AF_UNIX datagram sockets.
//!
//! # As in asyncio
//! - Each readiness event receives one datagram (up to 256 KiB) and hands
//!   it to `datagram_received` with the sender's address.
//! - Errors of one send or receive (an ICMP "port unreachable" surfacing
//!   as `ECONNREFUSED`, for instance) go to `error_received`; the endpoint
//!   stays open and keeps receiving.
//! - `sendto` sends at once when nothing is queued, else queues the
//!   datagram (counted with 8 bytes of header, as asyncio does) and drains
//!   the queue when the socket is writable; flow control as for streams.
//! - On a connected endpoint, `sendto` takes no address or the peer's;
//!   writes after the connection is lost are dropped, with asyncio's
//!   warning from the fifth on.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use socket2::{SockAddr, Socket};

use super::recv_from_init;
use super::socket_transport::{put_read_buf, take_read_buf};
use crate::base_events::sockets::{is_retry, py_addr, raw_fd};
use crate::base_events::BaseLoop;
use crate::events::RawFd;
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::DatagramProtocol;
use crate::transports::flow_control::FlowControl;
use crate::transports::lifecycle::{self, SocketInfo};
use crate::transports::{BaseTransport, DatagramTransport, ExtraInfo};

/// asyncio counts each queued datagram with this many bytes of header.
const DATAGRAM_HEADER: usize = 8;

/// asyncio's `_SelectorDatagramTransport`.
pub struct DatagramSocketTransport {
    lp: Rc<dyn BaseLoop>,
    this: Weak<DatagramSocketTransport>,
    sock: RefCell<Option<Rc<Socket>>>,
    fd: RawFd,
    protocol: RefCell<Rc<dyn DatagramProtocol>>,
    /// The peer `sendto` defaults to (and insists on), if connected.
    address: Option<SockAddr>,
    /// The socket is connected: `send`, not `sendto`.
    connected: bool,
    queue: RefCell<VecDeque<(Vec<u8>, Option<SockAddr>)>>,
    queued_size: Cell<usize>,
    flow: FlowControl,
    conn_lost: Cell<u32>,
    closing: Cell<bool>,
    info: SocketInfo,
}

impl DatagramSocketTransport {
    /// Wraps a datagram socket (asyncio's `_make_datagram_transport`);
    /// `connection_made`, the reader and `waiter`'s result follow on the loop.
    pub fn create(
        lp: Rc<dyn BaseLoop>,
        sock: Rc<Socket>,
        protocol: Rc<dyn DatagramProtocol>,
        address: Option<SockAddr>,
        waiter: Option<Future<()>>,
    ) -> Result<Rc<dyn DatagramTransport>> {
        if lp.is_closed() {
            return Err(Error::loop_closed());
        }
        sock.set_nonblocking(true)?;
        let peer = sock.peer_addr().ok();
        let fd = raw_fd(&sock);
        let t = Rc::new_cyclic(|this| DatagramSocketTransport {
            lp: lp.clone(),
            this: this.clone(),
            fd,
            protocol: RefCell::new(protocol),
            address,
            connected: peer.is_some(),
            queue: RefCell::new(VecDeque::new()),
            queued_size: Cell::new(0),
            flow: FlowControl::default(),
            conn_lost: Cell::new(0),
            closing: Cell::new(false),
            info: SocketInfo::new(fd, sock.local_addr().ok(), peer),
            sock: RefCell::new(Some(sock)),
        });
        let weak: Weak<dyn BaseTransport> = t.this.clone();
        lp._register_transport(fd, weak);
        let (me, me2) = (t.clone(), t.clone());
        let made = move || {
            let proto = me.protocol.borrow().clone();
            let tr: Rc<dyn DatagramTransport> = me.clone();
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.connection_made(tr))) {
                // As asyncio, where it runs as a plain callback: reported,
                // and the transport goes on.
                me.report(
                    Error::from_panic(p),
                    "Exception in callback DatagramProtocol.connection_made()",
                );
            }
        };
        lifecycle::schedule_start(&*lp, made, move || me2.add_reader(), waiter)?;
        Ok(t)
    }

    fn me(&self) -> Rc<DatagramSocketTransport> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    fn socket(&self) -> Option<Rc<Socket>> {
        self.sock.borrow().clone()
    }

    fn add_reader(&self) {
        if self.closing.get() || self.sock.borrow().is_none() {
            return;
        }
        let me = self.me();
        if let Err(e) = self
            .lp
            ._add_reader(self.fd, Box::new(move || me.read_ready()))
        {
            self.fatal_error(e, "Fatal error: cannot watch the socket for reading.");
        }
    }

    fn read_ready(&self) {
        if self.conn_lost.get() > 0 {
            return;
        }
        let Some(sock) = self.socket() else { return };
        let mut buf = take_read_buf();
        let r = recv_from_init(&sock, &mut buf);
        let proto = self.protocol.borrow().clone();
        let outcome = match r {
            Ok((n, addr)) => catch_unwind(AssertUnwindSafe(|| {
                proto.datagram_received(&buf[..n], &addr)
            })),
            Err(e) if is_retry(&e) => Ok(()),
            Err(e) => catch_unwind(AssertUnwindSafe(|| proto.error_received(e.into()))),
        };
        put_read_buf(buf);
        // asyncio lets this reach the loop through the reader's handle and
        // goes on reading: the endpoint stays open.
        if let Err(p) = outcome {
            self.report(
                Error::from_panic(p),
                "Exception in callback DatagramSocketTransport._read_ready()",
            );
        }
    }

    fn send_one(
        &self,
        sock: &Socket,
        data: &[u8],
        addr: Option<&SockAddr>,
    ) -> std::io::Result<usize> {
        match addr {
            Some(a) if !self.connected => sock.send_to(data, a),
            _ => sock.send(data),
        }
    }

    fn sendto_ready(&self) {
        let Some(sock) = self.socket() else { return };
        loop {
            let Some((data, addr)) = self.queue.borrow_mut().pop_front() else {
                break;
            };
            self.queued_size
                .set(self.queued_size.get() - data.len() - DATAGRAM_HEADER);
            match self.send_one(&sock, &data, addr.as_ref()) {
                Ok(_) => {}
                Err(e) if is_retry(&e) => {
                    self.queued_size
                        .set(self.queued_size.get() + data.len() + DATAGRAM_HEADER);
                    self.queue.borrow_mut().push_front((data, addr));
                    break;
                }
                Err(e) => {
                    self.error_received(e.into());
                    return;
                }
            }
        }
        let proto = self.protocol.borrow().clone();
        if let Some(e) = self.flow.resume_if_drained(self.queued_size.get(), &*proto) {
            self.report(e, "protocol.resume_writing() failed");
        }
        if self.queue.borrow().is_empty() {
            let _ = self.lp._remove_writer(self.fd);
            if self.closing.get() {
                self.call_connection_lost(None);
            }
        }
    }

    fn error_received(&self, e: Error) {
        let proto = self.protocol.borrow().clone();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.error_received(e))) {
            self.fatal_error(
                Error::from_panic(p),
                "Fatal error: protocol.error_received() call failed.",
            );
        }
    }

    fn report(&self, exc: Error, message: &str) {
        let proto: Rc<dyn Any> = Rc::new(self.protocol.borrow().clone());
        let tr: Rc<dyn Any> = Rc::new(self.me() as Rc<dyn DatagramTransport>);
        lifecycle::report(&*self.lp, exc, message, tr, proto);
    }

    fn fatal_error(&self, exc: Error, message: &str) {
        let describe = crate::transports::describe(self);
        lifecycle::report_fatal(&*self.lp, &exc, message, &describe, || {
            self.report(exc.clone(), message)
        });
        self.force_close(Some(exc));
    }

    fn force_close(&self, exc: Option<Error>) {
        if self.conn_lost.get() > 0 {
            return;
        }
        if !self.queue.borrow().is_empty() {
            self.queue.borrow_mut().clear();
            self.queued_size.set(0);
            let _ = self.lp._remove_writer(self.fd);
        }
        if !self.closing.replace(true) {
            let _ = self.lp._remove_reader(self.fd);
        }
        self.conn_lost.set(self.conn_lost.get() + 1);
        let me = self.me();
        lifecycle::call_soon_or_now(&*self.lp, move || me.call_connection_lost(exc));
    }

    fn call_connection_lost(&self, exc: Option<Error>) {
        if self.sock.borrow().is_none() {
            return;
        }
        let proto = self.protocol.borrow().clone();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.connection_lost(exc))) {
            self.report(
                Error::from_panic(p),
                "Fatal error: protocol.connection_lost() call failed.",
            );
        }
        let _ = self.lp._remove_reader(self.fd);
        let _ = self.lp._remove_writer(self.fd);
        self.sock.borrow_mut().take();
        *self.protocol.borrow_mut() = Rc::new(lifecycle::Detached);
    }
}

impl BaseTransport for DatagramSocketTransport {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.info.get(name, self.sock.borrow().is_some())
    }

    fn is_closing(&self) -> bool {
        self.closing.get()
    }

    fn close(&self) {
        if self.lp.is_closed() {
            // As for stream transports: nothing can run later, tear down now.
            self.closing.set(true);
            self.conn_lost.set(self.conn_lost.get().max(1));
            self.queue.borrow_mut().clear();
            self.queued_size.set(0);
            self.call_connection_lost(None);
            return;
        }
        if self.closing.replace(true) {
            return;
        }
        let _ = self.lp._remove_reader(self.fd);
        if self.queue.borrow().is_empty() {
            self.conn_lost.set(self.conn_lost.get() + 1);
            let _ = self.lp._remove_writer(self.fd);
            let me = self.me();
            lifecycle::call_soon_or_now(&*self.lp, move || me.call_connection_lost(None));
        }
    }
}

impl DatagramTransport for DatagramSocketTransport {
    fn sendto(&self, data: &[u8], addr: Option<SockAddr>) -> Result<()> {
        let addr = match (&self.address, addr) {
            (Some(peer), Some(a)) if a != *peer => {
                return Err(Error::value(format!(
                    "Invalid address: must be None or {}",
                    py_addr(peer)
                )))
            }
            (Some(peer), _) => Some(peer.clone()),
            (None, a) => a,
        };
        if addr.is_none() && !self.connected {
            return Err(Error::value(
                "sendto() needs an address on an unconnected datagram transport",
            ));
        }
        if lifecycle::drop_lost_write(&self.conn_lost) {
            return Ok(());
        }
        let Some(sock) = self.socket() else {
            return Ok(());
        };
        if self.queue.borrow().is_empty() {
            match self.send_one(&sock, data, addr.as_ref()) {
                Ok(_) => return Ok(()),
                Err(e) if is_retry(&e) => {
                    let me = self.me();
                    self.lp
                        ._add_writer(self.fd, Box::new(move || me.sendto_ready()))?;
                }
                Err(e) => {
                    self.error_received(e.into());
                    return Ok(());
                }
            }
        }
        self.queue.borrow_mut().push_back((data.to_vec(), addr));
        self.queued_size
            .set(self.queued_size.get() + data.len() + DATAGRAM_HEADER);
        let proto = self.protocol.borrow().clone();
        if let Some(e) = self.flow.pause_if_over(self.queued_size.get(), &*proto) {
            self.report(e, "protocol.pause_writing() failed");
        }
        Ok(())
    }

    fn abort(&self) {
        self.force_close(None);
    }

    fn get_write_buffer_size(&self) -> usize {
        self.queued_size.get()
    }

    fn set_protocol(&self, protocol: Rc<dyn DatagramProtocol>) {
        *self.protocol.borrow_mut() = protocol;
    }

    fn get_protocol(&self) -> Rc<dyn DatagramProtocol> {
        self.protocol.borrow().clone()
    }
}
