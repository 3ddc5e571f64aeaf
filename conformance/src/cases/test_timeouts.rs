//! From CPython's `test_timeouts.py`: `timeout`, `timeout_at`, `Timeout`
//! (`reschedule`, `expired`, `when`), nesting, and whose cancellation a
//! `CancelledError` is.

use std::cell::Cell;
use std::rc::Rc;

use loop_api::tasks::{sleep, yield_now};
use loop_api::timeouts::{timeout, timeout_at, Timeout};
use loop_api::{get_running_loop, Error, EventLoopExt, Result};

use crate::cases::test_server::{run, run_until};
use crate::util::run_once;
use crate::Ctx;

/// Long enough never to end on its own in a case.
const FOREVER: f64 = 30.0;

/// `test_timeout_basic`: a body past its deadline is cancelled; the caller
/// gets `TimeoutError`; the deadline said when.
pub fn test_timeout_basic(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let r = run(&lp, async {
        let t0 = get_running_loop()?.time();
        let r = timeout(Some(0.01), sleep(FOREVER)).await;
        Ok((r, get_running_loop()?.time() - t0))
    })?;
    assert_eq!(r.0, Err(Error::Timeout));
    assert!(r.1 < FOREVER / 2.0, "ended at the deadline, not the sleep");
    lp.close()
}

/// `test_timeout_at_basic`: the same with a deadline in loop time.
pub fn test_timeout_at_basic(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (r, expired, when, deadline) = run(&lp, async {
        let deadline = get_running_loop()?.time() + 0.01;
        let tm = Timeout::new(Some(deadline));
        let r = tm.run(sleep(FOREVER)).await;
        Ok((r, tm.expired(), tm.when(), deadline))
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(expired);
    assert_eq!(when, Some(deadline));
    let r = run(&lp, async {
        let when = get_running_loop()?.time() + 0.01;
        Ok(timeout_at(Some(when), sleep(FOREVER)).await)
    })?;
    assert_eq!(r, Err(Error::Timeout));
    lp.close()
}

/// `test_timeout_not_called`: a body done in time returns its result; the
/// timeout did not expire.
pub fn test_timeout_not_called(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (v, expired) = run(&lp, async {
        let tm = Timeout::new(Some(get_running_loop()?.time() + FOREVER));
        let v = tm
            .run(async {
                sleep(0.0).await?;
                Ok(42)
            })
            .await?;
        Ok((v, tm.expired()))
    })?;
    assert_eq!(v, 42);
    assert!(!expired);
    lp.close()
}

/// `test_timeout_disabled` / `test_timeout_at_disabled`: `None` is no
/// deadline.
pub fn test_timeout_disabled(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let v = run(&lp, async {
        let a = timeout(None, async {
            sleep(0.01).await?;
            Ok(1)
        })
        .await?;
        let b = timeout_at(None, async { Ok(2) }).await?;
        Ok(a + b)
    })?;
    assert_eq!(v, 3);
    lp.close()
}

/// `test_timeout_zero`: a zero timeout cancels the body at its first wait.
pub fn test_timeout_zero(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let reached = Rc::new(Cell::new(false));
    let r2 = reached.clone();
    let r = run(&lp, async move {
        Ok(timeout(Some(0.0), async move {
            sleep(FOREVER).await?;
            r2.set(true);
            Ok(())
        })
        .await)
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(!reached.get());
    lp.close()
}

/// `test_timeout_in_the_past_sleep_zero`: a deadline already past still
/// lets the body run up to its first wait.
pub fn test_timeout_in_the_past_sleep_zero(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let steps = Rc::new(Cell::new(0));
    let s2 = steps.clone();
    let r = run(&lp, async move {
        let past = get_running_loop()?.time() - 10.0;
        Ok(timeout_at(Some(past), async move {
            s2.set(1);
            sleep(0.0).await?;
            s2.set(2);
            sleep(FOREVER).await?;
            s2.set(3);
            Ok(())
        })
        .await)
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(steps.get() >= 1 && steps.get() < 3, "{}", steps.get());
    lp.close()
}

/// `test_foreign_exception_passed`: the body's own error goes through.
pub fn test_foreign_exception_passed(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let r = run(&lp, async {
        Ok(timeout(Some(FOREVER), async { Err::<(), _>(Error::value("own")) }).await)
    })?;
    assert_eq!(r, Err(Error::value("own")));
    lp.close()
}

/// `test_foreign_cancel_doesnt_timeout_if_not_expired`: a cancellation
/// from outside stays a cancellation.
pub fn test_foreign_cancel_doesnt_timeout_if_not_expired(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task(async { timeout(Some(FOREVER), sleep(FOREVER)).await })?;
    run_once(&lp)?;
    t.cancel(None);
    run_until(&lp, "the task ends", || t.done())?;
    assert!(t.cancelled(), "cancelled, not a TimeoutError");
    lp.close()
}

/// `test_outer_task_is_not_cancelled`: after a timeout the task goes on,
/// with no cancellation left pending (`cancelling() == 0`).
pub fn test_outer_task_is_not_cancelled(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (r, after, cancelling) = run(&lp, async {
        let r = timeout(Some(0.01), sleep(FOREVER)).await;
        sleep(0.0).await?;
        let cancelling = loop_api::current_task().map(|t| t.cancelling());
        Ok((r, "went on", cancelling))
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert_eq!(after, "went on");
    assert_eq!(cancelling, Some(0));
    lp.close()
}

/// `test_nested_timeouts`: the inner deadline passing first is the
/// inner's `TimeoutError`; the outer goes on.
pub fn test_nested_timeouts(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (inner, outer_expired) = run(&lp, async {
        let outer = Timeout::new(Some(get_running_loop()?.time() + FOREVER));
        let inner = outer
            .run(async { Ok(timeout(Some(0.01), sleep(FOREVER)).await) })
            .await?;
        Ok((inner, outer.expired()))
    })?;
    assert_eq!(inner, Err(Error::Timeout));
    assert!(!outer_expired);
    lp.close()
}

/// `test_nested_timeouts_loop_busy`-style: the outer deadline passing
/// while the inner waits is the outer's; both see it in order.
pub fn test_nested_timeouts_outer_first(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (r, inner_expired, outer_expired) = run(&lp, async {
        let outer = Timeout::new(Some(get_running_loop()?.time() + 0.01));
        let inner = Timeout::new(Some(get_running_loop()?.time() + FOREVER));
        let i2 = inner.clone();
        let r = outer.run(async move { i2.run(sleep(FOREVER)).await }).await;
        Ok((r, inner.expired(), outer.expired()))
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(!inner_expired);
    assert!(outer_expired);
    lp.close()
}

/// `test_waiter_cancelled`: the body sees `Err(Cancelled)` at its wait and
/// may clean up, awaiting, before the timeout ends it.
pub fn test_waiter_cancelled(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let cleaned = Rc::new(Cell::new(false));
    let c2 = cleaned.clone();
    let r = run(&lp, async move {
        Ok(timeout(Some(0.01), async move {
            let r = sleep(FOREVER).await;
            assert!(matches!(r, Err(Error::Cancelled(_))), "{r:?}");
            sleep(0.0).await?;
            c2.set(true);
            r
        })
        .await)
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(cleaned.get(), "the body ran its cleanup");
    lp.close()
}

/// A body that catches the cancellation and returns a value: the value is
/// returned, and the timeout says it expired.
pub fn test_cancellation_caught_returns_value(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (r, expired) = run(&lp, async {
        let tm = Timeout::new(Some(get_running_loop()?.time() + 0.01));
        let r = tm
            .run(async {
                match sleep(FOREVER).await {
                    Err(Error::Cancelled(_)) => Ok("caught"),
                    other => other.map(|_| "slept"),
                }
            })
            .await;
        Ok((r, tm.expired()))
    })?;
    assert_eq!(r, Ok("caught"));
    assert!(expired);
    lp.close()
}

/// A body waiting on something that is not a loop future is dropped at
/// the deadline (Rust's cancellation): its destructors run.
pub fn test_foreign_wait_dropped(ctx: &Ctx) -> Result<()> {
    struct Flag(Rc<Cell<bool>>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.set(true);
        }
    }
    let lp = ctx.new_loop();
    let dropped = Rc::new(Cell::new(false));
    let d2 = dropped.clone();
    let r = run(&lp, async move {
        Ok(timeout(Some(0.01), async move {
            let _flag = Flag(d2);
            std::future::pending::<()>().await;
            Ok(())
        })
        .await)
    })?;
    assert_eq!(r, Err(Error::Timeout));
    assert!(dropped.get());
    lp.close()
}

/// `test_reschedule`: moving the deadline later keeps the body alive past
/// the first deadline; `None` removes it; moving it into the past expires
/// at once.
pub fn test_reschedule(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let r = run(&lp, async {
        let lp = get_running_loop()?;
        let tm = Timeout::new(Some(lp.time() + 0.01));
        let h = tm.clone();
        let v = tm
            .run(async move {
                h.reschedule(Some(get_running_loop()?.time() + FOREVER))?;
                sleep(0.05).await?;
                h.reschedule(None)?;
                assert_eq!(h.when(), None);
                sleep(0.02).await?;
                Ok("outlived the first deadline")
            })
            .await?;
        let tm2 = Timeout::new(None);
        let h2 = tm2.clone();
        let r2 = tm2
            .run(async move {
                sleep(0.0).await?;
                h2.reschedule(Some(get_running_loop()?.time() - 1.0))?;
                sleep(FOREVER).await
            })
            .await;
        Ok((v, r2, tm2.expired()))
    })?;
    assert_eq!(r.0, "outlived the first deadline");
    assert_eq!(r.1, Err(Error::Timeout));
    assert!(r.2);
    lp.close()
}

/// `test_reschedule` errors: not before the body runs, not once expired,
/// and a timeout runs one body only.
pub fn test_timeout_state_errors(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let tm = Timeout::new(None);
    assert_eq!(
        tm.reschedule(Some(1.0)),
        Err(Error::runtime("Timeout has not been entered"))
    );
    let (again, after) = run(&lp, async move {
        tm.run(async { Ok(()) }).await?;
        let again = tm.run(async { Ok(()) }).await;
        let after = tm.reschedule(None);
        Ok((again, after))
    })?;
    assert_eq!(
        again,
        Err(Error::runtime("Timeout has already been entered"))
    );
    assert_eq!(
        after,
        Err(Error::runtime("Cannot change state of finished Timeout"))
    );
    lp.close()
}

/// `test_repr_*`: what a timeout says about itself in each state.
pub fn test_timeout_repr(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let when = lp.time() + FOREVER;
    let tm = Timeout::new(Some(when));
    assert_eq!(format!("{tm:?}"), "<Timeout [created]>");
    let inside = Rc::new(Cell::new(String::new()));
    let (i2, h) = (inside.clone(), tm.clone());
    let tm2 = tm.clone();
    run(&lp, async move {
        tm2.run(async move {
            i2.set(format!("{h:?}"));
            yield_now().await;
            Ok(())
        })
        .await
    })?;
    assert_eq!(inside.take(), format!("<Timeout [active] when={when:.3}>"));
    assert_eq!(format!("{tm:?}"), "<Timeout [finished]>");
    lp.close()
}
