//! What every pipe transport shares, on readiness (`unix_events`) and on
//! completions (`proactor_events::pipe_transport`): the descriptor (a
//! handle on Windows) and its checks, the protocol, the closing flag, and
//! the end of the connection.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fs::File;
#[cfg(unix)]
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::{Rc, Weak};

use crate::base_events::BaseLoop;
use crate::events::RawFd;
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::log::{self, Level};
use crate::protocols::Protocol;
use crate::transports::lifecycle;
use crate::transports::{describe, BaseTransport, ExtraInfo, Transport};

/// What kind of file a pipe transport may wrap.
pub(crate) enum PipeEnd {
    /// `connect_read_pipe`: a FIFO, a socket or a character device.
    Read,
    /// `connect_write_pipe`: the same.
    Write,
}

/// The kind of file behind a pipe transport's descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(windows, allow(dead_code))] // completion transports do not ask
pub(crate) enum FileKind {
    Fifo,
    Socket,
    CharDevice,
}

fn not_a_pipe(end: PipeEnd) -> Error {
    Error::value(match end {
        PipeEnd::Read => "Pipe transport is for pipes/sockets only.",
        PipeEnd::Write => "Pipe transport is only for pipes, sockets and character devices",
    })
}

/// What the write methods of a read pipe transport return.
pub(crate) fn cannot_write() -> Error {
    Error::runtime("a read pipe transport cannot write")
}

/// The descriptor's number: on Windows the handle's value.
#[cfg(unix)]
fn raw(file: &File) -> RawFd {
    file.as_raw_fd()
}

/// The descriptor's number: on Windows the handle's value.
#[cfg(windows)]
fn raw(file: &File) -> RawFd {
    std::os::windows::io::AsRawHandle::as_raw_handle(file) as usize as RawFd
}

/// asyncio's check on Windows: a pipe (named or anonymous) or a character
/// device, by `GetFileType`.
#[cfg(windows)]
pub(crate) fn check_pipe(file: &File, end: PipeEnd) -> Result<FileKind> {
    use windows_sys::Win32::Storage::FileSystem::{GetFileType, FILE_TYPE_CHAR, FILE_TYPE_PIPE};
    // SAFETY: the handle is open for the borrow; GetFileType only reads it.
    let kind = unsafe { GetFileType(std::os::windows::io::AsRawHandle::as_raw_handle(file)) };
    match kind {
        FILE_TYPE_PIPE => Ok(FileKind::Fifo),
        FILE_TYPE_CHAR => Ok(FileKind::CharDevice),
        _ => Err(not_a_pipe(end)),
    }
}

#[cfg(windows)]
/// On Windows, where every pipe transport is completion-based: `ValueError`
/// unless `pipe` was opened for overlapped I/O: on a handle
/// opened for synchronous I/O, `ReadFile` blocks the calling thread (the
/// loop's) until it completes, `OVERLAPPED` or not. A handle whose mode
/// cannot be read is let through.
fn check_overlapped(pipe: &File) -> Result<()> {
    use std::os::windows::io::AsRawHandle;
    use windows_sys::Wdk::Storage::FileSystem::{
        FileModeInformation, NtQueryInformationFile, FILE_MODE_INFORMATION,
        FILE_SYNCHRONOUS_IO_ALERT, FILE_SYNCHRONOUS_IO_NONALERT,
    };
    use windows_sys::Win32::System::IO::IO_STATUS_BLOCK;
    let mut iosb = IO_STATUS_BLOCK::default();
    let mut info = FILE_MODE_INFORMATION { Mode: 0 };
    // SAFETY: the handle is open for the borrow; `iosb` and `info` are
    // valid for writes of their sizes.
    let status = unsafe {
        NtQueryInformationFile(
            pipe.as_raw_handle(),
            &mut iosb,
            (&raw mut info).cast(),
            std::mem::size_of::<FILE_MODE_INFORMATION>() as u32,
            FileModeInformation,
        )
    };
    if status >= 0 && info.Mode & (FILE_SYNCHRONOUS_IO_ALERT | FILE_SYNCHRONOUS_IO_NONALERT) != 0 {
        return Err(Error::value(
            "the pipe must be opened for overlapped I/O (FILE_FLAG_OVERLAPPED), \
             as loop_api::windows_utils::pipe opens the loop's end",
        ));
    }
    Ok(())
}

/// asyncio's check: pipes, sockets and character devices only, with
/// asyncio's `ValueError` text for anything else.
#[cfg(unix)]
pub(crate) fn check_pipe(file: &File, end: PipeEnd) -> Result<FileKind> {
    use std::os::unix::fs::FileTypeExt;
    let ft = file.metadata()?.file_type();
    if ft.is_fifo() {
        Ok(FileKind::Fifo)
    } else if ft.is_socket() {
        Ok(FileKind::Socket)
    } else if ft.is_char_device() {
        Ok(FileKind::CharDevice)
    } else {
        Err(not_a_pipe(end))
    }
}

#[cfg(unix)]
/// Sets `O_NONBLOCK` on `fd` (asyncio's `os.set_blocking(fd, False)`).
pub(crate) fn set_nonblocking(fd: RawFd) -> Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own read and set its
    // status flags; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if flags & libc::O_NONBLOCK == 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
        {
            return Err(std::io::Error::last_os_error().into());
        }
    }
    Ok(())
}

/// The state both pipe transports keep.
pub(crate) struct PipeBase {
    lp: Rc<dyn BaseLoop>,
    this: Weak<dyn Transport>,
    fd: RawFd,
    /// `None` once closed.
    file: RefCell<Option<File>>,
    protocol: RefCell<Rc<dyn Protocol>>,
    /// `close`, `abort`, EOF or an error happened.
    pub closing: Cell<bool>,
    /// asyncio's `_conn_lost` (writes after the end are counted).
    pub conn_lost: Cell<u32>,
    /// `connection_lost` is scheduled (or ran).
    ended: Cell<bool>,
}

/// A descriptor checked and made non-blocking by [`PipeBase::prepare`].
pub(crate) struct Prepared {
    lp: Rc<dyn BaseLoop>,
    file: File,
    /// What the descriptor is.
    #[cfg_attr(windows, allow(dead_code))]
    pub kind: FileKind,
}

impl PipeBase {
    /// asyncio's constructor preamble: the loop must be open, `file` a
    /// pipe, socket or character device; on Unix it is made non-blocking,
    /// on Windows it must have been opened for overlapped I/O.
    pub fn prepare(lp: Rc<dyn BaseLoop>, file: File, end: PipeEnd) -> Result<Prepared> {
        if lp.is_closed() {
            return Err(Error::loop_closed());
        }
        let kind = check_pipe(&file, end)?;
        #[cfg(unix)]
        set_nonblocking(file.as_raw_fd())?;
        #[cfg(windows)]
        check_overlapped(&file)?;
        Ok(Prepared { lp, file, kind })
    }

    /// The base of the transport `this` (built with `Rc::new_cyclic`).
    pub fn new(prepared: Prepared, protocol: Rc<dyn Protocol>, this: Weak<dyn Transport>) -> Self {
        let Prepared { lp, file, .. } = prepared;
        PipeBase {
            lp,
            this,
            fd: raw(&file),
            file: RefCell::new(Some(file)),
            protocol: RefCell::new(protocol),
            closing: Cell::new(false),
            conn_lost: Cell::new(0),
            ended: Cell::new(false),
        }
    }

    pub fn lp(&self) -> &Rc<dyn BaseLoop> {
        &self.lp
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// True until the descriptor is closed.
    pub fn is_open(&self) -> bool {
        self.file.borrow().is_some()
    }

    /// Runs `f` on the file, if still open.
    pub fn with_file<R>(&self, f: impl FnOnce(&File) -> R) -> Option<R> {
        self.file.borrow().as_ref().map(f)
    }

    pub fn protocol(&self) -> Rc<dyn Protocol> {
        self.protocol.borrow().clone()
    }

    pub fn set_protocol(&self, protocol: Rc<dyn Protocol>) {
        *self.protocol.borrow_mut() = protocol;
    }

    fn me(&self) -> Rc<dyn Transport> {
        self.this
            .upgrade()
            .expect("a transport is used through its Rc")
    }

    /// `get_extra_info`: `pipe` is the descriptor while it is open.
    pub fn get_extra_info(&self, name: &str) -> Option<ExtraInfo> {
        match name {
            "pipe" if self.is_open() => Some(ExtraInfo::Fd(self.fd)),
            _ => None,
        }
    }

    /// Logs `what` in debug mode.
    pub fn debug(&self, what: &str) {
        if self.lp.get_debug() {
            log::log(Level::Debug, &format!("{} {what}", self.repr()));
        }
    }

    fn repr(&self) -> String {
        match self.this.upgrade() {
            Some(me) => describe(&*me),
            None => "<pipe transport>".into(),
        }
    }

    /// Hands `exc` to the exception handler with this transport and its
    /// protocol.
    pub fn report(&self, exc: Error, message: &str) {
        let proto: Rc<dyn Any> = Rc::new(self.protocol());
        let tr: Rc<dyn Any> = Rc::new(self.me());
        lifecycle::report(&*self.lp, exc, message, tr, proto);
    }

    /// asyncio's `_fatal_error` reporting: an `OSError` is only logged in
    /// debug mode (`EIO` on a pty whose other end went is ordinary);
    /// anything else goes to the exception handler.
    pub fn report_fatal(&self, exc: &Error, message: &str) {
        lifecycle::report_fatal(&*self.lp, exc, message, &self.repr(), || {
            self.report(exc.clone(), message)
        });
    }

    /// Registers the transport as the owner of its descriptor, then
    /// schedules `connection_made`, `start` and `waiter`'s result.
    pub fn start(&self, start: impl FnOnce() + 'static, waiter: Option<Future<()>>) -> Result<()> {
        let weak: Weak<dyn BaseTransport> = self.this.clone();
        self.lp._register_transport(self.fd, weak);
        let me = self.me();
        let lp = self.lp.clone();
        let made = move || {
            let proto = me.get_protocol();
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.connection_made(me.clone()))) {
                // As asyncio, where it runs as a plain callback: reported,
                // and the transport goes on.
                let tr: Rc<dyn Any> = Rc::new(me);
                let pr: Rc<dyn Any> = Rc::new(proto);
                lifecycle::report(
                    &*lp,
                    Error::from_panic(p),
                    "Exception in callback Protocol.connection_made()",
                    tr,
                    pr,
                );
            }
        };
        lifecycle::schedule_start(&*self.lp, made, start, waiter)
    }

    /// Runs `f` (the transport's `_call_connection_lost`) from the ready
    /// queue, or now if the loop is closed; only the first call does.
    pub fn schedule_connection_lost(&self, f: impl FnOnce() + 'static) {
        if !self.ended.replace(true) {
            lifecycle::call_soon_or_now(&*self.lp, f);
        }
    }

    /// `false` for a write after the end (`close`, `write_eof`, an
    /// error), which is dropped: counted, with asyncio's warning from the
    /// fifth on.
    pub fn accepts_write(&self) -> bool {
        if self.conn_lost.get() > 0 || self.closing.get() {
            let lost = self.conn_lost.get();
            if lost >= lifecycle::LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                log::log(
                    Level::Warning,
                    "pipe closed by peer or os.write(pipe, data) raised exception.",
                );
            }
            self.conn_lost.set(lost + 1);
            return false;
        }
        true
    }

    /// True once `connection_lost` is scheduled.
    pub fn ended(&self) -> bool {
        self.ended.get()
    }

    /// `_call_connection_lost`: the protocol's `connection_lost(exc)`, then
    /// the descriptor is closed and the protocol detached. Runs once.
    pub fn connection_lost(&self, exc: Option<Error>) {
        if !self.is_open() {
            return;
        }
        let proto = self.protocol();
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| proto.connection_lost(exc))) {
            self.report(
                Error::from_panic(p),
                "Fatal error: protocol.connection_lost() call failed.",
            );
        }
        self.file.borrow_mut().take();
        self.set_protocol(Rc::new(lifecycle::Detached));
    }
}
