//! From CPython's `test_taskgroups.py`: a failing task cancels its
//! siblings and the body, errors are gathered into one group, a
//! cancellation from outside cancels every task, and no task starts once
//! the group is done or shutting down.

use std::cell::Cell;
use std::rc::Rc;

use loop_api::taskgroups::TaskGroup;
use loop_api::tasks::sleep;
use loop_api::{Error, EventLoopExt, Result};

use crate::cases::test_server::{run, run_until};
use crate::util::{capture_exceptions, run_once, Log};
use crate::Ctx;

const FOREVER: f64 = 30.0;

fn group(errors: Vec<Error>) -> Error {
    Error::ExceptionGroup {
        message: "unhandled errors in a TaskGroup".into(),
        exceptions: errors,
    }
}

/// `test_taskgroup_01`: the group waits for its tasks; their results are
/// there afterwards.
pub fn test_taskgroup_results(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let (a, b) = run(&lp, async {
        let (a, b) = TaskGroup::run(|tg| async move {
            let a = tg.create_task(async {
                sleep(0.01).await?;
                Ok(42)
            })?;
            let b = tg.create_task(async {
                sleep(0.02).await?;
                Ok(11)
            })?;
            Ok((a, b))
        })
        .await?;
        Ok((a.result()?, b.result()?))
    })?;
    assert_eq!((a, b), (42, 11));
    lp.close()
}

/// An empty group returns the body's result.
pub fn test_taskgroup_empty(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let v = run(&lp, async {
        TaskGroup::run(|_tg| async { Ok("body") }).await
    })?;
    assert_eq!(v, "body");
    lp.close()
}

/// `test_taskgroup_03`: one task fails: its siblings are cancelled, the
/// error comes back in the group.
pub fn test_taskgroup_error_cancels_siblings(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let sibling = Rc::new(Cell::new(None));
    let s2 = sibling.clone();
    let r = run(&lp, async move {
        Ok(TaskGroup::run(|tg| async move {
            let t = tg.create_task(sleep(FOREVER))?;
            s2.set(Some(t));
            tg.create_task(async {
                sleep(0.01).await?;
                Err::<(), _>(Error::value("child fails"))
            })?;
            Ok(())
        })
        .await)
    })?;
    assert_eq!(r, Err(group(vec![Error::value("child fails")])));
    let s = sibling.take().unwrap();
    assert!(s.cancelled(), "the sibling was cancelled");
    lp.close()
}

/// `test_cancel_children_on_child_error`: every sibling is cancelled, in
/// the order they were created, and each may clean up.
pub fn test_taskgroup_cancellation_order(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log: Log<&'static str> = Log::new();
    let l2 = log.clone();
    let r = run(&lp, async move {
        Ok(TaskGroup::run(|tg| async move {
            for name in ["first", "second", "third"] {
                let l = l2.clone();
                tg.create_task(async move {
                    let r = sleep(FOREVER).await;
                    if let Err(Error::Cancelled(_)) = &r {
                        l.push(name);
                    }
                    r
                })?;
            }
            tg.create_task(async {
                sleep(0.01).await?;
                Err::<(), _>(Error::runtime("boom"))
            })?;
            Ok(())
        })
        .await)
    })?;
    assert_eq!(r, Err(group(vec![Error::runtime("boom")])));
    assert_eq!(log.get(), vec!["first", "second", "third"]);
    lp.close()
}

/// Two tasks fail at once: both errors are in the group, in order.
pub fn test_taskgroup_two_errors(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let r = run(&lp, async {
        Ok(TaskGroup::run(|tg| async move {
            tg.create_task(async { Err::<(), _>(Error::value("one")) })?;
            tg.create_task(async { Err::<(), _>(Error::value("two")) })?;
            Ok(())
        })
        .await)
    })?;
    assert_eq!(
        r,
        Err(group(vec![Error::value("one"), Error::value("two")]))
    );
    lp.close()
}

/// `test_taskgroup_07`-style: a failing task cancels the body where it
/// waits; the body may catch it; the group's error is the task's.
pub fn test_taskgroup_body_cancelled_by_child_error(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let body_saw = Rc::new(Cell::new(false));
    let b2 = body_saw.clone();
    let r = run(&lp, async move {
        Ok(TaskGroup::run(|tg| async move {
            tg.create_task(async {
                sleep(0.01).await?;
                Err::<(), _>(Error::value("child"))
            })?;
            let r = sleep(FOREVER).await;
            b2.set(matches!(r, Err(Error::Cancelled(_))));
            r
        })
        .await)
    })?;
    assert_eq!(r, Err(group(vec![Error::value("child")])));
    assert!(body_saw.get(), "the body saw the cancellation");
    lp.close()
}

/// `test_taskgroup_08`-style: the body fails: the tasks are cancelled and
/// the body's error is in the group.
pub fn test_taskgroup_body_error(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let child = Rc::new(Cell::new(None));
    let c2 = child.clone();
    let r = run(&lp, async move {
        Ok(TaskGroup::run(|tg| async move {
            c2.set(Some(tg.create_task(sleep(FOREVER))?));
            sleep(0.0).await?;
            Err::<(), _>(Error::value("body fails"))
        })
        .await)
    })?;
    assert_eq!(r, Err(group(vec![Error::value("body fails")])));
    assert!(child.take().unwrap().cancelled());
    lp.close()
}

/// `test_taskgroup_cancel_children_on_parent_cancel`-style: the task
/// running the group is cancelled: every task is cancelled, and the group
/// ends cancelled once they are done.
pub fn test_taskgroup_outer_cancel(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let children = Log::new();
    let c2 = children.clone();
    let outer = lp.create_task(async move {
        TaskGroup::run(|tg| async move {
            for _ in 0..3 {
                c2.push(tg.create_task(sleep(FOREVER))?);
            }
            sleep(FOREVER).await
        })
        .await
    })?;
    run_once(&lp)?;
    run_once(&lp)?;
    outer.cancel(None);
    run_until(&lp, "the group ends", || outer.done())?;
    assert!(outer.cancelled(), "{outer:?}");
    assert_eq!(children.len(), 3);
    assert!(children.get().iter().all(|c| c.cancelled()));
    lp.close()
}

/// The group waits for its tasks even when the body returned at once.
pub fn test_taskgroup_waits_for_children(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let done = Rc::new(Cell::new(false));
    let d2 = done.clone();
    let seen = run(&lp, async move {
        let d3 = d2.clone();
        TaskGroup::run(|tg| async move {
            tg.create_task(async move {
                sleep(0.02).await?;
                d3.set(true);
                Ok(())
            })?;
            Ok(())
        })
        .await?;
        Ok(d2.get())
    })?;
    assert!(seen, "run returned after the child finished");
    assert!(done.get());
    lp.close()
}

/// A task cancelled on its own is not an error of the group.
pub fn test_taskgroup_cancelled_child_not_error(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let v = run(&lp, async {
        TaskGroup::run(|tg| async move {
            let t = tg.create_task(sleep(FOREVER))?;
            let ok = tg.create_task(async { Ok(()) })?;
            sleep(0.0).await?;
            t.cancel(None);
            let _ = ok;
            Ok("fine")
        })
        .await
    })?;
    assert_eq!(v, "fine");
    lp.close()
}

/// `test_taskgroup_task_after_exit`: no task once the group is done; none
/// while it shuts down.
pub fn test_taskgroup_create_task_refused(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let (after, during) = run(&lp, async {
        let kept = Rc::new(Cell::new(None));
        let k2 = kept.clone();
        TaskGroup::run(|tg| async move {
            k2.set(Some(tg));
            Ok(())
        })
        .await?;
        let tg = kept.take().unwrap();
        let after = tg.create_task(async { Ok(()) }).map(|_| ());
        let during = Rc::new(Cell::new(None));
        let d2 = during.clone();
        let r = TaskGroup::run(|tg| async move {
            let tg2 = tg.clone();
            tg.create_task(async move { Err::<(), _>(Error::value("x")) })?;
            tg.create_task(async move {
                match sleep(FOREVER).await {
                    Err(Error::Cancelled(m)) => {
                        d2.set(Some(tg2.create_task(async { Ok(()) }).map(|_| ())));
                        Err(Error::Cancelled(m))
                    }
                    other => other,
                }
            })?;
            Ok(())
        })
        .await;
        assert!(matches!(r, Err(Error::ExceptionGroup { .. })));
        Ok((after, during.take()))
    })?;
    let after = after.unwrap_err().to_string();
    assert!(after.contains("is finished"), "{after}");
    let during = during
        .expect("the cancelled child tried")
        .unwrap_err()
        .to_string();
    assert!(during.contains("is shutting down"), "{during}");
    assert!(errors.is_empty(), "{:?}", errors.get());
    lp.close()
}

/// Nested groups: an inner group's errors reach the outer one as a group.
pub fn test_taskgroup_nested(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let r = run(&lp, async {
        Ok(TaskGroup::run(|outer| async move {
            outer.create_task(async {
                TaskGroup::run(|inner| async move {
                    inner.create_task(async { Err::<(), _>(Error::value("deep")) })?;
                    Ok(())
                })
                .await
            })?;
            Ok(())
        })
        .await)
    })?;
    assert_eq!(r, Err(group(vec![group(vec![Error::value("deep")])])));
    lp.close()
}

/// `test_taskgroup_repr`-style: what a group says about itself.
pub fn test_taskgroup_repr(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let reprs = run(&lp, async {
        TaskGroup::run(|tg| async move {
            let a = format!("{tg:?}");
            tg.create_task(sleep(0.0))?;
            let b = format!("{tg:?}");
            Ok((a, b))
        })
        .await
    })?;
    assert_eq!(reprs.0, "<TaskGroup entered>");
    assert_eq!(reprs.1, "<TaskGroup tasks=1 entered>");
    lp.close()
}
