//! From CPython's `test_streams.py`: `StreamReader` on its own (fed by
//! hand, as asyncio's tests feed it), and streams over real connections:
//! `open_connection`/`start_server` (TCP, Unix, TLS), flow control both
//! ways, `drain` after a reset, `start_tls`, 20 MB each way; and the same
//! streams through tokio's and the `futures` crate's I/O traits.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;

use loop_api::events::options::{CreateConnectionOptions, CreateServerOptions, StartTlsOptions};
use loop_api::events::AbstractServer;
use loop_api::streams::{
    self, open_connection, start_server, Stream, StreamOptions, StreamReader, StreamWriter,
};
use loop_api::tasks::yield_now;
use loop_api::{Error, EventLoopExt, Loop, Result};

use crate::cases::test_server::{run, run_until};
use crate::util::{capture_exceptions, run_once};
use crate::{tls, Ctx, Feature};

// ----- helpers -------------------------------------------------------------------------

fn reader(lp: &Loop, limit: usize) -> StreamReader {
    StreamReader::with_limit(lp, limit).expect("a positive limit")
}

/// Feeds `chunks` one per loop iteration, then EOF if `eof`.
fn feed_later(lp: &Loop, r: &StreamReader, chunks: &[&[u8]], eof: bool) {
    let f = r.feeder();
    let chunks: Vec<Vec<u8>> = chunks.iter().map(|c| c.to_vec()).collect();
    lp.call_soon(move || {
        let lp = loop_api::get_running_loop().expect("running");
        feed_each(lp, f, chunks, eof);
    })
    .expect("call_soon");
}

fn feed_each(lp: Loop, f: streams::StreamFeeder, mut chunks: Vec<Vec<u8>>, eof: bool) {
    if chunks.is_empty() {
        if eof {
            f.feed_eof();
        }
        return;
    }
    let c = chunks.remove(0);
    f.feed_data(&c);
    let lp2 = lp.clone();
    lp.call_soon(move || feed_each(lp2, f, chunks, eof))
        .expect("call_soon");
}

/// The echo handler: reads until EOF, writing back what it reads.
async fn echo(mut r: StreamReader, w: StreamWriter) -> Result<()> {
    loop {
        let data = r.read(64 * 1024).await?;
        if data.is_empty() {
            break;
        }
        w.write(&data)?;
        w.drain().await?;
    }
    w.close();
    Ok(())
}

/// A stream echo server on loopback, and its address.
fn echo_server(lp: &Loop) -> Result<(Rc<dyn AbstractServer>, SocketAddr)> {
    let server = run(
        lp,
        start_server(echo, "127.0.0.1", 0u16, Default::default()),
    )?;
    let addr = server.local_addrs()[0];
    Ok((server, addr))
}

fn close_server(lp: &Loop, server: Rc<dyn AbstractServer>) -> Result<()> {
    server.close();
    run(lp, server.wait_closed())
}

/// Turns the loop until `peer` reads EOF.
fn peer_sees_eof(lp: &Loop, peer: &mut TcpStream) -> Result<()> {
    peer.set_nonblocking(true)?;
    let mut buf = [0u8; 64];
    run_until(lp, "the peer reads EOF", || {
        matches!(peer.read(&mut buf), Ok(0))
    })
}

fn is_incomplete(r: &Result<Vec<u8>>, partial: &[u8], expected: Option<usize>) -> bool {
    matches!(r, Err(Error::IncompleteRead { partial: p, expected: e }) if p == partial && *e == expected)
}

// ----- StreamReader fed by hand ----------------------------------------------------------

/// `test_feed_empty_data`: feeding nothing buffers nothing.
pub fn test_feed_empty_data(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let r = reader(&lp, 16);
    r.feed_data(b"");
    assert_eq!(r.buffered(), 0);
    r.feed_data(b"line1\nline2\n");
    assert_eq!(r.buffered(), 12);
    lp.close()
}

/// `test_read_zero`: `read(0)` returns nothing and consumes nothing.
pub fn test_read_zero(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"line1\n");
    let (r, data) = run(&lp, async move {
        let d = r.read(0).await?;
        Ok((r, d))
    })?;
    assert!(data.is_empty());
    assert_eq!(r.buffered(), 6);
    lp.close()
}

/// `test_read`: a read waits for data fed later, and returns what came.
pub fn test_read(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    feed_later(&lp, &r, &[b"line1\nline2\n"], false);
    let (r, data) = run(&lp, async move {
        let d = r.read(30).await?;
        Ok((r, d))
    })?;
    assert_eq!(data, b"line1\nline2\n");
    assert_eq!(r.buffered(), 0);
    lp.close()
}

/// `test_read_line_breaks`: `read(n)` takes at most `n`, across feeds.
pub fn test_read_line_breaks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"line1");
    r.feed_data(b"line2");
    let (r, a) = run(&lp, async move {
        let d = r.read(5).await?;
        Ok((r, d))
    })?;
    assert_eq!(a, b"line1");
    assert_eq!(r.buffered(), 5);
    lp.close()
}

/// `test_read_eof`: a waiting read returns empty at EOF.
pub fn test_read_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    feed_later(&lp, &r, &[], true);
    let (r, data) = run(&lp, async move {
        let d = r.read(1024).await?;
        Ok((r, d))
    })?;
    assert!(data.is_empty());
    assert!(r.at_eof());
    lp.close()
}

/// `test_read_until_eof`: `read(-1)` gathers every chunk until EOF.
pub fn test_read_until_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 4);
    feed_later(&lp, &r, &[b"chunk1\n", b"chunk2", b"", b"chunk3"], true);
    let (r, data) = run(&lp, async move {
        let d = r.read(-1).await?;
        Ok((r, d))
    })?;
    assert_eq!(data, b"chunk1\nchunk2chunk3");
    assert!(r.at_eof());
    lp.close()
}

/// `test_read_exception`: data then an exception: every read fails.
pub fn test_read_exception(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"line\n");
    r.set_exception(Error::value("boom"));
    let res = run(&lp, async move { Ok(r.read(2).await) })?;
    assert_eq!(
        res,
        Err(Error::value("boom")),
        "the exception wins over the data"
    );
    lp.close()
}

/// `test_invalid_limit`: a zero limit is a `ValueError`, everywhere.
pub fn test_invalid_limit(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    assert_eq!(
        StreamReader::with_limit(&lp, 0).err(),
        Some(Error::value("Limit cannot be <= 0"))
    );
    let opts = StreamOptions {
        limit: 0,
        options: CreateConnectionOptions::default(),
    };
    let r = run(&lp, async move {
        open_connection("127.0.0.1", 9u16, opts).await.map(|_| ())
    });
    assert_eq!(r, Err(Error::value("Limit cannot be <= 0")));
    lp.close()
}

/// `test_read_limit`: `read(n)` is not bounded by the limit.
pub fn test_read_limit(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 3);
    r.feed_data(b"chunk");
    let data = run(&lp, async move { r.read(5).await })?;
    assert_eq!(data, b"chunk");
    lp.close()
}

/// `test_readline`: a line split over feeds, the rest left buffered.
pub fn test_readline(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"chunk1 ");
    feed_later(&lp, &r, &[b"chunk2 ", b"chunk3 ", b"\n chunk4"], false);
    let (r, line) = run(&lp, async move {
        let l = r.readline().await?;
        Ok((r, l))
    })?;
    assert_eq!(line, b"chunk1 chunk2 chunk3 \n");
    assert_eq!(r.buffered(), b" chunk4".len());
    lp.close()
}

/// `test_readline_limit_with_existing_data`: a line over the limit whose
/// `\n` has arrived is a `ValueError`, and is dropped, the next line kept.
pub fn test_readline_limit_with_existing_data(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 3);
    r.feed_data(b"li");
    r.feed_data(b"ne1\nline2\n");
    let (mut r, res) = run(&lp, async move {
        let l = r.readline().await;
        Ok((r, l))
    })?;
    assert!(matches!(res, Err(Error::Value(_))), "{res:?}");
    assert_eq!(r.buffered(), b"line2\n".len(), "the next line stays");
    // That one is over the limit too; with the limit it fits:
    let (res, left) = run(&lp, async move {
        let l = r.readline().await;
        Ok((l, r.buffered()))
    })?;
    assert!(matches!(res, Err(Error::Value(_))), "{res:?}");
    assert_eq!(left, 0);
    let mut r = reader(&lp, 6);
    r.feed_data(b"li");
    r.feed_data(b"ne1\nline2\n");
    let (a, b) = run(&lp, async move {
        let a = r.readline().await?;
        let b = r.readline().await?;
        Ok((a, b))
    })?;
    assert_eq!((a, b), (b"line1\n".to_vec(), b"line2\n".to_vec()));
    lp.close()
}

/// `test_readline_limit`: a line over the limit with no `\n` yet clears
/// the buffer; the rest of the line is read as a new line.
pub fn test_readline_limit(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 7);
    let f = r.feeder();
    lp.call_soon(move || {
        f.feed_data(b"chunk1");
        f.feed_data(b"chunk2");
        f.feed_data(b"chunk3\n");
        f.feed_eof();
    })?;
    let (r, res) = run(&lp, async move {
        let l = r.readline().await;
        Ok((r, l))
    })?;
    assert!(
        matches!(res, Err(Error::Value(ref m)) if m.contains("chunk is longer than limit")),
        "{res:?}"
    );
    assert_eq!(r.buffered(), 0, "the whole overlong line is dropped");
    // Fed a piece at a time, the overrun is seen before the newline: the
    // buffer is cleared, and the line's tail is read as a line.
    let mut r = reader(&lp, 7);
    feed_later(&lp, &r, &[b"chunk1", b"chunk2", b"chunk3\n"], true);
    let (a, b) = run(&lp, async move {
        let a = r.readline().await;
        let b = r.readline().await;
        Ok((a, b))
    })?;
    assert!(
        matches!(a, Err(Error::Value(ref m)) if m.contains("chunk exceed the limit")),
        "{a:?}"
    );
    assert_eq!(b, Ok(b"chunk3\n".to_vec()));
    lp.close()
}

/// `test_at_eof`: at EOF only once every byte was read.
pub fn test_at_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    assert!(!r.at_eof());
    r.feed_data(b"some data\n");
    r.feed_eof();
    assert!(!r.at_eof());
    let (r, _) = run(&lp, async move {
        let l = r.readline().await?;
        Ok((r, l))
    })?;
    assert!(r.at_eof());
    lp.close()
}

/// `test_readline_nolimit_nowait`: lines already buffered come back at
/// once, one each.
pub fn test_readline_nolimit_nowait(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"line1\nline2\nline3\n");
    let (a, b, rest) = run(&lp, async move {
        let a = r.readline().await?;
        let b = r.readline().await?;
        Ok((a, b, r.buffered()))
    })?;
    assert_eq!(a, b"line1\n");
    assert_eq!(b, b"line2\n");
    assert_eq!(rest, 6);
    lp.close()
}

/// `test_readline_eof`: at EOF the last line comes without `\n`.
pub fn test_readline_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"some data");
    r.feed_eof();
    let (a, b) = run(&lp, async move {
        let a = r.readline().await?;
        let b = r.readline().await?;
        Ok((a, b))
    })?;
    assert_eq!(a, b"some data");
    assert!(b.is_empty(), "then empty lines");
    lp.close()
}

/// `test_readline_read_byte_count`: lines, then `read` takes what is left.
pub fn test_readline_read_byte_count(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"line1\nline2\nline3\n");
    r.feed_eof();
    let (l, d, rest) = run(&lp, async move {
        let l = r.readline().await?;
        let d = r.read(7).await?;
        let rest = r.read(-1).await?;
        Ok((l, d, rest))
    })?;
    assert_eq!(l, b"line1\n");
    assert_eq!(d, b"line2\nl");
    assert_eq!(rest, b"ine3\n");
    lp.close()
}

/// `test_readline_exception`: an exception after data: `readline` fails.
pub fn test_readline_exception(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"line\n");
    let (mut r, first) = run(&lp, async move {
        let l = r.readline().await?;
        Ok((r, l))
    })?;
    assert_eq!(first, b"line\n");
    r.set_exception(Error::value("boom"));
    let res = run(&lp, async move { Ok(r.readline().await) })?;
    assert_eq!(res, Err(Error::value("boom")));
    lp.close()
}

/// `test_readuntil_separator`: an empty separator, or an empty list of
/// them, is a `ValueError`.
pub fn test_readuntil_separator(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    let (a, b) = run(&lp, async move {
        let a = r.readuntil(b"").await;
        let empty: [&[u8]; 0] = [];
        let b = r.readuntil(&empty).await;
        Ok((a, b))
    })?;
    assert_eq!(
        a,
        Err(Error::value("Separator should be at least one-byte string"))
    );
    assert_eq!(
        b,
        Err(Error::value(
            "Separator should contain at least one element"
        ))
    );
    lp.close()
}

/// `test_readuntil_multi_chunks`: a separator split across feeds is found.
pub fn test_readuntil_multi_chunks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    feed_later(&lp, &r, &[b"line", b"1xx", b"xline2", b"x", b"xx"], false);
    let (a, b, rest) = run(&lp, async move {
        let a = r.readuntil(b"xxx").await?;
        let b = r.readuntil(b"xxx").await?;
        Ok((a, b, r.buffered()))
    })?;
    assert_eq!(a, b"line1xxx");
    assert_eq!(b, b"line2xxx");
    assert_eq!(rest, 0);
    lp.close()
}

/// `test_readuntil_multi_chunks_1`: a separator fed one byte at a time,
/// with near-misses before it.
pub fn test_readuntil_multi_chunks_1(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    feed_later(
        &lp,
        &r,
        &[
            b"QWEaa", b"XYaa", b"a", b"Xaa", b"XX", b"Xa", b"a", b"Xa", b"aa", b"X",
        ],
        false,
    );
    let (a, b) = run(&lp, async move {
        let a = r.readuntil(b"aaa").await?;
        let b = r.readuntil(b"aaa").await?;
        Ok((a, b))
    })?;
    assert_eq!(a, b"QWEaaXYaaa");
    assert_eq!(b, b"XaaXXXaaXaaa");
    lp.close()
}

/// `test_readuntil_eof`: EOF before the separator: `IncompleteReadError`
/// with everything there was (the separator's first bytes too), buffer
/// emptied.
pub fn test_readuntil_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    feed_later(&lp, &r, &[b"some dataAA"], true);
    let (res, left) = run(&lp, async move {
        let res = r.readuntil(b"AAA").await;
        Ok((res, r.buffered()))
    })?;
    assert!(is_incomplete(&res, b"some dataAA", None), "{res:?}");
    assert_eq!(left, 0);
    let msg = res.unwrap_err().to_string();
    assert!(
        msg.contains("11 bytes read on a total of undefined expected bytes"),
        "{msg}"
    );
    lp.close()
}

/// `test_readuntil_limit_found_sep`: the separator found past the limit,
/// and not found within it: `LimitOverrunError` with asyncio's `consumed`,
/// the data left in the buffer.
pub fn test_readuntil_limit_found_sep(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 3);
    r.feed_data(b"some dataAA");
    let (mut r, a) = run(&lp, async move {
        let a = r.readuntil(b"AAA").await;
        Ok((r, a))
    })?;
    assert_eq!(
        a,
        Err(Error::LimitOverrun {
            message: "Separator is not found, and chunk exceed the limit".into(),
            consumed: 9,
        })
    );
    assert_eq!(r.buffered(), 11, "the data stays");
    // Once the separator arrives, past the limit:
    r.feed_data(b"A");
    let (b, left) = run(&lp, async move {
        let b = r.readuntil(b"AAA").await;
        Ok((b, r.buffered()))
    })?;
    assert_eq!(left, 12, "the data stays");
    assert_eq!(
        b,
        Err(Error::LimitOverrun {
            message: "Separator is found, but chunk is longer than limit".into(),
            consumed: 9,
        })
    );
    lp.close()
}

/// `test_readuntil_multiple_separators` (3.13, gh-81322): the shortest
/// match wins, whichever separator it is.
pub fn test_readuntil_multiple_separators(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"line 1\nline 2\r\nline 3\r");
    feed_later(&lp, &r, &[b"\n"], true);
    let seps: [&[u8]; 2] = [b"\r\n", b"\n"];
    let got = run(&lp, async move {
        let seps2: [&[u8]; 2] = [b"\n", b"\r\n"];
        let a = r.readuntil(&seps).await?;
        let b = r.readuntil(&seps2).await?;
        let c = r.readuntil(&seps).await?;
        Ok((a, b, c))
    })?;
    assert_eq!(got.0, b"line 1\n");
    assert_eq!(got.1, b"line 2\r\n");
    assert_eq!(got.2, b"line 3\r\n");
    lp.close()
}

/// `test_readuntil_multiple_separators_limit`: with several separators,
/// the limit applies to the shortest match, which is kept.
pub fn test_readuntil_multiple_separators_limit(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 3);
    r.feed_data(b"long line\n\r");
    r.feed_eof();
    let seps: [&[u8]; 2] = [b"\n\r", b"\n"];
    let (res, left) = run(&lp, async move {
        let a = r.readuntil(&seps).await;
        Ok((a, r.buffered()))
    })?;
    assert_eq!(
        res,
        Err(Error::LimitOverrun {
            message: "Separator is found, but chunk is longer than limit".into(),
            consumed: 9,
        })
    );
    assert_eq!(left, 11);
    lp.close()
}

/// `test_readexactly_zero_or_less`: zero bytes are read at once.
pub fn test_readexactly_zero_or_less(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"data");
    let (d, left) = run(&lp, async move {
        let d = r.readexactly(0).await?;
        Ok((d, r.buffered()))
    })?;
    assert!(d.is_empty());
    assert_eq!(left, 4);
    lp.close()
}

/// `test_readexactly`: waits for every byte across feeds, leaves the rest.
pub fn test_readexactly(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    let data = b"chunk".repeat(3);
    let f = r.feeder();
    let d2 = data.clone();
    lp.call_soon(move || {
        for _ in 0..3 {
            f.feed_data(&d2);
        }
    })?;
    let (d, left) = run(&lp, async move {
        let d = r.readexactly(2 * 15).await?;
        Ok((d, r.buffered()))
    })?;
    assert_eq!(d, [&data[..], &data[..]].concat());
    assert_eq!(left, 15);
    lp.close()
}

/// `test_readexactly_limit`: `readexactly` is not bounded by the limit.
pub fn test_readexactly_limit(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 3);
    feed_later(&lp, &r, &[b"chunk", b"chunk"], false);
    let d = run(&lp, async move { r.readexactly(10).await })?;
    assert_eq!(d, b"chunkchunk");
    lp.close()
}

/// `test_readexactly_eof`: EOF in the middle: `IncompleteReadError` with
/// the partial data and the count asked for.
pub fn test_readexactly_eof(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    feed_later(&lp, &r, &[b"chunk"], true);
    let (res, left) = run(&lp, async move {
        let res = r.readexactly(10).await;
        Ok((res, r.buffered()))
    })?;
    assert!(is_incomplete(&res, b"chunk", Some(10)), "{res:?}");
    assert_eq!(left, 0);
    assert!(res
        .unwrap_err()
        .to_string()
        .contains("5 bytes read on a total of 10 expected bytes"));
    lp.close()
}

/// `test_readexactly_exception`: an exception set while waiting ends it.
pub fn test_readexactly_exception(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    r.feed_data(b"line\n");
    let f = r.feeder();
    lp.call_soon(move || f.set_exception(Error::value("boom")))?;
    let res = run(&lp, async move { Ok(r.readexactly(10).await) })?;
    assert_eq!(res, Err(Error::value("boom")));
    lp.close()
}

/// `test_exception_waiter`: a read waiting for data is woken by the
/// exception, which it returns.
pub fn test_exception_waiter(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut r = reader(&lp, 1 << 16);
    let f = r.feeder();
    let t = lp.create_task(async move { r.readline().await })?;
    run_once(&lp)?;
    assert!(!t.done(), "waiting for data");
    f.set_exception(Error::value("boom"));
    run_until(&lp, "the read ends", || t.done())?;
    assert_eq!(t.take_result(), Err(Error::value("boom")));
    lp.close()
}

/// `test_exception_cancel`: a cancelled read ends cancelled; an exception
/// set afterwards bothers nobody.
pub fn test_exception_cancel(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let mut r = reader(&lp, 1 << 16);
    let f = r.feeder();
    let t = lp.create_task(async move { r.readline().await })?;
    run_once(&lp)?;
    t.cancel(None);
    run_until(&lp, "the read is cancelled", || t.done())?;
    assert!(t.cancelled());
    f.set_exception(Error::runtime("message"));
    run_once(&lp)?;
    assert!(errors.is_empty(), "{:?}", errors.get());
    lp.close()
}

/// A read cancelled while waiting consumes nothing: the bytes that arrive
/// afterwards are all there for the next read.
pub fn test_read_cancel_leaves_data(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let r = Rc::new(RefCell::new(Some(reader(&lp, 1 << 16))));
    let f = r.borrow().as_ref().unwrap().feeder();
    let slot = r.clone();
    let t = lp.create_task(async move {
        let mut rd = slot.borrow_mut().take().unwrap();
        let res = rd.readexactly(10).await;
        *slot.borrow_mut() = Some(rd);
        res
    })?;
    run_once(&lp)?;
    f.feed_data(b"12345");
    run_once(&lp)?;
    t.cancel(None);
    run_until(&lp, "the read is cancelled", || t.done())?;
    assert!(t.cancelled());
    f.feed_data(b"67890");
    let mut rd = r.borrow_mut().take().expect("the reader came back");
    let d = run(&lp, async move { rd.readexactly(10).await })?;
    assert_eq!(d, b"1234567890");
    lp.close()
}

/// `test_streamreader_constructor` / repr: what a reader says about itself.
pub fn test_stream_reader_repr(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let r = reader(&lp, 1 << 16);
    assert_eq!(format!("{r:?}"), "<StreamReader>");
    r.feed_data(b"data");
    assert_eq!(format!("{r:?}"), "<StreamReader 4 bytes>");
    r.feed_eof();
    assert_eq!(format!("{r:?}"), "<StreamReader 4 bytes eof>");
    let r2 = reader(&lp, 123);
    assert_eq!(format!("{r2:?}"), "<StreamReader limit=123>");
    r2.set_exception(Error::value("x"));
    assert_eq!(
        format!("{r2:?}"),
        "<StreamReader limit=123 exception=ValueError: x>"
    );
    lp.close()
}

// ----- over connections ----------------------------------------------------------------

/// `test_open_connection`: a client against a stream echo server.
pub fn test_open_connection(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, addr) = echo_server(&lp)?;
    let line = run(&lp, async move {
        let (mut r, w) = open_connection("127.0.0.1", addr.port(), Default::default()).await?;
        w.write(b"GET / HTTP/1.0\r\n\r\n")?;
        w.drain().await?;
        let line = r.readline().await?;
        w.close();
        w.wait_closed().await?;
        Ok(line)
    })?;
    assert_eq!(line, b"GET / HTTP/1.0\r\n");
    close_server(&lp, server)?;
    lp.close()
}

/// `test_open_connection_error`: a refused connection is the error.
pub fn test_open_connection_error(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let res = run(&lp, async move {
        Ok(open_connection("127.0.0.1", port, Default::default())
            .await
            .map(|_| ()))
    })?;
    assert!(
        res.as_ref().is_err_and(|e| e.is_connection_refused()),
        "{res:?}"
    );
    lp.close()
}

/// `test_open_unix_connection` / `test_start_unix_server`.
pub fn test_unix_streams(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::UnixSockets)?;
    let lp = ctx.new_loop();
    let path = crate::util::TempPath::new("streams");
    let p = path.path().to_path_buf();
    let server = run(
        &lp,
        streams::start_unix_server(echo, p.to_str().unwrap().to_string(), Default::default()),
    )?;
    let p2 = p.clone();
    let got = run(&lp, async move {
        let (mut r, w) =
            streams::open_unix_connection(p2.to_str().unwrap().to_string(), Default::default())
                .await?;
        w.write(b"hello unix\n")?;
        let line = r.readline().await?;
        w.write_eof()?;
        let rest = r.read(-1).await?;
        Ok((line, rest))
    })?;
    assert_eq!(got.0, b"hello unix\n");
    assert!(got.1.is_empty());
    close_server(&lp, server)?;
    lp.close()
}

/// `test_start_server`: several clients at once, each its own handler.
pub fn test_start_server(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, addr) = echo_server(&lp)?;
    let results = run(&lp, async move {
        let mut tasks = Vec::new();
        for i in 0..5 {
            tasks.push(get_running(async move {
                let (mut r, w) =
                    open_connection("127.0.0.1", addr.port(), Default::default()).await?;
                let msg = format!("client {i}\n");
                w.write(msg.as_bytes())?;
                let line = r.readline().await?;
                w.close();
                Ok(String::from_utf8(line).unwrap() == msg)
            })?);
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await?);
        }
        Ok(all)
    })?;
    assert_eq!(results, vec![true; 5]);
    close_server(&lp, server)?;
    lp.close()
}

fn get_running<T: 'static>(
    f: impl std::future::Future<Output = Result<T>> + 'static,
) -> Result<loop_api::Task<T>> {
    loop_api::get_running_loop()?.create_task(f)
}

/// A handler's error goes to the exception handler ("Unhandled exception
/// in client_connected_cb") and closes its connection.
pub fn test_start_server_handler_error(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let server = run(
        &lp,
        start_server(
            |mut r: StreamReader, _w: StreamWriter| async move {
                r.readline().await?;
                Err(Error::value("handler fails"))
            },
            "127.0.0.1",
            0u16,
            Default::default(),
        ),
    )?;
    let addr = server.local_addrs()[0];
    let mut c = TcpStream::connect(addr)?;
    c.write_all(b"line\n")?;
    run_until(&lp, "the handler's error is reported", || {
        !errors.is_empty()
    })?;
    let e = &errors.get()[0];
    assert_eq!(e.message, "Unhandled exception in client_connected_cb");
    assert_eq!(e.exception, Some(Error::value("handler fails")));
    assert!(e.stream_transport().is_some());
    // The connection is closed: the client reads EOF.
    peer_sees_eof(&lp, &mut c)?;
    close_server(&lp, server)?;
    lp.close()
}

/// `test_wait_closed_on_close`: `wait_closed` returns once the
/// connection is gone; `is_closing` says so at once.
pub fn test_wait_closed(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, addr) = echo_server(&lp)?;
    run(&lp, async move {
        let (_r, w) = open_connection("127.0.0.1", addr.port(), Default::default()).await?;
        assert!(!w.is_closing());
        w.close();
        assert!(w.is_closing());
        w.wait_closed().await?;
        // A second wait returns at once.
        w.wait_closed().await
    })?;
    close_server(&lp, server)?;
    lp.close()
}

/// `write_eof` half-closes: the peer reads EOF and can still answer.
pub fn test_write_eof_half_close(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let server = run(
        &lp,
        start_server(
            |mut r: StreamReader, w: StreamWriter| async move {
                let all = r.read(-1).await?;
                w.write(format!("got {} bytes", all.len()).as_bytes())?;
                w.close();
                Ok(())
            },
            "127.0.0.1",
            0u16,
            Default::default(),
        ),
    )?;
    let addr = server.local_addrs()[0];
    let reply = run(&lp, async move {
        let (mut r, w) = open_connection("127.0.0.1", addr.port(), Default::default()).await?;
        assert!(w.can_write_eof());
        w.writelines(&[b"abc", b"defg", b""])?;
        w.write_eof()?;
        r.read(-1).await
    })?;
    assert_eq!(reply, b"got 7 bytes");
    close_server(&lp, server)?;
    lp.close()
}

/// `get_extra_info` is the transport's: the peer and socket addresses.
pub fn test_writer_extra_info(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, addr) = echo_server(&lp)?;
    let (peer, repr) = run(&lp, async move {
        let (_r, w) = open_connection("127.0.0.1", addr.port(), Default::default()).await?;
        let peer = w.get_extra_info("peername").and_then(|i| i.as_addr());
        let repr = format!("{w:?}");
        w.close();
        Ok((peer, repr))
    })?;
    assert_eq!(peer, Some(addr));
    assert!(repr.starts_with("<StreamWriter transport=<"), "{repr}");
    close_server(&lp, server)?;
    lp.close()
}

/// Dropping a writer closes its connection (asyncio's `__del__`): the peer
/// reads EOF.
pub fn test_drop_writer_closes(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (r, w) = run(&lp, async move {
        open_connection("127.0.0.1", port, Default::default()).await
    })?;
    let (mut peer, _) = listener.accept()?;
    drop(w);
    drop(r);
    peer_sees_eof(&lp, &mut peer)?;
    lp.close()
}

/// The reader pauses its transport above twice its limit and resumes it
/// once reads bring the buffer within the limit; every byte arrives.
pub fn test_reader_pauses_transport(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let limit = 1024;
    let opts = StreamOptions {
        limit,
        options: CreateConnectionOptions::default(),
    };
    let (mut r, w) = run(&lp, async move {
        open_connection("127.0.0.1", port, opts).await
    })?;
    let (mut peer, _) = listener.accept()?;
    let total = 64 * 1024;
    let writer = std::thread::spawn(move || {
        peer.write_all(&vec![7u8; total]).unwrap();
        peer
    });
    let t = w.transport();
    run_until(&lp, "reading paused", || !t.is_reading())?;
    assert!(r.buffered() > 2 * limit, "paused only above 2 x limit");
    let got = run(&lp, async move {
        let mut n = 0;
        while n < total {
            n += r.read(100).await?.len();
        }
        Ok((n, r))
    })?;
    assert_eq!(got.0, total);
    assert!(t.is_reading(), "resumed once the buffer emptied");
    drop(writer.join());
    drop(w);
    lp.close()
}

/// `drain` waits while the peer does not read (the transport is over its
/// high-water mark), and returns once the peer has read enough.
pub fn test_drain_slow_reader(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (_r, w) = run(&lp, async move {
        open_connection("127.0.0.1", port, Default::default()).await
    })?;
    let (mut peer, _) = listener.accept()?;
    let w = Rc::new(w);
    let w2 = w.clone();
    let chunk = vec![1u8; 1 << 20];
    let drained = Rc::new(Cell::new(false));
    let d2 = drained.clone();
    // 0: writing; 1: waiting in drain with the transport paused; 2: the
    // OS took everything written (Wine's sockets buffer without bound).
    let stage = Rc::new(Cell::new(0u8));
    let s2 = stage.clone();
    let t = lp.create_task(async move {
        let mut sent = 0usize;
        // Write until the transport's buffer stays over its high-water
        // mark, then drain.
        for _ in 0..64 {
            w2.write(&chunk)?;
            sent += chunk.len();
            yield_now().await;
            if w2.transport().get_write_buffer_size() > 64 * 1024 {
                break;
            }
        }
        s2.set(if w2.transport().get_write_buffer_size() > 64 * 1024 {
            1
        } else {
            2
        });
        w2.drain().await?;
        d2.set(true);
        Ok(sent)
    })?;
    run_until(&lp, "the writer is done writing", || stage.get() != 0)?;
    #[cfg(target_os = "linux")]
    assert_eq!(
        stage.get(),
        1,
        "a peer that reads nothing backs the transport up"
    );
    // Under Wine an overlapped send completes once Wine has copied it,
    // whether or not the peer reads, so there drain may return at once.
    #[cfg(target_os = "linux")]
    {
        for _ in 0..5 {
            run_once(&lp)?;
        }
        assert!(!drained.get(), "drain waits while the peer reads nothing");
    }
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        while let Ok(k) = peer.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k;
        }
        n
    });
    run_until(&lp, "drain returns", || t.done())?;
    let sent = t.take_result()?;
    assert!(drained.get());
    w.close();
    run(&lp, {
        let w = w.clone();
        async move { w.wait_closed().await }
    })?;
    assert_eq!(reader.join().unwrap(), sent, "every byte reached the peer");
    lp.close()
}

/// `test_drain_raises`: after the peer resets the connection, `drain`
/// fails with the reset (or asyncio's `ConnectionResetError('Connection
/// lost')`), never hangs.
pub fn test_drain_after_reset(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (mut r, w) = run(&lp, async move {
        open_connection("127.0.0.1", port, Default::default()).await
    })?;
    let (peer, _) = listener.accept()?;
    let peer = socket2::Socket::from(peer);
    peer.set_linger(Some(std::time::Duration::ZERO))?;
    drop(peer);
    let res = run(&lp, async move {
        // Keep writing until the reset is seen.
        let read = r.read(100).await;
        let mut drained = Ok(());
        for _ in 0..100 {
            let _ = w.write(b"x".repeat(1000).as_slice());
            drained = w.drain().await;
            if drained.is_err() {
                break;
            }
            yield_now().await;
        }
        Ok((read, drained))
    })?;
    let (read, drained) = res;
    assert!(
        read.as_ref().is_err_and(|e| e.is_connection_reset())
            || read.as_ref().is_ok_and(|d| d.is_empty()),
        "{read:?}"
    );
    assert!(
        drained.as_ref().is_err_and(|e| e.is_connection_error()),
        "{drained:?}"
    );
    lp.close()
}

/// 20 MB through a stream echo server, written and read concurrently,
/// byte-exact.
pub fn test_stream_20mb_both_ways(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (server, addr) = echo_server(&lp)?;
    let total = 20 * 1024 * 1024;
    let ok = run(&lp, async move {
        let (mut r, w) = open_connection("127.0.0.1", addr.port(), Default::default()).await?;
        let writer = get_running(async move {
            let mut sent = 0usize;
            let mut i = 0u32;
            while sent < total {
                let chunk: Vec<u8> = (0..65536u32)
                    .map(|k| (k.wrapping_mul(31) ^ i) as u8)
                    .collect();
                w.write(&chunk)?;
                w.drain().await?;
                sent += chunk.len();
                i += 1;
            }
            w.write_eof()?;
            Ok(w)
        })?;
        let mut got = 0usize;
        let mut i = 0u32;
        let mut ok = true;
        while got < total {
            let chunk = r.readexactly(65536).await?;
            let expect: Vec<u8> = (0..65536u32)
                .map(|k| (k.wrapping_mul(31) ^ i) as u8)
                .collect();
            ok &= chunk == expect;
            got += chunk.len();
            i += 1;
        }
        let rest = r.read(-1).await?;
        let _w = writer.await?;
        Ok(ok && rest.is_empty())
    })?;
    assert!(ok, "every byte came back, in order");
    close_server(&lp, server)?;
    lp.close()
}

/// Streams over TLS: `ssl=` on both functions.
pub fn test_stream_tls(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let server = run(
        &lp,
        start_server(
            echo,
            "127.0.0.1",
            0u16,
            CreateServerOptions {
                ssl: Some(tls::server()),
                ..Default::default()
            }
            .into(),
        ),
    )?;
    let addr = server.local_addrs()[0];
    let got = run(&lp, async move {
        let (mut r, w) = open_connection(
            "127.0.0.1",
            addr.port(),
            CreateConnectionOptions {
                ssl: Some(tls::client()),
                server_hostname: Some("localhost".into()),
                ..Default::default()
            }
            .into(),
        )
        .await?;
        assert!(!w.can_write_eof(), "no half-close over TLS");
        assert!(w.get_extra_info("ssl_object").is_some());
        w.write(b"over tls\n")?;
        let line = r.readline().await?;
        w.close();
        w.wait_closed().await?;
        Ok(line)
    })?;
    assert_eq!(got, b"over tls\n");
    close_server(&lp, server)?;
    lp.close()
}

/// `test_start_tls` (streams): a plain connection upgraded with
/// `StreamWriter::start_tls` on both sides, after a plain exchange.
pub fn test_stream_start_tls(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let server = run(
        &lp,
        start_server(
            |mut r: StreamReader, w: StreamWriter| async move {
                let hello = r.readline().await?;
                w.write(&hello)?;
                w.drain().await?;
                w.start_tls(tls::server(), StartTlsOptions::default())
                    .await?;
                echo(r, w).await
            },
            "127.0.0.1",
            0u16,
            Default::default(),
        ),
    )?;
    let addr = server.local_addrs()[0];
    let got = run(&lp, async move {
        let (mut r, w) = open_connection("127.0.0.1", addr.port(), Default::default()).await?;
        w.write(b"STARTTLS\n")?;
        let plain = r.readline().await?;
        w.start_tls(
            tls::client(),
            StartTlsOptions {
                server_hostname: Some("localhost".into()),
                ..Default::default()
            },
        )
        .await?;
        let secured = w.get_extra_info("ssl_object").is_some();
        w.write(b"secret\n")?;
        let line = r.readline().await?;
        w.close();
        Ok((plain, secured, line))
    })?;
    assert_eq!(got.0, b"STARTTLS\n");
    assert!(got.1, "the writer's transport is the TLS one");
    assert_eq!(got.2, b"secret\n");
    close_server(&lp, server)?;
    lp.close()
}

// ----- the I/O traits --------------------------------------------------------------------

/// tokio's `AsyncReadExt`/`AsyncWriteExt`/`AsyncBufReadExt` over a
/// [`Stream`]: `write_all`, `read_line`, `read_exact`, `shutdown`, and EOF
/// as `Ok(0)`.
pub fn test_tokio_io_traits(ctx: &Ctx) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let lp = ctx.new_loop();
    let (server, addr) = echo_server(&lp)?;
    let got = run(&lp, async move {
        let mut s: Stream = open_connection("127.0.0.1", addr.port(), Default::default())
            .await?
            .into();
        let io = |e: std::io::Error| Error::from(e);
        s.write_all(b"first line\nsecond").await.map_err(io)?;
        s.flush().await.map_err(io)?;
        let mut line = String::new();
        s.read_line(&mut line).await.map_err(io)?;
        let mut six = [0u8; 6];
        s.read_exact(&mut six).await.map_err(io)?;
        s.shutdown().await.map_err(io)?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.map_err(io)?;
        let mut after = [0u8; 4];
        let n = s.read(&mut after).await.map_err(io)?;
        Ok((line, six, rest, n))
    })?;
    assert_eq!(got.0, "first line\n");
    assert_eq!(&got.1, b"second");
    assert!(got.2.is_empty());
    assert_eq!(got.3, 0, "EOF reads as Ok(0)");
    close_server(&lp, server)?;
    lp.close()
}

/// The halves in two tasks: one reads, one writes, each woken by its own
/// waker, 4 MB through an echo server with the traits.
pub fn test_tokio_io_split_full_duplex(ctx: &Ctx) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lp = ctx.new_loop();
    let (server, addr) = echo_server(&lp)?;
    let total = 4 * 1024 * 1024;
    let (sent, got) = run(&lp, async move {
        let (mut r, mut w) = open_connection("127.0.0.1", addr.port(), Default::default()).await?;
        let writer = get_running(async move {
            let chunk = vec![0x5au8; 100_000];
            let mut sent = 0;
            while sent < total {
                let n = (total - sent).min(chunk.len());
                w.write_all(&chunk[..n]).await.map_err(Error::from)?;
                sent += n;
            }
            w.shutdown().await.map_err(Error::from)?;
            Ok(sent)
        })?;
        let mut got = 0usize;
        let mut buf = vec![0u8; 50_000];
        loop {
            let n = AsyncReadExt::read(&mut r, &mut buf)
                .await
                .map_err(Error::from)?;
            if n == 0 {
                break;
            }
            assert!(buf[..n].iter().all(|&b| b == 0x5a));
            got += n;
        }
        Ok((writer.await?, got))
    })?;
    assert_eq!(sent, total);
    assert_eq!(got, total);
    close_server(&lp, server)?;
    lp.close()
}

/// `poll_write` is pending while the transport is over its high-water
/// mark, and `resume_writing` wakes it: a write of 8 MB to a peer that
/// starts reading later completes, every byte delivered.
pub fn test_tokio_write_waits_for_flow_control(ctx: &Ctx) -> Result<()> {
    use tokio::io::AsyncWriteExt;
    let lp = ctx.new_loop();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (_r, mut w) = run(&lp, async move {
        open_connection("127.0.0.1", port, Default::default()).await
    })?;
    let (mut peer, _) = listener.accept()?;
    let total = 8 * 1024 * 1024;
    let t = lp.create_task(async move {
        let data = vec![3u8; total];
        for chunk in data.chunks(256 * 1024) {
            w.write_all(chunk).await.map_err(Error::from)?;
        }
        w.flush().await.map_err(Error::from)?;
        w.shutdown().await.map_err(Error::from)?;
        Ok(w)
    })?;
    for _ in 0..5 {
        run_once(&lp)?;
    }
    assert!(!t.done(), "the writes wait for the peer");
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        peer.read_to_end(&mut all).map(|_| all.len())
    });
    run_until(&lp, "the writes finish", || t.done())?;
    let w = t.take_result()?;
    run_until(&lp, "flushed", || {
        w.transport().get_write_buffer_size() == 0
    })?;
    drop(w);
    run_once(&lp)?;
    assert_eq!(reader.join().unwrap()?, total);
    lp.close()
}

/// A read through the traits after the peer reset the connection is the
/// reset error; a write after it is an error too, not a hang.
pub fn test_tokio_io_errors(ctx: &Ctx) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let lp = ctx.new_loop();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let (mut r, mut w) = run(&lp, async move {
        open_connection("127.0.0.1", port, Default::default()).await
    })?;
    let (peer, _) = listener.accept()?;
    let peer = socket2::Socket::from(peer);
    peer.set_linger(Some(std::time::Duration::ZERO))?;
    drop(peer);
    let (read, write) = run(&lp, async move {
        let mut buf = [0u8; 16];
        // The inherent `read(n)` (asyncio's) shadows the extension trait's.
        let read = AsyncReadExt::read(&mut r, &mut buf).await;
        let mut write = Ok(());
        for _ in 0..10 {
            write = w.write_all(b"after the reset").await;
            if write.is_err() {
                break;
            }
            yield_now().await;
        }
        Ok((read.map_err(|e| e.kind()), write.map_err(|e| e.kind())))
    })?;
    assert!(
        matches!(read, Err(std::io::ErrorKind::ConnectionReset) | Ok(0)),
        "{read:?}"
    );
    assert!(write.is_err(), "{write:?}");
    lp.close()
}

/// The `futures` crate's traits, polled by hand: read and write through
/// `futures_io::AsyncRead`/`AsyncWrite`/`AsyncBufRead`.
pub fn test_futures_io_traits(ctx: &Ctx) -> Result<()> {
    use std::pin::Pin;
    let lp = ctx.new_loop();
    let (server, addr) = echo_server(&lp)?;
    let got = run(&lp, async move {
        let mut s: Stream = open_connection("127.0.0.1", addr.port(), Default::default())
            .await?
            .into();
        let msg = b"futures io\n";
        let mut off = 0;
        while off < msg.len() {
            off += std::future::poll_fn(|cx| {
                futures_io::AsyncWrite::poll_write(Pin::new(&mut s), cx, &msg[off..])
            })
            .await?;
        }
        std::future::poll_fn(|cx| futures_io::AsyncWrite::poll_flush(Pin::new(&mut s), cx)).await?;
        let mut got = Vec::new();
        while !got.ends_with(b"\n") {
            let n = std::future::poll_fn(|cx| {
                let buf = std::task::ready!(futures_io::AsyncBufRead::poll_fill_buf(
                    Pin::new(&mut s),
                    cx
                ))?;
                got.extend_from_slice(buf);
                std::task::Poll::Ready(Ok::<_, std::io::Error>(buf.len()))
            })
            .await?;
            futures_io::AsyncBufRead::consume(Pin::new(&mut s), n);
        }
        std::future::poll_fn(|cx| futures_io::AsyncWrite::poll_close(Pin::new(&mut s), cx)).await?;
        let mut tail = [0u8; 8];
        let n = std::future::poll_fn(|cx| {
            futures_io::AsyncRead::poll_read(Pin::new(&mut s), cx, &mut tail)
        })
        .await?;
        Ok((got, n))
    })?;
    assert_eq!(got.0, b"futures io\n");
    assert_eq!(got.1, 0);
    close_server(&lp, server)?;
    lp.close()
}

/// tokio-util's `LinesCodec` framing a stream: lines both ways.
pub fn test_tokio_util_lines_codec(ctx: &Ctx) -> Result<()> {
    use tokio_util::codec::{Framed, LinesCodec};
    let lp = ctx.new_loop();
    let (server, addr) = echo_server(&lp)?;
    let got = run(&lp, async move {
        let s: Stream = open_connection("127.0.0.1", addr.port(), Default::default())
            .await?
            .into();
        let mut framed = Framed::new(s, LinesCodec::new());
        let other = |e: tokio_util::codec::LinesCodecError| Error::other(e);
        for l in ["alpha", "beta", "gamma"] {
            futures_sink_send(&mut framed, l.to_string())
                .await
                .map_err(other)?;
        }
        let mut lines = Vec::new();
        while lines.len() < 3 {
            match futures_next(&mut framed).await {
                Some(l) => lines.push(l.map_err(other)?),
                None => break,
            }
        }
        Ok(lines)
    })?;
    assert_eq!(got, vec!["alpha", "beta", "gamma"]);
    close_server(&lp, server)?;
    lp.close()
}

/// `SinkExt::send` without the futures crate: ready, start, flush.
async fn futures_sink_send<S, I>(sink: &mut S, item: I) -> std::result::Result<(), S::Error>
where
    S: futures_sink::Sink<I> + Unpin,
{
    use std::pin::Pin;
    std::future::poll_fn(|cx| Pin::new(&mut *sink).poll_ready(cx)).await?;
    Pin::new(&mut *sink).start_send(item)?;
    std::future::poll_fn(|cx| Pin::new(&mut *sink).poll_flush(cx)).await
}

/// `StreamExt::next` without the futures crate.
async fn futures_next<S: futures_core::Stream + Unpin>(s: &mut S) -> Option<S::Item> {
    use std::pin::Pin;
    std::future::poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
}
