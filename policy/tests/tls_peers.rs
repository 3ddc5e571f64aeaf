#![cfg(target_os = "linux")]
//! Our TLS against peers no one here wrote: CPython's `ssl` module,
//! `openssl s_client`/`s_server`, and tokio-rustls, as client and as
//! server, on every backend of this machine. Certificates are the
//! conformance suite's test PKI, made at test time and written to a
//! temporary directory for the peers that read files.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use conformance::tls;
use policy::prelude::*;

/// The backends to run each peer against.
fn backends() -> Vec<&'static str> {
    policy::available_backends()
        .into_iter()
        .filter(|b| policy::backend(b).and_then(|f| f()).is_ok())
        .collect()
}

/// The PKI's PEM files, in a directory of this process's own.
fn pem_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tls-peers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let p = tls::pki();
    std::fs::write(dir.join("ca.pem"), &p.ca_pem).expect("ca.pem");
    std::fs::write(dir.join("cert.pem"), &p.server_cert_pem).expect("cert.pem");
    std::fs::write(dir.join("key.pem"), &p.server_key_pem).expect("key.pem");
    dir
}

fn python() -> Command {
    let mut c = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    if std::env::var_os("PYENV_VERSION").is_none() {
        c.env("PYENV_VERSION", "3.13.0");
    }
    c
}

/// An echo protocol that records what it echoed and how it ended.
#[derive(Default)]
struct Echo {
    transport: TransportCell,
    got: RefCell<Vec<u8>>,
    lost: RefCell<Option<Option<Error>>>,
}

impl BaseProtocol for Echo {
    fn connection_lost(&self, exc: Option<Error>) {
        *self.lost.borrow_mut() = Some(exc);
    }
}

impl Protocol for Echo {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        self.transport.set(transport);
    }
    fn data_received(&self, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
        if let Some(t) = self.transport.get() {
            let _ = t.write(data);
        }
    }
}

/// Runs our TLS echo server on `backend` and `client(port)` in a thread
/// against it; returns what the server's protocol received and how its
/// connection ended.
fn serve_one(backend: &str, client: impl FnOnce(u16) + Send + 'static) -> (Vec<u8>, Option<Error>) {
    let factory = policy::backend(backend).expect("backend");
    run(
        async move {
            let lp = get_running_loop()?;
            let made: Rc<RefCell<Vec<Rc<Echo>>>> = Rc::default();
            let m = made.clone();
            let options = CreateServerOptions {
                ssl: Some(tls::server()),
                ..Default::default()
            };
            let server = lp
                .create_server(
                    move || {
                        let p = Rc::new(Echo::default());
                        m.borrow_mut().push(p.clone());
                        p
                    },
                    "127.0.0.1",
                    0,
                    options,
                )
                .await?;
            let port = server.local_addrs()[0].port();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let remote = lp.remote();
            std::thread::spawn(move || {
                client(port);
                let _ = done_tx.send(());
                let _ = remote.call_soon_threadsafe(|| {});
            });
            let deadline = lp.time() + 30.0;
            loop {
                let ended = made
                    .borrow()
                    .first()
                    .is_some_and(|p| p.lost.borrow().is_some());
                if ended && done_rx.try_recv().is_ok() {
                    break;
                }
                assert!(lp.time() < deadline, "the peer did not finish");
                sleep(0.01).await?;
            }
            server.close();
            let p = made.borrow()[0].clone();
            let got = p.got.borrow().clone();
            let lost = p.lost.borrow_mut().take().expect("ended");
            Ok((got, lost))
        },
        None,
        Some(factory),
    )
    .expect("the server ran")
}

/// Connects our TLS client on `backend` to 127.0.0.1:`port`, sends
/// `message`, and collects what comes back until the peer closes.
fn connect_one(backend: &str, port: u16, message: &'static [u8]) -> Vec<u8> {
    let factory = policy::backend(backend).expect("backend");
    run(
        async move {
            let lp = get_running_loop()?;
            let on_lost = lp.create_future::<()>();
            #[derive(Default)]
            struct Client {
                got: RefCell<Vec<u8>>,
                lost: RefCell<Option<Future<()>>>,
            }
            impl BaseProtocol for Client {
                fn connection_lost(&self, _exc: Option<Error>) {
                    if let Some(f) = self.lost.borrow_mut().take() {
                        let _ = f.set_result(());
                    }
                }
            }
            impl Protocol for Client {
                fn data_received(&self, data: &[u8]) {
                    self.got.borrow_mut().extend_from_slice(data);
                }
            }
            let l = on_lost.clone();
            let options = CreateConnectionOptions {
                ssl: Some(tls::client()),
                server_hostname: Some("localhost".into()),
                ..Default::default()
            };
            let (t, p) = lp
                .create_connection(
                    move || {
                        Rc::new(Client {
                            got: RefCell::default(),
                            lost: RefCell::new(Some(l.clone())),
                        })
                    },
                    "127.0.0.1",
                    port,
                    options,
                )
                .await?;
            t.write(message)?;
            let timeout = lp.call_later(30.0, {
                let t = t.clone();
                move || t.abort()
            })?;
            on_lost.await?;
            timeout.cancel();
            let got = p.got.borrow().clone();
            Ok(got)
        },
        None,
        Some(factory),
    )
    .expect("the client ran")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ----- CPython's ssl module -----------------------------------------------------------

#[test]
fn cpython_ssl_client_against_our_server() {
    let dir = pem_dir();
    for backend in backends() {
        let ca = dir.join("ca.pem");
        let (got, lost) = serve_one(backend, move |port| {
            let script = format!(
                r#"
import socket, ssl
ctx = ssl.create_default_context(cafile={ca:?})
with socket.create_connection(("127.0.0.1", {port})) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"hello from CPython " * 1000)
        want = len(b"hello from CPython " * 1000)
        got = b""
        while len(got) < want:
            got += s.recv(65536)
        assert got == b"hello from CPython " * 1000, len(got)
        print(s.version(), s.cipher()[0])
        s.unwrap()
"#
            );
            let out = python().arg("-c").arg(script).output().expect("python3");
            assert!(
                out.status.success(),
                "the CPython client failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        });
        assert_eq!(got, b"hello from CPython ".repeat(1000), "{backend}");
        assert!(
            lost.is_none(),
            "{backend}: the connection ended with {lost:?}"
        );
    }
}

#[test]
fn our_client_against_a_cpython_ssl_server() {
    let dir = pem_dir();
    for backend in backends() {
        let port = free_port();
        let script = format!(
            r#"
import socket, ssl, sys
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain({cert:?}, {key:?})
with socket.create_server(("127.0.0.1", {port})) as l:
    print("ready", flush=True)
    raw, _ = l.accept()
    with ctx.wrap_socket(raw, server_side=True) as s:
        data = s.recv(65536)
        s.sendall(b"CPython heard: " + data)
        s.unwrap()
"#,
            cert = dir.join("cert.pem"),
            key = dir.join("key.pem"),
        );
        let mut child = python()
            .arg("-c")
            .arg(script)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let mut ready = [0u8; 6];
        child
            .stdout
            .as_mut()
            .expect("stdout")
            .read_exact(&mut ready)
            .expect("the server's ready line");
        let got = connect_one(backend, port, b"hi from Rust");
        assert_eq!(got, b"CPython heard: hi from Rust", "{backend}");
        assert!(child.wait().expect("python3").success(), "{backend}");
    }
}

// ----- openssl s_client / s_server ------------------------------------------------------

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn openssl_s_client_against_our_server() {
    assert!(
        have_openssl(),
        "openssl is not installed (.ci/run installs it)"
    );
    let dir = pem_dir();
    for backend in backends() {
        let ca = dir.join("ca.pem");
        let (got, lost) = serve_one(backend, move |port| {
            let mut child = Command::new("openssl")
                .args([
                    "s_client",
                    "-quiet",
                    // -quiet implies -ign_eof: end on stdin's EOF after all.
                    "-no_ign_eof",
                    "-verify_return_error",
                    "-servername",
                    "localhost",
                ])
                .arg("-connect")
                .arg(format!("127.0.0.1:{port}"))
                .arg("-CAfile")
                .arg(&ca)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("openssl");
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(b"hello from openssl\n").expect("write");
            let mut out = child.stdout.take().expect("stdout");
            let mut echoed = [0u8; 19];
            out.read_exact(&mut echoed).expect("the echo");
            assert_eq!(&echoed, b"hello from openssl\n");
            drop(stdin); // EOF on stdin: s_client sends close_notify and exits
            let _ = child.wait();
        });
        assert_eq!(got, b"hello from openssl\n", "{backend}");
        assert!(
            matches!(lost, None | Some(Error::Io(_))),
            "{backend}: the connection ended with {lost:?}"
        );
    }
}

#[test]
fn our_client_against_openssl_s_server() {
    assert!(
        have_openssl(),
        "openssl is not installed (.ci/run installs it)"
    );
    let dir = pem_dir();
    for backend in backends() {
        let port = free_port();
        let mut child = Command::new("openssl")
            .args(["s_server", "-quiet", "-naccept", "1"])
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(dir.join("cert.pem"))
            .arg("-key")
            .arg(dir.join("key.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        wait_listening(port);
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"from s_server").expect("s_server's stdin");
        let mut stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut line = [0u8; 14];
            stdout.read_exact(&mut line).map(|_| line.to_vec())
        });
        let got = connect_one_until(backend, port, b"hello s_server", b"from s_server");
        assert_eq!(got, b"from s_server", "{backend}");
        let line = reader.join().expect("reader");
        assert_eq!(
            line.expect("s_server printed what we sent"),
            b"hello s_server"
        );
        drop(stdin);
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits until something listens on 127.0.0.1:`port` (Linux's
/// `/proc/net/tcp`: connecting would take a one-connection server's only
/// accept).
fn wait_listening(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let wanted = format!(":{port:04X} ");
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        if table.lines().any(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| format!("{a} ").ends_with(&wanted))
                && l.split_whitespace().nth(3) == Some("0A")
        }) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "s_server did not listen"
        );
        std::thread::yield_now();
    }
}

/// As [`connect_one`], closing our side once `until` has come back.
fn connect_one_until(
    backend: &str,
    port: u16,
    message: &'static [u8],
    until: &'static [u8],
) -> Vec<u8> {
    let factory = policy::backend(backend).expect("backend");
    run(
        async move {
            let lp = get_running_loop()?;
            #[derive(Default)]
            struct Client {
                got: RefCell<Vec<u8>>,
            }
            impl BaseProtocol for Client {}
            impl Protocol for Client {
                fn data_received(&self, data: &[u8]) {
                    self.got.borrow_mut().extend_from_slice(data);
                }
            }
            let options = CreateConnectionOptions {
                ssl: Some(tls::client()),
                server_hostname: Some("localhost".into()),
                ..Default::default()
            };
            let (t, p) = lp
                .create_connection(|| Rc::new(Client::default()), "127.0.0.1", port, options)
                .await?;
            t.write(message)?;
            let deadline = lp.time() + 30.0;
            while !p.got.borrow().ends_with(until) {
                assert!(lp.time() < deadline, "no answer from the peer");
                sleep(0.01).await?;
            }
            t.close();
            let got = p.got.borrow().clone();
            Ok(got)
        },
        None,
        Some(factory),
    )
    .expect("the client ran")
}

// ----- tokio-rustls -------------------------------------------------------------------

#[test]
fn tokio_rustls_client_against_our_server() {
    for backend in backends() {
        let (got, lost) = serve_one(backend, |port| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio");
            rt.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let connector = tokio_rustls::TlsConnector::from(tls::client_config());
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .expect("connect");
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                let mut s = connector.connect(name, tcp).await.expect("handshake");
                let message = vec![7u8; 1 << 20];
                s.write_all(&message).await.expect("write");
                let mut back = vec![0u8; message.len()];
                s.read_exact(&mut back).await.expect("read");
                assert!(back == message);
                s.shutdown().await.expect("close_notify");
            });
        });
        assert_eq!(got.len(), 1 << 20, "{backend}");
        assert!(got.iter().all(|&b| b == 7));
        assert!(lost.is_none(), "{backend}: {lost:?}");
    }
}

#[test]
fn our_client_against_a_tokio_rustls_server() {
    for backend in backends() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().expect("addr").port();
        l.set_nonblocking(true).expect("non-blocking");
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio");
            rt.block_on(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let l = tokio::net::TcpListener::from_std(l).expect("listener");
                let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config());
                let (tcp, _) = l.accept().await.expect("accept");
                let mut s = acceptor.accept(tcp).await.expect("handshake");
                let mut buf = vec![0u8; 12];
                s.read_exact(&mut buf).await.expect("read");
                s.write_all(b"tokio heard: ").await.expect("write");
                s.write_all(&buf).await.expect("write");
                s.shutdown().await.expect("close_notify");
            });
        });
        let got = connect_one(backend, port, b"hi from Rust");
        assert_eq!(got, b"tokio heard: hi from Rust", "{backend}");
        server.join().expect("tokio server");
    }
}
