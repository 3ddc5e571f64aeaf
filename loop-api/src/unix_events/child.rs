//! A child process on Unix: spawning it as asyncio's `subprocess.Popen`
//! call does, signalling it, and learning of its exit without SIGCHLD.
//!
//! # Spawning
//! `std::process::Command` does the fork and exec. The pipes are made here
//! (close-on-exec on the parent's side), so that stderr can share stdout's
//! pipe (`STDOUT`) and no `std` handle keeps a child's end open in the
//! parent. When spawning fails nothing is left behind: every descriptor
//! made for the child is an `OwnedFd` that closes on the way out.
//!
//! With `close_fds` (the default), if any descriptor above 2 is open
//! without `O_CLOEXEC` (some C library's), every descriptor above 2 is
//! made close-on-exec in the child before `exec` (`close_range`), so none
//! leaks; `pass_fds` are then made inheritable again. Code between fork
//! and exec makes `std` fork rather than `posix_spawn`, which halves the
//! spawn rate, so it runs only when there is something to do: for
//! `pass_fds`, `start_new_session`, or such a descriptor.
//!
//! # Exit
//! - Linux 5.3+: a pidfd (`pidfd_open`), which turns readable when the
//!   child exits, watched with the loop's own reader: no signal handler,
//!   no thread, and no race with PID reuse (signals go through
//!   `pidfd_send_signal`). This is CPython's `PidfdChildWatcher`.
//! - Elsewhere, or where `pidfd_open` is refused: a thread blocked in
//!   `waitpid` for that child alone, which hands the status to the loop
//!   (CPython's `ThreadedChildWatcher`).
//!
//! Either way the child is reaped the moment its exit is seen, whatever
//! its pipes are doing: a grandchild that keeps stdout open does not delay
//! it (CPython gh-119710). A child still watched when its loop closes is
//! handed to a thread that reaps it, so no zombie outlives the loop.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::rc::Rc;

use crate::base_events::BaseLoop;
use crate::base_subprocess::{prepare_command, spawn_error, Argv, LoopEnds, Streams};
use crate::events::options::SubprocessOptions;
use crate::exceptions::{Error, Result};
use crate::log::{self, Level};

/// A child process: its pid, and its pidfd where there is one.
#[derive(Clone)]
pub(crate) struct Child(Rc<Inner>);

struct Inner {
    pid: u32,
    pidfd: RefCell<Option<OwnedFd>>,
    reaped: Cell<bool>,
}

/// asyncio's `ProcessLookupError` (`ESRCH`): the child was reaped.
pub(crate) fn process_lookup_error() -> Error {
    io::Error::from_raw_os_error(libc::ESRCH).into()
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// Sends `sig`. Before the child is reaped this always reaches it (a
    /// child that exited but is not reaped yet ignores it); once it is
    /// reaped, `ProcessLookupError`, since its pid may be another
    /// process's by now.
    pub fn send_signal(&self, sig: i32) -> Result<()> {
        if self.0.reaped.get() {
            return Err(process_lookup_error());
        }
        let r = match &*self.0.pidfd.borrow() {
            #[cfg(any(target_os = "linux", target_os = "android"))]
            Some(pidfd) => {
                // SAFETY: pidfd_send_signal on a pidfd we own; a null
                // siginfo means "as kill() would send it".
                unsafe {
                    libc::syscall(
                        libc::SYS_pidfd_send_signal,
                        pidfd.as_raw_fd(),
                        sig,
                        std::ptr::null::<libc::siginfo_t>(),
                        0,
                    ) as libc::c_int
                }
            }
            // SAFETY: kill has no memory-safety preconditions; the pid is
            // our unreaped child's, so it cannot name another process.
            _ => unsafe { libc::kill(self.0.pid as libc::pid_t, sig) },
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // Exited, not yet reaped: asyncio passes over this too.
            Some(libc::ESRCH) => Ok(()),
            Some(libc::EINVAL) => Err(Error::value(format!("invalid signal number {sig}"))),
            _ => Err(e.into()),
        }
    }

    pub fn terminate(&self) -> Result<()> {
        self.send_signal(libc::SIGTERM)
    }

    pub fn kill(&self) -> Result<()> {
        self.send_signal(libc::SIGKILL)
    }
}

// ----- spawning ---------------------------------------------------------------------

/// Plain pipes (close-on-exec; `std` hands the child its ends).
struct UnixStreams;

impl Streams for UnixStreams {
    fn pipe(child_writes: bool) -> io::Result<(File, File)> {
        let (r, w) = io::pipe()?;
        let (r, w) = (File::from(OwnedFd::from(r)), File::from(OwnedFd::from(w)));
        Ok(if child_writes { (w, r) } else { (r, w) })
    }
    const DEVNULL: &'static str = "/dev/null";
}

/// The highest descriptor number to mark close-on-exec where
/// `close_range` is missing.
fn fd_limit() -> libc::c_int {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    if n <= 0 {
        65536
    } else {
        n.min(65536) as libc::c_int
    }
}

/// Starts `argv` with `options` (asyncio's `subprocess.Popen(...)` call).
pub(crate) fn spawn(argv: &Argv, options: &SubprocessOptions) -> Result<(Child, LoopEnds)> {
    let mut cmd = match argv {
        Argv::Exec(program, args) => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
        Argv::Shell(line) => {
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(line);
            c
        }
    };
    let ends = prepare_command::<UnixStreams>(&mut cmd, options)?;
    if let Some(pgid) = options.process_group {
        cmd.process_group(pgid);
    }
    let close_fds = options.close_fds && has_inheritable_fds(&options.pass_fds);
    if close_fds || options.start_new_session || !options.pass_fds.is_empty() {
        let new_session = options.start_new_session;
        let pass_fds: Vec<RawFd> = options.pass_fds.clone();
        let limit = fd_limit();
        let hook = move || -> io::Result<()> {
            // Only async-signal-safe calls from here: this runs in the
            // forked child.
            if new_session {
                // SAFETY: setsid has no memory-safety preconditions.
                if unsafe { libc::setsid() } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if close_fds {
                mark_all_cloexec(limit);
            }
            for &fd in &pass_fds {
                // SAFETY: F_SETFD on a descriptor number; a bad one fails
                // with EBADF, which exec then reports as the child's error.
                if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        };
        // SAFETY: the hook makes only async-signal-safe system calls
        // (setsid, close_range, fcntl) and touches no lock or allocator.
        unsafe {
            cmd.pre_exec(hook);
        }
    }

    let spawned = cmd.spawn();
    // The child's ends of the pipes are in `cmd`: closed now, so that the
    // parent sees EOF when the child (and its children) are done.
    drop(cmd);
    let child = spawned.map_err(|e| spawn_error(&e, argv, options))?;
    let pid = child.id();
    drop(child); // the pid is ours to reap; std's handle holds nothing else
    Ok((
        Child(Rc::new(Inner {
            pid,
            pidfd: RefCell::new(pidfd_open(pid)),
            reaped: Cell::new(false),
        })),
        ends,
    ))
}

/// The most descriptors [`has_inheritable_fds`] looks at before it
/// assumes there is one.
const SCAN_LIMIT: usize = 4096;

/// True if a descriptor above 2, not in `pass_fds`, is open without
/// close-on-exec: only then does `close_fds` have anything to close, and
/// only then does the spawn pay for running code between fork and exec
/// (std then forks instead of using `posix_spawn`, half as fast). Rust's
/// std, socket2 and this crate open everything close-on-exec, so this is
/// usually false. A descriptor made inheritable by another thread between
/// this look and the spawn can reach the child; asyncio closes in the
/// child and has no such window, but such a descriptor reaches every
/// other spawn in the process anyway.
fn has_inheritable_fds(pass_fds: &[RawFd]) -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd"))
    else {
        return true;
    };
    for (i, entry) in dir.enumerate() {
        if i >= SCAN_LIMIT {
            return true;
        }
        let Ok(entry) = entry else { return true };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if fd <= 2 || pass_fds.contains(&fd) {
            continue;
        }
        // SAFETY: F_GETFD only reads a descriptor's flags; one closed
        // meanwhile (the directory's own, say) fails with EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags >= 0 && flags & libc::FD_CLOEXEC == 0 {
            return true;
        }
    }
    false
}

/// Marks every descriptor above 2 close-on-exec (in the forked child).
fn mark_all_cloexec(limit: libc::c_int) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets a flag on
        // the descriptors in range.
        let r = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            )
        };
        if r == 0 {
            return;
        }
    }
    for fd in 3..limit {
        // SAFETY: F_SETFD on any number: EBADF for one that is not open.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new
    // descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None; // ENOSYS before 5.3, or refused by a sandbox
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn pidfd_open(_pid: u32) -> Option<OwnedFd> {
    None
}

// ----- exit -------------------------------------------------------------------------

/// A wait status as a return code: the exit status, or minus the signal
/// that killed it (Python's `waitstatus_to_exitcode`).
fn exit_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        -libc::WTERMSIG(status)
    } else {
        status
    }
}

/// What `waitpid` said.
enum Waited {
    Running,
    Exited(i32),
}

fn waitpid(pid: u32, block: bool) -> Waited {
    let mut status = 0;
    loop {
        // SAFETY: waitpid fills `status` for our own child.
        let r = unsafe {
            libc::waitpid(
                pid as libc::pid_t,
                &mut status,
                if block { 0 } else { libc::WNOHANG },
            )
        };
        if r == 0 {
            return Waited::Running;
        }
        if r > 0 {
            return Waited::Exited(exit_code(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // ECHILD: someone else reaped it; asyncio reports 255.
        log::log(
            Level::Warning,
            &format!(
                "child process pid {pid} exit status already read:  will report returncode 255"
            ),
        );
        return Waited::Exited(255);
    }
}

/// Reaps `pid` on a thread of its own: for a child whose watch ended
/// before it exited (its loop closed).
fn reap_in_background(pid: u32) {
    let _ = std::thread::Builder::new()
        .name(format!("reap {pid}"))
        .spawn(move || {
            waitpid(pid, true);
        });
}

/// Reaps the child in the background if dropped, once armed, before it
/// reaped it.
struct ReapGuard {
    pid: u32,
    armed: Rc<Cell<bool>>,
    done: bool,
}

impl ReapGuard {
    // Methods, so that the closure that owns a guard captures all of it
    // (a closure that only read `done` would capture that bool alone and
    // leave the guard to drop when the function returns).
    fn done(&self) -> bool {
        self.done
    }

    fn finish(&mut self) {
        self.done = true;
    }
}

impl Drop for ReapGuard {
    fn drop(&mut self) {
        if self.armed.get() && !self.done {
            reap_in_background(self.pid);
        }
    }
}

/// Watches `child` for its exit: `on_exit(returncode)` runs on the loop
/// once it exited and was reaped.
pub(crate) fn watch(
    lp: &Rc<dyn BaseLoop>,
    child: &Child,
    on_exit: impl FnOnce(i32) + 'static,
) -> Result<()> {
    let pidfd = child.0.pidfd.borrow().as_ref().map(|f| f.as_raw_fd());
    if let Some(pidfd) = pidfd {
        match watch_pidfd(lp, child, pidfd, on_exit) {
            Ok(()) => return Ok(()),
            Err(on_exit) => return watch_thread(lp, child, on_exit),
        }
    }
    watch_thread(lp, child, on_exit)
}

/// The pidfd watcher: the loop's reader on the pidfd. Hands `on_exit`
/// back if the loop cannot watch it.
fn watch_pidfd<F: FnOnce(i32) + 'static>(
    lp: &Rc<dyn BaseLoop>,
    child: &Child,
    pidfd: RawFd,
    on_exit: F,
) -> std::result::Result<(), F> {
    let on_exit = Rc::new(Cell::new(Some(on_exit)));
    let kept = on_exit.clone();
    let state = child.clone();
    let loop_ = lp.clone();
    let armed = Rc::new(Cell::new(false));
    let mut guard = ReapGuard {
        pid: child.pid(),
        armed: armed.clone(),
        done: false,
    };
    let reader = Box::new(move || {
        if guard.done() {
            return;
        }
        let Waited::Exited(code) = waitpid(state.pid(), false) else {
            return; // not yet: a spurious wakeup
        };
        guard.finish();
        state.0.reaped.set(true);
        let _ = loop_._remove_reader(pidfd);
        state.0.pidfd.borrow_mut().take();
        if let Some(f) = on_exit.take() {
            f(code);
        }
    });
    match lp._add_reader(pidfd, reader) {
        Ok(()) => {
            armed.set(true);
            Ok(())
        }
        // The reader went unarmed: only the thread watcher waits.
        Err(_) => Err(kept.take().expect("not called")),
    }
}

/// The thread watcher: a thread blocked in `waitpid`, whose result comes
/// back through a loop future.
fn watch_thread(
    lp: &Rc<dyn BaseLoop>,
    child: &Child,
    on_exit: impl FnOnce(i32) + 'static,
) -> Result<()> {
    let fut = crate::futures::Future::<i32>::new(lp.as_loop());
    let completer = fut.completer();
    let pid = child.pid();
    std::thread::Builder::new()
        .name(format!("waitpid {pid}"))
        .spawn(move || {
            let Waited::Exited(code) = waitpid(pid, true) else {
                unreachable!("a blocking waitpid returns once the child exited")
            };
            let _ = completer.set_result(code);
        })?;
    let state = child.clone();
    fut.add_done_callback(
        move |f| {
            state.0.reaped.set(true);
            if let Ok(code) = f.result() {
                on_exit(code);
            }
        },
        None,
    );
    Ok(())
}
