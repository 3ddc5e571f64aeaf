//! TLS echo benchmark: our TLS echo server (`create_server(ssl=...)`, the
//! `EchoProtocol` under `sslproto`) on each backend, against a tokio +
//! tokio-rustls echo server, on the same rustls, the same provider (ring)
//! and the same certificate, in one process.
//!
//! Run: `cargo run --release -p policy --example tls_bench`
//! (`-- --quick` for a smoke run; `-- --secs S`, `-- --reps R`,
//! `-- --backends select,uring`).
//!
//! For each point (connections x message size) and each server in turn:
//! the server runs alone on its thread, pinned to one CPU; the load
//! generator (tokio-rustls clients on a current-thread runtime) is this
//! thread, pinned to another. Each connection sends a message, reads it
//! back whole, checks it and sends again (a closed loop). The server
//! thread's CPU time (user + sys) over the window, divided by the round
//! trips completed in it, is the server CPU per round trip. Then
//! handshakes: 10 clients connect, complete a full handshake (no session
//! resumption: each client config has its own empty cache) and close, in
//! a loop; handshakes per second, and the server's CPU per handshake.

#[cfg(target_os = "linux")]
#[path = "shared/echo_protocol.rs"]
mod echo_protocol;

#[cfg(target_os = "linux")]
#[path = "shared/cpu.rs"]
mod cpu;

#[cfg(target_os = "linux")]
fn main() {
    bench::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("tls_bench needs Linux (getrusage(RUSAGE_THREAD), sched_setaffinity)");
}

#[cfg(target_os = "linux")]
mod bench {
    use std::rc::Rc;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use loop_api::events::options::CreateServerOptions;
    use loop_api::ssl::SslContext;
    use loop_api::EventLoopExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::cpu::{allowed_cpus, pin_to, thread_cpu, Cpu};
    use crate::echo_protocol::EchoProtocol;

    /// What the load thread asks a server thread.
    enum Ask {
        Cpu(std::sync::mpsc::Sender<Cpu>),
        Stop,
    }

    /// A running server: its port, and a way to ask it for its CPU time.
    struct Server {
        port: u16,
        ask: Box<dyn Fn(Ask) + Send>,
        thread: std::thread::JoinHandle<()>,
    }

    impl Server {
        fn cpu(&self) -> Cpu {
            let (tx, rx) = std::sync::mpsc::channel();
            (self.ask)(Ask::Cpu(tx));
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the server answered")
        }
        fn stop(self) {
            (self.ask)(Ask::Stop);
            self.thread.join().expect("server thread");
        }
    }

    fn server_config() -> Arc<rustls::ServerConfig> {
        conformance::tls::server_config()
    }

    /// Our TLS echo server on `backend`, on its own thread and CPU.
    fn ours(backend: &'static str, cpu: usize) -> Server {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            pin_to(cpu);
            let factory = policy::backend(backend).expect("backend");
            let lp = factory().expect("loop");
            let options = CreateServerOptions {
                ssl: Some(SslContext::server_config(server_config())),
                backlog: 1024,
                ..Default::default()
            };
            let server = lp
                .run_until_complete(lp.create_server(
                    || Rc::new(EchoProtocol::default()),
                    "127.0.0.1",
                    0,
                    options,
                ))
                .expect("server");
            let port = server.local_addrs()[0].port();
            ready_tx.send((port, lp.remote())).expect("ready");
            lp.run_forever().expect("run");
            server.close();
            let _ = lp.close();
        });
        let (port, remote) = ready_rx.recv().expect("our server started");
        Server {
            port,
            ask: Box::new(move |a| {
                let _ = match a {
                    Ask::Cpu(tx) => remote.call_soon_threadsafe(move || {
                        let _ = tx.send(thread_cpu());
                    }),
                    Ask::Stop => remote.stop(),
                };
            }),
            thread,
        }
    }

    /// tokio + tokio-rustls echo server, on its own thread and CPU.
    fn tokio_rustls(cpu: usize) -> Server {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ask_tx, mut ask_rx) = tokio::sync::mpsc::unbounded_channel::<Ask>();
        let thread = std::thread::spawn(move || {
            pin_to(cpu);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio");
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                ready_tx
                    .send(l.local_addr().expect("addr").port())
                    .expect("ready");
                let acceptor = tokio_rustls::TlsAcceptor::from(server_config());
                loop {
                    tokio::select! {
                        ask = ask_rx.recv() => match ask {
                            Some(Ask::Cpu(tx)) => { let _ = tx.send(thread_cpu()); }
                            _ => break,
                        },
                        conn = l.accept() => {
                            let Ok((tcp, _)) = conn else { continue };
                            tcp.set_nodelay(true).ok();
                            let acceptor = acceptor.clone();
                            tokio::task::spawn_local(async move {
                                let Ok(mut s) = acceptor.accept(tcp).await else { return };
                                let mut buf = vec![0u8; 64 * 1024];
                                loop {
                                    match s.read(&mut buf).await {
                                        Ok(0) | Err(_) => break,
                                        Ok(n) => {
                                            if s.write_all(&buf[..n]).await.is_err() {
                                                break;
                                            }
                                        }
                                    }
                                }
                            });
                        }
                    }
                }
            });
        });
        let port = ready_rx.recv().expect("tokio server started");
        Server {
            port,
            ask: Box::new(move |a| {
                let _ = ask_tx.send(a);
            }),
            thread,
        }
    }

    /// A client config with its own (empty) session cache: every handshake
    /// is a full one.
    fn client_config() -> Arc<rustls::ClientConfig> {
        let mut c = (*conformance::tls::client_config()).clone();
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    }

    async fn connect(
        port: u16,
        config: Arc<rustls::ClientConfig>,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        tcp.set_nodelay(true).ok();
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("handshake")
    }

    /// Server CPU per round trip (µs) and round trips per second.
    fn echo_point(
        rt: &tokio::runtime::Runtime,
        server: &Server,
        conns: usize,
        size: usize,
        secs: f64,
    ) -> (f64, f64) {
        let local = tokio::task::LocalSet::new();
        local.block_on(rt, async {
            let config = client_config();
            let mut streams = Vec::new();
            for _ in 0..conns {
                streams.push(connect(server.port, config.clone()).await);
            }
            let done = Rc::new(std::cell::Cell::new(0u64));
            let stop = Rc::new(std::cell::Cell::new(false));
            let mut tasks = Vec::new();
            for mut s in streams {
                let (done, stop) = (done.clone(), stop.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    let msg = vec![0x5au8; size];
                    let mut back = vec![0u8; size];
                    while !stop.get() {
                        s.write_all(&msg).await.expect("write");
                        s.read_exact(&mut back).await.expect("read");
                        assert!(back == msg);
                        done.set(done.get() + 1);
                    }
                    let _ = s.shutdown().await;
                }));
            }
            tokio::time::sleep(Duration::from_millis(300)).await; // warm-up
            let (c0, n0, t0) = (server.cpu(), done.get(), Instant::now());
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let (c1, n1, dt) = (server.cpu(), done.get(), t0.elapsed().as_secs_f64());
            stop.set(true);
            for t in tasks {
                let _ = t.await;
            }
            let trips = (n1 - n0).max(1) as f64;
            ((c1 - c0).total().as_secs_f64() * 1e6 / trips, trips / dt)
        })
    }

    /// Full handshakes per second (10 clients in a loop), and the server's
    /// CPU per handshake (µs).
    fn handshake_point(rt: &tokio::runtime::Runtime, server: &Server, secs: f64) -> (f64, f64) {
        let local = tokio::task::LocalSet::new();
        local.block_on(rt, async {
            let count = Rc::new(std::cell::Cell::new(0u64));
            let stop = Rc::new(std::cell::Cell::new(false));
            let port = server.port;
            let mut tasks = Vec::new();
            for _ in 0..10 {
                let (count, stop) = (count.clone(), stop.clone());
                tasks.push(tokio::task::spawn_local(async move {
                    while !stop.get() {
                        let mut s = connect(port, client_config()).await;
                        s.write_all(b"x").await.expect("write");
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await.expect("read");
                        let _ = s.shutdown().await;
                        count.set(count.get() + 1);
                    }
                }));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (c0, n0, t0) = (server.cpu(), count.get(), Instant::now());
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let (c1, n1, dt) = (server.cpu(), count.get(), t0.elapsed().as_secs_f64());
            stop.set(true);
            for t in tasks {
                let _ = t.await;
            }
            let n = (n1 - n0).max(1) as f64;
            (n / dt, (c1 - c0).total().as_secs_f64() * 1e6 / n)
        })
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let arg = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let quick = args.iter().any(|a| a == "--quick");
        let secs: f64 = arg("--secs").map_or(if quick { 0.5 } else { 2.0 }, |s| {
            s.parse().expect("--secs")
        });
        let reps: usize =
            arg("--reps").map_or(if quick { 1 } else { 3 }, |s| s.parse().expect("--reps"));
        let wanted: Vec<&'static str> = match arg("--backends") {
            Some(list) => policy::available_backends()
                .into_iter()
                .filter(|b| list.split(',').any(|w| w == *b))
                .collect(),
            None => policy::available_backends(),
        };
        let backends: Vec<&'static str> = wanted
            .into_iter()
            .filter(|b| policy::backend(b).and_then(|f| f()).is_ok())
            .collect();
        let cpus = allowed_cpus();
        let (server_cpu, load_cpu) = match cpus.as_slice() {
            [a, b, ..] => (*a, *b),
            [a] => (*a, *a),
            [] => (0, 0),
        };
        pin_to(load_cpu);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let mut names: Vec<&str> = backends.clone();
        names.push("tokio-rustls");
        println!(
            "TLS echo, server CPU per round trip in µs (median of {reps}); ours / tokio-rustls"
        );
        print!("{:>5} {:>6} |", "conns", "size");
        for n in &names {
            print!(" {n:>12}");
        }
        for b in &backends {
            print!(" {:>10}", format!("{b}/tokio"));
        }
        println!();
        for &conns in &[10usize, 100] {
            for &size in &[1024usize, 16 * 1024] {
                let mut cols = vec![Vec::new(); names.len()];
                for rep in 0..reps {
                    for k in 0..names.len() {
                        let i = (k + rep) % names.len();
                        let server = if i < backends.len() {
                            ours(backends[i], server_cpu)
                        } else {
                            tokio_rustls(server_cpu)
                        };
                        let (us, _rate) = echo_point(&rt, &server, conns, size, secs);
                        cols[i].push(us);
                        server.stop();
                    }
                }
                let meds: Vec<f64> = cols.into_iter().map(median).collect();
                print!("{conns:>5} {:>6} |", format!("{}K", size / 1024));
                for m in &meds {
                    print!(" {m:>12.2}");
                }
                let tokio = meds[meds.len() - 1];
                for m in &meds[..backends.len()] {
                    print!(" {:>10.2}", m / tokio);
                }
                println!();
            }
        }
        println!("\nfull handshakes: per second (10 clients), server CPU per handshake in µs (median of {reps})");
        for (i, n) in names.iter().enumerate() {
            let mut rates = Vec::new();
            let mut cpus = Vec::new();
            for _ in 0..reps {
                let server = if i < backends.len() {
                    ours(backends[i], server_cpu)
                } else {
                    tokio_rustls(server_cpu)
                };
                let (rate, cpu) = handshake_point(&rt, &server, secs);
                rates.push(rate);
                cpus.push(cpu);
                server.stop();
            }
            println!(
                "{n:>12}: {:>8.0}/s  {:>8.1} µs",
                median(rates),
                median(cpus)
            );
        }
    }
}
