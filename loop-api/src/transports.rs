//! Transports: the loop's side of a connection (asyncio's `transports` module).
//!
//! A transport is handed to its protocol as `Rc<dyn Transport>`; methods
//! take `&self` because the protocol calls them from inside its own
//! callbacks. asyncio's `get_extra_info(name)` returns any object; here it
//! returns an [`ExtraInfo`] value.

use std::net::SocketAddr;
use std::rc::Rc;

use crate::events::RawFd;
use crate::exceptions::Result;
use crate::protocols::Protocol;

/// What `get_extra_info` can return.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtraInfo {
    /// `peername` / `sockname` of an IP socket.
    Addr(SocketAddr),
    /// `peername` / `sockname` of a Unix socket (empty for unnamed).
    UnixPath(String),
    /// `socket` / `pipe`: the raw descriptor (still owned by the transport).
    Fd(RawFd),
    /// Any other value, as text.
    Text(String),
}

/// `asyncio.BaseTransport`.
pub trait BaseTransport {
    /// Optional transport information: `peername`, `sockname`, `socket`, ...
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo>;
    /// True once the transport is closing or closed.
    fn is_closing(&self) -> bool;
    /// Closes after flushing buffered data; the protocol's
    /// `connection_lost(None)` follows.
    fn close(&self);
    /// Replaces the protocol.
    fn set_protocol(&self, protocol: Rc<dyn Protocol>);
    /// The current protocol.
    fn get_protocol(&self) -> Rc<dyn Protocol>;
}

/// `asyncio.ReadTransport`.
pub trait ReadTransport: BaseTransport {
    /// True unless reading is paused.
    fn is_reading(&self) -> bool;
    /// Stops calling `data_received` until [`resume_reading`].
    ///
    /// [`resume_reading`]: ReadTransport::resume_reading
    fn pause_reading(&self);
    /// Resumes reading.
    fn resume_reading(&self);
}

/// `asyncio.WriteTransport`.
pub trait WriteTransport: BaseTransport {
    /// Sets the flow-control marks; `None` for the defaults (64 KiB high,
    /// low = high / 4). `ValueError` unless `high >= low >= 0`.
    fn set_write_buffer_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()>;
    /// `(low, high)`.
    fn get_write_buffer_limits(&self) -> (usize, usize);
    /// Bytes buffered and not yet written.
    fn get_write_buffer_size(&self) -> usize;
    /// Writes (or buffers) `data`. Never blocks.
    fn write(&self, data: &[u8]) -> Result<()>;
    /// Writes a list of buffers, with vectored I/O where possible.
    fn writelines(&self, data: &[&[u8]]) -> Result<()> {
        for d in data {
            self.write(d)?;
        }
        Ok(())
    }
    /// Closes the write side after flushing.
    fn write_eof(&self) -> Result<()>;
    /// True if [`write_eof`](WriteTransport::write_eof) is supported.
    fn can_write_eof(&self) -> bool;
    /// Closes at once, dropping buffered data; `connection_lost(None)` follows.
    fn abort(&self);
}

/// `asyncio.Transport`: a bidirectional stream.
pub trait Transport: ReadTransport + WriteTransport {}

/// `asyncio.DatagramTransport`.
pub trait DatagramTransport: BaseTransport {
    /// Sends a datagram to `addr`, or to the connected peer when `None`.
    fn sendto(&self, data: &[u8], addr: Option<SocketAddr>) -> Result<()>;
    /// Closes at once.
    fn abort(&self);
    /// Bytes buffered and not yet sent.
    fn get_write_buffer_size(&self) -> usize;
}

/// `asyncio.SubprocessTransport`.
pub trait SubprocessTransport: BaseTransport {
    /// The child's process id.
    fn get_pid(&self) -> u32;
    /// The exit status, once it exited (negative: killed by that signal).
    fn get_returncode(&self) -> Option<i32>;
    /// The transport of the child's fd 0, 1 or 2, if piped.
    fn get_pipe_transport(&self, fd: i32) -> Option<Rc<dyn BaseTransport>>;
    /// Sends a signal to the child.
    fn send_signal(&self, signal: i32) -> Result<()>;
    /// SIGTERM (TerminateProcess on Windows).
    fn terminate(&self) -> Result<()>;
    /// SIGKILL.
    fn kill(&self) -> Result<()>;
}
