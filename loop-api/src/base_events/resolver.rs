//! `loop.getaddrinfo` and `loop.getnameinfo` (asyncio's `BaseEventLoop`
//! methods): the system resolver, on the loop's default executor.
//!
//! Resolver errors (asyncio's `socket.gaierror`) are
//! [`Error::Io`] with the resolver's message.

use std::io;
use std::net::SocketAddr;

use crate::events::options::{AddrInfo, Family};
use crate::events::{EventLoopExt, LocalBoxFuture, Loop};
use crate::exceptions::{Error, Result};

/// The `AF_*` number of a [`Family`].
pub fn family_number(family: Family) -> i32 {
    match family {
        Family::Unspec => 0, // AF_UNSPEC everywhere
        Family::Inet => socket2::Domain::IPV4.into(),
        Family::Inet6 => socket2::Domain::IPV6.into(),
        Family::Unix => socket2::Domain::UNIX.into(),
    }
}

fn resolve(
    host: Option<String>,
    port: Option<String>,
    family: Family,
    socktype: i32,
    proto: i32,
    flags: i32,
) -> Result<Vec<AddrInfo>> {
    let hints = dns_lookup::AddrInfoHints {
        flags,
        address: family_number(family),
        socktype,
        protocol: proto,
    };
    let found = dns_lookup::getaddrinfo(host.as_deref(), port.as_deref(), Some(hints))
        .map_err(io::Error::from)?;
    let mut out = Vec::new();
    for info in found {
        let info = info?;
        out.push(AddrInfo {
            family: match info.sockaddr {
                SocketAddr::V4(_) => Family::Inet,
                SocketAddr::V6(_) => Family::Inet6,
            },
            socktype: info.socktype,
            proto: info.protocol,
            canonname: info.canonname.unwrap_or_default(),
            addr: info.sockaddr,
        });
    }
    Ok(out)
}

/// `loop.getaddrinfo(host, port, family=, type=, proto=, flags=)`.
pub fn getaddrinfo(
    lp: Loop,
    host: Option<String>,
    port: Option<String>,
    family: Family,
    socktype: i32,
    proto: i32,
    flags: i32,
) -> LocalBoxFuture<'static, Result<Vec<AddrInfo>>> {
    Box::pin(async move {
        lp.run_in_executor(None, move || {
            resolve(host, port, family, socktype, proto, flags)
        })?
        .await?
    })
}

/// `loop.getnameinfo(sockaddr, flags)`: `(host, port)`.
pub fn getnameinfo(
    lp: Loop,
    sockaddr: SocketAddr,
    flags: i32,
) -> LocalBoxFuture<'static, Result<(String, String)>> {
    Box::pin(async move {
        lp.run_in_executor(None, move || {
            dns_lookup::getnameinfo(&sockaddr, flags).map_err(|e| Error::from(io::Error::from(e)))
        })?
        .await?
    })
}
