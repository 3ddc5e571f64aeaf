//! asyncio's checks of the TLS arguments of the `create_*` methods,
//! `connect_accepted_socket` and `start_tls`, and what they come to: a
//! [`Tls`] setup, from which each connection gets its [`SslProtocol`].

use std::rc::Rc;
use std::time::Duration;

use socket2::Socket;

use super::server::Server;
use super::BaseLoop;
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::protocols::Protocol;
use crate::ssl::SslContext;
use crate::sslproto::SslProtocol;
use crate::transports::Transport;

/// A checked TLS setup: the configuration, the name to verify (client
/// side) and the two timeouts.
#[derive(Clone)]
pub(crate) struct Tls {
    pub context: SslContext,
    pub server_hostname: Option<String>,
    pub handshake_timeout: Option<f64>,
    pub shutdown_timeout: Option<f64>,
}

fn secs(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64())
}

fn positive(d: Option<Duration>, name: &str) -> Result<()> {
    match d {
        Some(d) if d.is_zero() => Err(Error::value(format!(
            "{name} should be a positive number, got 0"
        ))),
        _ => Ok(()),
    }
}

/// The checks common to every caller: timeouts only with `ssl`, and
/// positive.
fn check_timeouts(
    ssl: bool,
    handshake: Option<Duration>,
    shutdown: Option<Duration>,
) -> Result<()> {
    if !ssl && handshake.is_some() {
        return Err(Error::value(
            "ssl_handshake_timeout is only meaningful with ssl",
        ));
    }
    if !ssl && shutdown.is_some() {
        return Err(Error::value(
            "ssl_shutdown_timeout is only meaningful with ssl",
        ));
    }
    positive(handshake, "ssl_handshake_timeout")?;
    positive(shutdown, "ssl_shutdown_timeout")
}

/// The client side (`create_connection`, `create_unix_connection`): the
/// name to verify is `server_hostname`, else `host`.
pub(crate) fn client(
    ssl: Option<SslContext>,
    server_hostname: Option<String>,
    host: Option<&str>,
    handshake: Option<Duration>,
    shutdown: Option<Duration>,
) -> Result<Option<Tls>> {
    check_timeouts(ssl.is_some(), handshake, shutdown)?;
    let Some(context) = ssl else {
        if server_hostname.is_some() {
            return Err(Error::value("server_hostname is only meaningful with ssl"));
        }
        return Ok(None);
    };
    if context.is_server() {
        return Err(Error::value(
            "a client connection needs a client SslContext (SslContext::client...)",
        ));
    }
    let server_hostname = match server_hostname {
        Some(name) => Some(name),
        None => match host {
            Some(h) if !h.is_empty() => Some(h.to_string()),
            _ => {
                return Err(Error::value(
                    "You must set server_hostname when using ssl without a host",
                ))
            }
        },
    };
    Ok(Some(Tls {
        context,
        server_hostname,
        handshake_timeout: secs(handshake),
        shutdown_timeout: secs(shutdown),
    }))
}

/// The server side (`create_server`, `create_unix_server`,
/// `connect_accepted_socket`).
pub(crate) fn server(
    ssl: Option<SslContext>,
    handshake: Option<Duration>,
    shutdown: Option<Duration>,
) -> Result<Option<Tls>> {
    check_timeouts(ssl.is_some(), handshake, shutdown)?;
    let Some(context) = ssl else { return Ok(None) };
    if !context.is_server() {
        return Err(Error::value(
            "a server needs a server SslContext (SslContext::server...)",
        ));
    }
    Ok(Some(Tls {
        context,
        server_hostname: None,
        handshake_timeout: secs(handshake),
        shutdown_timeout: secs(shutdown),
    }))
}

/// Wraps a connected socket in this loop's transport, under TLS when `tls`
/// says so (asyncio's `_make_socket_transport` or `_make_ssl_transport`):
/// the raw transport, and the transport the application writes to (the
/// same without TLS). `waiter` gets `connection_made` (and, with TLS, the
/// handshake's end).
pub(crate) fn make_transport(
    lp: &Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    protocol: Rc<dyn Protocol>,
    tls: Option<&Tls>,
    waiter: Option<Future<()>>,
    server: Option<Rc<Server>>,
) -> Result<(Rc<dyn Transport>, Rc<dyn Transport>)> {
    let Some(tls) = tls else {
        let t = lp._make_socket_transport(sock, protocol, waiter, server)?;
        return Ok((t.clone(), t));
    };
    let ssl = SslProtocol::new(
        lp.clone(),
        protocol,
        tls.context.clone(),
        waiter,
        tls.server_hostname.clone(),
        true,
        tls.handshake_timeout,
        tls.shutdown_timeout,
    )?;
    let app = ssl.app_transport().expect("made with the protocol");
    let raw = lp._make_socket_transport(sock, ssl, None, server)?;
    Ok((raw, app))
}

/// `loop.start_tls(transport, protocol, sslcontext, ...)`: upgrades a
/// plain connection to TLS (the STARTTLS pattern), as asyncio does: the
/// TLS layer becomes the raw transport's protocol (reading paused while it
/// is swapped in), and the result, once the handshake is done, is the
/// transport the application writes to from then on; `protocol` hears no
/// second `connection_made`. On failure the new transport is closed (not
/// the raw one first: uvloop #198) and the error returned.
pub(crate) fn start_tls(
    lp: Rc<dyn BaseLoop>,
    transport: Rc<dyn Transport>,
    protocol: Rc<dyn Protocol>,
    sslcontext: SslContext,
    options: crate::events::options::StartTlsOptions,
) -> crate::events::LocalBoxFuture<'static, Result<Rc<dyn Transport>>> {
    use crate::events::EventLoopExt;
    Box::pin(async move {
        if options.server_side != sslcontext.is_server() {
            return Err(Error::value(if options.server_side {
                "server_side=True needs a server SslContext"
            } else {
                "start_tls on the client side needs a client SslContext"
            }));
        }
        positive(options.ssl_handshake_timeout, "ssl_handshake_timeout")?;
        positive(options.ssl_shutdown_timeout, "ssl_shutdown_timeout")?;
        if transport.is_closing() {
            return Err(Error::runtime("Transport is closing"));
        }
        let waiter = lp.create_future::<()>();
        let ssl = SslProtocol::new(
            lp.clone(),
            protocol,
            sslcontext,
            Some(waiter.clone()),
            options.server_hostname,
            false,
            secs(options.ssl_handshake_timeout),
            secs(options.ssl_shutdown_timeout),
        )?;
        let app = ssl.app_transport().expect("made with the protocol");
        // Pause early so that nothing arrives before the TLS layer is in
        // place (asyncio: "pause_reading() first").
        transport.pause_reading();
        transport.set_protocol(ssl.clone());
        let (t1, s1) = (transport.clone(), ssl.clone());
        let conmade = lp.call_soon(move || s1.connection_made(t1))?;
        let t2 = transport.clone();
        let resume = lp.call_soon(move || t2.resume_reading())?;
        // A cancelled wait (the future dropped) closes the new transport.
        let guard = crate::transports::lifecycle::CloseOnDrop::new(app.clone());
        match waiter.await {
            Ok(()) => {
                guard.defuse();
                Ok(app)
            }
            Err(e) => {
                drop(guard);
                conmade.cancel();
                resume.cancel();
                Err(e)
            }
        }
    })
}
