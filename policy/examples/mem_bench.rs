//! Memory per connection: our echo server on each backend beside tokio's
//! and, where Python has them, uvloop's and CPython's own loop.
//!
//! Run: `cargo run --release -p policy --example mem_bench`
//! (`-- --conns N`, default 10000; `-- --python PATH`, default `python3`,
//! for the Python servers, skipped with a message where `uvloop` does not
//! import; `-- --servers select,uring,tokio,uvloop,asyncio` to pick;
//! `rust_asyncio:select` and `rust_asyncio:uring` run our Python package's
//! loop where it is installed).
//!
//! Each server runs in a process of its own (this program re-run with
//! `--serve KIND`, or Python), so that only its memory is counted:
//!
//! 1. The server starts and prints its port; its resident set (`VmRSS`)
//!    is the baseline.
//! 2. This process opens N connections to it, then echoes one byte on the
//!    last: the server accepts in order, so every connection is then
//!    accepted. RSS again: the idle figure.
//! 3. Every connection sends 64 bytes, then each reads its 64 back and
//!    checks them. RSS again: the figure after one echo each.
//! 4. Every connection closes; once the server's descriptor count is back
//!    to its baseline, RSS again: what the server keeps of the load.
//!
//! Reported: KiB per connection over the baseline, idle and after the
//! echo, the baseline itself, and the MiB over it left after the close.
//!
//! Then a second table (`-- --rounds R`, default 5; 0 skips it): the same
//! servers on a Unix socket, R rounds of bulk echo (20 connections, each
//! echoing 8 MiB in 64 KiB writes while it reads, every byte checked, then
//! closing), and the server's RSS after each round: memory a load leaves
//! behind shows as growth from round to round. The last column is the RSS
//! after the server then sat idle for 3 seconds (uring's buffer ring gives
//! memory back after a second with nothing arriving). The servers are the same program: the
//! `EchoProtocol` on `create_server` (ours), tokio's README echo server
//! (a task per connection reading into a 1 KiB array), asyncio's
//! documented `EchoServerProtocol` (Python). All listen with a backlog of
//! 1024.

#[cfg(target_os = "linux")]
#[path = "shared/echo_protocol.rs"]
mod echo_protocol;

#[cfg(target_os = "linux")]
fn main() {
    bench::main();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    println!("mem_bench needs Linux (/proc/PID/status)");
}

#[cfg(target_os = "linux")]
mod bench {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::process::{Child, Command, Stdio};
    use std::rc::Rc;

    use loop_api::events::options::{CreateServerOptions, CreateUnixServerOptions};
    use loop_api::EventLoopExt;

    use crate::echo_protocol::EchoProtocol;

    const BACKLOG: i32 = 1024;
    const MESSAGE: usize = 64;

    /// asyncio's documented echo protocol, on the loop named by argv[1].
    const PY_SERVER: &str = r#"
import asyncio, sys
class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)
async def main():
    loop = asyncio.get_running_loop()
    if len(sys.argv) > 3 and sys.argv[2] == '--unix':
        server = await loop.create_unix_server(Echo, sys.argv[3], backlog=1024)
        print('ready', flush=True)
    else:
        server = await loop.create_server(Echo, '127.0.0.1', 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()
kind = sys.argv[1]
if kind == 'uvloop':
    import uvloop
    factory = uvloop.new_event_loop
elif kind == 'asyncio':
    factory = asyncio.new_event_loop
else:
    import rust_asyncio
    backend = kind.split(':')[1]
    factory = lambda: rust_asyncio.new_event_loop(backend)
asyncio.run(main(), loop_factory=factory)
"#;

    pub fn main() {
        let args: Vec<String> = std::env::args().collect();
        let arg = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        if let Some(kind) = arg("--serve") {
            return serve(&kind, arg("--unix"));
        }
        let conns: usize = arg("--conns").map_or(10_000, |n| n.parse().expect("--conns N"));
        let python = arg("--python").unwrap_or_else(|| "python3".into());
        let servers =
            arg("--servers").unwrap_or_else(|| "select,uring,tokio,uvloop,asyncio".into());
        let rounds: usize = arg("--rounds").map_or(5, |n| n.parse().expect("--rounds R"));
        raise_fd_limit(conns);

        println!(
            "memory per connection: {conns} connections, idle, then one {MESSAGE}-byte echo each"
        );
        println!(
            "| server | baseline RSS (MiB) | idle (KiB/conn) | after one echo (KiB/conn) \
             | all closed (MiB over baseline) |"
        );
        println!("|---|---|---|---|---|");
        for kind in servers.split(',') {
            let python_server = !matches!(kind, "select" | "uring" | "tokio");
            if python_server && !python_has(&python, kind) {
                println!("| {kind} | skipped: `{python}` cannot run it ||||");
                continue;
            }
            match measure(kind, &python, conns) {
                Ok(m) => println!(
                    "| {kind} | {:.1} | {:.2} | {:.2} | {:.1} |",
                    m.base as f64 / 1024.0,
                    (m.idle as f64 - m.base as f64) / conns as f64,
                    (m.echoed as f64 - m.base as f64) / conns as f64,
                    (m.closed as f64 - m.base as f64) / 1024.0,
                ),
                Err(e) => println!("| {kind} | failed: {e} ||||"),
            }
        }
        if rounds == 0 {
            return;
        }
        println!();
        println!(
            "RSS (MiB) after each round of bulk echo over a Unix socket: \
             {BULK_CONNS} connections x {} MiB each",
            BULK_BYTES >> 20
        );
        let head: Vec<String> = (1..=rounds).map(|r| format!("round {r}")).collect();
        println!("| server | baseline | {} | idle 3 s |", head.join(" | "));
        println!("|---|---|{}---|", "---|".repeat(rounds));
        for kind in servers.split(',') {
            let python_server = !matches!(kind, "select" | "uring" | "tokio");
            if python_server && !python_has(&python, kind) {
                continue;
            }
            match measure_bulk(kind, &python, rounds) {
                Ok(rss) => {
                    let mib: Vec<String> = rss
                        .iter()
                        .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                        .collect();
                    println!("| {kind} | {} |", mib.join(" | "));
                }
                Err(e) => println!("| {kind} | failed: {e} |"),
            }
        }
    }

    const BULK_CONNS: usize = 20;
    const BULK_BYTES: usize = 8 << 20;
    const BULK_CHUNK: usize = 64 * 1024;

    /// The baseline and the RSS after each round, in KiB.
    fn measure_bulk(kind: &str, python: &str, rounds: usize) -> Result<Vec<u64>, String> {
        let path = std::env::temp_dir().join(format!("mem_bench-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut child = spawn_with(kind, python, Some(&path)).map_err(|e| format!("spawn: {e}"))?;
        let r = (|| {
            read_line(&mut child)?;
            let pid = child.id();
            let mut rss = vec![rss_kib(pid)?];
            for _ in 0..rounds {
                bulk_round(&path)?;
                rss.push(rss_kib(pid)?);
            }
            std::thread::sleep(std::time::Duration::from_secs(3));
            rss.push(rss_kib(pid)?);
            Ok(rss)
        })();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Every connection echoes `BULK_BYTES`, written by a thread of its
    /// own while this one reads and checks; then all close, and the round
    /// ends when the server has seen them close (a last connection's echo
    /// comes back after the others' ends were read).
    fn bulk_round(path: &std::path::Path) -> Result<(), String> {
        use std::os::unix::net::UnixStream;
        let pattern = |i: usize, at: usize| (at.wrapping_mul(7) ^ i) as u8;
        let threads: Vec<_> = (0..BULK_CONNS)
            .map(|i| {
                let path = path.to_owned();
                std::thread::spawn(move || -> Result<(), String> {
                    let mut s = UnixStream::connect(&path).map_err(|e| e.to_string())?;
                    let mut w = s.try_clone().map_err(|e| e.to_string())?;
                    let writer = std::thread::spawn(move || -> std::io::Result<()> {
                        let mut chunk = vec![0u8; BULK_CHUNK];
                        for start in (0..BULK_BYTES).step_by(BULK_CHUNK) {
                            for (k, b) in chunk.iter_mut().enumerate() {
                                *b = pattern(i, start + k);
                            }
                            w.write_all(&chunk)?;
                        }
                        Ok(())
                    });
                    let mut buf = vec![0u8; BULK_CHUNK];
                    let mut at = 0;
                    while at < BULK_BYTES {
                        let n = s.read(&mut buf).map_err(|e| e.to_string())?;
                        if n == 0 {
                            return Err(format!("EOF after {at} bytes"));
                        }
                        if let Some(k) = (0..n).find(|&k| buf[k] != pattern(i, at + k)) {
                            return Err(format!("byte {} differs", at + k));
                        }
                        at += n;
                    }
                    writer
                        .join()
                        .map_err(|_| "writer panicked".to_string())?
                        .map_err(|e| e.to_string())
                })
            })
            .collect();
        for t in threads {
            t.join().map_err(|_| "a connection thread panicked")??;
        }
        Ok(())
    }

    fn read_line(child: &mut Child) -> Result<String, String> {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        Ok(line)
    }

    /// Resident set sizes in KiB.
    struct Measured {
        base: u64,
        idle: u64,
        echoed: u64,
        closed: u64,
    }

    fn measure(kind: &str, python: &str, conns: usize) -> Result<Measured, String> {
        let mut child = spawn(kind, python).map_err(|e| format!("spawn: {e}"))?;
        let r = drive(&mut child, conns);
        let _ = child.kill();
        let _ = child.wait();
        r
    }

    fn drive(child: &mut Child, conns: usize) -> Result<Measured, String> {
        let line = read_line(child)?;
        let port: u16 = line
            .trim()
            .parse()
            .map_err(|_| format!("the server printed {line:?}, not its port"))?;
        let pid = child.id();
        let base = rss_kib(pid)?;
        let base_fds = fd_count(pid)?;
        let mut socks = Vec::with_capacity(conns);
        for i in 0..conns {
            let s = TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| format!("connection {i}: {e}"))?;
            s.set_nodelay(true).map_err(|e| e.to_string())?;
            socks.push(s);
        }
        // Accepted in order: once the last echoes, every one is accepted.
        echo(socks.last_mut().expect("at least one"), b"!")?;
        let idle = rss_kib(pid)?;
        for (i, s) in socks.iter_mut().enumerate() {
            s.write_all(&message(i)).map_err(|e| e.to_string())?;
        }
        for (i, s) in socks.iter_mut().enumerate() {
            let mut back = [0u8; MESSAGE];
            s.read_exact(&mut back)
                .map_err(|e| format!("echo {i}: {e}"))?;
            if back != message(i) {
                return Err(format!("connection {i} got other bytes back"));
            }
        }
        let echoed = rss_kib(pid)?;
        drop(socks);
        // The server has seen every close once its descriptors are back.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while fd_count(pid)? > base_fds {
            if std::time::Instant::now() > deadline {
                return Err("the server still held connections 30 s after they closed".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let closed = rss_kib(pid)?;
        Ok(Measured {
            base,
            idle,
            echoed,
            closed,
        })
    }

    fn message(i: usize) -> [u8; MESSAGE] {
        let mut m = [0u8; MESSAGE];
        for (k, b) in m.iter_mut().enumerate() {
            *b = (i.wrapping_mul(31) + k) as u8;
        }
        m
    }

    fn echo(s: &mut TcpStream, data: &[u8]) -> Result<(), String> {
        s.write_all(data).map_err(|e| e.to_string())?;
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).map_err(|e| e.to_string())?;
        if back != data {
            return Err("the echo differs".into());
        }
        Ok(())
    }

    fn spawn(kind: &str, python: &str) -> std::io::Result<Child> {
        spawn_with(kind, python, None)
    }

    /// The server `kind`, on TCP or, given a path, on a Unix socket there.
    fn spawn_with(
        kind: &str,
        python: &str,
        unix: Option<&std::path::Path>,
    ) -> std::io::Result<Child> {
        let mut cmd = if matches!(kind, "select" | "uring" | "tokio") {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["--serve", kind]);
            c
        } else {
            let mut c = Command::new(python);
            c.args(["-c", PY_SERVER, kind]);
            c
        };
        if let Some(path) = unix {
            cmd.arg("--unix").arg(path);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn()
    }

    fn python_has(python: &str, kind: &str) -> bool {
        let module = match kind {
            "uvloop" => "uvloop",
            "asyncio" => "asyncio",
            _ => "rust_asyncio",
        };
        Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn fd_count(pid: u32) -> Result<usize, String> {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(Iterator::count)
            .map_err(|e| format!("/proc/{pid}/fd: {e}"))
    }

    fn rss_kib(pid: u32) -> Result<u64, String> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| "no VmRSS".into())
    }

    fn raise_fd_limit(conns: usize) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: `lim` is a valid rlimit to fill.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above; raising the soft limit to the hard one.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if (lim.rlim_cur as usize) < conns + 64 {
            eprintln!(
                "mem_bench: the descriptor limit ({}) is below {conns} connections",
                lim.rlim_cur
            );
        }
    }

    // ----- the servers ---------------------------------------------------------------

    fn serve(kind: &str, unix: Option<String>) {
        let r = if kind == "tokio" {
            serve_tokio(unix)
        } else {
            let factory = policy::backend(kind).expect("a backend of ours");
            policy::run(serve_ours(unix), None, Some(factory)).map_err(|e| e.to_string())
        };
        if let Err(e) = r {
            eprintln!("mem_bench server {kind}: {e}");
            std::process::exit(1);
        }
    }

    async fn serve_ours(unix: Option<String>) -> loop_api::Result<()> {
        let lp = policy::get_running_loop()?;
        if let Some(path) = unix {
            let options = CreateUnixServerOptions {
                backlog: BACKLOG,
                ..Default::default()
            };
            let server = lp
                .create_unix_server(|| Rc::new(EchoProtocol::default()), path, options)
                .await?;
            println!("ready");
            std::io::stdout().flush()?;
            return server.serve_forever().await;
        }
        let options = CreateServerOptions {
            backlog: BACKLOG,
            ..Default::default()
        };
        let server = lp
            .create_server(|| Rc::new(EchoProtocol::default()), "127.0.0.1", 0, options)
            .await?;
        let port = server.local_addrs()[0].port();
        println!("{port}");
        std::io::stdout().flush()?;
        server.serve_forever().await
    }

    /// tokio's README echo server, on a current-thread runtime.
    fn serve_tokio(unix: Option<String>) -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        if let Some(path) = unix {
            return rt.block_on(async {
                let listener = tokio::net::UnixListener::bind(path).map_err(|e| e.to_string())?;
                println!("ready");
                std::io::stdout().flush().map_err(|e| e.to_string())?;
                loop {
                    let (sock, _) = listener.accept().await.map_err(|e| e.to_string())?;
                    tokio::spawn(echo_task(sock));
                }
            });
        }
        rt.block_on(async {
            let sock = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
            sock.bind("127.0.0.1:0".parse().expect("an address"))
                .map_err(|e| e.to_string())?;
            let port = sock.local_addr().map_err(|e| e.to_string())?.port();
            let listener = sock.listen(BACKLOG as u32).map_err(|e| e.to_string())?;
            println!("{port}");
            std::io::stdout().flush().map_err(|e| e.to_string())?;
            loop {
                let (sock, _) = listener.accept().await.map_err(|e| e.to_string())?;
                tokio::spawn(echo_task(sock));
            }
        })
    }

    /// tokio's README echo task: a 1 KiB array, read, write it all back.
    async fn echo_task<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut sock: S) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = [0u8; 1024];
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
}
