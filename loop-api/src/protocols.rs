//! Protocols: the callbacks a transport drives (asyncio's `protocols` module).
//!
//! Methods take `&self`: a protocol calls back into its transport (`write`,
//! `close`) and the transport calls back into the protocol (`pause_writing`,
//! `connection_lost`) on the same stack, as in asyncio. Keep mutable state in
//! `Cell`/`RefCell` fields. Every method has a default that does nothing, so
//! a protocol implements only what it needs.

use std::cell::RefCell;
use std::rc::Rc;

use socket2::SockAddr;

use crate::exceptions::Error;
use crate::transports::{DatagramTransport, SubprocessTransport, Transport};

/// `asyncio.BaseProtocol`: what every kind of protocol hears.
/// `connection_made` is on each kind ([`Protocol`], [`DatagramProtocol`],
/// [`SubprocessProtocol`]), typed with that kind's transport.
///
/// # Keeping the transport
/// A protocol may keep the transport `connection_made` gives it (an
/// `Rc` in a `RefCell` field) and never let go: once `connection_lost` has
/// run, the transport drops its own reference to the protocol, so the two
/// do not keep each other alive. Nothing leaks if the protocol does nothing
/// special.
pub trait BaseProtocol {
    /// Called exactly once when the connection is lost or closed; `None`
    /// for a regular EOF or close.
    fn connection_lost(&self, _exc: Option<Error>) {}
    /// The transport's write buffer went over the high-water mark.
    fn pause_writing(&self) {}
    /// The transport's write buffer drained to the low-water mark.
    fn resume_writing(&self) {}
}

/// `asyncio.Protocol`: a streaming protocol.
pub trait Protocol: BaseProtocol {
    /// Called once when the connection is made.
    fn connection_made(&self, _transport: Rc<dyn Transport>) {}
    /// Some data arrived.
    fn data_received(&self, _data: &[u8]) {}
    /// The peer sent EOF. Return `true` to keep the write side open (a
    /// half-closed connection); `false` closes the transport.
    fn eof_received(&self) -> bool {
        false
    }
    /// Downcast to a buffered protocol, for transports that fill a
    /// protocol-owned buffer instead of copying (`BufferedProtocol`).
    fn as_buffered(&self) -> Option<&dyn BufferedProtocol> {
        None
    }
}

/// `asyncio.BufferedProtocol`: the transport reads straight into a buffer
/// the protocol hands out. A buffered protocol is also a [`Protocol`] (for
/// `connection_made`), whose [`Protocol::as_buffered`] returns itself.
pub trait BufferedProtocol: BaseProtocol {
    /// A buffer to read into, of at least `sizehint` bytes if it is positive.
    /// The transport writes into it and then calls [`buffer_updated`].
    ///
    /// [`buffer_updated`]: BufferedProtocol::buffer_updated
    fn get_buffer(&self, sizehint: usize) -> Result<Vec<u8>, Error>;
    /// `nbytes` bytes were written at the start of the buffer last handed out.
    fn buffer_updated(&self, buf: Vec<u8>, nbytes: usize) -> Result<(), Error>;
    /// As [`Protocol::eof_received`].
    fn eof_received(&self) -> bool {
        false
    }
}

/// `asyncio.DatagramProtocol`.
pub trait DatagramProtocol: BaseProtocol {
    /// Called once the endpoint is set up.
    fn connection_made(&self, _transport: Rc<dyn DatagramTransport>) {}
    /// A datagram arrived from `addr` (an unnamed AF_UNIX sender has an
    /// empty address).
    fn datagram_received(&self, _data: &[u8], _addr: &SockAddr) {}
    /// A previous send or receive failed (ICMP errors, for example).
    fn error_received(&self, _exc: Error) {}
}

/// `asyncio.SubprocessProtocol`.
pub trait SubprocessProtocol: BaseProtocol {
    /// Called once the process is started.
    fn connection_made(&self, _transport: Rc<dyn SubprocessTransport>) {}
    /// The child wrote to its stdout (fd 1) or stderr (fd 2).
    fn pipe_data_received(&self, _fd: i32, _data: &[u8]) {}
    /// One of the child's pipes closed.
    fn pipe_connection_lost(&self, _fd: i32, _exc: Option<Error>) {}
    /// The child exited.
    fn process_exited(&self) {}
}

/// Builds a fresh protocol for each connection (asyncio's `protocol_factory`).
pub type ProtocolFactory = Rc<dyn Fn() -> Rc<dyn Protocol>>;
/// Builds the protocol of a datagram endpoint.
pub type DatagramProtocolFactory = Rc<dyn Fn() -> Rc<dyn DatagramProtocol>>;
/// Builds the protocol of a subprocess.
pub type SubprocessProtocolFactory = Rc<dyn Fn() -> Rc<dyn SubprocessProtocol>>;

/// A protocol type a typed factory may return: any [`Protocol`], or `dyn
/// Protocol` itself. What lets [`EventLoopExt::create_connection`] hand back
/// the caller's own type.
///
/// [`EventLoopExt::create_connection`]: crate::events::EventLoopExt::create_connection
pub trait IntoDynProtocol: 'static {
    /// The protocol as the transport holds it.
    fn into_dyn(self: Rc<Self>) -> Rc<dyn Protocol>;
}

impl<P: Protocol + 'static> IntoDynProtocol for P {
    fn into_dyn(self: Rc<Self>) -> Rc<dyn Protocol> {
        self
    }
}

impl IntoDynProtocol for dyn Protocol {
    fn into_dyn(self: Rc<Self>) -> Rc<dyn Protocol> {
        self
    }
}

/// As [`IntoDynProtocol`], for datagram protocols.
pub trait IntoDynDatagramProtocol: 'static {
    /// The protocol as the transport holds it.
    fn into_dyn(self: Rc<Self>) -> Rc<dyn DatagramProtocol>;
}

impl<P: DatagramProtocol + 'static> IntoDynDatagramProtocol for P {
    fn into_dyn(self: Rc<Self>) -> Rc<dyn DatagramProtocol> {
        self
    }
}

impl IntoDynDatagramProtocol for dyn DatagramProtocol {
    fn into_dyn(self: Rc<Self>) -> Rc<dyn DatagramProtocol> {
        self
    }
}

/// As [`IntoDynProtocol`], for subprocess protocols.
pub trait IntoDynSubprocessProtocol: 'static {
    /// The protocol as the transport holds it.
    fn into_dyn(self: Rc<Self>) -> Rc<dyn SubprocessProtocol>;
}

impl<P: SubprocessProtocol + 'static> IntoDynSubprocessProtocol for P {
    fn into_dyn(self: Rc<Self>) -> Rc<dyn SubprocessProtocol> {
        self
    }
}

impl IntoDynSubprocessProtocol for dyn SubprocessProtocol {
    fn into_dyn(self: Rc<Self>) -> Rc<dyn SubprocessProtocol> {
        self
    }
}

/// Where a protocol keeps the transport `connection_made` gave it.
///
/// [`get`](Self::get) hands out a clone, so no borrow is held while the
/// protocol calls the transport (which may call back into the protocol:
/// `pause_writing`, `connection_lost`). There is no cycle to break by hand:
/// see [`BaseProtocol`].
pub struct TransportCell<T: ?Sized = dyn Transport>(RefCell<Option<Rc<T>>>);

impl<T: ?Sized> Default for TransportCell<T> {
    fn default() -> Self {
        TransportCell(RefCell::new(None))
    }
}

impl<T: ?Sized> TransportCell<T> {
    /// Keeps `transport` (in `connection_made`).
    pub fn set(&self, transport: Rc<T>) {
        *self.0.borrow_mut() = Some(transport);
    }

    /// The transport, once `connection_made` kept it.
    pub fn get(&self) -> Option<Rc<T>> {
        self.0.borrow().clone()
    }

    /// Lets go of it.
    pub fn take(&self) -> Option<Rc<T>> {
        self.0.borrow_mut().take()
    }
}
