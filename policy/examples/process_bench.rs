//! Subprocess benchmark: our `subprocess_exec` on each backend against
//! `tokio::process`, in one process, taking turns.
//!
//! Run: `cargo run --release -p policy --example process_bench`
//! (`-- --quick` for a smoke run; `-- --reps R`, `-- --backends select,uring`).
//!
//! - spawn and wait: `/bin/true` started and waited for, one after the
//!   other, for a fixed time; children per second.
//! - a stream through `cat`: 100 MB written to `cat`'s stdin in 256 KiB
//!   writes (respecting flow control) while its stdout is read; MB/s over
//!   the whole run, spawn to exit.
//!
//! - spawn and wait with an inherited descriptor: the same, for our
//!   first backend, while one descriptor without `O_CLOEXEC` is open.
//!   `close_fds` (asyncio's default, and ours) then has to close it in the
//!   child, which makes `std` fork instead of `posix_spawn`; tokio does
//!   not close it (the child inherits it). Descriptors the bench itself
//!   inherited open (a CI harness's, say) are made close-on-exec at the
//!   start so that the other rows measure the common case.
//!
//! Each figure is the median of the repetitions; the table gives ours
//! and tokio's, and their ratio (above 1: ours is faster).

#[cfg(unix)]
fn main() {
    bench::main();
}

#[cfg(not(unix))]
fn main() {
    println!("process_bench runs /bin/true and cat: Unix only");
}

#[cfg(unix)]
mod bench {
    use std::cell::{Cell, RefCell};
    use std::rc::Rc;
    use std::time::Instant;

    use loop_api::events::options::{Stdio, SubprocessOptions};
    use loop_api::protocols::{BaseProtocol, SubprocessProtocol};
    use loop_api::transports::SubprocessTransport;
    use loop_api::{EventLoopExt, Loop};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CHUNK: usize = 256 * 1024;

    struct Args {
        reps: usize,
        spawn_secs: f64,
        stream_bytes: usize,
        backends: Vec<&'static str>,
    }

    fn args() -> Args {
        let mut a = Args {
            reps: 3,
            spawn_secs: 3.0,
            stream_bytes: 100 * 1000 * 1000,
            backends: policy::available_backends(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(x) = it.next() {
            match x.as_str() {
                "--quick" => {
                    a.reps = 1;
                    a.spawn_secs = 0.5;
                    a.stream_bytes = 10 * 1000 * 1000;
                }
                "--reps" => a.reps = it.next().and_then(|v| v.parse().ok()).expect("--reps N"),
                "--backends" => {
                    let list = it.next().expect("--backends a,b");
                    a.backends = policy::available_backends()
                        .into_iter()
                        .filter(|b| list.split(',').any(|x| x == *b))
                        .collect();
                }
                other => panic!("unknown argument {other}"),
            }
        }
        a.backends
            .retain(|b| policy::backend(b).and_then(|f| f()).is_ok());
        a
    }

    // ----- ours -------------------------------------------------------------------

    /// Counts stdout; feeds stdin from `left` while not paused.
    #[derive(Default)]
    struct Feed {
        transport: RefCell<Option<Rc<dyn SubprocessTransport>>>,
        left: Cell<usize>,
        paused: Cell<bool>,
        received: Cell<usize>,
        chunk: Vec<u8>,
    }

    impl Feed {
        fn pump(&self) {
            let Some(t) = self.transport.borrow().clone() else {
                return;
            };
            let Some(stdin) = t.get_pipe_transport(0) else {
                return;
            };
            while !self.paused.get() && self.left.get() > 0 {
                let n = self.left.get().min(CHUNK);
                stdin.write(&self.chunk[..n]).expect("write");
                self.left.set(self.left.get() - n);
            }
            if self.left.get() == 0 && !stdin.is_closing() {
                let _ = stdin.write_eof();
            }
        }
    }

    impl BaseProtocol for Feed {
        fn pause_writing(&self) {
            self.paused.set(true);
        }
        fn resume_writing(&self) {
            self.paused.set(false);
            self.pump();
        }
    }

    impl SubprocessProtocol for Feed {
        fn connection_made(&self, t: Rc<dyn SubprocessTransport>) {
            *self.transport.borrow_mut() = Some(t);
            self.pump();
        }
        fn pipe_data_received(&self, _fd: i32, data: &[u8]) {
            self.received.set(self.received.get() + data.len());
        }
    }

    struct Quiet;
    impl BaseProtocol for Quiet {}
    impl SubprocessProtocol for Quiet {}

    fn ours_spawn(lp: &Loop, secs: f64) -> f64 {
        let l = lp.clone();
        lp.run_until_complete(async move {
            let options = || SubprocessOptions {
                stdin: Stdio::DevNull,
                stdout: Stdio::DevNull,
                stderr: Stdio::DevNull,
                ..Default::default()
            };
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                let (t, _) = l
                    .subprocess_exec(|| Rc::new(Quiet), "/bin/true", [""; 0], options())
                    .await?;
                assert_eq!(t.wait().await?, 0);
                n += 1;
            }
            Ok(n as f64 / start.elapsed().as_secs_f64())
        })
        .expect("spawn loop")
    }

    fn ours_stream(lp: &Loop, bytes: usize) -> f64 {
        let l = lp.clone();
        lp.run_until_complete(async move {
            let start = Instant::now();
            let feed = Rc::new(Feed {
                left: Cell::new(bytes),
                chunk: vec![b'x'; CHUNK],
                ..Default::default()
            });
            let f = feed.clone();
            let options = SubprocessOptions {
                stderr: Stdio::DevNull,
                ..Default::default()
            };
            let (t, _) = l
                .subprocess_exec(move || f.clone(), "cat", [""; 0], options)
                .await?;
            assert_eq!(t.wait().await?, 0);
            // The exit can come before the last output is read.
            while feed.received.get() < bytes {
                loop_api::sleep(0.0).await?;
            }
            let secs = start.elapsed().as_secs_f64();
            Ok(bytes as f64 / secs / 1e6)
        })
        .expect("stream")
    }

    // ----- tokio --------------------------------------------------------------------

    fn tokio_rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn tokio_spawn(rt: &tokio::runtime::Runtime, secs: f64) -> f64 {
        rt.block_on(async {
            let start = Instant::now();
            let mut n = 0u64;
            while start.elapsed().as_secs_f64() < secs {
                let status = tokio::process::Command::new("/bin/true")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .await
                    .expect("spawn");
                assert!(status.success());
                n += 1;
            }
            n as f64 / start.elapsed().as_secs_f64()
        })
    }

    fn tokio_stream(rt: &tokio::runtime::Runtime, bytes: usize) -> f64 {
        rt.block_on(async {
            let start = Instant::now();
            let mut child = tokio::process::Command::new("cat")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("spawn");
            let mut stdin = child.stdin.take().expect("stdin");
            let mut stdout = child.stdout.take().expect("stdout");
            let writer = async move {
                let chunk = vec![b'x'; CHUNK];
                let mut left = bytes;
                while left > 0 {
                    let n = left.min(CHUNK);
                    stdin.write_all(&chunk[..n]).await.expect("write");
                    left -= n;
                }
                drop(stdin);
            };
            let reader = async move {
                let mut buf = vec![0u8; CHUNK];
                let mut got = 0;
                loop {
                    let n = stdout.read(&mut buf).await.expect("read");
                    if n == 0 {
                        break got;
                    }
                    got += n;
                }
            };
            let ((), got) = tokio::join!(writer, reader);
            assert_eq!(got, bytes);
            assert!(child.wait().await.expect("wait").success());
            bytes as f64 / start.elapsed().as_secs_f64() / 1e6
        })
    }

    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).expect("numbers"));
        v[v.len() / 2]
    }

    /// Marks every inherited descriptor above 2 close-on-exec.
    fn cloexec_inherited() {
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        for fd in fds.into_iter().filter(|fd| *fd > 2) {
            // SAFETY: F_GETFD/F_SETFD change only the flags of a
            // descriptor number; a closed one fails with EBADF.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }

    /// Opens `/dev/null` without `O_CLOEXEC`, for the inherited-fd row.
    fn open_inheritable() -> std::os::fd::OwnedFd {
        use std::os::fd::{AsRawFd, FromRawFd};
        let f = std::fs::File::open("/dev/null").expect("/dev/null");
        // SAFETY: dup returns a new descriptor (without FD_CLOEXEC) that
        // nothing else owns.
        let fd = unsafe { libc::dup(f.as_raw_fd()) };
        assert!(fd >= 0, "dup");
        // SAFETY: `fd` is open and owned by no one else.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    }

    pub fn main() {
        cloexec_inherited();
        let a = args();
        let rt = tokio_rt();
        let loops: Vec<(&str, Loop)> = a
            .backends
            .iter()
            .map(|b| (*b, policy::backend(b).and_then(|f| f()).expect("loop")))
            .collect();
        let mut spawn: Vec<Vec<f64>> = vec![Vec::new(); loops.len() + 1];
        let mut stream: Vec<Vec<f64>> = vec![Vec::new(); loops.len() + 1];
        // Warm up: the first spawns fault in the binaries.
        tokio_spawn(&rt, 0.2);
        for (_, lp) in &loops {
            ours_spawn(lp, 0.2);
        }
        for _ in 0..a.reps {
            for (i, (_, lp)) in loops.iter().enumerate() {
                spawn[i].push(ours_spawn(lp, a.spawn_secs));
                stream[i].push(ours_stream(lp, a.stream_bytes));
            }
            spawn[loops.len()].push(tokio_spawn(&rt, a.spawn_secs));
            stream[loops.len()].push(tokio_stream(&rt, a.stream_bytes));
        }
        let mut inherited = Vec::new();
        if let Some((_, lp)) = loops.first() {
            let fd = open_inheritable();
            for _ in 0..a.reps {
                inherited.push(ours_spawn(lp, a.spawn_secs));
            }
            drop(fd);
        }
        let tokio_spawn_m = median(spawn[loops.len()].clone());
        let tokio_stream_m = median(stream[loops.len()].clone());
        println!(
            "| loop | spawn+wait /bin/true per s | ratio | {} MB through cat, MB/s | ratio |",
            a.stream_bytes / 1_000_000
        );
        println!("|---|---|---|---|---|");
        for (i, (name, _)) in loops.iter().enumerate() {
            let s = median(spawn[i].clone());
            let m = median(stream[i].clone());
            println!(
                "| {name} | {s:.0} | {:.2} | {m:.0} | {:.2} |",
                s / tokio_spawn_m,
                m / tokio_stream_m
            );
        }
        println!("| tokio::process | {tokio_spawn_m:.0} | 1.00 | {tokio_stream_m:.0} | 1.00 |");
        if let Some((name, _)) = loops.first() {
            let s = median(inherited);
            println!(
                "| {name}, an inherited fd open (fork path) | {s:.0} | {:.2} | | |",
                s / tokio_spawn_m
            );
        }
    }
}
