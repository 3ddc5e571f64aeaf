//! The echo protocol shared by the `echo_server` example and `echo_bench`
//! (included with `#[path]`: examples have no library of their own).

use std::cell::RefCell;
use std::rc::Rc;

use loop_api::protocols::{BaseProtocol, Protocol};
use loop_api::transports::Transport;
use loop_api::Error;

/// Writes every byte it receives back to the peer (asyncio's
/// `EchoServerProtocol` from the docs), with flow control: while the
/// transport's write buffer is over its high-water mark it stops reading,
/// so a peer that sends but does not read cannot grow the buffer forever.
#[derive(Default)]
pub struct EchoProtocol {
    transport: RefCell<Option<Rc<dyn Transport>>>,
}

impl EchoProtocol {
    /// The transport, cloned out of the cell: the transport may call back
    /// into this protocol (`pause_writing`, `connection_lost`) from inside
    /// `write`, so no borrow may be held across the call.
    fn transport(&self) -> Option<Rc<dyn Transport>> {
        self.transport.borrow().clone()
    }
}

impl BaseProtocol for EchoProtocol {
    fn connection_lost(&self, _exc: Option<Error>) {
        // Transport and protocol point at each other: break the cycle.
        self.transport.borrow_mut().take();
    }

    fn pause_writing(&self) {
        if let Some(t) = self.transport() {
            t.pause_reading();
        }
    }

    fn resume_writing(&self) {
        if let Some(t) = self.transport() {
            t.resume_reading();
        }
    }
}

impl Protocol for EchoProtocol {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        *self.transport.borrow_mut() = Some(transport);
    }

    fn data_received(&self, data: &[u8]) {
        if let Some(t) = self.transport() {
            // A broken connection is reported to connection_lost by the
            // transport; there is nothing more to do with the error here.
            let _ = t.write(data);
        }
    }
}
