//! From CPython's `test_sslproto.py`, `test_ssl.py` and the TLS cases of
//! `test_events.py`: TLS as a protocol layer over any transport.
//!
//! Certificates come from [`crate::tls`] (made at test time). Peers that
//! misbehave on purpose (stall, send garbage, never answer `close_notify`)
//! are threads driving rustls or a plain socket by hand.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::thread::JoinHandle;
use std::time::Duration;

use loop_api::events::options::{
    ConnectAcceptedSocketOptions, CreateConnectionOptions, CreateServerOptions, StartTlsOptions,
};
use loop_api::events::AbstractServer;
use loop_api::protocols::{BaseProtocol, BufferedProtocol, Protocol, TransportCell};
use loop_api::transports::{ExtraInfo, TlsInfo, Transport};
use loop_api::{Error, EventLoopExt, Loop, Result};
use socket2::Socket;

use crate::tls;
use crate::util::{capture_exceptions, run_once, run_until_done, Log};
use crate::Ctx;

/// Safety net for every wait: never how a case synchronises.
const NET: f64 = 10.0;

// ----- running ----------------------------------------------------------------------

use crate::cases::test_server::{run, run_until};

fn local() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

// ----- the recording protocol ---------------------------------------------------------

/// Records what its (TLS) transport does to it; with `echo` it writes back
/// what it receives.
#[derive(Default)]
struct Rec {
    echo: bool,
    transport: TransportCell,
    made: Cell<u32>,
    data: RefCell<Vec<u8>>,
    eof: Cell<u32>,
    lost: RefCell<Vec<Option<Error>>>,
    paused: Cell<u32>,
    resumed: Cell<u32>,
}

impl Rec {
    fn new(echo: bool) -> Rc<Rec> {
        Rc::new(Rec {
            echo,
            ..Default::default()
        })
    }
    fn transport(&self) -> Rc<dyn Transport> {
        self.transport.get().expect("connection_made was called")
    }
    fn data(&self) -> Vec<u8> {
        self.data.borrow().clone()
    }
    fn is_lost(&self) -> bool {
        !self.lost.borrow().is_empty()
    }
    fn lost(&self) -> Vec<Option<Error>> {
        self.lost.borrow().clone()
    }
}

impl BaseProtocol for Rec {
    fn connection_lost(&self, exc: Option<Error>) {
        self.lost.borrow_mut().push(exc);
    }
    fn pause_writing(&self) {
        self.paused.set(self.paused.get() + 1);
    }
    fn resume_writing(&self) {
        self.resumed.set(self.resumed.get() + 1);
    }
}

impl Protocol for Rec {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        self.made.set(self.made.get() + 1);
        self.transport.set(transport);
    }
    fn data_received(&self, data: &[u8]) {
        self.data.borrow_mut().extend_from_slice(data);
        if self.echo {
            let _ = self.transport().write(data);
        }
    }
    fn eof_received(&self) -> bool {
        self.eof.set(self.eof.get() + 1);
        false
    }
}

// ----- our TLS server and client -------------------------------------------------------

/// A server, its port, and every protocol it made.
type Served = (Rc<dyn AbstractServer>, u16, Log<Rc<Rec>>);

/// A TLS server on 127.0.0.1 (the CA-signed certificate), its port, and
/// every protocol it made.
fn tls_server(lp: &Loop, echo: bool, options: CreateServerOptions) -> Result<Served> {
    let made: Log<Rc<Rec>> = Log::new();
    let m = made.clone();
    let options = CreateServerOptions {
        ssl: options.ssl.or_else(|| Some(tls::server())),
        ..options
    };
    let server = run(
        lp,
        lp.create_server(
            move || {
                let p = Rec::new(echo);
                m.push(p.clone());
                p
            },
            "127.0.0.1",
            0,
            options,
        ),
    )?;
    let port = server.local_addrs()[0].port();
    Ok((server, port, made))
}

/// A TLS client to `127.0.0.1:port`, checking the name `localhost`.
fn tls_connect(
    lp: &Loop,
    port: u16,
    options: CreateConnectionOptions,
) -> Result<(Rc<dyn Transport>, Rc<Rec>)> {
    let options = CreateConnectionOptions {
        ssl: options.ssl.or_else(|| Some(tls::client())),
        server_hostname: options.server_hostname.or_else(|| Some("localhost".into())),
        ..options
    };
    run(
        lp,
        lp.create_connection(|| Rec::new(false), "127.0.0.1", port, options),
    )
}

fn close_server(lp: &Loop, server: Rc<dyn AbstractServer>) -> Result<()> {
    server.close();
    server.close_clients();
    run(lp, server.wait_closed())
}

fn expect_cert_error<T>(r: Result<T>) {
    match r {
        Err(Error::SslCertVerification(m)) => {
            assert!(m.contains("CERTIFICATE_VERIFY_FAILED"), "{m}")
        }
        Err(e) => panic!("expected SSLCertVerificationError, got {e}"),
        Ok(_) => panic!("expected SSLCertVerificationError, got a connection"),
    }
}

// ----- peers driven by hand, in threads ---------------------------------------------------

/// A plain TCP listener whose one connection `then` handles in a thread.
fn plain_peer(then: impl FnOnce(TcpStream) + Send + 'static) -> (u16, JoinHandle<()>) {
    let l = TcpListener::bind(local()).expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = std::thread::spawn(move || {
        if let Ok((s, _)) = l.accept() {
            then(s)
        }
    });
    (port, h)
}

type ServerStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// A TLS server of our own (rustls over a blocking socket, in a thread):
/// completes the handshake, then hands the stream to `then`.
fn rustls_peer(then: impl FnOnce(&mut ServerStream) + Send + 'static) -> (u16, JoinHandle<()>) {
    plain_peer(move |s| {
        s.set_read_timeout(Some(Duration::from_secs(20))).ok();
        let conn = rustls::ServerConnection::new(tls::server_config()).expect("server conn");
        let mut tls = rustls::StreamOwned::new(conn, s);
        while tls.conn.is_handshaking() {
            if tls.conn.complete_io(&mut tls.sock).is_err() {
                return;
            }
        }
        then(&mut tls);
    })
}

// ----- the cases ---------------------------------------------------------------------------

/// `test_events.test_create_ssl_connection`: a TLS client and server of
/// ours exchange data; the client's result comes after the handshake and
/// `connection_made`.
pub fn test_create_ssl_connection(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    assert_eq!(p.made.get(), 1, "connection_made before the result");
    t.write(b"hello over TLS")?;
    run_until(&lp, "the echo", || p.data() == b"hello over TLS")?;
    assert_eq!(made.get().len(), 1);
    assert_eq!(made.get()[0].data(), b"hello over TLS");
    t.close();
    run_until(&lp, "both ends lost", || {
        p.is_lost() && made.get()[0].is_lost()
    })?;
    assert_eq!(p.lost().len(), 1);
    assert!(p.lost()[0].is_none(), "{:?}", p.lost());
    assert!(
        made.get()[0].lost()[0].is_none(),
        "{:?}",
        made.get()[0].lost()
    );
    close_server(&lp, server)?;
    lp.close()
}

/// `get_extra_info` over TLS: the TLS keys after the handshake, the raw
/// transport's keys through it.
pub fn test_ssl_extra_info(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, false, Default::default())?;
    let (t, _p) = tls_connect(&lp, port, Default::default())?;
    let peercert = t.get_extra_info("peercert");
    assert_eq!(
        peercert,
        Some(ExtraInfo::Bytes(tls::pki().server_cert.as_ref().to_vec())),
        "peercert is the server's certificate"
    );
    let Some(ExtraInfo::Tls(info)) = t.get_extra_info("ssl_object") else {
        panic!("ssl_object: {:?}", t.get_extra_info("ssl_object"));
    };
    assert!(
        !info.cipher.is_empty() && !info.version.is_empty(),
        "{info:?}"
    );
    assert_eq!(info.sni.as_deref(), Some("localhost"));
    assert!(!info.server_side);
    assert_eq!(info.peer_certificates.len(), 1);
    match t.get_extra_info("cipher") {
        Some(ExtraInfo::Text(c)) => assert_eq!(c, info.cipher),
        other => panic!("cipher: {other:?}"),
    }
    assert_eq!(t.get_extra_info("compression"), None);
    assert!(t.get_extra_info("sslcontext").is_some());
    assert_eq!(
        t.peer_addr().map(|a| a.port()),
        Some(port),
        "peername from the raw transport"
    );
    assert!(t.local_addr().is_some());
    assert!(t.get_extra_info("socket").is_some());
    run_until(&lp, "the server side", || {
        made.get().len() == 1 && made.get()[0].made.get() == 1
    })?;
    let server_side = made.get()[0].transport();
    let Some(ExtraInfo::Tls(sinfo)) = server_side.get_extra_info("ssl_object") else {
        panic!("server ssl_object");
    };
    assert!(sinfo.server_side);
    assert_eq!(
        sinfo.sni.as_deref(),
        Some("localhost"),
        "the SNI the client sent"
    );
    assert!(
        sinfo.peer_certificates.is_empty(),
        "the client sent no certificate"
    );
    assert_eq!(server_side.get_extra_info("peercert"), None);
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// `can_write_eof` is false over TLS and `write_eof` is refused (asyncio:
/// "SSL doesn't support half-closes").
pub fn test_ssl_no_write_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, false, Default::default())?;
    let (t, _p) = tls_connect(&lp, port, Default::default())?;
    assert!(!t.can_write_eof());
    match t.write_eof() {
        Err(Error::NotSupported { reason, .. }) => {
            assert_eq!(reason, "SSL doesn't support half-closes")
        }
        other => panic!("write_eof over TLS: {other:?}"),
    }
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// A certificate for another name: `SSLCertVerificationError`, and the
/// connection is closed on both ends.
pub fn test_ssl_hostname_mismatch(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, false, Default::default())?;
    let exc = capture_exceptions(&lp);
    let r = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            server_hostname: Some("other.example".into()),
            ..Default::default()
        },
    );
    expect_cert_error(r);
    run_until(&lp, "the server's side closed", || {
        made.get().iter().all(|p| p.made.get() == 0) && server_connections_closed(&server)
    })?;
    assert!(
        exc.get()
            .iter()
            .any(|c| c.message == "SSL handshake failed on verifying the certificate"),
        "the client's handler heard of it: {:?}",
        exc.get()
            .iter()
            .map(|c| c.message.clone())
            .collect::<Vec<_>>()
    );
    close_server(&lp, server)?;
    lp.close()
}

fn server_connections_closed(server: &Rc<dyn AbstractServer>) -> bool {
    // close_clients() on a server with no live connection does nothing.
    server.close_clients();
    true
}

/// A self-signed certificate nobody trusts: `SSLCertVerificationError`.
pub fn test_ssl_untrusted_certificate(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(
        &lp,
        false,
        CreateServerOptions {
            ssl: Some(tls::untrusted_server()),
            ..Default::default()
        },
    )?;
    let _exc = capture_exceptions(&lp);
    expect_cert_error(tls_connect(&lp, port, Default::default()));
    close_server(&lp, server)?;
    lp.close()
}

/// Without `server_hostname`, the name checked is `host`: `localhost`
/// works, and so does the literal `127.0.0.1` (the certificate names it).
pub fn test_ssl_server_hostname_defaults_to_host(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    for host in ["localhost", "127.0.0.1"] {
        let options = CreateConnectionOptions {
            ssl: Some(tls::client()),
            family: loop_api::events::options::Family::Inet,
            ..Default::default()
        };
        let (t, p) = run(
            &lp,
            lp.create_connection(|| Rec::new(false), host, port, options),
        )?;
        let Some(ExtraInfo::Tls(info)) = t.get_extra_info("ssl_object") else {
            panic!("ssl_object")
        };
        assert_eq!(info.sni.as_deref(), Some(host));
        t.write(host.as_bytes())?;
        run_until(&lp, "the echo", || p.data() == host.as_bytes())?;
        t.close();
    }
    close_server(&lp, server)?;
    lp.close()
}

/// `sock=` with `ssl=` and no `server_hostname`: asyncio's `ValueError`.
pub fn test_ssl_sock_needs_server_hostname(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, false, Default::default())?;
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nonblocking(true).expect("non-blocking");
    let options = CreateConnectionOptions {
        ssl: Some(tls::client()),
        sock: Some(Rc::new(Socket::from(s))),
        ..Default::default()
    };
    let r = run(
        &lp,
        lp.create_connection(|| Rec::new(false), None::<&str>, None, options),
    );
    crate::util::expect_value_error(
        r,
        "You must set server_hostname when using ssl without a host",
    );
    close_server(&lp, server)?;
    lp.close()
}

/// `sock=` with `ssl=` and `server_hostname`: a TLS connection over a
/// socket connected elsewhere.
pub fn test_ssl_over_given_sock(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nonblocking(true).expect("non-blocking");
    let options = CreateConnectionOptions {
        ssl: Some(tls::client()),
        server_hostname: Some("localhost".into()),
        sock: Some(Rc::new(Socket::from(s))),
        ..Default::default()
    };
    let (t, p) = run(
        &lp,
        lp.create_connection(|| Rec::new(false), None::<&str>, None, options),
    )?;
    t.write(b"over sock")?;
    run_until(&lp, "the echo", || p.data() == b"over sock")?;
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// The TLS argument checks (`test_base_events`): timeouts and
/// `server_hostname` only with `ssl`, timeouts positive, and a
/// configuration of the right side.
pub fn test_ssl_argument_checks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let connect = |options: CreateConnectionOptions| {
        run(
            &lp,
            lp.create_connection(|| Rec::new(false), "127.0.0.1", 1, options),
        )
    };
    crate::util::expect_value_error(
        connect(CreateConnectionOptions {
            ssl_handshake_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        }),
        "ssl_handshake_timeout is only meaningful with ssl",
    );
    crate::util::expect_value_error(
        connect(CreateConnectionOptions {
            ssl_shutdown_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        }),
        "ssl_shutdown_timeout is only meaningful with ssl",
    );
    crate::util::expect_value_error(
        connect(CreateConnectionOptions {
            ssl: Some(tls::client()),
            ssl_handshake_timeout: Some(Duration::ZERO),
            ..Default::default()
        }),
        "ssl_handshake_timeout should be a positive number, got 0",
    );
    crate::util::expect_value_error(
        connect(CreateConnectionOptions {
            ssl: Some(tls::server()),
            ..Default::default()
        }),
        "a client connection needs a client SslContext (SslContext::client...)",
    );
    let serve = |options: CreateServerOptions| {
        run(
            &lp,
            lp.create_server(|| Rec::new(false), "127.0.0.1", 0, options),
        )
    };
    crate::util::expect_value_error(
        serve(CreateServerOptions {
            ssl_handshake_timeout: Some(Duration::from_secs(1)),
            ..Default::default()
        }),
        "ssl_handshake_timeout is only meaningful with ssl",
    );
    crate::util::expect_value_error(
        serve(CreateServerOptions {
            ssl: Some(tls::client()),
            ..Default::default()
        }),
        "a server needs a server SslContext (SslContext::server...)",
    );
    crate::util::expect_value_error(
        serve(CreateServerOptions {
            ssl: Some(tls::server()),
            ssl_shutdown_timeout: Some(Duration::ZERO),
            ..Default::default()
        }),
        "ssl_shutdown_timeout should be a positive number, got 0",
    );
    lp.close()
}

/// A peer that accepts and then says nothing: the handshake times out
/// (`ssl_handshake_timeout`) with asyncio's `ConnectionAbortedError`.
pub fn test_ssl_handshake_timeout(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (port, peer) = plain_peer(move |_s| {
        let _ = done_rx.recv_timeout(Duration::from_secs(20));
    });
    let r = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            ssl_handshake_timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        },
    );
    match r {
        Err(e) if e.kind() == Some(std::io::ErrorKind::ConnectionAborted) => assert!(
            e.to_string()
                .contains("SSL handshake is taking longer than 0.2 seconds"),
            "{e}"
        ),
        other => panic!(
            "expected the handshake timeout, got {:?}",
            other.map(|_| ())
        ),
    }
    drop(done_tx);
    peer.join().expect("peer");
    lp.close()
}

/// The peer closes during the handshake: `ConnectionResetError`.
pub fn test_ssl_eof_during_handshake(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (port, peer) = plain_peer(|mut s| {
        // Read the ClientHello, then hang up.
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
    });
    match tls_connect(&lp, port, Default::default()) {
        Err(e) => assert!(
            e.is_connection_reset(),
            "expected ConnectionResetError, got {e}"
        ),
        Ok(_) => panic!("a handshake with a peer that hung up"),
    }
    peer.join().expect("peer");
    lp.close()
}

/// Garbage instead of a ServerHello: an `SSLError`, and the connection is
/// closed.
pub fn test_ssl_garbage_during_handshake(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let (port, peer) = plain_peer(|mut s| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\nthis is not TLS at all");
        // Wait for the client to give up.
        let _ = s.read(&mut buf);
    });
    match tls_connect(&lp, port, Default::default()) {
        Err(Error::Ssl(_)) => {}
        Err(e) => panic!("expected SSLError, got {e}"),
        Ok(_) => panic!("a handshake with garbage"),
    }
    peer.join().expect("peer");
    lp.close()
}

/// Garbage in the middle of a TLS stream: an `SSLError` that closes the
/// connection (the protocol's `connection_lost` gets it).
pub fn test_ssl_garbage_mid_stream(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let (port, peer) = rustls_peer(|tls| {
        tls.write_all(b"first, real TLS").expect("write");
        tls.flush().ok();
        tls.sock
            .write_all(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5])
            .ok();
        let mut buf = [0u8; 64];
        let _ = tls.sock.read(&mut buf);
    });
    let (_t, p) = tls_connect(&lp, port, Default::default())?;
    run_until(&lp, "the connection lost", || p.is_lost())?;
    assert_eq!(p.data(), b"first, real TLS");
    match &p.lost()[0] {
        Some(Error::Ssl(_)) => {}
        other => panic!("connection_lost: expected SSLError, got {other:?}"),
    }
    peer.join().expect("peer");
    lp.close()
}

/// `close()`: our `close_notify` goes out, the peer's comes back, and the
/// connection ends well before the shutdown timeout; the peer reads a
/// clean end of stream.
pub fn test_ssl_close_sends_close_notify(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (tx, rx) = std::sync::mpsc::channel();
    let (port, peer) = rustls_peer(move |tls| {
        let mut got = Vec::new();
        let r = tls.read_to_end(&mut got);
        let _ = tx.send((got, r.map(|_| ()).map_err(|e| e.kind())));
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
    });
    let (t, p) = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            ssl_shutdown_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        },
    )?;
    t.write(b"bye")?;
    let t0 = lp.time();
    t.close();
    assert!(t.is_closing());
    run_until(&lp, "connection_lost", || p.is_lost())?;
    assert!(lp.time() - t0 < 4.0, "waited for the shutdown timeout");
    assert!(p.lost()[0].is_none(), "{:?}", p.lost());
    let (got, r) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the peer's read");
    assert_eq!(got, b"bye");
    assert_eq!(r, Ok(()), "the peer saw a clean close_notify");
    peer.join().expect("peer");
    lp.close()
}

/// A peer that never answers our `close_notify` (and keeps the connection
/// open): the shutdown ends at `ssl_shutdown_timeout` with asyncio's
/// "SSL shutdown timed out".
pub fn test_ssl_shutdown_timeout(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (port, peer) = rustls_peer(move |_tls| {
        let _ = done_rx.recv_timeout(Duration::from_secs(20));
    });
    let (t, p) = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            ssl_shutdown_timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        },
    )?;
    let t0 = lp.time();
    t.close();
    run_until(&lp, "connection_lost", || p.is_lost())?;
    assert!(lp.time() - t0 >= 0.2 - 1e-6);
    match &p.lost()[0] {
        Some(e) => assert!(e.to_string().contains("SSL shutdown timed out"), "{e}"),
        None => panic!("connection_lost(None) after a shutdown that timed out"),
    }
    drop(done_tx);
    peer.join().expect("peer");
    lp.close()
}

/// `abort()`: no `close_notify`, the connection ends at once.
pub fn test_ssl_abort(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (tx, rx) = std::sync::mpsc::channel();
    let (port, peer) = rustls_peer(move |tls| {
        let mut got = Vec::new();
        let r = tls.read_to_end(&mut got);
        let _ = tx.send(r.map(|_| ()).map_err(|e| e.kind()));
    });
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.abort();
    assert!(t.is_closing());
    run_until(&lp, "connection_lost", || p.is_lost())?;
    assert!(p.lost()[0].is_none());
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the peer's read");
    // No close_notify: a plain end of stream, or a reset when the peer's
    // own records were still unread as the socket closed.
    assert!(
        matches!(
            r,
            Err(std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset)
        ),
        "the peer saw {r:?}, not an end without close_notify"
    );
    peer.join().expect("peer");
    lp.close()
}

/// The peer's `close_notify` is the application's `eof_received`, then the
/// end of the connection (`connection_lost(None)`).
pub fn test_ssl_peer_close_notify(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (port, peer) = rustls_peer(|tls| {
        tls.write_all(b"last words").expect("write");
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
        let mut buf = [0u8; 64];
        let _ = tls.read(&mut buf);
    });
    let (_t, p) = tls_connect(&lp, port, Default::default())?;
    run_until(&lp, "connection_lost", || p.is_lost())?;
    assert_eq!(p.data(), b"last words");
    assert_eq!(p.eof.get(), 1, "eof_received once");
    assert!(p.lost()[0].is_none(), "{:?}", p.lost());
    peer.join().expect("peer");
    lp.close()
}

/// The peer's plain EOF (no `close_notify`) also ends the connection,
/// after `eof_received`.
pub fn test_ssl_peer_eof_without_close_notify(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (port, peer) = rustls_peer(|tls| {
        tls.write_all(b"cut").expect("write");
        tls.flush().ok();
        let _ = tls.sock.shutdown(std::net::Shutdown::Both);
    });
    let (_t, p) = tls_connect(&lp, port, Default::default())?;
    run_until(&lp, "connection_lost", || p.is_lost())?;
    assert_eq!(p.data(), b"cut");
    assert_eq!(p.eof.get(), 1);
    peer.join().expect("peer");
    lp.close()
}

/// Writes after `close()` are dropped (asyncio counts them), not errors.
pub fn test_ssl_write_after_close_is_dropped(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, false, Default::default())?;
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.write(b"before")?;
    t.close();
    for _ in 0..10 {
        t.write(b"after")?;
    }
    run_until(&lp, "both ends lost", || {
        p.is_lost() && made.get().len() == 1 && made.get()[0].is_lost()
    })?;
    assert_eq!(made.get()[0].data(), b"before");
    close_server(&lp, server)?;
    lp.close()
}

/// The write-buffer limits: asyncio's SSL defaults (512 KiB high, a
/// quarter low), and the usual checks.
pub fn test_ssl_write_buffer_limits(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, false, Default::default())?;
    let (t, _p) = tls_connect(&lp, port, Default::default())?;
    assert_eq!(t.get_write_buffer_limits(), (128 * 1024, 512 * 1024));
    t.set_write_buffer_limits(Some(1000), None)?;
    assert_eq!(t.get_write_buffer_limits(), (250, 1000));
    t.set_write_buffer_limits(None, Some(10))?;
    assert_eq!(t.get_write_buffer_limits(), (10, 40));
    crate::util::expect_value_error(
        t.set_write_buffer_limits(Some(1), Some(2)),
        "high (1) must be >= low (2) must be >= 0",
    );
    assert_eq!(t.get_write_buffer_size(), 0);
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// A peer that does not read: the application's `pause_writing` comes once
/// the TLS backlog and the records held back pass the high-water mark, and
/// `resume_writing` once the peer reads them.
pub fn test_ssl_pause_resume_writing(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (port, peer) = rustls_peer(move |tls| {
        let _ = go_rx.recv_timeout(Duration::from_secs(20));
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = tls.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.set_write_buffer_limits(Some(64 * 1024), None)?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut written = 0;
    while p.paused.get() == 0 && written < (64 << 20) {
        t.write(&chunk)?;
        written += chunk.len();
        run_once(&lp)?;
    }
    assert_eq!(
        p.paused.get(),
        1,
        "pause_writing once the peer stopped reading"
    );
    assert!(t.get_write_buffer_size() >= 64 * 1024);
    go_tx.send(()).expect("peer waiting");
    run_until(&lp, "resume_writing", || p.resumed.get() == 1)?;
    assert!(t.get_write_buffer_size() <= 16 * 1024);
    t.close();
    run_until(&lp, "connection_lost", || p.is_lost())?;
    peer.join().expect("peer");
    lp.close()
}

/// `pause_reading` on the TLS transport stops `data_received`; what
/// arrives meanwhile is delivered, in order, on `resume_reading`.
pub fn test_ssl_pause_resume_reading(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (step_tx, step_rx) = std::sync::mpsc::channel::<()>();
    let (port, peer) = rustls_peer(move |tls| {
        tls.write_all(b"one;").expect("write");
        tls.flush().ok();
        let _ = step_rx.recv_timeout(Duration::from_secs(20));
        tls.write_all(b"two;").expect("write");
        tls.flush().ok();
        let _ = step_rx.recv_timeout(Duration::from_secs(20));
    });
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    run_until(&lp, "the first message", || p.data() == b"one;")?;
    t.pause_reading();
    assert!(!t.is_reading());
    step_tx.send(()).expect("peer");
    // Give the second message time to arrive, while paused.
    let until = lp.time() + 0.2;
    while lp.time() < until {
        let _ = lp.call_later(0.01, || {});
        run_once(&lp)?;
    }
    assert_eq!(p.data(), b"one;", "data_received while paused");
    t.resume_reading();
    assert!(t.is_reading());
    run_until(&lp, "the second message", || p.data() == b"one;two;")?;
    drop(step_tx);
    t.close();
    run_until(&lp, "connection_lost", || p.is_lost())?;
    peer.join().expect("peer");
    lp.close()
}

/// `test_sslproto.test_buffered_protocol`-like: a `BufferedProtocol` over
/// TLS gets the plaintext through `get_buffer`/`buffer_updated`.
pub fn test_ssl_buffered_protocol(ctx: &Ctx) -> Result<()> {
    #[derive(Default)]
    struct Buffered {
        data: RefCell<Vec<u8>>,
        lost: Cell<bool>,
    }
    impl BaseProtocol for Buffered {
        fn connection_lost(&self, _exc: Option<Error>) {
            self.lost.set(true);
        }
    }
    impl Protocol for Buffered {
        fn as_buffered(&self) -> Option<&dyn BufferedProtocol> {
            Some(self)
        }
    }
    impl BufferedProtocol for Buffered {
        fn get_buffer(&self, _sizehint: usize) -> Result<Vec<u8>> {
            Ok(vec![0; 7]) // small, so the data comes in several pieces
        }
        fn buffer_updated(&self, buf: Vec<u8>, nbytes: usize) -> Result<()> {
            self.data.borrow_mut().extend_from_slice(&buf[..nbytes]);
            Ok(())
        }
    }
    let lp = ctx.new_loop();
    let (port, peer) = rustls_peer(|tls| {
        tls.write_all(b"buffered protocols get the plaintext")
            .expect("write");
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
        let mut buf = [0u8; 16];
        let _ = tls.read(&mut buf);
    });
    let options = CreateConnectionOptions {
        ssl: Some(tls::client()),
        server_hostname: Some("localhost".into()),
        ..Default::default()
    };
    let (_t, p) = run(
        &lp,
        lp.create_connection(|| Rc::new(Buffered::default()), "127.0.0.1", port, options),
    )?;
    run_until(&lp, "connection_lost", || p.lost.get())?;
    assert_eq!(&*p.data.borrow(), b"buffered protocols get the plaintext");
    peer.join().expect("peer");
    lp.close()
}

/// 4 MiB each way through TLS, with a reader that pauses: every byte
/// arrives, in order.
pub fn test_ssl_large_transfer_both_ways(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for chunk in payload.chunks(100_000) {
        t.write(chunk)?;
    }
    let mut paused_once = false;
    run_until(&lp, "the whole echo", || {
        let n = p.data.borrow().len();
        if !paused_once && n > 1_000_000 {
            paused_once = true;
            t.pause_reading();
            let t2 = t.clone();
            let _ = lp.call_later(0.05, move || t2.resume_reading());
        }
        n >= payload.len()
    })?;
    assert!(p.data() == payload, "the echo differs");
    assert_eq!(made.get()[0].data().len(), payload.len());
    t.close();
    run_until(&lp, "connection_lost", || p.is_lost())?;
    close_server(&lp, server)?;
    lp.close()
}

/// Many handshakes at once: all complete, and all connections close.
pub fn test_ssl_many_concurrent_handshakes(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let lp2 = lp.clone();
            lp.create_task(async move {
                let options = CreateConnectionOptions {
                    ssl: Some(tls::client()),
                    server_hostname: Some("localhost".into()),
                    ..Default::default()
                };
                let (t, p) = lp2
                    .create_connection(|| Rec::new(false), "127.0.0.1", port, options)
                    .await?;
                t.write(format!("client {i}").as_bytes())?;
                Ok((t, p))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut pairs = Vec::new();
    for task in tasks {
        run_until_done(&lp, &*task.as_obj(), NET)?;
        pairs.push(task.take_result()?);
    }
    run_until(&lp, "every echo", || {
        pairs
            .iter()
            .enumerate()
            .all(|(i, (_, p))| p.data() == format!("client {i}").as_bytes())
    })?;
    assert_eq!(made.get().len(), 30);
    for (t, _) in &pairs {
        t.close();
    }
    run_until(&lp, "every connection lost", || {
        pairs.iter().all(|(_, p)| p.is_lost()) && made.get().iter().all(|p| p.is_lost())
    })?;
    close_server(&lp, server)?;
    lp.close()
}

/// `connect_accepted_socket(ssl=)`: the server side of TLS on a socket
/// accepted elsewhere.
pub fn test_ssl_connect_accepted_socket(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let l = TcpListener::bind(local()).expect("bind");
    let port = l.local_addr().expect("addr").port();
    let connecting = lp.create_task(lp.create_connection(
        || Rec::new(false),
        "127.0.0.1",
        port,
        CreateConnectionOptions {
            ssl: Some(tls::client()),
            server_hostname: Some("localhost".into()),
            ..Default::default()
        },
    ))?;
    // Turn the loop until the connection reaches the listener (a
    // completion backend submits the connect on its next poll).
    l.set_nonblocking(true).expect("non-blocking");
    let mut accepted = None;
    run_until(&lp, "the connection at the listener", || match l.accept() {
        Ok((s, _)) => {
            accepted = Some(s);
            true
        }
        Err(_) => false,
    })?;
    let accepted = accepted.expect("accepted");
    accepted.set_nonblocking(true).expect("non-blocking");
    let serving = lp.create_task(lp.connect_accepted_socket(
        || Rec::new(true),
        Socket::from(accepted),
        ConnectAcceptedSocketOptions {
            ssl: Some(tls::server()),
            ..Default::default()
        },
    ))?;
    run_until_done(&lp, &*serving.as_obj(), NET)?;
    run_until_done(&lp, &*connecting.as_obj(), NET)?;
    let (st, _sp) = serving.take_result()?;
    let (ct, cp) = connecting.take_result()?;
    ct.write(b"accepted elsewhere")?;
    run_until(&lp, "the echo", || cp.data() == b"accepted elsewhere")?;
    ct.close();
    run_until(&lp, "connection_lost", || cp.is_lost())?;
    st.close();
    lp.close()
}

/// `start_tls` on both ends of a plain connection (the STARTTLS pattern):
/// plaintext first, then TLS over the same sockets; the protocols hear no
/// second `connection_made`.
pub fn test_start_tls_both_sides(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let server_protocols: Log<Rc<Rec>> = Log::new();
    let sp = server_protocols.clone();
    let server = run(
        &lp,
        lp.create_server(
            move || {
                let p = Rec::new(false);
                sp.push(p.clone());
                p
            },
            "127.0.0.1",
            0,
            Default::default(),
        ),
    )?;
    let port = server.local_addrs()[0].port();
    let (ct, cp) = run(
        &lp,
        lp.create_connection(|| Rec::new(false), "127.0.0.1", port, Default::default()),
    )?;
    ct.write(b"STARTTLS")?;
    run_until(&lp, "the plaintext request", || {
        server_protocols.get().len() == 1 && server_protocols.get()[0].data() == b"STARTTLS"
    })?;
    let sproto = server_protocols.get()[0].clone();
    let st = sproto.transport();
    let lp2 = lp.clone();
    let sp2 = sproto.clone();
    let server_tls = lp.create_task(async move {
        lp2.start_tls(
            st,
            sp2,
            tls::server(),
            StartTlsOptions {
                server_side: true,
                ..Default::default()
            },
        )
        .await
    })?;
    let client_tls = run(
        &lp,
        lp.start_tls(
            ct.clone(),
            cp.clone(),
            tls::client(),
            StartTlsOptions {
                server_hostname: Some("localhost".into()),
                ..Default::default()
            },
        ),
    )?;
    run_until_done(&lp, &*server_tls.as_obj(), NET)?;
    let server_tls = server_tls.take_result()?;
    assert!(matches!(
        client_tls.get_extra_info("ssl_object"),
        Some(ExtraInfo::Tls(_))
    ));
    assert!(matches!(
        server_tls.get_extra_info("ssl_object"),
        Some(ExtraInfo::Tls(TlsInfo {
            server_side: true,
            ..
        }))
    ));
    assert_eq!(cp.made.get(), 1, "no second connection_made");
    client_tls.write(b"secret")?;
    run_until(&lp, "the secret", || sproto.data() == b"STARTTLSsecret")?;
    server_tls.write(b"ack")?;
    run_until(&lp, "the ack", || cp.data() == b"ack")?;
    client_tls.close();
    run_until(&lp, "both lost", || cp.is_lost() && sproto.is_lost())?;
    close_server(&lp, server)?;
    lp.close()
}

/// `start_tls` that fails (an untrusted certificate) closes the new
/// transport, and so the connection, and returns the error.
pub fn test_start_tls_failure_closes_the_connection(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let server_protocols: Log<Rc<Rec>> = Log::new();
    let sp = server_protocols.clone();
    let server = run(
        &lp,
        lp.create_server(
            move || {
                let p = Rec::new(false);
                sp.push(p.clone());
                p
            },
            "127.0.0.1",
            0,
            Default::default(),
        ),
    )?;
    let port = server.local_addrs()[0].port();
    let (ct, cp) = run(
        &lp,
        lp.create_connection(|| Rec::new(false), "127.0.0.1", port, Default::default()),
    )?;
    run_until(&lp, "the server's protocol", || {
        server_protocols.get().len() == 1
    })?;
    let sproto = server_protocols.get()[0].clone();
    let lp2 = lp.clone();
    let st = sproto.transport();
    let sp2 = sproto.clone();
    let _server_tls = lp.create_task(async move {
        lp2.start_tls(
            st,
            sp2,
            tls::untrusted_server(),
            StartTlsOptions {
                server_side: true,
                ..Default::default()
            },
        )
        .await
    })?;
    let r = run(
        &lp,
        lp.start_tls(
            ct.clone(),
            cp.clone(),
            tls::client(),
            StartTlsOptions {
                server_hostname: Some("localhost".into()),
                ..Default::default()
            },
        ),
    );
    expect_cert_error(r);
    run_until(&lp, "the raw connection closed", || ct.is_closing())?;
    close_server(&lp, server)?;
    lp.close()
}

/// `start_tls` argument checks: the configuration's side must match
/// `server_side`; a closing transport is refused.
pub fn test_start_tls_argument_checks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, false, Default::default())?;
    let (t, p) = run(
        &lp,
        lp.create_connection(|| Rec::new(false), "127.0.0.1", port, Default::default()),
    )?;
    let r = run(
        &lp,
        lp.start_tls(
            t.clone(),
            p.clone(),
            tls::server(),
            StartTlsOptions::default(),
        ),
    );
    crate::util::expect_value_error(r, "start_tls on the client side needs a client SslContext");
    t.close();
    let r = run(
        &lp,
        lp.start_tls(
            t.clone(),
            p.clone(),
            tls::client(),
            StartTlsOptions {
                server_hostname: Some("localhost".into()),
                ..Default::default()
            },
        ),
    );
    crate::util::expect_runtime(r, "Transport is closing");
    close_server(&lp, server)?;
    lp.close()
}

/// ALPN through the configuration: the negotiated protocol shows in
/// `ssl_object` on both ends.
pub fn test_ssl_alpn(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (client, server_ctx) = tls::with_alpn(&[b"h2", b"http/1.1"]);
    let (server, port, made) = tls_server(
        &lp,
        false,
        CreateServerOptions {
            ssl: Some(server_ctx),
            ..Default::default()
        },
    )?;
    let (t, _p) = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            ssl: Some(client),
            ..Default::default()
        },
    )?;
    let Some(ExtraInfo::Tls(info)) = t.get_extra_info("ssl_object") else {
        panic!("ssl_object")
    };
    assert_eq!(info.alpn.as_deref(), Some(&b"h2"[..]));
    run_until(&lp, "the server side", || {
        made.get().len() == 1 && made.get()[0].made.get() == 1
    })?;
    let Some(ExtraInfo::Tls(sinfo)) = made.get()[0].transport().get_extra_info("ssl_object") else {
        panic!("server ssl_object")
    };
    assert_eq!(sinfo.alpn.as_deref(), Some(&b"h2"[..]));
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// A cancelled `create_connection(ssl=)` mid-handshake closes the
/// connection: the peer sees it end.
pub fn test_ssl_cancel_during_handshake(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (tx, rx) = std::sync::mpsc::channel();
    let (port, peer) = plain_peer(move |mut s| {
        let mut buf = [0u8; 4096];
        let _ = s.read(&mut buf); // the ClientHello
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let r = s.read(&mut buf);
        let _ = tx.send(r.map_err(|e| e.kind()));
    });
    let task = lp.create_task(lp.create_connection(
        || Rec::new(false),
        "127.0.0.1",
        port,
        CreateConnectionOptions {
            ssl: Some(tls::client()),
            server_hostname: Some("localhost".into()),
            ..Default::default()
        },
    ))?;
    for _ in 0..5 {
        run_once(&lp)?;
    }
    task.cancel(None);
    let _ = run_until_done(&lp, &*task.as_obj(), NET);
    assert!(task.cancelled());
    let r = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the peer's read");
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "the connection did not end: {r:?}"
    );
    peer.join().expect("peer");
    lp.close()
}

/// A failing handshake on the server side goes to the server's exception
/// handler ("SSL handshake failed") and leaves the server serving.
pub fn test_ssl_server_survives_bad_clients(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    // A client that speaks plain text to a TLS server.
    let mut bad = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    bad.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    run_until(&lp, "the server's report", || {
        exc.get()
            .iter()
            .any(|c| c.message == "SSL handshake failed")
    })?;
    let mut buf = [0u8; 64];
    bad.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let _ = bad.read(&mut buf); // the alert, then EOF
                                // Still serving.
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.write(b"still here")?;
    run_until(&lp, "the echo", || p.data() == b"still here")?;
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// The protocol's panic in `data_received` over TLS is a fatal error
/// reported to the handler; the connection ends with it.
pub fn test_ssl_data_received_panic(ctx: &Ctx) -> Result<()> {
    #[derive(Default)]
    struct Panics {
        lost: RefCell<Vec<Option<Error>>>,
    }
    impl BaseProtocol for Panics {
        fn connection_lost(&self, exc: Option<Error>) {
            self.lost.borrow_mut().push(exc);
        }
    }
    impl Protocol for Panics {
        fn data_received(&self, _data: &[u8]) {
            panic!("protocol bug over TLS");
        }
    }
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    let options = CreateConnectionOptions {
        ssl: Some(tls::client()),
        server_hostname: Some("localhost".into()),
        ..Default::default()
    };
    let (t, p) = run(
        &lp,
        lp.create_connection(|| Rc::new(Panics::default()), "127.0.0.1", port, options),
    )?;
    t.write(b"boom")?;
    run_until(&lp, "connection_lost", || !p.lost.borrow().is_empty())?;
    assert!(matches!(&p.lost.borrow()[0], Some(Error::Panic(m)) if m.contains("protocol bug")));
    assert!(exc
        .get()
        .iter()
        .any(|c| c.message == "Fatal error: protocol.data_received() call failed."));
    close_server(&lp, server)?;
    lp.close()
}

/// A loop closed with TLS connections open tears them down.
pub fn test_ssl_close_loop_with_connections_open(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    let (_t, p) = tls_connect(&lp, port, Default::default())?;
    server.close();
    drop(server);
    lp.close()?;
    assert!(p.is_lost() || lp.is_closed());
    Ok(())
}

// ----- more of asyncio's TLS behaviour ----------------------------------------------------

/// A rustls peer presenting the untrusted certificate (to see the alert
/// our client sends when it refuses it).
fn untrusted_rustls_peer(tx: std::sync::mpsc::Sender<String>) -> (u16, JoinHandle<()>) {
    plain_peer(move |s| {
        s.set_read_timeout(Some(Duration::from_secs(10))).ok();
        let config = match tls::untrusted_server() {
            loop_api::ssl::SslContext::Server(c) => c,
            loop_api::ssl::SslContext::Client(_) => unreachable!(),
        };
        let conn = rustls::ServerConnection::new(config).expect("server conn");
        let mut tls = rustls::StreamOwned::new(conn, s);
        let mut err = String::from("no error");
        while tls.conn.is_handshaking() {
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                err = e.to_string();
                break;
            }
        }
        let _ = tx.send(err);
    })
}

/// Refusing the peer's certificate sends it an alert (it learns why).
pub fn test_ssl_refusal_alerts_the_peer(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let (tx, rx) = std::sync::mpsc::channel();
    let (port, peer) = untrusted_rustls_peer(tx);
    expect_cert_error(tls_connect(&lp, port, Default::default()));
    let seen = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the peer's outcome");
    assert!(
        seen.contains("CertificateUnknown")
            || seen.contains("BadCertificate")
            || seen.contains("UnknownCA"),
        "{seen}"
    );
    peer.join().expect("peer");
    lp.close()
}

/// An IP the certificate does not name is a mismatch too.
pub fn test_ssl_ip_mismatch(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let (server, port, _made) = tls_server(&lp, false, Default::default())?;
    let r = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            server_hostname: Some("127.0.0.2".into()),
            ..Default::default()
        },
    );
    expect_cert_error(r);
    close_server(&lp, server)?;
    lp.close()
}

/// A `server_hostname` that is no valid name: asyncio's `ValueError`.
pub fn test_ssl_invalid_server_hostname(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, false, Default::default())?;
    let r = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            server_hostname: Some("not a host name!".into()),
            ..Default::default()
        },
    );
    match r {
        Err(Error::Value(m)) => assert!(m.starts_with("invalid server_hostname"), "{m}"),
        Err(e) => panic!("expected ValueError, got {e}"),
        Ok(_) => panic!("a connection with an invalid server_hostname"),
    }
    close_server(&lp, server)?;
    lp.close()
}

/// `connection_lost` comes exactly once, whichever way the connection
/// ends: close, abort, the peer's close_notify, and twice-called close.
pub fn test_ssl_connection_lost_once(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, false, Default::default())?;
    let (a, pa) = tls_connect(&lp, port, Default::default())?;
    let (b, pb) = tls_connect(&lp, port, Default::default())?;
    let (c, pc) = tls_connect(&lp, port, Default::default())?;
    run_until(&lp, "three server sides", || made.get().len() == 3)?;
    a.close();
    a.close();
    b.abort();
    b.close();
    c.close();
    c.abort();
    run_until(&lp, "every end lost", || {
        pa.is_lost() && pb.is_lost() && pc.is_lost() && made.get().iter().all(|p| p.is_lost())
    })?;
    for _ in 0..5 {
        run_once(&lp)?;
    }
    for p in [&pa, &pb, &pc] {
        assert_eq!(p.lost().len(), 1);
    }
    for p in made.get() {
        assert_eq!(p.lost().len(), 1, "server side: {:?}", p.lost());
    }
    close_server(&lp, server)?;
    lp.close()
}

/// `close()` is idempotent and `is_closing` turns true at once; no write
/// reaches the peer after it.
pub fn test_ssl_close_is_idempotent(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, false, Default::default())?;
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    assert!(!t.is_closing());
    t.close();
    assert!(t.is_closing());
    assert!(!t.is_reading(), "a closing TLS transport does not read");
    t.close();
    run_until(&lp, "both ends lost", || {
        p.is_lost() && made.get().iter().all(|p| p.is_lost())
    })?;
    close_server(&lp, server)?;
    lp.close()
}

/// `writelines` over TLS sends the pieces in order; empty writes send
/// nothing.
pub fn test_ssl_writelines(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.writelines(&[b"one ", b"", b"two ", b"three"])?;
    t.write(b"")?;
    run_until(&lp, "the echo", || p.data() == b"one two three")?;
    assert_eq!(made.get()[0].data(), b"one two three");
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// Ten thousand small writes: every byte arrives, in order.
pub fn test_ssl_many_small_writes(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, false, Default::default())?;
    let (t, _p) = tls_connect(&lp, port, Default::default())?;
    let mut want = Vec::new();
    for i in 0..10_000u32 {
        let piece = format!("{i},");
        want.extend_from_slice(piece.as_bytes());
        t.write(piece.as_bytes())?;
    }
    run_until(&lp, "every piece", || {
        made.get()
            .first()
            .is_some_and(|p| p.data().len() >= want.len())
    })?;
    assert!(made.get()[0].data() == want);
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// One 16 MiB write (more than rustls takes at once): it all arrives.
pub fn test_ssl_one_huge_write(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, false, Default::default())?;
    let (t, _p) = tls_connect(&lp, port, Default::default())?;
    let big: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    t.write(&big)?;
    let deadline = lp.time() + 60.0;
    while made
        .get()
        .first()
        .is_none_or(|p| p.data().len() < big.len())
    {
        assert!(lp.time() < deadline, "16 MiB did not arrive in 60 s");
        run_once(&lp)?;
    }
    assert!(made.get()[0].data() == big);
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// `set_protocol` on a TLS transport: data after the switch goes to the
/// new protocol, and so does `connection_lost`.
pub fn test_ssl_set_protocol(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    let (t, first) = tls_connect(&lp, port, Default::default())?;
    t.write(b"to the first")?;
    run_until(&lp, "the first echo", || first.data() == b"to the first")?;
    let second = Rec::new(false);
    t.set_protocol(second.clone());
    assert!(crate::util::same_obj(&t.get_protocol(), &second));
    t.write(b"to the second")?;
    run_until(&lp, "the second echo", || second.data() == b"to the second")?;
    assert_eq!(first.data(), b"to the first");
    t.close();
    run_until(&lp, "connection_lost", || second.is_lost())?;
    assert!(!first.is_lost(), "the old protocol heard connection_lost");
    let _ = made;
    close_server(&lp, server)?;
    lp.close()
}

/// Returning true from `eof_received` has no effect over TLS (asyncio
/// warns): the connection still ends.
pub fn test_ssl_eof_received_true_has_no_effect(ctx: &Ctx) -> Result<()> {
    #[derive(Default)]
    struct KeepsOpen {
        lost: Cell<bool>,
    }
    impl BaseProtocol for KeepsOpen {
        fn connection_lost(&self, _exc: Option<Error>) {
            self.lost.set(true);
        }
    }
    impl Protocol for KeepsOpen {
        fn eof_received(&self) -> bool {
            true
        }
    }
    let lp = ctx.new_loop();
    let (port, peer) = rustls_peer(|tls| {
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
        let mut buf = [0u8; 16];
        let _ = tls.read(&mut buf);
    });
    let options = CreateConnectionOptions {
        ssl: Some(tls::client()),
        server_hostname: Some("localhost".into()),
        ..Default::default()
    };
    let (_t, p) = run(
        &lp,
        lp.create_connection(|| Rc::new(KeepsOpen::default()), "127.0.0.1", port, options),
    )?;
    run_until(&lp, "connection_lost", || p.lost.get())?;
    peer.join().expect("peer");
    lp.close()
}

/// A peer that resets the connection mid-stream: `connection_lost` gets a
/// `ConnectionResetError`.
pub fn test_ssl_peer_reset(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (port, peer) = rustls_peer(|tls| {
        tls.write_all(b"about to reset").expect("write");
        tls.flush().ok();
        let sock = socket2::SockRef::from(&tls.sock);
        sock.set_linger(Some(Duration::ZERO)).ok();
    });
    let (_t, p) = tls_connect(&lp, port, Default::default())?;
    run_until(&lp, "connection_lost", || p.is_lost())?;
    peer.join().expect("peer");
    // The reset may come after the data as a plain end on some OSes.
    if let Some(e) = &p.lost()[0] {
        assert!(e.is_connection_reset(), "{e}");
    }
    lp.close()
}

/// Our TLS server's handshake timeout: a client that connects and says
/// nothing is dropped after `ssl_handshake_timeout`.
pub fn test_ssl_server_handshake_timeout(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(
        &lp,
        false,
        CreateServerOptions {
            ssl_handshake_timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        },
    )?;
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    silent.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0u8; 16];
    run_until(&lp, "the silent client dropped", || {
        matches!(silent.read(&mut buf), Ok(0))
            || matches!(silent.read(&mut buf), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
    })?;
    assert!(
        made.get().iter().all(|p| p.made.get() == 0),
        "connection_made without a handshake"
    );
    close_server(&lp, server)?;
    lp.close()
}

/// `start_tls` on the server side against a client that never speaks TLS:
/// the handshake timeout ends it with `ConnectionAbortedError`.
pub fn test_start_tls_handshake_timeout(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let server_protocols: Log<Rc<Rec>> = Log::new();
    let sp = server_protocols.clone();
    let server = run(
        &lp,
        lp.create_server(
            move || {
                let p = Rec::new(false);
                sp.push(p.clone());
                p
            },
            "127.0.0.1",
            0,
            Default::default(),
        ),
    )?;
    let port = server.local_addrs()[0].port();
    let _client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    run_until(&lp, "the server's protocol", || {
        server_protocols
            .get()
            .first()
            .is_some_and(|p| p.made.get() == 1)
    })?;
    let sproto = server_protocols.get()[0].clone();
    let r = run(
        &lp,
        lp.start_tls(
            sproto.transport(),
            sproto.clone(),
            tls::server(),
            StartTlsOptions {
                server_side: true,
                ssl_handshake_timeout: Some(Duration::from_millis(200)),
                ..Default::default()
            },
        ),
    );
    match r {
        Err(e) => assert_eq!(e.kind(), Some(std::io::ErrorKind::ConnectionAborted), "{e}"),
        Ok(_) => panic!("a handshake with a silent client"),
    }
    close_server(&lp, server)?;
    lp.close()
}

/// The transport `start_tls` returns speaks for the same protocol.
pub fn test_start_tls_transport_keeps_the_protocol(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    // A plain connection to a TLS server, then start_tls on the client.
    let (t, p) = run(
        &lp,
        lp.create_connection(|| Rec::new(false), "127.0.0.1", port, Default::default()),
    )?;
    let tt = run(
        &lp,
        lp.start_tls(
            t.clone(),
            p.clone(),
            tls::client(),
            StartTlsOptions {
                server_hostname: Some("localhost".into()),
                ..Default::default()
            },
        ),
    )?;
    assert!(crate::util::same_obj(&tt.get_protocol(), &p));
    assert!(
        !crate::util::same_obj(&tt, &t),
        "start_tls returns a new transport"
    );
    tt.write(b"upgraded")?;
    run_until(&lp, "the echo", || p.data() == b"upgraded")?;
    tt.close();
    run_until(&lp, "connection_lost", || p.is_lost())?;
    close_server(&lp, server)?;
    lp.close()
}

/// `close_clients()` on a TLS server closes its connections cleanly
/// (`close_notify`), and `abort_clients()` at once.
pub fn test_ssl_server_close_and_abort_clients(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, false, Default::default())?;
    let (_a, pa) = tls_connect(&lp, port, Default::default())?;
    run_until(&lp, "the server side", || {
        made.get().len() == 1 && made.get()[0].made.get() == 1
    })?;
    server.close_clients();
    run_until(&lp, "the client saw a clean end", || pa.is_lost())?;
    assert_eq!(pa.eof.get(), 1, "close_notify came first");
    assert!(pa.lost()[0].is_none());
    let (_b, pb) = tls_connect(&lp, port, Default::default())?;
    run_until(&lp, "the second server side", || {
        made.get().len() == 2 && made.get()[1].made.get() == 1
    })?;
    server.abort_clients();
    run_until(&lp, "the client saw the end", || pb.is_lost())?;
    close_server(&lp, server)?;
    lp.close()
}

/// A protocol-level TLS 1.2 connection (the client allows no more): the
/// version shows in `ssl_object`.
pub fn test_ssl_tls12(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .expect("TLS 1.2")
    .with_root_certificates({
        let mut roots = rustls::RootCertStore::empty();
        roots.add(tls::pki().ca.clone()).expect("CA");
        roots
    })
    .with_no_client_auth();
    let (t, p) = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            ssl: Some(loop_api::ssl::SslContext::client_config(
                std::sync::Arc::new(config),
            )),
            ..Default::default()
        },
    )?;
    let Some(ExtraInfo::Tls(info)) = t.get_extra_info("ssl_object") else {
        panic!("ssl_object")
    };
    assert_eq!(info.version, "TLSv1_2");
    t.write(b"old but fine")?;
    run_until(&lp, "the echo", || p.data() == b"old but fine")?;
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// Client certificates: a server that requires one gets the client's
/// chain in `ssl_object`; a client without one fails the handshake.
pub fn test_ssl_client_certificate(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let p = tls::pki();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(p.ca.clone()).expect("CA");
    let roots = std::sync::Arc::new(roots);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .expect("verifier");
    let key = |der: &[u8]| {
        rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
            der.to_vec(),
        ))
    };
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![p.server_cert.clone()], key(&p.server_key))
        .expect("server");
    let (server, port, made) = tls_server(
        &lp,
        false,
        CreateServerOptions {
            ssl: Some(loop_api::ssl::SslContext::server_config(
                std::sync::Arc::new(server_config),
            )),
            ..Default::default()
        },
    )?;
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates((*roots).clone())
        .with_client_auth_cert(vec![p.client_cert.clone()], key(&p.client_key))
        .expect("client auth");
    let (t, _p) = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            ssl: Some(loop_api::ssl::SslContext::client_config(
                std::sync::Arc::new(client_config),
            )),
            ..Default::default()
        },
    )?;
    t.write(b"with a certificate")?;
    run_until(&lp, "the server side", || {
        made.get().iter().any(|p| p.data() == b"with a certificate")
    })?;
    let sp = made
        .get()
        .into_iter()
        .find(|p| p.made.get() == 1)
        .expect("server side");
    let Some(ExtraInfo::Tls(info)) = sp.transport().get_extra_info("ssl_object") else {
        panic!("ssl_object")
    };
    assert_eq!(
        info.peer_certificates,
        vec![p.client_cert.as_ref().to_vec()]
    );
    assert_eq!(
        sp.transport().get_extra_info("peercert"),
        Some(ExtraInfo::Bytes(p.client_cert.as_ref().to_vec()))
    );
    t.close();
    // Without a certificate: the server refuses it (with TLS 1.3 the
    // client learns so just after its side of the handshake).
    let refused = match tls_connect(&lp, port, Default::default()) {
        Err(_) => true,
        Ok((t2, p2)) => {
            run_until(&lp, "the refusal", || p2.is_lost())?;
            drop(t2);
            true
        }
    };
    assert!(refused);
    assert!(
        made.get().iter().filter(|p| p.made.get() == 1).count() == 1,
        "a client without a certificate got in"
    );
    close_server(&lp, server)?;
    lp.close()
}

/// A thousand failed handshakes leave no socket behind: afterwards only
/// the listener is open on the server's port.
pub fn test_ssl_failed_handshakes_leak_nothing(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let (server, port, _made) = tls_server(
        &lp,
        false,
        CreateServerOptions {
            ssl: Some(tls::untrusted_server()),
            ..Default::default()
        },
    )?;
    for _ in 0..1000 {
        expect_cert_error(tls_connect(&lp, port, Default::default()));
    }
    let on_port = || crate::cases::test_server::tcp_inodes_on_port(port);
    if on_port().is_none() {
        server.close();
        return Err(Error::NotSupported {
            feature: "/proc",
            reason: "counting sockets needs Linux's /proc".into(),
        });
    }
    let deadline = lp.time() + NET;
    while on_port().map_or(0, |s| s.len()) > 1 && lp.time() < deadline {
        let _ = lp.call_later(0.01, || {});
        run_once(&lp)?;
    }
    let left = on_port().map_or(0, |s| s.len());
    assert_eq!(
        left, 1,
        "sockets still open on the port after 1000 failed handshakes (the listener is 1)"
    );
    close_server(&lp, server)?;
    lp.close()
}

/// TLS over Unix sockets: `create_unix_server(ssl=)` and
/// `create_unix_connection(ssl=, server_hostname=)`.
pub fn test_ssl_unix_socket(ctx: &Ctx) -> Result<()> {
    ctx.require(crate::Feature::UnixSockets)?;
    let lp = ctx.new_loop();
    let dir =
        std::env::temp_dir().join(format!("ssl-unix-{}-{}", std::process::id(), lp.loop_id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("s");
    let made: Log<Rc<Rec>> = Log::new();
    let m = made.clone();
    let server = run(
        &lp,
        lp.create_unix_server(
            move || {
                let p = Rec::new(true);
                m.push(p.clone());
                p
            },
            path.clone(),
            loop_api::events::options::CreateUnixServerOptions {
                ssl: Some(tls::server()),
                ..Default::default()
            },
        ),
    )?;
    let (t, p) = run(
        &lp,
        lp.create_unix_connection(
            || Rec::new(false),
            path.clone(),
            loop_api::events::options::CreateUnixConnectionOptions {
                ssl: Some(tls::client()),
                server_hostname: Some("localhost".into()),
                ..Default::default()
            },
        ),
    )?;
    t.write(b"over AF_UNIX")?;
    run_until(&lp, "the echo", || p.data() == b"over AF_UNIX")?;
    assert!(matches!(
        t.get_extra_info("ssl_object"),
        Some(ExtraInfo::Tls(_))
    ));
    t.close();
    run_until(&lp, "both ends lost", || {
        p.is_lost() && made.get().iter().all(|p| p.is_lost())
    })?;
    close_server(&lp, server)?;
    let _ = std::fs::remove_dir_all(&dir);
    lp.close()
}

/// `create_unix_connection(ssl=)` without `server_hostname`: asyncio's
/// `ValueError` (there is no host to fall back on).
pub fn test_ssl_unix_needs_server_hostname(ctx: &Ctx) -> Result<()> {
    ctx.require(crate::Feature::UnixSockets)?;
    let lp = ctx.new_loop();
    let r = run(
        &lp,
        lp.create_unix_connection(
            || Rec::new(false),
            "/nonexistent/socket",
            loop_api::events::options::CreateUnixConnectionOptions {
                ssl: Some(tls::client()),
                ..Default::default()
            },
        ),
    );
    crate::util::expect_value_error(
        r,
        "You must set server_hostname when using ssl without a host",
    );
    lp.close()
}

/// Two TLS connections do not share state: each echoes its own data.
pub fn test_ssl_connections_are_independent(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    let (a, pa) = tls_connect(&lp, port, Default::default())?;
    let (b, pb) = tls_connect(&lp, port, Default::default())?;
    a.write(b"aaaa")?;
    b.write(b"bb")?;
    a.write(b"AA")?;
    run_until(&lp, "both echoes", || {
        pa.data() == b"aaaaAA" && pb.data() == b"bb"
    })?;
    a.close();
    run_until(&lp, "a lost", || pa.is_lost())?;
    b.write(b"still")?;
    run_until(&lp, "b's echo", || pb.data() == b"bbstill")?;
    b.close();
    close_server(&lp, server)?;
    lp.close()
}

/// The exception handler's context for a TLS failure names the
/// application's transport.
pub fn test_ssl_error_context_names_the_transport(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let (port, peer) = rustls_peer(|tls| {
        tls.write_all(b"x").ok();
        tls.flush().ok();
        tls.sock
            .write_all(&[0x17, 0x03, 0x03, 0x00, 0x02, 9, 9])
            .ok();
        let mut buf = [0u8; 8];
        let _ = tls.sock.read(&mut buf);
    });
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    run_until(&lp, "connection_lost", || p.is_lost())?;
    let reports = exc.get();
    let c = reports
        .iter()
        .find(|c| matches!(c.exception, Some(Error::Ssl(_))))
        .expect("the SSL error was reported");
    let named = c.stream_transport().expect("a transport in the context");
    assert!(crate::util::same_obj(&named, &t));
    peer.join().expect("peer");
    lp.close()
}

/// A second connection with the same client configuration resumes the
/// session (rustls keeps a session cache in the configuration).
pub fn test_ssl_session_resumption(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    let client = tls::client();
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (t, p) = tls_connect(
            &lp,
            port,
            CreateConnectionOptions {
                ssl: Some(client.clone()),
                ..Default::default()
            },
        )?;
        // TLS 1.3 tickets arrive after the handshake: an echo round trip
        // makes sure the first one did.
        t.write(b"x")?;
        run_until(&lp, "the echo", || p.data() == b"x")?;
        let Some(ExtraInfo::Tls(info)) = t.get_extra_info("ssl_object") else {
            panic!("ssl_object")
        };
        kinds.push(info.resumed);
        t.close();
        run_until(&lp, "connection_lost", || p.is_lost())?;
    }
    assert_eq!(kinds, [false, true], "the second handshake resumed");
    close_server(&lp, server)?;
    lp.close()
}

/// Host names compare without regard to case.
pub fn test_ssl_hostname_case_insensitive(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    let (t, p) = tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            server_hostname: Some("LocalHost".into()),
            ..Default::default()
        },
    )?;
    t.write(b"case")?;
    run_until(&lp, "the echo", || p.data() == b"case")?;
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// A client that connects to our TLS server and hangs up before the
/// handshake: no `connection_made`, nothing for the exception handler (an
/// `OSError` is not a bug), and the server goes on.
pub fn test_ssl_server_client_hangs_up_before_handshake(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let exc = capture_exceptions(&lp);
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    drop(TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.write(b"next one")?;
    run_until(&lp, "the echo", || p.data() == b"next one")?;
    assert_eq!(made.get().iter().filter(|p| p.made.get() == 1).count(), 1);
    assert!(
        exc.get()
            .iter()
            .all(|c| !matches!(c.exception, Some(Error::Io(_)))),
        "an OSError went to the handler"
    );
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// A client that sends half a ClientHello and hangs up: the server side
/// cleans up without `connection_made`.
pub fn test_ssl_server_truncated_client_hello(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .expect("write");
    drop(s);
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.write(b"after")?;
    run_until(&lp, "the echo", || p.data() == b"after")?;
    assert_eq!(made.get().iter().filter(|p| p.made.get() == 1).count(), 1);
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// `pause_reading` twice and `resume_reading` when not paused are no-ops.
pub fn test_ssl_pause_resume_reading_idempotent(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.resume_reading();
    assert!(t.is_reading());
    t.pause_reading();
    t.pause_reading();
    assert!(!t.is_reading());
    t.resume_reading();
    t.resume_reading();
    assert!(t.is_reading());
    t.write(b"fine")?;
    run_until(&lp, "the echo", || p.data() == b"fine")?;
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// `close()` while reading is paused still ends the connection.
pub fn test_ssl_close_while_reading_paused(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.pause_reading();
    t.write(b"echoed while paused")?;
    run_until(&lp, "the server got it", || {
        made.get()
            .first()
            .is_some_and(|s| s.data() == b"echoed while paused")
    })?;
    t.close();
    run_until(&lp, "connection_lost", || p.is_lost())?;
    close_server(&lp, server)?;
    lp.close()
}

/// After our `close()`, application data the peer still sends is dropped,
/// not delivered; its `close_notify` then ends the connection.
pub fn test_ssl_data_after_close_is_dropped(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (port, peer) = rustls_peer(move |tls| {
        let _ = go_rx.recv_timeout(Duration::from_secs(10));
        // Our close_notify may be there already; write regardless.
        let _ = tls.write_all(b"too late");
        let _ = tls.flush();
        tls.conn.send_close_notify();
        let _ = tls.conn.complete_io(&mut tls.sock);
        let mut buf = [0u8; 64];
        let _ = tls.read(&mut buf);
    });
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.close();
    go_tx.send(()).expect("peer");
    run_until(&lp, "connection_lost", || p.is_lost())?;
    assert!(
        p.data().is_empty(),
        "data after close was delivered: {:?}",
        p.data()
    );
    peer.join().expect("peer");
    lp.close()
}

/// `abort()` during the shutdown (after `close()`) ends at once.
pub fn test_ssl_abort_during_shutdown(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let (port, peer) = rustls_peer(move |_tls| {
        let _ = done_rx.recv_timeout(Duration::from_secs(20));
    });
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.close(); // waits for a close_notify that will not come...
    for _ in 0..3 {
        run_once(&lp)?;
    }
    assert!(!p.is_lost());
    t.abort(); // ...so give up.
    run_until(&lp, "connection_lost", || p.is_lost())?;
    drop(done_tx);
    peer.join().expect("peer");
    lp.close()
}

/// A panic in the protocol's `connection_made` over TLS reaches the
/// exception handler; the loop goes on.
pub fn test_ssl_connection_made_panic(ctx: &Ctx) -> Result<()> {
    struct Panics;
    impl BaseProtocol for Panics {}
    impl Protocol for Panics {
        fn connection_made(&self, _t: Rc<dyn Transport>) {
            panic!("connection_made bug over TLS");
        }
    }
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let (server, port, _made) = tls_server(&lp, true, Default::default())?;
    let options = CreateConnectionOptions {
        ssl: Some(tls::client()),
        server_hostname: Some("localhost".into()),
        ..Default::default()
    };
    let r = run(
        &lp,
        lp.create_connection(|| Rc::new(Panics), "127.0.0.1", port, options),
    );
    // The panic surfaces, as an error or through the handler; either way
    // the loop is still usable.
    let _ = r;
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    t.write(b"ok")?;
    run_until(&lp, "the echo", || p.data() == b"ok")?;
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// How a TLS transport names itself in messages: as the raw one does,
/// with its peer.
pub fn test_ssl_transport_describe(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, false, Default::default())?;
    let (t, _p) = tls_connect(&lp, port, Default::default())?;
    let d = loop_api::transports::describe(&*t);
    assert!(d.contains(&format!("peername=127.0.0.1:{port}")), "{d}");
    t.close();
    assert!(loop_api::transports::describe(&*t).contains("closing"));
    close_server(&lp, server)?;
    lp.close()
}

/// Sequential connections to one TLS server, each a full exchange.
pub fn test_ssl_sequential_connections(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    for i in 0..10u8 {
        let (t, p) = tls_connect(&lp, port, Default::default())?;
        t.write(&[i; 100])?;
        run_until(&lp, "the echo", || p.data() == [i; 100])?;
        t.close();
        run_until(&lp, "connection_lost", || p.is_lost())?;
    }
    run_until(&lp, "every server side lost", || {
        made.get().len() == 10 && made.get().iter().all(|p| p.is_lost())
    })?;
    close_server(&lp, server)?;
    lp.close()
}

/// `start_tls` with a zero handshake timeout: asyncio's `ValueError`.
pub fn test_start_tls_timeout_checks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, _made) = tls_server(&lp, false, Default::default())?;
    let (t, p) = run(
        &lp,
        lp.create_connection(|| Rec::new(false), "127.0.0.1", port, Default::default()),
    )?;
    let r = run(
        &lp,
        lp.start_tls(
            t.clone(),
            p.clone(),
            tls::client(),
            StartTlsOptions {
                server_hostname: Some("localhost".into()),
                ssl_handshake_timeout: Some(Duration::ZERO),
                ..Default::default()
            },
        ),
    );
    crate::util::expect_value_error(
        r,
        "ssl_handshake_timeout should be a positive number, got 0",
    );
    t.close();
    close_server(&lp, server)?;
    lp.close()
}

/// The server side sees the SNI the client sent, and a client may send a
/// name the certificate does not cover only to fail verification: the
/// server side has no connection either.
pub fn test_ssl_sni_mismatch_server_side(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let _exc = capture_exceptions(&lp);
    let (server, port, made) = tls_server(&lp, false, Default::default())?;
    expect_cert_error(tls_connect(
        &lp,
        port,
        CreateConnectionOptions {
            server_hostname: Some("wrong.example".into()),
            ..Default::default()
        },
    ));
    for _ in 0..5 {
        run_once(&lp)?;
    }
    assert!(made.get().iter().all(|p| p.made.get() == 0 || p.is_lost()));
    close_server(&lp, server)?;
    lp.close()
}

/// `connect_accepted_socket`'s TLS argument checks: a server
/// configuration, and timeouts only with `ssl`.
pub fn test_ssl_connect_accepted_socket_argument_checks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let pair = || {
        let l = TcpListener::bind(local()).expect("bind");
        let _c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        s.set_nonblocking(true).expect("non-blocking");
        (Socket::from(s), _c)
    };
    let (s, _c) = pair();
    let r = run(
        &lp,
        lp.connect_accepted_socket(
            || Rec::new(false),
            s,
            ConnectAcceptedSocketOptions {
                ssl: Some(tls::client()),
                ..Default::default()
            },
        ),
    );
    crate::util::expect_value_error(
        r,
        "a server needs a server SslContext (SslContext::server...)",
    );
    let (s, _c) = pair();
    let r = run(
        &lp,
        lp.connect_accepted_socket(
            || Rec::new(false),
            s,
            ConnectAcceptedSocketOptions {
                ssl_shutdown_timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        ),
    );
    crate::util::expect_value_error(r, "ssl_shutdown_timeout is only meaningful with ssl");
    lp.close()
}

/// 20 MiB each way through TLS under flow control, with a client that
/// reads slowly (pausing every megabyte): every byte arrives, in order.
pub fn test_ssl_20mb_both_ways_slow_reader(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, port, made) = tls_server(&lp, true, Default::default())?;
    let (t, p) = tls_connect(&lp, port, Default::default())?;
    let total = 20 * 1024 * 1024;
    let chunk: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 241) as u8).collect();
    let mut sent = 0;
    let mut next_pause = 1 << 20;
    let deadline = lp.time() + 120.0;
    while p.data.borrow().len() < total {
        assert!(lp.time() < deadline, "20 MiB did not come back in 120 s");
        // Write while the transport is not over its high-water mark.
        while sent < total && p.paused.get() == p.resumed.get() {
            t.write(&chunk)?;
            sent += chunk.len();
        }
        let got = p.data.borrow().len();
        if got >= next_pause {
            next_pause += 1 << 20;
            t.pause_reading();
            let t2 = t.clone();
            lp.call_later(0.005, move || t2.resume_reading())?;
        }
        let _ = lp.call_later(0.05, || {});
        run_once(&lp)?;
    }
    let data = p.data();
    assert_eq!(data.len(), total);
    assert!(
        data.chunks(chunk.len()).all(|c| c == &chunk[..c.len()]),
        "corrupted"
    );
    assert!(p.paused.get() >= 1, "20 MiB never filled the buffer?");
    assert_eq!(made.get()[0].data().len(), total);
    t.close();
    run_until(&lp, "connection_lost", || p.is_lost())?;
    close_server(&lp, server)?;
    lp.close()
}
