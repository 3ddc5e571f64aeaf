//! From CPython's `test_waitfor.py`: `wait_for` on coroutines and tasks,
//! what is cancelled on timeout and what is waited for.

use std::cell::Cell;
use std::rc::Rc;

use loop_api::tasks::sleep;
use loop_api::timeouts::wait_for;
use loop_api::{get_running_loop, Error, EventLoopExt, Result};

use crate::cases::test_server::{run, run_until};
use crate::util::run_once;
use crate::Ctx;

const FOREVER: f64 = 30.0;

/// `test_wait_for`: a coroutine past its timeout is cancelled; the caller
/// gets `TimeoutError`, about when the timeout said.
pub fn test_wait_for(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let cancelled = Rc::new(Cell::new(false));
    let c2 = cancelled.clone();
    let (r, took) = run(&lp, async move {
        let t0 = get_running_loop()?.time();
        let r = wait_for(
            async move {
                let r = sleep(FOREVER).await;
                c2.set(matches!(r, Err(Error::Cancelled(_))));
                r.map(|()| "slept")
            },
            Some(0.05),
        )
        .await;
        Ok((r, get_running_loop()?.time() - t0))
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(cancelled.get(), "the coroutine saw the cancellation");
    assert!((0.04..FOREVER / 2.0).contains(&took), "took {took}");
    lp.close()
}

/// `test_wait_for_blocking`: a result in time is the result.
pub fn test_wait_for_blocking(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let v = run(&lp, async {
        wait_for(
            async {
                sleep(0.01).await?;
                Ok("foo")
            },
            Some(FOREVER),
        )
        .await
    })?;
    assert_eq!(v, "foo");
    lp.close()
}

/// `test_wait_for_with_none_timeout`: `None` waits for as long as it takes.
pub fn test_wait_for_with_none_timeout(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let v = run(&lp, async {
        wait_for(
            async {
                sleep(0.01).await?;
                Ok(7)
            },
            None,
        )
        .await
    })?;
    assert_eq!(v, 7);
    lp.close()
}

/// `test_wait_for_timeout_less_then_0_or_0_future_done`: a task already
/// done gives its result even with a zero timeout.
pub fn test_wait_for_timeout_zero_task_done(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task(async { Ok("done") })?;
    run_until(&lp, "the task is done", || t.done())?;
    let t2 = t.clone();
    let (a, b) = run(&lp, async move {
        let a = wait_for(&t2, Some(0.0)).await;
        let b = wait_for(&t2, Some(-1.0)).await;
        Ok((a, b))
    })?;
    assert_eq!(a, Ok("done"));
    assert_eq!(b, Ok("done"));
    lp.close()
}

/// `test_wait_for_timeout_less_then_0_or_0_coroutine_do_not_started`:
/// with a zero timeout the coroutine never gets past its first wait.
pub fn test_wait_for_timeout_zero_coroutine(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let finished = Rc::new(Cell::new(false));
    let f2 = finished.clone();
    let r = run(&lp, async move {
        Ok(wait_for(
            async move {
                sleep(FOREVER).await?;
                f2.set(true);
                Ok(())
            },
            Some(0.0),
        )
        .await)
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(!finished.get());
    lp.close()
}

/// `test_wait_for_waits_for_task_cancellation`: a task that takes its time
/// to handle its cancellation is waited for before `TimeoutError`.
pub fn test_wait_for_waits_for_task_cancellation(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let cleanup_done = Rc::new(Cell::new(false));
    let c2 = cleanup_done.clone();
    let inner = lp.create_task(async move {
        if let Err(Error::Cancelled(m)) = sleep(FOREVER).await {
            sleep(0.05).await?;
            c2.set(true);
            return Err(Error::Cancelled(m));
        }
        Ok(())
    })?;
    let i2 = inner.clone();
    let c3 = cleanup_done.clone();
    let (r, seen) = run(&lp, async move {
        let r = wait_for(i2, Some(0.01)).await;
        Ok((r, c3.get()))
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(seen, "the task's cleanup finished before wait_for returned");
    assert!(inner.cancelled());
    lp.close()
}

/// `test_wait_for_reraises_exception_during_cancellation`: an error the
/// task raises while being cancelled is what `wait_for` returns.
pub fn test_wait_for_reraises_exception_during_cancellation(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let inner = lp.create_task(async {
        match sleep(FOREVER).await {
            Err(Error::Cancelled(_)) => Err::<(), _>(Error::value("in cleanup")),
            other => other,
        }
    })?;
    let r = run(&lp, async move { Ok(wait_for(inner, Some(0.01)).await) })?;
    assert_eq!(r, Err(Error::value("in cleanup")));
    lp.close()
}

/// `test_wait_for_task_cancelled_on_timeout`: the task given to
/// `wait_for` is cancelled when the time is up.
pub fn test_wait_for_task_cancelled_on_timeout(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let inner = lp.create_task(sleep(FOREVER))?;
    let i2 = inner.clone();
    let r = run(&lp, async move { Ok(wait_for(i2, Some(0.01)).await) })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(inner.cancelled());
    lp.close()
}

/// `test_wait_for_self_cancellation`: the task running `wait_for` cancelled
/// from outside ends cancelled, not with `TimeoutError`, and the inner
/// task is cancelled with it.
pub fn test_wait_for_self_cancellation(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let inner = lp.create_task(sleep(FOREVER))?;
    let i2 = inner.clone();
    let outer = lp.create_task(async move { wait_for(i2, Some(FOREVER)).await })?;
    run_once(&lp)?;
    run_once(&lp)?;
    outer.cancel(None);
    run_until(&lp, "both end", || outer.done() && inner.done())?;
    assert!(outer.cancelled());
    assert!(inner.cancelled());
    lp.close()
}

/// `test_wait_for_race_condition`: a result ready at the same time as the
/// deadline is still the result.
pub fn test_wait_for_race_condition(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let fut = lp.create_future::<&'static str>();
    let f2 = fut.clone();
    let v = run(&lp, async move {
        let setter = f2.clone();
        get_running_loop()?.call_later(0.01, move || {
            let _ = setter.set_result("in time");
        })?;
        wait_for(f2, Some(0.01)).await.or_else(|e| match e {
            Error::Timeout => Ok("timed out"),
            e => Err(e),
        })
    })?;
    assert!(v == "in time" || v == "timed out", "{v}");
    assert!(fut.done());
    lp.close()
}

/// A plain future waiting on something that is not a loop future is
/// dropped on timeout.
pub fn test_wait_for_foreign_future(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let r = run(&lp, async {
        Ok(wait_for(
            async {
                std::future::pending::<()>().await;
                Ok(())
            },
            Some(0.01),
        )
        .await)
    })?;
    assert_eq!(r, Err(Error::Timeout));
    lp.close()
}

/// `test_wait_for_issue86296`-style: a wait_for inside a wait_for, the
/// inner timing out first, leaves the outer running to its result.
pub fn test_nested_wait_for(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let v = run(&lp, async {
        wait_for(
            async {
                let inner = wait_for(sleep(FOREVER), Some(0.01)).await;
                assert_eq!(inner, Err(Error::Timeout));
                Ok("outer goes on")
            },
            Some(FOREVER),
        )
        .await
    })?;
    assert_eq!(v, "outer goes on");
    lp.close()
}
