//! Echo benchmark: our backends' echo server (the `EchoProtocol` on
//! `create_server`) against a tokio echo server, driven by a closed-loop
//! load generator, all in one process.
//!
//! Run: `cargo run --release -p policy --example echo_bench`
//! (`-- --quick` for a smoke run; `-- --backends select,uring` for a subset
//! of ours, `none` for tokio alone; `-- --baselines` for the bare servers;
//! `-- --secs S` for the measured window, `-- --warmup S`, `-- --reps R`;
//! `-- --conns 1,10` and `-- --sizes 1024` to pick points; `-- --streams`
//! serves with asyncio's streams instead: `start_server` and a handler that
//! reads up to 64 KiB, writes it back and drains, the program tokio's
//! server is).
//!
//! What is measured, for each point (connections x message size) and each
//! server in turn (the order rotates from one rep to the next):
//!
//! - The server runs alone on its thread, pinned to one CPU; the load
//!   generator is this thread, pinned to another (tokio current-thread
//!   runtime). Each connection sends one message, reads exactly the same
//!   number of bytes back, checks them and sends again: a closed loop.
//!   The first and last 8 bytes of every message carry the connection and
//!   sequence number and are checked on every echo; every 64th echo is
//!   compared in full.
//! - After every connection has done one round trip and a warm-up, the
//!   load thread asks the server thread for its CPU time (user + sys,
//!   `getrusage(RUSAGE_THREAD)`, read on the server thread itself: a
//!   `call_soon_threadsafe` callback on our loop, a channel message to a
//!   task on tokio's), waits the window, asks again, and counts the round
//!   trips completed in between. Server CPU per round trip = the server
//!   thread's CPU time over the window / round trips in the window.
//! - On loopback a `send` runs much of the receiver's TCP processing in the
//!   sender's thread, so each side's CPU time includes some of the other's
//!   kernel work; it does for every server alike.
//! - The table gives each of our servers against tokio's and, when both
//!   run, uring against select (backend-uring's target: at most 0.85x at
//!   10 connections and more).
//! - `--baselines` adds two bare echo servers with no event loop
//!   (`shared/raw_servers.rs`: level-triggered epoll, and io_uring with a
//!   recv and a send per message from one buffer per connection), and
//!   their ratio: what the kernel interfaces themselves cost here.

#[cfg(target_os = "linux")]
#[path = "shared/echo_protocol.rs"]
mod echo_protocol;

#[cfg(target_os = "linux")]
#[path = "shared/raw_servers.rs"]
mod raw_servers;

#[cfg(target_os = "linux")]
#[path = "shared/cpu.rs"]
mod cpu;

#[cfg(target_os = "linux")]
fn main() {
    bench::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("echo_bench needs Linux (getrusage(RUSAGE_THREAD), sched_setaffinity)");
}

#[cfg(target_os = "linux")]
mod bench {
    use std::cell::{Cell, RefCell};
    use std::net::SocketAddr;
    use std::rc::Rc;
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use loop_api::events::options::CreateServerOptions;
    use loop_api::{Error, EventLoopExt, RemoteLoop};
    use policy::LoopFactory;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{mpsc, oneshot};

    use crate::cpu::{allowed_cpus, pin_to, thread_cpu, Cpu};
    use crate::echo_protocol::EchoProtocol;
    use crate::raw_servers::{self, RawCtl, RawKind, RawMsg};

    const SIZES: &[usize] = &[1024, 16 * 1024, 100 * 1024];
    const CONNS: &[usize] = &[1, 10, 100, 1000];
    /// Both servers get the same listen backlog (tokio's `bind` uses 1024).
    const BACKLOG: i32 = 1024;
    /// How long a server may take to answer a CPU-time request, a
    /// connection to be made, or the clients to finish after the window,
    /// before the cell is reported as a hang.
    const PATIENCE: Duration = Duration::from_secs(10);

    // ----- thread CPU time, pinning, limits ------------------------------------

    /// 1000 connections need 2000 descriptors: raise the soft limit to the hard one.
    fn raise_nofile() -> u64 {
        // SAFETY: rlimit is plain data.
        let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
        // SAFETY: `rl` is a valid, writable rlimit.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
            return 0;
        }
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: `rl` is a valid rlimit; the soft limit does not exceed the hard one.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) };
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
        rl.rlim_cur as u64
    }

    fn loadavg() -> String {
        std::fs::read_to_string("/proc/loadavg")
            .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "?".into())
    }

    // ----- the servers -------------------------------------------------------------

    #[derive(Clone)]
    enum Kind {
        Ours(String, LoopFactory),
        /// A bare epoll or io_uring server (`--baselines`).
        Raw(RawKind),
        Tokio,
    }

    impl Kind {
        fn name(&self) -> &str {
            match self {
                Kind::Ours(name, _) => name,
                Kind::Raw(k) => k.name(),
                Kind::Tokio => "tokio",
            }
        }
    }

    /// How the load thread reaches a server thread.
    enum Ctl {
        Ours(RemoteLoop),
        Raw(RawCtl),
        Tokio(mpsc::UnboundedSender<TokioCtl>),
    }

    enum TokioCtl {
        Sample(oneshot::Sender<Cpu>),
        Stop,
    }

    /// A running server on its own thread.
    struct Server {
        addr: SocketAddr,
        ctl: Ctl,
        thread: JoinHandle<Result<(), String>>,
    }

    type Ready = std::sync::mpsc::Sender<Result<(SocketAddr, Ctl), String>>;

    impl Server {
        fn start(kind: &Kind, cpu: Option<usize>) -> Result<Server, String> {
            let (tx, rx) = std::sync::mpsc::channel();
            let kind2 = kind.clone();
            let thread = std::thread::Builder::new()
                .name(format!("{} server", kind.name()))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    let result = match kind2 {
                        Kind::Ours(_, factory) => {
                            policy::run(serve_ours(tx.clone()), None, Some(factory))
                                .map_err(|e| e.to_string())
                        }
                        Kind::Raw(k) => raw_servers::serve(k, |addr, ctl| {
                            let _ = tx.send(Ok((addr, Ctl::Raw(ctl))));
                        }),
                        Kind::Tokio => serve_tokio(tx.clone()),
                    };
                    // Fails start() if the server never got going.
                    if let Err(e) = &result {
                        let _ = tx.send(Err(e.clone()));
                    }
                    result
                })
                .map_err(|e| format!("spawn: {e}"))?;
            match rx.recv_timeout(PATIENCE) {
                Ok(Ok((addr, ctl))) => Ok(Server { addr, ctl, thread }),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!(
                    "the server did not start within {} s",
                    PATIENCE.as_secs()
                )),
            }
        }

        /// Asks the server thread for its CPU time.
        fn sample(&self, reply: oneshot::Sender<Cpu>) -> Result<(), String> {
            match &self.ctl {
                Ctl::Ours(remote) => remote
                    .call_soon_threadsafe(move || {
                        let _ = reply.send(thread_cpu());
                    })
                    .map_err(|e| format!("call_soon_threadsafe: {e}")),
                Ctl::Raw(ctl) => ctl.send(RawMsg::Call(Box::new(move || {
                    let _ = reply.send(thread_cpu());
                }))),
                Ctl::Tokio(tx) => tx
                    .send(TokioCtl::Sample(reply))
                    .map_err(|_| "the tokio server is gone".to_string()),
            }
        }

        /// Stops the server and waits for its thread to end.
        fn stop(self) -> Result<(), String> {
            let sent = match &self.ctl {
                Ctl::Ours(remote) => remote
                    .call_soon_threadsafe(|| {
                        STOP.with(|s| {
                            if let Some(f) = s.borrow_mut().take() {
                                let _ = f.set_result(());
                            }
                        })
                    })
                    .map_err(|e| format!("call_soon_threadsafe: {e}")),
                Ctl::Raw(ctl) => ctl.send(RawMsg::Stop),
                Ctl::Tokio(tx) => tx
                    .send(TokioCtl::Stop)
                    .map_err(|_| "the tokio server is gone".to_string()),
            };
            let t0 = Instant::now();
            while !self.thread.is_finished() {
                if t0.elapsed() > PATIENCE {
                    // Left running: a stuck thread cannot be joined.
                    return Err(format!(
                        "the server thread did not end within {} s of being stopped{}",
                        PATIENCE.as_secs(),
                        sent.err().map(|e| format!(" ({e})")).unwrap_or_default()
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            match self.thread.join() {
                Ok(r) => r,
                Err(_) => Err("the server thread panicked".into()),
            }
        }
    }

    thread_local! {
        /// Set by the stop request; the server's main task awaits it.
        static STOP: RefCell<Option<loop_api::Future<()>>> = const { RefCell::new(None) };
    }

    /// Our server: `EchoProtocol` on `create_server`, as the example.
    async fn serve_ours(ready: Ready) -> loop_api::Result<()> {
        let lp = policy::get_running_loop()?;
        let options = CreateServerOptions {
            backlog: BACKLOG,
            ..Default::default()
        };
        let server = if STREAMS.load(std::sync::atomic::Ordering::Relaxed) {
            loop_api::streams::start_server(stream_echo, "127.0.0.1", 0u16, options.into()).await?
        } else {
            lp.create_server(|| Rc::new(EchoProtocol::default()), "127.0.0.1", 0, options)
                .await?
        };
        let sock = server
            .sockets()
            .first()
            .cloned()
            .ok_or_else(|| Error::runtime("create_server returned no socket"))?;
        let addr = sock
            .local_addr()?
            .as_socket()
            .ok_or_else(|| Error::runtime("the listening socket has no IP address"))?;
        let stop = lp.create_future::<()>();
        STOP.with(|s| *s.borrow_mut() = Some(stop.clone()));
        let serving = lp.create_task(server.serve_forever())?;
        let _ = ready.send(Ok((addr, Ctl::Ours(lp.remote()))));
        stop.await?;
        server.close();
        // serve_forever ends cancelled when the server closes (as asyncio's).
        match serving.await {
            Ok(()) | Err(Error::Cancelled(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Serve with streams (`--streams`).
    static STREAMS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// The stream echo handler: tokio's `echo_conn`, in asyncio's API.
    async fn stream_echo(
        mut reader: loop_api::streams::StreamReader,
        writer: loop_api::streams::StreamWriter,
    ) -> loop_api::Result<()> {
        loop {
            let data = reader.read(64 * 1024).await?;
            if data.is_empty() {
                return Ok(());
            }
            writer.write(&data)?;
            writer.drain().await?;
        }
    }

    /// tokio's server: an accept loop and one task per connection.
    fn serve_tokio(ready: Ready) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(|e| format!("bind: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let (tx, mut rx) = mpsc::unbounded_channel();
            let _ = ready.send(Ok((addr, Ctl::Tokio(tx))));
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let (sock, _) = accepted.map_err(|e| format!("accept: {e}"))?;
                        // As our transports do.
                        sock.set_nodelay(true).map_err(|e| e.to_string())?;
                        tokio::spawn(echo_conn(sock));
                    }
                    msg = rx.recv() => match msg {
                        Some(TokioCtl::Sample(reply)) => {
                            let _ = reply.send(thread_cpu());
                        }
                        Some(TokioCtl::Stop) | None => return Ok(()),
                    },
                }
            }
        })
    }

    async fn echo_conn(mut sock: TcpStream) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if sock.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    // ----- the load generator ------------------------------------------------------

    #[derive(Default)]
    struct LoadState {
        round_trips: Cell<u64>,
        /// Connections that have had at least one echo back.
        warm: Cell<usize>,
        full_checks: Cell<u64>,
        stop: Cell<bool>,
        error: RefCell<Option<String>>,
    }

    impl LoadState {
        fn fail(&self, msg: String) {
            self.error.borrow_mut().get_or_insert(msg);
        }
    }

    /// One connection of the closed loop.
    async fn client(id: usize, mut sock: TcpStream, size: usize, st: Rc<LoadState>) {
        let mut out: Vec<u8> = (0..size).map(|i| (i * 7 + id) as u8).collect();
        let mut back = vec![0u8; size];
        let (mut rd, mut wr) = sock.split();
        let mut seq: u64 = 0;
        while !st.stop.get() {
            seq += 1;
            // Connection and sequence number at both ends: a stale, short
            // or misrouted echo shows on every round trip.
            let stamp = ((id as u64) << 40) ^ seq;
            out[..8].copy_from_slice(&stamp.to_le_bytes());
            out[size - 8..].copy_from_slice(&stamp.to_be_bytes());
            // Write and read at once, so a large message cannot deadlock
            // on full socket buffers.
            let (w, r) = tokio::join!(wr.write_all(&out), rd.read_exact(&mut back));
            if let Err(e) = w.and(r.map(|_| ())) {
                st.fail(format!("connection {id}, round trip {seq}: {e}"));
                return;
            }
            let full = seq & 63 == 0; // every 64th (is_multiple_of is newer than our MSRV)
            if back[..8] != out[..8] || back[size - 8..] != out[size - 8..] || (full && back != out)
            {
                let at = back.iter().zip(&out).position(|(a, b)| a != b);
                st.fail(format!(
                    "connection {id}, round trip {seq}: wrong bytes echoed (first difference at byte {at:?})"
                ));
                return;
            }
            if full {
                st.full_checks.set(st.full_checks.get() + 1);
            }
            if seq == 1 {
                st.warm.set(st.warm.get() + 1);
            }
            st.round_trips.set(st.round_trips.get() + 1);
        }
    }

    /// One measured window.
    #[derive(Clone, Copy)]
    struct Meas {
        round_trips: u64,
        wall: Duration,
        server: Cpu,
        load: Cpu,
        full_checks: u64,
    }

    impl Meas {
        fn rt_per_s(&self) -> f64 {
            self.round_trips as f64 / self.wall.as_secs_f64()
        }
        fn us_per_rt(&self) -> f64 {
            self.server.total().as_secs_f64() * 1e6 / self.round_trips as f64
        }
        fn util(&self, cpu: Cpu) -> f64 {
            cpu.total().as_secs_f64() / self.wall.as_secs_f64() * 100.0
        }
    }

    struct Plan {
        warmup: Duration,
        secs: Duration,
    }

    async fn sample(server: &Server) -> Result<Cpu, String> {
        let (tx, rx) = oneshot::channel();
        server.sample(tx)?;
        match tokio::time::timeout(PATIENCE, rx).await {
            Ok(Ok(cpu)) => Ok(cpu),
            Ok(Err(_)) => Err("the server dropped a CPU-time request".into()),
            Err(_) => Err(format!(
                "HANG: the server did not run a cross-thread request within {} s",
                PATIENCE.as_secs()
            )),
        }
    }

    async fn load(server: &Server, conns: usize, size: usize, plan: &Plan) -> Result<Meas, String> {
        let st = Rc::new(LoadState::default());
        // One at a time: the accept queue never overflows.
        let mut socks = Vec::with_capacity(conns);
        for i in 0..conns {
            let sock = match tokio::time::timeout(PATIENCE, TcpStream::connect(server.addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("connect #{i}: {e}")),
                Err(_) => {
                    return Err(format!(
                        "HANG: connect #{i} took over {} s",
                        PATIENCE.as_secs()
                    ))
                }
            };
            sock.set_nodelay(true).map_err(|e| e.to_string())?;
            socks.push(sock);
        }
        let mut clients: Vec<_> = socks
            .into_iter()
            .enumerate()
            .map(|(id, s)| tokio::task::spawn_local(client(id, s, size, st.clone())))
            .collect();
        let error = |st: &LoadState| st.error.borrow().clone();

        // Warm-up: every connection echoed once, then `warmup` more.
        let t0 = Instant::now();
        while st.warm.get() < conns && error(&st).is_none() {
            if t0.elapsed() > PATIENCE {
                return Err(format!(
                    "HANG: {} of {conns} connections had no echo after {} s",
                    conns - st.warm.get(),
                    PATIENCE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(plan.warmup).await;

        let (srv0, load0, n0, w0) = (
            sample(server).await?,
            thread_cpu(),
            st.round_trips.get(),
            Instant::now(),
        );
        tokio::time::sleep(plan.secs).await;
        let (srv1, load1, n1, w1) = (
            sample(server).await?,
            thread_cpu(),
            st.round_trips.get(),
            Instant::now(),
        );
        let checks = st.full_checks.get();

        st.stop.set(true);
        let finished = tokio::time::timeout(PATIENCE, async {
            for c in &mut clients {
                let _ = c.await;
            }
        })
        .await;
        if finished.is_err() {
            let stuck = clients.iter().filter(|c| !c.is_finished()).count();
            for c in &clients {
                c.abort();
            }
            return Err(format!(
                "HANG: {stuck} of {conns} connections did not finish their round trip within {} s \
                 after the window ({} round trips in the window)",
                PATIENCE.as_secs(),
                n1 - n0
            ));
        }
        if let Some(e) = error(&st) {
            return Err(e);
        }
        if n1 == n0 {
            return Err("no round trip completed in the window".into());
        }
        Ok(Meas {
            round_trips: n1 - n0,
            wall: w1 - w0,
            server: srv1 - srv0,
            load: load1 - load0,
            full_checks: checks,
        })
    }

    /// Starts the server, runs the load, stops the server.
    fn measure(
        rt: &tokio::runtime::Runtime,
        kind: &Kind,
        server_cpu: Option<usize>,
        conns: usize,
        size: usize,
        plan: &Plan,
    ) -> Outcome {
        let server = match Server::start(kind, server_cpu) {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(format!("start: {e}"), true),
        };
        let local = tokio::task::LocalSet::new();
        let result = local.block_on(rt, load(&server, conns, size, plan));
        // Dropping the LocalSet closes every client connection first.
        drop(local);
        let stopped = server.stop();
        match (result, stopped) {
            (Ok(m), Ok(())) => Outcome::Done(m),
            (Ok(_), Err(e)) => Outcome::Failed(format!("stop: {e}"), true),
            (Err(e), Ok(())) => Outcome::Failed(e, false),
            (Err(e), Err(e2)) => Outcome::Failed(format!("{e}; then stop: {e2}"), true),
        }
    }

    /// One measurement's outcome. `Failed(_, true)`: the server is not
    /// usable any more (did not start, or its thread is stuck).
    enum Outcome {
        Done(Meas),
        Failed(String, bool),
    }

    // ----- the table -----------------------------------------------------------------

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }

    fn fmt_rate(x: f64) -> String {
        if x >= 1e6 {
            format!("{:.2} M/s", x / 1e6)
        } else {
            format!("{:.1} k/s", x / 1e3)
        }
    }

    fn fmt_size(s: usize) -> String {
        if s & 1023 == 0 {
            format!("{} KiB", s / 1024)
        } else {
            format!("{s} B")
        }
    }

    /// Everything measured for one (point, server).
    #[derive(Default)]
    struct Results {
        runs: Vec<Meas>,
        errors: Vec<String>,
    }

    impl Results {
        fn rt_per_s(&self) -> Option<f64> {
            (!self.runs.is_empty()).then(|| median(self.runs.iter().map(Meas::rt_per_s).collect()))
        }
        fn us_per_rt(&self) -> Option<f64> {
            (!self.runs.is_empty()).then(|| median(self.runs.iter().map(Meas::us_per_rt).collect()))
        }
    }

    fn list_arg<T: std::str::FromStr>(v: &str, what: &str) -> Vec<T> {
        v.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{what}: not a number: {s:?}"))
            })
            .collect()
    }

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let arg = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1).cloned())
        };
        let quick = args.iter().any(|a| a == "--quick");
        let streams = args.iter().any(|a| a == "--streams");
        STREAMS.store(streams, std::sync::atomic::Ordering::Relaxed);
        let secs_arg = |name: &str, default: f64| {
            Duration::from_secs_f64(arg(name).map_or(default, |s| {
                s.parse().unwrap_or_else(|_| panic!("{name} S"))
            }))
        };
        let plan = Plan {
            warmup: secs_arg("--warmup", if quick { 0.05 } else { 0.3 }),
            secs: secs_arg("--secs", if quick { 0.2 } else { 1.0 }),
        };
        let reps: usize =
            arg("--reps").map_or(if quick { 1 } else { 3 }, |r| r.parse().expect("--reps R"));
        let conns_list: Vec<usize> =
            arg("--conns").map_or(CONNS.to_vec(), |v| list_arg(&v, "--conns"));
        let sizes: Vec<usize> = arg("--sizes").map_or(SIZES.to_vec(), |v| list_arg(&v, "--sizes"));
        if sizes.iter().any(|&s| s < 16) {
            eprintln!("echo_bench: --sizes: at least 16 bytes (the message carries two stamps)");
            std::process::exit(2);
        }

        // Our servers by name; tokio is always the reference.
        let names: Vec<String> = match arg("--backends") {
            Some(v) if v.trim() == "none" => Vec::new(),
            Some(v) => v
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect(),
            None => policy::available_backends()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        };
        let mut kinds = Vec::new();
        for name in names {
            match policy::backend(&name) {
                Ok(f) => kinds.push(Kind::Ours(name, f)),
                Err(e) => {
                    eprintln!("echo_bench: --backends: {e}");
                    std::process::exit(2);
                }
            }
        }
        if args.iter().any(|a| a == "--baselines") {
            kinds.push(Kind::Raw(RawKind::Epoll));
            kinds.push(Kind::Raw(RawKind::Uring));
        }
        let ours = kinds.len();
        kinds.push(Kind::Tokio);

        let nofile = raise_nofile();
        let cpus = allowed_cpus();
        let (server_cpu, load_cpu) = if cpus.len() >= 2 {
            (Some(cpus[0]), Some(cpus[1]))
        } else {
            (None, None)
        };
        if let Some(c) = load_cpu {
            pin_to(c);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");

        println!(
            "echo_bench: closed-loop echo over 127.0.0.1; median of {reps} rep(s), servers alternating; \
             warm-up {:.2} s, window {:.2} s",
            plan.warmup.as_secs_f64(),
            plan.secs.as_secs_f64()
        );
        let names = |raw: bool| {
            kinds[..ours]
                .iter()
                .filter(|k| matches!(k, Kind::Raw(_)) == raw)
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "servers: {} ({}){} and tokio (current-thread, accept \
             loop, a task per connection, 64 KiB buffer)",
            names(false),
            if streams {
                "streams: start_server, read(65536), write, drain"
            } else {
                "EchoProtocol on create_server"
            },
            match names(true) {
                raw if raw.is_empty() => String::new(),
                raw => format!(", {raw} (bare, no event loop)"),
            }
        );
        match (server_cpu, load_cpu) {
            (Some(s), Some(l)) => println!(
                "server thread pinned to CPU {s}, load generator (tokio current-thread) to CPU {l}"
            ),
            _ => println!(
                "only {} CPU(s) available: server and load generator are NOT pinned and share CPUs",
                cpus.len()
            ),
        }
        println!(
            "rt/s = round trips per second; us/rt = server-thread CPU (user+sys, RUSAGE_THREAD) per \
             round trip; RLIMIT_NOFILE {nofile}"
        );
        println!("load average before: {}", loadavg());

        let points: Vec<(usize, usize)> = conns_list
            .iter()
            .flat_map(|&c| sizes.iter().map(move |&s| (c, s)))
            .collect();
        // results[point][server]
        let mut results: Vec<Vec<Results>> = points
            .iter()
            .map(|_| kinds.iter().map(|_| Results::default()).collect())
            .collect();
        // Servers that failed to start or to stop: not run again.
        let mut dead = vec![false; kinds.len()];
        for (p, &(conns, size)) in points.iter().enumerate() {
            for rep in 0..reps {
                for k in 0..kinds.len() {
                    let k = (k + rep) % kinds.len();
                    let kind = &kinds[k];
                    // Its failure is reported once, where it happened.
                    if dead[k] {
                        continue;
                    }
                    let label = format!(
                        "{conns:>4} x {:>7} {:<6} rep {}/{reps}",
                        fmt_size(size),
                        kind.name(),
                        rep + 1
                    );
                    match measure(&rt, kind, server_cpu, conns, size, &plan) {
                        Outcome::Done(m) => {
                            eprintln!(
                                "{label}: {}, {:.2} us/rt",
                                fmt_rate(m.rt_per_s()),
                                m.us_per_rt()
                            );
                            results[p][k].runs.push(m);
                        }
                        Outcome::Failed(e, fatal) => {
                            eprintln!("{label}: FAILED: {e}");
                            dead[k] |= fatal;
                            let e = if fatal {
                                format!("{e} (so not run at the points after this one)")
                            } else {
                                e
                            };
                            results[p][k].errors.push(e);
                        }
                    }
                }
            }
        }

        print_table(&kinds, ours, &points, &results);
        println!("load average after: {}", loadavg());
        print_details(&kinds, &points, &results);
        print_errors(&kinds, &points, &results);
    }

    /// backend-uring's target against backend-select ...
    const URING_TARGET: f64 = 0.85;
    /// ... at this many connections and more.
    const URING_TARGET_CONNS: usize = 10;

    /// A ratio and whether it meets `target`, counted in `met` or `missed`.
    fn ratio_cell(ratio: f64, target: f64, (met, missed): (&mut usize, &mut usize)) -> String {
        let ok = ratio <= target;
        *(if ok { met } else { missed }) += 1;
        format!(" {:>11.2}x {:<4} |", ratio, if ok { "yes" } else { "NO" })
    }

    fn print_table(
        kinds: &[Kind],
        ours: usize,
        points: &[(usize, usize)],
        results: &[Vec<Results>],
    ) {
        let tokio = kinds.len() - 1;
        let mut head = format!("{:>5} {:>7} |", "conns", "size");
        for k in kinds {
            head += &format!(" {:>10} {:>8} |", format!("{} rt/s", k.name()), "us/rt");
        }
        for k in &kinds[..ours] {
            head += &format!(" {:>12} {:<4} |", format!("{}/tokio", k.name()), "met?");
        }
        // The completion backend against the readiness one (backend-uring's
        // target: at most 0.85x at 10 connections and more), and the bare
        // servers likewise, where they run: (uring, select, target).
        let pos = |name: &str| kinds[..ours].iter().position(|k| k.name() == name);
        let pairs: Vec<(usize, usize, bool)> =
            [("uring", "select", true), ("raw-uring", "raw-epoll", false)]
                .into_iter()
                .filter_map(|(a, b, target)| Some((pos(a)?, pos(b)?, target)))
                .collect();
        let mut pair_met = (0usize, 0usize);
        for &(a, b, _) in &pairs {
            let name = format!("{}/{}", kinds[a].name(), kinds[b].name());
            head += &format!(" {name:>12} {:<4} |", "met?");
        }
        println!();
        println!("{head}");
        println!("{}", "-".repeat(head.len()));
        // (met, missed, not measured) per server of ours.
        let mut met = vec![(0usize, 0usize, 0usize); ours];
        for (p, &(conns, size)) in points.iter().enumerate() {
            let mut line = format!("{conns:>5} {:>7} |", fmt_size(size));
            for r in &results[p] {
                match (r.rt_per_s(), r.us_per_rt()) {
                    (Some(rate), Some(us)) => {
                        line += &format!(" {:>10} {:>8.2} |", fmt_rate(rate), us)
                    }
                    _ => line += &format!(" {:>10} {:>8} |", "FAILED", "-"),
                }
            }
            let theirs = results[p][tokio].us_per_rt();
            for (k, m) in met.iter_mut().enumerate() {
                match (results[p][k].us_per_rt(), theirs) {
                    (Some(a), Some(b)) => line += &ratio_cell(a / b, 1.0, (&mut m.0, &mut m.1)),
                    _ => {
                        m.2 += 1;
                        line += &format!(" {:>12} {:<4} |", "-", "n/a");
                    }
                }
            }
            for &(u, sel, target) in &pairs {
                match (results[p][u].us_per_rt(), results[p][sel].us_per_rt()) {
                    (Some(a), Some(b)) if target && conns >= URING_TARGET_CONNS => {
                        line += &ratio_cell(a / b, URING_TARGET, (&mut pair_met.0, &mut pair_met.1))
                    }
                    (Some(a), Some(b)) => line += &format!(" {:>11.2}x {:<4} |", a / b, "-"),
                    _ => line += &format!(" {:>12} {:<4} |", "-", "n/a"),
                }
            }
            println!("{line}");
        }
        println!(
            "ratio = our server CPU per round trip / tokio's (target: <= 1.00x at every point)"
        );
        for (k, (ok, missed, unmeasured)) in met.iter().enumerate() {
            println!(
                "  {}: target met at {ok} of {} points, missed at {missed}{}",
                kinds[k].name(),
                points.len(),
                if *unmeasured > 0 {
                    format!(", not measured at {unmeasured} (see failures)")
                } else {
                    String::new()
                }
            );
        }
        if pairs.iter().any(|p| p.2) {
            println!(
                "uring/select = uring's server CPU per round trip / select's (target: <= \
                 {URING_TARGET:.2}x at {URING_TARGET_CONNS} connections and more): met at {} \
                 of {} points",
                pair_met.0,
                pair_met.0 + pair_met.1
            );
        }
    }

    fn print_details(kinds: &[Kind], points: &[(usize, usize)], results: &[Vec<Results>]) {
        println!();
        println!(
            "details, per run: srv% / load% = server / load-generator thread CPU over the window's \
             wall time (load% near 100: the load generator, not the server, limits rt/s); \
             sys = share of server CPU in the kernel; full = echoes compared byte for byte (warm-up and window)"
        );
        println!(
            "{:>5} {:>7} {:<8} | {:>10} {:>8} {:>6} {:>6} {:>5} {:>6}",
            "conns", "size", "server", "rt/s", "us/rt", "srv%", "load%", "sys", "full"
        );
        println!("{}", "-".repeat(77));
        for (p, &(conns, size)) in points.iter().enumerate() {
            for (k, r) in results[p].iter().enumerate() {
                for m in &r.runs {
                    let sys = m.server.sys.as_secs_f64() / m.server.total().as_secs_f64().max(1e-9);
                    println!(
                        "{conns:>5} {:>7} {:<8} | {:>10} {:>8.2} {:>5.0}% {:>5.0}% {:>4.0}% {:>6}",
                        fmt_size(size),
                        kinds[k].name(),
                        fmt_rate(m.rt_per_s()),
                        m.us_per_rt(),
                        m.util(m.server),
                        m.util(m.load),
                        sys * 100.0,
                        m.full_checks
                    );
                }
            }
        }
    }

    fn print_errors(kinds: &[Kind], points: &[(usize, usize)], results: &[Vec<Results>]) {
        let mut first = true;
        for (p, &(conns, size)) in points.iter().enumerate() {
            for (k, r) in results[p].iter().enumerate() {
                for e in &r.errors {
                    if first {
                        println!("\nfailures:");
                        first = false;
                    }
                    println!("  {conns} x {} on {}: {e}", fmt_size(size), kinds[k].name());
                }
            }
        }
    }
}
