//! The echo protocol shared by the `echo_server` example and `echo_bench`
//! (included with `#[path]`: examples have no library of their own).

use policy::prelude::*;

/// Writes every byte it receives back to the peer (asyncio's
/// `EchoServerProtocol` from the docs), with flow control: while the
/// transport's write buffer is over its high-water mark it stops reading,
/// so a peer that sends but does not read cannot grow the buffer forever.
#[derive(Default)]
pub struct EchoProtocol {
    transport: TransportCell,
}

impl BaseProtocol for EchoProtocol {
    fn pause_writing(&self) {
        if let Some(t) = self.transport.get() {
            t.pause_reading();
        }
    }

    fn resume_writing(&self) {
        if let Some(t) = self.transport.get() {
            t.resume_reading();
        }
    }
}

impl Protocol for EchoProtocol {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        self.transport.set(transport);
    }

    fn data_received(&self, data: &[u8]) {
        // A broken connection reaches connection_lost; nothing to do here.
        if let Some(t) = self.transport.get() {
            let _ = t.write(data);
        }
    }
}
