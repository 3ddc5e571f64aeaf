//! `loop.create_connection` and `loop.connect_accepted_socket`, written once
//! over the backend plumbing (`sock_connect`, `_make_socket_transport`).
//!
//! # As in asyncio
//! - `host`/`port` go through `getaddrinfo` (with `family`, `proto`,
//!   `flags`); each address is tried in turn, or, with
//!   `happy_eyeballs_delay`, raced with staggered starts (RFC 8305), the
//!   addresses interleaved by family (`interleave`, 1 by default then).
//! - `local_addr` is resolved too and bound before connecting, skipping
//!   local addresses of another family.
//! - When every attempt fails: with `all_errors`, an `ExceptionGroup` of
//!   them all; else the one error, or the first when all read the same, or
//!   `OSError("Multiple exceptions: ...")`.
//! - The protocol is made only once the socket is connected; the result
//!   comes after `connection_made` ran.
//! - With `ssl=`, the connection is wrapped in TLS ([`crate::sslproto`])
//!   and the result comes once the handshake is done; `server_hostname`
//!   (else `host`) is the name the certificate is checked against.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use socket2::{Socket, Type};

use super::resolver::ensure_resolved;
use super::sockets::{bind_error, domain_of, sock_stream};
use super::tls_options::{self, make_transport, Tls};
use super::BaseLoop;
use crate::events::options::{AddrInfo, CreateConnectionOptions, Family, SslContext};
use crate::events::{EventLoopExt, LocalBoxFuture, Loop, StreamPair};
use crate::exceptions::{Error, Result};
use crate::protocols::ProtocolFactory;
use crate::staggered::{interleave_addrinfos, staggered_race, Attempt};

/// `loop.create_connection`.
pub fn create_connection(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: ProtocolFactory,
    host: Option<String>,
    port: Option<u16>,
    options: CreateConnectionOptions,
) -> LocalBoxFuture<'static, Result<StreamPair>> {
    Box::pin(async move {
        let tls = tls_options::client(
            options.ssl.clone(),
            options.server_hostname.clone(),
            host.as_deref(),
            options.ssl_handshake_timeout,
            options.ssl_shutdown_timeout,
        )?;
        let sock = if host.is_some() || port.is_some() {
            if options.sock.is_some() {
                return Err(Error::value(
                    "host/port and sock can not be specified at the same time",
                ));
            }
            connect_host(&(lp.clone() as Loop), host, port, &options).await?
        } else {
            let Some(sock) = options.sock.clone() else {
                return Err(Error::value(
                    "host and port was not specified and no sock specified",
                ));
            };
            if sock.r#type()? != Type::STREAM {
                return Err(Error::value(format!(
                    "A Stream Socket was expected, got {sock:?}"
                )));
            }
            sock
        };
        create_connection_transport(&lp, sock, protocol_factory, tls.as_ref()).await
    })
}

/// `loop.connect_accepted_socket`.
pub fn connect_accepted_socket(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: ProtocolFactory,
    sock: Rc<Socket>,
    ssl: Option<SslContext>,
    ssl_handshake_timeout: Option<Duration>,
    ssl_shutdown_timeout: Option<Duration>,
) -> LocalBoxFuture<'static, Result<StreamPair>> {
    Box::pin(async move {
        if sock.r#type()? != Type::STREAM {
            return Err(Error::value(format!(
                "A Stream Socket was expected, got {sock:?}"
            )));
        }
        let tls = tls_options::server(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)?;
        create_connection_transport(&lp, sock, protocol_factory, tls.as_ref()).await
    })
}

/// asyncio's `_create_connection_transport`: the protocol, the transport
/// (under TLS when `tls` says so), and the wait for `connection_made` (and
/// the handshake). A failed or cancelled wait closes the connection.
pub(crate) async fn create_connection_transport(
    lp: &Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    protocol_factory: ProtocolFactory,
    tls: Option<&Tls>,
) -> Result<StreamPair> {
    let protocol = protocol_factory();
    let waiter = lp.create_future::<()>();
    let (raw, transport) =
        make_transport(lp, sock, protocol.clone(), tls, Some(waiter.clone()), None)?;
    // Closes the connection if the wait fails or is cancelled (the future
    // dropped).
    let guard = crate::transports::lifecycle::CloseOnDrop::new(raw);
    waiter.await?;
    guard.defuse();
    Ok((transport, protocol))
}

/// Resolves `host`/`port` (and `local_addr`) and connects to one address.
async fn connect_host(
    lp: &Loop,
    host: Option<String>,
    port: Option<u16>,
    options: &CreateConnectionOptions,
) -> Result<Rc<Socket>> {
    let infos = ensure_resolved(
        lp,
        host,
        port.unwrap_or(0),
        options.family,
        sock_stream(),
        options.proto,
        options.flags,
    )
    .await?;
    if infos.is_empty() {
        return Err(std::io::Error::other("getaddrinfo() returned empty list").into());
    }
    let local = match options.local_addr {
        Some(addr) => {
            let l = ensure_resolved(
                lp,
                Some(addr.ip().to_string()),
                addr.port(),
                options.family,
                sock_stream(),
                options.proto,
                options.flags,
            )
            .await?;
            if l.is_empty() {
                return Err(std::io::Error::other("getaddrinfo() returned empty list").into());
            }
            Some(Rc::new(l))
        }
        None => None,
    };
    let interleave = match (options.interleave, options.happy_eyeballs_delay) {
        (Some(n), _) => Some(n),
        (None, Some(_)) => Some(1),
        (None, None) => None,
    };
    let infos = match interleave {
        Some(n) if n > 0 => interleave_addrinfos(infos, n),
        _ => infos,
    };
    let mut errors: Vec<Error> = Vec::new();
    let mut winner = None;
    match options.happy_eyeballs_delay {
        None => {
            for info in &infos {
                let mut mine = Vec::new();
                match connect_sock(lp.clone(), info.clone(), local.clone(), &mut mine).await {
                    Ok(s) => {
                        winner = Some(s);
                        break;
                    }
                    Err(Error::Io(_)) => errors.extend(mine),
                    Err(e) => return Err(e),
                }
            }
        }
        Some(delay) => {
            let attempts: Vec<Attempt<(Rc<Socket>, Vec<Error>)>> = infos
                .iter()
                .map(|info| {
                    let (lp, info, local) = (lp.clone(), info.clone(), local.clone());
                    Box::new(move || {
                        Box::pin(async move {
                            let mut mine = Vec::new();
                            match connect_sock(lp, info, local, &mut mine).await {
                                Ok(s) => Ok((s, mine)),
                                Err(e) => Err(attempt_error(e, mine)),
                            }
                        }) as LocalBoxFuture<'static, _>
                    }) as Attempt<_>
                })
                .collect();
            let outcome = staggered_race(lp, attempts, Some(delay.as_secs_f64())).await?;
            for e in outcome.errors.into_iter().flatten() {
                match e {
                    Error::ExceptionGroup { exceptions, .. } => errors.extend(exceptions),
                    other => errors.push(other),
                }
            }
            winner = outcome.winner.map(|((s, _), _)| s);
        }
    }
    match winner {
        Some(s) => Ok(s),
        None => Err(combine_errors(errors, options.all_errors)),
    }
}

/// One attempt's errors travel through the race as one error: the bind
/// failures before the connect's, as asyncio collects them per attempt.
fn attempt_error(last: Error, mut mine: Vec<Error>) -> Error {
    if mine.len() <= 1 {
        return mine.pop().unwrap_or(last);
    }
    Error::ExceptionGroup {
        message: "attempt".into(),
        exceptions: mine,
    }
}

/// asyncio's rule for reporting every failed attempt as one error.
fn combine_errors(errors: Vec<Error>, all_errors: bool) -> Error {
    if all_errors {
        return Error::ExceptionGroup {
            message: "create_connection failed".into(),
            exceptions: errors,
        };
    }
    let mut errors = errors;
    match errors.len() {
        0 => std::io::Error::other("create_connection failed: no address to try").into(),
        1 => errors.pop().expect("one"),
        _ => {
            let model = errors[0].to_string();
            if errors.iter().all(|e| e.to_string() == model) {
                return errors.swap_remove(0);
            }
            let text: Vec<String> = errors.iter().map(io_text).collect();
            std::io::Error::other(format!("Multiple exceptions: {}", text.join(", "))).into()
        }
    }
}

/// An error as `str(exc)` shows it (without our "OSError: " prefix).
fn io_text(e: &Error) -> String {
    match e {
        Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// asyncio's `_connect_sock`: create, bind, connect one socket. Every error
/// is also appended to `errors`, in the order it happened.
async fn connect_sock(
    lp: Loop,
    info: AddrInfo,
    local: Option<Rc<Vec<AddrInfo>>>,
    errors: &mut Vec<Error>,
) -> Result<Rc<Socket>> {
    let r = async {
        let domain = domain_of(info.family, &info.addr);
        let sock = Socket::new(domain, Type::STREAM, None)?;
        sock.set_nonblocking(true)?;
        if let Some(local) = &local {
            bind_local(&sock, &info, local, errors)?;
        }
        let sock = Rc::new(sock);
        lp.sock_connect(sock.clone(), info.addr.into()).await?;
        Ok(sock)
    }
    .await;
    if let Err(e @ Error::Io(_)) = &r {
        errors.push(e.clone());
    }
    r
}

fn bind_local(
    sock: &Socket,
    info: &AddrInfo,
    local: &[AddrInfo],
    errors: &mut Vec<Error>,
) -> Result<()> {
    let mut tried = false;
    for l in local {
        if !same_family(l, info) {
            continue;
        }
        tried = true;
        match sock.bind(&l.addr.into()) {
            Ok(()) => return Ok(()),
            Err(e) => errors.push(bind_error(&l.addr, &e)),
        }
    }
    match errors.pop() {
        Some(e) if tried => Err(e),
        _ => Err(std::io::Error::other(format!(
            "no matching local address with family={} found",
            family_name(&info.addr)
        ))
        .into()),
    }
}

fn same_family(a: &AddrInfo, b: &AddrInfo) -> bool {
    match (a.family, b.family) {
        (Family::Unspec, _) | (_, Family::Unspec) => a.addr.is_ipv4() == b.addr.is_ipv4(),
        (x, y) => x == y,
    }
}

fn family_name(a: &SocketAddr) -> &'static str {
    if a.is_ipv4() {
        "AddressFamily.AF_INET"
    } else {
        "AddressFamily.AF_INET6"
    }
}
