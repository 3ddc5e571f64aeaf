//! `loop.sendfile` over any transport, and the read-and-send fallbacks of
//! `loop.sendfile` and `loop.sock_sendfile` (asyncio's `BaseEventLoop.sendfile`,
//! `_sendfile_fallback` and `_sock_sendfile_fallback`).
//!
//! # As in asyncio
//! - A closing transport is refused: `RuntimeError("Transport is closing")`.
//! - The transport's zero-copy hook ([`WriteTransport::_sendfile_native`](crate::transports::WriteTransport::_sendfile_native))
//!   is tried first. When it has none, or it fails with
//!   `SendfileNotAvailable` before sending anything, the file is read and
//!   written through `transport.write` (with `fallback`), or the error is
//!   returned (without): `SendfileNotAvailable` from the hook as it is, and
//!   for a transport with no hook asyncio's `RuntimeError("fallback is
//!   disabled and native sendfile is not supported for transport ...")`.
//! - A transport that cannot report when its buffer is empty
//!   ([`WriteTransport::_make_empty_waiter`](crate::transports::WriteTransport::_make_empty_waiter) is `None`) cannot be used by
//!   the fallback: `RuntimeError("sendfile is not supported for transport
//!   ...")`.
//! - The fallback pauses reading while it runs (and resumes it after, if it
//!   was reading), and respects flow control: it waits before each write
//!   while the transport's buffer is over the high-water mark. If the
//!   transport starts closing, it stops with `ConnectionError` ("Connection
//!   closed by peer").
//! - File blocks are read on the default executor (asyncio's
//!   `run_in_executor(None, file.readinto, ...)`): 16 KiB per write for
//!   transports, 256 KiB per `sock_sendall` for `sock_sendfile`.
//! - When it ends after sending something, the file's position is `offset`
//!   + bytes sent.
//!
//! # Unlike asyncio
//! - asyncio's fallbacks read from the file's current position when
//!   `offset` is 0; here a regular file is always read from `offset` (as the
//!   zero-copy path does), with positional reads. A file that cannot seek
//!   (a pipe, a character device) is read sequentially, after seeking to
//!   `offset` if it is not 0 (an error on a pipe, as in asyncio).
//! - asyncio swaps in a protocol of its own for the duration, so the user's
//!   protocol does not hear `pause_writing`/`resume_writing` meanwhile; here
//!   the protocol stays in place and hears them.
//! - `loop.sendfile` returns once the transport's buffer has been handed to
//!   the OS, not merely once the last block was written to the transport.
//!
//! # `sock_sendfile`, as in asyncio
//! - The socket must be non-blocking (`ValueError`, checked always, as for
//!   the other `sock_*` methods) and a stream socket (`ValueError: only
//!   SOCK_STREAM type sockets are supported`); `count`, when given, must be
//!   positive (`ValueError`). The socket must not belong to a transport
//!   (`RuntimeError`, asyncio's `_ensure_fd_no_transport`).
//! - The zero-copy path is the driver's (`sendfile(2)` on readiness,
//!   `TransmitFile` on IOCP); when it is not available
//!   (`SendfileNotAvailable`), with `fallback` the file is read and sent
//!   with `sock_sendall`.
//! - `offset` is where in the file to start, whatever the file's current
//!   position; `count` `None` means to the end of the file, and a `count`
//!   past the end stops at the end. The result is the number of bytes sent.
//! - When it ends (done, failed or cancelled) after sending something, the
//!   file's position is `offset` + bytes sent; when nothing was sent the
//!   position is left alone.
//!
//! # `sock_sendfile`, unlike asyncio
//! - asyncio's native path treats any file with a descriptor as sendable and
//!   reports a FIFO's `st_size` of 0 as an empty file; here anything but a
//!   regular file is `SendfileNotAvailable` (and so goes to the fallback).
//! - asyncio turns any `OSError` of the first `sendfile` call into
//!   `SendfileNotAvailableError`; here only the errors that mean "this
//!   file/socket pair cannot do zero-copy" do, so that `fallback=False`
//!   reports, say, a reset connection as what it is.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::rc::Rc;
use std::sync::Arc;

use socket2::{Socket, Type};

use super::sockets::{check_nonblocking, raw_fd};
use super::BaseLoop;
use crate::events::{EventLoopExt, LocalBoxFuture, Loop};
use crate::exceptions::{Error, Result};
use crate::transports::{describe, Transport};

/// asyncio's `SENDFILE_FALLBACK_READBUFFER_SIZE`: block size of
/// `sock_sendfile`'s fallback.
const SOCK_FALLBACK_BLOCK: u64 = 256 * 1024;
/// Block size of `loop.sendfile`'s fallback (asyncio's 16384).
const TRANSPORT_FALLBACK_BLOCK: u64 = 16 * 1024;

/// `loop.sock_sendfile`.
pub fn sock_sendfile(
    lp: Rc<dyn BaseLoop>,
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
        check_count(count)?;
        lp._ensure_fd_no_transport(raw_fd(&sock))?;
        match lp
            ._sock_sendfile_native(sock.clone(), file.clone(), offset, count)
            .await
        {
            Err(Error::SendfileNotAvailable(_)) if fallback => {}
            done => return done,
        }
        sock_sendfile_fallback(lp.as_loop(), sock, file, offset, count).await
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

/// `loop.sendfile`.
pub fn sendfile(
    lp: Loop,
    transport: Rc<dyn Transport>,
    file: Rc<File>,
    offset: u64,
    count: Option<u64>,
    fallback: bool,
) -> LocalBoxFuture<'static, Result<u64>> {
    Box::pin(async move {
        if transport.is_closing() {
            return Err(Error::runtime("Transport is closing"));
        }
        check_count(count)?;
        let no_native = match transport._sendfile_native(file.clone(), offset, count) {
            Some(native) => match native.await {
                Err(Error::SendfileNotAvailable(_)) if fallback => false,
                done => return done,
            },
            None => true,
        };
        if transport._make_empty_waiter().is_none() {
            return Err(not_supported(&*transport));
        }
        if no_native && !fallback {
            return Err(Error::runtime(format!(
                "fallback is disabled and native sendfile is not supported for transport {}",
                describe(&*transport)
            )));
        }
        sendfile_fallback(lp, transport, file, offset, count).await
    })
}

/// asyncio's `count must be a positive integer` check.
pub(crate) fn check_count(count: Option<u64>) -> Result<()> {
    match count {
        Some(0) => Err(Error::value("count must be a positive integer (got 0)")),
        _ => Ok(()),
    }
}

fn not_supported(t: &dyn Transport) -> Error {
    Error::runtime(format!(
        "sendfile is not supported for transport {}",
        describe(t)
    ))
}

/// asyncio's `ConnectionError("Connection closed by peer")`.
fn connection_closed() -> Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "Connection closed by peer",
    )
    .into()
}

// ----- reading the file ------------------------------------------------------------

/// Reads blocks of the file on the default executor, from a duplicate of
/// its descriptor (the loop's `Rc<File>` cannot cross threads).
struct BlockReader {
    file: Arc<File>,
    /// Positional reads (a regular file); else sequential reads.
    positional: bool,
}

impl BlockReader {
    /// Prepares to read from `offset`: a file that cannot be read
    /// positionally is seeked there first (unless `offset` is 0).
    fn new(file: &File, offset: u64) -> Result<Self> {
        let positional = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if !positional && offset != 0 {
            (&*file).seek(SeekFrom::Start(offset))?;
        }
        Ok(BlockReader {
            file: Arc::new(file.try_clone()?),
            positional,
        })
    }

    /// Up to `len` bytes at `at` (positional) or next (sequential); empty at
    /// the end of the file.
    async fn read(&self, lp: &Loop, at: u64, len: u64) -> Result<Vec<u8>> {
        let file = self.file.clone();
        let positional = self.positional;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let block = lp
            .run_in_executor(None, move || -> io::Result<Vec<u8>> {
                let mut buf = vec![0u8; len];
                let n = loop {
                    let r = if positional {
                        read_at(&file, &mut buf, at)
                    } else {
                        io::Read::read(&mut &*file, &mut buf)
                    };
                    match r {
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        r => break r?,
                    }
                };
                buf.truncate(n);
                Ok(buf)
            })?
            .await??;
        Ok(block)
    }
}

#[cfg(unix)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(file, buf, at)
}

#[cfg(windows)]
fn read_at(file: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    // Moves the file pointer too; the fallback sets it when it ends.
    std::os::windows::fs::FileExt::seek_read(file, buf, at)
}

/// The next block's size, or `None` when `count` bytes have been sent.
fn next_block(count: Option<u64>, sent: u64, blocksize: u64) -> Option<u64> {
    let want = match count {
        Some(c) => c.saturating_sub(sent).min(blocksize),
        None => blocksize,
    };
    (want > 0).then_some(want)
}

// ----- sock_sendfile's fallback ---------------------------------------------------

/// asyncio's `_sock_sendfile_fallback`: reads blocks and `sock_sendall`s them.
pub(crate) async fn sock_sendfile_fallback(
    lp: Loop,
    sock: Rc<Socket>,
    file: Rc<File>,
    offset: u64,
    count: Option<u64>,
) -> Result<u64> {
    let reader = BlockReader::new(&file, offset)?;
    let position = FilePosition::new(file, offset);
    let blocksize = count.map_or(SOCK_FALLBACK_BLOCK, |c| c.min(SOCK_FALLBACK_BLOCK));
    while let Some(want) = next_block(count, position.sent.get(), blocksize) {
        let sent = position.sent.get();
        let block = reader.read(&lp, offset + sent, want).await?;
        if block.is_empty() {
            break; // end of file
        }
        let n = block.len() as u64;
        lp.sock_sendall(sock.clone(), block).await?;
        position.sent.set(sent + n);
    }
    Ok(position.sent.get())
}

// ----- loop.sendfile's fallback ---------------------------------------------------

/// Pauses reading for the duration of a sendfile (asyncio's
/// `_SendfileFallbackProtocol`, and `_sendfile_native`'s `finally`),
/// resuming it on drop if it was reading.
pub(crate) struct ReadingPaused {
    transport: Rc<dyn Transport>,
    resume: bool,
}

impl ReadingPaused {
    /// Pauses `transport`'s reading if it reads.
    pub(crate) fn new(transport: Rc<dyn Transport>) -> Self {
        let resume = transport.is_reading();
        if resume {
            transport.pause_reading();
        }
        ReadingPaused { transport, resume }
    }
}

impl Drop for ReadingPaused {
    fn drop(&mut self) {
        if self.resume && !self.transport.is_closing() {
            self.transport.resume_reading();
        }
    }
}

/// Waits until the transport has handed its buffer to the OS.
async fn wait_empty(transport: &dyn Transport) -> Result<()> {
    if transport.get_write_buffer_size() == 0 {
        return Ok(());
    }
    match transport._make_empty_waiter() {
        Some(waiter) => waiter.await,
        None => Err(not_supported(transport)),
    }
}

/// asyncio's `_SendfileFallbackProtocol.drain`: fails if the transport is
/// closing, waits while its buffer is over the high-water mark.
async fn drain(transport: &dyn Transport) -> Result<()> {
    if transport.is_closing() {
        return Err(connection_closed());
    }
    let (_low, high) = transport.get_write_buffer_limits();
    if transport.get_write_buffer_size() > high {
        wait_empty(transport).await?;
        if transport.is_closing() {
            return Err(connection_closed());
        }
    }
    Ok(())
}

/// asyncio's `_sendfile_fallback`: reads blocks and writes them to the
/// transport, then waits for the transport's buffer to empty.
async fn sendfile_fallback(
    lp: Loop,
    transport: Rc<dyn Transport>,
    file: Rc<File>,
    offset: u64,
    count: Option<u64>,
) -> Result<u64> {
    let reader = BlockReader::new(&file, offset)?;
    let position = FilePosition::new(file, offset);
    let _paused = ReadingPaused::new(transport.clone());
    let blocksize = count.map_or(TRANSPORT_FALLBACK_BLOCK, |c| {
        c.min(TRANSPORT_FALLBACK_BLOCK)
    });
    while let Some(want) = next_block(count, position.sent.get(), blocksize) {
        let sent = position.sent.get();
        let block = reader.read(&lp, offset + sent, want).await?;
        if block.is_empty() {
            break; // end of file
        }
        drain(&*transport).await?;
        transport.write(&block)?;
        position.sent.set(sent + block.len() as u64);
    }
    wait_empty(&*transport).await?;
    Ok(position.sent.get())
}
