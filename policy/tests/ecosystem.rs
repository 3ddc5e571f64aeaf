#![cfg(target_os = "linux")]
//! Crates written for tokio's I/O traits, on our loop through its
//! streams, on every backend of this machine: tokio-rustls as client and
//! as server, and hyper 1.x as server (answering CPython's `http.client`
//! and curl) and as client (against CPython's `http.server` and against
//! itself), with hyper's executor and timer on our tasks and timers.

use std::convert::Infallible;
use std::process::Command;
use std::rc::Rc;

use conformance::tls;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use loop_api::hyper_rt::{LoopExecutor, LoopTimer};
use policy::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The backends of this machine that start.
fn backends() -> Vec<&'static str> {
    policy::available_backends()
        .into_iter()
        .filter(|b| policy::backend(b).and_then(|f| f()).is_ok())
        .collect()
}

fn on(backend: &str, main: impl std::future::Future<Output = Result<()>> + 'static) {
    let factory = policy::backend(backend).expect("backend");
    run(main, None, Some(factory)).unwrap_or_else(|e| panic!("{backend}: {e}"));
}

fn python() -> (String, Vec<(String, String)>) {
    let exe = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    if std::env::var_os("PYENV_VERSION").is_none() {
        env.push(("PYENV_VERSION".into(), "3.13.0".into()));
    }
    (exe, env)
}

/// Runs `python3 -c script args...` as our subprocess; its stdout.
async fn python_output(script: &str, args: &[String]) -> Result<String> {
    let (exe, env) = python();
    let mut argv = vec!["-c".to_string(), script.to_string()];
    argv.extend(args.iter().cloned());
    let mut p = create_subprocess_exec(
        exe,
        argv,
        SubprocessOptions {
            env: Some(env.into_iter().map(|(k, v)| (k.into(), v.into())).collect()),
            ..Default::default()
        },
    )
    .await?;
    let (out, err) = p.communicate(None).await?;
    let code = p.returncode();
    let out = String::from_utf8_lossy(&out.unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err.unwrap_or_default()).into_owned();
    assert_eq!(code, Some(0), "python failed: {err}");
    Ok(out)
}

async fn echo(mut r: StreamReader, w: StreamWriter) -> Result<()> {
    loop {
        let d = r.read(65536).await?;
        if d.is_empty() {
            w.close();
            return Ok(());
        }
        w.write(&d)?;
        w.drain().await?;
    }
}

fn port_of(server: &Rc<dyn AbstractServer>) -> u16 {
    server.local_addrs()[0].port()
}

// ----- tokio-rustls ------------------------------------------------------------------------

/// tokio-rustls's client over our plain stream, against our TLS server
/// (`start_server(ssl=)`): a handshake and 1 MB each way.
#[test]
fn tokio_rustls_client_over_our_stream() {
    for backend in backends() {
        on(backend, async {
            let server = start_server(
                echo,
                "127.0.0.1",
                0u16,
                CreateServerOptions {
                    ssl: Some(tls::server()),
                    ..Default::default()
                }
                .into(),
            )
            .await?;
            let stream: Stream = open_connection("127.0.0.1", port_of(&server), Default::default())
                .await?
                .into();
            let connector = tokio_rustls::TlsConnector::from(tls::client_config());
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls_stream = connector.connect(name, stream).await?;
            let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
            let (mut rd, mut wr) = tokio::io::split(&mut tls_stream);
            let d2 = data.clone();
            let write = async move {
                wr.write_all(&d2).await?;
                wr.flush().await
            };
            let read = async move {
                let mut back = vec![0u8; 1 << 20];
                rd.read_exact(&mut back).await.map(|_| back)
            };
            let (w, back) = join(write, read).await;
            w?;
            assert!(back? == data, "byte-exact through TLS");
            tls_stream.shutdown().await?;
            server.close();
            server.wait_closed().await
        });
    }
}

/// tokio-rustls's server over the stream `start_server` hands out,
/// against our TLS client (`open_connection(ssl=)`).
#[test]
fn tokio_rustls_server_over_our_stream() {
    for backend in backends() {
        on(backend, async {
            let server = start_server(
                |r: StreamReader, w: StreamWriter| async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config());
                    let mut s = acceptor.accept(Stream::new(r, w)).await?;
                    let mut line = Vec::new();
                    loop {
                        let mut b = [0u8; 1];
                        if s.read(&mut b).await? == 0 || b[0] == b'\n' {
                            break;
                        }
                        line.push(b[0]);
                    }
                    line.reverse();
                    line.push(b'\n');
                    s.write_all(&line).await?;
                    s.shutdown().await?;
                    Ok(())
                },
                "127.0.0.1",
                0u16,
                Default::default(),
            )
            .await?;
            let (mut r, w) = open_connection(
                "127.0.0.1",
                port_of(&server),
                CreateConnectionOptions {
                    ssl: Some(tls::client()),
                    server_hostname: Some("localhost".into()),
                    ..Default::default()
                }
                .into(),
            )
            .await?;
            w.write(b"stressed\n")?;
            let answer = r.readline().await?;
            assert_eq!(answer, b"desserts\n");
            assert_eq!(r.read(-1).await?, b"", "close_notify, then EOF");
            w.close();
            server.close();
            server.wait_closed().await
        });
    }
}

// ----- hyper ---------------------------------------------------------------------------------

async fn hello(req: Request<Incoming>) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let body = format!("Hello, {} {}!", req.method(), req.uri().path());
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// A hyper HTTP/1.1 server on our loop, one connection per stream.
async fn hyper_server() -> Result<Rc<dyn AbstractServer>> {
    start_server(
        |r: StreamReader, w: StreamWriter| async move {
            hyper::server::conn::http1::Builder::new()
                .timer(LoopTimer)
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(Stream::new(r, w), hyper::service::service_fn(hello))
                .await
                .map_err(Error::other)
        },
        "127.0.0.1",
        0u16,
        Default::default(),
    )
    .await
}

/// hyper's server answers CPython's `http.client` (three requests on one
/// keep-alive connection) and curl.
#[test]
fn hyper_server_answers_cpython_and_curl() {
    for backend in backends() {
        on(backend, async {
            let server = hyper_server().await?;
            let port = port_of(&server).to_string();
            let script = r#"
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
for path in ("/a", "/b", "/c"):
    c.request("GET", path)
    r = c.getresponse()
    print(r.status, r.read().decode())
c.request("POST", "/form", body=b"x" * 100000)
r = c.getresponse()
print(r.status, r.read().decode())
"#;
            let out = python_output(script, std::slice::from_ref(&port)).await?;
            assert_eq!(
                out,
                "200 Hello, GET /a!\n200 Hello, GET /b!\n200 Hello, GET /c!\n200 Hello, POST /form!\n"
            );
            if Command::new("curl").arg("--version").output().is_ok() {
                let mut p = create_subprocess_exec(
                    "curl",
                    ["-s", "-i", &format!("http://127.0.0.1:{port}/curl")],
                    Default::default(),
                )
                .await?;
                let (out, _) = p.communicate(None).await?;
                let out = String::from_utf8(out.unwrap()).unwrap();
                assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
                assert!(out.ends_with("\r\n\r\nHello, GET /curl!"), "{out}");
            }
            server.close();
            server.wait_closed().await
        });
    }
}

/// hyper's client on our loop: against CPython's `http.server`, and
/// against hyper's server on the same loop (100 requests on one
/// keep-alive connection, its connection task on `LoopExecutor`).
#[test]
fn hyper_client_on_our_loop() {
    for backend in backends() {
        on(backend, async {
            // CPython's http.server, started as our subprocess; it says
            // which port it took.
            let (exe, env) = python();
            let mut py = create_subprocess_exec(
                exe,
                ["-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
                SubprocessOptions {
                    env: Some(env.into_iter().map(|(k, v)| (k.into(), v.into())).collect()),
                    cwd: Some(env!("CARGO_MANIFEST_DIR").into()),
                    ..Default::default()
                },
            )
            .await?;
            let line = py.stdout.as_mut().unwrap().readline().await?;
            let line = String::from_utf8(line).unwrap();
            let port: u16 = line
                .split(" port ")
                .nth(1)
                .and_then(|s| s.split_whitespace().next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("no port in {line:?}"));
            let (status, body) = get(port, "/Cargo.toml").await?;
            assert_eq!(status, 200);
            assert!(body.contains("name = \"policy\""), "{body}");
            py.kill()?;
            py.wait().await?;

            // hyper to hyper, on one loop.
            let server = hyper_server().await?;
            let stream: Stream = open_connection("127.0.0.1", port_of(&server), Default::default())
                .await?
                .into();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(stream)
                .await
                .map_err(Error::other)?;
            hyper::rt::Executor::execute(&LoopExecutor, async move {
                let _ = conn.await;
            });
            for i in 0..100 {
                let req = Request::get(format!("/n{i}"))
                    .header("host", "localhost")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let res = sender.send_request(req).await.map_err(Error::other)?;
                let body = res.into_body().collect().await.map_err(Error::other)?;
                assert_eq!(body.to_bytes(), format!("Hello, GET /n{i}!"));
            }
            drop(sender);
            server.close();
            server.wait_closed().await
        });
    }
}

/// One GET with a fresh hyper client connection.
async fn get(port: u16, path: &str) -> Result<(u16, String)> {
    let stream: Stream = open_connection("127.0.0.1", port, Default::default())
        .await?
        .into();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(stream)
        .await
        .map_err(Error::other)?;
    let conn_task =
        get_running_loop()?.create_task(async move { conn.await.map_err(Error::other) })?;
    let req = Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = sender.send_request(req).await.map_err(Error::other)?;
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.map_err(Error::other)?;
    drop(sender);
    conn_task.await?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

/// Polls two futures to completion together.
async fn join<A: std::future::Future, B: std::future::Future>(
    a: A,
    b: B,
) -> (A::Output, B::Output) {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut ra, mut rb) = (None, None);
    std::future::poll_fn(move |cx| {
        if ra.is_none() {
            if let std::task::Poll::Ready(v) = a.as_mut().poll(cx) {
                ra = Some(v);
            }
        }
        if rb.is_none() {
            if let std::task::Poll::Ready(v) = b.as_mut().poll(cx) {
                rb = Some(v);
            }
        }
        if ra.is_some() && rb.is_some() {
            std::task::Poll::Ready((ra.take().unwrap(), rb.take().unwrap()))
        } else {
            std::task::Poll::Pending
        }
    })
    .await
}
