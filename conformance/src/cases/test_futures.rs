//! From CPython's `test_futures.py`: `Future` and its callbacks.

use std::rc::Rc;

use loop_api::futures::Future;
use loop_api::{Error, EventLoopExt, Loop, Result};

use crate::util::{capture_exceptions, run_once, run_until_done, Log};
use crate::Ctx;

fn is_invalid_state(r: &Result<impl std::fmt::Debug>, msg: &str) -> bool {
    matches!(r, Err(Error::InvalidState(m)) if m == msg)
}

/// `test_initial_state`: a new future is pending, belongs to its loop, and
/// `cancel()` makes it cancelled (and done).
pub fn test_initial_state(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    assert!(!f.done());
    assert!(!f.cancelled());
    assert_eq!(f.get_loop().loop_id(), lp.loop_id());
    let g = Future::<i32>::new(lp.clone());
    assert!(!g.done());
    assert!(!f.ptr_eq(&g));
    assert!(f.ptr_eq(&f.clone()));
    assert!(f.cancel(None));
    assert!(f.cancelled());
    assert!(f.done());
    lp.close()
}

/// `test_result` (pending part): `result()` and `exception()` on a pending
/// future raise `InvalidStateError` with asyncio's messages.
pub fn test_result_before_done(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    let r = f.result();
    assert!(is_invalid_state(&r, "Result is not set."), "{r:?}");
    let e = f.exception();
    assert!(is_invalid_state(&e, "Exception is not set."), "{e:?}");
    assert!(!f.done(), "asking must not complete the future");
    lp.close()
}

/// `test_result`: `set_result` completes the future; `result()` returns the
/// value every time it is asked, and `exception()` is `None`.
pub fn test_result(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<String>();
    f.set_result("ok".to_string())?;
    assert!(f.done());
    assert!(!f.cancelled());
    assert_eq!(f.result()?, "ok");
    assert_eq!(f.result()?, "ok", "result() does not consume the value");
    assert!(f.exception()?.is_none());
    lp.close()
}

/// `test_exception`: `set_exception` completes the future; `result()`
/// re-raises it each time and `exception()` returns it.
pub fn test_exception(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    f.set_exception(Error::value("boom"))?;
    assert!(f.done());
    assert!(!f.cancelled());
    for _ in 0..2 {
        assert!(matches!(f.result(), Err(Error::Value(ref m)) if m == "boom"));
    }
    assert!(matches!(f.exception()?, Some(Error::Value(ref m)) if m == "boom"));
    lp.close()
}

/// `test_exception_class` (our model): a `CancelledError` cannot be set as a
/// future's exception (`TypeError`); the future stays pending.
pub fn test_exception_class(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    let r = f.set_exception(Error::Cancelled(Some("no".into())));
    assert!(matches!(r, Err(Error::Type(_))), "{r:?}");
    assert!(!f.done());
    assert!(!f.cancelled());
    lp.close()
}

/// `test_set_result_causes_invalid_state`: completing a done future
/// (result, exception or cancelled) is `InvalidStateError`, and the first
/// outcome stays.
pub fn test_set_result_causes_invalid_state(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    f.set_result(1)?;
    assert!(matches!(f.set_result(2), Err(Error::InvalidState(_))));
    assert!(matches!(
        f.set_exception(Error::value("x")),
        Err(Error::InvalidState(_))
    ));
    assert_eq!(f.result()?, 1);

    let g = lp.create_future::<i32>();
    g.set_exception(Error::value("first"))?;
    assert!(matches!(g.set_result(2), Err(Error::InvalidState(_))));
    assert!(matches!(g.exception()?, Some(Error::Value(ref m)) if m == "first"));

    let h = lp.create_future::<i32>();
    assert!(h.cancel(None));
    assert!(matches!(h.set_result(2), Err(Error::InvalidState(_))));
    assert!(matches!(
        h.set_exception(Error::value("x")),
        Err(Error::InvalidState(_))
    ));
    assert!(h.cancelled());
    lp.close()
}

/// `test_cancel`: a cancelled future raises `CancelledError` (with the
/// message) from `result()` and `exception()`; a second cancel returns false.
pub fn test_cancel(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    assert!(f.cancel(Some("stop it".into())));
    assert!(f.cancelled());
    assert!(f.done());
    assert!(matches!(f.result(), Err(Error::Cancelled(Some(ref m))) if m == "stop it"));
    assert!(matches!(f.exception(), Err(Error::Cancelled(Some(ref m))) if m == "stop it"));
    assert!(!f.cancel(Some("again".into())), "cancel of a done future");
    assert!(matches!(f.result(), Err(Error::Cancelled(Some(ref m))) if m == "stop it"));
    let g = lp.create_future::<i32>();
    assert!(g.cancel(None));
    assert!(matches!(g.result(), Err(Error::Cancelled(None))));
    lp.close()
}

/// `test_cancel` (done part): `cancel()` of a future that has a result or an
/// exception returns false and changes nothing.
pub fn test_cancel_after_done_returns_false(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    f.set_result(3)?;
    assert!(!f.cancel(None));
    assert!(!f.cancelled());
    assert_eq!(f.result()?, 3);
    let g = lp.create_future::<i32>();
    g.set_exception(Error::value("e"))?;
    assert!(!g.cancel(None));
    assert!(!g.cancelled());
    assert!(g.exception()?.is_some());
    lp.close()
}

/// `test_future_cancel_message_getter`: the message given to `cancel()`
/// reaches whoever awaits the future.
pub fn test_future_cancel_message_getter(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    let f2 = f.clone();
    let t = lp.create_task(async move {
        let r = (&f2).await;
        Ok::<_, Error>(r)
    })?;
    run_once(&lp)?;
    assert!(f.cancel(Some("my message".into())));
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    let seen = t.result()?;
    assert!(
        matches!(seen, Err(Error::Cancelled(Some(ref m))) if m == "my message"),
        "{seen:?}"
    );
    lp.close()
}

fn three_callbacks(f: &Future<i32>, log: &Log<(u32, Result<i32>)>) {
    for i in 1..=3 {
        let l = log.clone();
        f.add_done_callback(move |fut| l.push((i, fut.result())), None);
    }
}

/// `test_callbacks_invoked_on_set_result`: done callbacks are scheduled
/// (not called inline), run FIFO, and receive the future.
pub fn test_callbacks_invoked_on_set_result(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    let log = Log::new();
    three_callbacks(&f, &log);
    run_once(&lp)?;
    assert!(log.is_empty(), "callbacks must wait for the future");
    f.set_result(10)?;
    assert!(log.is_empty(), "done callbacks are never called inline");
    run_once(&lp)?;
    let got: Vec<_> = log.get().into_iter().map(|(i, r)| (i, r.ok())).collect();
    assert_eq!(got, vec![(1, Some(10)), (2, Some(10)), (3, Some(10))]);
    lp.close()
}

/// `test_callbacks_invoked_on_set_exception`: the callbacks see the exception.
pub fn test_callbacks_invoked_on_set_exception(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    let log = Log::new();
    three_callbacks(&f, &log);
    f.set_exception(Error::value("bad"))?;
    assert!(log.is_empty());
    run_once(&lp)?;
    let got = log.get();
    assert_eq!(
        got.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    for (_, r) in got {
        assert!(matches!(r, Err(Error::Value(ref m)) if m == "bad"));
    }
    lp.close()
}

/// `test_cancel` (callbacks): cancelling schedules the done callbacks too.
pub fn test_callbacks_invoked_on_cancel(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    let log = Log::new();
    three_callbacks(&f, &log);
    assert!(f.cancel(Some("m".into())));
    assert!(log.is_empty());
    run_once(&lp)?;
    let got = log.get();
    assert_eq!(got.len(), 3);
    for (_, r) in got {
        assert!(matches!(r, Err(Error::Cancelled(Some(ref m))) if m == "m"));
    }
    lp.close()
}

/// `test_schedule_callbacks_list_mutation_1` (and asyncio's docs): a callback
/// added to a future already done is scheduled with `call_soon`, after
/// callbacks already in the ready queue, never run inline.
pub fn test_callback_added_after_done_is_scheduled(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    f.set_result(5)?;
    let log = Log::new();
    let l = log.clone();
    lp.call_soon_dyn(Box::new(move || l.push("call_soon".to_string())), None)?;
    let l = log.clone();
    f.add_done_callback(
        move |fut| l.push(format!("done {:?}", fut.result().ok())),
        None,
    );
    assert!(log.is_empty(), "never inline, even when already done");
    run_once(&lp)?;
    assert_eq!(log.get(), vec!["call_soon", "done Some(5)"]);
    lp.close()
}

/// `test_callbacks_remove_first_callback`: a removed callback never runs;
/// the others still run in order.
pub fn test_callbacks_remove_first_callback(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    let log = Log::new();
    let ids: Vec<_> = (1..=3)
        .map(|i| {
            let l = log.clone();
            f.add_done_callback(move |_| l.push(i), None)
        })
        .collect();
    assert_eq!(f.remove_done_callback(ids[0]), 1);
    f.set_result(0)?;
    run_once(&lp)?;
    assert_eq!(log.get(), vec![2, 3]);
    lp.close()
}

/// `test_callbacks_remove_third_callback` and
/// `test_callbacks_remove_first_and_second_callback`.
pub fn test_callbacks_remove_third_callback(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    for remove in [vec![2usize], vec![0, 1]] {
        let f = lp.create_future::<i32>();
        let log = Log::new();
        let ids: Vec<_> = (0..3)
            .map(|i| {
                let l = log.clone();
                f.add_done_callback(move |_| l.push(i), None)
            })
            .collect();
        for &r in &remove {
            assert_eq!(f.remove_done_callback(ids[r]), 1);
        }
        f.set_result(0)?;
        run_once(&lp)?;
        let want: Vec<usize> = (0..3).filter(|i| !remove.contains(i)).collect();
        assert_eq!(log.get(), want);
    }
    lp.close()
}

/// `test_remove_done_callback`: `remove_done_callback` returns how many it
/// removed: 1, then 0 for the same id, and 0 once the future is done (its
/// callbacks are already scheduled).
pub fn test_remove_done_callback(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    let log = Log::new();
    let l = log.clone();
    let a = f.add_done_callback(move |_| l.push("a"), None);
    let l = log.clone();
    let b = f.add_done_callback(move |_| l.push("b"), None);
    assert_ne!(a, b);
    assert_eq!(f.remove_done_callback(a), 1);
    assert_eq!(f.remove_done_callback(a), 0);
    f.set_result(1)?;
    assert_eq!(f.remove_done_callback(b), 0, "already scheduled");
    run_once(&lp)?;
    assert_eq!(log.get(), vec!["b"]);
    lp.close()
}

/// `test_iter` / `test_yield_from_twice`: awaiting by reference clones the
/// result (several awaiters all get it, and it stays in the future);
/// awaiting by value moves it out, so `T` need not be `Clone`.
pub fn test_await_by_ref_and_by_value(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<Vec<u8>>();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let f2 = f.clone();
        tasks.push(lp.create_task(async move { (&f2).await })?);
    }
    run_once(&lp)?;
    f.set_result(vec![1, 2])?;
    for t in &tasks {
        run_until_done(&lp, &*t.as_obj(), 5.0)?;
        assert_eq!(t.result()?, vec![1, 2]);
    }
    assert_eq!(f.result()?, vec![1, 2], "by-ref awaits leave the result");

    #[derive(Debug)]
    struct NotClone(u32);
    let g = lp.create_future::<NotClone>();
    let g2 = g.clone();
    let t = lp.create_task(async move { Ok::<_, Error>(g2.await?.0) })?;
    run_once(&lp)?;
    g.set_result(NotClone(9))?;
    assert_eq!(lp.run_until_complete(t)?, 9);
    let r = g.take_result();
    assert!(is_invalid_state(&r, "Result was already taken."), "{r:?}");
    lp.close()
}

/// `test_future_exception_never_retrieved`: a future whose exception
/// nobody looked at reports "Future exception was never retrieved" to the
/// loop's exception handler when the last handle goes.
pub fn test_future_exception_never_retrieved(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let f = lp.create_future::<i32>();
    let other = f.clone();
    f.set_exception(Error::value("lost"))?;
    drop(f);
    assert!(errors.is_empty(), "a handle is still alive");
    drop(other);
    let got = errors.get();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].message, "Future exception was never retrieved");
    assert!(matches!(got[0].exception, Some(Error::Value(ref m)) if m == "lost"));
    lp.close()
}

/// `test_tb_logger_exception_retrieved` and
/// `test_tb_logger_exception_result_retrieved`: once `exception()`,
/// `result()` or an await has seen the exception, nothing is reported.
pub fn test_tb_logger_exception_retrieved(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let a = lp.create_future::<i32>();
    a.set_exception(Error::value("a"))?;
    assert!(a.exception()?.is_some());
    drop(a);
    let b = lp.create_future::<i32>();
    b.set_exception(Error::value("b"))?;
    assert!(b.result().is_err());
    drop(b);
    let c = lp.create_future::<i32>();
    let c2 = c.clone();
    c.set_exception(Error::value("c"))?;
    drop(c);
    let r = lp.run_until_complete(async move { c2.await });
    assert!(matches!(r, Err(Error::Value(ref m)) if m == "c"));
    assert!(errors.is_empty(), "{:?}", errors.get());
    lp.close()
}

/// `test_tb_logger_result_unretrieved`, `test_tb_logger_abandoned` and
/// `test_tb_logger_not_called_after_cancel`: results, pending futures and
/// cancelled futures are never reported.
pub fn test_tb_logger_not_called_after_cancel(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let a = lp.create_future::<i32>();
    a.set_result(1)?;
    drop(a);
    let b = lp.create_future::<i32>();
    drop(b);
    let c = lp.create_future::<i32>();
    c.cancel(Some("x".into()));
    drop(c);
    run_once(&lp)?;
    assert!(errors.is_empty(), "{:?}", errors.get());
    lp.close()
}

/// `test_copy_state`-style: done callbacks receive the same future object
/// they were added to.
pub fn test_callback_receives_the_future(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let f = lp.create_future::<i32>();
    let seen: Log<bool> = Log::new();
    let (s, f2) = (seen.clone(), f.clone());
    f.add_done_callback(move |fut| s.push(fut.ptr_eq(&f2) && fut.done()), None);
    f.set_result(1)?;
    run_once(&lp)?;
    assert_eq!(seen.get(), vec![true]);
    lp.close()
}

/// `test_other_loop_future` (futures side): a future belongs to the loop it
/// was made on, which `get_loop` reports.
pub fn test_constructor_use_running_loop(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let made: Rc<std::cell::RefCell<Option<Loop>>> = Default::default();
    let m = made.clone();
    lp.run_until_complete(async move {
        let running = loop_api::get_running_loop()?;
        let f = running.create_future::<()>();
        *m.borrow_mut() = Some(f.get_loop());
        Ok::<_, Error>(())
    })?;
    let got = made.borrow_mut().take().expect("ran");
    assert_eq!(got.loop_id(), lp.loop_id());
    lp.close()
}
