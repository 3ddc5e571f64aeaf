//! Transports: the loop's side of a connection (asyncio's `transports` module).
//!
//! A transport is handed to its protocol as `Rc<dyn Transport>`; methods
//! take `&self` because the protocol calls them from inside its own
//! callbacks. asyncio's `get_extra_info(name)` returns any object; here it
//! returns an [`ExtraInfo`] value.

use std::ffi::OsString;
use std::fs::File;
use std::net::SocketAddr;
use std::rc::Rc;

use socket2::SockAddr;

use crate::events::{LocalBoxFuture, RawFd};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::{DatagramProtocol, Protocol, SubprocessProtocol};

pub mod flow_control;
pub mod lifecycle;

/// What `get_extra_info` can return.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtraInfo {
    /// `peername` / `sockname` of an IP socket.
    Addr(SocketAddr),
    /// `peername` / `sockname` of a Unix socket (empty for unnamed; an
    /// abstract name starts with a NUL byte).
    UnixPath(OsString),
    /// `socket` / `pipe`: the raw descriptor (still owned by the transport).
    Fd(RawFd),
    /// Any other value, as text.
    Text(String),
    /// Bytes: `peercert`, the peer's certificate (DER).
    Bytes(Vec<u8>),
    /// `ssl_object`: the TLS connection's state after the handshake.
    Tls(TlsInfo),
}

/// What a TLS transport's `get_extra_info("ssl_object")` reports (the
/// rustls connection's state once the handshake is done).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// The protocol version, e.g. `TLSv1_3`.
    pub version: String,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The protocol ALPN chose, if any.
    pub alpn: Option<Vec<u8>>,
    /// The server name: asked for (client side) or received (server side).
    pub sni: Option<String>,
    /// The peer's certificate chain (DER), leaf first; empty for a client
    /// that sent none.
    pub peer_certificates: Vec<Vec<u8>>,
    /// True on the server side.
    pub server_side: bool,
    /// True when the handshake resumed an earlier session.
    pub resumed: bool,
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

    /// `get_extra_info("peername")` as an IP address (`None` for a Unix
    /// socket or no peer).
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.get_extra_info("peername")?.as_addr()
    }

    /// `get_extra_info("sockname")` as an IP address.
    fn local_addr(&self) -> Option<SocketAddr> {
        self.get_extra_info("sockname")?.as_addr()
    }
}

impl ExtraInfo {
    /// The IP address, if this is one.
    pub fn as_addr(&self) -> Option<SocketAddr> {
        match self {
            ExtraInfo::Addr(a) => Some(*a),
            _ => None,
        }
    }

    /// The Unix socket path, if this is one.
    pub fn as_unix_path(&self) -> Option<&std::ffi::OsStr> {
        match self {
            ExtraInfo::UnixPath(p) => Some(p),
            _ => None,
        }
    }
}

/// `peername`/`sockname` as `get_extra_info` returns them: an IP address,
/// or a Unix socket's path (empty when unnamed; an abstract name starts
/// with a NUL).
pub fn extra_addr(addr: SockAddr) -> ExtraInfo {
    if let Some(a) = addr.as_socket() {
        return ExtraInfo::Addr(a);
    }
    #[cfg(unix)]
    {
        if let Some(p) = addr.as_pathname() {
            return ExtraInfo::UnixPath(p.as_os_str().to_owned());
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(name) = addr.as_abstract_namespace() {
            use std::os::unix::ffi::OsStringExt;
            let mut bytes = vec![0u8];
            bytes.extend_from_slice(name);
            return ExtraInfo::UnixPath(OsString::from_vec(bytes));
        }
    }
    ExtraInfo::UnixPath(OsString::new())
}

/// How a transport names itself in messages (asyncio's `repr(transport)`):
/// `<Transport fd=7 peername=127.0.0.1:5000>`.
pub fn describe(t: &dyn BaseTransport) -> String {
    let mut s = String::from("<Transport");
    if t.is_closing() {
        s.push_str(" closing");
    }
    if let Some(ExtraInfo::Fd(fd)) = t.get_extra_info("socket") {
        s.push_str(&format!(" fd={fd}"));
    }
    match t.get_extra_info("peername") {
        Some(ExtraInfo::Addr(a)) => s.push_str(&format!(" peername={a}")),
        Some(ExtraInfo::UnixPath(p)) if !p.is_empty() => {
            s.push_str(&format!(" peername={}", p.to_string_lossy()))
        }
        _ => {}
    }
    s.push('>');
    s
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

    // ----- plumbing for `loop.sendfile` (asyncio's private hooks) ---------------

    /// asyncio's `_make_empty_waiter`: a future that completes once every
    /// buffered byte has been handed to the OS (at once if none is buffered),
    /// or fails with the error that closed the transport. `None` if this
    /// transport cannot tell, in which case `loop.sendfile` refuses it.
    fn _make_empty_waiter(&self) -> Option<Future<()>> {
        None
    }
    /// asyncio's `_sendfile_native`: sends `count` bytes of `file` from
    /// `offset` with the OS's zero-copy call, or `None` if this transport
    /// has none (then `loop.sendfile` falls back to reading and writing).
    /// The future fails with `SendfileNotAvailable` when zero-copy turns out
    /// to be impossible for this file before anything was sent.
    fn _sendfile_native(
        &self,
        _file: Rc<File>,
        _offset: u64,
        _count: Option<u64>,
    ) -> Option<LocalBoxFuture<'static, Result<u64>>> {
        None
    }
}

/// `asyncio.Transport`: a bidirectional stream.
pub trait Transport: ReadTransport + WriteTransport {
    /// Replaces the protocol (asyncio's `BaseTransport.set_protocol`).
    fn set_protocol(&self, protocol: Rc<dyn Protocol>);
    /// The current protocol.
    fn get_protocol(&self) -> Rc<dyn Protocol>;
    /// asyncio's `_force_close(exc)`: drops what is buffered and closes
    /// now; the protocol's `connection_lost` gets `exc`. `sslproto` uses it
    /// to fail a handshake with its own error. Defaults to `abort()`
    /// (`connection_lost(None)`).
    fn _force_close(&self, exc: Option<Error>) {
        let _ = exc;
        self.abort();
    }
}

/// `asyncio.DatagramTransport`.
pub trait DatagramTransport: BaseTransport {
    /// Sends a datagram to `addr`, or to the connected peer when `None`.
    /// An address on a connected endpoint must be the peer's (`ValueError`
    /// otherwise); no address on an unconnected one is a `ValueError`.
    fn sendto(&self, data: &[u8], addr: Option<SockAddr>) -> Result<()>;
    /// Closes at once.
    fn abort(&self);
    /// Bytes buffered and not yet sent.
    fn get_write_buffer_size(&self) -> usize;
    /// Replaces the protocol (asyncio's `BaseTransport.set_protocol`):
    /// datagrams from now on go to `protocol`, and so does
    /// `connection_lost`.
    fn set_protocol(&self, protocol: Rc<dyn DatagramProtocol>);
    /// The current protocol.
    fn get_protocol(&self) -> Rc<dyn DatagramProtocol>;
}

/// `asyncio.SubprocessTransport`: a child process and its pipes.
///
/// `close` closes the pipes and kills the child if it is still running;
/// the protocol's `connection_lost` follows once the child exited and
/// every pipe closed.
pub trait SubprocessTransport: BaseTransport {
    /// The child's process id.
    fn get_pid(&self) -> u32;
    /// The return code once the child exited and was reaped: its exit
    /// status, or minus the signal that killed it (Unix).
    fn get_returncode(&self) -> Option<i32>;
    /// The transport of the child's fd 0 (a write pipe), 1 or 2 (read
    /// pipes), if that stream is a pipe and connected.
    fn get_pipe_transport(&self, fd: i32) -> Option<Rc<dyn Transport>>;
    /// Sends `signal` to the child. `ProcessLookupError` once the child was
    /// reaped (its pid may name another process by then). On Windows,
    /// `SIGTERM` terminates it, and `CTRL_C_EVENT`/`CTRL_BREAK_EVENT` go to
    /// its console process group; other signals are a `ValueError`.
    fn send_signal(&self, signal: i32) -> Result<()>;
    /// `SIGTERM` (`TerminateProcess` on Windows).
    fn terminate(&self) -> Result<()>;
    /// `SIGKILL` (`TerminateProcess` on Windows).
    fn kill(&self) -> Result<()>;
    /// Resolves with the return code once the child exited (asyncio's
    /// private `_wait`, which `Process.wait()` awaits). It does not wait
    /// for the pipes: a grandchild holding stdout open does not delay it
    /// (CPython gh-119710).
    fn wait(&self) -> LocalBoxFuture<'static, Result<i32>>;
    /// Replaces the protocol (asyncio's `BaseTransport.set_protocol`).
    fn set_protocol(&self, protocol: Rc<dyn SubprocessProtocol>);
    /// The current protocol (`None` once `connection_lost` ran).
    fn get_protocol(&self) -> Option<Rc<dyn SubprocessProtocol>>;
}
