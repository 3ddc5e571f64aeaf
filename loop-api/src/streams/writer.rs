//! asyncio's `StreamWriter`.

use std::fmt;
use std::rc::Rc;

use crate::events::options::StartTlsOptions;
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::Protocol;
use crate::ssl::SslContext;
use crate::tasks::yield_now;
use crate::transports::{ExtraInfo, Transport};

use super::protocol::StreamProtocol;

/// The write half of a stream (asyncio's `StreamWriter`): writes go to the
/// transport at once (it buffers what the OS does not take), and
/// [`drain`](Self::drain) is the flow control.
///
/// Dropping a writer whose transport is still open closes it, as asyncio's
/// `StreamWriter.__del__` does, unless its write side was shut
/// ([`write_eof`](Self::write_eof), `poll_shutdown`): then the reader
/// reads on, and the connection closes when the reader is dropped too.
///
/// The writer is also a `tokio::io::AsyncWrite` and a
/// `futures::io::AsyncWrite` (see [`super::Stream`]).
pub struct StreamWriter {
    pub(crate) p: Rc<StreamProtocol>,
    /// `poll_shutdown` already ended the write side.
    pub(crate) shut: bool,
}

impl StreamWriter {
    pub(crate) fn new(p: Rc<StreamProtocol>) -> Self {
        p.handle_made();
        StreamWriter { p, shut: false }
    }

    /// The transport (asyncio's `writer.transport`).
    pub fn transport(&self) -> Rc<dyn Transport> {
        self.p
            .transport()
            .expect("a stream writer is made with its transport")
    }

    /// Writes `data`; it is buffered if the OS does not take it at once.
    pub fn write(&self, data: &[u8]) -> Result<()> {
        self.transport().write(data)
    }

    /// Writes several buffers, with vectored I/O where the transport can.
    pub fn writelines(&self, data: &[&[u8]]) -> Result<()> {
        self.transport().writelines(data)
    }

    /// Closes the write side once the buffer is flushed.
    pub fn write_eof(&self) -> Result<()> {
        self.transport().write_eof()?;
        self.p.write_shut.set(true);
        Ok(())
    }

    /// True if the transport supports [`write_eof`](Self::write_eof) (not
    /// over TLS).
    pub fn can_write_eof(&self) -> bool {
        self.transport().can_write_eof()
    }

    /// Closes the stream; buffered data is still sent.
    pub fn close(&self) {
        self.transport().close()
    }

    /// True once closed or closing.
    pub fn is_closing(&self) -> bool {
        self.transport().is_closing()
    }

    /// Waits until the connection is closed: `Ok` for a clean close, the
    /// error it ended with otherwise.
    pub async fn wait_closed(&self) -> Result<()> {
        (&self.p.closed).await
    }

    /// The transport's `get_extra_info(name)`.
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        self.transport().get_extra_info(name)
    }

    /// Waits until the transport's buffer is below its low-water mark
    /// (asyncio's `drain`). Returns the error the connection ended with,
    /// or `ConnectionResetError('Connection lost')` once it is gone.
    pub async fn drain(&self) -> Result<()> {
        if let Some(e) = self.p.exception.borrow().clone() {
            return Err(e);
        }
        if self.transport().is_closing() {
            // Lets connection_lost run if the close is under way, so the
            // check below sees it (asyncio's `sleep(0)`).
            yield_now().await;
        }
        if self.p.connection_lost.get() {
            return Err(Error::connection_lost());
        }
        if !self.p.write_paused.get() {
            return Ok(());
        }
        let waiter = Future::new(self.p.lp.clone());
        self.p.drain_waiters.borrow_mut().push(waiter.clone());
        let _forget = ForgetDrainWaiter(&self.p, waiter.clone());
        waiter.await
    }

    /// Upgrades the connection to TLS (asyncio's `StreamWriter.start_tls`):
    /// drains, runs the handshake, and from then on reads and writes go
    /// through TLS. The server side is a stream `start_server` made.
    pub async fn start_tls(&self, sslcontext: SslContext, options: StartTlsOptions) -> Result<()> {
        self.drain().await?;
        let options = StartTlsOptions {
            server_side: self.p.client_connected.is_some(),
            ..options
        };
        let protocol: Rc<dyn Protocol> = self.p.clone();
        let new = self
            .p
            .lp
            .start_tls(self.transport(), protocol, sslcontext, options)
            .await?;
        self.p.over_ssl.set(true);
        *self.p.transport.borrow_mut() = Some(new);
        Ok(())
    }
}

/// Removes a drain waiter when its wait ends, however it ends.
struct ForgetDrainWaiter<'a>(&'a StreamProtocol, Future<()>);

impl Drop for ForgetDrainWaiter<'_> {
    fn drop(&mut self) {
        self.0
            .drain_waiters
            .borrow_mut()
            .retain(|w| !w.ptr_eq(&self.1));
    }
}

impl Drop for StreamWriter {
    fn drop(&mut self) {
        // asyncio's `__del__` closes; after `write_eof` the read side is
        // left to its reader (tokio's write half does the same).
        self.p.handle_dropped(!self.p.write_shut.get());
    }
}

impl fmt::Debug for StreamWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.p.transport() {
            Some(t) => write!(
                f,
                "<StreamWriter transport={}>",
                crate::transports::describe(&*t)
            ),
            None => f.write_str("<StreamWriter>"),
        }
    }
}
