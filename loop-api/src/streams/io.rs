//! The Rust ecosystem's I/O traits over a stream: tokio's `AsyncRead`,
//! `AsyncBufRead` and `AsyncWrite`, and the `futures` crate's, so that
//! tokio-rustls, hyper (through its tokio adapters), tokio-util codecs and
//! any other crate written against them run on this loop.
//!
//! Ground rules:
//! - Reading takes what the transport already delivered into the
//!   reader's buffer (`poll_fill_buf` lends it without a copy). Nothing
//!   buffered: the waker is kept and the transport's next delivery, EOF or
//!   error wakes it. EOF reads as `Ok(0)`.
//! - Writing hands the bytes to the transport, which sends them or keeps
//!   them (it owns its buffer, on completion backends too). While the
//!   transport is over its high-water mark `poll_write` is pending; its
//!   `resume_writing` wakes it. `poll_flush` waits for the low-water mark
//!   (asyncio's `drain`); `poll_shutdown` is `write_eof` (a TLS transport,
//!   which has no half-close, is closed instead).
//! - The read and write halves keep their own wakers (tokio #3200,
//!   tokio-rustls #84): a task reading and another writing the same
//!   connection do not steal each other's wake-ups.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::exceptions::Error;

use super::{StreamReader, StreamWriter};

/// A loop error as an `io::Error`, keeping its kind where it has one.
pub(crate) fn to_io(e: Error) -> io::Error {
    let kind = e.kind().unwrap_or(match e {
        Error::Timeout => io::ErrorKind::TimedOut,
        Error::IncompleteRead { .. } => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::Other,
    });
    io::Error::new(kind, e)
}

fn broken_pipe() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, Error::connection_lost())
}

impl StreamReader {
    /// The unread bytes, without copying: pending until there are some, EOF
    /// (an empty slice) or an error.
    pub fn poll_fill_buf(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        if let Some(e) = self.exception() {
            return Poll::Ready(Err(to_io(e)));
        }
        if self.fill() || self.p.eof.get() {
            return Poll::Ready(Ok(self.unread()));
        }
        self.p.resume_for_wait();
        *self.p.read_waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }

    /// Hands up to `room` buffered bytes to `put`, and marks them read:
    /// what every trait's `poll_read` does, whatever its buffer type.
    pub(crate) fn poll_read_with(
        &mut self,
        cx: &mut Context<'_>,
        room: usize,
        put: impl FnOnce(&[u8]),
    ) -> Poll<io::Result<usize>> {
        if room == 0 {
            return Poll::Ready(Ok(0));
        }
        let n = match self.poll_fill_buf(cx) {
            Poll::Ready(Ok(data)) => {
                let n = data.len().min(room);
                put(&data[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        self.consume(n);
        Poll::Ready(Ok(n))
    }

    fn poll_read_slice(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_read_with(cx, buf.len(), |d| buf[..d.len()].copy_from_slice(d))
    }

    fn poll_read_tokio(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let room = buf.remaining();
        self.poll_read_with(cx, room, |d| buf.put_slice(d))
            .map_ok(|_| ())
    }
}

impl StreamWriter {
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        len: usize,
        write: impl FnOnce(&dyn crate::transports::Transport) -> crate::Result<()>,
    ) -> Poll<io::Result<usize>> {
        if len == 0 {
            return Poll::Ready(Ok(0));
        }
        if let Some(e) = self.p.exception.borrow().clone() {
            return Poll::Ready(Err(to_io(e)));
        }
        let Some(t) = self.p.transport() else {
            return Poll::Ready(Err(broken_pipe()));
        };
        if self.p.connection_lost.get() || t.is_closing() || self.shut {
            return Poll::Ready(Err(broken_pipe()));
        }
        if self.p.write_paused.get() {
            *self.p.write_waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(write(&*t).map(|()| len).map_err(to_io))
    }

    fn poll_write_bytes(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, buf.len(), |t| t.write(buf))
    }

    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        self.poll_write_with(cx, len, |t| {
            let slices: Vec<&[u8]> = bufs.iter().map(|b| &**b).collect();
            t.writelines(&slices)
        })
    }

    /// Pending while the transport is over its high-water mark.
    pub(crate) fn poll_drained(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(e) = self.p.exception.borrow().clone() {
            return Poll::Ready(Err(to_io(e)));
        }
        if self.p.connection_lost.get() {
            let unsent = self
                .p
                .transport()
                .is_some_and(|t| t.get_write_buffer_size() > 0);
            return Poll::Ready(if unsent { Err(broken_pipe()) } else { Ok(()) });
        }
        if self.p.write_paused.get() {
            *self.p.write_waker.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        Poll::Ready(Ok(()))
    }

    /// Ends the write side: `write_eof`, or a close where there is no
    /// half-close.
    fn poll_end(&mut self) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            if let Some(t) = self.p.transport() {
                if !t.is_closing() {
                    if t.can_write_eof() {
                        t.write_eof().map_err(to_io)?;
                        self.p.write_shut.set(true);
                    } else {
                        t.close();
                    }
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

// ----- tokio ------------------------------------------------------------------------------

impl tokio::io::AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().poll_read_tokio(cx, buf)
    }
}

impl tokio::io::AsyncBufRead for StreamReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        StreamReader::poll_fill_buf(self.get_mut(), cx)
    }
    fn consume(self: Pin<&mut Self>, amt: usize) {
        StreamReader::consume(self.get_mut(), amt)
    }
}

impl tokio::io::AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_bytes(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_drained(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_end()
    }
}

// ----- futures ----------------------------------------------------------------------------

impl futures_io::AsyncRead for StreamReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_read_slice(cx, buf)
    }
}

impl futures_io::AsyncBufRead for StreamReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        StreamReader::poll_fill_buf(self.get_mut(), cx)
    }
    fn consume(self: Pin<&mut Self>, amt: usize) {
        StreamReader::consume(self.get_mut(), amt)
    }
}

impl futures_io::AsyncWrite for StreamWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_bytes(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_slices(cx, bufs)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_drained(cx)
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_end()
    }
}

// ----- both halves as one ------------------------------------------------------------------

/// A stream's two halves as one object, for crates that take a single
/// `AsyncRead + AsyncWrite` (tokio-rustls, hyper's adapters, tokio-util's
/// `Framed`). [`into_split`](Self::into_split) gives them back.
#[derive(Debug)]
pub struct Stream {
    /// The read half.
    pub reader: StreamReader,
    /// The write half.
    pub writer: StreamWriter,
}

impl Stream {
    /// Joins a reader and a writer (of the same connection).
    pub fn new(reader: StreamReader, writer: StreamWriter) -> Self {
        Stream { reader, writer }
    }
    /// The two halves.
    pub fn into_split(self) -> (StreamReader, StreamWriter) {
        (self.reader, self.writer)
    }
}

impl From<(StreamReader, StreamWriter)> for Stream {
    fn from((reader, writer): (StreamReader, StreamWriter)) -> Self {
        Stream { reader, writer }
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().reader.poll_read_tokio(cx, buf)
    }
}

impl tokio::io::AsyncBufRead for Stream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        StreamReader::poll_fill_buf(&mut self.get_mut().reader, cx)
    }
    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().reader.consume(amt)
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().writer.poll_write_bytes(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().writer.poll_write_slices(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer.poll_drained(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer.poll_end()
    }
}

impl futures_io::AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().reader.poll_read_slice(cx, buf)
    }
}

impl futures_io::AsyncBufRead for Stream {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        StreamReader::poll_fill_buf(&mut self.get_mut().reader, cx)
    }
    fn consume(self: Pin<&mut Self>, amt: usize) {
        self.get_mut().reader.consume(amt)
    }
}

impl futures_io::AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().writer.poll_write_bytes(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer.poll_drained(cx)
    }
    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().writer.poll_end()
    }
}
