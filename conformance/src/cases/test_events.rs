//! From CPython's `test_events.py`: handles, timer handles, thread-safe calls, readiness on real descriptors.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use loop_api::{Error, EventLoopExt, Loop, Result, TimerHandle};

#[allow(unused_imports)]
use crate::util::{capture_exceptions, expect_closed, expect_runtime, soon, stop_after, Log};
use crate::{Ctx, Feature};

/// The loop's clock may round; a timer is due when `when < now + resolution`.
const CLOCK_RES: f64 = 1e-6;

// ----- running ------------------------------------------------------------------

/// `EventLoopTestsMixin.test_run_until_complete_nesting`: running the loop
/// from inside itself is "This event loop is already running".
pub fn test_run_until_complete_nesting(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let lp2 = lp.clone();
    let (nested_ruc, nested_rf) = lp.run_until_complete(async move {
        assert!(lp2.is_running());
        let tasks_before = loop_api::all_tasks(&*lp2).len();
        let a = lp2.run_until_complete(async { Ok(()) });
        // Refused before it wrapped the coroutine: no orphan task is left.
        assert_eq!(loop_api::all_tasks(&*lp2).len(), tasks_before);
        let b = lp2.run_forever();
        Ok((a, b))
    })?;
    expect_runtime(nested_ruc, "This event loop is already running");
    expect_runtime(nested_rf, "This event loop is already running");
    // From a plain callback too.
    let got = Rc::new(RefCell::new(None));
    let (g, lp2) = (got.clone(), lp.clone());
    soon(&lp, move || {
        *g.borrow_mut() = Some(lp2.run_forever());
        lp2.stop();
    })?;
    lp.run_forever()?;
    let r = got.borrow_mut().take().expect("callback ran");
    expect_runtime(r, "This event loop is already running");
    assert!(!lp.is_running());
    lp.close()
}

/// `EventLoopTestsMixin.test_run_until_complete`: returns the coroutine's
/// value (or error) once done, not before the sleep in it is over.
pub fn test_run_until_complete(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let delay = 0.1;
    let t0 = lp.time();
    let v = lp.run_until_complete(async move {
        loop_api::sleep(delay).await?;
        Ok("slept")
    })?;
    let dt = lp.time() - t0;
    assert_eq!(v, "slept");
    assert!(dt >= delay - CLOCK_RES, "returned after {dt}s");
    match lp.run_until_complete(async { Err::<(), _>(Error::value("bad value")) }) {
        Err(Error::Value(m)) => assert_eq!(m, "bad value"),
        Err(e) => panic!("expected ValueError, got {e}"),
        Ok(()) => panic!("expected ValueError, got Ok"),
    }
    let fut = lp.create_future::<u8>();
    let f = fut.clone();
    soon(&lp, move || f.set_result(9).unwrap())?;
    assert_eq!(lp.run_until_complete(fut)?, 9);
    lp.close()
}

/// `EventLoopTestsMixin.test_run_until_complete_stopped`: stopping the loop
/// before the future is done is "Event loop stopped before Future completed."
pub fn test_run_until_complete_stopped(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let lp2 = lp.clone();
    let r = lp.run_until_complete(async move {
        lp2.stop();
        loop_api::sleep(0.1).await?;
        Ok(())
    });
    expect_runtime(r, "Event loop stopped before Future completed.");
    assert!(!lp.is_running());
    lp.close()
}

/// `EventLoopTestsMixin.test_close_running_event_loop`: a running loop
/// refuses to close ("Cannot close a running event loop") and stays open.
pub fn test_close_running_event_loop(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let lp2 = lp.clone();
    let r = lp.run_until_complete(async move { lp2.close() });
    expect_runtime(r, "Cannot close a running event loop");
    assert!(!lp.is_closed());
    let got = Rc::new(RefCell::new(None));
    let (g, lp2) = (got.clone(), lp.clone());
    soon(&lp, move || {
        *g.borrow_mut() = Some(lp2.close());
        lp2.stop();
    })?;
    lp.run_forever()?;
    expect_runtime(
        got.borrow_mut().take().expect("ran"),
        "Cannot close a running event loop",
    );
    assert!(!lp.is_closed());
    assert_eq!(lp.run_until_complete(async { Ok(1) })?, 1);
    lp.close()?;
    assert!(lp.is_closed());
    Ok(())
}

/// `EventLoopTestsMixin.test_close`: every scheduling method of a closed
/// loop is "Event loop is closed".
pub fn test_close(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    lp.close()?;
    expect_closed(lp.run_forever());
    let fut = lp.create_future::<()>();
    expect_closed(lp.run_until_complete(fut));
    expect_closed(lp.call_soon_dyn(Box::new(|| {}), None));
    expect_closed(lp.call_soon_threadsafe(Box::new(|| {})));
    expect_closed(lp.call_later_dyn(1.0, Box::new(|| {}), None));
    expect_closed(lp.call_at_dyn(lp.time(), Box::new(|| {}), None));
    expect_closed(lp.create_task(async { Ok(()) }));
    expect_closed(lp.run_in_executor(None, || ()));
    expect_closed(lp.remote().call_soon_threadsafe(|| {}));
    Ok(())
}

// ----- call_soon, call_later, threads -------------------------------------------

/// `EventLoopTestsMixin.test_call_soon`: the callback runs with what it captured.
pub fn test_call_soon(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let results = Log::new();
    let (r, lp2) = (results.clone(), lp.clone());
    let (a, b) = ("hello".to_string(), "world".to_string());
    let h = soon(&lp, move || {
        r.push((a, b));
        lp2.stop();
    })?;
    assert!(!h.cancelled());
    lp.run_forever()?;
    assert_eq!(
        results.get(),
        vec![("hello".to_string(), "world".to_string())]
    );
    lp.close()
}

/// `EventLoopTestsMixin.test_call_later`: the callback runs once, not
/// before its delay.
pub fn test_call_later(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let results: Log<(&str, f64)> = Log::new();
    let t0 = lp.time();
    let (r, lp2) = (results.clone(), lp.clone());
    lp.call_later_dyn(
        0.1,
        Box::new(move || {
            r.push(("hello world", lp2.time()));
            lp2.stop();
        }),
        None,
    )?;
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    let got = results.get();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "hello world");
    assert!(
        got[0].1 - t0 >= 0.1 - CLOCK_RES,
        "ran after {}s",
        got[0].1 - t0
    );
    lp.close()
}

/// `EventLoopTestsMixin.test_call_soon_threadsafe`: a call made from another
/// thread before (happens-before) a `call_soon` on the loop's thread runs first.
pub fn test_call_soon_threadsafe(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let results = Arc::new(Mutex::new(Vec::new()));
    let (remote, r) = (lp.remote(), results.clone());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let t = std::thread::spawn(move || {
        remote
            .call_soon_threadsafe(move || r.lock().unwrap().push("hello"))
            .expect("loop open");
        done_tx.send(()).unwrap();
    });
    done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("thread ran");
    let (r, lp2) = (results.clone(), lp.clone());
    soon(&lp, move || {
        r.lock().unwrap().push("world");
        lp2.stop();
    })?;
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    t.join().expect("thread");
    assert_eq!(*results.lock().unwrap(), vec!["hello", "world"]);
    lp.close()
}

/// `EventLoopTestsMixin.test_call_soon_threadsafe_same_thread`: from the
/// loop's own thread it is FIFO with `call_soon`.
pub fn test_call_soon_threadsafe_same_thread(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let results = Arc::new(Mutex::new(Vec::new()));
    let r = results.clone();
    let h = lp.call_soon_threadsafe(Box::new(move || r.lock().unwrap().push("hello")))?;
    assert!(!h.cancelled());
    let (r, lp2) = (results.clone(), lp.clone());
    soon(&lp, move || {
        r.lock().unwrap().push("world");
        lp2.stop();
    })?;
    lp.run_forever()?;
    assert_eq!(*results.lock().unwrap(), vec!["hello", "world"]);
    lp.close()
}

// ----- executor -------------------------------------------------------------------

/// `EventLoopTestsMixin.test_run_in_executor`: the function runs on another
/// thread and its value is the future's result.
pub fn test_run_in_executor(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let arg = String::from("yo");
    let fut = lp.run_in_executor(None, move || (arg, std::thread::current().id()))?;
    let (res, thread) = lp.run_until_complete(fut)?;
    assert_eq!(res, "yo");
    assert_ne!(thread, std::thread::current().id());
    lp.close()
}

/// `EventLoopTestsMixin.test_run_in_executor_cancel`: cancelling the future
/// while the job runs is harmless: the job's late result is dropped
/// without an error being reported.
pub fn test_run_in_executor_cancel(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let fut = lp.run_in_executor(None, move || {
        let _ = release_rx.recv_timeout(Duration::from_secs(30));
        5
    })?;
    assert!(fut.cancel(None));
    release_tx.send(()).unwrap();
    let shut = lp.shutdown_default_executor(None);
    lp.run_until_complete(shut)?;
    // The job finished before its threads were joined: its completion is
    // queued on the loop. Let it arrive.
    for _ in 0..3 {
        crate::util::run_once(&lp)?;
    }
    assert!(fut.cancelled());
    assert!(errors.is_empty(), "{:?}", errors.get());
    lp.close()
}

// ----- handles --------------------------------------------------------------------

/// `HandleTests.test_handle`: a handle reports its cancellation, and
/// cancelling twice is harmless.
pub fn test_handle(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let h = soon(&lp, || {})?;
    assert!(!h.cancelled());
    assert!(format!("{h:?}").starts_with("<Handle"), "{h:?}");
    h.cancel();
    assert!(h.cancelled());
    h.cancel();
    assert!(h.cancelled());
    assert!(format!("{h:?}").contains("cancelled"), "{h:?}");
    let h2 = h.clone();
    assert!(h2.ptr_eq(&h) && h2.cancelled());
    lp.close()
}

/// `Handle.cancel()` drops the callback, and what it captured, at once.
pub fn test_handle_cancel_drops_callback(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let captured = Rc::new(());
    let c = captured.clone();
    let h = soon(&lp, move || drop(c))?;
    assert_eq!(Rc::strong_count(&captured), 2);
    h.cancel();
    assert_eq!(Rc::strong_count(&captured), 1);
    lp.close()
}

/// `TimerTests.test_when`: `when()` is the deadline given to `call_at`,
/// and `time() + delay` for `call_later`.
pub fn test_when(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let when = lp.time() + 123.5;
    let h = lp.call_at_dyn(when, Box::new(|| {}), None)?;
    assert_eq!(h.when(), when);
    let before = lp.time();
    let h2 = lp.call_later_dyn(10.0, Box::new(|| {}), None)?;
    let after = lp.time();
    assert!(h2.when() >= before + 10.0 && h2.when() <= after + 10.0);
    lp.close()
}

/// `TimerTests.test_timer`: a timer handle cancels like a handle and shows
/// its deadline.
pub fn test_timer(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let h: TimerHandle = lp.call_later_dyn(60.0, Box::new(|| {}), None)?;
    assert!(!h.cancelled());
    let repr = format!("{h:?}");
    assert!(
        repr.starts_with("<TimerHandle") && repr.contains("when="),
        "{repr}"
    );
    h.cancel();
    assert!(h.cancelled() && h.as_handle().cancelled());
    assert!(format!("{h:?}").contains("cancelled"));
    lp.close()
}

/// `TimerTests.test_timer_comparison`: timer handles order by deadline.
pub fn test_timer_comparison(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.time() + 100.0;
    let h1 = lp.call_at_dyn(t, Box::new(|| {}), None)?;
    let h2 = lp.call_at_dyn(t, Box::new(|| {}), None)?;
    let h3 = lp.call_at_dyn(t + 10.0, Box::new(|| {}), None)?;
    assert!(h1 == h2 && h1 <= h2 && h1 >= h2);
    assert!(h1 < h3 && h1 != h3);
    assert_eq!(h3.partial_cmp(&h1), Some(std::cmp::Ordering::Greater));
    h1.cancel();
    assert!(h1 == h2, "cancelling does not change the deadline");
    lp.close()
}

// ----- readiness --------------------------------------------------------------------

/// `test_server_close` through readiness (asyncio's `_stop_serving`:
/// `remove_reader(fd)`, then `close`): a listener watched for reading and
/// then closed refuses connections at once, even where the watch holds
/// the socket in the kernel (io_uring's poll requests) until its removal
/// is processed.
pub fn test_remove_reader_then_close_refuses(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    use crate::util::RawOf;
    let lp = ctx.new_loop();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let fd = listener.raw();
    lp.add_reader_dyn(fd, Box::new(|| {}))?;
    crate::util::run_once(&lp)?; // the watch is armed
    assert!(lp.remove_reader(fd)?);
    drop(listener);
    let refused = std::net::TcpStream::connect(addr);
    assert_eq!(
        refused.map_err(|e| e.kind()).err(),
        Some(std::io::ErrorKind::ConnectionRefused),
        "a connection to the closed listener is refused"
    );
    lp.close()
}

/// `EventLoopTestsMixin.test_reader_callback`: the reader runs as data
/// arrives, sees EOF, and removes itself.
pub fn test_reader_callback(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        use std::io::{Read, Write};
        let lp = ctx.new_loop();
        let (r, w) = crate::util::socketpair();
        let fd = r.raw();
        let w = Rc::new(RefCell::new(Some(w)));
        let bytes = Log::new();
        let removed = Rc::new(Cell::new(None));
        let (b, lp2, w2, rm) = (bytes.clone(), lp.clone(), w.clone(), removed.clone());
        let mut r = r;
        lp.add_reader_dyn(
            fd,
            Box::new(move || {
                let mut buf = [0u8; 1024];
                match r.read(&mut buf) {
                    Ok(0) => {
                        rm.set(Some(lp2.remove_reader(fd).unwrap()));
                        lp2.stop();
                    }
                    Ok(n) => {
                        buf[..n].iter().for_each(|&x| b.push(x));
                        if b.len() == 3 {
                            w2.borrow_mut().as_mut().unwrap().write_all(b"def").unwrap();
                        } else if b.len() == 6 {
                            w2.borrow_mut().take(); // close: EOF
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }),
        )?;
        let w3 = w.clone();
        soon(&lp, move || {
            w3.borrow_mut().as_mut().unwrap().write_all(b"abc").unwrap()
        })?;
        stop_after(&lp, 10.0);
        lp.run_forever()?;
        assert_eq!(bytes.get(), b"abcdef");
        assert_eq!(removed.get(), Some(true));
        assert!(!lp.remove_reader(fd)?);
        lp.close()
    }
}

/// Readiness is level-triggered: a reader that leaves data unread runs
/// again on every iteration.
pub fn test_reader_callback_level_triggered(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        use std::io::Write;
        let lp = ctx.new_loop();
        let (r, mut w) = crate::util::socketpair();
        let iteration = Rc::new(Cell::new(0u32));
        // Counts iterations: reschedules itself once per iteration.
        fn tick(lp: Loop, n: Rc<Cell<u32>>) {
            n.set(n.get() + 1);
            let lp2 = lp.clone();
            let _ = soon(&lp, move || tick(lp2, n));
        }
        let (lp2, n) = (lp.clone(), iteration.clone());
        soon(&lp, move || tick(lp2, n))?;
        let seen = Log::new();
        let (s, lp2, n) = (seen.clone(), lp.clone(), iteration.clone());
        lp.add_reader_dyn(
            r.raw(),
            Box::new(move || {
                s.push(n.get());
                if s.len() == 3 {
                    lp2.stop();
                }
            }),
        )?;
        w.write_all(b"x")?;
        stop_after(&lp, 10.0);
        lp.run_forever()?;
        let seen = seen.get();
        assert_eq!(seen.len(), 3, "the reader did not fire again: {seen:?}");
        assert!(seen.windows(2).all(|p| p[0] < p[1]), "{seen:?}");
        assert!(lp.remove_reader(r.raw())?);
        lp.close()
    }
}

/// A callback scheduled during an iteration waits for the next poll: a
/// reader made ready by a self-rescheduling callback runs right after the
/// next poll, not after the callback gives up.
pub fn test_reader_ready_between_iterations(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        use std::io::{Read, Write};
        let lp = ctx.new_loop();
        let (mut r, w) = crate::util::socketpair();
        let fd = r.raw();
        let log: Log<String> = Log::new();
        fn spin(lp: Loop, log: Log<String>, w: Rc<std::net::TcpStream>, n: u32) {
            log.push(format!("a{n}"));
            if n == 1 {
                (&*w).write_all(b"!").unwrap();
            }
            if n == 20 {
                lp.stop();
                return;
            }
            let lp2 = lp.clone();
            soon(&lp, move || spin(lp2, log, w, n + 1)).unwrap();
        }
        let l = log.clone();
        lp.add_reader_dyn(
            fd,
            Box::new(move || {
                let mut buf = [0u8; 8];
                if let Ok(n) = r.read(&mut buf) {
                    if n > 0 {
                        l.push("reader".into());
                    }
                }
            }),
        )?;
        let (lp2, l) = (lp.clone(), log.clone());
        let w = Rc::new(w);
        soon(&lp, move || spin(lp2, l, w, 1))?;
        stop_after(&lp, 10.0);
        lp.run_forever()?;
        let got = log.get();
        let at = got.iter().position(|s| s == "reader");
        assert!(
            at.is_some_and(|i| i <= 3),
            "the reader waited for the spinning callback: {got:?}"
        );
        assert!(lp.remove_reader(fd)?);
        lp.close()
    }
}

/// `remove_reader` in the reader's own callback: true, then false; the
/// reader does not run again though data is left unread.
pub fn test_reader_callback_cancel(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        use std::io::Write;
        let lp = ctx.new_loop();
        let (r, mut w) = crate::util::socketpair();
        let fd = r.raw();
        let calls = Rc::new(Cell::new(0));
        let removed = Log::new();
        let (c, rm, lp2) = (calls.clone(), removed.clone(), lp.clone());
        lp.add_reader_dyn(
            fd,
            Box::new(move || {
                c.set(c.get() + 1);
                rm.push(lp2.remove_reader(fd).unwrap());
                rm.push(lp2.remove_reader(fd).unwrap());
            }),
        )?;
        w.write_all(b"unread")?;
        // Several iterations with the data still there.
        let lp2 = lp.clone();
        lp.call_later_dyn(0.05, Box::new(move || lp2.stop()), None)?;
        stop_after(&lp, 10.0);
        lp.run_forever()?;
        assert_eq!(calls.get(), 1);
        assert_eq!(removed.get(), vec![true, false]);
        lp.close()
    }
}

/// `EventLoopTestsMixin.test_writer_callback`: a writer runs once the
/// socket is writable; `remove_writer` is true, then false.
pub fn test_writer_callback(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        use std::io::{Read, Write};
        let lp = ctx.new_loop();
        let (mut r, w) = crate::util::socketpair();
        let fd = w.raw();
        let data = vec![b'x'; 1024];
        let (d, lp2) = (data.clone(), lp.clone());
        let w = Rc::new(w);
        let (w2, written) = (w.clone(), Rc::new(Cell::new(0)));
        let wr = written.clone();
        lp.add_writer_dyn(
            fd,
            Box::new(move || {
                if wr.get() == 0 {
                    (&*w2).write_all(&d).unwrap();
                }
                wr.set(wr.get() + 1);
                lp2.stop();
            }),
        )?;
        stop_after(&lp, 10.0);
        lp.run_forever()?;
        assert_eq!(written.get(), 1);
        assert!(lp.remove_writer(fd)?);
        assert!(!lp.remove_writer(fd)?);
        let mut got = vec![0u8; 4096];
        let n = r.read(&mut got)?;
        assert_eq!(&got[..n], &data[..]);
        lp.close()
    }
}

/// `add_writer` on a writable socket fires on every iteration until
/// removed, from inside its callback.
pub fn test_writer_callback_cancel(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        let lp = ctx.new_loop();
        let (_r, w) = crate::util::socketpair();
        let fd = w.raw();
        let calls = Rc::new(Cell::new(0));
        let (c, lp2) = (calls.clone(), lp.clone());
        lp.add_writer_dyn(
            fd,
            Box::new(move || {
                c.set(c.get() + 1);
                if c.get() == 3 {
                    assert!(lp2.remove_writer(fd).unwrap());
                }
            }),
        )?;
        let lp2 = lp.clone();
        lp.call_later_dyn(0.05, Box::new(move || lp2.stop()), None)?;
        stop_after(&lp, 10.0);
        lp.run_forever()?;
        assert_eq!(calls.get(), 3);
        assert!(!lp.remove_writer(fd)?);
        lp.close()
    }
}

/// Adding a reader for a descriptor that has one replaces the callback:
/// the old one is dropped and never runs.
pub fn test_reader_replaced(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        use std::io::{Read, Write};
        let lp = ctx.new_loop();
        let (r, mut w) = crate::util::socketpair();
        let fd = r.raw();
        let old_captured = Rc::new(());
        let log = Log::new();
        let (l, c) = (log.clone(), old_captured.clone());
        lp.add_reader_dyn(
            fd,
            Box::new(move || {
                let _keep = &c;
                l.push("old");
            }),
        )?;
        let (l, lp2) = (log.clone(), lp.clone());
        let mut r = r;
        lp.add_reader_dyn(
            fd,
            Box::new(move || {
                let mut buf = [0u8; 16];
                let _ = r.read(&mut buf);
                l.push("new");
                lp2.stop();
            }),
        )?;
        assert_eq!(Rc::strong_count(&old_captured), 1, "old reader kept");
        w.write_all(b"x")?;
        stop_after(&lp, 10.0);
        lp.run_forever()?;
        assert_eq!(log.get(), vec!["new"]);
        assert!(lp.remove_reader(fd)?);
        assert!(!lp.remove_reader(fd)?);
        lp.close()
    }
}

/// A reader and a writer on the same descriptor are independent: removing
/// the writer keeps the reader working.
pub fn test_reader_and_writer_same_fd(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        use std::io::{Read, Write};
        let lp = ctx.new_loop();
        let (a, b) = crate::util::socketpair();
        let fd = a.raw();
        let b = Rc::new(RefCell::new(b));
        let reads = Rc::new(Cell::new(0));
        let writes = Rc::new(Cell::new(0));
        let (wr, lp2) = (writes.clone(), lp.clone());
        lp.add_writer_dyn(
            fd,
            Box::new(move || {
                wr.set(wr.get() + 1);
                assert!(lp2.remove_writer(fd).unwrap());
            }),
        )?;
        let (rd, lp2, b2) = (reads.clone(), lp.clone(), b.clone());
        let mut a = a;
        lp.add_reader_dyn(
            fd,
            Box::new(move || {
                let mut buf = [0u8; 16];
                if matches!(a.read(&mut buf), Ok(n) if n > 0) {
                    rd.set(rd.get() + 1);
                    if rd.get() == 1 {
                        b2.borrow_mut().write_all(b"2").unwrap();
                    } else {
                        lp2.stop();
                    }
                }
            }),
        )?;
        b.borrow_mut().write_all(b"1")?;
        stop_after(&lp, 10.0);
        lp.run_forever()?;
        assert_eq!(reads.get(), 2);
        assert_eq!(writes.get(), 1);
        assert!(lp.remove_reader(fd)?);
        assert!(!lp.remove_writer(fd)?);
        lp.close()
    }
}

/// A panic in a reader callback goes to the exception handler; the reader
/// stays registered and runs again.
pub fn test_reader_callback_panic(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        use std::io::{Read, Write};
        let lp = ctx.new_loop();
        let errors = capture_exceptions(&lp);
        let (r, mut w) = crate::util::socketpair();
        let fd = r.raw();
        let calls = Rc::new(Cell::new(0));
        let (c, lp2) = (calls.clone(), lp.clone());
        let mut r = r;
        lp.add_reader_dyn(
            fd,
            Box::new(move || {
                c.set(c.get() + 1);
                if c.get() == 1 {
                    panic!("reader failed");
                }
                let mut buf = [0u8; 16];
                let _ = r.read(&mut buf);
                lp2.stop();
            }),
        )?;
        w.write_all(b"x")?;
        stop_after(&lp, 10.0);
        lp.run_forever()?;
        assert_eq!(calls.get(), 2);
        let errors = errors.get();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].message.starts_with("Exception in callback"));
        assert!(matches!(&errors[0].exception, Some(Error::Panic(m)) if m == "reader failed"));
        assert!(lp.remove_reader(fd)?);
        lp.close()
    }
}

/// `EventLoopTestsMixin.test_remove_fds_after_closing`: `close()` drops
/// readers and writers; removing them afterwards is false.
pub fn test_remove_fds_after_closing(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        let lp = ctx.new_loop();
        let (r, w) = crate::util::socketpair();
        let captured = Rc::new(());
        let c = captured.clone();
        lp.add_reader_dyn(r.raw(), Box::new(move || drop(c.clone())))?;
        let c = captured.clone();
        lp.add_writer_dyn(w.raw(), Box::new(move || drop(c.clone())))?;
        assert_eq!(Rc::strong_count(&captured), 3);
        lp.close()?;
        assert_eq!(Rc::strong_count(&captured), 1, "close() kept fd callbacks");
        assert!(!lp.remove_reader(r.raw())?);
        assert!(!lp.remove_writer(w.raw())?);
        Ok(())
    }
}

/// `EventLoopTestsMixin.test_add_fds_after_closing`: a closed loop refuses
/// readers and writers.
pub fn test_add_fds_after_closing(ctx: &Ctx) -> Result<()> {
    ctx.require(Feature::Readiness)?;
    {
        use crate::util::RawOf;
        let lp = ctx.new_loop();
        let (r, w) = crate::util::socketpair();
        lp.close()?;
        expect_closed(lp.add_reader_dyn(r.raw(), Box::new(|| {})));
        expect_closed(lp.add_writer_dyn(w.raw(), Box::new(|| {})));
        Ok(())
    }
}

// ----- completing from other threads --------------------------------------------------

/// asyncio's `loop.call_soon_threadsafe(fut.set_result, x)`: a future's
/// `Send` completer, moved to another thread, completes it on the loop;
/// `set_exception` likewise; a completer dropped unused leaves its future
/// pending; one that arrives after the future was cancelled is ignored.
pub fn test_future_completer_from_another_thread(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let ok = lp.create_future::<u32>();
    let failed = lp.create_future::<u32>();
    let unused = lp.create_future::<u32>();
    let cancelled = lp.create_future::<u32>();
    let (c_ok, c_failed, c_unused, c_cancelled) = (
        ok.completer(),
        failed.completer(),
        unused.completer(),
        cancelled.completer(),
    );
    cancelled.cancel(None);
    let t = std::thread::spawn(move || {
        c_ok.set_result(42).expect("loop open");
        c_failed
            .set_exception(Error::value("from the thread"))
            .expect("loop open");
        drop(c_unused);
        c_cancelled.set_result(7).expect("loop open");
    });
    t.join().expect("thread");
    assert_eq!(lp.run_until_complete(ok)?, 42);
    match lp.run_until_complete(failed) {
        Err(Error::Value(m)) => assert_eq!(m, "from the thread"),
        other => panic!("expected the thread's ValueError, got {other:?}"),
    }
    // Let whatever was queued run: the unused completer's release, the
    // late result for the cancelled future.
    lp.run_until_complete(loop_api::sleep(0.0))?;
    assert!(!unused.done(), "a dropped completer completed its future");
    assert!(cancelled.cancelled());
    lp.close()
}

/// asyncio's `run_coroutine_threadsafe`: from another thread, a coroutine
/// runs as a task on the loop, and the thread blocks on its result; a
/// cancelled one ends with `CancelledError`.
pub fn test_run_coroutine_threadsafe(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let remote = lp.remote();
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let on_loop = remote
            .run_coroutine_threadsafe(|| async {
                loop_api::sleep(0.01).await?;
                Ok(loop_api::get_running_loop()?.loop_id())
            })
            .expect("loop open");
        let id = on_loop.result(Some(Duration::from_secs(10)));
        let forever = remote
            .run_coroutine_threadsafe(|| async {
                let lp = loop_api::get_running_loop()?;
                lp.create_future::<()>().await
            })
            .expect("loop open");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!forever.done());
        assert!(forever.cancel());
        let cancelled = forever.result(Some(Duration::from_secs(10)));
        tx.send((id, cancelled.map_err(|e| e.to_string())))
            .expect("send");
        remote.stop().expect("loop open");
    });
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    t.join().expect("thread");
    let (id, cancelled) = rx.recv().expect("the thread's results");
    assert_eq!(id?, lp.loop_id());
    assert!(
        matches!(&cancelled, Err(m) if m.starts_with("CancelledError")),
        "{cancelled:?}"
    );
    lp.close()
}
