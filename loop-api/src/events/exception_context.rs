//! The `context` dict handed to exception handlers.

use std::any::Any;
use std::fmt;
use std::rc::Rc;

use super::{AbstractEventLoop, Handle, RawFd};
use crate::exceptions::Error;
use crate::futures::FutureObj;

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
    /// `protocol`.
    pub protocol: Option<Rc<dyn Any>>,
    /// `transport`.
    pub transport: Option<Rc<dyn Any>>,
    /// `socket`.
    pub socket: Option<RawFd>,
    /// `asyncgen`: Rust has no async generators; always `None` from this crate.
    pub asyncgen: Option<String>,
}

impl ExceptionContext {
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
