//! From CPython's `test_runners.py`: `run()` and `Runner`.
//!
//! Every case hands the backend under test to the runner as its
//! `loop_factory`, except the few about the loop a runner makes *without*
//! one (the policy's, i.e. the default backend). Ctrl-C needs the main
//! thread, which test threads are not: `policy/tests/ctrl_c.rs` covers it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loop_api::contextvars::{copy_context, Context, ContextVar};
use loop_api::{get_running_loop, sleep, Error, EventLoopExt, Loop, Result};
use policy::{DefaultEventLoopPolicy, LoopFactory, Runner};

use crate::cases::test_policy::{policy_write, RestoreDefaultPolicy};
use crate::util::{capture_exceptions, expect_runtime, Log};
use crate::Ctx;

thread_local! {
    /// The factory [`counting_factory`] delegates to, and how many loops it
    /// made: per thread, so per case.
    static INNER: Cell<Option<LoopFactory>> = const { Cell::new(None) };
    static MADE: Cell<usize> = const { Cell::new(0) };
}

fn counting_factory() -> Result<Loop> {
    MADE.with(|m| m.set(m.get() + 1));
    let inner = INNER.with(Cell::get).expect("set by counting()");
    inner()
}

/// A loop factory for the backend under test that counts its calls.
fn counting(ctx: &Ctx) -> LoopFactory {
    INNER.with(|i| i.set(Some(ctx.factory())));
    MADE.with(|m| m.set(0));
    counting_factory
}

fn loops_made() -> usize {
    MADE.with(Cell::get)
}

/// The backend under test's name.
fn backend_under_test(ctx: &Ctx) -> Result<&'static str> {
    let lp = ctx.new_loop();
    let name = lp.backend_name();
    lp.close()?;
    Ok(name)
}

/// A slot a coroutine leaves the running loop in.
fn loop_slot() -> Rc<RefCell<Option<Loop>>> {
    Rc::new(RefCell::new(None))
}

fn running_into(slot: &Rc<RefCell<Option<Loop>>>) -> Result<()> {
    *slot.borrow_mut() = Some(get_running_loop()?);
    Ok(())
}

/// `test_asyncio_run_return`: `run` returns the coroutine's value.
pub fn test_asyncio_run_return(ctx: &Ctx) -> Result<()> {
    let r = policy::run(
        async {
            sleep(0.0).await?;
            Ok(42)
        },
        None,
        Some(ctx.factory()),
    )?;
    assert_eq!(r, 42);
    Ok(())
}

/// `test_asyncio_run_raises`: the coroutine's error comes out of `run`,
/// and the loop is closed all the same.
pub fn test_asyncio_run_raises(ctx: &Ctx) -> Result<()> {
    let seen = loop_slot();
    let s = seen.clone();
    let r: Result<()> = policy::run(
        async move {
            running_into(&s)?;
            sleep(0.0).await?;
            Err(Error::value("spam"))
        },
        None,
        Some(ctx.factory()),
    );
    match r {
        Err(Error::Value(m)) => assert_eq!(m, "spam"),
        other => panic!("expected ValueError('spam'), got {other:?}"),
    }
    let lp = seen.borrow_mut().take().expect("main ran");
    assert!(lp.is_closed(), "run() closes its loop");
    assert!(!lp.is_running());
    Ok(())
}

/// `test_asyncio_run_debug` / `RunnerTests.test_debug`/`test_non_debug`:
/// `debug` reaches the loop; `None` leaves the loop's own setting.
pub fn test_asyncio_run_debug(ctx: &Ctx) -> Result<()> {
    let get_debug = async { Ok(get_running_loop()?.get_debug()) };
    assert!(policy::run(get_debug, Some(true), Some(ctx.factory()))?);
    let get_debug = async { Ok(get_running_loop()?.get_debug()) };
    assert!(!policy::run(get_debug, Some(false), Some(ctx.factory()))?);

    let fresh = ctx.new_loop();
    let default = fresh.get_debug();
    fresh.close()?;
    let get_debug = async { Ok(get_running_loop()?.get_debug()) };
    assert_eq!(policy::run(get_debug, None, Some(ctx.factory()))?, default);

    let mut runner = Runner::new(Some(true), Some(ctx.factory()));
    assert!(runner.get_loop()?.get_debug());
    runner.close()?;
    let mut runner = Runner::new(Some(false), Some(ctx.factory()));
    assert!(!runner.get_loop()?.get_debug());
    runner.close()
}

/// `test_asyncio_run_from_running_loop`: `run` refuses a running loop.
pub fn test_asyncio_run_from_running_loop(ctx: &Ctx) -> Result<()> {
    let counted = counting(ctx);
    let nested = policy::run(
        async move { Ok(policy::run(async { Ok(()) }, None, Some(counted))) },
        None,
        Some(ctx.factory()),
    )?;
    assert_eq!(loops_made(), 0, "refused before making a loop");
    expect_runtime(
        nested,
        "asyncio.run() cannot be called from a running event loop",
    );
    Ok(())
}

/// `test_asyncio_run_loop_factory`: the factory is called once, and its
/// loop is the one that runs the coroutine.
pub fn test_asyncio_run_loop_factory(ctx: &Ctx) -> Result<()> {
    let factory = counting(ctx);
    let seen = loop_slot();
    let s = seen.clone();
    policy::run(async move { running_into(&s) }, None, Some(factory))?;
    assert_eq!(loops_made(), 1);
    let lp = seen.borrow_mut().take().expect("main ran");
    assert_eq!(lp.backend_name(), backend_under_test(ctx)?);
    assert!(lp.is_closed());
    Ok(())
}

/// `test_asyncio_run_cancels_hanging_tasks`: tasks still pending when the
/// main coroutine returns are cancelled; their coroutines see
/// `Err(Cancelled)` at their await.
pub fn test_asyncio_run_cancels_hanging_tasks(ctx: &Ctx) -> Result<()> {
    let outcomes: Log<String> = Log::new();
    let o = outcomes.clone();
    let r = policy::run(
        async move {
            let lp = get_running_loop()?;
            for i in 0..2 {
                let o = o.clone();
                let never = lp.create_future::<()>();
                lp.create_task(async move {
                    let r = never.await;
                    o.push(format!("leftover {i}: {}", kind(&r)));
                    r
                })?;
            }
            sleep(0.0).await?; // let them reach their await
            Ok("main done")
        },
        None,
        Some(ctx.factory()),
    )?;
    assert_eq!(r, "main done");
    assert_eq!(
        outcomes.get(),
        vec!["leftover 0: CancelledError", "leftover 1: CancelledError"]
    );
    Ok(())
}

fn kind<T>(r: &Result<T>) -> &'static str {
    match r {
        Ok(_) => "Ok",
        Err(e) => e.kind_name(),
    }
}

/// `test_asyncio_run_reports_hanging_tasks_errors`: a leftover task that
/// ends with an exception when cancelled is reported to the exception
/// handler.
pub fn test_asyncio_run_reports_hanging_tasks_errors(ctx: &Ctx) -> Result<()> {
    let reports = Rc::new(RefCell::new(None));
    let rep = reports.clone();
    policy::run(
        async move {
            let lp = get_running_loop()?;
            *rep.borrow_mut() = Some(capture_exceptions(&lp));
            let never = lp.create_future::<()>();
            lp.create_task(async move {
                let _ = never.await; // cancelled...
                Err::<(), _>(Error::value("boom")) // ...and fails instead
            })?;
            sleep(0.0).await
        },
        None,
        Some(ctx.factory()),
    )?;
    let reports = reports.borrow_mut().take().expect("main ran").get();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let r = &reports[0];
    assert_eq!(
        r.message,
        "unhandled exception during asyncio.run() shutdown"
    );
    assert!(
        matches!(&r.exception, Some(Error::Value(m)) if m == "boom"),
        "{r:?}"
    );
    assert!(r.task.as_ref().is_some_and(|t| t.done()), "{r:?}");
    Ok(())
}

/// `test_asyncio_run_set_event_loop`: without a loop_factory, `run` makes
/// its loop through the policy and sets it as the thread's current loop
/// while it runs; afterwards there is none.
pub fn test_asyncio_run_set_event_loop(ctx: &Ctx) -> Result<()> {
    let _policy = policy_write();
    let _restore = RestoreDefaultPolicy;
    policy::set_event_loop_policy(Some(Arc::new(DefaultEventLoopPolicy::with_factory(
        ctx.factory(),
    ))));
    let same = policy::run(
        async {
            let running = get_running_loop()?;
            let current = policy::get_event_loop_policy().get_event_loop()?;
            Ok(running.loop_id() == current.loop_id())
        },
        None,
        None,
    )?;
    assert!(same, "the runner's loop is the current loop while it runs");
    let after = policy::get_event_loop();
    assert!(
        matches!(&after, Err(Error::Runtime(m)) if m.starts_with("There is no current event loop")),
        "{:?}",
        after.err()
    );
    Ok(())
}

/// `RunnerTests.test_custom_factory`: the loop is made lazily, once, by the
/// factory; `get_loop` returns it, and `run` runs on it.
pub fn test_runner_lazy_loop(ctx: &Ctx) -> Result<()> {
    let factory = counting(ctx);
    let mut runner = Runner::new(None, Some(factory));
    assert_eq!(loops_made(), 0, "Runner::new makes no loop");
    let lp = runner.get_loop()?;
    assert_eq!(loops_made(), 1);
    assert_eq!(lp.backend_name(), backend_under_test(ctx)?);
    assert!(!lp.is_closed() && !lp.is_running());
    assert_eq!(runner.get_loop()?.loop_id(), lp.loop_id());
    let ran_on = runner.run(async { Ok(get_running_loop()?.loop_id()) }, None)?;
    assert_eq!(ran_on, lp.loop_id());
    assert_eq!(loops_made(), 1);
    runner.close()
}

/// `RunnerTests.test_run`: `run` twice on one runner, on the same loop.
pub fn test_runner_run_twice(ctx: &Ctx) -> Result<()> {
    let mut runner = Runner::new(None, Some(ctx.factory()));
    let first = runner.run(
        async {
            sleep(0.0).await?;
            Ok((get_running_loop()?.loop_id(), "one"))
        },
        None,
    )?;
    let second = runner.run(async { Ok((get_running_loop()?.loop_id(), "two")) }, None)?;
    assert_eq!(first.1, "one");
    assert_eq!(second.1, "two");
    assert_eq!(first.0, second.0, "the runner keeps its loop");
    assert!(!runner.get_loop()?.is_closed());
    // An error does not spoil the runner.
    let failed: Result<()> = runner.run(async { Err(Error::value("bad")) }, None);
    assert!(matches!(failed, Err(Error::Value(_))));
    assert_eq!(runner.run(async { Ok(3) }, None)?, 3);
    runner.close()
}

/// `RunnerTests.test_explicit_close`, `test_double_close` and
/// `test_second_with_block_raises`: close closes the loop, a second close
/// does nothing, and the runner refuses to go on.
pub fn test_runner_close(ctx: &Ctx) -> Result<()> {
    let mut runner = Runner::new(None, Some(ctx.factory()));
    let lp = runner.get_loop()?;
    runner.close()?;
    assert!(lp.is_closed());
    runner.close()?;
    assert!(lp.is_closed());
    expect_runtime(runner.get_loop().map(drop), "Runner is closed");
    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    expect_runtime(
        runner.run(
            async move {
                r.set(true);
                Ok(())
            },
            None,
        ),
        "Runner is closed",
    );
    assert!(!ran.get(), "a closed runner runs nothing");
    Ok(())
}

/// Dropping a runner closes it, as leaving the `with` block does.
pub fn test_runner_drop_closes(ctx: &Ctx) -> Result<()> {
    let lp = {
        let mut runner = Runner::new(None, Some(ctx.factory()));
        runner.run(async { Ok(()) }, None)?;
        runner.get_loop()?
    };
    assert!(lp.is_closed());
    Ok(())
}

/// `RunnerTests.test_run_keeps_context`: every `run` uses the runner's one
/// context, so what a run sets, the next sees.
pub fn test_runner_run_keeps_context(ctx: &Ctx) -> Result<()> {
    let cvar = Rc::new(ContextVar::with_default("cvar", -1));
    let f = |val: i32| {
        let cvar = cvar.clone();
        async move {
            let old = cvar.get();
            sleep(0.0).await?;
            cvar.set(val);
            Ok(old)
        }
    };
    let mut runner = Runner::new(None, Some(ctx.factory()));
    assert_eq!(runner.run(f(1), None)?, Some(-1));
    assert_eq!(runner.run(f(2), None)?, Some(1));
    let copied = runner.run(async { Ok(copy_context()) }, None)?;
    assert_eq!(copied.get(&cvar), Some(2));
    assert_eq!(cvar.get(), Some(-1), "the caller's context is untouched");
    runner.close()
}

/// `Runner.run(coro, context=ctx)`: the coroutine runs in the context given.
pub fn test_runner_run_with_context(ctx: &Ctx) -> Result<()> {
    let cvar = Rc::new(ContextVar::with_default("cvar", "default"));
    let given = Context::new();
    let mut runner = Runner::new(None, Some(ctx.factory()));
    let v = cvar.clone();
    runner.run(
        async move {
            sleep(0.0).await?;
            v.set("set in the given context");
            Ok(())
        },
        Some(given.clone()),
    )?;
    assert_eq!(given.get(&cvar), Some("set in the given context"));
    let v = cvar.clone();
    let in_runner_context = runner.run(async move { Ok(v.get()) }, None)?;
    assert_eq!(in_runner_context, Some("default"));
    runner.close()
}

/// `RunnerTests.test_recursive_run`: `Runner.run` refuses a running loop.
pub fn test_runner_recursive_run(ctx: &Ctx) -> Result<()> {
    let factory = counting(ctx);
    let mut runner = Runner::new(None, Some(factory));
    let nested = runner.run(
        async {
            let mut inner = Runner::new(None, Some(counting_factory));
            let r = inner.run(async { Ok(()) }, None);
            Ok((r, loops_made()))
        },
        None,
    )?;
    expect_runtime(
        nested.0,
        "Runner.run() cannot be called from a running event loop",
    );
    assert_eq!(nested.1, 1, "the inner runner made no loop");
    runner.close()
}

/// Without a loop_factory the runner sets the thread's current loop until
/// it closes; with one (`test_loop_factory`), it does not (asyncio: that is
/// the factory's business).
pub fn test_runner_sets_event_loop_only_without_factory(ctx: &Ctx) -> Result<()> {
    let _policy = policy_write();
    let _restore = RestoreDefaultPolicy;
    // Without a factory the runner asks the policy: one that makes loops
    // of the backend under test.
    policy::set_event_loop_policy(Some(Arc::new(DefaultEventLoopPolicy::with_factory(
        ctx.factory(),
    ))));
    let mut with_factory = Runner::new(None, Some(ctx.factory()));
    with_factory.get_loop()?;
    let current = policy::get_event_loop();
    assert!(
        matches!(&current, Err(Error::Runtime(m)) if m.starts_with("There is no current event loop")),
        "{:?}",
        current.ok().map(|l| l.loop_id())
    );
    with_factory.close()?;

    let mut without = Runner::new(None, None);
    let lp = without.get_loop()?;
    assert_eq!(policy::get_event_loop()?.loop_id(), lp.loop_id());
    without.close()?;
    assert!(policy::get_event_loop().is_err(), "close() unsets it");
    Ok(())
}

/// `run` leaves other tasks pending; `close` cancels them (their
/// coroutines see `Err(Cancelled)`), runs them to the end, and reports the
/// one that ended with an exception.
pub fn test_runner_close_cancels_leftover_tasks(ctx: &Ctx) -> Result<()> {
    let mut runner = Runner::new(None, Some(ctx.factory()));
    let lp = runner.get_loop()?;
    let reports = capture_exceptions(&lp);
    let outcomes: Log<String> = Log::new();
    let o = outcomes.clone();
    runner.run(
        async move {
            let lp = get_running_loop()?;
            let (o1, never1) = (o.clone(), lp.create_future::<()>());
            lp.create_task(async move {
                let r = never1.await;
                o1.push(format!("quiet: {}", kind(&r)));
                r
            })?;
            let (o2, never2) = (o, lp.create_future::<()>());
            lp.create_task(async move {
                let r = never2.await;
                o2.push(format!("failing: {}", kind(&r)));
                Err::<(), _>(Error::value("cleanup failed"))
            })?;
            sleep(0.0).await
        },
        None,
    )?;
    assert_eq!(loop_api::all_tasks(&*lp).len(), 2, "run() leaves them");
    assert!(outcomes.is_empty());
    runner.close()?;
    assert_eq!(
        outcomes.get(),
        vec!["quiet: CancelledError", "failing: CancelledError"]
    );
    let reports = reports.get();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(
        reports[0].message,
        "unhandled exception during asyncio.run() shutdown"
    );
    assert!(matches!(&reports[0].exception, Some(Error::Value(m)) if m == "cleanup failed"));
    assert!(lp.is_closed());
    Ok(())
}

/// `close` shuts the default executor down, waiting for its jobs
/// (`shutdown_default_executor`), before closing the loop.
pub fn test_runner_close_shuts_down_default_executor(ctx: &Ctx) -> Result<()> {
    let finished = Arc::new(AtomicBool::new(false));
    let f = finished.clone();
    let mut runner = Runner::new(None, Some(ctx.factory()));
    runner.run(
        async move {
            let lp = get_running_loop()?;
            // Submitted, never awaited: still running when run() returns.
            let _job = lp.run_in_executor(None, move || {
                std::thread::sleep(Duration::from_millis(100));
                f.store(true, Ordering::SeqCst);
            })?;
            Ok(())
        },
        None,
    )?;
    let lp = runner.get_loop()?;
    runner.close()?;
    assert!(
        finished.load(Ordering::SeqCst),
        "close() returned before the executor's job finished"
    );
    assert!(lp.is_closed());
    Ok(())
}
