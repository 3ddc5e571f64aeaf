//! The `context` dict handed to exception handlers.

use std::any::Any;
use std::fmt;
use std::rc::Rc;

use super::{AbstractEventLoop, Handle, RawFd};
use crate::exceptions::Error;
use crate::futures::FutureObj;
use crate::protocols::{DatagramProtocol, Protocol};
use crate::transports::{DatagramTransport, Transport};

/// asyncio's exception-handler context. Keys that do not apply are `None`.
#[derive(Clone, Default)]
pub struct ExceptionContext {
    /// `message`: always present.
    pub message: String,
    /// `exception`.
    pub exception: Option<Error>,
    /// `future`: the future (or task) concerned.
    pub future: Option<Rc<dyn FutureObj>>,
    /// `task`: the task concerned.
    pub task: Option<Rc<dyn FutureObj>>,
    /// `handle`: the callback's handle.
    pub handle: Option<Handle>,
    /// `protocol`: an `Rc<dyn Protocol>` or `Rc<dyn DatagramProtocol>` as
    /// `Any` (see [`stream_protocol`](Self::stream_protocol) and
    /// [`datagram_protocol`](Self::datagram_protocol)).
    pub protocol: Option<Rc<dyn Any>>,
    /// `transport`: an `Rc<dyn Transport>` or `Rc<dyn DatagramTransport>`
    /// as `Any` (see [`stream_transport`](Self::stream_transport) and
    /// [`datagram_transport`](Self::datagram_transport)).
    pub transport: Option<Rc<dyn Any>>,
    /// `socket`.
    pub socket: Option<RawFd>,
    /// `asyncgen`: Rust has no async generators; always `None` from this crate.
    pub asyncgen: Option<String>,
}

impl ExceptionContext {
    /// `context['transport']` of a stream transport's report.
    pub fn stream_transport(&self) -> Option<Rc<dyn Transport>> {
        self.transport
            .as_ref()?
            .downcast_ref::<Rc<dyn Transport>>()
            .cloned()
    }

    /// `context['transport']` of a datagram transport's report.
    pub fn datagram_transport(&self) -> Option<Rc<dyn DatagramTransport>> {
        self.transport
            .as_ref()?
            .downcast_ref::<Rc<dyn DatagramTransport>>()
            .cloned()
    }

    /// `context['protocol']` of a stream transport's report.
    pub fn stream_protocol(&self) -> Option<Rc<dyn Protocol>> {
        self.protocol
            .as_ref()?
            .downcast_ref::<Rc<dyn Protocol>>()
            .cloned()
    }

    /// `context['protocol']` of a datagram transport's report.
    pub fn datagram_protocol(&self) -> Option<Rc<dyn DatagramProtocol>> {
        self.protocol
            .as_ref()?
            .downcast_ref::<Rc<dyn DatagramProtocol>>()
            .cloned()
    }

    /// A context with only a message.
    pub fn new(message: impl Into<String>) -> Self {
        ExceptionContext {
            message: message.into(),
            ..Default::default()
        }
    }

    /// Adds `exception`.
    pub fn with_exception(mut self, e: Error) -> Self {
        self.exception = Some(e);
        self
    }

    /// Adds `protocol` (an `Rc<dyn Protocol>`-like value, boxed as `Any`:
    /// downcast to the `Rc` type the transport holds).
    pub fn with_protocol(mut self, p: Rc<dyn Any>) -> Self {
        self.protocol = Some(p);
        self
    }

    /// Adds `transport` (boxed as `Any`, like `protocol`).
    pub fn with_transport(mut self, t: Rc<dyn Any>) -> Self {
        self.transport = Some(t);
        self
    }

    /// Adds `socket`.
    pub fn with_socket(mut self, fd: RawFd) -> Self {
        self.socket = Some(fd);
        self
    }

    /// Adds `handle`.
    pub fn with_handle(mut self, h: Handle) -> Self {
        self.handle = Some(h);
        self
    }

    /// The text the default handler logs: the message, then each key.
    pub fn render(&self) -> String {
        let mut out = self.message.clone();
        if let Some(h) = &self.handle {
            out.push_str(&format!("\nhandle: {h:?}"));
        }
        if let Some(fut) = &self.future {
            out.push_str(&format!("\nfuture: {}", fut.repr()));
        }
        if let Some(t) = &self.task {
            out.push_str(&format!("\ntask: {}", t.repr()));
        }
        if let Some(s) = &self.socket {
            out.push_str(&format!("\nsocket: {s}"));
        }
        if self.protocol.is_some() {
            out.push_str("\nprotocol: <protocol>");
        }
        if self.transport.is_some() {
            out.push_str("\ntransport: <transport>");
        }
        if let Some(e) = &self.exception {
            out.push_str(&format!("\nexception: {e}"));
        }
        out
    }
}

impl fmt::Debug for ExceptionContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render())
    }
}

/// `loop.set_exception_handler(handler)`: called as `handler(loop, context)`.
/// A panic in the handler is reported by the default handler.
pub type ExceptionHandler = Rc<dyn Fn(&dyn AbstractEventLoop, &ExceptionContext)>;
