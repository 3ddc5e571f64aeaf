//! What every transport does the same way, whatever its I/O model: the
//! order of its first callbacks, how it reports errors, how it counts
//! writes after the connection is lost, and `get_extra_info`.

use std::any::Any;
use std::cell::Cell;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use socket2::SockAddr;

use super::{extra_addr, BaseTransport, ExtraInfo};
use crate::events::{AbstractEventLoop, ExceptionContext, RawFd};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::log::{self, Level};
use crate::protocols::{BaseProtocol, BufferedProtocol, DatagramProtocol, Protocol};

/// What a transport's protocol is replaced with once the connection is
/// lost, so that the transport no longer keeps the user's protocol (and
/// whatever cycle it forms with the transport) alive.
pub struct Detached;
impl BaseProtocol for Detached {}
impl Protocol for Detached {}
impl DatagramProtocol for Detached {}

/// The error pending flushes and empty-waiters get when the connection
/// ends without one of its own: asyncio's `ConnectionAbortedError`.
pub fn connection_closed() -> Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "Connection is closed").into()
}

/// `get_buffer(sizehint)`, with a panic or an empty buffer as an error
/// (asyncio's "get_buffer() returned an empty buffer").
pub fn get_buffer(protocol: &dyn BufferedProtocol, sizehint: usize) -> Result<Vec<u8>> {
    catch_unwind(AssertUnwindSafe(|| protocol.get_buffer(sizehint)))
        .unwrap_or_else(|p| Err(Error::from_panic(p)))
        .and_then(|b| {
            if b.is_empty() {
                Err(Error::runtime("get_buffer() returned an empty buffer"))
            } else {
                Ok(b)
            }
        })
}

/// `buffer_updated(buf, nbytes)`, with a panic as an error.
pub fn buffer_updated(protocol: &dyn BufferedProtocol, buf: Vec<u8>, nbytes: usize) -> Result<()> {
    catch_unwind(AssertUnwindSafe(|| protocol.buffer_updated(buf, nbytes)))
        .unwrap_or_else(|p| Err(Error::from_panic(p)))
}

/// asyncio's `LOG_THRESHOLD_FOR_CONNLOST_WRITES`: writes after the
/// connection is lost are dropped, with a warning from this many on.
pub const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// A write after the connection was lost (asyncio's `_conn_lost` counter):
/// counts it, and logs asyncio's warning from the fifth on. Returns true
/// if the connection is lost, i.e. the write must be dropped.
pub fn drop_lost_write(conn_lost: &Cell<u32>) -> bool {
    let lost = conn_lost.get();
    if lost == 0 {
        return false;
    }
    if lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
        log::log(Level::Warning, "socket.send() raised exception.");
    }
    conn_lost.set(lost + 1);
    true
}

/// Runs `f` from the ready queue, or at once if the loop is closed (then
/// nothing would ever run it, and a transport must still be torn down).
pub fn call_soon_or_now(lp: &dyn AbstractEventLoop, f: impl FnOnce() + 'static) {
    let cell = Rc::new(Cell::new(Some(f)));
    let c = cell.clone();
    let queued = lp.call_soon_dyn(
        Box::new(move || {
            if let Some(f) = c.take() {
                f()
            }
        }),
        None,
    );
    if queued.is_err() {
        if let Some(f) = cell.take() {
            f()
        }
    }
}

/// Schedules `connection_made` (already bound to the transport in
/// `made`), then the transport's first step (starting to read), then
/// `waiter`'s result: asyncio's order, so that whoever awaits the waiter
/// finds the protocol connected.
pub fn schedule_start(
    lp: &dyn AbstractEventLoop,
    made: impl FnOnce() + 'static,
    start: impl FnOnce() + 'static,
    waiter: Option<Future<()>>,
) -> Result<()> {
    lp.call_soon_dyn(Box::new(made), None)?;
    lp.call_soon_dyn(Box::new(start), None)?;
    if let Some(w) = waiter {
        lp.call_soon_dyn(
            Box::new(move || {
                if !w.cancelled() {
                    let _ = w.set_result(());
                }
            }),
            None,
        )?;
    }
    Ok(())
}

/// Hands `exc` to the exception handler with the transport and protocol
/// (each boxed as `Any`: an `Rc<dyn ...Transport>`, an `Rc<dyn ...Protocol>`).
pub fn report(
    lp: &dyn AbstractEventLoop,
    exc: Error,
    message: &str,
    transport: Rc<dyn Any>,
    protocol: Rc<dyn Any>,
) {
    lp.call_exception_handler(
        ExceptionContext::new(message)
            .with_exception(exc)
            .with_transport(transport)
            .with_protocol(protocol),
    );
}

/// asyncio's `_fatal_error` policy: an `OSError` (a reset peer, say) is
/// not a bug and is only logged in debug mode; anything else is reported
/// through `report`. Either way the caller then force-closes.
pub fn report_fatal(
    lp: &dyn AbstractEventLoop,
    exc: &Error,
    message: &str,
    describe: &str,
    report: impl FnOnce(),
) {
    if matches!(exc, Error::Io(_)) {
        if lp.get_debug() {
            log::log(Level::Debug, &format!("{describe}: {message}: {exc}"));
        }
    } else {
        report();
    }
}

/// A socket transport's `get_extra_info` answers, taken when it is made.
pub struct SocketInfo {
    fd: RawFd,
    sockname: Option<ExtraInfo>,
    peername: Option<ExtraInfo>,
}

impl SocketInfo {
    /// The descriptor and its addresses.
    pub fn new(fd: RawFd, sockname: Option<SockAddr>, peername: Option<SockAddr>) -> Self {
        SocketInfo {
            fd,
            sockname: sockname.map(extra_addr),
            peername: peername.map(extra_addr),
        }
    }

    /// `get_extra_info(name)`; `socket` only while the socket is `open`.
    pub fn get(&self, name: &str, open: bool) -> Option<ExtraInfo> {
        match name {
            "peername" => self.peername.clone(),
            "sockname" => self.sockname.clone(),
            "socket" if open => Some(ExtraInfo::Fd(self.fd)),
            _ => None,
        }
    }
}

/// Closes a transport when dropped, unless [`CloseOnDrop::defuse`]d: the
/// `create_*` methods hold one while they wait for `connection_made`, so
/// that a cancelled wait does not leave the transport open.
pub struct CloseOnDrop<T: BaseTransport + ?Sized>(Option<Rc<T>>);

impl<T: BaseTransport + ?Sized> CloseOnDrop<T> {
    /// Guards `transport`.
    pub fn new(transport: Rc<T>) -> Self {
        CloseOnDrop(Some(transport))
    }

    /// Keeps the transport open: hands it back.
    pub fn defuse(mut self) -> Rc<T> {
        self.0.take().expect("defused once")
    }
}

impl<T: BaseTransport + ?Sized> Drop for CloseOnDrop<T> {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.close();
        }
    }
}
