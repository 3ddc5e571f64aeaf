//! From CPython's `test_subprocess.py` (`SubprocessMixin`) and the
//! subprocess cases of `test_events.py`, plus the bugs peers shipped:
//! zombies after `close()` (uvloop #128), descriptors leaked by failed
//! spawns (uvloop #185), the loop blocked while spawning (uvloop #118), an
//! assertion on a full stdin pipe (uvloop #317), `wait()` held up by a
//! grandchild (CPython gh-119710), and no return code while the loop is
//! busy (CPython gh-127661).
//!
//! The children are this test binary in a role ([`crate::child`]). After
//! every case the children it started are reaped and the descriptors its
//! transports held (pipes, pidfds) are closed (`Spawn::check_clean`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use loop_api::events::options::{Stdio, SubprocessOptions};
use loop_api::protocols::{BaseProtocol, SubprocessProtocol, TransportCell};
use loop_api::transports::{ExtraInfo, SubprocessTransport, Transport};
use loop_api::{Error, EventLoopExt, Loop, Result};

use crate::cases::test_server::{run, run_until};
use crate::child;
use crate::util::{capture_exceptions, run_once, Log};
use crate::{Ctx, Feature};

// ----- the recording protocol ---------------------------------------------------------

/// What the transport did to the protocol, in order.
#[derive(Clone, Debug)]
enum Ev {
    Made,
    Data(i32, Vec<u8>),
    PipeLost(i32, Option<Error>),
    Exited,
    Lost(Option<Error>),
    Pause,
    Resume,
}

#[derive(Default)]
struct Proc {
    transport: TransportCell<dyn SubprocessTransport>,
    events: Log<Ev>,
    /// `pipe_data_received` panics.
    panic_on_data: bool,
    /// Bytes received per fd (kept even when `count_only`).
    counts: [Cell<usize>; 3],
    /// Data is counted and checked against the `produce` pattern, not kept.
    count_only: bool,
    pattern_ok: Cell<bool>,
}

impl Proc {
    fn new() -> Rc<Proc> {
        Rc::new(Proc {
            pattern_ok: Cell::new(true),
            ..Default::default()
        })
    }

    fn out(&self, fd: i32) -> Vec<u8> {
        let mut v = Vec::new();
        for e in self.events.get() {
            if let Ev::Data(f, d) = e {
                if f == fd {
                    v.extend_from_slice(&d);
                }
            }
        }
        v
    }

    fn has(&self, f: impl Fn(&Ev) -> bool) -> bool {
        self.events.get().iter().any(f)
    }

    fn count(&self, f: impl Fn(&Ev) -> bool) -> usize {
        self.events.get().iter().filter(|e| f(e)).count()
    }

    fn lost(&self) -> bool {
        self.has(|e| matches!(e, Ev::Lost(_)))
    }

    fn exited(&self) -> bool {
        self.has(|e| matches!(e, Ev::Exited))
    }

    fn pipe_lost(&self, fd: i32) -> Option<Option<Error>> {
        self.events.get().into_iter().find_map(|e| match e {
            Ev::PipeLost(f, x) if f == fd => Some(x),
            _ => None,
        })
    }
}

impl BaseProtocol for Proc {
    fn connection_lost(&self, exc: Option<Error>) {
        self.events.push(Ev::Lost(exc));
    }
    fn pause_writing(&self) {
        self.events.push(Ev::Pause);
    }
    fn resume_writing(&self) {
        self.events.push(Ev::Resume);
    }
}

impl SubprocessProtocol for Proc {
    fn connection_made(&self, transport: Rc<dyn SubprocessTransport>) {
        self.transport.set(transport);
        self.events.push(Ev::Made);
    }
    fn pipe_data_received(&self, fd: i32, data: &[u8]) {
        if self.panic_on_data {
            panic!("pipe_data_received fails on purpose");
        }
        let c = &self.counts[fd as usize];
        if self.count_only {
            let start = c.get();
            let ok = data
                .iter()
                .enumerate()
                .all(|(i, b)| *b == ((start + i) * 31 % 251) as u8);
            if !ok {
                self.pattern_ok.set(false);
            }
        } else {
            self.events.push(Ev::Data(fd, data.to_vec()));
        }
        c.set(c.get() + data.len());
    }
    fn pipe_connection_lost(&self, fd: i32, exc: Option<Error>) {
        self.events.push(Ev::PipeLost(fd, exc));
    }
    fn process_exited(&self) {
        self.events.push(Ev::Exited);
    }
}

// ----- spawning and the after-case checks ----------------------------------------------

/// The children a case started and the descriptors their transports
/// held, for [`Spawn::check_clean`].
#[derive(Default)]
struct Spawn {
    pids: RefCell<Vec<u32>>,
    #[cfg(unix)]
    pipes: RefCell<Vec<u64>>,
}

/// Options that run a child role: the marker in the environment, the
/// rest as given.
fn child_options(mut options: SubprocessOptions) -> SubprocessOptions {
    let mut env = options.env.take().unwrap_or_else(|| {
        std::env::vars_os()
            .filter(|(k, _)| k != child::ENV)
            .collect()
    });
    env.push((child::ENV.into(), "1".into()));
    options.env = Some(env);
    options
}

impl Spawn {
    fn new() -> Spawn {
        Spawn::default()
    }

    /// Notes a transport's child and pipes.
    fn track(&self, t: &Rc<dyn SubprocessTransport>) {
        self.pids.borrow_mut().push(t.get_pid());
        #[cfg(unix)]
        for fd in 0..3 {
            if let Some(p) = t.get_pipe_transport(fd) {
                if let Some(ExtraInfo::Fd(raw)) = p.get_extra_info("pipe") {
                    if let Some(ino) = pipe_inode(raw) {
                        self.pipes.borrow_mut().push(ino);
                    }
                }
            }
        }
    }

    /// Runs `role` with `args` and waits for `connection_made`.
    fn exec(
        &self,
        lp: &Loop,
        proc: &Rc<Proc>,
        role: &str,
        args: &[&str],
        options: SubprocessOptions,
    ) -> Result<Rc<dyn SubprocessTransport>> {
        let (program, argv) = child::command(role, args);
        let p = proc.clone();
        let fut = lp.subprocess_exec(move || p.clone(), program, argv, child_options(options));
        let (t, _) = run(lp, fut)?;
        self.track(&t);
        Ok(t)
    }

    /// Runs a shell command line and waits for `connection_made`.
    #[cfg_attr(not(unix), allow(dead_code))]
    fn shell(
        &self,
        lp: &Loop,
        proc: &Rc<Proc>,
        cmd: &str,
        options: SubprocessOptions,
    ) -> Result<Rc<dyn SubprocessTransport>> {
        let p = proc.clone();
        let fut = lp.subprocess_shell(move || p.clone(), cmd, options);
        let (t, _) = run(lp, fut)?;
        self.track(&t);
        Ok(t)
    }

    /// No child of the case is left unreaped, and no descriptor of its
    /// transports is open. Children the loop hands to its background
    /// reaper (a loop closed before they exited) get a moment.
    fn check_clean(&self) {
        // Windows has no zombies, and its handle count is shared with the
        // cases running beside this one: only the exits are checked (the
        // spawn-failure case counts handles in a process of its own).
        #[cfg(windows)]
        {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            for &pid in self.pids.borrow().iter() {
                while !reaped(pid) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "child {pid} still runs"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        #[cfg(unix)]
        {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            for &pid in self.pids.borrow().iter() {
                while !reaped(pid) {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "child {pid} is still unreaped"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
            let pids = self.pids.borrow();
            let pipes = self.pipes.borrow();
            for (fd, link, info) in open_fds() {
                if let Some(ino) = link
                    .strip_prefix("pipe:[")
                    .and_then(|r| r.strip_suffix(']'))
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    assert!(
                        !pipes.contains(&ino),
                        "fd {fd}: a child's pipe is still open"
                    );
                }
                if link.contains("pidfd") {
                    for pid in pids.iter() {
                        assert!(
                            !info.lines().any(|l| l == format!("Pid:\t{pid}")),
                            "fd {fd}: the pidfd of child {pid} is still open"
                        );
                    }
                }
            }
        }
    }
}

/// True once `pid` exited (Windows has no zombies: a process is gone or
/// signalled once it exited).
#[cfg(windows)]
fn reaped(pid: u32) -> bool {
    use windows_sys::Win32::Foundation::{CloseHandle, WAIT_OBJECT_0};
    use windows_sys::Win32::System::Threading::{
        OpenProcess, WaitForSingleObject, PROCESS_SYNCHRONIZE,
    };
    // SAFETY: opens a handle to the process (if any) and closes it.
    unsafe {
        let h = OpenProcess(PROCESS_SYNCHRONIZE, 0, pid);
        if h.is_null() {
            return true;
        }
        let done = WaitForSingleObject(h, 0) == WAIT_OBJECT_0;
        CloseHandle(h);
        done
    }
}

/// Kills process `pid` (the case's own child or grandchild).
fn kill_pid(pid: u32) {
    #[cfg(unix)]
    // SAFETY: kill of a process the case started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    #[cfg(windows)]
    // SAFETY: opens, terminates and closes a process the case started.
    unsafe {
        use windows_sys::Win32::System::Threading::{
            OpenProcess, TerminateProcess, PROCESS_TERMINATE,
        };
        let h = OpenProcess(PROCESS_TERMINATE, 0, pid);
        if !h.is_null() {
            TerminateProcess(h, 1);
            windows_sys::Win32::Foundation::CloseHandle(h);
        }
    }
}

/// True once `pid` is no child of ours left to reap.
#[cfg(unix)]
fn reaped(pid: u32) -> bool {
    // SAFETY: waitid with WNOWAIT only looks; a zeroed siginfo is a valid
    // out-parameter.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD)
    }
}

/// The inode of the pipe behind `fd`, if it is one.
#[cfg(unix)]
fn pipe_inode(fd: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()?;
    let s = link.to_string_lossy().into_owned();
    s.strip_prefix("pipe:[")?.strip_suffix(']')?.parse().ok()
}

/// `(fd, link target, fdinfo)` of every open descriptor (Linux).
#[cfg(unix)]
fn open_fds() -> Vec<(i32, String, String)> {
    let mut v = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return v;
    };
    for e in dir.flatten() {
        let Ok(fd) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let link = std::fs::read_link(e.path())
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default();
        let info = if link.contains("pidfd") {
            std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default()
        } else {
            String::new()
        };
        v.push((fd, link, info));
    }
    v
}

/// Runs until `connection_lost`, then checks asyncio's order: it ran once
/// and last, after `process_exited` and every pipe's end, and everything
/// came after `connection_made`.
fn wait_done(lp: &Loop, proc: &Rc<Proc>) -> Result<()> {
    run_until(lp, "connection_lost", || proc.lost())?;
    run_once(lp)?;
    run_once(lp)?;
    let ev = proc.events.get();
    assert!(
        matches!(ev.first(), Some(Ev::Made)),
        "connection_made first: {ev:?}"
    );
    assert_eq!(proc.count(|e| matches!(e, Ev::Lost(_))), 1, "{ev:?}");
    assert!(
        matches!(ev.last(), Some(Ev::Lost(None))),
        "connection_lost(None) last: {ev:?}"
    );
    assert_eq!(
        proc.count(|e| matches!(e, Ev::Exited)),
        1,
        "process_exited once: {ev:?}"
    );
    Ok(())
}

fn stdin_of(t: &Rc<dyn SubprocessTransport>) -> Rc<dyn Transport> {
    t.get_pipe_transport(0).expect("stdin is a pipe")
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn opts() -> SubprocessOptions {
    SubprocessOptions::default()
}

#[cfg(unix)]
const SIGTERM: i32 = libc::SIGTERM;
#[cfg(unix)]
const SIGKILL: i32 = libc::SIGKILL;

/// `SIGTERM` as Python numbers it on Windows (the one signal that
/// terminates there).
#[cfg(windows)]
const SIGTERM: i32 = 15;

/// The return code of a child ended by `terminate()`: minus the signal on
/// Unix; on Windows `TerminateProcess`'s exit code, 1, as Python's.
#[cfg(unix)]
const TERMINATED: i32 = -SIGTERM;
#[cfg(windows)]
const TERMINATED: i32 = 1;

/// The return code of a child ended by `kill()`.
#[cfg(unix)]
const KILLED: i32 = -SIGKILL;
#[cfg(windows)]
const KILLED: i32 = 1;

/// A signal `send_signal` delivers, and the return code it leaves: on
/// Windows only `SIGTERM` (and the console events) exist.
#[cfg(unix)]
const OTHER_SIGNAL: (i32, i32) = (libc::SIGHUP, -libc::SIGHUP);
#[cfg(windows)]
const OTHER_SIGNAL: (i32, i32) = (SIGTERM, 1);

/// `ProcessLookupError`'s errno (3 on Windows too, as Python's `errno.ESRCH`).
#[cfg(unix)]
const ESRCH: i32 = libc::ESRCH;
#[cfg(windows)]
const ESRCH: i32 = 3;

// ----- pipes and data ----------------------------------------------------------------

/// `cat`: what goes to stdin comes back on stdout; EOF ends it with 0.
pub fn test_stdin_stdout(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "cat", &[], opts())?;
    assert_eq!(t.get_returncode(), None);
    let stdin = stdin_of(&t);
    stdin.write(b"some data")?;
    run_until(&lp, "the echo", || proc.out(1) == b"some data")?;
    stdin.write_eof()?;
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(0));
    assert!(proc.out(2).is_empty());
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// 10 MB through `cat`'s stdin and stdout, byte-exact.
pub fn test_cat_10mb(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Rc::new(Proc {
        count_only: true,
        pattern_ok: Cell::new(true),
        ..Default::default()
    });
    let t = s.exec(&lp, &proc, "cat", &[], opts())?;
    let data = pattern(10 * 1024 * 1024);
    let stdin = stdin_of(&t);
    for chunk in data.chunks(256 * 1024) {
        stdin.write(chunk)?;
    }
    stdin.write_eof()?;
    wait_done(&lp, &proc)?;
    assert_eq!(proc.counts[1].get(), data.len());
    assert!(proc.pattern_ok.get(), "bytes differ");
    assert_eq!(t.get_returncode(), Some(0));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// 10 MB the child writes arrive whole on fd 1.
pub fn test_read_stdout_10mb(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Rc::new(Proc {
        count_only: true,
        pattern_ok: Cell::new(true),
        ..Default::default()
    });
    let n = 10 * 1024 * 1024;
    let t = s.exec(&lp, &proc, "produce", &[&n.to_string()], opts())?;
    wait_done(&lp, &proc)?;
    assert_eq!(proc.counts[1].get(), n);
    assert!(proc.pattern_ok.get(), "bytes differ");
    assert_eq!(t.get_returncode(), Some(0));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `stderr=STDOUT`: both streams arrive on fd 1; there is no fd 2 pipe.
pub fn test_stderr_redirect_to_stdout(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(
        &lp,
        &proc,
        "both",
        &["OUT", "ERR"],
        SubprocessOptions {
            stderr: Stdio::Stdout,
            ..opts()
        },
    )?;
    assert!(t.get_pipe_transport(2).is_none());
    wait_done(&lp, &proc)?;
    assert_eq!(proc.out(1), b"OUTERR");
    assert!(proc.pipe_lost(2).is_none(), "no fd 2 pipe");
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// stdout and stderr on their own pipes.
pub fn test_stdout_stderr_separate(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let _t = s.exec(&lp, &proc, "both", &["to out", "to err"], opts())?;
    wait_done(&lp, &proc)?;
    assert_eq!(proc.out(1), b"to out");
    assert_eq!(proc.out(2), b"to err");
    assert!(matches!(proc.pipe_lost(1), Some(None)));
    assert!(matches!(proc.pipe_lost(2), Some(None)));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `STDOUT` for stdin or stdout is asyncio's `ValueError`.
pub fn test_stdout_constant_only_for_stderr(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let proc = Proc::new();
    let (program, argv) = child::command("exit", &["0"]);
    let p = proc.clone();
    let fut = lp.subprocess_exec(
        move || p.clone(),
        program,
        argv,
        SubprocessOptions {
            stdout: Stdio::Stdout,
            ..opts()
        },
    );
    let r = run(&lp, fut);
    assert!(matches!(r, Err(Error::Value(_))), "{:?}", r.err());
    lp.close()
}

/// `stdin=DEVNULL`: `cat` sees EOF at once; there is no fd 0 pipe.
pub fn test_devnull_input(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(
        &lp,
        &proc,
        "cat",
        &[],
        SubprocessOptions {
            stdin: Stdio::DevNull,
            ..opts()
        },
    )?;
    assert!(t.get_pipe_transport(0).is_none());
    wait_done(&lp, &proc)?;
    assert!(proc.out(1).is_empty());
    assert_eq!(t.get_returncode(), Some(0));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `stdout=DEVNULL`: the output goes nowhere; no fd 1 pipe.
pub fn test_devnull_output(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(
        &lp,
        &proc,
        "produce",
        &["100000"],
        SubprocessOptions {
            stdout: Stdio::DevNull,
            ..opts()
        },
    )?;
    assert!(t.get_pipe_transport(1).is_none());
    wait_done(&lp, &proc)?;
    assert!(proc.out(1).is_empty());
    assert_eq!(t.get_returncode(), Some(0));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `stderr=DEVNULL`.
pub fn test_devnull_error(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(
        &lp,
        &proc,
        "both",
        &["out", "err"],
        SubprocessOptions {
            stderr: Stdio::DevNull,
            ..opts()
        },
    )?;
    assert!(t.get_pipe_transport(2).is_none());
    wait_done(&lp, &proc)?;
    assert_eq!(proc.out(1), b"out");
    assert!(proc.out(2).is_empty());
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// No pipes at all: `connection_made`, `process_exited`, `connection_lost`.
pub fn test_no_pipes(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(
        &lp,
        &proc,
        "exit",
        &["3"],
        SubprocessOptions {
            stdin: Stdio::DevNull,
            stdout: Stdio::DevNull,
            stderr: Stdio::DevNull,
            ..opts()
        },
    )?;
    for fd in 0..3 {
        assert!(t.get_pipe_transport(fd).is_none());
    }
    wait_done(&lp, &proc)?;
    assert!(matches!(
        proc.events.get()[..],
        [Ev::Made, Ev::Exited, Ev::Lost(None)]
    ));
    assert_eq!(t.get_returncode(), Some(3));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// An open file as stdout: the child writes into it.
pub fn test_stdout_to_file(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let path = crate::util::TempPath::new("stdout-file");
    let file = std::fs::File::create(path.path())?;
    let proc = Proc::new();
    let t = s.exec(
        &lp,
        &proc,
        "echo",
        &["into", "a", "file"],
        SubprocessOptions {
            stdout: Stdio::File(Rc::new(file)),
            ..opts()
        },
    )?;
    assert!(t.get_pipe_transport(1).is_none());
    wait_done(&lp, &proc)?;
    assert_eq!(std::fs::read(path.path())?, b"into a file");
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// An open file as stdin: the child reads it.
pub fn test_stdin_from_file(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let path = crate::util::TempPath::new("stdin-file");
    std::fs::write(path.path(), b"from a file")?;
    let proc = Proc::new();
    let _t = s.exec(
        &lp,
        &proc,
        "cat",
        &[],
        SubprocessOptions {
            stdin: Stdio::File(Rc::new(std::fs::File::open(path.path())?)),
            ..opts()
        },
    )?;
    wait_done(&lp, &proc)?;
    assert_eq!(proc.out(1), b"from a file");
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `write_eof` on stdin is how `cat` learns it is done.
pub fn test_stdin_write_eof(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "count", &[], opts())?;
    let stdin = stdin_of(&t);
    stdin.writelines(&[b"12345", b"678"])?;
    stdin.write_eof()?;
    wait_done(&lp, &proc)?;
    assert_eq!(proc.out(1), b"8");
    assert!(matches!(proc.pipe_lost(0), Some(None)));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// Arguments reach the child as given: spaces, quotes, non-ASCII.
pub fn test_exec_arguments(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let _t = s.exec(&lp, &proc, "echo", &["a b", "\"q\"", "é", ""], opts())?;
    wait_done(&lp, &proc)?;
    assert_eq!(String::from_utf8_lossy(&proc.out(1)), "a b \"q\" é ");
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `get_pipe_transport`: a write transport for 0, read transports for 1
/// and 2, nothing for other numbers; each has `get_extra_info("pipe")`.
pub fn test_get_pipe_transport(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "wait-stdin", &[], opts())?;
    let stdin = stdin_of(&t);
    assert!(stdin.can_write_eof());
    let stdout = t.get_pipe_transport(1).expect("stdout");
    assert!(stdout.is_reading());
    assert!(t.get_pipe_transport(2).is_some());
    assert!(t.get_pipe_transport(3).is_none());
    assert!(t.get_pipe_transport(-1).is_none());
    for fd in 0..3 {
        let p = t.get_pipe_transport(fd).expect("piped");
        assert!(matches!(p.get_extra_info("pipe"), Some(ExtraInfo::Fd(_))));
    }
    stdin.close();
    wait_done(&lp, &proc)?;
    lp.close()?;
    s.check_clean();
    Ok(())
}

// ----- exit codes and signals --------------------------------------------------------------

/// The exit status is the return code.
pub fn test_exit_code(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    for code in [0, 1, 7, 255] {
        let proc = Proc::new();
        let t = s.exec(&lp, &proc, "exit", &[&code.to_string()], opts())?;
        wait_done(&lp, &proc)?;
        assert_eq!(t.get_returncode(), Some(code));
    }
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `get_pid` is the child's; `get_returncode` is `None` until it exits.
pub fn test_get_pid_and_returncode(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "ids", &[], opts())?;
    assert!(t.get_pid() > 0);
    wait_done(&lp, &proc)?;
    let out = String::from_utf8(proc.out(1)).expect("utf-8");
    #[cfg(unix)]
    assert_eq!(
        out.split(' ').next().and_then(|p| p.parse::<u32>().ok()),
        Some(t.get_pid())
    );
    let _ = out;
    assert_eq!(t.get_returncode(), Some(0));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `terminate`: the child dies of SIGTERM (return code `-SIGTERM`; on
/// Windows `TerminateProcess`, 1).
pub fn test_terminate(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "sleep", &["60"], opts())?;
    t.terminate()?;
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(TERMINATED));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `kill`: the child dies of SIGKILL (Windows: `TerminateProcess`).
pub fn test_kill(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "sleep", &["60"], opts())?;
    t.kill()?;
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(KILLED));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `send_signal(SIGHUP)`: the child dies of it (Windows: `SIGTERM`).
pub fn test_send_signal(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "sleep", &["60"], opts())?;
    t.send_signal(OTHER_SIGNAL.0)?;
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(OTHER_SIGNAL.1));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// A child that ignores SIGTERM survives `terminate` and dies of `kill`.
#[cfg(unix)]
pub fn test_terminate_ignored_then_kill(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "ignore-term", &[], opts())?;
    run_until(&lp, "ready", || proc.out(1) == b"ready")?;
    t.terminate()?;
    for _ in 0..20 {
        run_once(&lp)?;
    }
    assert!(!proc.exited(), "SIGTERM is ignored");
    t.kill()?;
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(KILLED));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// Once the child is reaped, `kill`, `terminate` and `send_signal` are
/// `ProcessLookupError`: its pid may be another process's by now.
pub fn test_signal_after_exit(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "exit", &["0"], opts())?;
    wait_done(&lp, &proc)?;
    for r in [t.kill(), t.terminate(), t.send_signal(OTHER_SIGNAL.0)] {
        assert_eq!(
            r.as_ref().err().and_then(Error::raw_os_error),
            Some(ESRCH),
            "{r:?}"
        );
    }
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// An invalid signal number is a `ValueError`; the child is untouched.
pub fn test_send_signal_invalid(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "wait-stdin", &[], opts())?;
    assert!(matches!(t.send_signal(100_000), Err(Error::Value(_))));
    stdin_of(&t).close();
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(0));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// A child killed by a signal it sent itself.
#[cfg(unix)]
pub fn test_killed_by_own_signal(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.shell(&lp, &proc, "kill -9 $$", opts())?;
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(KILLED));
    lp.close()?;
    s.check_clean();
    Ok(())
}

// ----- shell ---------------------------------------------------------------------------

/// `subprocess_shell`: the command line runs in `/bin/sh`.
#[cfg(unix)]
pub fn test_shell(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.shell(&lp, &proc, "echo 'Hello, World' && exit 7", opts())?;
    wait_done(&lp, &proc)?;
    assert_eq!(proc.out(1), b"Hello, World\n");
    assert_eq!(t.get_returncode(), Some(7));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `subprocess_shell` on Windows: the command line runs in `cmd.exe /c`.
#[cfg(windows)]
pub fn test_shell(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.shell(&lp, &proc, "echo Hello, World&& exit 7", opts())?;
    wait_done(&lp, &proc)?;
    assert_eq!(proc.out(1), b"Hello, World\r\n");
    assert_eq!(t.get_returncode(), Some(7));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// A command `cmd.exe` cannot find: a non-zero code, and it says why.
#[cfg(windows)]
pub fn test_shell_missing_command(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.shell(&lp, &proc, "no-such-command-here-1234", opts())?;
    wait_done(&lp, &proc)?;
    assert_ne!(t.get_returncode(), Some(0));
    assert!(!proc.out(2).is_empty(), "the shell says why");
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// A command the shell cannot find: the shell's 127.
#[cfg(unix)]
pub fn test_shell_missing_command(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.shell(&lp, &proc, "no-such-command-here-1234", opts())?;
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(127));
    assert!(!proc.out(2).is_empty(), "the shell says why");
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `shell=False` given to `subprocess_shell`, or `shell=True` to
/// `subprocess_exec`: asyncio's `ValueError`s.
pub fn test_shell_flag_refused(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let p = Proc::new();
    let p2 = p.clone();
    let r = run(
        &lp,
        lp.subprocess_shell(
            move || p2.clone(),
            "exit 0",
            SubprocessOptions {
                shell: Some(false),
                ..opts()
            },
        ),
    );
    assert_eq!(r.err(), Some(Error::value("shell must be True")));
    let p2 = p.clone();
    let (program, argv) = child::command("exit", &["0"]);
    let r = run(
        &lp,
        lp.subprocess_exec(
            move || p2.clone(),
            program,
            argv,
            SubprocessOptions {
                shell: Some(true),
                ..opts()
            },
        ),
    );
    assert_eq!(r.err(), Some(Error::value("shell must be False")));
    assert!(p.events.is_empty());
    lp.close()
}

/// Runs `subprocess_exec` with options asyncio refuses; the error.
fn refused(ctx: &Ctx, options: SubprocessOptions) -> Result<Error> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let p = Proc::new();
    let p2 = p.clone();
    let (program, argv) = child::command("exit", &["0"]);
    let r = run(
        &lp,
        lp.subprocess_exec(move || p2.clone(), program, argv, options),
    );
    assert!(p.events.is_empty());
    lp.close()?;
    Ok(r.err().expect("refused"))
}

/// `universal_newlines=True`: `ValueError`.
pub fn test_universal_newlines_refused(ctx: &Ctx) -> Result<()> {
    let e = refused(
        ctx,
        SubprocessOptions {
            universal_newlines: true,
            ..opts()
        },
    )?;
    assert_eq!(e, Error::value("universal_newlines must be False"));
    Ok(())
}

/// `text=True`: `ValueError`.
pub fn test_text_refused(ctx: &Ctx) -> Result<()> {
    let e = refused(
        ctx,
        SubprocessOptions {
            text: true,
            ..opts()
        },
    )?;
    assert_eq!(e, Error::value("text must be False"));
    Ok(())
}

/// `encoding=...`: `ValueError`.
pub fn test_encoding_refused(ctx: &Ctx) -> Result<()> {
    let e = refused(
        ctx,
        SubprocessOptions {
            encoding: Some("utf-8".into()),
            ..opts()
        },
    )?;
    assert_eq!(e, Error::value("encoding must be None"));
    Ok(())
}

/// `errors=...`: `ValueError`.
pub fn test_errors_refused(ctx: &Ctx) -> Result<()> {
    let e = refused(
        ctx,
        SubprocessOptions {
            errors: Some("strict".into()),
            ..opts()
        },
    )?;
    assert_eq!(e, Error::value("errors must be None"));
    Ok(())
}

/// A non-zero `bufsize`: `ValueError`.
pub fn test_bufsize_refused(ctx: &Ctx) -> Result<()> {
    let e = refused(
        ctx,
        SubprocessOptions {
            bufsize: 4096,
            ..opts()
        },
    )?;
    assert_eq!(e, Error::value("bufsize must be 0"));
    Ok(())
}

// ----- environment, directory, descriptors, sessions ------------------------------------------

/// `cwd`: the child runs there.
pub fn test_cwd(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let dir = std::env::temp_dir().canonicalize()?;
    // Windows' canonical form is verbatim (`\\?\C:\...`); the child
    // sees the plain path.
    #[cfg(windows)]
    let dir = std::path::PathBuf::from(
        dir.to_string_lossy()
            .strip_prefix(r"\\?\")
            .map(str::to_owned)
            .unwrap_or_else(|| dir.to_string_lossy().into_owned()),
    );
    let proc = Proc::new();
    let _t = s.exec(
        &lp,
        &proc,
        "cwd",
        &[],
        SubprocessOptions {
            cwd: Some(dir.clone()),
            ..opts()
        },
    )?;
    wait_done(&lp, &proc)?;
    assert_eq!(
        String::from_utf8_lossy(&proc.out(1)),
        dir.display().to_string()
    );
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// A missing `cwd`: `FileNotFoundError` naming it, nothing left behind.
pub fn test_cwd_missing(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let p = Proc::new();
    let p2 = p.clone();
    let missing = std::env::temp_dir().join("rsaio-no-such-dir-4242");
    let (program, argv) = child::command("cwd", &[]);
    let r = run(
        &lp,
        lp.subprocess_exec(
            move || p2.clone(),
            program,
            argv,
            child_options(SubprocessOptions {
                cwd: Some(missing.clone()),
                ..opts()
            }),
        ),
    );
    let e = r.err().expect("refused");
    // Windows says "the directory name is invalid" (Python's
    // NotADirectoryError there).
    assert!(
        matches!(
            e.kind(),
            Some(std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory)
        ),
        "{e}"
    );
    assert!(e.to_string().contains("rsaio-no-such-dir-4242"), "{e}");
    assert!(p.events.is_empty());
    lp.close()
}

/// `env`: the child sees exactly the environment given.
pub fn test_env(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let _t = s.exec(
        &lp,
        &proc,
        "env",
        &["RSAIO_TEST_VAR"],
        SubprocessOptions {
            env: Some(vec![("RSAIO_TEST_VAR".into(), "a value".into())]),
            ..opts()
        },
    )?;
    wait_done(&lp, &proc)?;
    assert_eq!(proc.out(1), b"a value");
    // The parent's own variables are not passed along with it.
    let proc = Proc::new();
    let _t = s.exec(
        &lp,
        &proc,
        "env",
        &["PATH"],
        SubprocessOptions {
            env: Some(vec![]),
            ..opts()
        },
    )?;
    wait_done(&lp, &proc)?;
    assert!(proc.out(1).is_empty(), "PATH was not given");
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// A pipe whose write end is not close-on-exec, made in this process.
#[cfg(unix)]
fn inheritable_pipe() -> Result<(std::fs::File, std::fs::File)> {
    let (r, w) = crate::util::os_pipe()?;
    // SAFETY: clears FD_CLOEXEC on a descriptor we own.
    unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&w), libc::F_SETFD, 0) };
    Ok((r, w))
}

/// Whether the child sees descriptor `fd` open, given `options`.
#[cfg(unix)]
fn child_sees_fd(ctx: &Ctx, fd: i32, options: SubprocessOptions) -> Result<bool> {
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "fd-open", &[&fd.to_string()], options)?;
    wait_done(&lp, &proc)?;
    lp.close()?;
    s.check_clean();
    Ok(t.get_returncode() == Some(0))
}

/// `pass_fds`: the child gets the descriptor at the same number.
#[cfg(unix)]
pub fn test_pass_fds(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let (_r, w) = crate::util::os_pipe()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&w);
    assert!(!child_sees_fd(ctx, fd, opts())?, "close-on-exec by default");
    assert!(child_sees_fd(
        ctx,
        fd,
        SubprocessOptions {
            pass_fds: vec![fd],
            ..opts()
        }
    )?);
    Ok(())
}

/// `pass_fds` on Windows: refused, as Python refuses it (handles are
/// inherited by value, not by number).
#[cfg(windows)]
pub fn test_pass_fds(ctx: &Ctx) -> Result<()> {
    let e = refused(
        ctx,
        SubprocessOptions {
            pass_fds: vec![3],
            ..opts()
        },
    )?;
    assert!(matches!(e, Error::Value(_)), "{e}");
    Ok(())
}

/// `close_fds` (the default) closes even a descriptor left inheritable;
/// `close_fds=false` lets it through.
#[cfg(unix)]
pub fn test_close_fds(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let _guard = inheritable_lock();
    let (_r, w) = inheritable_pipe()?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&w);
    assert!(!child_sees_fd(ctx, fd, opts())?, "closed by close_fds");
    assert!(child_sees_fd(
        ctx,
        fd,
        SubprocessOptions {
            close_fds: false,
            ..opts()
        }
    )?);
    Ok(())
}

/// The pipes the loop makes for a child never reach another child.
#[cfg(unix)]
pub fn test_pipes_not_inherited(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let first = Proc::new();
    let t1 = s.exec(&lp, &first, "wait-stdin", &[], opts())?;
    let stdin_fd = match stdin_of(&t1).get_extra_info("pipe") {
        Some(ExtraInfo::Fd(fd)) => fd,
        other => panic!("{other:?}"),
    };
    // A second child, told not to close anything: the first one's stdin
    // is close-on-exec anyway.
    let second = Proc::new();
    let t2 = s.exec(
        &lp,
        &second,
        "fd-open",
        &[&stdin_fd.to_string()],
        SubprocessOptions {
            close_fds: false,
            ..opts()
        },
    )?;
    wait_done(&lp, &second)?;
    assert_eq!(t2.get_returncode(), Some(1), "not inherited");
    stdin_of(&t1).close();
    wait_done(&lp, &first)?;
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `start_new_session`: the child leads a session of its own.
#[cfg(unix)]
pub fn test_start_new_session(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(
        &lp,
        &proc,
        "ids",
        &[],
        SubprocessOptions {
            start_new_session: true,
            ..opts()
        },
    )?;
    wait_done(&lp, &proc)?;
    let out = String::from_utf8(proc.out(1)).expect("utf-8");
    let ids: Vec<u32> = out.split(' ').filter_map(|x| x.parse().ok()).collect();
    assert_eq!(ids, vec![t.get_pid(); 3], "pid, sid and pgid: {out}");
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `process_group=0`: a group of its own, in this session.
#[cfg(unix)]
pub fn test_process_group(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(
        &lp,
        &proc,
        "ids",
        &[],
        SubprocessOptions {
            process_group: Some(0),
            ..opts()
        },
    )?;
    wait_done(&lp, &proc)?;
    let out = String::from_utf8(proc.out(1)).expect("utf-8");
    let ids: Vec<u32> = out.split(' ').filter_map(|x| x.parse().ok()).collect();
    // SAFETY: getsid(0) only reads this process's session id.
    let my_sid = unsafe { libc::getsid(0) } as u32;
    assert_eq!(ids, vec![t.get_pid(), my_sid, t.get_pid()], "{out}");
    lp.close()?;
    s.check_clean();
    Ok(())
}

// ----- spawn failures -------------------------------------------------------------------

/// A missing program: `FileNotFoundError` naming it, asyncio's message.
pub fn test_spawn_missing_program(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let p = Proc::new();
    let p2 = p.clone();
    let r = run(
        &lp,
        lp.subprocess_exec(move || p2.clone(), "rsaio-no-such-program", ["x"], opts()),
    );
    let e = r.err().expect("refused");
    assert_eq!(e.kind(), Some(std::io::ErrorKind::NotFound), "{e}");
    #[cfg(unix)]
    let expected = "[Errno 2] No such file or directory: 'rsaio-no-such-program'";
    #[cfg(unix)]
    assert!(e.to_string().ends_with(expected), "{e}");
    // Windows words it as FormatMessage does (Wine: "File not found.").
    #[cfg(windows)]
    {
        let text = e.to_string();
        assert!(
            text.contains("[Errno 2] ") && text.ends_with(".: 'rsaio-no-such-program'"),
            "{e}"
        );
    }
    assert!(p.events.is_empty());
    lp.close()
}

/// Failed spawns leave no descriptor behind (uvloop #185): a child
/// process of this binary runs 200 of them on a loop of the backend under
/// test, alone, and counts its descriptors (handles) before and after.
pub fn test_spawn_failures_leak_no_fds(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let (program, args) = child::command("spawn-failures", &[]);
    let out = std::process::Command::new(program)
        .args(args)
        .env(child::ENV, "1")
        .stderr(std::process::Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "failed spawns, descriptors before, after: {text} ({:?})",
        out.status
    );
    Ok(())
}

/// An empty program name is a `ValueError`, before anything is spawned.
pub fn test_spawn_empty_program(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let p = Proc::new();
    let r = run(
        &lp,
        lp.subprocess_exec(move || p.clone(), "", ["x"], opts()),
    );
    assert!(matches!(r, Err(Error::Value(_))), "{:?}", r.err());
    lp.close()
}

/// On a closed loop: `RuntimeError`, no child.
pub fn test_spawn_closed_loop(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    lp.close()?;
    let p = Proc::new();
    let p2 = p.clone();
    let (program, argv) = child::command("exit", &["0"]);
    let fut = lp.subprocess_exec(move || p2.clone(), program, argv, child_options(opts()));
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match std::future::Future::poll(fut.as_mut(), &mut cx) {
        std::task::Poll::Ready(r) => {
            assert!(matches!(&r, Err(Error::Runtime(m)) if m == "Event loop is closed"));
        }
        std::task::Poll::Pending => panic!("waited on a closed loop"),
    }
    assert!(p.events.is_empty());
    Ok(())
}

// ----- closing ----------------------------------------------------------------------------

/// `close` with the child running: the pipes close, the child is killed
/// and reaped, `process_exited` and `connection_lost` still come (uvloop
/// #128 left a zombie and no `process_exited`).
pub fn test_close_kills_running_child(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "sleep", &["60"], opts())?;
    t.close();
    assert!(t.is_closing());
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(KILLED));
    for fd in 0..3 {
        assert!(proc.pipe_lost(fd).is_some(), "pipe {fd} closed");
    }
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `close` after the child exited kills nothing; twice is harmless.
pub fn test_close_after_exit(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "exit", &["5"], opts())?;
    wait_done(&lp, &proc)?;
    t.close();
    t.close();
    assert_eq!(t.get_returncode(), Some(5));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `close` right after the child exited but before its exit is seen: the
/// return code is the child's own, not a kill's.
pub fn test_close_while_exit_pending(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "exit", &["4"], opts())?;
    // The child exits at once; wait for it outside the loop, then close.
    run_until(&lp, "stdout's end", || proc.pipe_lost(1).is_some())?;
    #[cfg(unix)]
    {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !exited_unreaped(t.get_pid()) && !proc.exited() {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
    t.close();
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(4));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// True once `pid` exited (a zombie, not reaped).
#[cfg(unix)]
fn exited_unreaped(pid: u32) -> bool {
    // SAFETY: as in `reaped`.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let r = libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        r == 0 && info.si_pid() == pid as libc::pid_t
    }
}

/// The child closes its stdout early: `pipe_connection_lost(1)` comes
/// then, the exit later, `connection_lost` after both.
pub fn test_child_closes_stdout_early(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "close-stdout", &[], opts())?;
    run_until(&lp, "stdout's end", || proc.pipe_lost(1).is_some())?;
    assert!(!proc.exited(), "the child still runs");
    assert_eq!(t.get_returncode(), None);
    stdin_of(&t).close();
    wait_done(&lp, &proc)?;
    let ev = proc.events.get();
    let lost1 = ev
        .iter()
        .position(|e| matches!(e, Ev::PipeLost(1, _)))
        .expect("fd 1");
    let exited = ev
        .iter()
        .position(|e| matches!(e, Ev::Exited))
        .expect("exit");
    assert!(lost1 < exited, "{ev:?}");
    assert_eq!(t.get_returncode(), Some(0));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// A grandchild holds stdout open: the child's exit is still reported
/// when it happens, and `wait()` resolves then (CPython gh-119710);
/// `connection_lost` waits for the pipe.
pub fn test_grandchild_holds_stdout(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "grandchild", &["60"], opts())?;
    let waited = lp.create_task(t.wait())?;
    run_until(&lp, "the child's exit", || proc.exited() && waited.done())?;
    assert_eq!(waited.take_result()?, 0);
    assert_eq!(t.get_returncode(), Some(0));
    let grandchild: i32 = loop {
        let out = String::from_utf8_lossy(&proc.out(1)).into_owned();
        if let Ok(pid) = out.parse() {
            break pid;
        }
        run_once(&lp)?;
    };
    for _ in 0..5 {
        run_once(&lp)?;
    }
    assert!(!proc.lost(), "stdout is still open in the grandchild");
    kill_pid(grandchild as u32);
    wait_done(&lp, &proc)?;
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// Writing to the stdin of a child that exited: the write fails with
/// `BrokenPipeError` inside the transport, the stdin pipe reports it,
/// nothing reaches the exception handler, and the loop goes on
/// (python/asyncio #190, CPython gh-109709).
pub fn test_write_stdin_of_exited_child(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "exit", &["0"], opts())?;
    let stdin = stdin_of(&t);
    run_until(&lp, "the exit", || proc.exited())?;
    stdin.write(&pattern(1024 * 1024))?;
    wait_done(&lp, &proc)?;
    match proc.pipe_lost(0) {
        Some(None) => {}
        Some(Some(e)) => assert!(e.is_broken_pipe() || e.is_connection_reset(), "{e}"),
        None => panic!("stdin's end was reported"),
    }
    assert!(errors.is_empty(), "{:?}", errors.get());
    stdin.write(b"more")?; // after the end: dropped
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// A child that never reads its stdin: writes fill the pipe, the
/// protocol hears `pause_writing`, nothing asserts (uvloop #317); the
/// kill ends it all cleanly.
pub fn test_full_stdin_pipe(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "sleep", &["60"], opts())?;
    let stdin = stdin_of(&t);
    for _ in 0..32 {
        stdin.write(&pattern(64 * 1024))?;
    }
    run_once(&lp)?;
    assert!(stdin.get_write_buffer_size() > 0, "the pipe is full");
    assert_eq!(proc.count(|e| matches!(e, Ev::Pause)), 1);
    t.kill()?;
    wait_done(&lp, &proc)?;
    assert!(errors.is_empty(), "{:?}", errors.get());
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// Flow control on stdin reaches the subprocess protocol: pause past the
/// high mark, resume once the child drained it.
pub fn test_stdin_flow_control(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "count", &[], opts())?;
    let stdin = stdin_of(&t);
    let data = pattern(4 * 1024 * 1024);
    stdin.write(&data)?;
    assert_eq!(proc.count(|e| matches!(e, Ev::Pause)), 1);
    run_until(&lp, "resume_writing", || {
        proc.count(|e| matches!(e, Ev::Resume)) == 1
    })?;
    stdin.write_eof()?;
    wait_done(&lp, &proc)?;
    assert_eq!(proc.out(1), data.len().to_string().as_bytes());
    lp.close()?;
    s.check_clean();
    Ok(())
}

// ----- order and waiting --------------------------------------------------------------------

/// Whatever happens before `connection_made` (output, the pipes' end, the
/// exit) is held back and delivered after it, in order.
pub fn test_callbacks_after_connection_made(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    for _ in 0..10 {
        let proc = Proc::new();
        let _t = s.exec(&lp, &proc, "echo", &["quick"], opts())?;
        wait_done(&lp, &proc)?;
        assert_eq!(proc.out(1), b"quick");
        let ev = proc.events.get();
        let data = ev
            .iter()
            .position(|e| matches!(e, Ev::Data(1, _)))
            .expect("data");
        let lost1 = ev
            .iter()
            .position(|e| matches!(e, Ev::PipeLost(1, _)))
            .expect("fd 1");
        assert!(data < lost1, "data before its pipe's end: {ev:?}");
    }
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `wait()`: several waiters, before and after the exit, all get the
/// return code.
pub fn test_wait(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "wait-stdin", &[], opts())?;
    let w1 = lp.create_task(t.wait())?;
    let w2 = lp.create_task(t.wait())?;
    run_once(&lp)?;
    assert!(!w1.done());
    stdin_of(&t).close();
    run_until(&lp, "the waiters", || w1.done() && w2.done())?;
    assert_eq!(w1.take_result()?, 0);
    assert_eq!(w2.take_result()?, 0);
    wait_done(&lp, &proc)?;
    assert_eq!(run(&lp, t.wait())?, 0, "after the exit: at once");
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// `process_exited` and the return code come while the loop is kept busy
/// with callbacks (CPython gh-127661 never set it then).
pub fn test_returncode_while_loop_busy(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "exit", &["9"], opts())?;
    // A chain of callbacks, each busy for a moment, that stops when the
    // exit is seen, or after 10 s.
    let start = std::time::Instant::now();
    let seen_busy = Rc::new(Cell::new(false));
    fn busy(
        lp: Loop,
        t: Rc<dyn SubprocessTransport>,
        start: std::time::Instant,
        seen: Rc<Cell<bool>>,
    ) {
        crate::util::busy_wait(0.001);
        if t.get_returncode().is_some() {
            seen.set(true);
            return;
        }
        if start.elapsed() > std::time::Duration::from_secs(10) {
            return;
        }
        let l = lp.clone();
        let _ = lp.call_soon(move || busy(l, t, start, seen));
    }
    let (l, tt, sb) = (lp.clone(), t.clone(), seen_busy.clone());
    lp.call_soon(move || busy(l, tt, start, sb))?;
    run_until(&lp, "the chain's end", || {
        seen_busy.get() || start.elapsed() > std::time::Duration::from_secs(10)
    })?;
    assert!(seen_busy.get(), "the exit was seen while the loop was busy");
    wait_done(&lp, &proc)?;
    assert_eq!(t.get_returncode(), Some(9));
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// A panic in `pipe_data_received` reaches the exception handler; the
/// process and the loop go on to the end.
pub fn test_protocol_panic(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let s = Spawn::new();
    let proc = Rc::new(Proc {
        panic_on_data: true,
        pattern_ok: Cell::new(true),
        ..Default::default()
    });
    let t = s.exec(&lp, &proc, "echo", &["boom"], opts())?;
    wait_done(&lp, &proc)?;
    assert!(!errors.is_empty());
    assert!(
        errors.get()[0].message.contains("pipe_data_received"),
        "{}",
        errors.get()[0].message
    );
    assert_eq!(t.get_returncode(), Some(0));
    lp.close()?;
    s.check_clean();
    Ok(())
}

// ----- cancellation and many children -------------------------------------------------------

/// Cancelling `subprocess_exec` while it connects the pipes: the child is
/// killed and reaped, and the loop is not held up meanwhile (uvloop #118):
/// a timer due in 50 ms fires on time.
pub fn test_cancel_while_spawning(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let p = proc.clone();
    let (program, argv) = child::command("sleep", &["60"]);
    let task = lp.create_task(lp.subprocess_exec(
        move || p.clone(),
        program,
        argv,
        child_options(opts()),
    ))?;
    run_once(&lp)?; // spawned; connecting the pipes
    let fired = Rc::new(Cell::new(None));
    let f = fired.clone();
    let t0 = lp.time();
    let l = lp.clone();
    lp.call_later(0.05, move || f.set(Some(l.time() - t0)))?;
    task.cancel(None);
    run_until(&lp, "the cancellation", || task.done())?;
    assert!(task.cancelled());
    run_until(&lp, "the timer", || fired.get().is_some())?;
    assert!(
        fired.get().expect("fired") < 1.0,
        "the loop was not blocked"
    );
    // The child was killed; the transport still finishes connecting its
    // pipes and tells the protocol it all ended, as asyncio's does.
    run_until(&lp, "connection_lost", || proc.lost())?;
    let t = proc.transport.get().expect("connection_made ran");
    assert_eq!(t.get_returncode(), Some(KILLED));
    s.track(&t);
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// Dropping the `subprocess_exec` future after its first poll closes the
/// transport: the child is killed and reaped.
pub fn test_drop_spawn_future(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let p = proc.clone();
    let (program, argv) = child::command("sleep", &["60"]);
    let fut = lp.subprocess_exec(move || p.clone(), program, argv, child_options(opts()));
    run(&lp, async move {
        let pending = crate::util::pending(crate::util::poll_once(fut).await, "subprocess_exec");
        drop(pending);
        Ok(())
    })?;
    run_until(&lp, "connection_lost", || proc.lost())?;
    let t = proc.transport.get().expect("connection_made ran");
    assert_eq!(t.get_returncode(), Some(KILLED));
    s.track(&t);
    lp.close()?;
    s.check_clean();
    Ok(())
}

/// 500 short children at once: every one reaped, every return code right.
pub fn test_many_children(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let n = ctx.children(500);
    let done = Rc::new(RefCell::new(Vec::new()));
    let pids = Rc::new(RefCell::new(Vec::new()));
    for i in 0..n {
        let code = (i % 200).to_string();
        // Something small to exec: `sh` where there is one.
        #[cfg(unix)]
        let (program, argv): (std::ffi::OsString, Vec<std::ffi::OsString>) = (
            "/bin/sh".into(),
            vec!["-c".into(), format!("exit {code}").into()],
        );
        #[cfg(not(unix))]
        let (program, argv) = child::command("exit", &[&code]);
        let (d, ps, l) = (done.clone(), pids.clone(), lp.clone());
        lp.create_task(async move {
            let proc = Proc::new();
            let p = proc.clone();
            let options = child_options(SubprocessOptions {
                stdin: Stdio::DevNull,
                stdout: Stdio::DevNull,
                stderr: Stdio::DevNull,
                ..opts()
            });
            let (t, _) = l
                .subprocess_exec(move || p.clone(), program, argv, options)
                .await?;
            ps.borrow_mut().push(t.get_pid());
            let rc = t.wait().await?;
            d.borrow_mut().push((i, rc));
            Ok::<(), Error>(())
        })?;
    }
    // 500 execs take a while on a loaded machine: a longer safety net.
    let mut tries = 0;
    while let Err(e) = run_until(&lp, "every exit", || done.borrow().len() == n) {
        tries += 1;
        if tries == 6 {
            return Err(e);
        }
    }
    for &(i, rc) in done.borrow().iter() {
        assert_eq!(rc, (i % 200) as i32);
    }
    for _ in 0..3 {
        run_once(&lp)?;
    }
    lp.close()?;
    let s = Spawn::new();
    s.pids.borrow_mut().extend(pids.borrow().iter().copied());
    s.check_clean();
    Ok(())
}

/// A child still running when its loop closes is not killed (asyncio
/// leaves it too), and is reaped once it exits: no zombie outlives the
/// loop.
pub fn test_child_reaped_after_loop_close(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    let proc = Proc::new();
    let t = s.exec(&lp, &proc, "sleep", &["60"], opts())?;
    let pid = t.get_pid();
    lp.close()?;
    assert!(!reaped(pid), "still running");
    kill_pid(pid);
    s.check_clean();
    Ok(())
}

#[cfg(unix)]
fn inheritable_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ----- the Unix-only cases, on other systems ---------------------------------------------

// Cases whose child or check uses Unix signals, descriptors, sessions or
// `/bin/sh`.

#[cfg(not(unix))]
unix_only!(
    Feature::Subprocesses, "subprocesses", "the case's child or check is written for Unix":
    test_terminate_ignored_then_kill,
    test_killed_by_own_signal,
    test_close_fds,
    test_pipes_not_inherited,
    test_start_new_session,
    test_process_group,
);

/// A child that is gone before its exit watch starts (`/bin/true`, no
/// pipes; the helper's `exit` on Windows): the exit is still seen, a hundred times over.
pub fn test_child_exits_before_watch(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let s = Spawn::new();
    for _ in 0..100 {
        let proc = Proc::new();
        let p = proc.clone();
        let options = SubprocessOptions {
            stdin: Stdio::DevNull,
            stdout: Stdio::DevNull,
            stderr: Stdio::DevNull,
            ..opts()
        };
        #[cfg(unix)]
        let fut = lp.subprocess_exec(move || p.clone(), "/bin/true", [""; 0], options);
        #[cfg(windows)]
        let fut = {
            let (program, argv) = child::command("exit", &["0"]);
            lp.subprocess_exec(move || p.clone(), program, argv, child_options(options))
        };
        let (t, _) = run(&lp, fut)?;
        s.track(&t);
        assert_eq!(run(&lp, t.wait())?, 0);
        wait_done(&lp, &proc)?;
    }
    lp.close()?;
    s.check_clean();
    Ok(())
}

// ----- the stream API: create_subprocess_exec and Process ------------------------------

/// `create_subprocess_exec` with the child's helper environment.
fn process(
    role: &str,
    args: &[&str],
    options: SubprocessOptions,
) -> impl std::future::Future<Output = Result<loop_api::subprocess::Process>> + 'static {
    let (exe, argv) = child::command(role, args);
    loop_api::subprocess::create_subprocess_exec(exe, argv, child_options(options))
}

/// `test_stdin_stdout` (stream API): write, drain, read the echo line by
/// line; close stdin; the child exits 0.
pub fn test_process_stdin_stdout(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let (line, rest, code) = run(&lp, async {
        let mut p = process("cat", &[], opts()).await?;
        assert_eq!(p.returncode(), None);
        let stdin = p.stdin.take().expect("stdin is a pipe");
        stdin.write(b"line one\nline two\n")?;
        stdin.drain().await?;
        let out = p.stdout.as_mut().expect("stdout is a pipe");
        let line = out.readline().await?;
        stdin.close();
        stdin.wait_closed().await?;
        let rest = out.read(-1).await?;
        Ok((line, rest, p.wait().await?))
    })?;
    assert_eq!(line, b"line one\n");
    assert_eq!(rest, b"line two\n");
    assert_eq!(code, 0);
    lp.close()
}

/// `test_communicate`: input in, output out, exit status set.
pub fn test_process_communicate(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let (out, err, code) = run(&lp, async {
        let mut p = process("cat", &[], opts()).await?;
        let (out, err) = p.communicate(Some(b"some data")).await?;
        Ok((out, err, p.returncode()))
    })?;
    assert_eq!(out.as_deref(), Some(&b"some data"[..]));
    assert_eq!(err.as_deref(), Some(&b""[..]));
    assert_eq!(code, Some(0));
    lp.close()
}

/// 4 MB through `communicate`: both pipes at once, no deadlock.
pub fn test_process_communicate_large(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let d2 = data.clone();
    let out = run(&lp, async move {
        let mut p = process("cat", &[], opts()).await?;
        let (out, _) = p.communicate(Some(&d2)).await?;
        Ok(out)
    })?;
    assert!(out.as_deref() == Some(&data[..]), "byte-exact");
    lp.close()
}

/// `test_communicate_ignore_broken_pipe`: a child that exits without
/// reading its input is not an error.
pub fn test_process_communicate_ignore_broken_pipe(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let (out, code) = run(&lp, async {
        let mut p = process("exit", &["0"], opts()).await?;
        p.wait().await?;
        let big = vec![b'x'; 1024 * 1024];
        let (out, _) = p.communicate(Some(&big)).await?;
        Ok((out, p.returncode()))
    })?;
    assert_eq!(out.as_deref(), Some(&b""[..]));
    assert_eq!(code, Some(0));
    assert!(errors.is_empty(), "{:?}", errors.get());
    lp.close()
}

/// `communicate` with no pipes: `(None, None)`, and the exit status.
pub fn test_process_communicate_no_pipes(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let got = run(&lp, async {
        let mut p = process(
            "exit",
            &["3"],
            SubprocessOptions {
                stdin: Stdio::DevNull,
                stdout: Stdio::DevNull,
                stderr: Stdio::DevNull,
                ..opts()
            },
        )
        .await?;
        assert!(p.stdin.is_none() && p.stdout.is_none() && p.stderr.is_none());
        let r = p.communicate(None).await?;
        Ok((r, p.returncode()))
    })?;
    assert_eq!(got.0, (None, None));
    assert_eq!(got.1, Some(3));
    lp.close()
}

/// `test_stdout_stderr`: each output stream has its own reader.
pub fn test_process_stdout_stderr(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let (out, err) = run(&lp, async {
        let mut p = process("both", &["to out", "to err"], opts()).await?;
        p.communicate(None).await
    })?;
    assert_eq!(out.as_deref(), Some(&b"to out"[..]));
    assert_eq!(err.as_deref(), Some(&b"to err"[..]));
    lp.close()
}

/// `test_read_stdout_after_process_exit`: output written before the exit
/// is there to read afterwards.
pub fn test_process_read_stdout_after_exit(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let (code, n) = run(&lp, async {
        let mut p = process("produce", &["1000"], opts()).await?;
        let code = p.wait().await?;
        let out = p.stdout.as_mut().unwrap().read(-1).await?;
        Ok((code, out.len()))
    })?;
    assert_eq!((code, n), (0, 1000));
    lp.close()
}

/// `test_shell`: `create_subprocess_shell` runs the command through the
/// shell; its exit status is the command's.
pub fn test_process_shell(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let code = run(&lp, async {
        let p = loop_api::subprocess::create_subprocess_shell("exit 7", opts()).await?;
        p.wait().await
    })?;
    assert_eq!(code, 7);
    lp.close()
}

/// `test_kill` / `test_terminate`: the return code says how it ended.
pub fn test_process_kill_terminate(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let (killed, terminated) = run(&lp, async {
        let p = process("sleep", &["60"], opts()).await?;
        p.kill()?;
        let killed = p.wait().await?;
        let p = process("sleep", &["60"], opts()).await?;
        p.terminate()?;
        Ok((killed, p.wait().await?))
    })?;
    assert_eq!(killed, KILLED);
    assert_eq!(terminated, TERMINATED);
    lp.close()
}

/// `test_send_signal`: the signal reaches the child.
pub fn test_process_send_signal(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let code = run(&lp, async {
        let p = process("sleep", &["60"], opts()).await?;
        assert!(p.pid() > 0);
        p.send_signal(OTHER_SIGNAL.0)?;
        p.wait().await
    })?;
    assert_eq!(code, OTHER_SIGNAL.1);
    lp.close()
}

/// `drain` on the child's stdin waits while the child reads slowly, and
/// every byte arrives (the child counts them).
pub fn test_process_stdin_drain(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let total = 8 * 1024 * 1024;
    let counted = run(&lp, async move {
        let mut p = process("count", &[], opts()).await?;
        let stdin = p.stdin.take().unwrap();
        let chunk = vec![b'z'; 256 * 1024];
        for _ in 0..total / chunk.len() {
            stdin.write(&chunk)?;
            stdin.drain().await?;
            assert!(
                stdin.transport().get_write_buffer_size() <= 64 * 1024,
                "drain returned below the high-water mark"
            );
        }
        stdin.close();
        let out = p.stdout.as_mut().unwrap().read(-1).await?;
        p.wait().await?;
        Ok(String::from_utf8(out).unwrap())
    })?;
    assert_eq!(counted, total.to_string());
    lp.close()
}

/// A small limit pauses the child's stdout pipe above twice the limit;
/// reading resumes it and every byte arrives.
pub fn test_process_stdout_limit_pauses(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let n = 1024 * 1024;
    let (exe, argv) = child::command("produce", &[&n.to_string()]);
    let got = run(&lp, async move {
        let mut p = loop_api::subprocess::create_subprocess_exec_limit(
            exe,
            argv,
            4096,
            child_options(opts()),
        )
        .await?;
        let out = p.stdout.as_mut().unwrap();
        let mut data = Vec::new();
        let mut max_buffered = 0;
        loop {
            max_buffered = max_buffered.max(out.buffered());
            let chunk = out.read(1000).await?;
            if chunk.is_empty() {
                break;
            }
            data.extend_from_slice(&chunk);
        }
        p.wait().await?;
        Ok((data, max_buffered))
    })?;
    let expect: Vec<u8> = (0..n).map(|i| (i * 31 % 251) as u8).collect();
    assert!(got.0 == expect, "byte-exact");
    // Paused above 2 x 4096; one delivery may overshoot by its own size.
    assert!(got.1 <= 2 * 4096 + 256 * 1024, "{} bytes held", got.1);
    lp.close()
}

/// A program that does not exist is the OS's error, and nothing is left
/// behind.
pub fn test_process_exec_missing_program(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let r = run(&lp, async {
        Ok(loop_api::subprocess::create_subprocess_exec(
            "/nonexistent/program-that-is-not-there",
            ["x"],
            opts(),
        )
        .await
        .map(|_| ()))
    })?;
    assert_eq!(r.unwrap_err().kind(), Some(std::io::ErrorKind::NotFound));
    lp.close()
}

/// `returncode` is `None` while the child runs; `wait` twice gives the
/// same status.
pub fn test_process_wait_twice(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Subprocesses)?;
    let lp = ctx.new_loop();
    let got = run(&lp, async {
        let p = process("exit", &["5"], opts()).await?;
        let a = p.wait().await?;
        let b = p.wait().await?;
        Ok((a, b, p.returncode()))
    })?;
    assert_eq!(got, (5, 5, Some(5)));
    lp.close()
}
