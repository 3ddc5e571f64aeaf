//! The stream socket transport on IOCP: the shared
//! [`ProactorSocketTransport`] over [`IocpStream`], its receive and send as
//! overlapped `WSARecv` and `WSASend` (asyncio's `_ProactorSocketTransport`
//! over `IocpProactor.recv`/`send`).
//!
//! - Receiving: one `WSARecv` at a time into an owned 64 KiB buffer, which
//!   comes back with the completion and is kept for a later receive (two
//!   per transport at most: the next receive starts while the protocol
//!   still reads the last one's data).
//! - Sending: one `WSASend` of the batch's chunks, one `WSABUF` each (the
//!   chunks move into the operation, no copy).
//! - Completions only record and schedule (see
//!   [`Owner`](loop_api::proactor_events::ops::Owner)); the transport
//!   processes them from its step on the ready queue, in order.
//! - A socket this loop's port cannot take (already associated with
//!   another port) gets the readiness transport (AFD polling) instead.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use loop_api::base_events::server::Server;
use loop_api::futures::Future;
use loop_api::proactor_events::ops::{OpId, Owner, Proactor};
use loop_api::proactor_events::{ProactorSocketTransport, RecvEvent, SendBatch, StreamIo};
use loop_api::protocols::Protocol;
use loop_api::selector_events::socket_transport::SocketTransport;
use loop_api::transports::Transport;
use loop_api::Result;
use socket2::Socket;
use windows_sys::Win32::Foundation::ERROR_OPERATION_ABORTED;

use super::driver::SubmitError;
use super::ops::{Completion, Request};
use super::sock_ops::raw;
use super::IocpEventLoop;

/// Bytes one receive may bring.
const RECV_BUFFER: usize = 64 * 1024;
const RECV: u8 = 0;
const SEND: u8 = 1;

/// asyncio's `_ProactorSocketTransport`, on IOCP.
pub(crate) type IocpSocketTransport = ProactorSocketTransport<IocpStream>;

/// A stream socket's overlapped receive and send.
pub(crate) struct IocpStream {
    lp: Rc<IocpEventLoop>,
    recv_op: Cell<Option<OpId>>,
    send_op: Cell<Option<OpId>>,
    /// Receive buffers between receives.
    spare: RefCell<Vec<Vec<u8>>>,
}

/// Wraps a connected stream socket (the driver's `make_socket_transport`).
pub(crate) fn create(
    lp: &Rc<IocpEventLoop>,
    sock: Rc<Socket>,
    protocol: Rc<dyn Protocol>,
    waiter: Option<Future<()>>,
    server: Option<Rc<Server>>,
) -> Result<Rc<dyn Transport>> {
    match lp.with_driver(|d| d.associate(raw(&sock))) {
        Ok(()) => {}
        // As for the `sock_*` methods: the readiness transport serves a
        // socket the port cannot take (and reports what is wrong with it).
        Err(SubmitError::ForeignPort | SubmitError::Io(_)) => {
            return SocketTransport::create(lp.clone(), sock, protocol, waiter, server);
        }
        Err(e @ SubmitError::Closed) => return Err(e.into()),
    }
    let io = IocpStream {
        lp: lp.clone(),
        recv_op: Cell::new(None),
        send_op: Cell::new(None),
        spare: RefCell::new(Vec::new()),
    };
    let t = ProactorSocketTransport::create(lp.clone(), sock, protocol, waiter, server, io)?;
    Ok(t)
}

impl IocpStream {
    fn cancel(&self, op: &Cell<Option<OpId>>) {
        if let Some(id) = op.get() {
            let _ = self.lp.try_with_driver(|d| d.cancel(id));
        }
    }
}

/// The completion handler: record, for the transport's step.
impl Owner<Completion> for IocpSocketTransport {
    fn complete(self: Rc<Self>, c: Completion) {
        self.push_completion(c);
    }
}

fn submit(t: &Rc<IocpSocketTransport>, request: Request, kind: u8) -> Result<OpId> {
    let Some(sock) = t.socket() else {
        return Err(loop_api::transports::lifecycle::connection_closed());
    };
    let owner: Rc<dyn Owner<Completion>> = t.clone();
    let id = t
        .io()
        .lp
        .with_driver(|d| d.submit(raw(&sock), request, owner, kind))?;
    Ok(id)
}

impl StreamIo for IocpStream {
    type Completion = Completion;

    fn start_recv(t: &Rc<IocpSocketTransport>) -> Result<()> {
        let buf = t
            .io()
            .spare
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; RECV_BUFFER]);
        let id = submit(t, Request::Recv { buf }, RECV)?;
        t.io().recv_op.set(Some(id));
        Ok(())
    }

    fn cancel_recv(&self) {
        self.cancel(&self.recv_op);
    }

    fn start_send(t: &Rc<IocpSocketTransport>, batch: SendBatch) -> Result<()> {
        let request = Request::Send {
            chunks: batch.chunks,
            head: batch.head,
        };
        let id = submit(t, request, SEND)?;
        t.io().send_op.set(Some(id));
        Ok(())
    }

    fn cancel_send(&self) {
        self.cancel(&self.send_op);
    }

    fn complete(t: &Rc<IocpSocketTransport>, c: Completion) {
        let io = t.io();
        match (c.kind, c.request) {
            (SEND, Request::Send { chunks, head }) => {
                io.send_op.set(None);
                t.on_sent(c.result, SendBatch { chunks, head });
            }
            (RECV, Request::Recv { buf }) => {
                io.recv_op.set(None);
                match c.result {
                    Ok(0) => t.on_recv(RecvEvent::Eof, false),
                    Ok(n) => t.on_recv(RecvEvent::Data(&buf[..n]), false),
                    Err(e) if e.raw_os_error() == Some(ERROR_OPERATION_ABORTED as i32) => {
                        t.on_recv(RecvEvent::Stopped, false)
                    }
                    Err(e) => t.on_recv(RecvEvent::Error(e), false),
                }
                io.spare.borrow_mut().push(buf);
            }
            _ => unreachable!("a stream transport only receives and sends"),
        }
    }
}
