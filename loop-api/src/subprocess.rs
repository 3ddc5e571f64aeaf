//! asyncio's `subprocess` module: children with stream pipes.
//!
//! ```no_run
//! # use loop_api::subprocess::create_subprocess_exec;
//! # async fn demo() -> loop_api::Result<()> {
//! let mut p = create_subprocess_exec("cat", ["-"], Default::default()).await?;
//! let (out, _err) = p.communicate(Some(b"hello")).await?;
//! assert_eq!(out.as_deref(), Some(&b"hello"[..]));
//! assert_eq!(p.returncode(), Some(0));
//! # Ok(()) }
//! ```
//!
//! The child's pipes are streams: `stdin` a [`StreamWriter`] (with
//! `drain`), `stdout` and `stderr` [`StreamReader`]s. As in asyncio, the
//! subprocess transport closes once the child has exited and both output
//! pipes are closed.

use std::cell::{Cell, RefCell};
use std::ffi::OsStr;
use std::fmt;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use crate::events::options::SubprocessOptions;
use crate::events::{get_running_loop, EventLoopExt, Loop};
use crate::exceptions::{Error, Result};
use crate::protocols::{BaseProtocol, Protocol, SubprocessProtocol};
use crate::streams::protocol::StreamProtocol;
use crate::streams::{StreamReader, StreamWriter, DEFAULT_LIMIT};
use crate::transports::SubprocessTransport;

/// asyncio's `SubprocessStreamProtocol`: feeds the output readers, and
/// gives the input writer its flow control.
struct SubprocessStreamProtocol {
    lp: Loop,
    limit: usize,
    stdin: RefCell<Option<Rc<StreamProtocol>>>,
    stdout: RefCell<Option<Rc<StreamProtocol>>>,
    stderr: RefCell<Option<Rc<StreamProtocol>>>,
    /// Output pipes still open (1, 2).
    pipe_fds: RefCell<Vec<i32>>,
    process_exited: Cell<bool>,
    transport: RefCell<Option<Rc<dyn SubprocessTransport>>>,
}

impl SubprocessStreamProtocol {
    fn reader_state(&self, fd: i32) -> Option<Rc<StreamProtocol>> {
        match fd {
            1 => self.stdout.borrow().clone(),
            2 => self.stderr.borrow().clone(),
            _ => None,
        }
    }

    fn maybe_close_transport(&self) {
        if self.pipe_fds.borrow().is_empty() && self.process_exited.get() {
            let t = self.transport.borrow_mut().take();
            if let Some(t) = t {
                t.close();
            }
        }
    }
}

impl BaseProtocol for SubprocessStreamProtocol {
    fn pause_writing(&self) {
        let s = self.stdin.borrow().clone();
        if let Some(s) = s {
            s.pause_writing();
        }
    }
    fn resume_writing(&self) {
        let s = self.stdin.borrow().clone();
        if let Some(s) = s {
            s.resume_writing();
        }
    }
}

impl SubprocessProtocol for SubprocessStreamProtocol {
    fn connection_made(&self, transport: Rc<dyn SubprocessTransport>) {
        for fd in [1, 2] {
            if let Some(pipe) = transport.get_pipe_transport(fd) {
                let state = StreamProtocol::new(self.lp.clone(), self.limit, None);
                *state.transport.borrow_mut() = Some(pipe);
                *(if fd == 1 { &self.stdout } else { &self.stderr }).borrow_mut() = Some(state);
                self.pipe_fds.borrow_mut().push(fd);
            }
        }
        if let Some(pipe) = transport.get_pipe_transport(0) {
            let state = StreamProtocol::new(self.lp.clone(), self.limit, None);
            *state.transport.borrow_mut() = Some(pipe);
            *self.stdin.borrow_mut() = Some(state);
        }
        *self.transport.borrow_mut() = Some(transport);
    }

    fn pipe_data_received(&self, fd: i32, data: &[u8]) {
        if let Some(r) = self.reader_state(fd) {
            r.data_received(data);
        }
    }

    fn pipe_connection_lost(&self, fd: i32, exc: Option<Error>) {
        if fd == 0 {
            let s = self.stdin.borrow().clone();
            if let Some(s) = s {
                // The writer's flow control and wait_closed learn of it.
                s.connection_lost(exc);
            }
            return;
        }
        if let Some(r) = self.reader_state(fd) {
            match exc {
                None => r.feed_eof(),
                Some(e) => r.set_exception(e),
            }
        }
        self.pipe_fds.borrow_mut().retain(|&f| f != fd);
        self.maybe_close_transport();
    }

    fn process_exited(&self) {
        self.process_exited.set(true);
        self.maybe_close_transport();
    }
}

/// A child started with [`create_subprocess_exec`] or
/// [`create_subprocess_shell`] (asyncio's `asyncio.subprocess.Process`).
pub struct Process {
    /// The child's standard input, if it is a pipe.
    pub stdin: Option<StreamWriter>,
    /// The child's standard output, if it is a pipe.
    pub stdout: Option<StreamReader>,
    /// The child's standard error, if it is a pipe.
    pub stderr: Option<StreamReader>,
    transport: Rc<dyn SubprocessTransport>,
    pid: u32,
}

impl Process {
    fn new(transport: Rc<dyn SubprocessTransport>, protocol: &SubprocessStreamProtocol) -> Self {
        let stdin = protocol.stdin.borrow().clone().map(StreamWriter::new);
        let stdout = protocol.stdout.borrow().clone().map(StreamReader::new);
        let stderr = protocol.stderr.borrow().clone().map(StreamReader::new);
        Process {
            stdin,
            stdout,
            stderr,
            pid: transport.get_pid(),
            transport,
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status once the child has exited (a negative signal
    /// number if a signal ended it, on Unix); `None` while it runs.
    pub fn returncode(&self) -> Option<i32> {
        self.transport.get_returncode()
    }

    /// Waits for the child to exit; its return code.
    pub async fn wait(&self) -> Result<i32> {
        self.transport.wait().await
    }

    /// Sends `signal` to the child (on Windows, `CTRL_C_EVENT`,
    /// `CTRL_BREAK_EVENT` or `SIGTERM`).
    pub fn send_signal(&self, signal: i32) -> Result<()> {
        self.transport.send_signal(signal)
    }

    /// `SIGTERM` (Windows: `TerminateProcess`).
    pub fn terminate(&self) -> Result<()> {
        self.transport.terminate()
    }

    /// `SIGKILL` (Windows: `TerminateProcess`).
    pub fn kill(&self) -> Result<()> {
        self.transport.kill()
    }

    /// Sends `input` (if any) to stdin and closes it, reads stdout and
    /// stderr to EOF, and waits for the child to exit (asyncio's
    /// `communicate`). Outputs that are not pipes are `None`. A child that
    /// exits without reading its input is not an error: the broken pipe is
    /// ignored, as asyncio ignores it.
    pub async fn communicate(
        &mut self,
        input: Option<&[u8]>,
    ) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>)> {
        let stdin = self.stdin.take();
        let feed = async move {
            if let Some(w) = stdin {
                if let Some(data) = input {
                    let fed = match w.write(data) {
                        Ok(()) => w.drain().await,
                        Err(e) => Err(e),
                    };
                    match fed {
                        Ok(()) => {}
                        Err(e) if e.is_broken_pipe() || e.is_connection_reset() => {}
                        Err(e) => return Err(e),
                    }
                }
                w.close();
            }
            Ok(())
        };
        let out = read_to_eof(self.stdout.as_mut(), &self.transport, 1);
        let err = read_to_eof(self.stderr.as_mut(), &self.transport, 2);
        let (fed, out, err) = join3(feed, out, err).await;
        fed?;
        let (out, err) = (out?, err?);
        self.wait().await?;
        Ok((out, err))
    }
}

/// asyncio's `_read_stream`: reads an output pipe to EOF, then closes it.
async fn read_to_eof(
    r: Option<&mut StreamReader>,
    transport: &Rc<dyn SubprocessTransport>,
    fd: i32,
) -> Result<Option<Vec<u8>>> {
    let Some(r) = r else { return Ok(None) };
    let out = r.read(-1).await?;
    if let Some(t) = transport.get_pipe_transport(fd) {
        t.close();
    }
    Ok(Some(out))
}

/// Polls three futures to completion together.
async fn join3<A, B, C>(
    a: impl std::future::Future<Output = A>,
    b: impl std::future::Future<Output = B>,
    c: impl std::future::Future<Output = C>,
) -> (A, B, C) {
    let (mut a, mut b, mut c) = (Box::pin(a), Box::pin(b), Box::pin(c));
    let (mut ra, mut rb, mut rc) = (None, None, None);
    std::future::poll_fn(move |cx| {
        fn step<T>(
            f: &mut Pin<Box<impl std::future::Future<Output = T>>>,
            slot: &mut Option<T>,
            cx: &mut std::task::Context<'_>,
        ) {
            if slot.is_none() {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *slot = Some(v);
                }
            }
        }
        step(&mut a, &mut ra, cx);
        step(&mut b, &mut rb, cx);
        step(&mut c, &mut rc, cx);
        if ra.is_some() && rb.is_some() && rc.is_some() {
            Poll::Ready((ra.take().unwrap(), rb.take().unwrap(), rc.take().unwrap()))
        } else {
            Poll::Pending
        }
    })
    .await
}

impl fmt::Debug for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<Process {}>", self.pid)
    }
}

fn stream_protocol(lp: &Loop, limit: usize) -> Rc<SubprocessStreamProtocol> {
    Rc::new(SubprocessStreamProtocol {
        lp: lp.clone(),
        limit,
        stdin: RefCell::new(None),
        stdout: RefCell::new(None),
        stderr: RefCell::new(None),
        pipe_fds: RefCell::new(Vec::new()),
        process_exited: Cell::new(false),
        transport: RefCell::new(None),
    })
}

/// `asyncio.create_subprocess_exec(program, *args, ...)`: starts `program`
/// with `args` (asyncio's default: three pipes). `limit` is the output
/// readers' (64 KiB with [`DEFAULT_LIMIT`]).
pub fn create_subprocess_exec(
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    options: SubprocessOptions,
) -> impl std::future::Future<Output = Result<Process>> + 'static {
    create_subprocess_exec_limit(program, args, DEFAULT_LIMIT, options)
}

/// [`create_subprocess_exec`] with the readers' `limit`.
pub fn create_subprocess_exec_limit(
    program: impl AsRef<OsStr>,
    args: impl IntoIterator<Item = impl AsRef<OsStr>>,
    limit: usize,
    options: SubprocessOptions,
) -> impl std::future::Future<Output = Result<Process>> + 'static {
    let program = program.as_ref().to_owned();
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    async move {
        let lp = get_running_loop()?;
        crate::streams::protocol::check_limit(limit)?;
        let p = stream_protocol(&lp, limit);
        let p2 = p.clone();
        let (t, _) = lp
            .subprocess_exec(move || p2.clone(), program, args, options)
            .await?;
        Ok(Process::new(t, &p))
    }
}

/// `asyncio.create_subprocess_shell(cmd, ...)`: runs `cmd` through the
/// shell.
pub fn create_subprocess_shell(
    cmd: impl AsRef<OsStr>,
    options: SubprocessOptions,
) -> impl std::future::Future<Output = Result<Process>> + 'static {
    let cmd = cmd.as_ref().to_owned();
    async move {
        let lp = get_running_loop()?;
        let p = stream_protocol(&lp, DEFAULT_LIMIT);
        let p2 = p.clone();
        let (t, _) = lp
            .subprocess_shell(move || p2.clone(), cmd, options)
            .await?;
        Ok(Process::new(t, &p))
    }
}
