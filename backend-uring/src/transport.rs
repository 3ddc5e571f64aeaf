//! The stream socket transport on io_uring: the shared
//! [`ProactorSocketTransport`] over [`UringStream`], its receive and send
//! as io_uring requests.
//!
//! - Receiving: one multishot receive into the driver's provided-buffer
//!   ring delivers data as it arrives, with no request per read; each chunk
//!   is handed to the transport straight from the ring buffer, which is
//!   then given back. Without provided buffers, one receive request at a
//!   time fills an owned 256 KiB buffer.
//! - Sending: one `send` of the batch's chunk, or one vectored `sendmsg` of
//!   its chunks (moved into the request, no copy). A large write made
//!   while nothing is queued is first offered to the socket with a
//!   non-blocking `sendmsg` from the caller's bytes
//!   ([`StreamIo::send_now`]), as a readiness transport does; only what
//!   the socket does not take is copied into a chunk.
//! - Completions only record and schedule (see `ops::Owner`); the transport
//!   processes them from its step on the ready queue, in order.

use std::cell::Cell;
use std::io;
use std::rc::Rc;

use io_uring::{opcode, types};
use loop_api::base_events::server::Server;
use loop_api::events::options::MAX_READ_SIZE;
use loop_api::futures::Future;
use loop_api::proactor_events::ops::{OpId, Owner, Proactor};
use loop_api::proactor_events::{ProactorSocketTransport, RecvEvent, SendBatch, StreamIo};
use loop_api::protocols::Protocol;
use loop_api::transports::Transport;
use loop_api::Result;
use socket2::Socket;

use crate::buf_ring::{BufRing, BGID};
use crate::ops::{Completion, Keep, SendBufs};
use crate::UringEventLoop;

const RECV: u8 = 0;
const SEND: u8 = 1;

/// asyncio's `_ProactorSocketTransport`, on io_uring.
pub(crate) type UringSocketTransport = ProactorSocketTransport<UringStream>;

/// A stream socket's receive and send requests on io_uring.
pub(crate) struct UringStream {
    lp: Rc<UringEventLoop>,
    ring: Option<Rc<BufRing>>,
    recv_op: Cell<Option<OpId>>,
    send_op: Cell<Option<OpId>>,
}

/// Wraps a connected stream socket (the driver's `make_socket_transport`).
pub(crate) fn create(
    lp: &Rc<UringEventLoop>,
    sock: Rc<Socket>,
    protocol: Rc<dyn Protocol>,
    waiter: Option<Future<()>>,
    server: Option<Rc<Server>>,
) -> Result<Rc<dyn Transport>> {
    let io = UringStream {
        lp: lp.clone(),
        ring: lp.try_with_driver(|d| d.buf_ring()).flatten(),
        recv_op: Cell::new(None),
        send_op: Cell::new(None),
    };
    let t = ProactorSocketTransport::create(lp.clone(), sock, protocol, waiter, server, io)?;
    Ok(t)
}

impl UringStream {
    fn cancel(&self, op: &Cell<Option<OpId>>) {
        if let Some(id) = op.get() {
            let _ = self.lp.try_with_driver(|d| d.cancel(id));
        }
    }
}

/// The completion handler: record, for the transport's step.
impl Owner<Completion> for UringSocketTransport {
    fn complete(self: Rc<Self>, c: Completion) {
        self.push_completion(c);
    }
}

fn owner(t: &Rc<UringSocketTransport>) -> Rc<dyn Owner<Completion>> {
    t.clone()
}

impl StreamIo for UringStream {
    type Completion = Completion;

    fn start_recv(t: &Rc<UringSocketTransport>) -> Result<()> {
        let io = t.io();
        let fd = types::Fd(t.fd());
        let owner = owner(t);
        let id = match &io.ring {
            Some(_) => {
                let entry = opcode::RecvMulti::new(fd, BGID).build();
                // SAFETY: the request points at no memory of ours: the
                // kernel picks buffers from the provided ring, which the
                // driver owns and keeps registered while it lives.
                io.lp
                    .with_driver(|d| unsafe { d.submit(entry, Keep::Nothing, owner, RECV) })?
            }
            None => {
                let mut buf = vec![0u8; MAX_READ_SIZE];
                let entry = opcode::Recv::new(fd, buf.as_mut_ptr(), buf.len() as u32).build();
                // SAFETY: the request writes into `buf`'s allocation, which
                // moves into the driver with it until the completion.
                io.lp
                    .with_driver(|d| unsafe { d.submit(entry, Keep::Buf(buf), owner, RECV) })?
            }
        };
        io.recv_op.set(Some(id));
        Ok(())
    }

    fn cancel_recv(&self) {
        self.cancel(&self.recv_op);
    }

    fn start_send(t: &Rc<UringSocketTransport>, batch: SendBatch) -> Result<()> {
        let io = t.io();
        let fd = types::Fd(t.fd());
        let flags = libc::MSG_NOSIGNAL;
        let owner = owner(t);
        let id = if batch.chunks.len() == 1 {
            // One chunk (the common case): a plain `send`, with no header
            // or iovec for the kernel to copy in.
            let data = batch.slices().next().unwrap_or_default();
            // Longer than a u32 counts: a partial send, the rest goes next.
            let len = data.len().min(u32::MAX as usize) as u32;
            let entry = opcode::Send::new(fd, data.as_ptr(), len)
                .flags(flags)
                .build();
            // SAFETY: the request reads the chunk's heap memory, owned by
            // `batch`, which the driver keeps until the completion (moving
            // the batch does not move the chunk's bytes).
            io.lp
                .with_driver(|d| unsafe { d.submit(entry, Keep::Batch(batch), owner, SEND) })?
        } else {
            let bufs = SendBufs::new(batch);
            let entry = opcode::SendMsg::new(fd, &bufs.msg)
                .flags(flags as u32)
                .build();
            // SAFETY: the request reads the header, the iovecs and the
            // chunks, all inside the boxed `SendBufs`, which the driver
            // keeps until the completion (moving the box does not move its
            // contents).
            io.lp
                .with_driver(|d| unsafe { d.submit(entry, Keep::Send(bufs), owner, SEND) })?
        };
        io.send_op.set(Some(id));
        Ok(())
    }

    fn cancel_send(&self) {
        self.cancel(&self.send_op);
    }

    fn send_now(t: &UringSocketTransport, parts: &[&[u8]]) -> Option<io::Result<usize>> {
        let sock = t.socket()?;
        let bufs: Vec<io::IoSlice<'_>> = parts
            .iter()
            .take(Self::MAX_CHUNKS)
            .map(|p| io::IoSlice::new(p))
            .collect();
        Some(sock.send_vectored_with_flags(&bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL))
    }

    fn complete(t: &Rc<UringSocketTransport>, c: Completion) {
        let io = t.io();
        if c.kind == SEND {
            io.send_op.set(None);
            let batch = match c.keep {
                Some(Keep::Batch(batch)) => batch,
                Some(Keep::Send(bufs)) => (*bufs).into_batch(),
                _ => unreachable!("a send keeps its buffers"),
            };
            let res = if c.res < 0 {
                Err(io::Error::from_raw_os_error(-c.res))
            } else {
                Ok(c.res as usize)
            };
            t.on_sent(res, batch);
            return;
        }
        if !c.more {
            io.recv_op.set(None);
        }
        match c.res {
            n if n > 0 => match (&io.ring, c.keep) {
                (Some(ring), _) => {
                    let (bid, start) = c.buf.expect("a receive with data names its buffer");
                    // SAFETY: the completion handed us these `n` bytes of
                    // buffer `bid`; they are released only after this use.
                    let data = unsafe { ring.buf(bid, start, n as usize) };
                    t.on_recv(RecvEvent::Data(data), c.more);
                    ring.release(bid);
                }
                (None, Some(Keep::Buf(buf))) => {
                    t.on_recv(RecvEvent::Data(&buf[..n as usize]), c.more)
                }
                (None, _) => unreachable!("a plain receive keeps its buffer"),
            },
            0 => t.on_recv(RecvEvent::Eof, c.more),
            // Out of provided buffers: offer more, and receive again.
            n if -n == libc::ENOBUFS => {
                if let Some(ring) = &io.ring {
                    ring.grow();
                }
                t.on_recv(RecvEvent::Stopped, c.more)
            }
            // Cancelled (paused, closing) or interrupted.
            n if matches!(-n, libc::ECANCELED | libc::EAGAIN | libc::EINTR) => {
                t.on_recv(RecvEvent::Stopped, c.more)
            }
            n => t.on_recv(RecvEvent::Error(io::Error::from_raw_os_error(-n)), c.more),
        }
    }

    fn settle(&self) {
        // Requests still in flight hold the file in the kernel until their
        // cancellation is processed: have it processed now, so that closing
        // the descriptor closes the socket (the peer sees the end at once).
        let _ = self.lp.try_with_driver(|d| d.settle());
    }
}
