//! From CPython's `test_base_events.py`: the loop's scheduling core.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use loop_api::events::{ExceptionContext, ExceptionHandler};
use loop_api::executor::{Executor, Job, ThreadPoolExecutor};
use loop_api::log::Level;
use loop_api::{Error, EventLoopExt, Handle, Loop, Result, TimerHandle};

use crate::util::{
    busy_wait, capture_exceptions, expect_closed, expect_runtime, safety_net, soon, stop_after,
    Log, LogCapture, RemoteWatchdog, SOON_ROADS,
};
use crate::Ctx;

/// The loop's clock may round; a timer is due when `when < now + resolution`.
const CLOCK_RES: f64 = 1e-6;

fn later(lp: &Loop, delay: f64, f: impl FnOnce() + 'static) -> Result<TimerHandle> {
    lp.call_later_dyn(delay, Box::new(f), None)
}

fn stopper(lp: &Loop) -> impl FnOnce() + 'static {
    let l = lp.clone();
    move || l.stop()
}

/// `BaseEventLoopTests.test_call_soon`: callbacks run in the order scheduled.
pub fn test_call_soon_fifo(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    for i in 0..5 {
        let l = log.clone();
        lp.call_soon_dyn(Box::new(move || l.push(i)), None)?;
    }
    let l = lp.clone();
    lp.call_soon_dyn(Box::new(move || l.stop()), None)?;
    lp.run_forever()?;
    assert_eq!(log.get(), vec![0, 1, 2, 3, 4]);
    lp.close()
}

// ----- run, stop, close -----------------------------------------------------

/// `BaseEventLoopTests.test_close`: `is_closed` flips, `close` is
/// idempotent, and a closed loop refuses to run.
pub fn test_close(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    assert!(!lp.is_closed());
    assert!(!lp.is_running());
    lp.close()?;
    assert!(lp.is_closed());
    lp.close()?; // idempotent
    assert!(lp.is_closed());
    expect_closed(lp.run_forever());
    expect_closed(lp.run_until_complete(async { Ok(1) }));
    assert!(!lp.is_running());
    Ok(())
}

/// `close()` drops every pending callback, and with it what the callback
/// captured: ready callbacks, timers, and calls queued from other threads.
pub fn test_close_drops_pending_callbacks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let soon_val = Rc::new(());
    let timer_val = Rc::new(());
    let remote_val = Arc::new(());
    let ran = Rc::new(Cell::new(false));
    {
        let (v, r) = (soon_val.clone(), ran.clone());
        soon(&lp, move || {
            let _keep = &v;
            r.set(true)
        })?;
        let (v, r) = (timer_val.clone(), ran.clone());
        later(&lp, 3600.0, move || {
            let _keep = &v;
            r.set(true)
        })?;
        let v = remote_val.clone();
        lp.remote().call_soon_threadsafe(move || {
            let _keep = &v;
            panic!("a callback queued before close() ran");
        })?;
    }
    assert_eq!(Rc::strong_count(&soon_val), 2);
    assert_eq!(Rc::strong_count(&timer_val), 2);
    assert_eq!(Arc::strong_count(&remote_val), 2);
    lp.close()?;
    assert_eq!(Rc::strong_count(&soon_val), 1, "ready callback kept");
    assert_eq!(Rc::strong_count(&timer_val), 1, "timer callback kept");
    assert_eq!(
        Arc::strong_count(&remote_val),
        1,
        "threadsafe callback kept"
    );
    assert!(!ran.get());
    Ok(())
}

/// `close()` shuts the default executor down without waiting for a job
/// that is still running.
pub fn test_close_does_not_wait_for_executor(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let fut = lp.run_in_executor(None, move || {
        let _ = started_tx.send(());
        let _ = release_rx.recv_timeout(Duration::from_secs(30));
    })?;
    started_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("job started");
    let t0 = Instant::now();
    lp.close()?;
    let took = t0.elapsed();
    let _ = release_tx.send(());
    assert!(
        took < Duration::from_secs(10),
        "close() waited {took:?} for a running executor job"
    );
    assert!(!fut.done());
    Ok(())
}

/// `BaseEventLoopTests.test_run_forever_pre_stopped`: `stop()` before
/// `run_forever()` runs exactly one iteration, which polls without
/// blocking even with a far timer pending.
pub fn test_run_forever_pre_stopped(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    let (l, lp2) = (log.clone(), lp.clone());
    soon(&lp, move || {
        l.push("first");
        let l = l.clone();
        soon(&lp2, move || l.push("second")).unwrap();
    })?;
    later(&lp, 3600.0, || {})?;
    lp.stop();
    let watchdog = RemoteWatchdog::arm(&lp, 10.0);
    lp.run_forever()?;
    assert!(
        !watchdog.fired(),
        "the pre-stopped iteration blocked in poll"
    );
    drop(watchdog);
    assert_eq!(log.get(), vec!["first"]);
    assert!(!lp.is_running());
    // The stop flag was consumed: the loop runs normally again.
    soon(&lp, stopper(&lp))?;
    lp.run_forever()?;
    assert_eq!(log.get(), vec!["first", "second"]);
    lp.close()
}

/// `BaseEventLoopTests.test_run_once`: the `call_soon(stop)`,
/// `run_forever()` idiom runs what was ready, once.
pub fn test_run_once(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let count = Rc::new(Cell::new(0));
    let c = count.clone();
    soon(&lp, move || c.set(c.get() + 1))?;
    soon(&lp, stopper(&lp))?;
    lp.run_forever()?;
    assert_eq!(count.get(), 1);
    lp.close()
}

/// `stop()` finishes the current iteration: callbacks already in the batch
/// still run; those they schedule wait for the next `run_forever()`.
pub fn test_stop_finishes_current_iteration(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    let (l, lp2) = (log.clone(), lp.clone());
    soon(&lp, move || {
        l.push("a");
        lp2.stop();
        let l2 = l.clone();
        soon(&lp2, move || l2.push("c")).unwrap();
    })?;
    let l = log.clone();
    soon(&lp, move || l.push("b"))?;
    lp.run_forever()?;
    assert_eq!(log.get(), vec!["a", "b"]);
    soon(&lp, stopper(&lp))?;
    lp.run_forever()?;
    assert_eq!(log.get(), vec!["a", "b", "c"]);
    lp.close()
}

/// `is_running()` is true inside the loop only, and the running loop is
/// the one `get_running_loop()` reports.
pub fn test_is_running(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    assert!(!lp.is_running());
    assert!(loop_api::get_running_loop().is_err());
    let seen = Rc::new(Cell::new(None));
    let (s, lp2) = (seen.clone(), lp.clone());
    soon(&lp, move || {
        let running = loop_api::get_running_loop().map(|r| r.loop_id()).ok();
        s.set(Some((lp2.is_running(), running)));
        lp2.stop();
    })?;
    lp.run_forever()?;
    assert_eq!(seen.get(), Some((true, Some(lp.loop_id()))));
    assert!(!lp.is_running());
    assert!(loop_api::get_running_loop().is_err());
    let inside = lp.run_until_complete({
        let lp2 = lp.clone();
        async move { Ok(lp2.is_running()) }
    })?;
    assert!(inside);
    assert!(!lp.is_running());
    lp.close()
}

/// `run_forever()` may be called again after it returned.
pub fn test_run_forever_twice(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let count = Rc::new(Cell::new(0));
    for round in 1..=3 {
        let c = count.clone();
        soon(&lp, move || c.set(c.get() + 1))?;
        soon(&lp, stopper(&lp))?;
        lp.run_forever()?;
        assert_eq!(count.get(), round);
    }
    lp.close()
}

/// `BaseEventLoopTests.test_run_until_complete_loop`: a future of another
/// loop is a `ValueError`.
pub fn test_run_until_complete_loop(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let other = ctx.new_loop();
    let fut = lp.create_future::<i32>();
    fut.set_result(1)?;
    match other.run_until_complete(fut.clone()) {
        Err(Error::Value(_)) => {}
        Err(e) => panic!("expected ValueError, got {e}"),
        Ok(v) => panic!("expected ValueError, got Ok({v})"),
    }
    // The future is untouched and still usable on its own loop.
    assert_eq!(lp.run_until_complete(fut)?, 1);
    other.close()?;
    lp.close()
}

/// `BaseEventLoopTests.test_run_until_complete_loop_orphan_future_close_loop`:
/// a `run_until_complete` that was stopped early removes its done callback,
/// so the orphaned future finishing later does not stop the next run.
pub fn test_run_until_complete_loop_orphan_future_close_loop(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let first = lp.create_future::<()>();
    let f = first.clone();
    later(&lp, 0.05, move || {
        let _ = f.set_result(());
    })?;
    soon(&lp, stopper(&lp))?;
    expect_runtime(
        lp.run_until_complete(first.clone()),
        "Event loop stopped before Future completed.",
    );
    assert!(!first.done());
    let second = lp.create_future::<&'static str>();
    let s = second.clone();
    later(&lp, 0.15, move || {
        let _ = s.set_result("second");
    })?;
    assert_eq!(lp.run_until_complete(second)?, "second");
    assert!(first.done());
    lp.close()
}

/// `RunningLoopTests.test_running_loop_within_a_loop`: running a second
/// loop inside a running one is refused; the second loop is unharmed.
pub fn test_running_loop_within_a_loop(ctx: &Ctx) -> Result<()> {
    let outer = ctx.new_loop();
    let inner = ctx.new_loop();
    let errors = Rc::new(std::cell::RefCell::new(Vec::new()));
    let (e, i, o) = (errors.clone(), inner.clone(), outer.clone());
    soon(&outer, move || {
        e.borrow_mut().push(i.run_forever());
        e.borrow_mut().push(i.run_until_complete(async { Ok(()) }));
        o.stop();
    })?;
    outer.run_forever()?;
    let errors = std::mem::take(&mut *errors.borrow_mut());
    assert_eq!(errors.len(), 2);
    for r in errors {
        expect_runtime(r, "Cannot run the event loop while another loop is running");
    }
    assert!(!inner.is_running());
    assert_eq!(inner.run_until_complete(async { Ok(7) })?, 7);
    inner.close()?;
    outer.close()
}

// ----- the ready queue -------------------------------------------------------

/// `BaseEventLoopTests.test__add_callback_cancelled_handle`: a handle
/// cancelled before its turn never runs, and its callback (with what it
/// captured) is dropped at once. On every road.
pub fn test_add_callback_cancelled_handle(ctx: &Ctx) -> Result<()> {
    for (road, call_soon) in SOON_ROADS {
        let lp = ctx.new_loop();
        let log = Log::new();
        let captured = Rc::new(());
        let (l, c) = (log.clone(), captured.clone());
        let h = call_soon(
            &lp,
            Box::new(move || {
                let _c = &c;
                l.push("cancelled")
            }),
            None,
        )?;
        let l = log.clone();
        call_soon(&lp, Box::new(move || l.push("kept")), None)?;
        h.cancel();
        assert!(h.cancelled(), "{road}");
        assert_eq!(Rc::strong_count(&captured), 1, "{road}: dropped at cancel");
        soon(&lp, stopper(&lp))?;
        lp.run_forever()?;
        assert_eq!(log.get(), vec!["kept"], "{road}");
        assert!(h.cancelled(), "{road}");
        lp.close()?;
    }
    Ok(())
}

/// A callback can cancel another one of the same batch, which then does
/// not run. On every road.
pub fn test_handle_cancel_in_same_batch(ctx: &Ctx) -> Result<()> {
    for (road, call_soon) in SOON_ROADS {
        let lp = ctx.new_loop();
        let log = Log::new();
        let victim: Rc<std::cell::RefCell<Option<Handle>>> = Rc::default();
        let (l, v) = (log.clone(), victim.clone());
        call_soon(
            &lp,
            Box::new(move || {
                l.push("killer");
                v.borrow().as_ref().expect("victim scheduled").cancel();
            }),
            None,
        )?;
        let l = log.clone();
        *victim.borrow_mut() = Some(call_soon(&lp, Box::new(move || l.push("victim")), None)?);
        let l = log.clone();
        call_soon(&lp, Box::new(move || l.push("after")), None)?;
        soon(&lp, stopper(&lp))?;
        lp.run_forever()?;
        assert_eq!(log.get(), vec!["killer", "after"], "{road}");
        lp.close()?;
    }
    Ok(())
}

/// Every way in shares one FIFO queue: the generic `call_soon`,
/// `call_soon_dyn`, `call_soon_threadsafe` from the loop's thread, and
/// `call_soon_handle` (asyncio's `_add_callback`) of a handle made
/// elsewhere: a one-shot one runs once however often it is queued, a
/// repeating one each time. A closed loop refuses each of them.
pub fn test_call_soon_every_road_one_fifo(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let order = Arc::new(Mutex::new(Vec::new()));
    let push = |what: &'static str| {
        let o = order.clone();
        move || o.lock().unwrap().push(what)
    };
    lp.call_soon(push("generic"))?;
    soon(&lp, push("dyn"))?;
    lp.call_soon_threadsafe(push("threadsafe"))?;
    let once = Handle::new(push("handle"), None);
    lp.call_soon_handle(&once)?;
    let repeating = Handle::new_repeating(Box::new(push("repeating")), None);
    lp.call_soon_handle(&repeating)?;
    lp.call_soon(push("generic again"))?;
    lp.call_soon_handle(&once)?;
    lp.call_soon_handle(&repeating)?;
    lp.call_soon(stopper(&lp))?;
    lp.run_forever()?;
    assert_eq!(
        *order.lock().unwrap(),
        [
            "generic",
            "dyn",
            "threadsafe",
            "handle",
            "repeating",
            "generic again",
            "repeating"
        ]
    );
    lp.close()?;
    expect_closed(lp.call_soon(|| ()));
    expect_closed(lp.call_soon_handle(&Handle::new(|| (), None)));
    expect_closed(soon(&lp, || ()));
    Ok(())
}

/// `BaseEventLoopTests.test__run_once_schedule_handle`: a callback scheduled
/// during an iteration waits for the next one, after another poll, so a
/// callback rescheduling itself does not starve a timer that became due.
pub fn test_run_once_schedule_handle(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log: Log<String> = Log::new();
    fn spin(lp: Loop, log: Log<String>, n: u32) {
        log.push(format!("a{n}"));
        if n == 1 {
            let l = log.clone();
            later(&lp, 0.0, move || l.push("timer".into())).unwrap();
        }
        if n == 20 {
            lp.stop();
            return;
        }
        let lp2 = lp.clone();
        soon(&lp, move || spin(lp2, log, n + 1)).unwrap();
    }
    let (lp2, l) = (lp.clone(), log.clone());
    soon(&lp, move || spin(lp2, l, 1))?;
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    let got = log.get();
    assert_eq!(&got[..4], &["a1", "a2", "timer", "a3"], "{got:?}");
    assert_eq!(got.len(), 21);
    lp.close()
}

// ----- timers ------------------------------------------------------------------

/// `BaseEventLoopTests.test_call_later`: timers run in deadline order, not
/// scheduling order.
pub fn test_call_later(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    for (delay, name) in [(0.03, "c"), (0.01, "a"), (0.02, "b"), (0.0, "zero")] {
        let l = log.clone();
        later(&lp, delay, move || l.push(name))?;
    }
    later(&lp, 0.04, stopper(&lp))?;
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    assert_eq!(log.get(), vec!["zero", "a", "b", "c"]);
    lp.close()
}

/// Timers with the same deadline run in the order they were scheduled
/// (`call_at` and `call_later` alike), after the callbacks already ready.
pub fn test_call_at_same_deadline_fifo(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    let when = lp.time() + 0.02;
    for i in 0..20 {
        let l = log.clone();
        lp.call_at_dyn(when, Box::new(move || l.push(i)), None)?;
    }
    lp.call_at_dyn(when, Box::new(stopper(&lp)), None)?;
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    assert_eq!(log.get(), (0..20).collect::<Vec<_>>());
    lp.close()
}

/// `BaseEventLoopTests.test_call_later_negative_delays`: zero and negative
/// delays give a `TimerHandle` that runs at once, earliest deadline first.
pub fn test_call_later_negative_delays(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    let before = lp.time();
    let l = log.clone();
    let h1: TimerHandle = later(&lp, -1.0, move || l.push(1))?;
    let l = log.clone();
    let h2 = later(&lp, -2.0, move || l.push(2))?;
    let l = log.clone();
    let h0 = later(&lp, 0.0, move || l.push(0))?;
    let now = lp.time();
    for (h, delay) in [(&h1, -1.0), (&h0, 0.0)] {
        assert!(
            h.when() - delay >= before && h.when() - delay <= now,
            "when() = {}",
            h.when()
        );
    }
    assert!(h2.when() < h1.when());
    let watchdog = RemoteWatchdog::arm(&lp, 10.0);
    run_until(&lp, || log.len() == 3)?;
    assert!(!watchdog.fired());
    assert_eq!(log.get(), vec![2, 1, 0]);
    lp.close()
}

/// Runs single iterations until `done` (the first iteration must not block
/// on anything but due timers).
fn run_until(lp: &Loop, done: impl Fn() -> bool) -> Result<()> {
    for _ in 0..1000 {
        if done() {
            return Ok(());
        }
        crate::util::run_once(lp)?;
    }
    panic!("condition not reached in 1000 iterations");
}

/// `BaseEventLoopTests.test_time_and_call_at`: `time()` is monotonic and a
/// timer never fires before its deadline.
pub fn test_time_and_call_at(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let mut prev = lp.time();
    for _ in 0..10_000 {
        let t = lp.time();
        assert!(t >= prev, "time() went back: {prev} -> {t}");
        prev = t;
    }
    let fired: Log<(f64, f64)> = Log::new();
    let t0 = lp.time();
    for delay in [0.001, 0.005, 0.02, 0.05, 0.1] {
        let when = t0 + delay;
        let (f, lp2) = (fired.clone(), lp.clone());
        lp.call_at_dyn(when, Box::new(move || f.push((when, lp2.time()))), None)?;
    }
    later(&lp, 0.11, stopper(&lp))?;
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    let fired = fired.get();
    assert_eq!(fired.len(), 5);
    for (when, at) in fired {
        assert!(at >= when - CLOCK_RES, "timer due at {when} ran at {at}");
    }
    assert!(lp.time() - t0 >= 0.11 - CLOCK_RES);
    lp.close()
}

/// A timer never runs before its deadline, even while the loop is busy:
/// with a callback that schedules itself again, the loop iterates without
/// sleeping, and each iteration must still leave a timer that is not due
/// yet in the heap (asyncio's `_run_once`: due means `when < time() +
/// clock_resolution`).
pub fn test_timer_not_early_while_busy(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let fired: Log<(f64, f64)> = Log::new();
    let t0 = lp.time();
    for i in 1..=20 {
        let when = t0 + 0.002 * f64::from(i);
        let (f, lp2) = (fired.clone(), lp.clone());
        lp.call_at_dyn(when, Box::new(move || f.push((when, lp2.time()))), None)?;
    }
    // Busy: a callback that reschedules itself until the last timer ran.
    fn spin(lp: Loop, fired: Log<(f64, f64)>) {
        if fired.get().len() < 20 {
            let l = lp.clone();
            let _ = lp.call_soon_dyn(Box::new(move || spin(l, fired)), None);
        } else {
            lp.stop();
        }
    }
    spin(lp.clone(), fired.clone());
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    let fired = fired.get();
    assert_eq!(fired.len(), 20);
    for (when, at) in fired {
        assert!(
            at >= when - CLOCK_RES,
            "timer due at {when} ran at {at}, early"
        );
    }
    lp.close()
}

/// A cancelled timer never runs, and its callback is dropped.
pub fn test_call_later_cancelled(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let captured = Rc::new(());
    let ran = Rc::new(Cell::new(false));
    let (c, r) = (captured.clone(), ran.clone());
    let h = later(&lp, 0.01, move || {
        let _keep = &c;
        r.set(true)
    })?;
    h.cancel();
    assert!(h.cancelled());
    assert_eq!(Rc::strong_count(&captured), 1, "cancel() kept the callback");
    later(&lp, 0.03, stopper(&lp))?;
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    assert!(!ran.get());
    lp.close()
}

/// A timer cancelled by another timer of the same batch (both due) does not run.
pub fn test_cancelled_timer_in_same_batch(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    let when = lp.time() + 0.01;
    let victim: Rc<std::cell::RefCell<Option<TimerHandle>>> = Rc::default();
    let (l, v) = (log.clone(), victim.clone());
    lp.call_at_dyn(
        when,
        Box::new(move || {
            l.push("killer");
            v.borrow().as_ref().expect("scheduled").cancel();
        }),
        None,
    )?;
    let l = log.clone();
    *victim.borrow_mut() = Some(lp.call_at_dyn(when, Box::new(move || l.push("victim")), None)?);
    let l = log.clone();
    lp.call_at_dyn(when, Box::new(move || l.push("after")), None)?;
    later(&lp, 0.03, stopper(&lp))?;
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    assert_eq!(log.get(), vec!["killer", "after"]);
    lp.close()
}

/// `BaseEventLoopTests.test__run_once_cancelled_event_cleanup`: with more
/// than 100 timers and over half of them cancelled, the cancelled ones are
/// purged; none of them runs, and the others run in deadline order.
pub fn test_run_once_cancelled_event_cleanup(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    let mut handles = Vec::new();
    // A far timer that is never cancelled, so cancelled ones are not all
    // at the head of the heap.
    later(&lp, 3000.0, || panic!("far timer ran"))?;
    for i in 0..240u32 {
        let l = log.clone();
        let delay = 0.001 + f64::from(i % 60) * 0.0005;
        handles.push((i, later(&lp, delay, move || l.push(i))?));
    }
    let mut expected = Vec::new();
    for (i, h) in &handles {
        if i % 4 == 0 {
            expected.push(*i);
        } else {
            h.cancel();
        }
    }
    // Deadline order; equal deadlines in scheduling order.
    expected.sort_by(|a, b| (a % 60).cmp(&(b % 60)).then(a.cmp(b)));
    // The loop keeps working through the purge: one iteration, then more timers.
    crate::util::run_once(&lp)?;
    let l = log.clone();
    later(&lp, 0.05, move || l.push(1000))?;
    expected.push(1000);
    later(&lp, 0.06, stopper(&lp))?;
    stop_after(&lp, 10.0);
    lp.run_forever()?;
    assert_eq!(log.get(), expected);
    lp.close()
}

// ----- threads -----------------------------------------------------------------

/// `call_soon_threadsafe` from several threads at once: every callback runs
/// exactly once, on the loop's thread.
pub fn test_call_soon_threadsafe_many_threads(ctx: &Ctx) -> Result<()> {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 2500;
    let lp = ctx.new_loop();
    let runs = Arc::new(Mutex::new(vec![0u32; THREADS * PER_THREAD]));
    let total = Arc::new(AtomicUsize::new(0));
    let loop_thread = std::thread::current().id();
    let wrong_thread = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let remote = lp.remote();
        let (runs, total, wrong) = (runs.clone(), total.clone(), wrong_thread.clone());
        threads.push(std::thread::spawn(move || {
            for i in 0..PER_THREAD {
                let (runs, total, wrong) = (runs.clone(), total.clone(), wrong.clone());
                remote
                    .call_soon_threadsafe(move || {
                        if std::thread::current().id() != loop_thread {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        runs.lock().unwrap()[t * PER_THREAD + i] += 1;
                        if total.fetch_add(1, Ordering::SeqCst) + 1 == THREADS * PER_THREAD {
                            loop_api::get_running_loop().expect("running").stop();
                        }
                    })
                    .expect("loop open");
            }
        }));
    }
    // A loop timer, not a remote call, as the safety net: a lost wakeup
    // may leave remote calls unable to wake the loop at all.
    let net = safety_net(&lp, 60.0)?;
    lp.run_forever()?;
    assert!(!net.get(), "not every callback arrived");
    for t in threads {
        t.join().expect("sender thread");
    }
    assert_eq!(total.load(Ordering::SeqCst), THREADS * PER_THREAD);
    assert!(runs.lock().unwrap().iter().all(|&n| n == 1));
    assert_eq!(wrong_thread.load(Ordering::SeqCst), 0);
    lp.close()
}

/// No lost wakeup: threads that each wait for the previous call to run
/// before sending the next make the loop go to sleep in poll (no timers)
/// thousands of times; every call must wake it.
pub fn test_call_soon_threadsafe_no_lost_wakeup(ctx: &Ctx) -> Result<()> {
    const THREADS: usize = 4;
    const ROUNDS: usize = 1000;
    let lp = ctx.new_loop();
    let done = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        let remote = lp.remote();
        let done = done.clone();
        threads.push(std::thread::spawn(move || {
            let (ack_tx, ack_rx) = mpsc::channel::<()>();
            for _ in 0..ROUNDS {
                let ack = ack_tx.clone();
                remote
                    .call_soon_threadsafe(move || {
                        let _ = ack.send(());
                    })
                    .expect("loop open");
                if ack_rx.recv_timeout(Duration::from_secs(30)).is_err() {
                    done.fetch_add(1, Ordering::SeqCst);
                    return false;
                }
            }
            if done.fetch_add(1, Ordering::SeqCst) + 1 == THREADS {
                remote.stop().expect("loop open");
            }
            true
        }));
    }
    // The wakeup under test is the only thing that ends the poll; the
    // safety net is a loop timer, which a lost wakeup cannot disable.
    let net = safety_net(&lp, 60.0)?;
    lp.run_forever()?;
    let fired = net.get();
    let ok: Vec<bool> = threads
        .into_iter()
        .map(|t| t.join().expect("sender thread"))
        .collect();
    assert!(!fired, "a wakeup was lost");
    assert!(ok.iter().all(|&b| b), "a call was never run");
    lp.close()
}

/// After `close()`, `call_soon_threadsafe` fails on both sides.
pub fn test_call_soon_threadsafe_after_close(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let remote = lp.remote();
    lp.close()?;
    expect_closed(remote.call_soon_threadsafe(|| {}));
    expect_closed(lp.call_soon_threadsafe(Box::new(|| {})));
    let r = std::thread::spawn(move || {
        remote
            .call_soon_threadsafe(|| {})
            .map_err(|e| e.to_string())
    })
    .join()
    .expect("thread");
    assert_eq!(r, Err("RuntimeError: Event loop is closed".to_string()));
    Ok(())
}

// ----- exception handling --------------------------------------------------------

/// `BaseEventLoopTests.test_set_exc_handler_custom`: a custom handler gets
/// the context of a panicking callback; `None` puts the default back.
pub fn test_set_exc_handler_custom(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    assert!(lp.get_exception_handler().is_none());
    let seen: Log<ExceptionContext> = Log::new();
    let s = seen.clone();
    let handler: ExceptionHandler = Rc::new(move |_lp, c| s.push(c.clone()));
    lp.set_exception_handler(Some(handler.clone()));
    let got = lp.get_exception_handler().expect("set");
    assert!(Rc::ptr_eq(&got, &handler));

    let h = soon(&lp, || panic!("zero_error"))?;
    crate::util::run_once(&lp)?;
    let seen_now = seen.get();
    assert_eq!(seen_now.len(), 1);
    assert!(seen_now[0].message.starts_with("Exception in callback"));
    assert!(seen_now[0].handle.as_ref().is_some_and(|x| x.ptr_eq(&h)));

    lp.set_exception_handler(None);
    assert!(lp.get_exception_handler().is_none());
    let logs = LogCapture::start();
    soon(&lp, || panic!("zero_error again"))?;
    crate::util::run_once(&lp)?;
    assert_eq!(seen.len(), 1, "the removed handler was called");
    let errors = logs.at(Level::Error);
    assert!(
        errors
            .iter()
            .any(|m| m.starts_with("Exception in callback") && m.contains("zero_error again")),
        "{errors:?}"
    );
    lp.close()
}

/// `BaseEventLoopTests.test_default_exc_handler_callback`: with no handler
/// set, a panicking callback (plain or timer) is logged as an error by the
/// default handler, and the loop goes on.
pub fn test_default_exc_handler_callback(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let logs = LogCapture::start();
    let fut = lp.create_future::<bool>();
    let f = fut.clone();
    soon(&lp, move || {
        f.set_result(true).unwrap();
        panic!("zero division");
    })?;
    assert!(lp.run_until_complete(fut)?);
    let errors = logs.at(Level::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("Exception in callback <Handle"),
        "{errors:?}"
    );
    assert!(errors[0].contains("zero division"), "{errors:?}");

    let fut = lp.create_future::<bool>();
    let f = fut.clone();
    later(&lp, 0.01, move || {
        f.set_result(true).unwrap();
        panic!("timer zero division");
    })?;
    assert!(lp.run_until_complete(fut)?);
    let errors = logs.at(Level::Error);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[1].starts_with("Exception in callback <TimerHandle"),
        "{errors:?}"
    );
    assert!(errors[1].contains("timer zero division"), "{errors:?}");
    lp.close()
}

/// A panic in a callback reaches the handler as `Error::Panic` with the
/// panic's message and the callback's handle; the callbacks after it in
/// the same batch still run. A callback whose handle nobody kept is
/// reported with a handle that stands for it. On every road.
pub fn test_callback_panic_reaches_handler(ctx: &Ctx) -> Result<()> {
    for (road, call_soon) in SOON_ROADS {
        let lp = ctx.new_loop();
        let seen = capture_exceptions(&lp);
        let log = Log::new();
        let l = log.clone();
        call_soon(&lp, Box::new(move || l.push("before")), None)?;
        let bad = call_soon(&lp, Box::new(|| panic!("boom {}", 42)), None)?;
        drop(call_soon(&lp, Box::new(|| panic!("unkept")), None)?);
        let l = log.clone();
        call_soon(&lp, Box::new(move || l.push("after")), None)?;
        soon(&lp, stopper(&lp))?;
        lp.run_forever()?;
        assert_eq!(log.get(), vec!["before", "after"], "{road}");
        let seen = seen.get();
        assert_eq!(seen.len(), 2, "{road}");
        for c in &seen {
            assert!(
                c.message.starts_with("Exception in callback <Handle"),
                "{road}: {}",
                c.message
            );
            assert!(c.future.is_none() && c.task.is_none(), "{road}");
        }
        assert!(
            matches!(&seen[0].exception, Some(Error::Panic(m)) if m == "boom 42"),
            "{road}: {:?}",
            seen[0].exception
        );
        assert!(
            seen[0].handle.as_ref().is_some_and(|h| h.ptr_eq(&bad)),
            "{road}"
        );
        assert!(
            matches!(&seen[1].exception, Some(Error::Panic(m)) if m == "unkept"),
            "{road}: {:?}",
            seen[1].exception
        );
        assert!(seen[1].handle.is_some(), "{road}");
        // The loop is still usable.
        assert_eq!(lp.run_until_complete(async { Ok(5) })?, 5);
        lp.close()?;
    }
    Ok(())
}

/// `BaseEventLoopTests.test_set_exc_handler_broken`: a panic inside the
/// custom handler is reported by the default handler, and the loop goes on.
pub fn test_set_exc_handler_broken(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let logs = LogCapture::start();
    lp.set_exception_handler(Some(Rc::new(|_lp, _c| panic!("spam in handler"))));
    let ran_after = Rc::new(Cell::new(false));
    soon(&lp, || panic!("zero_error"))?;
    let r = ran_after.clone();
    soon(&lp, move || r.set(true))?;
    soon(&lp, stopper(&lp))?;
    lp.run_forever()?;
    assert!(ran_after.get());
    let errors = logs.at(Level::Error);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("Unhandled error in exception handler"),
        "{errors:?}"
    );
    assert!(errors[0].contains("spam in handler"), "{errors:?}");
    // A direct call goes the same way.
    lp.call_exception_handler(ExceptionContext::new("direct"));
    let errors = logs.at(Level::Error);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[1].starts_with("Unhandled error in exception handler"));
    lp.close()
}

/// `call_exception_handler` hands the context as given to the custom
/// handler; without one, `default_exception_handler` logs it, with
/// "Unhandled exception in event loop" for an empty message.
pub fn test_call_exception_handler(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let logs = LogCapture::start();
    lp.call_exception_handler(ExceptionContext::new("").with_exception(Error::value("bad")));
    lp.default_exception_handler(&ExceptionContext::new("plain message"));
    let errors = logs.at(Level::Error);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("Unhandled exception in event loop"));
    assert!(errors[0].contains("ValueError: bad"), "{errors:?}");
    assert!(errors[1].starts_with("plain message"));

    let seen = capture_exceptions(&lp);
    lp.call_exception_handler(
        ExceptionContext::new("custom").with_exception(Error::runtime("why")),
    );
    let seen = seen.get();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].message, "custom");
    assert!(matches!(&seen[0].exception, Some(Error::Runtime(m)) if m == "why"));
    assert_eq!(
        logs.at(Level::Error).len(),
        2,
        "the default handler ran too"
    );
    lp.close()
}

// ----- debug mode ------------------------------------------------------------------

/// `BaseEventLoopTests.test_set_debug`, with the documented default
/// `slow_callback_duration` of 0.1 s.
pub fn test_set_debug(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let env_debug =
        std::env::var_os(loop_api::base_events::DEBUG_ENV).is_some_and(|v| !v.is_empty());
    assert_eq!(lp.get_debug(), env_debug);
    lp.set_debug(true);
    assert!(lp.get_debug());
    lp.set_debug(false);
    assert!(!lp.get_debug());
    assert_eq!(lp.slow_callback_duration(), 0.1);
    lp.set_slow_callback_duration(0.25);
    assert_eq!(lp.slow_callback_duration(), 0.25);
    lp.close()
}

/// `BaseEventLoopTests.test_log_slow_callbacks`: in debug mode a callback
/// or task step slower than `slow_callback_duration` is logged as
/// "Executing <...> took X seconds"; fast ones are not.
pub fn test_log_slow_callbacks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    lp.set_debug(true);
    lp.set_slow_callback_duration(0.01);
    let logs = LogCapture::start();
    soon(&lp, || {})?; // fast
    soon(&lp, || busy_wait(0.03))?;
    soon(&lp, stopper(&lp))?;
    lp.run_forever()?;
    let warnings = logs.at(Level::Warning);
    // The 30 ms callback is reported (a fast one may be too, if this
    // thread was preempted: not asserted).
    let slow: Vec<f64> = warnings
        .iter()
        .filter(|w| w.starts_with("Executing <Handle"))
        .filter_map(|w| {
            w.rsplit_once(" took ")
                .and_then(|(_, rest)| rest.strip_suffix(" seconds"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    assert!(slow.iter().any(|&s| s >= 0.029), "{warnings:?}");
    let before_task = warnings.len();

    lp.run_until_complete(async {
        busy_wait(0.03);
        Ok(())
    })?;
    let warnings = logs.at(Level::Warning);
    assert!(
        warnings[before_task..]
            .iter()
            .any(|w| w.starts_with("Executing <Task")
                && w.ends_with(" seconds")
                && w.contains(" took ")),
        "{warnings:?}"
    );
    lp.close()
}

/// Without debug mode, slow callbacks are not reported.
pub fn test_log_slow_callbacks_debug_off(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    lp.set_debug(false);
    lp.set_slow_callback_duration(0.0);
    let logs = LogCapture::start();
    soon(&lp, || busy_wait(0.02))?;
    soon(&lp, stopper(&lp))?;
    lp.run_forever()?;
    let slow: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|(_, m)| m.starts_with("Executing"))
        .collect();
    assert!(slow.is_empty(), "{slow:?}");
    lp.close()
}

// ----- executors ---------------------------------------------------------------------

/// An executor that counts what it is given, over a real thread pool.
struct CountingExecutor {
    inner: ThreadPoolExecutor,
    submitted: AtomicUsize,
    shutdowns: Mutex<Vec<bool>>,
}

impl CountingExecutor {
    fn new() -> Arc<Self> {
        Arc::new(CountingExecutor {
            inner: ThreadPoolExecutor::with_max_workers(2),
            submitted: AtomicUsize::new(0),
            shutdowns: Mutex::new(Vec::new()),
        })
    }
}

impl Executor for CountingExecutor {
    fn submit(&self, job: Job) -> Result<()> {
        self.submitted.fetch_add(1, Ordering::SeqCst);
        self.inner.submit(job)
    }
    fn shutdown(&self, wait: bool) {
        self.shutdowns.lock().unwrap().push(wait);
        self.inner.shutdown(wait)
    }
}

/// A panic in an executor job becomes `Error::Panic` in the future; the
/// loop and the pool go on.
pub fn test_run_in_executor_panic(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let fut = lp.run_in_executor(None, || -> i32 { panic!("job failed") })?;
    match lp.run_until_complete(fut) {
        Err(Error::Panic(m)) => assert_eq!(m, "job failed"),
        Err(e) => panic!("expected Error::Panic, got {e}"),
        Ok(v) => panic!("expected Error::Panic, got Ok({v})"),
    }
    let fut = lp.run_in_executor(None, || 6 * 7)?;
    assert_eq!(lp.run_until_complete(fut)?, 42);
    lp.close()
}

/// An executor passed to `run_in_executor` is used instead of the default one.
pub fn test_run_in_executor_custom_executor(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let pool = Arc::new(ThreadPoolExecutor::with_max_workers(1));
    let fut = lp.run_in_executor(Some(pool.clone()), || std::thread::current().id())?;
    let worker = lp.run_until_complete(fut)?;
    assert_ne!(worker, std::thread::current().id());
    pool.shutdown(true);

    let counting = CountingExecutor::new();
    let fut = lp.run_in_executor(Some(counting.clone()), || "custom")?;
    assert_eq!(lp.run_until_complete(fut)?, "custom");
    assert_eq!(counting.submitted.load(Ordering::SeqCst), 1);
    lp.close()?;
    // Not the loop's default executor: close() leaves it alone.
    assert!(counting.shutdowns.lock().unwrap().is_empty());
    counting.shutdown(true);
    Ok(())
}

/// `BaseEventLoopTests.test_set_default_executor`: `run_in_executor(None)`
/// uses it, and `close()` shuts it down without waiting.
pub fn test_set_default_executor(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let counting = CountingExecutor::new();
    lp.set_default_executor(counting.clone())?;
    for i in 0..3 {
        let fut = lp.run_in_executor(None, move || i * 2)?;
        assert_eq!(lp.run_until_complete(fut)?, i * 2);
    }
    assert_eq!(counting.submitted.load(Ordering::SeqCst), 3);
    lp.close()?;
    assert_eq!(*counting.shutdowns.lock().unwrap(), vec![false]);
    counting.inner.shutdown(true);
    Ok(())
}

/// `shutdown_default_executor()` waits for queued jobs; afterwards
/// `run_in_executor(None, ...)` is refused, while an explicit executor
/// still works.
pub fn test_shutdown_default_executor(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let finished = Arc::new(AtomicUsize::new(0));
    let mut futs = Vec::new();
    for _ in 0..3 {
        let f = finished.clone();
        futs.push(lp.run_in_executor(None, move || {
            busy_wait(0.02);
            f.fetch_add(1, Ordering::SeqCst);
        })?);
    }
    let fut = lp.shutdown_default_executor(None);
    lp.run_until_complete(fut)?;
    assert_eq!(finished.load(Ordering::SeqCst), 3);
    match lp.run_in_executor(None, || ()) {
        Err(Error::Runtime(m)) => assert_eq!(m, "Executor shutdown has been called"),
        Err(e) => panic!("expected RuntimeError, got {e}"),
        Ok(_) => panic!("run_in_executor(None) accepted a job after shutdown"),
    }
    let pool = Arc::new(ThreadPoolExecutor::with_max_workers(1));
    let fut = lp.run_in_executor(Some(pool.clone()), || 3)?;
    assert_eq!(lp.run_until_complete(fut)?, 3);
    pool.shutdown(true);
    lp.close()
}

/// `BaseEventLoopTests.test_shutdown_default_executor_timeout`: with a job
/// still blocked, `shutdown_default_executor(timeout)` returns once the
/// timeout has passed, with a warning.
pub fn test_shutdown_default_executor_timeout(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let logs = LogCapture::start();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let job = lp.run_in_executor(None, move || {
        let _ = started_tx.send(());
        let _ = release_rx.recv_timeout(Duration::from_secs(60));
    })?;
    started_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("job started");
    let t0 = lp.time();
    let shut = lp.shutdown_default_executor(Some(Duration::from_millis(100)));
    let r = lp.run_until_complete(shut);
    let dt = lp.time() - t0;
    let _ = release_tx.send(()); // let the job finish before checking
    r?;
    assert!(dt >= 0.1 - CLOCK_RES, "returned after {dt}s");
    assert!(dt < 20.0, "returned after {dt}s");
    assert!(!job.done());
    let warnings = logs.at(Level::Warning);
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("did not finishing joining its threads within")),
        "{warnings:?}"
    );
    lp.close()
}
