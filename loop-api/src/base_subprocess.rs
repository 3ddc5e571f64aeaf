//! asyncio's `base_subprocess`: the subprocess transport every loop
//! shares, over the OS's child (`unix_events` on Unix, `windows_events`
//! on Windows) and the loop's own pipe transports.
//!
//! # Order, as asyncio guarantees it
//! - The child is spawned before `subprocess_exec` returns its first
//!   poll; then its pipes are connected (stdin as a write pipe, stdout and
//!   stderr as read pipes), then the protocol's `connection_made` runs.
//!   What happens before that (output, a pipe's end, the exit) is queued
//!   and delivered after it, in order.
//! - Output reaches `pipe_data_received(fd, data)` one iteration after it
//!   was read (asyncio's `call_soon`); a pipe's end,
//!   `pipe_connection_lost(fd, exc)`.
//! - `process_exited` runs once the child exited and was reaped; waiters
//!   ([`SubprocessTransport::wait`]) resolve right after, whatever the
//!   pipes are doing.
//! - `connection_lost(None)` runs last, once the child exited and every
//!   pipe closed.
//!
//! # Closing
//! `close` closes the pipes and, if the child has not exited, kills it.
//! The exit watch stays until the child is reaped, so no zombie remains.
//! If the call that spawns is cancelled (or fails connecting the pipes),
//! the transport is closed the same way.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::File;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use crate::base_events::BaseLoop;
use crate::events::options::{Stdio, SubprocessOptions};
use crate::events::{EventLoopExt, LocalBoxFuture, SubprocessPair};
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::log::{self, Level};
use crate::protocols::{
    BaseProtocol, Protocol, ProtocolFactory, SubprocessProtocol, SubprocessProtocolFactory,
    TransportCell,
};
use crate::transports::lifecycle::{self, CloseOnDrop};
use crate::transports::{BaseTransport, ExtraInfo, SubprocessTransport, Transport};

#[cfg(unix)]
use crate::unix_events::child as os;
#[cfg(windows)]
use crate::windows_events::child as os;

/// What to run: a program and its arguments, or a shell command line.
pub(crate) enum Argv {
    /// `subprocess_exec`.
    Exec(OsString, Vec<OsString>),
    /// `subprocess_shell`: `/bin/sh -c cmd` (`%COMSPEC% /c "cmd"` on
    /// Windows).
    Shell(OsString),
}

impl Argv {
    /// The program as messages name it.
    pub fn program(&self) -> &std::ffi::OsStr {
        match self {
            Argv::Exec(p, _) => p,
            #[cfg(unix)]
            Argv::Shell(_) => std::ffi::OsStr::new("/bin/sh"),
            #[cfg(windows)]
            Argv::Shell(_) => std::ffi::OsStr::new("cmd.exe"),
        }
    }
}

/// What a platform supplies to [`prepare_command`]: a pipe for one
/// standard stream, and its null device.
pub(crate) trait Streams {
    /// A pipe for a child's stream, as `(child's end, loop's end)`; the
    /// child writes to it if `child_writes` (stdout, stderr), else reads
    /// from it (stdin).
    fn pipe(child_writes: bool) -> std::io::Result<(File, File)>;
    /// The null device's path (`/dev/null`, `NUL`).
    const DEVNULL: &'static str;
}

/// One standard stream: what the child gets (`None` inherits), and the
/// loop's end of its pipe.
struct Side {
    child: Option<File>,
    parent: Option<File>,
}

fn side<S: Streams>(stdio: &Stdio, child_writes: bool, name: &str) -> Result<Side> {
    Ok(match stdio {
        Stdio::Inherit => Side {
            child: None,
            parent: None,
        },
        Stdio::Pipe => {
            let (child, parent) = S::pipe(child_writes)?;
            Side {
                child: Some(child),
                parent: Some(parent),
            }
        }
        Stdio::DevNull => Side {
            child: Some(
                std::fs::OpenOptions::new()
                    .read(!child_writes)
                    .write(child_writes)
                    .open(S::DEVNULL)?,
            ),
            parent: None,
        },
        Stdio::File(f) => Side {
            child: Some(f.try_clone()?),
            parent: None,
        },
        Stdio::Stdout => {
            return Err(Error::value(format!(
                "STDOUT can only be used for stderr, not for {name}"
            )))
        }
    })
}

fn to_std(f: Option<File>) -> std::process::Stdio {
    f.map_or_else(std::process::Stdio::inherit, std::process::Stdio::from)
}

/// The loop's ends of a child's pipes, each `None` unless that stream is
/// a pipe (what the OS's `spawn` returns beside the child).
pub(crate) struct LoopEnds {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

/// What both platforms set alike on the `Command` that starts `argv`:
/// the standard streams (pipes from `S`, `STDOUT` for stderr as the
/// child's stdout), `env` and `cwd`. `cmd` is the platform's command for
/// the program or shell line. Returns the loop's ends; the child's are in
/// `cmd` (drop it after spawning, so that the loop sees the streams end).
pub(crate) fn prepare_command<S: Streams>(
    cmd: &mut std::process::Command,
    options: &SubprocessOptions,
) -> Result<LoopEnds> {
    let stdin = side::<S>(&options.stdin, false, "stdin")?;
    let stdout = side::<S>(&options.stdout, true, "stdout")?;
    let stderr = match &options.stderr {
        Stdio::Stdout => Side {
            child: Some(match &stdout.child {
                Some(f) => f.try_clone()?,
                None => stdout_of_this_process()?,
            }),
            parent: None,
        },
        other => side::<S>(other, true, "stderr")?,
    };
    cmd.stdin(to_std(stdin.child))
        .stdout(to_std(stdout.child))
        .stderr(to_std(stderr.child));
    if let Some(env) = &options.env {
        cmd.env_clear();
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
    }
    if let Some(cwd) = &options.cwd {
        cmd.current_dir(cwd);
    }
    Ok(LoopEnds {
        stdin: stdin.parent,
        stdout: stdout.parent,
        stderr: stderr.parent,
    })
}

/// A duplicate of this process's stdout, for `stderr=STDOUT` when stdout
/// is inherited.
fn stdout_of_this_process() -> std::io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        Ok(File::from(std::io::stdout().as_fd().try_clone_to_owned()?))
    }
    #[cfg(windows)]
    {
        use std::os::windows::io::AsHandle;
        Ok(File::from(
            std::io::stdout().as_handle().try_clone_to_owned()?,
        ))
    }
}

/// Python's message for a failed spawn: `[Errno 2] No such file or
/// directory: 'prog'`.
pub(crate) fn spawn_error(e: &std::io::Error, argv: &Argv, options: &SubprocessOptions) -> Error {
    // std reports a program it could not find on `PATH` itself, without
    // an OS code; Windows' own is ERROR_FILE_NOT_FOUND, as Python's.
    #[cfg(windows)]
    let found;
    #[cfg(windows)]
    let e = if e.raw_os_error().is_none() && e.kind() == std::io::ErrorKind::NotFound {
        found = std::io::Error::from_raw_os_error(2);
        &found
    } else {
        e
    };
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => &text[..i],
        None => &text,
    };
    // A missing working directory is what Python names, when it is one.
    let name = match &options.cwd {
        Some(cwd)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) && !cwd.is_dir() =>
        {
            cwd.as_os_str().to_owned()
        }
        _ => argv.program().to_owned(),
    };
    Error::os(e, format!("{text}: '{}'", name.to_string_lossy()))
}

/// A queued protocol call.
type Call = Box<dyn FnOnce()>;

/// asyncio's `BaseSubprocessTransport`.
pub struct BaseSubprocessTransport {
    lp: Rc<dyn BaseLoop>,
    this: Weak<BaseSubprocessTransport>,
    protocol: RefCell<Option<Rc<dyn SubprocessProtocol>>>,
    child: os::Child,
    closed: Cell<bool>,
    returncode: Cell<Option<i32>>,
    /// The protocols of fds 0, 1 and 2, for those that are pipes.
    pipes: [RefCell<Option<Rc<PipeProto>>>; 3],
    /// Calls made before `connection_made`; `None` after it.
    pending: RefCell<Option<VecDeque<Call>>>,
    finished: Cell<bool>,
    exit_waiters: RefCell<Vec<Future<i32>>>,
}

impl BaseSubprocessTransport {
    fn me(&self) -> Rc<BaseSubprocessTransport> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    fn protocol(&self) -> Option<Rc<dyn SubprocessProtocol>> {
        self.protocol.borrow().clone()
    }

    /// Runs `f` on the protocol from the ready queue, or queues it until
    /// `connection_made` (asyncio's `_call`).
    fn call(&self, f: impl FnOnce(&dyn SubprocessProtocol) + 'static, what: &'static str) {
        let me = self.me();
        let call: Call = Box::new(move || {
            let Some(p) = me.protocol() else { return };
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| f(&*p))) {
                me.report(Error::from_panic(e), what);
            }
        });
        if let Some(q) = self.pending.borrow_mut().as_mut() {
            q.push_back(call);
            return;
        }
        let _ = self.lp.call_soon_dyn(call, None);
    }

    fn report(&self, exc: Error, message: &str) {
        let tr: Rc<dyn Any> = Rc::new(self.me() as Rc<dyn SubprocessTransport>);
        let proto: Rc<dyn Any> = Rc::new(self.protocol());
        lifecycle::report(&*self.lp, exc, message, tr, proto);
    }

    fn debug(&self, what: &str) {
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} {what}", self.repr()));
        }
    }

    fn repr(&self) -> String {
        let mut s = format!("<SubprocessTransport pid={}", self.child.pid());
        if self.closed.get() {
            s.push_str(" closed");
        }
        match self.returncode.get() {
            Some(rc) => s.push_str(&format!(" returncode={rc}")),
            None => s.push_str(" running"),
        }
        s.push('>');
        s
    }

    /// A pipe's end (asyncio's `_pipe_connection_lost`).
    fn pipe_connection_lost(&self, fd: i32, exc: Option<Error>) {
        self.call(
            move |p| p.pipe_connection_lost(fd, exc),
            "Exception in callback SubprocessProtocol.pipe_connection_lost()",
        );
        self.try_finish();
    }

    /// Output from fd 1 or 2 (asyncio's `_pipe_data_received`).
    fn pipe_data_received(&self, fd: i32, data: &[u8]) {
        let data = data.to_vec();
        self.call(
            move |p| p.pipe_data_received(fd, &data),
            "Exception in callback SubprocessProtocol.pipe_data_received()",
        );
    }

    /// The child exited and was reaped (asyncio's `_process_exited`).
    fn process_exited(&self, returncode: i32) {
        debug_assert!(self.returncode.get().is_none());
        if self.lp.get_debug() {
            log::log(
                Level::Info,
                &format!("{} exited with return code {returncode}", self.repr()),
            );
        }
        self.returncode.set(Some(returncode));
        self.call(
            |p| p.process_exited(),
            "Exception in callback SubprocessProtocol.process_exited()",
        );
        // The waiters resolve now, not when the pipes close.
        for w in self.exit_waiters.borrow_mut().drain(..) {
            if !w.done() {
                let _ = w.set_result(returncode);
            }
        }
        self.try_finish();
    }

    /// `connection_lost` once the child exited and every pipe closed.
    fn try_finish(&self) {
        if self.finished.get() || self.returncode.get().is_none() {
            return;
        }
        let all_closed = self
            .pipes
            .iter()
            .all(|p| p.borrow().as_ref().is_none_or(|p| p.disconnected.get()));
        if !all_closed {
            return;
        }
        self.finished.set(true);
        let me = self.me();
        let call: Call = Box::new(move || me.call_connection_lost());
        if let Some(q) = self.pending.borrow_mut().as_mut() {
            q.push_back(call);
            return;
        }
        lifecycle::call_soon_or_now(&*self.lp, call);
    }

    /// asyncio's `_call_connection_lost`: the protocol's last call; then
    /// the transport lets go of it and of the pipes.
    fn call_connection_lost(&self) {
        if let Some(p) = self.protocol() {
            if let Err(e) = catch_unwind(AssertUnwindSafe(|| p.connection_lost(None))) {
                self.report(
                    Error::from_panic(e),
                    "Exception in callback SubprocessProtocol.connection_lost()",
                );
            }
        }
        self.protocol.borrow_mut().take();
    }

    /// Connects the pipes, then `connection_made` and the queued calls
    /// (asyncio's `_connect_pipes`). The pipes' protocols are in place
    /// before any connects, so that no pipe's end is missed.
    async fn connect_pipes(
        self: Rc<Self>,
        stdin: Option<File>,
        stdout: Option<File>,
        stderr: Option<File>,
    ) -> Result<()> {
        let ends = [(0, stdin), (1, stdout), (2, stderr)];
        for (fd, _) in ends.iter().filter(|(_, f)| f.is_some()) {
            *self.pipes[*fd as usize].borrow_mut() = Some(Rc::new(PipeProto {
                proc: RefCell::new(Some(self.clone())),
                fd: *fd,
                pipe: TransportCell::default(),
                disconnected: Cell::new(false),
            }));
        }
        for (fd, file) in ends {
            let Some(file) = file else { continue };
            let proto = self.pipes[fd as usize].borrow().clone().expect("set above");
            let factory: ProtocolFactory = Rc::new(move || proto.clone() as Rc<dyn Protocol>);
            let connect = if fd == 0 {
                self.lp.connect_write_pipe_dyn(factory, file)
            } else {
                self.lp.connect_read_pipe_dyn(factory, file)
            };
            let (transport, _) = connect.await?;
            if self.closed.get() {
                transport.close(); // closed while connecting
            }
        }
        let me = self.clone();
        self.lp.call_soon_dyn(
            Box::new(move || {
                let Some(p) = me.protocol() else { return };
                let t: Rc<dyn SubprocessTransport> = me.clone();
                if let Err(e) = catch_unwind(AssertUnwindSafe(|| p.connection_made(t))) {
                    me.report(
                        Error::from_panic(e),
                        "Exception in callback SubprocessProtocol.connection_made()",
                    );
                }
            }),
            None,
        )?;
        let queued = self.pending.borrow_mut().take().unwrap_or_default();
        for call in queued {
            self.lp.call_soon_dyn(call, None)?;
        }
        Ok(())
    }
}

/// asyncio's `WriteSubprocessPipeProto` / `ReadSubprocessPipeProto`: the
/// protocol of one of the child's pipes, which forwards to the
/// subprocess transport.
struct PipeProto {
    /// Dropped at the pipe's end, which breaks the cycle through the
    /// subprocess transport.
    proc: RefCell<Option<Rc<BaseSubprocessTransport>>>,
    fd: i32,
    pipe: TransportCell,
    disconnected: Cell<bool>,
}

impl PipeProto {
    fn proc(&self) -> Option<Rc<BaseSubprocessTransport>> {
        self.proc.borrow().clone()
    }
}

impl BaseProtocol for PipeProto {
    fn connection_lost(&self, exc: Option<Error>) {
        self.disconnected.set(true);
        if let Some(proc) = self.proc.borrow_mut().take() {
            proc.pipe_connection_lost(self.fd, exc);
        }
    }

    fn pause_writing(&self) {
        if let Some(p) = self.proc().and_then(|t| t.protocol()) {
            p.pause_writing();
        }
    }

    fn resume_writing(&self) {
        if let Some(p) = self.proc().and_then(|t| t.protocol()) {
            p.resume_writing();
        }
    }
}

impl Protocol for PipeProto {
    fn connection_made(&self, transport: Rc<dyn Transport>) {
        self.pipe.set(transport);
    }

    fn data_received(&self, data: &[u8]) {
        if let Some(proc) = self.proc() {
            proc.pipe_data_received(self.fd, data);
        }
    }
}

impl BaseTransport for BaseSubprocessTransport {
    fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        match name {
            "subprocess" => Some(ExtraInfo::Text(self.child.pid().to_string())),
            _ => None,
        }
    }

    fn is_closing(&self) -> bool {
        self.closed.get()
    }

    fn close(&self) {
        if self.closed.replace(true) {
            return;
        }
        for slot in &self.pipes {
            let pipe = slot.borrow().as_ref().and_then(|p| p.pipe.get());
            if let Some(t) = pipe {
                t.close();
            }
        }
        if self.returncode.get().is_none() {
            if self.lp.get_debug() {
                log::log(
                    Level::Warning,
                    &format!("Close running child process: kill {}", self.repr()),
                );
            }
            // An exited child not reaped yet ignores it; nothing to report.
            let _ = self.child.kill();
        }
    }
}

impl SubprocessTransport for BaseSubprocessTransport {
    fn get_pid(&self) -> u32 {
        self.child.pid()
    }

    fn get_returncode(&self) -> Option<i32> {
        self.returncode.get()
    }

    fn get_pipe_transport(&self, fd: i32) -> Option<Rc<dyn Transport>> {
        let slot = self.pipes.get(usize::try_from(fd).ok()?)?;
        slot.borrow().as_ref().and_then(|p| p.pipe.get())
    }

    fn send_signal(&self, signal: i32) -> Result<()> {
        self.child.send_signal(signal)
    }

    fn terminate(&self) -> Result<()> {
        self.child.terminate()
    }

    fn kill(&self) -> Result<()> {
        self.child.kill()
    }

    fn wait(&self) -> LocalBoxFuture<'static, Result<i32>> {
        if let Some(rc) = self.returncode.get() {
            return Box::pin(async move { Ok(rc) });
        }
        let f = self.lp.create_future::<i32>();
        self.exit_waiters.borrow_mut().push(f.clone());
        Box::pin(async move { f.await })
    }

    fn set_protocol(&self, protocol: Rc<dyn SubprocessProtocol>) {
        *self.protocol.borrow_mut() = Some(protocol);
    }

    fn get_protocol(&self) -> Option<Rc<dyn SubprocessProtocol>> {
        self.protocol()
    }
}

// ----- the loop methods ------------------------------------------------------------

/// asyncio's checks of the keywords it refuses.
fn check_options(options: &SubprocessOptions, shell: bool) -> Result<()> {
    if options.universal_newlines {
        return Err(Error::value("universal_newlines must be False"));
    }
    match (options.shell, shell) {
        (Some(true), false) => return Err(Error::value("shell must be False")),
        (Some(false), true) => return Err(Error::value("shell must be True")),
        _ => {}
    }
    if options.bufsize != 0 {
        return Err(Error::value("bufsize must be 0"));
    }
    if options.text {
        return Err(Error::value("text must be False"));
    }
    if options.encoding.is_some() {
        return Err(Error::value("encoding must be None"));
    }
    if options.errors.is_some() {
        return Err(Error::value("errors must be None"));
    }
    Ok(())
}

/// `loop.subprocess_exec`.
pub fn subprocess_exec(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: SubprocessProtocolFactory,
    program: OsString,
    args: Vec<OsString>,
    options: SubprocessOptions,
) -> LocalBoxFuture<'static, Result<SubprocessPair>> {
    start(
        lp,
        protocol_factory,
        Argv::Exec(program, args),
        options,
        false,
    )
}

/// `loop.subprocess_shell`.
pub fn subprocess_shell(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: SubprocessProtocolFactory,
    cmd: OsString,
    options: SubprocessOptions,
) -> LocalBoxFuture<'static, Result<SubprocessPair>> {
    start(lp, protocol_factory, Argv::Shell(cmd), options, true)
}

/// asyncio's `_make_subprocess_transport` and the wait for its pipes.
fn start(
    lp: Rc<dyn BaseLoop>,
    protocol_factory: SubprocessProtocolFactory,
    argv: Argv,
    options: SubprocessOptions,
    shell: bool,
) -> LocalBoxFuture<'static, Result<SubprocessPair>> {
    Box::pin(async move {
        check_options(&options, shell)?;
        if lp.is_closed() {
            return Err(Error::loop_closed());
        }
        if argv.program().is_empty() {
            return Err(Error::value("the program name is empty"));
        }
        lp._check_pipes()?;
        let protocol = protocol_factory();
        let (child, pipes) = os::spawn(&argv, &options)?;
        let transport = Rc::new_cyclic(|this| BaseSubprocessTransport {
            lp: lp.clone(),
            this: this.clone(),
            protocol: RefCell::new(Some(protocol.clone())),
            child,
            closed: Cell::new(false),
            returncode: Cell::new(None),
            pipes: Default::default(),
            pending: RefCell::new(Some(VecDeque::new())),
            finished: Cell::new(false),
            exit_waiters: RefCell::new(Vec::new()),
        });
        transport.debug(&format!("created: {:?}", argv.program().to_string_lossy()));
        // From here the child is watched until reaped, whatever happens.
        let me = transport.clone();
        if let Err(e) = os::watch(&lp, &transport.child, move |rc| me.process_exited(rc)) {
            let _ = transport.child.kill();
            return Err(e);
        }
        let guard = CloseOnDrop::new(transport.clone() as Rc<dyn SubprocessTransport>);
        // The pipes connect in a task of their own, which goes on if this
        // call is cancelled (asyncio's `_connect_pipes`): the protocol
        // still hears how it all ended.
        let waiter = lp.create_future::<()>();
        let w = waiter.clone();
        let connect = transport
            .clone()
            .connect_pipes(pipes.stdin, pipes.stdout, pipes.stderr);
        lp.create_task(async move {
            let r = connect.await;
            if !w.cancelled() {
                let _ = match r {
                    Ok(()) => w.set_result(()),
                    Err(e) => w.set_exception(e),
                };
            }
            Ok(())
        })?;
        match waiter.await {
            Ok(()) => {
                guard.defuse();
                Ok((transport as Rc<dyn SubprocessTransport>, protocol))
            }
            Err(e) => {
                let t = guard.defuse();
                t.close();
                let _ = t.wait().await;
                Err(e)
            }
        }
    })
}
