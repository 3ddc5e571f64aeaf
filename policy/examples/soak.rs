//! Churn soak: an echo server on one of our loops under a long, mixed load,
//! checked for lost or corrupted bytes, unexpected errors, leaked
//! descriptors and memory growth.
//!
//! Run: `cargo run --release -p policy --example soak -- --backend uring --secs 300`
//! (`--backend` select, uring or auto (the default); `--secs`, default 30;
//! `--conns`, the persistent connections, default 500). CI runs it for 30
//! seconds on select and on uring; the README gives 5-minute figures.
//!
//! The server is `create_server` with an echo protocol on its own thread,
//! with an exception handler that records everything it is given. The load,
//! on this thread (a tokio current-thread runtime), for the whole run:
//!
//! - `--conns` persistent connections, each echoing messages of random size
//!   (1 byte to 256 KiB, log-uniform) in a closed loop, writing while it
//!   reads; every byte that comes back is compared with what was sent.
//! - A churn of short connections, up to 64 at a time, each one of: open,
//!   echo a random message and close; send a message, half-close and read
//!   the echo to EOF (the server closes after EOF); send, then reset
//!   (`SO_LINGER` 0); open and vanish without a byte.
//! - 4 threads making 250,000 `call_soon_threadsafe` calls each: every
//!   callback must run exactly once.
//!
//! It passes (exit status 0) when every echo came back byte-exact, the
//! exception handler was never called, no connection ended with an error
//! other than a reset or broken pipe, every callback ran exactly once, the
//! server saw every connection closed, the process's descriptor count is
//! back to where it was before the load, and its RSS at the end of the load
//! is at most max(5%, 4 MiB) over its RSS once the load had warmed up (a
//! fifth of the way in).

#[cfg(target_os = "linux")]
#[path = "shared/echo_protocol.rs"]
mod echo_protocol;

#[cfg(target_os = "linux")]
fn main() {
    std::process::exit(soak::main());
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("soak needs Linux (/proc/self/fd, /proc/self/status)");
}

#[cfg(target_os = "linux")]
mod soak {
    use std::cell::{Cell, RefCell};
    use std::net::SocketAddr;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{mpsc, Arc};
    use std::time::{Duration, Instant};

    use loop_api::events::options::CreateServerOptions;
    use loop_api::{Error, EventLoopExt, RemoteLoop};
    use policy::prelude::*;
    // The prelude's `Result` is asyncio's; this file reports errors as text.
    use std::result::Result;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use crate::echo_protocol::EchoProtocol;

    const THREADSAFE_THREADS: usize = 4;
    const THREADSAFE_CALLS: usize = 250_000;
    const MAX_MESSAGE_LOG2: u32 = 18;
    const CHURN_AT_ONCE: usize = 64;

    pub fn main() -> i32 {
        let args: Vec<String> = std::env::args().collect();
        let arg = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let backend = arg("--backend").unwrap_or_else(|| "auto".into());
        let secs: u64 = arg("--secs").map_or(30, |s| s.parse().expect("--secs S"));
        let conns: usize = arg("--conns").map_or(500, |s| s.parse().expect("--conns N"));
        match run(&backend, Duration::from_secs(secs), conns) {
            Ok(report) => {
                println!("{report}");
                println!("soak ({backend}, {secs} s): PASS");
                0
            }
            Err(e) => {
                eprintln!("soak ({backend}, {secs} s): FAIL: {e}");
                1
            }
        }
    }

    // ----- the server ----------------------------------------------------------------

    /// What the server thread saw.
    #[derive(Default)]
    struct ServerStats {
        open: Cell<usize>,
        accepted: Cell<u64>,
        resets: Cell<u64>,
        /// Connection errors other than a reset or broken pipe.
        unexpected: RefCell<Vec<String>>,
        /// Everything the exception handler was given.
        handler: RefCell<Vec<String>>,
        /// Runs of each `call_soon_threadsafe` callback.
        threadsafe_runs: RefCell<Vec<u8>>,
    }

    thread_local! {
        static STATS: Rc<ServerStats> = Rc::default();
    }

    /// The shared `EchoProtocol`, counting connections and how they end.
    struct Echo {
        echo: EchoProtocol,
        stats: Rc<ServerStats>,
    }

    impl BaseProtocol for Echo {
        fn connection_lost(&self, exc: Option<Error>) {
            self.stats.open.set(self.stats.open.get() - 1);
            if let Some(e) = exc {
                let kind = e.kind();
                if matches!(
                    kind,
                    Some(std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
                ) {
                    self.stats.resets.set(self.stats.resets.get() + 1);
                } else {
                    self.stats.unexpected.borrow_mut().push(e.to_string());
                }
            }
        }

        fn pause_writing(&self) {
            self.echo.pause_writing();
        }

        fn resume_writing(&self) {
            self.echo.resume_writing();
        }
    }

    impl Protocol for Echo {
        fn connection_made(&self, transport: Rc<dyn Transport>) {
            self.stats.open.set(self.stats.open.get() + 1);
            self.stats.accepted.set(self.stats.accepted.get() + 1);
            self.echo.connection_made(transport);
        }

        fn data_received(&self, data: &[u8]) {
            self.echo.data_received(data);
        }
    }

    /// Starts the server loop on its own thread: its address and a handle
    /// to reach it.
    fn start_server(
        backend: &str,
    ) -> Result<(SocketAddr, RemoteLoop, std::thread::JoinHandle<()>), String> {
        let factory = policy::backend(backend).map_err(|e| e.to_string())?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let setup = || -> loop_api::Result<(Loop, SocketAddr, Rc<dyn AbstractServer>)> {
                let lp = factory()?;
                let stats = STATS.with(Rc::clone);
                let recorded = stats.clone();
                lp.set_exception_handler(Some(Rc::new(move |_lp, ctx| {
                    recorded.handler.borrow_mut().push(format!("{ctx:?}"));
                })));
                *stats.threadsafe_runs.borrow_mut() =
                    vec![0; THREADSAFE_THREADS * THREADSAFE_CALLS];
                let options = CreateServerOptions {
                    backlog: 1024,
                    ..Default::default()
                };
                let server = lp.run_until_complete(lp.create_server(
                    move || {
                        Rc::new(Echo {
                            echo: EchoProtocol::default(),
                            stats: stats.clone(),
                        })
                    },
                    "127.0.0.1",
                    0,
                    options,
                ))?;
                let addr = server.local_addrs()[0];
                Ok((lp, addr, server))
            };
            match setup() {
                Ok((lp, addr, server)) => {
                    let _ = tx.send(Ok((addr, lp.remote())));
                    let _ = lp.run_forever();
                    server.close();
                    let _ = lp.close();
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
        let (addr, remote) = rx
            .recv()
            .map_err(|_| "the server thread died".to_string())??;
        Ok((addr, remote, thread))
    }

    /// Runs `f` on the server thread and returns what it returns.
    fn on_server<T: Send + 'static>(
        remote: &RemoteLoop,
        f: impl FnOnce(&ServerStats) -> T + Send + 'static,
    ) -> Result<T, String> {
        let (tx, rx) = mpsc::channel();
        remote
            .call_soon_threadsafe(move || {
                let _ = tx.send(STATS.with(|s| f(s)));
            })
            .map_err(|e| e.to_string())?;
        rx.recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the server loop did not answer".to_string())
    }

    // ----- the load --------------------------------------------------------------------

    /// xorshift64*: reproducible sizes and payloads without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// 1 byte to 256 KiB, log-uniform: mostly small, some large.
        fn size(&mut self) -> usize {
            let log2 = (self.next() % u64::from(MAX_MESSAGE_LOG2 + 1)) as u32;
            1 + (self.next() % (1u64 << log2)) as usize
        }

        fn fill(&mut self, buf: &mut [u8]) {
            for chunk in buf.chunks_mut(8) {
                let v = self.next().to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
    }

    #[derive(Default)]
    struct LoadStats {
        echoes: AtomicU64,
        bytes: AtomicU64,
        churn: [AtomicU64; 4],
    }

    /// Writes `msg` while reading its echo; the echo must be `msg`.
    async fn echo(sock: &mut TcpStream, msg: &[u8], back: &mut Vec<u8>) -> Result<(), String> {
        back.resize(msg.len(), 0);
        let (mut r, mut w) = sock.split();
        let (wr, rr) = tokio::join!(w.write_all(msg), r.read_exact(back));
        wr.map_err(|e| format!("write: {e}"))?;
        rr.map_err(|e| format!("read {} bytes: {e}", msg.len()))?;
        if back != msg {
            let at = back.iter().zip(msg).position(|(a, b)| a != b);
            return Err(format!("echo of {} bytes differs at {at:?}", msg.len()));
        }
        Ok(())
    }

    async fn persistent(
        addr: SocketAddr,
        seed: u64,
        until: Instant,
        stats: Arc<LoadStats>,
    ) -> Result<(), String> {
        let mut rng = Rng(seed);
        let mut sock = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut msg, mut back) = (Vec::new(), Vec::new());
        while Instant::now() < until {
            msg.resize(rng.size(), 0);
            rng.fill(&mut msg);
            echo(&mut sock, &msg, &mut back).await?;
            stats.echoes.fetch_add(1, Ordering::Relaxed);
            stats.bytes.fetch_add(msg.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// One short connection of a kind picked by `rng`.
    async fn churn_one(addr: SocketAddr, seed: u64, stats: Arc<LoadStats>) -> Result<(), String> {
        let mut rng = Rng(seed);
        let kind = (rng.next() % 4) as usize;
        let mut sock = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("churn connect: {e}"))?;
        let mut msg = vec![0; rng.size()];
        rng.fill(&mut msg);
        match kind {
            // Open, echo, close.
            0 => echo(&mut sock, &msg, &mut Vec::new()).await?,
            // Send, half-close, read the echo to EOF.
            1 => {
                let (mut r, mut w) = sock.split();
                let send = async {
                    w.write_all(&msg).await?;
                    w.shutdown().await
                };
                let mut back = Vec::with_capacity(msg.len());
                let (wr, rr) = tokio::join!(send, r.read_to_end(&mut back));
                wr.map_err(|e| format!("half-close write: {e}"))?;
                rr.map_err(|e| format!("half-close read: {e}"))?;
                if back != msg {
                    return Err(format!(
                        "half-close: {} bytes back of {} sent, or other bytes",
                        back.len(),
                        msg.len()
                    ));
                }
            }
            // Send, then reset.
            2 => {
                let _ = sock.write_all(&msg[..msg.len().min(4096)]).await;
                // Linger 0: close sends a reset at once (it never blocks).
                socket2::SockRef::from(&sock)
                    .set_linger(Some(Duration::ZERO))
                    .map_err(|e| format!("SO_LINGER: {e}"))?;
                drop(sock);
            }
            // Vanish.
            _ => drop(sock),
        }
        stats.churn[kind].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn churn(addr: SocketAddr, until: Instant, stats: Arc<LoadStats>) -> Result<(), String> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        while Instant::now() < until {
            while tasks.len() >= CHURN_AT_ONCE {
                tasks
                    .join_next()
                    .await
                    .expect("tasks")
                    .map_err(|e| e.to_string())??;
            }
            seed = seed.wrapping_add(0x9e37_79b9);
            tasks.spawn(churn_one(addr, seed | 1, stats.clone()));
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
        Ok(())
    }

    // ----- the run ---------------------------------------------------------------------

    fn fd_count() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0)
    }

    fn run(backend: &str, length: Duration, conns: usize) -> Result<String, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let (addr, remote, server_thread) = start_server(backend)?;
        let fds_before = fd_count();
        let start = Instant::now();
        let until = start + length;
        let stats = Arc::new(LoadStats::default());

        // call_soon_threadsafe from 4 threads, all through the run.
        let callers: Vec<_> = (0..THREADSAFE_THREADS)
            .map(|t| {
                let remote = remote.clone();
                std::thread::spawn(move || -> Result<(), String> {
                    for i in 0..THREADSAFE_CALLS {
                        let id = t * THREADSAFE_CALLS + i;
                        remote
                            .call_soon_threadsafe(move || {
                                STATS.with(|s| s.threadsafe_runs.borrow_mut()[id] += 1)
                            })
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                })
            })
            .collect();

        // RSS once warmed up, a fifth of the way in, and at the end.
        let warm_at = start + length / 5;
        let rss = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let load = {
            let stats = stats.clone();
            let rss = rss.clone();
            async move {
                let mut tasks = tokio::task::JoinSet::new();
                for c in 0..conns {
                    let seed = 0x1234_5678_9abc_def1 ^ ((c as u64 + 1) << 20);
                    tasks.spawn(persistent(addr, seed, until, stats.clone()));
                }
                tasks.spawn(churn(addr, until, stats.clone()));
                tasks.spawn(async move {
                    tokio::time::sleep_until(warm_at.into()).await;
                    rss[0].store(rss_kib(), Ordering::Relaxed);
                    tokio::time::sleep_until(until.into()).await;
                    rss[1].store(rss_kib(), Ordering::Relaxed);
                    Ok(())
                });
                while let Some(r) = tasks.join_next().await {
                    r.map_err(|e| e.to_string())??;
                }
                Ok::<(), String>(())
            }
        };
        let load_result = rt.block_on(load);
        for c in callers {
            c.join().map_err(|_| "a caller thread panicked")??;
        }

        // Every connection of the load is closed on this side: wait (with
        // a deadline) for the server to see them all closed.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut open = usize::MAX;
        while Instant::now() < deadline {
            open = on_server(&remote, |s| s.open.get())?;
            if open == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Queued after every caller's last call: they have all run.
        let (accepted, resets, unexpected, handler, runs_wrong) = on_server(&remote, |s| {
            let runs = s.threadsafe_runs.borrow();
            let wrong = runs.iter().filter(|&&n| n != 1).count();
            (
                s.accepted.get(),
                s.resets.get(),
                s.unexpected.borrow().clone(),
                s.handler.borrow().clone(),
                wrong,
            )
        })?;
        let fds_after = fd_count();
        remote.stop().map_err(|e| e.to_string())?;
        server_thread
            .join()
            .map_err(|_| "the server thread panicked")?;
        drop(rt);

        let [warm, end] = [0, 1].map(|i| rss[i].load(Ordering::Relaxed));
        let allowed = (warm / 20).max(4 * 1024);
        let churn: Vec<u64> = stats
            .churn
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let report = format!(
            "soak on {backend}, {:.0} s: {} echoes, {:.1} MiB checked on {conns} connections; \
             churn: {} echo-close, {} half-close, {} reset, {} vanish; \
             server accepted {accepted}, {resets} ended by reset; \
             {} call_soon_threadsafe callbacks; \
             fds {fds_before} -> {fds_after}; RSS warm {:.1} MiB -> end {:.1} MiB (+{:.1} MiB, allowed {:.1})",
            start.elapsed().as_secs_f64(),
            stats.echoes.load(Ordering::Relaxed),
            stats.bytes.load(Ordering::Relaxed) as f64 / 1048576.0,
            churn[0],
            churn[1],
            churn[2],
            churn[3],
            THREADSAFE_THREADS * THREADSAFE_CALLS,
            warm as f64 / 1024.0,
            end as f64 / 1024.0,
            end.saturating_sub(warm) as f64 / 1024.0,
            allowed as f64 / 1024.0,
        );
        let mut failures = Vec::new();
        if let Err(e) = load_result {
            failures.push(format!("the load failed: {e}"));
        }
        if open != 0 {
            failures.push(format!("the server still has {open} connections open"));
        }
        if !handler.is_empty() {
            failures.push(format!(
                "the exception handler was called {} times; first: {}",
                handler.len(),
                handler[0]
            ));
        }
        if !unexpected.is_empty() {
            failures.push(format!(
                "{} connections ended with unexpected errors; first: {}",
                unexpected.len(),
                unexpected[0]
            ));
        }
        if runs_wrong != 0 {
            failures.push(format!(
                "{runs_wrong} call_soon_threadsafe callbacks did not run exactly once"
            ));
        }
        if fds_after != fds_before {
            failures.push(format!(
                "descriptors: {fds_before} before, {fds_after} after"
            ));
        }
        if end > warm + allowed {
            failures.push("RSS grew more than max(5%, 4 MiB)".into());
        }
        if failures.is_empty() {
            Ok(report)
        } else {
            Err(format!("{}\n{report}", failures.join("\n")))
        }
    }
}
