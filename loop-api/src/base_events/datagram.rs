//! `loop.create_datagram_endpoint`, over the `_make_datagram_transport` hook.
//!
//! # As in asyncio
//! - `local_addr` binds, `remote_addr` connects (unless `allow_broadcast`,
//!   where the remote address is only `sendto`'s default); both are
//!   resolved with `getaddrinfo` and paired by family, the first pair that
//!   works wins, else the first error.
//! - `sock=` takes a datagram socket as is: any other option with it is a
//!   `ValueError` naming them.
//! - `reuse_address=Some(true)` is refused: `SO_REUSEADDR` on UDP lets
//!   another process steal the port's datagrams.
//! - AF_UNIX (`family: Unix`, addresses [`DatagramAddr::Unix`]): a stale
//!   socket file at `local_addr` is removed before binding.

use std::rc::Rc;

use socket2::{Domain, SockAddr, Socket, Type};

use super::resolver::ensure_resolved;
use super::sockets::set_reuse_port;
use super::BaseLoop;
use crate::events::options::{CreateDatagramEndpointOptions, DatagramAddr, Family};
use crate::events::{DatagramPair, EventLoopExt, LocalBoxFuture, Loop};
use crate::exceptions::{Error, Result};
use crate::protocols::DatagramProtocolFactory;

/// asyncio's message for `reuse_address=True`.
pub const REUSE_ADDRESS_REFUSED: &str = "Passing `reuse_address=True` is no longer supported, as the usage of SO_REUSEPORT in UDP poses a significant security concern.";

/// `loop.create_datagram_endpoint`.
pub fn create_datagram_endpoint(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: DatagramProtocolFactory,
    options: CreateDatagramEndpointOptions,
) -> LocalBoxFuture<'static, Result<DatagramPair>> {
    Box::pin(async move {
        if options.reuse_address == Some(true) {
            return Err(Error::value(REUSE_ADDRESS_REFUSED));
        }
        let (sock, r_addr) = match options.sock.clone() {
            Some(sock) => (check_given_socket(sock, &options)?, None),
            None => open_socket(&(lp.clone() as Loop), &options).await?,
        };
        let protocol = protocol_factory();
        let waiter = lp.create_future::<()>();
        let transport =
            lp._make_datagram_transport(sock, protocol.clone(), r_addr, Some(waiter.clone()))?;
        let guard = crate::transports::lifecycle::CloseOnDrop::new(transport.clone());
        waiter.await?;
        guard.defuse();
        Ok((transport, protocol))
    })
}

fn check_given_socket(sock: Rc<Socket>, o: &CreateDatagramEndpointOptions) -> Result<Rc<Socket>> {
    if sock.r#type()? == Type::STREAM {
        return Err(Error::value(format!(
            "A datagram socket was expected, got {sock:?}"
        )));
    }
    // Named as asyncio prints them: `local_addr=('127.0.0.1', 0)`, `family=2`.
    let py = |a: &DatagramAddr| match a {
        DatagramAddr::Inet(h, p) => format!("('{h}', {p})"),
        DatagramAddr::Unix(p) => format!("'{}'", p.display()),
    };
    let mut problems = Vec::new();
    if let Some(a) = &o.local_addr {
        problems.push(format!("local_addr={}", py(a)));
    }
    if let Some(a) = &o.remote_addr {
        problems.push(format!("remote_addr={}", py(a)));
    }
    if o.family != Family::Unspec {
        problems.push(format!(
            "family={}",
            super::resolver::family_number(o.family)
        ));
    }
    if o.proto != 0 {
        problems.push(format!("proto={}", o.proto));
    }
    if o.flags != 0 {
        problems.push(format!("flags={}", o.flags));
    }
    if o.reuse_port {
        problems.push("reuse_port=True".into());
    }
    if o.allow_broadcast {
        problems.push("allow_broadcast=True".into());
    }
    if !problems.is_empty() {
        return Err(Error::value(format!(
            "socket modifier keyword arguments can not be used when sock is specified. ({})",
            problems.join(", ")
        )));
    }
    Ok(sock)
}

/// One candidate: the socket's domain, where to bind, where to connect.
struct Candidate {
    domain: Domain,
    local: Option<SockAddr>,
    remote: Option<SockAddr>,
}

async fn open_socket(
    lp: &Loop,
    o: &CreateDatagramEndpointOptions,
) -> Result<(Rc<Socket>, Option<SockAddr>)> {
    let candidates = candidates(lp, o).await?;
    let mut first_error = None;
    for c in candidates {
        match try_candidate(lp, o, &c).await {
            Ok(pair) => return Ok(pair),
            Err(e @ Error::Io(_)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(first_error.unwrap_or_else(|| Error::value("can not get address information")))
}

async fn try_candidate(
    lp: &Loop,
    o: &CreateDatagramEndpointOptions,
    c: &Candidate,
) -> Result<(Rc<Socket>, Option<SockAddr>)> {
    let sock = Socket::new(c.domain, Type::DGRAM, None)?;
    if o.reuse_port {
        set_reuse_port(&sock)?;
    }
    if o.allow_broadcast {
        sock.set_broadcast(true)?;
    }
    sock.set_nonblocking(true)?;
    if let Some(l) = &c.local {
        sock.bind(l)?;
    }
    let sock = Rc::new(sock);
    if let Some(r) = &c.remote {
        if !o.allow_broadcast {
            lp.sock_connect(sock.clone(), r.clone()).await?;
        }
    }
    Ok((sock, c.remote.clone()))
}

async fn candidates(lp: &Loop, o: &CreateDatagramEndpointOptions) -> Result<Vec<Candidate>> {
    if o.local_addr.is_none() && o.remote_addr.is_none() {
        let domain = match o.family {
            Family::Inet => Domain::IPV4,
            Family::Inet6 => Domain::IPV6,
            #[cfg(unix)]
            Family::Unix => Domain::UNIX,
            _ => return Err(Error::value("unexpected address family")),
        };
        return Ok(vec![Candidate {
            domain,
            local: None,
            remote: None,
        }]);
    }
    if o.family == Family::Unix {
        return unix_candidates(o);
    }
    // Pair the local and remote addresses by family, in resolution order.
    let mut pairs: Vec<(bool, [Option<SockAddr>; 2])> = Vec::new();
    for (idx, addr) in [&o.local_addr, &o.remote_addr].into_iter().enumerate() {
        let Some(addr) = addr else { continue };
        let DatagramAddr::Inet(host, port) = addr else {
            return Err(Error::Type(
                "an (host, port) address is expected unless family is Unix".into(),
            ));
        };
        let infos = ensure_resolved(
            lp,
            Some(host.clone()),
            *port,
            o.family,
            i32::from(Type::DGRAM),
            o.proto,
            o.flags,
        )
        .await?;
        if infos.is_empty() {
            return Err(std::io::Error::other("getaddrinfo() returned empty list").into());
        }
        for info in infos {
            let v4 = info.addr.is_ipv4();
            let slot = match pairs.iter_mut().find(|(f, _)| *f == v4) {
                Some(p) => p,
                None => {
                    pairs.push((v4, [None, None]));
                    pairs.last_mut().expect("pushed")
                }
            };
            if slot.1[idx].is_none() {
                slot.1[idx] = Some(info.addr.into());
            }
        }
    }
    let out: Vec<Candidate> = pairs
        .into_iter()
        .filter(|(_, [l, r])| {
            !(o.local_addr.is_some() && l.is_none() || o.remote_addr.is_some() && r.is_none())
        })
        .map(|(v4, [local, remote])| Candidate {
            domain: if v4 { Domain::IPV4 } else { Domain::IPV6 },
            local,
            remote,
        })
        .collect();
    if out.is_empty() {
        return Err(Error::value("can not get address information"));
    }
    Ok(out)
}

#[cfg(unix)]
fn unix_candidates(o: &CreateDatagramEndpointOptions) -> Result<Vec<Candidate>> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::FileTypeExt;
    let path_of = |a: &Option<DatagramAddr>| -> Result<Option<std::path::PathBuf>> {
        match a {
            None => Ok(None),
            Some(DatagramAddr::Unix(p)) => Ok(Some(p.clone())),
            Some(_) => Err(Error::Type("string is expected".into())),
        }
    };
    let local = path_of(&o.local_addr)?;
    let remote = path_of(&o.remote_addr)?;
    if let Some(p) = &local {
        if p.as_os_str().as_bytes().first() != Some(&0) {
            if let Ok(m) = std::fs::metadata(p) {
                if m.file_type().is_socket() {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }
    Ok(vec![Candidate {
        domain: Domain::UNIX,
        local: local.map(SockAddr::unix).transpose()?,
        remote: remote.map(SockAddr::unix).transpose()?,
    }])
}

#[cfg(not(unix))]
fn unix_candidates(_o: &CreateDatagramEndpointOptions) -> Result<Vec<Candidate>> {
    Err(Error::NotSupported {
        feature: "AF_UNIX datagram endpoints",
        reason: "Windows has no AF_UNIX datagram sockets".into(),
    })
}
