//! `loop.getaddrinfo` and `loop.getnameinfo` (asyncio's `BaseEventLoop`
//! methods): the system resolver, on the loop's default executor; and
//! asyncio's `_ensure_resolved`, which the `create_*` methods use: an IP
//! literal is turned into its address on the spot, without the resolver or
//! the executor (a busy or shut-down executor does not hold up a
//! connection to `127.0.0.1`).
//!
//! Resolver errors (asyncio's `socket.gaierror`) are
//! [`Error::Io`] with the resolver's message.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};

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

/// `loop.getaddrinfo_dyn(host, port, family=, type=, proto=, flags=)`.
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

/// asyncio's `_ipaddr_info`: `host` as an address without the resolver, if
/// it is an IP literal of a family `family` admits (`Unspec`: either), for
/// a stream or datagram socket. IPv6 literals may carry a scope id, by
/// number (`fe80::1%2`) or, on Unix, by interface name (`fe80::1%eth0`).
/// `None`: the host needs the resolver.
pub fn ip_literal(host: &str, port: u16, family: Family, socktype: i32) -> Option<AddrInfo> {
    let stream = i32::from(socket2::Type::STREAM);
    let dgram = i32::from(socket2::Type::DGRAM);
    if socktype != stream && socktype != dgram {
        return None;
    }
    let addr: SocketAddr = match host.split_once('%') {
        None => SocketAddr::new(host.parse::<IpAddr>().ok()?, port),
        Some((ip, scope)) => {
            let ip: Ipv6Addr = ip.parse().ok()?;
            SocketAddrV6::new(ip, port, 0, scope_id(scope)?).into()
        }
    };
    let family_of = if addr.is_ipv4() {
        Family::Inet
    } else {
        Family::Inet6
    };
    if family != Family::Unspec && family != family_of {
        return None;
    }
    // asyncio fills in the protocol a literal implies.
    let proto = if socktype == stream { 6 } else { 17 };
    Some(AddrInfo {
        family: family_of,
        socktype,
        proto,
        canonname: String::new(),
        addr,
    })
}

/// A scope id: a number, or (Unix) an interface's name.
fn scope_id(scope: &str) -> Option<u32> {
    if let Ok(n) = scope.parse() {
        return Some(n);
    }
    #[cfg(unix)]
    {
        let name = std::ffi::CString::new(scope).ok()?;
        // SAFETY: a NUL-terminated string, alive for the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        (index != 0).then_some(index)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// asyncio's `_ensure_resolved`: an IP literal at once, anything else (a
/// name, or no host: every interface) through `loop.getaddrinfo`.
pub async fn ensure_resolved(
    lp: &Loop,
    host: Option<String>,
    port: u16,
    family: Family,
    socktype: i32,
    proto: i32,
    flags: i32,
) -> Result<Vec<AddrInfo>> {
    if let Some(info) = host
        .as_deref()
        .and_then(|h| ip_literal(h, port, family, socktype))
    {
        if proto == 0 || proto == info.proto {
            return Ok(vec![info]);
        }
    }
    lp.getaddrinfo_dyn(host, Some(port.to_string()), family, socktype, proto, flags)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: i32 = 1;

    #[test]
    fn literals_are_addresses_and_names_are_not() {
        let v4 = ip_literal("127.0.0.1", 80, Family::Unspec, STREAM).unwrap();
        assert_eq!(
            (v4.family, v4.addr),
            (Family::Inet, "127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(v4.proto, 6);
        let v6 = ip_literal("::1", 80, Family::Inet6, STREAM).unwrap();
        assert_eq!(v6.addr, "[::1]:80".parse().unwrap());
        assert!(ip_literal("localhost", 80, Family::Unspec, STREAM).is_none());
        assert!(ip_literal("127.0.0.1", 80, Family::Inet6, STREAM).is_none());
        assert!(ip_literal("::1", 80, Family::Inet, STREAM).is_none());
        assert!(ip_literal("", 80, Family::Unspec, STREAM).is_none());
        assert!(ip_literal("1.2.3", 80, Family::Unspec, STREAM).is_none());
    }

    #[test]
    fn ipv6_scope_ids_by_number_and_by_name() {
        let a = ip_literal("fe80::1%7", 9, Family::Unspec, STREAM).unwrap();
        let SocketAddr::V6(a) = a.addr else { panic!() };
        assert_eq!(a.scope_id(), 7);
        #[cfg(target_os = "linux")]
        {
            let lo = ip_literal("fe80::1%lo", 9, Family::Unspec, STREAM).unwrap();
            let SocketAddr::V6(lo) = lo.addr else {
                panic!()
            };
            assert_ne!(lo.scope_id(), 0);
        }
        assert!(ip_literal("fe80::1%no-such-interface", 9, Family::Unspec, STREAM).is_none());
        assert!(ip_literal("127.0.0.1%1", 9, Family::Unspec, STREAM).is_none());
    }
}
