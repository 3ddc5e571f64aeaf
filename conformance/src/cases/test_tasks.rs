//! From CPython's `test_tasks.py`: `Task`, cancellation, task factories, `sleep`.

use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::mpsc;
use std::task::{Context as TaskContext, Poll};

use loop_api::tasks::{sleep, sleep_on, yield_now, TaskFactory, TaskOptions};
use loop_api::{
    all_tasks, current_task, AbstractEventLoop, Error, EventLoopExt, Loop, Result, Task,
};

use crate::util::{capture_exceptions, run_once, run_until_done, same_obj, Log};
use crate::Ctx;

/// Sets its flag when dropped: shows that a coroutine was dropped.
struct DropGuard(Rc<Cell<bool>>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

fn is_cancelled_with(r: &Result<impl std::fmt::Debug>, msg: Option<&str>) -> bool {
    matches!(r, Err(Error::Cancelled(m)) if m.as_deref() == msg)
}

/// `test_task_class` / `test_task_basics`: a task runs its coroutine on its
/// loop; the coroutine's `Ok` is the task's result.
pub fn test_task_class(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task(async { Ok::<_, Error>("ok".to_string()) })?;
    assert!(
        !t.done(),
        "a task runs from the loop, not inside create_task"
    );
    assert_eq!(t.get_loop().loop_id(), lp.loop_id());
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(t.done());
    assert!(!t.cancelled());
    assert_eq!(t.result()?, "ok");
    assert!(t.exception()?.is_none());
    assert_eq!(lp.run_until_complete(t.clone())?, "ok");
    lp.close()
}

/// `test_one_exception` (the task side): the coroutine's `Err` becomes the
/// task's exception.
pub fn test_task_exception(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task(async { Err::<i32, _>(Error::value("bad input")) })?;
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(t.done());
    assert!(!t.cancelled());
    assert!(matches!(t.exception()?, Some(Error::Value(ref m)) if m == "bad input"));
    assert!(matches!(t.result(), Err(Error::Value(_))));
    lp.close()
}

/// `test_exception_marking` (our model): a panic in a task does not unwind
/// through the loop; it becomes the task's exception, `Error::Panic`, and
/// the loop keeps running other callbacks.
pub fn test_task_panic_becomes_exception(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task(async {
        if true {
            panic!("kaboom");
        }
        Ok::<i32, Error>(0)
    })?;
    let after = Log::new();
    let a = after.clone();
    lp.call_soon_dyn(Box::new(move || a.push(1)), None)?;
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    run_once(&lp)?;
    assert!(matches!(t.exception()?, Some(Error::Panic(ref m)) if m.contains("kaboom")));
    assert_eq!(after.get(), vec![1], "the loop went on");
    lp.close()
}

/// `test_log_traceback` / `test_tb_logger_*` for tasks: a panicked task
/// whose exception nobody retrieved reports "Task exception was never
/// retrieved" to the handler once its last handle is dropped, and not before.
pub fn test_task_exception_never_retrieved(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let errors = capture_exceptions(&lp);
    let t = lp.create_task(async {
        if true {
            panic!("unseen");
        }
        Ok::<i32, Error>(0)
    })?;
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    run_once(&lp)?;
    assert!(t.done());
    assert!(errors.is_empty(), "still referenced: {:?}", errors.get());
    drop(t);
    let got = errors.get();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].message, "Task exception was never retrieved");
    assert!(matches!(got[0].exception, Some(Error::Panic(ref m)) if m.contains("unseen")));

    let retrieved = lp.create_task(async { Err::<i32, _>(Error::value("seen")) })?;
    run_until_done(&lp, &*retrieved.as_obj(), 5.0)?;
    assert!(retrieved.exception()?.is_some());
    drop(retrieved);
    assert_eq!(errors.len(), 1, "a retrieved exception is not reported");
    lp.close()
}

/// `test_cancel_with_message_before_starting_task`: a task cancelled before
/// its first step never runs its coroutine and is cancelled with the message.
pub fn test_cancel_with_message_before_starting_task(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let ran = Rc::new(Cell::new(false));
    let dropped = Rc::new(Cell::new(false));
    let (r, g) = (ran.clone(), DropGuard(dropped.clone()));
    let t = lp.create_task(async move {
        let _g = g;
        r.set(true);
        Ok::<_, Error>(1)
    })?;
    assert!(t.cancel(Some("before start".into())));
    assert_eq!(t.cancelling(), 1);
    assert!(!t.done(), "cancel() requests; the next step cancels");
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(t.cancelled());
    assert!(!ran.get(), "the coroutine body never ran");
    assert!(dropped.get(), "the coroutine was dropped");
    assert!(is_cancelled_with(&t.result(), Some("before start")));
    assert!(!t.cancel(None), "already done");
    lp.close()
}

/// `test_cancel_inner_future` / `test_task_cancel_waiter_future`: cancelling
/// a task that awaits a loop future cancels that future, and the coroutine
/// sees `Err(Cancelled(msg))` from its await; returning it cancels the task.
pub fn test_cancel_inner_future(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let fut = lp.create_future::<i32>();
    let f2 = fut.clone();
    let seen: Log<Result<i32>> = Log::new();
    let s = seen.clone();
    let t = lp.create_task(async move {
        let r = (&f2).await;
        s.push(r.clone());
        r
    })?;
    run_once(&lp)?;
    assert!(!t.done());
    assert!(t.cancel(Some("inner msg".into())));
    assert!(fut.cancelled(), "the awaited future is cancelled at once");
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    let seen = seen.get();
    assert_eq!(seen.len(), 1);
    assert!(is_cancelled_with(&seen[0], Some("inner msg")), "{seen:?}");
    assert!(t.cancelled());
    assert!(is_cancelled_with(&t.result(), Some("inner msg")));
    lp.close()
}

/// `test_task_cancel_sleeping_task`: a task cancelled while in `sleep`
/// ends cancelled, long before the sleep would have.
pub fn test_task_cancel_sleeping_task(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let after_sleep = Rc::new(Cell::new(false));
    let a = after_sleep.clone();
    let t = lp.create_task(async move {
        sleep(3600.0).await?;
        a.set(true);
        Ok::<_, Error>(())
    })?;
    run_once(&lp)?;
    let start = lp.time();
    assert!(t.cancel(Some("wake up".into())));
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(lp.time() - start < 5.0);
    assert!(t.cancelled());
    assert!(!after_sleep.get());
    assert!(is_cancelled_with(&t.result(), Some("wake up")));
    lp.close()
}

/// `test_cancel_task_catching`: a coroutine may catch the cancellation and
/// return normally; the task then has that result, and `cancelling()`
/// still counts the request.
pub fn test_cancel_task_catching(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let fut = lp.create_future::<i32>();
    let f2 = fut.clone();
    let t = lp.create_task(async move {
        match (&f2).await {
            Err(Error::Cancelled(_)) => Ok(42),
            other => other,
        }
    })?;
    run_once(&lp)?;
    assert!(t.cancel(None));
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(!t.cancelled());
    assert_eq!(t.result()?, 42);
    assert_eq!(t.cancelling(), 1);
    lp.close()
}

/// `test_cancel_task_ignoring`: after catching the cancellation the
/// coroutine goes on awaiting other loop futures, undisturbed.
pub fn test_cancel_task_ignoring(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let first = lp.create_future::<i32>();
    let f1 = first.clone();
    let l = lp.clone();
    let t = lp.create_task(async move {
        let caught = (&f1).await;
        assert!(caught.is_err());
        let second = l.create_future::<i32>();
        let s = second.clone();
        l.call_soon_dyn(Box::new(move || drop(s.set_result(7))), None)?;
        let v = second.await?;
        sleep_on(&l, 0.001).await?;
        Ok::<_, Error>(v + 1)
    })?;
    run_once(&lp)?;
    assert!(t.cancel(None));
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(first.cancelled());
    assert!(!t.cancelled());
    assert_eq!(t.result()?, 8);
    lp.close()
}

/// `test_cancelling` / `test_uncancel_basic`: `cancelling()` counts the
/// cancellation requests and `uncancel()` takes one back.
pub fn test_uncancel_basic(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let counts: Log<u32> = Log::new();
    let c = counts.clone();
    let t: Task<()> = lp.create_task(async move {
        if sleep(3600.0).await.is_err() {
            let me = current_task().expect("inside a task");
            c.push(me.cancelling());
            c.push(me.uncancel());
        }
        sleep(3600.0).await
    })?;
    run_once(&lp)?;
    assert_eq!(t.cancelling(), 0);
    assert!(t.cancel(None));
    assert_eq!(t.cancelling(), 1);
    assert!(!t.cancelled(), "still running");
    run_once(&lp)?;
    run_once(&lp)?;
    assert_eq!(counts.get(), vec![1, 0]);
    assert_eq!(t.cancelling(), 0);
    assert!(!t.done(), "caught and sleeping again");
    assert!(t.cancel(Some("second".into())));
    assert_eq!(t.cancelling(), 1);
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(t.cancelled());
    assert!(is_cancelled_with(&t.result(), Some("second")));
    lp.close()
}

/// `test_uncancel_resets_must_cancel`: a cancel requested while the task is
/// between steps is withdrawn by `uncancel()`; the task then completes.
pub fn test_uncancel_resets_must_cancel(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let fut = lp.create_future::<()>();
    let f2 = fut.clone();
    let t = lp.create_task(async move {
        f2.await?;
        Ok::<_, Error>(42)
    })?;
    run_once(&lp)?;
    fut.set_result(())?;
    assert!(t.cancel(None));
    assert_eq!(t.cancelling(), 1);
    assert_eq!(t.uncancel(), 0);
    assert_eq!(t.cancelling(), 0);
    assert_eq!(lp.run_until_complete(t)?, 42);
    lp.close()
}

/// `test_cancel_at_end`: a task that cancels itself just before returning
/// ends cancelled, not with its result.
pub fn test_cancel_at_end(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task(async {
        let me = current_task().expect("inside a task");
        assert!(me.cancel(Some("self".into())));
        Ok::<_, Error>(12)
    })?;
    assert!(!t.cancelled());
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(t.cancelled());
    assert!(is_cancelled_with(&t.result(), Some("self")));
    assert!(!t.cancel(None));
    lp.close()
}

/// `test_cancel_awaited_task`: a task that requested its own cancellation
/// and then awaits a nested task cancels that nested task too.
pub fn test_cancel_awaited_task(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let fut = lp.create_future::<()>();
    let nested_slot: Rc<RefCell<Option<Task<()>>>> = Default::default();
    let (f2, slot, l) = (fut.clone(), nested_slot.clone(), lp.clone());
    let t = lp.create_task(async move {
        let nested = l.create_task(async move { f2.await })?;
        *slot.borrow_mut() = Some(nested.clone());
        yield_now().await;
        current_task().expect("in a task").cancel(None);
        nested.await
    })?;
    let r = lp.run_until_complete(t);
    assert!(r.as_ref().is_err_and(Error::is_cancelled), "{r:?}");
    let nested = nested_slot.borrow_mut().take().expect("nested created");
    assert!(nested.cancelled());
    assert!(fut.cancelled());
    lp.close()
}

/// `test_cancel_both_task_and_inner_future`: cancelling the inner future
/// and then the task leaves both cancelled.
pub fn test_cancel_both_task_and_inner_future(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let fut = lp.create_future::<()>();
    let f2 = fut.clone();
    let t = lp.create_task(async move { f2.await })?;
    run_once(&lp)?;
    assert!(fut.cancel(None));
    assert!(t.cancel(None));
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(fut.cancelled());
    assert!(t.cancelled());
    lp.close()
}

/// `test_cancel_yield` (our model): a task awaiting something that is not a
/// loop future (here `std::future::pending`) is cancelled by dropping its
/// coroutine at the next step; the code after the await never runs.
pub fn test_cancel_foreign_future(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let dropped = Rc::new(Cell::new(false));
    let after = Rc::new(Cell::new(false));
    let (g, a) = (DropGuard(dropped.clone()), after.clone());
    let t = lp.create_task(async move {
        let _g = g;
        std::future::pending::<()>().await;
        a.set(true);
        Ok::<_, Error>(())
    })?;
    run_once(&lp)?;
    run_once(&lp)?;
    assert!(!t.done());
    assert!(!dropped.get(), "pending task is alive");
    assert!(t.cancel(Some("foreign".into())));
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(t.cancelled());
    assert!(dropped.get(), "the coroutine was dropped");
    assert!(!after.get());
    assert!(is_cancelled_with(&t.result(), Some("foreign")));
    lp.close()
}

/// `test_cancel_yield`: a task cancelled while it yields (`yield_now`) is
/// cancelled and does not resume past the yield.
pub fn test_cancel_yield(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let after = Rc::new(Cell::new(false));
    let a = after.clone();
    let t = lp.create_task(async move {
        yield_now().await;
        a.set(true);
        Ok::<_, Error>(())
    })?;
    run_once(&lp)?;
    assert!(t.cancel(None));
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(t.cancelled());
    assert!(!after.get());
    lp.close()
}

/// `test_cancel` (done task): cancelling a finished task returns false and
/// counts no request.
pub fn test_cancel_done_task(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task(async { Ok::<_, Error>(1) })?;
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(!t.cancel(Some("late".into())));
    assert_eq!(t.cancelling(), 0);
    assert!(!t.cancelled());
    assert_eq!(t.result()?, 1);
    lp.close()
}

/// `test_cancel_with_message_then_future_result`: the message given to
/// `cancel()` is what awaiting the cancelled task raises.
pub fn test_cancel_with_message_then_future_result(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let l = lp.clone();
    let outer = lp.create_task(async move {
        let inner = l.create_task(async { sleep(3600.0).await })?;
        sleep(0.0).await?;
        inner.cancel(Some("my message".into()));
        let r = (&inner).await;
        Ok::<_, Error>((r, inner.cancelled()))
    })?;
    let (r, cancelled) = lp.run_until_complete(outer)?;
    assert!(cancelled);
    assert!(is_cancelled_with(&r, Some("my message")), "{r:?}");
    lp.close()
}

/// `test_step_result_future`-style: a task awaiting another task gets its
/// result (by reference: cloned; by value: moved).
pub fn test_await_task_from_task(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let l = lp.clone();
    let outer = lp.create_task(async move {
        let inner = l.create_task(async {
            sleep(0.001).await?;
            Ok::<_, Error>(vec![1, 2, 3])
        })?;
        let by_ref = (&inner).await?;
        let by_val = inner.await?;
        Ok::<_, Error>((by_ref, by_val))
    })?;
    let (a, b) = lp.run_until_complete(outer)?;
    assert_eq!(a, vec![1, 2, 3]);
    assert_eq!(b, vec![1, 2, 3]);
    lp.close()
}

/// `test_one_exception` (awaiter side): an exception from an awaited task
/// reaches the awaiting coroutine and, propagated with `?`, its task.
pub fn test_exception_propagates_through_await(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let l = lp.clone();
    let outer = lp.create_task(async move {
        let inner = l.create_task(async { Err::<i32, _>(Error::runtime("deep")) })?;
        let v = inner.await?;
        Ok::<_, Error>(v + 1)
    })?;
    run_until_done(&lp, &*outer.as_obj(), 5.0)?;
    assert!(matches!(outer.exception()?, Some(Error::Runtime(ref m)) if m == "deep"));
    lp.close()
}

/// `test_task_chain`-style: each task of a chain awaits the one before; the
/// value flows through all of them in order.
pub fn test_task_chain(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let order = Log::new();
    let o = order.clone();
    let mut prev: Task<u32> = lp.create_task(async move {
        o.push(0);
        Ok::<_, Error>(1)
    })?;
    for i in 1..10u32 {
        let (p, o) = (prev, order.clone());
        prev = lp.create_task(async move {
            let v = p.await?;
            o.push(i);
            Ok::<_, Error>(v * 2)
        })?;
    }
    assert_eq!(lp.run_until_complete(prev)?, 512);
    assert_eq!(order.get(), (0..10).collect::<Vec<_>>());
    lp.close()
}

/// `test_task_basics` (callbacks): done callbacks of a task are scheduled
/// after it finishes, FIFO, and get the task.
pub fn test_task_done_callbacks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task(async { Ok::<_, Error>(5) })?;
    let log = Log::new();
    for i in 0..3 {
        let l = log.clone();
        t.add_done_callback(move |task| l.push((i, task.result().ok())), None);
    }
    let l = log.clone();
    let id = t.add_done_callback(move |_| l.push((99, None)), None);
    assert_eq!(t.remove_done_callback(id), 1);
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    run_once(&lp)?;
    assert_eq!(log.get(), vec![(0, Some(5)), (1, Some(5)), (2, Some(5))]);
    let l = log.clone();
    t.add_done_callback(move |_| l.push((3, None)), None);
    assert_eq!(log.len(), 3, "not inline even when done");
    run_once(&lp)?;
    assert_eq!(log.len(), 4);
    lp.close()
}

/// `test_bare_create_task` / `test_task_repr_autogenerated`: names default
/// to `Task-N` with N increasing; `set_name` renames.
pub fn test_task_repr_autogenerated(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let a = lp.create_task(async { Ok::<_, Error>(()) })?;
    let b = lp.create_task(async { Ok::<_, Error>(()) })?;
    let num = |name: String| -> u64 {
        name.strip_prefix("Task-")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("default name {name:?} is not Task-N"))
    };
    let (na, nb) = (num(a.get_name()), num(b.get_name()));
    assert!(nb > na, "Task-{na} then Task-{nb}");
    b.set_name("renamed");
    assert_eq!(b.get_name(), "renamed");
    assert!(format!("{b:?}").contains("renamed"));
    lp.run_until_complete(a)?;
    lp.run_until_complete(b)?;
    lp.close()
}

/// `test_bare_create_named_task`: `name=` names the task; `current_task()`
/// inside sees that name.
pub fn test_bare_create_named_task(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task_with(
        async { Ok::<_, Error>(current_task().map(|t| t.get_name())) },
        TaskOptions {
            name: Some("No-op".into()),
            ..Default::default()
        },
    )?;
    assert_eq!(t.get_name(), "No-op");
    assert_eq!(lp.run_until_complete(t)?.as_deref(), Some("No-op"));
    lp.close()
}

/// `test_task_factory` (test_base_events' `test_set_task_factory`): the
/// factory sees every `create_task` and may rewrite its options; `None`
/// restores the default.
pub fn test_set_task_factory(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    assert!(lp.get_task_factory().is_none());
    let calls = Log::new();
    let c = calls.clone();
    let factory: TaskFactory =
        Rc::new(move |_lp: &dyn AbstractEventLoop, mut opts: TaskOptions| {
            c.push(opts.name.clone());
            opts.name = Some(format!("factory:{}", opts.name.unwrap_or_default()));
            Ok(opts)
        });
    lp.set_task_factory(Some(factory));
    assert!(lp.get_task_factory().is_some());
    let t = lp.create_task_with(
        async { Ok::<_, Error>(()) },
        TaskOptions {
            name: Some("x".into()),
            ..Default::default()
        },
    )?;
    assert_eq!(t.get_name(), "factory:x");
    let u = lp.create_task(async { Ok::<_, Error>(()) })?;
    assert_eq!(u.get_name(), "factory:");
    assert_eq!(calls.get(), vec![Some("x".to_string()), None]);
    lp.set_task_factory(None);
    assert!(lp.get_task_factory().is_none());
    let v = lp.create_task(async { Ok::<_, Error>(()) })?;
    assert!(v.get_name().starts_with("Task-"));
    assert_eq!(calls.len(), 2);
    lp.run_until_complete(t)?;
    lp.run_until_complete(u)?;
    lp.run_until_complete(v)?;
    lp.close()
}

/// `test_run_coroutine_threadsafe_task_factory_exception`: a factory that
/// refuses makes `create_task` fail with its error; the coroutine never runs.
pub fn test_task_factory_refuses(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    lp.set_task_factory(Some(Rc::new(
        |_lp: &dyn AbstractEventLoop, _o: TaskOptions| Err(Error::runtime("no tasks today")),
    )));
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let t = lp.create_task(async move {
        r.set(true);
        Ok::<_, Error>(())
    });
    assert!(matches!(t, Err(Error::Runtime(ref m)) if m == "no tasks today"));
    assert!(all_tasks(&*lp).is_empty());
    run_once(&lp)?;
    assert!(!ran.get());
    lp.close()
}

/// `test_eager_start` (3.12 eager task factory / 3.14 `eager_start=`): in a
/// running loop the first step runs inside `create_task`; a coroutine with
/// no await is done when `create_task` returns; one that awaits finishes later.
pub fn test_eager_start(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let l = lp.clone();
    let eager = TaskOptions {
        eager_start: true,
        ..Default::default()
    };
    let order = lp.run_until_complete(async move {
        let log = Log::new();
        let lg = log.clone();
        let quick = l.create_task_with(
            async move {
                lg.push("quick body");
                Ok::<_, Error>(1)
            },
            eager.clone(),
        )?;
        log.push("after create quick");
        assert!(quick.done(), "no await: done synchronously");
        assert_eq!(quick.result()?, 1);
        assert!(current_task().is_some(), "the outer task is current again");

        let lg = log.clone();
        let slow = l.create_task_with(
            async move {
                lg.push("slow first step");
                sleep(0.0).await?;
                lg.push("slow second step");
                Ok::<_, Error>(2)
            },
            eager,
        )?;
        log.push("after create slow");
        assert!(!slow.done());
        assert_eq!(slow.await?, 2);
        Ok::<_, Error>(log.get())
    })?;
    assert_eq!(
        order,
        vec![
            "quick body",
            "after create quick",
            "slow first step",
            "after create slow",
            "slow second step"
        ]
    );
    lp.close()
}

/// `eager_start` on a loop that is not running: the task is scheduled as
/// usual and its body waits for the loop.
pub fn test_eager_start_loop_not_running(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let t = lp.create_task_with(
        async move {
            r.set(true);
            Ok::<_, Error>(())
        },
        TaskOptions {
            eager_start: true,
            ..Default::default()
        },
    )?;
    assert!(!ran.get());
    assert!(!t.done());
    lp.run_until_complete(t)?;
    assert!(ran.get());
    lp.close()
}

/// `test_all_tasks` (`asyncio.all_tasks(loop)`): the loop's pending tasks,
/// done ones excluded, other loops' tasks excluded.
pub fn test_all_tasks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let other = ctx.new_loop();
    assert!(all_tasks(&*lp).is_empty());
    let fut = lp.create_future::<()>();
    let f2 = fut.clone();
    let waiting = lp.create_task(async move { f2.await })?;
    let quick = lp.create_task(async { Ok::<_, Error>(()) })?;
    let elsewhere = other.create_task(async { Ok::<_, Error>(()) })?;
    let all = all_tasks(&*lp);
    assert_eq!(all.len(), 2);
    assert!(all.iter().any(|t| same_obj(t, &waiting.as_obj())));
    assert!(all.iter().any(|t| same_obj(t, &quick.as_obj())));
    run_until_done(&lp, &*quick.as_obj(), 5.0)?;
    let all = all_tasks(&*lp);
    assert_eq!(all.len(), 1, "done tasks are excluded");
    assert!(same_obj(&all[0], &waiting.as_obj()));
    fut.set_result(())?;
    run_until_done(&lp, &*waiting.as_obj(), 5.0)?;
    assert!(all_tasks(&*lp).is_empty());
    assert_eq!(all_tasks(&*other).len(), 1);
    other.run_until_complete(elsewhere)?;
    other.close()?;
    lp.close()
}

/// `test_current_task` / `test_current_task_with_interleaving_tasks`:
/// `current_task()` is the task whose step is running, and `None` outside
/// any task (in plain callbacks too).
pub fn test_current_task_with_interleaving_tasks(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    assert!(current_task().is_none());
    let seen: Log<(&'static str, String)> = Log::new();
    let mut tasks = Vec::new();
    for who in ["a", "b"] {
        let s = seen.clone();
        let t = lp.create_task_with(
            async move {
                for _ in 0..2 {
                    s.push((who, current_task().expect("in a task").get_name()));
                    sleep(0.0).await?;
                }
                Ok::<_, Error>(())
            },
            TaskOptions {
                name: Some(format!("task-{who}")),
                ..Default::default()
            },
        )?;
        tasks.push(t);
    }
    let in_callback: Log<bool> = Log::new();
    let c = in_callback.clone();
    lp.call_soon_dyn(Box::new(move || c.push(current_task().is_none())), None)?;
    for t in &tasks {
        run_until_done(&lp, &*t.as_obj(), 5.0)?;
    }
    let seen = seen.get();
    assert_eq!(seen.len(), 4);
    for (who, name) in &seen {
        assert_eq!(name, &format!("task-{who}"));
    }
    let whos: Vec<_> = seen.iter().map(|(w, _)| *w).collect();
    assert_eq!(whos, vec!["a", "b", "a", "b"], "steps interleave");
    assert_eq!(in_callback.get(), vec![true]);
    assert!(current_task().is_none());
    lp.close()
}

/// `test_current_task` (identity): `current_task()` inside a task is that
/// very task.
pub fn test_current_task(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let slot: Rc<RefCell<Option<Task<bool>>>> = Default::default();
    let s = slot.clone();
    let t = lp.create_task(async move {
        let me = current_task().expect("in a task");
        let handle = s.borrow().clone().expect("set before running");
        Ok::<_, Error>(same_obj(&me, &handle.as_obj()))
    })?;
    *slot.borrow_mut() = Some(t.clone());
    assert!(lp.run_until_complete(t)?);
    slot.borrow_mut().take();
    lp.close()
}

/// `test_sleep`: a task sleeping 0.02 s wakes after one sleeping 0.01 s even
/// if it started first, and neither wakes early by the loop's clock.
pub fn test_sleep(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    let mut tasks = Vec::new();
    for delay in [0.02, 0.01] {
        let (l, lg) = (lp.clone(), log.clone());
        tasks.push(lp.create_task(async move {
            let start = l.time();
            sleep(delay).await?;
            let slept = l.time() - start;
            lg.push(delay);
            Ok::<_, Error>(slept)
        })?);
    }
    for t in &tasks {
        run_until_done(&lp, &*t.as_obj(), 5.0)?;
    }
    assert_eq!(log.get(), vec![0.01, 0.02]);
    let long = tasks[0].result()?;
    let short = tasks[1].result()?;
    // One clock resolution of slack, as asyncio allows for timers.
    assert!(long >= 0.02 - 0.002, "slept {long}");
    assert!(short >= 0.01 - 0.002, "slept {short}");
    lp.close()
}

/// `test_sleep_zero`: `sleep(0)` yields once: callbacks already ready run
/// before the task resumes.
pub fn test_sleep_zero(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    let (l, lg) = (lp.clone(), log.clone());
    let t = lp.create_task(async move {
        lg.push("task start");
        let lg2 = lg.clone();
        l.call_soon_dyn(Box::new(move || lg2.push("callback")), None)?;
        sleep(0.0).await?;
        lg.push("task resumed");
        Ok::<_, Error>(())
    })?;
    lp.run_until_complete(t)?;
    assert_eq!(log.get(), vec!["task start", "callback", "task resumed"]);
    lp.close()
}

/// `test_log_destroyed_pending_task` (the other half): the loop keeps a
/// pending task alive, so dropping every handle does not cancel it.
pub fn test_task_handle_dropped_keeps_running(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let done = lp.create_future::<u32>();
    let (d, dropped) = (done.clone(), Rc::new(Cell::new(false)));
    let g = DropGuard(dropped.clone());
    let t = lp.create_task(async move {
        let _g = g;
        sleep(0.001).await?;
        sleep(0.0).await?;
        d.set_result(7)?;
        Ok::<_, Error>(())
    })?;
    drop(t);
    run_once(&lp)?;
    assert!(!dropped.get(), "the coroutine lives on");
    assert_eq!(all_tasks(&*lp).len(), 1);
    run_until_done(&lp, &*done.as_obj(), 5.0)?;
    assert_eq!(done.result()?, 7);
    run_once(&lp)?;
    assert!(dropped.get(), "a finished task drops its coroutine");
    lp.close()
}

/// A one-shot value produced by another thread, which calls the task's
/// `Waker` (a non-loop future, like a channel from another runtime).
struct FromThread {
    rx: mpsc::Receiver<u32>,
    thread: Option<std::thread::JoinHandle<()>>,
    value: u32,
}

impl std::future::Future for FromThread {
    type Output = u32;
    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<u32> {
        if let Ok(v) = self.rx.try_recv() {
            if let Some(h) = self.thread.take() {
                h.join().expect("sender thread");
            }
            return Poll::Ready(v);
        }
        if self.thread.is_none() {
            let (tx, rx) = mpsc::channel();
            self.rx = rx;
            let (waker, value) = (cx.waker().clone(), self.value);
            self.thread = Some(std::thread::spawn(move || {
                tx.send(value).expect("receiver alive");
                waker.wake();
            }));
        }
        Poll::Pending
    }
}

/// `test_run_coroutine_threadsafe`-style: a task awaiting a future that
/// another thread completes through the std `Waker` wakes the loop and
/// finishes.
pub fn test_task_woken_from_other_thread(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let t = lp.create_task(async {
        let (_tx, rx) = mpsc::channel();
        let a = FromThread {
            rx,
            thread: None,
            value: 20,
        }
        .await;
        let (_tx, rx) = mpsc::channel();
        let b = FromThread {
            rx,
            thread: None,
            value: 22,
        }
        .await;
        Ok::<_, Error>(a + b)
    })?;
    run_until_done(&lp, &*t.as_obj(), 30.0)?;
    assert_eq!(t.result()?, 42);
    lp.close()
}

/// `test_other_loop_future`: awaiting, inside a task, a future of another
/// loop is a `RuntimeError` "... attached to a different loop".
pub fn test_other_loop_future(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let other: Loop = ctx.new_loop();
    let foreign = other.create_future::<i32>();
    let f = foreign.clone();
    let r = lp.run_until_complete(async move { f.await });
    match r {
        Err(Error::Runtime(m)) => {
            assert!(m.contains("attached to a different loop"), "{m}");
            assert!(m.starts_with("Task "), "{m}");
        }
        other => panic!("expected RuntimeError, got {other:?}"),
    }
    assert!(!foreign.done());
    other.close()?;
    lp.close()
}

/// `test_cancelling` (two requests): a second `cancel()` while the awaited
/// loop future is already cancelled still lets the coroutine catch the
/// cancellation (as CPython throws one `CancelledError` into it) and finish.
pub fn test_cancel_twice_still_catchable(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let fut = lp.create_future::<i32>();
    let f2 = fut.clone();
    let caught: Log<Result<i32>> = Log::new();
    let c = caught.clone();
    let t = lp.create_task(async move {
        match (&f2).await {
            Err(e) if e.is_cancelled() => {
                c.push(Err(e));
                sleep(0.0).await?;
                Ok(42)
            }
            other => other,
        }
    })?;
    run_once(&lp)?;
    assert!(t.cancel(Some("one".into())));
    assert!(t.cancel(Some("two".into())));
    assert_eq!(t.cancelling(), 2);
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    let caught = caught.get();
    assert_eq!(caught.len(), 1, "the coroutine saw the cancellation once");
    assert!(is_cancelled_with(&caught[0], Some("one")), "{caught:?}");
    assert!(!t.cancelled());
    assert_eq!(t.result()?, 42);
    lp.close()
}

/// `test_task_awaits_on_itself`: a task awaiting its own handle gets
/// asyncio's RuntimeError instead of waiting forever.
pub fn test_task_awaits_on_itself(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let slot: Rc<RefCell<Option<Task<()>>>> = Rc::new(RefCell::new(None));
    let inner = slot.clone();
    let t = lp.create_task(async move {
        yield_now().await; // let create_task's caller store the handle
        let me = inner.borrow().clone().expect("handle stored");
        me.await
    })?;
    *slot.borrow_mut() = Some(t.clone());
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    match t.exception()? {
        Some(Error::Runtime(m)) => assert!(
            m.starts_with("Task cannot await on itself"),
            "unexpected message: {m}"
        ),
        other => panic!("expected RuntimeError, got {other:?}"),
    }
    slot.borrow_mut().take();
    lp.close()
}

/// A foreign future may clone the task's waker on another thread while it
/// is being polled (`&Waker` is `Send`), and wake the task later from a
/// third thread: the task runs again and completes.
pub fn test_task_waker_cloned_on_other_thread(ctx: &Ctx) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    struct CloneElsewhere {
        fired: Arc<AtomicBool>,
        started: bool,
    }
    impl std::future::Future for CloneElsewhere {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<()> {
            if self.fired.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            if !self.started {
                self.started = true;
                let waker_ref = cx.waker();
                let owned = std::thread::scope(|s| {
                    s.spawn(move || waker_ref.clone())
                        .join()
                        .expect("clone thread")
                });
                let fired = self.fired.clone();
                std::thread::spawn(move || {
                    fired.store(true, Ordering::Release);
                    owned.wake();
                });
            }
            Poll::Pending
        }
    }

    let lp = ctx.new_loop();
    let t = lp.create_task(async {
        CloneElsewhere {
            fired: Arc::new(AtomicBool::new(false)),
            started: false,
        }
        .await;
        Ok(7)
    })?;
    run_until_done(&lp, &*t.as_obj(), 10.0)?;
    assert_eq!(t.result()?, 7);
    lp.close()
}

// ----- gather and shield ------------------------------------------------------------

/// `test_gather` (`GatherTests`): results in the order given, whatever
/// order the children finish in.
pub fn test_gather_results_in_order(ctx: &Ctx) -> Result<()> {
    use loop_api::tasks::gather;
    let lp = ctx.new_loop();
    let v = run_on(&lp, async {
        let aws = [(3u64, "a"), (1, "b"), (2, "c")].map(|(k, name)| async move {
            for _ in 0..k {
                yield_now().await;
            }
            Ok(name)
        });
        gather(aws, false)?.values().await
    })?;
    assert_eq!(v, vec!["a", "b", "c"]);
    lp.close()
}

/// `test_return_exceptions`: every outcome, errors included, in order.
pub fn test_gather_return_exceptions(ctx: &Ctx) -> Result<()> {
    use loop_api::tasks::gather;
    let lp = ctx.new_loop();
    let v = run_on(&lp, async {
        let aws: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Result<i32>>>>> = vec![
            Box::pin(async { Ok(1) }),
            Box::pin(async { Err(Error::value("two")) }),
            Box::pin(async { Ok(3) }),
        ];
        gather(aws, true)?.await
    })?;
    assert_eq!(v, vec![Ok(1), Err(Error::value("two")), Ok(3)]);
    lp.close()
}

/// `test_one_exception`: without `return_exceptions`, the first error is
/// the result, and the other children go on (asyncio does not cancel
/// them).
pub fn test_gather_first_exception(ctx: &Ctx) -> Result<()> {
    use loop_api::tasks::gather;
    let lp = ctx.new_loop();
    let finished = Rc::new(Cell::new(false));
    let f2 = finished.clone();
    let (r, other_cancelled) = run_on(&lp, async move {
        let aws: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>>>>> = vec![
            Box::pin(async { Err(Error::value("first")) }),
            Box::pin(async move {
                sleep(0.01).await?;
                f2.set(true);
                Ok(())
            }),
        ];
        let g = gather(aws, false)?;
        let other = g.children()[1].clone();
        let r = g.await;
        Ok((r, other))
    })?;
    assert_eq!(r.err(), Some(Error::value("first")));
    run_until_done(&lp, &*other_cancelled.as_obj(), 5.0)?;
    assert!(!other_cancelled.cancelled());
    assert!(finished.get(), "the other child ran to its end");
    lp.close()
}

/// `test_cancel`-style: cancelling the gathering cancels every child not
/// done; awaiting it is then `Err(Cancelled)`.
pub fn test_gather_cancel_cancels_children(ctx: &Ctx) -> Result<()> {
    use loop_api::tasks::gather;
    let lp = ctx.new_loop();
    let (r, kids) = run_on(&lp, async {
        let g = gather([sleep(30.0), sleep(30.0)], true)?;
        let kids: Vec<_> = g.children().to_vec();
        yield_now().await;
        assert!(g.cancel(None));
        Ok((g.await, kids))
    })?;
    assert!(matches!(r, Err(Error::Cancelled(_))), "{r:?}");
    assert!(kids.iter().all(|k| k.cancelled()));
    lp.close()
}

/// Cancelling the task that awaits a gathering cancels the children too.
pub fn test_gather_outer_task_cancel(ctx: &Ctx) -> Result<()> {
    use loop_api::tasks::gather;
    let lp = ctx.new_loop();
    let kids = Rc::new(RefCell::new(Vec::new()));
    let k2 = kids.clone();
    let t = lp.create_task(async move {
        let g = gather([sleep(30.0), sleep(30.0)], false)?;
        k2.borrow_mut().extend(g.children().iter().cloned());
        g.await
    })?;
    run_once(&lp)?;
    run_once(&lp)?;
    t.cancel(None);
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    for _ in 0..3 {
        run_once(&lp)?;
    }
    assert!(t.cancelled());
    assert!(kids.borrow().iter().all(|k| k.cancelled()));
    lp.close()
}

/// `test_constructor_empty_sequence`: nothing to gather is an empty result.
pub fn test_gather_empty(ctx: &Ctx) -> Result<()> {
    use loop_api::tasks::gather;
    let lp = ctx.new_loop();
    let none: Vec<std::future::Ready<Result<()>>> = Vec::new();
    let v = run_on(&lp, async move { gather(none, false)?.await })?;
    assert!(v.is_empty());
    lp.close()
}

/// `test_shield_result`: a shielded awaitable's result comes through.
pub fn test_shield_result(ctx: &Ctx) -> Result<()> {
    use loop_api::tasks::shield;
    let lp = ctx.new_loop();
    let v = run_on(&lp, async {
        shield(async {
            sleep(0.0).await?;
            Ok(5)
        })?
        .await
    })?;
    assert_eq!(v, 5);
    let e = run_on(&lp, async {
        Ok(shield(async { Err::<(), _>(Error::value("inner")) })?.await)
    })?;
    assert_eq!(e, Err(Error::value("inner")));
    lp.close()
}

/// `test_shield_effect`: cancelling the task that awaits a shield cancels
/// only the wait; the shielded task runs to its end.
pub fn test_shield_outer_cancel(ctx: &Ctx) -> Result<()> {
    use loop_api::tasks::shield;
    let lp = ctx.new_loop();
    let inner = lp.create_task(async {
        sleep(0.02).await?;
        Ok("inner finished")
    })?;
    let i2 = inner.clone();
    // `&task`: awaiting clones the result, so the task keeps it.
    let outer = lp.create_task(async move { shield(&i2)?.await })?;
    run_once(&lp)?;
    run_once(&lp)?;
    outer.cancel(None);
    run_until_done(&lp, &*outer.as_obj(), 5.0)?;
    assert!(outer.cancelled());
    assert!(!inner.done());
    run_until_done(&lp, &*inner.as_obj(), 5.0)?;
    assert_eq!(inner.take_result(), Ok("inner finished"));
    lp.close()
}

/// Runs `fut` as a task on `lp` to its end.
fn run_on<T: 'static>(
    lp: &Loop,
    fut: impl std::future::Future<Output = Result<T>> + 'static,
) -> Result<T> {
    let t = lp.create_task(fut)?;
    run_until_done(lp, &*t.as_obj(), 10.0)?;
    t.take_result()
}
