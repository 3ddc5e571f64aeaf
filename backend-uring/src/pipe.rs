//! Pipe transports on io_uring: the shared [`ProactorPipeTransport`] over
//! [`UringPipe`], for FIFOs and sockets, whose reads and writes the kernel
//! completes asynchronously (it arms its own poll and retries).
//!
//! - Reading: one `read` request at a time into an owned 256 KiB buffer,
//!   kept between reads.
//! - Writing: a write made with nothing queued goes out at once with a
//!   non-blocking `writev` from the caller's bytes, as on readiness (bytes
//!   written before the reader leaves reach the pipe, with no copy); what
//!   the pipe does not take is buffered and goes as one `write` request of
//!   the whole buffer (moved into the request).
//! - The reader going away (a write pipe): a `poll` request on the write
//!   end, which the kernel completes with `POLLERR` once the read end is
//!   closed (the readiness transport's watch, as a request).
//! - Ttys and other character devices stay on the readiness transport
//!   (`unix_events`): poll, then read, as the issue of such devices asks.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;

use io_uring::{opcode, types};
use loop_api::events::options::MAX_READ_SIZE;
use loop_api::futures::Future;
use loop_api::proactor_events::ops::{OpId, Owner, Proactor};
use loop_api::proactor_events::{PipeIo, ProactorPipeTransport, RecvEvent};
use loop_api::protocols::Protocol;
use loop_api::transports::Transport;
use loop_api::Result;

use crate::ops::{Completion, Keep};
use crate::UringEventLoop;

const READ: u8 = 0;
const WRITE: u8 = 1;
const WATCH: u8 = 2;

/// A pipe transport on io_uring.
pub(crate) type UringPipeTransport = ProactorPipeTransport<UringPipe>;

/// A pipe's read, write and watch requests.
pub(crate) struct UringPipe {
    lp: Rc<UringEventLoop>,
    read_op: Cell<Option<OpId>>,
    write_op: Cell<Option<OpId>>,
    /// A read buffer between reads.
    spare: RefCell<Option<Vec<u8>>>,
}

/// True for what the kernel reads and writes asynchronously: FIFOs and
/// sockets. Anything else (ttys, character devices) keeps the readiness
/// transport.
pub(crate) fn takes_requests(file: &File) -> bool {
    use std::os::unix::fs::FileTypeExt;
    file.metadata()
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false)
}

fn io(lp: &Rc<UringEventLoop>) -> UringPipe {
    UringPipe {
        lp: lp.clone(),
        read_op: Cell::new(None),
        write_op: Cell::new(None),
        spare: RefCell::new(None),
    }
}

/// `connect_read_pipe`'s transport for a FIFO or a socket.
pub(crate) fn create_read(
    lp: &Rc<UringEventLoop>,
    pipe: File,
    protocol: Rc<dyn Protocol>,
    waiter: Option<Future<()>>,
) -> Result<Rc<dyn Transport>> {
    ProactorPipeTransport::create_read(lp.clone(), pipe, protocol, waiter, io(lp))
}

/// `connect_write_pipe`'s transport for a FIFO or a socket.
pub(crate) fn create_write(
    lp: &Rc<UringEventLoop>,
    pipe: File,
    protocol: Rc<dyn Protocol>,
    waiter: Option<Future<()>>,
) -> Result<Rc<dyn Transport>> {
    ProactorPipeTransport::create_write(lp.clone(), pipe, protocol, waiter, io(lp))
}

/// The completion handler: record, for the transport's step.
impl Owner<Completion> for UringPipeTransport {
    fn complete(self: Rc<Self>, c: Completion) {
        self.push_completion(c);
    }
}

fn fd(t: &UringPipeTransport) -> Result<types::Fd> {
    t.with_pipe(|f| types::Fd(f.as_raw_fd()))
        .ok_or_else(loop_api::transports::lifecycle::connection_closed)
}

impl PipeIo for UringPipe {
    type Completion = Completion;

    fn start_read(t: &Rc<UringPipeTransport>) -> Result<()> {
        let io = t.io();
        let fd = fd(t)?;
        let owner: Rc<dyn Owner<Completion>> = t.clone();
        let id = if t.is_write_end() {
            let entry = opcode::PollAdd::new(fd, libc::POLLIN as u32).build();
            // SAFETY: a poll points at no memory of ours.
            io.lp
                .with_driver(|d| unsafe { d.submit(entry, Keep::Nothing, owner, WATCH) })?
        } else {
            let mut buf = io.spare.borrow_mut().take().unwrap_or_default();
            buf.resize(MAX_READ_SIZE, 0);
            // Offset -1: the file's own position (a FIFO has none).
            let entry = opcode::Read::new(fd, buf.as_mut_ptr(), buf.len() as u32)
                .offset(u64::MAX)
                .build();
            // SAFETY: the request writes into `buf`'s allocation, which
            // moves into the driver with it until the completion.
            io.lp
                .with_driver(|d| unsafe { d.submit(entry, Keep::Buf(buf), owner, READ) })?
        };
        io.read_op.set(Some(id));
        Ok(())
    }

    fn start_write(t: &Rc<UringPipeTransport>, data: Vec<u8>) -> Result<()> {
        let io = t.io();
        let fd = fd(t)?;
        let owner: Rc<dyn Owner<Completion>> = t.clone();
        let len = data.len().min(u32::MAX as usize) as u32;
        let entry = opcode::Write::new(fd, data.as_ptr(), len)
            .offset(u64::MAX)
            .build();
        // SAFETY: the request reads `data`'s allocation, which moves into
        // the driver with it until the completion.
        let id = io
            .lp
            .with_driver(|d| unsafe { d.submit(entry, Keep::Buf(data), owner, WRITE) })?;
        io.write_op.set(Some(id));
        Ok(())
    }

    fn write_now(t: &UringPipeTransport, parts: &[&[u8]]) -> Option<io::Result<usize>> {
        let iov: Vec<libc::iovec> = parts
            .iter()
            .take(1024)
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        t.with_pipe(|f| {
            // SAFETY: the iovecs point into `parts`, alive for the call; the
            // descriptor is non-blocking (the transport made it so), so
            // this returns at once.
            let n = unsafe { libc::writev(f.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        })
    }

    fn cancel_all(&self) {
        let _ = self.lp.try_with_driver(|d| {
            for op in [&self.read_op, &self.write_op] {
                if let Some(id) = op.take() {
                    d.cancel(id);
                }
            }
            // Requests in flight hold the file until their cancellation is
            // processed: have it processed now, so that closing the
            // descriptor closes the pipe (the other end sees it at once).
            d.settle();
        });
    }

    fn complete(t: &Rc<UringPipeTransport>, c: Completion) {
        let io = t.io();
        match c.kind {
            WRITE => {
                io.write_op.set(None);
                let Some(Keep::Buf(data)) = c.keep else {
                    unreachable!("a write keeps its buffer")
                };
                let result = if c.res < 0 {
                    Err(io::Error::from_raw_os_error(-c.res))
                } else {
                    Ok(c.res as usize)
                };
                t.on_written(result, data);
            }
            WATCH => {
                io.read_op.set(None);
                if c.res == -libc::ECANCELED {
                    t.on_read(RecvEvent::Stopped);
                } else {
                    // POLLERR (or POLLHUP): the read end is gone.
                    t.on_read(RecvEvent::Eof);
                }
            }
            _ => {
                io.read_op.set(None);
                let Some(Keep::Buf(buf)) = c.keep else {
                    unreachable!("a read keeps its buffer")
                };
                match c.res {
                    n if n > 0 => t.on_read(RecvEvent::Data(&buf[..n as usize])),
                    0 => t.on_read(RecvEvent::Eof),
                    n if matches!(-n, libc::ECANCELED | libc::EAGAIN | libc::EINTR) => {
                        t.on_read(RecvEvent::Stopped)
                    }
                    n => t.on_read(RecvEvent::Error(io::Error::from_raw_os_error(-n))),
                }
                *io.spare.borrow_mut() = Some(buf);
            }
        }
    }
}
