//! The Windows side of subprocesses (asyncio's `windows_utils.Popen` and
//! the process wait of `windows_events`): starting a child with
//! `CreateProcess` (through `std::process`), and learning of its exit.
//!
//! # Spawning
//! `std::process::Command` builds the command line with the quoting the C
//! runtime's parser undoes (a shell command line is passed to
//! `%COMSPEC% /c "..."` unquoted, as Python does). A pipe is an overlapped
//! named pipe ([`windows_utils::pipe`](crate::windows_utils::pipe)): the
//! loop's end overlapped, the child's end plain; the child's stdin is
//! duplex so that the loop sees the child closing it. The child's ends are
//! inherited only by that child (std duplicates them as inheritable for
//! the one `CreateProcess` call) and closed in the parent right after.
//! `close_fds` is what Windows does anyway (only handles made inheritable
//! are inherited); `pass_fds` is refused, as Python refuses it;
//! `start_new_session` and `process_group` have no Windows meaning and are
//! ignored (use `creation_flags`, e.g. `CREATE_NEW_PROCESS_GROUP`).
//!
//! # Exit
//! The system thread pool waits on a duplicate of the process handle
//! (`RegisterWaitForSingleObject`, as asyncio's `RegisterWaitWithQueue`)
//! and hands the exit code to the loop (`call_soon_threadsafe` through a
//! loop future). No zombie exists on Windows: the handles close when the
//! child and the transport are done.

use std::cell::Cell;
use std::fs::File;
use std::io;
use std::os::windows::io::{AsRawHandle, OwnedHandle};
use std::os::windows::process::CommandExt;
use std::process::Command;
use std::rc::Rc;

use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, HANDLE, STILL_ACTIVE};
use windows_sys::Win32::System::Console::{
    GenerateConsoleCtrlEvent, CTRL_BREAK_EVENT, CTRL_C_EVENT,
};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, RegisterWaitForSingleObject, TerminateProcess, UnregisterWait, INFINITE,
    WT_EXECUTEONLYONCE,
};

use crate::base_events::BaseLoop;
use crate::base_subprocess::{prepare_command, spawn_error, Argv, LoopEnds, Streams};
use crate::events::options::SubprocessOptions;
use crate::exceptions::{Error, Result};
use crate::windows_utils::{pipe, Overlapped};

/// `signal.SIGTERM` as Python numbers it on Windows: terminates.
pub const SIGTERM: i32 = 15;

/// A child process: its id and its process handle.
#[derive(Clone)]
pub(crate) struct Child(Rc<Inner>);

struct Inner {
    pid: u32,
    handle: OwnedHandle,
    /// The exit was seen (and reported to the loop).
    exited: Cell<bool>,
}

/// asyncio's `ProcessLookupError`: the child is gone. Python's errno for
/// it is `ESRCH`, 3, on Windows too.
pub(crate) fn process_lookup_error() -> Error {
    Error::os(&io::Error::from_raw_os_error(3), "No such process")
}

impl Child {
    pub fn pid(&self) -> u32 {
        self.0.pid
    }

    /// asyncio's `Popen.send_signal` on Windows: `SIGTERM` terminates,
    /// `CTRL_C_EVENT` and `CTRL_BREAK_EVENT` go to the child's console
    /// process group (`GenerateConsoleCtrlEvent`), anything else is a
    /// `ValueError`.
    pub fn send_signal(&self, sig: i32) -> Result<()> {
        if self.0.exited.get() {
            return Err(process_lookup_error());
        }
        match sig {
            SIGTERM => self.terminate(),
            s if s == CTRL_C_EVENT as i32 || s == CTRL_BREAK_EVENT as i32 => {
                // SAFETY: no memory is passed; a bad group id fails.
                if unsafe { GenerateConsoleCtrlEvent(s as u32, self.0.pid) } == 0 {
                    return Err(io::Error::last_os_error().into());
                }
                Ok(())
            }
            other => Err(Error::value(format!("Unsupported signal: {other}"))),
        }
    }

    /// `TerminateProcess` with exit code 1, as Python's. A child that
    /// exited since (access denied, and an exit code) is left alone.
    pub fn terminate(&self) -> Result<()> {
        if self.0.exited.get() {
            return Err(process_lookup_error());
        }
        let h = self.0.handle.as_raw_handle();
        // SAFETY: the process handle is open while `self` lives.
        if unsafe { TerminateProcess(h, 1) } != 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(ERROR_ACCESS_DENIED as i32) {
            let mut code = 0u32;
            // SAFETY: as above; `code` is valid for writes.
            if unsafe { GetExitCodeProcess(h, &mut code) } != 0 && code != STILL_ACTIVE as u32 {
                return Ok(());
            }
        }
        Err(e.into())
    }

    /// The same as [`Child::terminate`] on Windows.
    pub fn kill(&self) -> Result<()> {
        self.terminate()
    }
}

// ----- spawning ---------------------------------------------------------------------

/// Overlapped named pipes: the loop's end overlapped, the child's plain;
/// stdin duplex, so that the loop's end can watch for the child closing
/// its own.
struct WindowsStreams;

impl Streams for WindowsStreams {
    fn pipe(child_writes: bool) -> io::Result<(File, File)> {
        if child_writes {
            let (r, w) = pipe(
                false,
                Overlapped {
                    read: true,
                    write: false,
                },
            )?;
            Ok((w, r))
        } else {
            pipe(
                true,
                Overlapped {
                    read: false,
                    write: true,
                },
            )
        }
    }
    const DEVNULL: &'static str = "NUL";
}

/// Starts `argv` with `options` (asyncio's `windows_utils.Popen(...)`).
pub(crate) fn spawn(argv: &Argv, options: &SubprocessOptions) -> Result<(Child, LoopEnds)> {
    if !options.pass_fds.is_empty() {
        return Err(Error::value("pass_fds is not supported on Windows"));
    }
    let mut cmd = match argv {
        Argv::Exec(program, args) => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
        Argv::Shell(line) => {
            let comspec = std::env::var_os("COMSPEC").unwrap_or_else(|| "cmd.exe".into());
            let mut c = Command::new(comspec);
            let mut raw = std::ffi::OsString::from("/c \"");
            raw.push(line);
            raw.push("\"");
            c.raw_arg(raw);
            c
        }
    };
    let ends = prepare_command::<WindowsStreams>(&mut cmd, options)?;
    if options.creation_flags != 0 {
        cmd.creation_flags(options.creation_flags);
    }
    let spawned = cmd.spawn();
    // The child's ends are in `cmd`: closed now, so that the loop sees the
    // end of a stream when the child (and its children) close theirs.
    drop(cmd);
    let child = spawned.map_err(|e| spawn_error(&e, argv, options))?;
    let pid = child.id();
    Ok((
        Child(Rc::new(Inner {
            pid,
            handle: OwnedHandle::from(child),
            exited: Cell::new(false),
        })),
        ends,
    ))
}

// ----- the exit -----------------------------------------------------------------------

/// What the thread pool's wait callback needs: the process handle (a
/// duplicate, owned here) and the future to complete.
struct ExitWait {
    handle: OwnedHandle,
    completer: crate::concurrent::FutureCompleter<i32>,
}

/// The wait callback, on a thread-pool thread, once the process is
/// signalled (it exited).
///
/// # Safety
/// `context` is the `Box<ExitWait>` that [`watch`] leaked for this wait,
/// which runs once (`WT_EXECUTEONLYONCE`); this takes it back.
unsafe extern "system" fn exited(context: *mut std::ffi::c_void, _timed_out: bool) {
    // SAFETY: the caller's promise: the leaked box, handed over once.
    let wait = unsafe { Box::from_raw(context.cast::<ExitWait>()) };
    let mut code = 0u32;
    // SAFETY: the handle is open (owned by `wait`); `code` is valid for
    // writes.
    let ok = unsafe { GetExitCodeProcess(wait.handle.as_raw_handle(), &mut code) } != 0;
    let _ = if ok {
        wait.completer.set_result(code as i32)
    } else {
        wait.completer
            .set_exception(io::Error::last_os_error().into())
    };
}

/// Watches `child` for its exit: `on_exit(returncode)` runs on the loop
/// once it exited. The wait is the system thread pool's
/// (`RegisterWaitForSingleObject`, as asyncio's `RegisterWaitWithQueue`),
/// which wakes the loop through `call_soon_threadsafe`; no thread of ours
/// per child.
pub(crate) fn watch(
    lp: &Rc<dyn BaseLoop>,
    child: &Child,
    on_exit: impl FnOnce(i32) + 'static,
) -> Result<()> {
    let fut = crate::futures::Future::<i32>::new(lp.as_loop());
    let handle = child.0.handle.try_clone()?;
    let process = handle.as_raw_handle();
    let context = Box::into_raw(Box::new(ExitWait {
        handle,
        completer: fut.completer(),
    }));
    let mut wait: HANDLE = std::ptr::null_mut();
    // SAFETY: `context` is a leaked box that only `exited` takes back,
    // once; the process handle it owns stays open until then, which is
    // what the wait waits on.
    let ok = unsafe {
        RegisterWaitForSingleObject(
            &mut wait,
            process,
            Some(exited),
            context.cast(),
            INFINITE,
            WT_EXECUTEONLYONCE,
        )
    };
    if ok == 0 {
        let e = io::Error::last_os_error();
        // SAFETY: the wait was not registered, so `exited` never runs and
        // the box is still ours.
        drop(unsafe { Box::from_raw(context) });
        return Err(e.into());
    }
    let state = child.clone();
    fut.add_done_callback(
        move |f| {
            // The callback ran (it completed the future): release the
            // wait's resources without blocking.
            // SAFETY: `wait` is the registered wait's handle, released once.
            unsafe { UnregisterWait(wait) };
            state.0.exited.set(true);
            if let Ok(code) = f.result() {
                on_exit(code);
            }
        },
        None,
    );
    Ok(())
}
