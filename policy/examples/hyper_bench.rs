//! hyper "hello world" benchmark: the same hyper 1.x HTTP/1.1 server on
//! our loop (hyper over a `Stream` from `start_server`, `LoopTimer`) and
//! on tokio's current-thread runtime (hyper-util's `TokioIo`), in one
//! process, against a closed-loop keep-alive load generator.
//!
//! Run: `cargo run --release -p policy --example hyper_bench`
//! (`-- --quick` for a smoke run; `-- --conns 10,100`, `-- --secs S`,
//! `-- --reps R`, `-- --backends select,uring`).
//!
//! The server thread is pinned to one CPU and the load generator (a tokio
//! current-thread runtime, `GET /` on each of N keep-alive connections,
//! the next request once the whole response is read) to another. The
//! table gives requests per second and the server thread's CPU time
//! (user and sys, `getrusage(RUSAGE_THREAD)`) per request over the
//! window, median of the reps, servers alternating.

#[cfg(target_os = "linux")]
#[path = "shared/cpu.rs"]
mod cpu;

#[cfg(target_os = "linux")]
fn main() {
    bench::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("hyper_bench needs Linux (getrusage(RUSAGE_THREAD), sched_setaffinity)");
}

#[cfg(target_os = "linux")]
mod bench {
    use std::cell::Cell;
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::rc::Rc;
    use std::sync::mpsc as std_mpsc;
    use std::time::{Duration, Instant};

    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response};
    use loop_api::hyper_rt::LoopTimer;
    use loop_api::streams::{start_server, Stream, StreamReader, StreamWriter};
    use loop_api::{Error, EventLoopExt};
    use policy::LoopFactory;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::cpu::{allowed_cpus, pin_to, thread_cpu, Cpu};

    async fn hello(_req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(Response::new(Full::new(Bytes::from_static(
            b"Hello, World!",
        ))))
    }

    /// Asks a server thread for its CPU time, or to stop.
    enum Msg {
        Sample(std_mpsc::Sender<Cpu>),
        Stop,
    }

    /// How the load thread reaches a server.
    type Ctl = Box<dyn Fn(Msg) + Send>;

    fn serve_ours(factory: LoopFactory, ready: std_mpsc::Sender<(SocketAddr, Ctl)>) {
        policy::run(
            async move {
                let lp = policy::get_running_loop()?;
                let server = start_server(
                    |r: StreamReader, w: StreamWriter| async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .timer(LoopTimer)
                            .serve_connection(Stream::new(r, w), hyper::service::service_fn(hello))
                            .await;
                        Ok(())
                    },
                    "127.0.0.1",
                    0u16,
                    Default::default(),
                )
                .await?;
                let addr = server.local_addrs()[0];
                let stop = lp.create_future::<()>();
                let remote = lp.remote();
                let stop_slot = Rc::new(stop.clone());
                STOP.with(|s| *s.borrow_mut() = Some((*stop_slot).clone()));
                let ctl: Ctl = Box::new(move |m| {
                    let _ = remote.call_soon_threadsafe(move || match m {
                        Msg::Sample(tx) => {
                            let _ = tx.send(thread_cpu());
                        }
                        Msg::Stop => STOP.with(|s| {
                            if let Some(f) = s.borrow_mut().take() {
                                let _ = f.set_result(());
                            }
                        }),
                    });
                });
                let _ = ready.send((addr, ctl));
                stop.await?;
                server.close();
                Ok::<_, Error>(())
            },
            None,
            Some(factory),
        )
        .expect("our server");
    }

    thread_local! {
        static STOP: std::cell::RefCell<Option<loop_api::Future<()>>> = const { std::cell::RefCell::new(None) };
    }

    fn serve_tokio(ready: std_mpsc::Sender<(SocketAddr, Ctl)>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio");
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Msg>();
            let ctl: Ctl = Box::new(move |m| {
                let _ = tx.send(m);
            });
            let _ = ready.send((addr, ctl));
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let (sock, _) = accepted.unwrap();
                        sock.set_nodelay(true).unwrap();
                        tokio::task::spawn_local(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .timer(hyper_util::rt::TokioTimer::new())
                                .serve_connection(
                                    hyper_util::rt::TokioIo::new(sock),
                                    hyper::service::service_fn(hello),
                                )
                                .await;
                        });
                    }
                    msg = rx.recv() => match msg {
                        Some(Msg::Sample(reply)) => { let _ = reply.send(thread_cpu()); }
                        Some(Msg::Stop) | None => return,
                    },
                }
            }
        });
    }

    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n";
    const BODY: &[u8] = b"Hello, World!";

    /// One keep-alive connection of the closed loop; counts responses.
    async fn client(
        addr: SocketAddr,
        count: Rc<Cell<u64>>,
        stop: Rc<Cell<bool>>,
    ) -> Result<(), String> {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 4096];
        while !stop.get() {
            s.write_all(REQUEST).await.map_err(|e| e.to_string())?;
            let mut have = 0;
            loop {
                let n = s.read(&mut buf[have..]).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("server closed".into());
                }
                have += n;
                if buf[..have].ends_with(BODY) {
                    break;
                }
            }
            if !buf.starts_with(b"HTTP/1.1 200 OK\r\n") {
                return Err(format!(
                    "bad response {:?}",
                    String::from_utf8_lossy(&buf[..have])
                ));
            }
            count.set(count.get() + 1);
        }
        Ok(())
    }

    struct Meas {
        reqs_per_s: f64,
        us_per_req: f64,
    }

    fn measure(addr: SocketAddr, ctl: &Ctl, conns: usize, secs: f64) -> Meas {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            let count = Rc::new(Cell::new(0u64));
            let stop = Rc::new(Cell::new(false));
            let mut tasks = Vec::new();
            for _ in 0..conns {
                tasks.push(tokio::task::spawn_local(client(
                    addr,
                    count.clone(),
                    stop.clone(),
                )));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let sample = || {
                let (tx, rx) = std_mpsc::channel();
                ctl(Msg::Sample(tx));
                rx
            };
            let rx0 = sample();
            let cpu0 = loop {
                if let Ok(c) = rx0.try_recv() {
                    break c;
                }
                tokio::task::yield_now().await;
            };
            let (n0, t0) = (count.get(), Instant::now());
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            let rx1 = sample();
            let (n1, t1) = (count.get(), Instant::now());
            let cpu1 = loop {
                if let Ok(c) = rx1.try_recv() {
                    break c;
                }
                tokio::task::yield_now().await;
            };
            stop.set(true);
            for t in tasks {
                if let Ok(Err(e)) = t.await {
                    panic!("client: {e}");
                }
            }
            let n = (n1 - n0) as f64;
            Meas {
                reqs_per_s: n / (t1 - t0).as_secs_f64(),
                us_per_req: (cpu1 - cpu0).total().as_secs_f64() * 1e6 / n,
            }
        })
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
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
        let secs: f64 = arg("--secs").map_or(if quick { 0.3 } else { 1.5 }, |s| s.parse().unwrap());
        let reps: usize = arg("--reps").map_or(if quick { 1 } else { 3 }, |s| s.parse().unwrap());
        let conns: Vec<usize> = arg("--conns").map_or(vec![10, 100], |s| {
            s.split(',').map(|x| x.trim().parse().unwrap()).collect()
        });
        let names: Vec<String> = arg("--backends").map_or_else(
            || {
                policy::available_backends()
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            },
            |s| s.split(',').map(|x| x.trim().to_string()).collect(),
        );
        let cpus = allowed_cpus();
        let (server_cpu, load_cpu) = if cpus.len() >= 2 {
            (Some(cpus[0]), Some(cpus[1]))
        } else {
            (None, None)
        };
        if let Some(c) = load_cpu {
            pin_to(c);
        }
        println!(
            "hyper_bench: hyper 1.x HTTP/1.1 \"Hello, World!\", keep-alive closed loop; median of {reps}, window {secs} s"
        );
        let mut servers: Vec<String> = names.clone();
        servers.push("tokio".into());
        let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); servers.len() * conns.len()];
        for rep in 0..reps {
            for (ci, &n) in conns.iter().enumerate() {
                for k in 0..servers.len() {
                    let si = (k + rep) % servers.len();
                    let name = servers[si].clone();
                    let (tx, rx) = std_mpsc::channel();
                    let th = std::thread::spawn(move || {
                        if let Some(c) = server_cpu {
                            pin_to(c);
                        }
                        if name == "tokio" {
                            serve_tokio(tx);
                        } else {
                            serve_ours(policy::backend(&name).expect("backend"), tx);
                        }
                    });
                    let (addr, ctl) = rx.recv().expect("server up");
                    let m = measure(addr, &ctl, n, secs);
                    ctl(Msg::Stop);
                    th.join().expect("server thread");
                    results[si * conns.len() + ci].push((m.reqs_per_s, m.us_per_req));
                }
            }
        }
        println!("| conns | server | req/s | us/req (server CPU) | CPU/req vs tokio |");
        println!("|---|---|---|---|---|");
        for (ci, &n) in conns.iter().enumerate() {
            let tokio_i = (servers.len() - 1) * conns.len() + ci;
            let tokio_us = median(results[tokio_i].iter().map(|r| r.1).collect());
            for (si, name) in servers.iter().enumerate() {
                let r = &results[si * conns.len() + ci];
                let rps = median(r.iter().map(|x| x.0).collect());
                let us = median(r.iter().map(|x| x.1).collect());
                println!(
                    "| {n} | {name} | {rps:.0} | {us:.2} | {:.2} |",
                    us / tokio_us
                );
            }
        }
    }
}
