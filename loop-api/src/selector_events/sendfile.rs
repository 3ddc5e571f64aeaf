//! `sock_sendfile`'s zero-copy path on readiness (asyncio's
//! `_sock_sendfile_native` of `unix_events`): `sendfile(2)`, one call each
//! time the socket is writable.
//!
//! It is not available (`SendfileNotAvailable`) on platforms without it,
//! for a file that is not a regular file, or when the first call fails
//! with `EINVAL`, `ENOSYS`, `ENOTSOCK`, `EOPNOTSUPP` or `ESPIPE`; the
//! caller may then fall back to reading and sending (see
//! [`crate::base_events::sendfile`]). Cancelling (dropping the future)
//! stops watching the socket and leaves it usable: the bytes sent so far
//! are the file's position minus `offset`.

use std::fs::File;
use std::rc::Rc;

use socket2::Socket;

use crate::base_events::BaseLoop;
use crate::events::LocalBoxFuture;
use crate::exceptions::{Error, Result};

/// The zero-copy path alone: `SendfileNotAvailable` when it cannot be used.
/// Watches the socket with the unchecked `_add_writer` hook, so that a
/// transport's `_sendfile_native` may call it on the transport's own socket
/// (after flushing its buffer and pausing reading).
pub fn sock_sendfile_native(
    lp: Rc<dyn BaseLoop>,
    sock: Rc<Socket>,
    file: Rc<File>,
    offset: u64,
    count: Option<u64>,
) -> LocalBoxFuture<'static, Result<u64>> {
    Box::pin(native::run(lp, sock, file, offset, count))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod native {
    use std::cell::Cell;
    use std::io;
    use std::os::fd::AsRawFd;

    use super::*;
    use crate::base_events::sendfile::{regular_file_len, FilePosition};
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
        lp: Rc<dyn BaseLoop>,
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
        _lp: Rc<dyn BaseLoop>,
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
