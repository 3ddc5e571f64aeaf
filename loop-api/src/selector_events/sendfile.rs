//! `loop.sock_sendfile` on readiness (asyncio's `BaseEventLoop.sock_sendfile`
//! with the `_sock_sendfile_native` of `unix_events`).
//!
//! # As in asyncio
//! - The socket must be non-blocking (`ValueError`, checked always, as for
//!   the other `sock_*` methods) and a stream socket (`ValueError: only
//!   SOCK_STREAM type sockets are supported`); `count`, when given, must be
//!   positive (`ValueError`). The socket must not belong to a transport
//!   (`RuntimeError`, asyncio's `_ensure_fd_no_transport`).
//! - The zero-copy path is `sendfile(2)`, one call each time the socket is
//!   writable. It is not available (`SendfileNotAvailable`) on platforms
//!   without it, for a file that is not a regular file, or when the first
//!   call fails with `EINVAL`, `ENOSYS`, `ENOTSOCK`, `EOPNOTSUPP` or
//!   `ESPIPE`; with `fallback` the file is then read and sent with
//!   `sock_sendall` (see [`crate::base_events::sendfile`]).
//! - `offset` is where in the file to start, whatever the file's current
//!   position; `count` `None` means to the end of the file, and a `count`
//!   past the end stops at the end. The result is the number of bytes sent.
//! - When it ends (done, failed or cancelled) after sending something, the
//!   file's position is `offset` + bytes sent; when nothing was sent the
//!   position is left alone.
//! - Cancelling (dropping the future) stops watching the socket and leaves
//!   it usable: the bytes sent so far are the file's position minus `offset`.
//!
//! # Unlike asyncio
//! - asyncio's native path treats any file with a descriptor as sendable and
//!   reports a FIFO's `st_size` of 0 as an empty file; here anything but a
//!   regular file is `SendfileNotAvailable` (and so goes to the fallback).
//! - asyncio turns any `OSError` of the first `sendfile` call into
//!   `SendfileNotAvailableError`; here only the errors that mean "this
//!   file/socket pair cannot do zero-copy" do, so that `fallback=False`
//!   reports, say, a reset connection as what it is.

use std::cell::Cell;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::rc::Rc;

use socket2::{Socket, Type};

use super::{check_nonblocking, raw_fd};
use crate::events::{LocalBoxFuture, Loop};
use crate::exceptions::{Error, Result};

/// `loop.sock_sendfile`.
pub fn sock_sendfile(
    lp: Loop,
    sock: Rc<Socket>,
    file: Rc<File>,
    offset: u64,
    count: Option<u64>,
    fallback: bool,
) -> LocalBoxFuture<'static, Result<u64>> {
    Box::pin(async move {
        check_nonblocking(&sock)?;
        if sock.r#type()? != Type::STREAM {
            return Err(Error::value("only SOCK_STREAM type sockets are supported"));
        }
        crate::base_events::sendfile::check_count(count)?;
        lp._ensure_fd_no_transport(raw_fd(&sock))?;
        match lp
            ._sock_sendfile_native(sock.clone(), file.clone(), offset, count)
            .await
        {
            Err(Error::SendfileNotAvailable(_)) if fallback => {}
            done => return done,
        }
        crate::base_events::sendfile::sock_sendfile_fallback(lp, sock, file, offset, count).await
    })
}

/// Leaves the file's position at `start` + bytes sent when the operation
/// ends, however it ends (asyncio's `_sock_sendfile_update_filepos` and the
/// fallback's `finally`); where it was when nothing was sent (Windows'
/// positional reads move it, so it is put back).
pub struct FilePosition {
    pub(crate) file: Rc<File>,
    pub(crate) start: u64,
    /// Bytes sent so far; set it as they go out.
    pub sent: Rc<Cell<u64>>,
    before: Option<u64>,
}

impl FilePosition {
    /// A guard for a transfer of `file` from `start` on.
    pub fn new(file: Rc<File>, start: u64) -> Self {
        let before = (&*file).stream_position().ok();
        FilePosition {
            file,
            start,
            sent: Rc::new(Cell::new(0)),
            before,
        }
    }
}

impl Drop for FilePosition {
    fn drop(&mut self) {
        let sent = self.sent.get();
        // A file that cannot seek (a pipe read by the fallback) has no
        // position to update: the seeks fail and change nothing.
        if sent > 0 {
            let _ = (&*self.file).seek(SeekFrom::Start(self.start.saturating_add(sent)));
        } else if let Some(p) = self.before {
            let _ = (&*self.file).seek(SeekFrom::Start(p));
        }
    }
}

/// The size of `file`, which a zero-copy path can send only if it is a
/// regular file (`SendfileNotAvailable` otherwise, so that the caller may
/// fall back to reading and sending).
pub fn regular_file_len(file: &File) -> Result<u64> {
    match file.metadata() {
        Ok(m) if m.is_file() => Ok(m.len()),
        _ => Err(Error::SendfileNotAvailable("not a regular file".into())),
    }
}

/// The zero-copy path alone: `SendfileNotAvailable` when it cannot be used.
/// Watches the socket with the unchecked `_add_writer` hook, so that a
/// transport's `_sendfile_native` may call it on the transport's own socket
/// (after flushing its buffer and pausing reading).
pub fn sock_sendfile_native(
    lp: Loop,
    sock: Rc<Socket>,
    file: Rc<File>,
    offset: u64,
    count: Option<u64>,
) -> LocalBoxFuture<'static, Result<u64>> {
    Box::pin(native::run(lp, sock, file, offset, count))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod native {
    use std::io;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::selector_events::{watch_until_done, Dir, Step};

    /// The most one `sendfile(2)` call is asked for (Linux caps a call at
    /// 0x7ffff000 bytes anyway; this also keeps `count` within `size_t` on
    /// 32-bit targets).
    const MAX_CALL: u64 = 1 << 30;

    /// The state of one transfer, owned by the writer callback that runs it.
    struct Transfer {
        file: Rc<File>,
        /// Where the next call reads from.
        offset: u64,
        /// Bytes asked for per call.
        blocksize: u64,
        count: Option<u64>,
        /// Shared with the [`FilePosition`] guard.
        sent: Rc<Cell<u64>>,
    }

    impl Transfer {
        /// One `sendfile(2)` call (asyncio's `_sock_sendfile_native_impl`):
        /// done with the bytes sent in all, or wait for the socket again.
        fn attempt(&mut self, sock: &Socket) -> Result<Step<u64>> {
            let total = self.sent.get();
            let want = match self.count {
                Some(c) if c <= total => return Ok(Step::Done(total)),
                Some(c) => c - total,
                None => self.blocksize,
            };
            let want = want.min(MAX_CALL) as usize;
            let mut off: libc::off_t = libc::off_t::try_from(self.offset)
                .map_err(|_| Error::value(format!("offset {} is too large", self.offset)))?;
            // SAFETY: both descriptors are open for the whole call: the
            // socket is borrowed for it, the file held by `self.file`. `off` is
            // a live, exclusively borrowed `off_t` the kernel reads and
            // updates; no buffer of ours is involved.
            let n =
                unsafe { libc::sendfile(sock.as_raw_fd(), self.file.as_raw_fd(), &mut off, want) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) {
                    return Ok(Step::Again);
                }
                if total == 0 && not_available(&e) {
                    return Err(Error::SendfileNotAvailable(format!(
                        "os.sendfile call failed: {e}"
                    )));
                }
                return Err(e.into());
            }
            if n == 0 {
                return Ok(Step::Done(total)); // end of file
            }
            let n = n as u64;
            self.offset += n;
            self.sent.set(total + n);
            if self.count.is_some_and(|c| c <= total + n) {
                return Ok(Step::Done(total + n));
            }
            Ok(Step::Again)
        }
    }

    /// The errors of a first call that mean "no zero-copy for this pair".
    fn not_available(e: &io::Error) -> bool {
        matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSOCK | libc::EOPNOTSUPP | libc::ESPIPE)
        )
    }

    pub(super) async fn run(
        lp: Loop,
        sock: Rc<Socket>,
        file: Rc<File>,
        offset: u64,
        count: Option<u64>,
    ) -> Result<u64> {
        let blocksize = count.unwrap_or(regular_file_len(&file)?);
        if blocksize == 0 {
            return Ok(0); // empty file
        }
        // Declared before the watch (inside `watch_until_done`), so dropped
        // after it: no call runs once the position has been set.
        let position = FilePosition::new(file.clone(), offset);
        let mut transfer = Transfer {
            file,
            offset,
            blocksize,
            count,
            sent: position.sent.clone(),
        };
        let result =
            watch_until_done(lp, sock, Dir::Write, true, move |s| transfer.attempt(s)).await;
        drop(position);
        result
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod native {
    use super::*;

    pub(super) async fn run(
        _lp: Loop,
        _sock: Rc<Socket>,
        _file: Rc<File>,
        _offset: u64,
        _count: Option<u64>,
    ) -> Result<u64> {
        Err(Error::SendfileNotAvailable(
            "os.sendfile() is not available on this platform".into(),
        ))
    }
}
