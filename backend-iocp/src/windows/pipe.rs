//! Pipe transports on IOCP: the shared
//! [`ProactorPipeTransport`] over [`IocpPipe`], its reads and writes as
//! overlapped `ReadFile` and `WriteFile` (asyncio's
//! `_ProactorReadPipeTransport`/`_ProactorWritePipeTransport` over
//! `IocpProactor.recv`/`send` on a `PipeHandle`).
//!
//! The handle must have been opened for overlapped I/O (a named pipe made
//! by [`loop_api::windows_utils::pipe`], as asyncio's `windows_utils.pipe`);
//! one opened for synchronous I/O (an anonymous pipe, say) is refused with
//! a `ValueError` (`pipe_base`'s check), since a read on it would block
//! the loop.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::os::windows::io::AsRawHandle;
use std::rc::Rc;

use loop_api::futures::Future;
use loop_api::proactor_events::ops::{OpId, Owner, Proactor};
use loop_api::proactor_events::{PipeIo, ProactorPipeTransport, RecvEvent};
use loop_api::protocols::Protocol;
use loop_api::transports::Transport;
use loop_api::{EventLoopExt, Result};
use windows_sys::Win32::Foundation::{
    ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_OPERATION_ABORTED, ERROR_PIPE_NOT_CONNECTED,
};
use windows_sys::Win32::Networking::WinSock::SOCKET;

use super::driver::SubmitError;
use super::ops::{Completion, Request};
use super::IocpEventLoop;

/// Bytes one read may bring.
const READ_BUFFER: usize = 64 * 1024;
/// What a write pipe's watch for the reader going away reads at most.
const WATCH_BUFFER: usize = 16;
const READ: u8 = 0;
const WRITE: u8 = 1;

/// A pipe transport on IOCP.
pub(crate) type IocpPipeTransport = ProactorPipeTransport<IocpPipe>;

/// A pipe handle's overlapped read and write.
pub(crate) struct IocpPipe {
    lp: Rc<IocpEventLoop>,
    read_op: Cell<Option<OpId>>,
    write_op: Cell<Option<OpId>>,
    /// A read buffer between reads.
    spare: RefCell<Option<Vec<u8>>>,
}

fn io(lp: &Rc<IocpEventLoop>) -> IocpPipe {
    IocpPipe {
        lp: lp.clone(),
        read_op: Cell::new(None),
        write_op: Cell::new(None),
        spare: RefCell::new(None),
    }
}

/// `connect_read_pipe`'s transport.
pub(crate) fn create_read(
    lp: &Rc<IocpEventLoop>,
    pipe: File,
    protocol: Rc<dyn Protocol>,
    waiter: Option<Future<()>>,
) -> Result<Rc<dyn Transport>> {
    ProactorPipeTransport::create_read(lp.clone(), pipe, protocol, waiter, io(lp))
}

/// `connect_write_pipe`'s transport.
pub(crate) fn create_write(
    lp: &Rc<IocpEventLoop>,
    pipe: File,
    protocol: Rc<dyn Protocol>,
    waiter: Option<Future<()>>,
) -> Result<Rc<dyn Transport>> {
    ProactorPipeTransport::create_write(lp.clone(), pipe, protocol, waiter, io(lp))
}

/// The completion handler: record, for the transport's step.
impl Owner<Completion> for IocpPipeTransport {
    fn complete(self: Rc<Self>, c: Completion) {
        self.push_completion(c);
    }
}

/// The pipe's handle value, as the driver keys it.
fn handle(t: &IocpPipeTransport) -> Option<SOCKET> {
    t.with_pipe(|f| f.as_raw_handle() as SOCKET)
}

fn submit(
    t: &Rc<IocpPipeTransport>,
    request: Request,
    kind: u8,
) -> std::result::Result<OpId, SubmitError> {
    let Some(h) = handle(t) else {
        return Err(SubmitError::Io(std::io::Error::from(
            std::io::ErrorKind::NotConnected,
        )));
    };
    let owner: Rc<dyn Owner<Completion>> = t.clone();
    t.io().lp.with_driver(|d| d.submit(h, request, owner, kind))
}

/// The writer (or, for a write pipe, the reader) is gone: EOF.
fn is_eof(e: &std::io::Error) -> bool {
    [ERROR_BROKEN_PIPE, ERROR_NO_DATA, ERROR_PIPE_NOT_CONNECTED]
        .iter()
        .any(|c| e.raw_os_error() == Some(*c as i32))
}

impl PipeIo for IocpPipe {
    type Completion = Completion;

    fn start_read(t: &Rc<IocpPipeTransport>) -> Result<()> {
        let io = t.io();
        let len = if t.is_write_end() {
            WATCH_BUFFER
        } else {
            READ_BUFFER
        };
        let mut buf = io.spare.borrow_mut().take().unwrap_or_default();
        buf.resize(len, 0);
        match submit(t, Request::ReadFile { buf }, READ) {
            Ok(id) => {
                io.read_op.set(Some(id));
                Ok(())
            }
            // A read that fails at once (the writer already gone) queues
            // no packet: report it as a completion would.
            Err(SubmitError::Io(e)) if is_eof(&e) => {
                let t2 = t.clone();
                t.io().lp.call_soon(move || t2.on_read(RecvEvent::Eof))?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn start_write(t: &Rc<IocpPipeTransport>, data: Vec<u8>) -> Result<()> {
        let id = submit(t, Request::WriteFile { data }, WRITE).map_err(|e| match e {
            SubmitError::Io(e) if is_eof(&e) => {
                std::io::Error::from(std::io::ErrorKind::BrokenPipe).into()
            }
            e => loop_api::Error::from(e),
        })?;
        t.io().write_op.set(Some(id));
        Ok(())
    }

    fn cancel_all(&self) {
        for op in [&self.read_op, &self.write_op] {
            if let Some(id) = op.get() {
                let _ = self.lp.try_with_driver(|d| d.cancel(id));
            }
        }
    }

    fn complete(t: &Rc<IocpPipeTransport>, c: Completion) {
        let io = t.io();
        match (c.kind, c.request) {
            (WRITE, Request::WriteFile { data }) => {
                io.write_op.set(None);
                let result = match c.result {
                    Err(e) if is_eof(&e) => {
                        Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
                    }
                    other => other,
                };
                t.on_written(result, data);
            }
            (READ, Request::ReadFile { buf }) => {
                io.read_op.set(None);
                match c.result {
                    Ok(0) => t.on_read(RecvEvent::Eof),
                    Ok(n) => t.on_read(RecvEvent::Data(&buf[..n])),
                    Err(e) if is_eof(&e) => t.on_read(RecvEvent::Eof),
                    Err(e) if e.raw_os_error() == Some(ERROR_OPERATION_ABORTED as i32) => {
                        t.on_read(RecvEvent::Stopped)
                    }
                    Err(e) => t.on_read(RecvEvent::Error(e)),
                }
                *io.spare.borrow_mut() = Some(buf);
            }
            _ => unreachable!("a pipe transport only reads and writes"),
        }
    }
}
