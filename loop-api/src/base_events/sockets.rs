//! Socket helpers every part of the loop uses: the descriptor `add_reader`
//! takes, asyncio's checks on sockets handed in, and its error messages
//! (`Connect call failed ...`, `error while attempting to bind on address
//! ...`).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::events::options::Family;
use crate::events::RawFd;
use crate::exceptions::{Error, Result};
use crate::transports::{extra_addr, ExtraInfo};

/// The descriptor `add_reader` takes.
pub fn raw_fd(sock: &Socket) -> RawFd {
    #[cfg(unix)]
    {
        std::os::fd::AsRawFd::as_raw_fd(sock)
    }
    #[cfg(windows)]
    {
        std::os::windows::io::AsRawSocket::as_raw_socket(sock)
    }
}

/// asyncio's "the socket must be non-blocking" check (Unix only: Windows
/// cannot report a socket's blocking mode).
pub fn check_nonblocking(sock: &Socket) -> Result<()> {
    #[cfg(unix)]
    {
        if !sock.nonblocking()? {
            return Err(Error::value("the socket must be non-blocking"));
        }
    }
    #[cfg(not(unix))]
    {
        let _ = sock;
    }
    Ok(())
}

/// asyncio's `OSError(errno, f'Connect call failed {address}')`, the
/// address as Python prints it: `('127.0.0.1', 80)`, `('::1', 80, 0, 0)`.
pub fn connect_failed(e: &io::Error, address: &SockAddr) -> Error {
    Error::os(e, format!("Connect call failed {}", py_addr(address)))
}

/// An address as Python prints it: `('127.0.0.1', 80)`,
/// `('::1', 80, 0, 0)`, `'/tmp/sock'`.
pub fn py_addr(address: &SockAddr) -> String {
    match address.as_socket() {
        Some(SocketAddr::V4(a)) => format!("('{}', {})", a.ip(), a.port()),
        Some(SocketAddr::V6(a)) => format!(
            "('{}', {}, {}, {})",
            a.ip(),
            a.port(),
            a.flowinfo(),
            a.scope_id()
        ),
        None => match extra_addr(address.clone()) {
            ExtraInfo::UnixPath(p) => format!("'{}'", p.to_string_lossy()),
            other => format!("{other:?}"),
        },
    }
}

/// asyncio's `OSError(errno, 'error while attempting to bind on address
/// ...')`: the OS error's kind, with the address in the message.
pub fn bind_error(addr: &SocketAddr, e: &io::Error) -> Error {
    let text = e.to_string().to_lowercase();
    let text = text.split(" (os error").next().unwrap_or(&text).to_string();
    Error::os(
        e,
        format!("error while attempting to bind on address {addr}: {text}"),
    )
}

/// The socket domain for `addr`, or the one `family` asks for.
pub fn domain_of(family: Family, addr: &SocketAddr) -> Domain {
    match family {
        Family::Inet => Domain::IPV4,
        Family::Inet6 => Domain::IPV6,
        _ => Domain::for_address(*addr),
    }
}

/// `SOCK_STREAM` as `getaddrinfo` takes it.
pub fn sock_stream() -> i32 {
    i32::from(Type::STREAM)
}

/// `SO_REUSEPORT`, where the OS has it (`ValueError` elsewhere, as asyncio's
/// "reuse_port not supported by socket module").
pub fn set_reuse_port(sock: &Socket) -> Result<()> {
    #[cfg(all(unix, not(target_os = "solaris"), not(target_os = "illumos")))]
    {
        sock.set_reuse_port(true)?;
        Ok(())
    }
    #[cfg(not(all(unix, not(target_os = "solaris"), not(target_os = "illumos"))))]
    {
        let _ = sock;
        Err(Error::value("reuse_port not supported by socket module"))
    }
}

/// `BlockingIOError` and `InterruptedError`: wait and try again.
pub fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}
