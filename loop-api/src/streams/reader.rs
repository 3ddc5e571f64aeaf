//! asyncio's `StreamReader`.

use std::fmt;
use std::rc::Rc;

use crate::events::Loop;
use crate::exceptions::{Error, Result};
use crate::futures::Future;
use crate::transports::Transport;

use super::protocol::{check_limit, StreamProtocol};

/// What `readuntil` looks for: one separator, or any of several (the
/// shortest match wins, as in asyncio 3.13).
#[derive(Clone, Copy, Debug)]
pub enum Separator<'a> {
    /// One separator.
    One(&'a [u8]),
    /// Any of these.
    Any(&'a [&'a [u8]]),
}

impl<'a> From<&'a [u8]> for Separator<'a> {
    fn from(s: &'a [u8]) -> Self {
        Separator::One(s)
    }
}
impl<'a, const N: usize> From<&'a [u8; N]> for Separator<'a> {
    fn from(s: &'a [u8; N]) -> Self {
        Separator::One(s)
    }
}
impl<'a> From<&'a str> for Separator<'a> {
    fn from(s: &'a str) -> Self {
        Separator::One(s.as_bytes())
    }
}
impl<'a> From<&'a [&'a [u8]]> for Separator<'a> {
    fn from(s: &'a [&'a [u8]]) -> Self {
        Separator::Any(s)
    }
}
impl<'a, const N: usize> From<&'a [&'a [u8]; N]> for Separator<'a> {
    fn from(s: &'a [&'a [u8]; N]) -> Self {
        Separator::Any(s)
    }
}

/// The read half of a stream (asyncio's `StreamReader`).
///
/// Bytes the transport delivers wait in the reader's buffer until a read
/// takes them. Above twice the limit the transport is paused, and resumed
/// once a read brings the buffer back within the limit.
///
/// Reads take `&mut self`: one reader, one reading coroutine at a time
/// (asyncio raises `RuntimeError` for a second one; here the borrow checker
/// refuses it). Dropping the reader leaves the connection open while its
/// writer lives; dropping both closes it. A read blocked waiting for data is cancelled with its task
/// (`Err(Cancelled)`) and consumes nothing: the data that arrives later is
/// there for the next read.
///
/// The reader is also a `tokio::io::AsyncRead` + `AsyncBufRead` and a
/// `futures::io::AsyncRead` + `AsyncBufRead` (see [`super::Stream`]).
pub struct StreamReader {
    pub(crate) p: Rc<StreamProtocol>,
    /// Bytes taken from the protocol's mailbox; `buf[pos..]` is unread.
    buf: Vec<u8>,
    pos: usize,
}

impl StreamReader {
    pub(crate) fn new(p: Rc<StreamProtocol>) -> Self {
        p.handle_made();
        StreamReader {
            p,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// A reader with no transport, fed by [`feed_data`](Self::feed_data)
    /// and [`feed_eof`](Self::feed_eof) (asyncio's `StreamReader(limit,
    /// loop)`). `ValueError` for a zero limit.
    pub fn with_limit(lp: &Loop, limit: usize) -> Result<Self> {
        check_limit(limit)?;
        Ok(StreamReader::new(StreamProtocol::new(
            lp.clone(),
            limit,
            None,
        )))
    }

    /// The limit: the longest line or chunk `readuntil` returns.
    pub fn limit(&self) -> usize {
        self.p.limit
    }

    /// The exception the stream ended with, if it did (asyncio's
    /// `exception()`).
    pub fn exception(&self) -> Option<Error> {
        self.p.exception.borrow().clone()
    }

    /// True once EOF was received and every byte read (asyncio's `at_eof`).
    pub fn at_eof(&self) -> bool {
        self.p.eof.get() && self.p.buffered() == 0
    }

    /// Bytes received and not yet read.
    pub fn buffered(&self) -> usize {
        self.p.buffered()
    }

    /// Adds bytes, as the transport does (asyncio's `feed_data`).
    pub fn feed_data(&self, data: &[u8]) {
        use crate::protocols::Protocol;
        self.p.data_received(data);
    }

    /// Marks the end of the stream (asyncio's `feed_eof`).
    pub fn feed_eof(&self) {
        self.p.feed_eof();
    }

    /// Ends the stream with an error that every later read returns
    /// (asyncio's `set_exception`).
    pub fn set_exception(&self, exc: Error) {
        self.p.set_exception(exc);
    }

    /// A handle that feeds this reader while a read is waiting on it (the
    /// read holds the reader itself).
    pub fn feeder(&self) -> StreamFeeder {
        StreamFeeder(self.p.clone())
    }

    /// Sets the transport to pause and resume (asyncio's `set_transport`);
    /// `RuntimeError` if one is set already.
    pub fn set_transport(&self, transport: Rc<dyn Transport>) -> Result<()> {
        let mut t = self.p.transport.borrow_mut();
        if t.is_some() {
            return Err(Error::runtime("Transport already set"));
        }
        *t = Some(transport);
        Ok(())
    }

    // ----- the buffer ------------------------------------------------------------------

    /// Takes what the transport delivered into the reader's own buffer.
    fn pull(&mut self) {
        let mut incoming = self.p.incoming.borrow_mut();
        if incoming.is_empty() {
            return;
        }
        if self.pos == self.buf.len() {
            // Nothing unread here: swap buffers instead of copying.
            self.buf.clear();
            self.pos = 0;
            std::mem::swap(&mut self.buf, &mut *incoming);
        } else {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.extend_from_slice(&incoming);
            incoming.clear();
        }
        drop(incoming);
        self.p.held.set(self.buf.len() - self.pos);
    }

    /// The unread bytes in the reader's own buffer.
    pub(crate) fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Marks `n` unread bytes read, and resumes a paused transport once the
    /// buffer is within the limit again.
    pub(crate) fn consume(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.p.held.set(self.buf.len() - self.pos);
        self.p.maybe_resume_transport();
    }

    /// Takes `n` unread bytes.
    fn take(&mut self, n: usize) -> Vec<u8> {
        if self.pos == 0 && n == self.buf.len() {
            // All of it: hand the buffer itself over instead of a copy.
            let v = std::mem::take(&mut self.buf);
            self.p.held.set(0);
            self.p.maybe_resume_transport();
            return v;
        }
        let v = self.buf[self.pos..self.pos + n].to_vec();
        self.consume(n);
        v
    }

    /// Pulls, and says whether anything is unread.
    pub(crate) fn fill(&mut self) -> bool {
        self.pull();
        self.pos < self.buf.len()
    }

    /// Waits until the transport delivers data, EOF or an error (asyncio's
    /// `_wait_for_data`), on a loop future, so cancelling the task cancels
    /// the wait.
    ///
    /// The caller has pulled what was delivered; only new data, EOF or an
    /// error ends the wait.
    async fn wait_for_data(&mut self) -> Result<()> {
        if self.p.eof.get() || !self.p.incoming.borrow().is_empty() {
            return Ok(());
        }
        self.p.resume_for_wait();
        let waiter = Future::new(self.p.lp.clone());
        *self.p.read_waiter.borrow_mut() = Some(waiter.clone());
        let _clear = ClearWaiter(&self.p);
        waiter.await
    }

    fn check_exception(&self) -> Result<()> {
        match &*self.p.exception.borrow() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    // ----- asyncio's reads -------------------------------------------------------------

    /// Reads up to `n` bytes; with `n < 0`, everything up to EOF
    /// (asyncio's `read(n=-1)`). Returns an empty vector at EOF.
    pub async fn read(&mut self, n: isize) -> Result<Vec<u8>> {
        self.check_exception()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        if n < 0 {
            let mut all = Vec::new();
            loop {
                self.check_exception()?;
                if self.fill() {
                    all.extend_from_slice(self.unread());
                    let k = self.unread().len();
                    self.consume(k);
                    continue;
                }
                if self.p.eof.get() {
                    return Ok(all);
                }
                self.wait_for_data().await?;
            }
        }
        if !self.fill() && !self.p.eof.get() {
            self.wait_for_data().await?;
            self.fill();
        }
        let k = (n as usize).min(self.unread().len());
        Ok(self.take(k))
    }

    /// Reads exactly `n` bytes; [`Error::IncompleteRead`] with what there
    /// was if EOF comes first (asyncio's `readexactly`).
    pub async fn readexactly(&mut self, n: usize) -> Result<Vec<u8>> {
        self.check_exception()?;
        if n == 0 {
            return Ok(Vec::new());
        }
        loop {
            self.fill();
            if self.unread().len() >= n {
                return Ok(self.take(n));
            }
            if self.p.eof.get() {
                let k = self.unread().len();
                let partial = self.take(k);
                return Err(Error::IncompleteRead {
                    partial,
                    expected: Some(n),
                });
            }
            self.wait_for_data().await?;
        }
    }

    /// Reads a line, `\n` included (asyncio's `readline`). At EOF it
    /// returns what is left, maybe without `\n`, then empty vectors. A line
    /// longer than the limit is a `ValueError`, and is dropped from the
    /// buffer (the whole line if its `\n` has arrived, else all there is).
    pub async fn readline(&mut self) -> Result<Vec<u8>> {
        match self.readuntil(b"\n").await {
            Ok(line) => Ok(line),
            Err(Error::IncompleteRead { partial, .. }) => Ok(partial),
            Err(Error::LimitOverrun { message, consumed }) => {
                self.fill();
                if self.unread()[consumed..].starts_with(b"\n") {
                    self.consume(consumed + 1);
                } else {
                    let k = self.unread().len();
                    self.consume(k);
                }
                Err(Error::Value(message))
            }
            Err(e) => Err(e),
        }
    }

    /// Reads up to and including a separator (asyncio's `readuntil`).
    ///
    /// - With several separators, the shortest result that ends with any of
    ///   them wins.
    /// - [`Error::LimitOverrun`] when no separator is found within the limit
    ///   (the data stays in the buffer; `consumed` says how much to skip).
    /// - [`Error::IncompleteRead`] at EOF without a separator (the buffer is
    ///   emptied into `partial`).
    /// - `ValueError` for an empty separator or an empty list.
    pub async fn readuntil<'s>(&mut self, separator: impl Into<Separator<'s>>) -> Result<Vec<u8>> {
        // Shortest first, as asyncio sorts them: of two matches ending at
        // the same byte, the shorter separator's start is the one the
        // limit is checked against.
        let mut seps: Vec<&[u8]> = match separator.into() {
            Separator::One(s) => vec![s],
            Separator::Any(list) => list.to_vec(),
        };
        seps.sort_by_key(|s| s.len());
        if seps.is_empty() {
            return Err(Error::value(
                "Separator should contain at least one element",
            ));
        }
        let min_len = seps.iter().map(|s| s.len()).min().unwrap_or(0);
        let max_len = seps.iter().map(|s| s.len()).max().unwrap_or(0);
        if min_len == 0 {
            return Err(Error::value("Separator should be at least one-byte string"));
        }
        self.check_exception()?;
        let limit = self.p.limit;
        let mut offset = 0;
        let (start, end) = loop {
            self.fill();
            let data = self.unread();
            if data.len() - offset.min(data.len()) >= min_len {
                let mut found: Option<(usize, usize)> = None;
                for sep in &seps {
                    if let Some(i) = find(&data[offset..], sep) {
                        let end = offset + i + sep.len();
                        if found.is_none_or(|(_, e)| end < e) {
                            found = Some((offset + i, end));
                        }
                    }
                }
                if let Some(m) = found {
                    break m;
                }
                offset = (data.len() + 1).saturating_sub(max_len);
                if offset > limit {
                    return Err(Error::LimitOverrun {
                        message: "Separator is not found, and chunk exceed the limit".into(),
                        consumed: offset,
                    });
                }
            }
            if self.p.eof.get() {
                let k = self.unread().len();
                let partial = self.take(k);
                return Err(Error::IncompleteRead {
                    partial,
                    expected: None,
                });
            }
            self.wait_for_data().await?;
            self.check_exception()?;
        };
        if start > limit {
            return Err(Error::LimitOverrun {
                message: "Separator is found, but chunk is longer than limit".into(),
                consumed: start,
            });
        }
        Ok(self.take(end))
    }
}

/// Feeds a [`StreamReader`] from elsewhere: what its transport does, for a
/// reader made with [`StreamReader::with_limit`].
#[derive(Clone)]
pub struct StreamFeeder(Rc<StreamProtocol>);

impl StreamFeeder {
    /// As [`StreamReader::feed_data`].
    pub fn feed_data(&self, data: &[u8]) {
        use crate::protocols::Protocol;
        self.0.data_received(data);
    }
    /// As [`StreamReader::feed_eof`].
    pub fn feed_eof(&self) {
        self.0.feed_eof();
    }
    /// As [`StreamReader::set_exception`].
    pub fn set_exception(&self, exc: Error) {
        self.0.set_exception(exc);
    }
}

impl fmt::Debug for StreamFeeder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<StreamFeeder>")
    }
}

/// The first index of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() == 1 {
        return hay.iter().position(|&b| b == needle[0]);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

impl Drop for StreamReader {
    fn drop(&mut self) {
        // The connection closes with its last handle.
        self.p.handle_dropped(false);
    }
}

/// Forgets the read waiter when the wait ends, however it ends.
struct ClearWaiter<'a>(&'a StreamProtocol);

impl Drop for ClearWaiter<'_> {
    fn drop(&mut self) {
        self.0.read_waiter.borrow_mut().take();
    }
}

impl fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut info = vec!["<StreamReader".to_string()];
        let n = self.p.buffered();
        if n > 0 {
            info.push(format!("{n} bytes"));
        }
        if self.p.eof.get() {
            info.push("eof".into());
        }
        if self.p.limit != super::DEFAULT_LIMIT {
            info.push(format!("limit={}", self.p.limit));
        }
        if let Some(e) = &*self.p.exception.borrow() {
            info.push(format!("exception={e}"));
        }
        if self.p.reading_paused.get() {
            info.push("paused".into());
        }
        write!(f, "{}>", info.join(" "))
    }
}
