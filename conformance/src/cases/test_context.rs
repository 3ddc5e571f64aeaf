//! From CPython's `test_context.py` and the context parts of `test_tasks.py`: context variables in callbacks and tasks.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;

use loop_api::contextvars::{copy_context, Context, ContextVar};
use loop_api::tasks::TaskOptions;
use loop_api::{current_task, Error, EventLoopExt, Result, Task};

use crate::util::{run_once, run_until_done, Log, SOON_ROADS};
use crate::Ctx;

/// `test_context_var_new_1`: a variable has a name; without a default and
/// unset, `get()` is `None` (Python's `LookupError`); with one, the default.
pub fn test_context_var_new_1(_ctx: &Ctx) -> Result<()> {
    let plain = ContextVar::<i32>::new("plain");
    assert_eq!(plain.name(), "plain");
    assert_eq!(plain.get(), None);
    let dflt = ContextVar::with_default("dflt", 42);
    assert_eq!(dflt.name(), "dflt");
    assert_eq!(dflt.get(), Some(42));
    Context::new().run(|| {
        assert_eq!(dflt.get(), Some(42), "the default holds in any context");
    })?;
    Ok(())
}

/// `test_context_getset_1`: `set` returns a token, `reset(token)` restores
/// the previous value (or unset), and a token works only once.
pub fn test_context_getset_1(_ctx: &Ctx) -> Result<()> {
    let c = ContextVar::<String>::new("c");
    Context::new().run(|| -> Result<()> {
        assert_eq!(c.get(), None);
        let t0 = c.set("42".into());
        assert_eq!(c.get().as_deref(), Some("42"));
        let t1 = c.set("spam".into());
        assert_eq!(c.get().as_deref(), Some("spam"));
        c.reset(&t1)?;
        assert_eq!(c.get().as_deref(), Some("42"));
        c.set("spam2".into());
        let again = c.reset(&t1);
        assert!(
            matches!(again, Err(Error::Runtime(ref m)) if m.contains("has already been used")),
            "{again:?}"
        );
        assert_eq!(c.get().as_deref(), Some("spam2"));
        c.reset(&t0)?;
        assert_eq!(c.get(), None, "back to unset");
        Ok(())
    })?
}

/// `test_context_getset_2`: a token of another variable is a `ValueError`.
pub fn test_context_getset_2(_ctx: &Ctx) -> Result<()> {
    let v1 = ContextVar::new("v1");
    let v2 = ContextVar::new("v2");
    Context::new().run(|| {
        let t1 = v1.set(42);
        let r = v2.reset(&t1);
        assert!(
            matches!(r, Err(Error::Value(ref m)) if m.contains("by a different")),
            "{r:?}"
        );
        assert_eq!(v1.get(), Some(42));
    })
}

/// `test_context_getset_3`: with a default, `set` then `reset` leaves the
/// context without the variable, and `get` falls back to the default.
pub fn test_context_getset_3(_ctx: &Ctx) -> Result<()> {
    let c = ContextVar::with_default("c", 42);
    let ctx = Context::new();
    let ctx2 = ctx.clone();
    ctx.run(|| -> Result<()> {
        assert_eq!(c.get(), Some(42));
        let t = c.set(1);
        assert_eq!(c.get(), Some(1));
        c.reset(&t)?;
        assert_eq!(c.get(), Some(42));
        Ok(())
    })??;
    assert_eq!(ctx2.get(&c), None, "reset removed the variable");
    assert!(ctx2.is_empty());
    Ok(())
}

/// `test_context_getset_5`: what runs in `copy_context()` cannot change the
/// caller's context.
pub fn test_context_getset_5(_ctx: &Ctx) -> Result<()> {
    let c = ContextVar::with_default("c", vec![0]);
    Context::new().run(|| -> Result<()> {
        c.set(vec![]);
        copy_context().run(|| {
            assert_eq!(
                c.get(),
                Some(vec![]),
                "the copy starts with the caller's values"
            );
            c.set(vec![42]);
            assert_eq!(c.get(), Some(vec![42]));
        })?;
        assert_eq!(c.get(), Some(vec![]));
        Ok(())
    })?
}

/// `test_context_run_4`: contexts are isolated: a context run inside another
/// sees none of its values; what was set stays in the context after `run`.
pub fn test_context_run_4(_ctx: &Ctx) -> Result<()> {
    let ctx1 = Context::new();
    let ctx2 = Context::new();
    let var = ContextVar::<String>::new("var");
    let cur = ctx1.run(|| -> Result<Context> {
        assert_eq!(var.get(), None);
        var.set("spam".into());
        ctx2.run(|| assert_eq!(var.get(), None))?;
        assert_eq!(var.get().as_deref(), Some("spam"));
        let cur = copy_context();
        assert_eq!(cur.len(), 1);
        assert_eq!(cur.get(&var).as_deref(), Some("spam"));
        Ok(cur)
    })??;
    assert_eq!(cur.get(&var).as_deref(), Some("spam"));
    assert_eq!(ctx1.get(&var).as_deref(), Some("spam"));
    assert_eq!(ctx2.get(&var), None);
    assert_eq!(var.get(), None, "the thread's context is untouched");
    Ok(())
}

/// `test_context_run_5`: a context run that fails (here: panics) still
/// restores the caller's context and can be entered again.
pub fn test_context_run_5(_ctx: &Ctx) -> Result<()> {
    let ctx = Context::new();
    let var = ContextVar::<&'static str>::new("var");
    let r = catch_unwind(AssertUnwindSafe(|| {
        ctx.run(|| {
            var.set("spam");
            panic!("1 / 0");
        })
    }));
    assert!(r.is_err());
    assert_eq!(var.get(), None, "the caller's context is restored");
    ctx.run(|| ())?;
    Ok(())
}

/// `test_context_run_6`: while a context runs, `ctx.get(var)` sees what is
/// set in it.
pub fn test_context_run_6(_ctx: &Ctx) -> Result<()> {
    let ctx = Context::new();
    let c = ContextVar::with_default("a", 0);
    let ctx2 = ctx.clone();
    ctx.run(|| {
        assert_eq!(c.get(), Some(0));
        assert_eq!(ctx2.get(&c), None);
        c.set(42);
        assert_eq!(c.get(), Some(42));
        assert_eq!(ctx2.get(&c), Some(42), "ctx.get() while ctx runs");
        assert_eq!(ctx2.len(), 1);
    })?;
    assert_eq!(ctx.get(&c), Some(42));
    Ok(())
}

/// `test_context_run_7`: entering a context that is already entered is a
/// `RuntimeError`; the outer run goes on.
pub fn test_context_run_7(_ctx: &Ctx) -> Result<()> {
    let ctx = Context::new();
    let inner = ctx.clone();
    let r = ctx.run(|| inner.run(|| ()))?;
    assert!(
        matches!(r, Err(Error::Runtime(ref m)) if m.contains("is already entered")),
        "{r:?}"
    );
    ctx.run(|| ())?;
    Ok(())
}

/// `test_context_copy_1`: `copy()` is a snapshot: later sets in either
/// context do not show in the other.
pub fn test_context_copy_1(_ctx: &Ctx) -> Result<()> {
    let ctx1 = Context::new();
    let c = ContextVar::with_default("c", 42);
    let me = ctx1.clone();
    ctx1.run(|| -> Result<()> {
        c.set(10);
        let ctx2 = me.copy();
        assert_eq!(ctx2.get(&c), Some(10), "copy() while running");
        c.set(20);
        assert_eq!(me.get(&c), Some(20));
        assert_eq!(ctx2.get(&c), Some(10));
        ctx2.run(|| {
            assert_eq!(c.get(), Some(10));
            c.set(30);
        })?;
        assert_eq!(me.get(&c), Some(20));
        assert_eq!(ctx2.get(&c), Some(30));
        assert_eq!(c.get(), Some(20));
        Ok(())
    })??;
    Ok(())
}

/// `test_call_soon_with_context` (test_events' context tests):
/// `call_soon(cb, Some(ctx))` runs the callback in `ctx`; its sets stay in `ctx`.
pub fn test_call_soon_with_context(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let var = Rc::new(ContextVar::with_default("var", 0));
    let given = Context::new();
    given.run(|| var.set(1))?;
    let seen = Log::new();
    for _ in 0..2 {
        let (v, s) = (var.clone(), seen.clone());
        lp.call_soon_dyn(
            Box::new(move || {
                s.push(v.get());
                v.set(v.get().unwrap_or(0) + 10);
            }),
            Some(given.clone()),
        )?;
    }
    run_once(&lp)?;
    assert_eq!(
        seen.get(),
        vec![Some(1), Some(11)],
        "both ran in the given context"
    );
    assert_eq!(given.get(&*var), Some(21));
    assert_eq!(var.get(), Some(0));
    lp.close()
}

/// `test_call_soon` (context=None): each callback runs in its own copy of
/// the context current when it was scheduled; sets do not leak between
/// callbacks or back to the caller.
pub fn test_call_soon_default_context_is_a_copy(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let var = Rc::new(ContextVar::<String>::new("var"));
    let seen = Log::new();
    let outer = Context::new();
    outer.run(|| -> Result<()> {
        var.set("at scheduling".into());
        for who in ["first", "second"] {
            let (v, s) = (var.clone(), seen.clone());
            lp.call_soon_dyn(
                Box::new(move || {
                    s.push(v.get());
                    v.set(who.into());
                }),
                None,
            )?;
        }
        var.set("changed later".into());
        Ok(())
    })??;
    run_once(&lp)?;
    let want = Some("at scheduling".to_string());
    assert_eq!(seen.get(), vec![want.clone(), want]);
    assert_eq!(outer.get(&*var).as_deref(), Some("changed later"));
    lp.close()
}

/// `test_handle_get_context` (3.12 `Handle.get_context`): the handle's
/// context is the one given, or the copy the callback will run in: what
/// the callback sets shows there. On every road.
pub fn test_handle_get_context(ctx: &Ctx) -> Result<()> {
    for (road, call_soon) in SOON_ROADS {
        let lp = ctx.new_loop();
        let var = Rc::new(ContextVar::<u32>::new("var"));
        let given = Context::new();
        let h = call_soon(&lp, Box::new(|| ()), Some(given.clone()))?;
        assert!(h.get_context().ptr_eq(&given), "{road}");
        let th = lp.call_later_dyn(0.0, Box::new(|| ()), Some(given.clone()))?;
        assert!(th.get_context().ptr_eq(&given));

        let tok = var.set(5);
        let v = var.clone();
        let h = call_soon(
            &lp,
            Box::new(move || drop(v.set(v.get().unwrap_or(0) + 1))),
            None,
        )?;
        var.reset(&tok)?;
        let hctx = h.get_context();
        assert_eq!(
            hctx.get(&*var),
            Some(5),
            "{road}: a copy taken at scheduling"
        );
        assert!(
            h.get_context().ptr_eq(&hctx),
            "{road}: the same context each time"
        );
        run_once(&lp)?;
        assert_eq!(hctx.get(&*var), Some(6), "{road}: the callback ran in it");
        assert!(h.get_context().ptr_eq(&hctx), "{road}: kept after running");
        assert_eq!(var.get(), None);
        lp.close()?;
    }
    Ok(())
}

/// `test_context_1`: a task runs in a copy of its creator's context: each
/// sees its own values, before and after awaiting the other.
pub fn test_context_1(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let cvar = Rc::new(ContextVar::with_default("cvar", "nope"));
    let (l, cv) = (lp.clone(), cvar.clone());
    lp.run_until_complete(async move {
        assert_eq!(cv.get(), Some("nope"));
        let cv2 = cv.clone();
        let sub = l.create_task(async move {
            loop_api::sleep(0.001).await?;
            let before = cv2.get();
            cv2.set("something else");
            Ok::<_, Error>(before)
        })?;
        cv.set("yes");
        let sub_saw = sub.await?;
        assert_eq!(
            sub_saw,
            Some("nope"),
            "the task copied the context at creation"
        );
        assert_eq!(cv.get(), Some("yes"), "the sub-task's set did not leak");
        Ok::<_, Error>(())
    })?;
    assert_eq!(cvar.get(), Some("nope"));
    lp.close()
}

/// `test_context_2`: a done callback added inside a task runs in a copy of
/// the task's context as it was when added; what it sets does not reach
/// the task.
pub fn test_context_2(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let cvar = Rc::new(ContextVar::with_default("cvar", "nope".to_string()));
    let seen_by_callback = Log::new();
    let (l, cv, sc) = (lp.clone(), cvar.clone(), seen_by_callback.clone());
    lp.run_until_complete(async move {
        for j in 0..2 {
            let fut = l.create_future::<()>();
            let (cv2, sc2) = (cv.clone(), sc.clone());
            fut.add_done_callback(
                move |_| {
                    sc2.push(cv2.get());
                    cv2.set("something else".into());
                },
                None,
            );
            cv.set(format!("yes{j}"));
            let f2 = fut.clone();
            // Completed from a plain callback, in another context.
            l.call_soon_dyn(
                Box::new(move || drop(f2.set_result(()))),
                Some(Context::new()),
            )?;
            fut.await?;
            assert_eq!(cv.get(), Some(format!("yes{j}")));
            for i in 0..3 {
                cv.set(format!("yes{i}-{j}"));
                loop_api::sleep(0.001).await?;
                assert_eq!(cv.get(), Some(format!("yes{i}-{j}")));
            }
        }
        Ok::<_, Error>(())
    })?;
    run_once(&lp)?;
    assert_eq!(
        seen_by_callback.get(),
        vec![Some("nope".to_string()), Some("yes2-0".to_string())],
        "each callback saw the task's context from when it was added"
    );
    assert_eq!(cvar.get().as_deref(), Some("nope"));
    lp.close()
}

/// `test_context_3`: many tasks each keep their own value across awaits
/// while interleaving.
pub fn test_context_3(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let cvar = Rc::new(ContextVar::with_default("cvar", -1i64));
    let mut tasks = Vec::new();
    for n in 0..20i64 {
        let cv = cvar.clone();
        tasks.push(lp.create_task(async move {
            for i in 0..5 {
                cv.set(n * 100 + i);
                let delay = [0.0, 0.001, 0.002][((n + i) % 3) as usize];
                loop_api::sleep(delay).await?;
                if cv.get() != Some(n * 100 + i) {
                    return Err(Error::runtime(format!(
                        "task {n} step {i} saw {:?}",
                        cv.get()
                    )));
                }
            }
            Ok::<_, Error>(())
        })?);
    }
    for t in &tasks {
        run_until_done(&lp, &*t.as_obj(), 10.0)?;
        t.result()?;
    }
    assert_eq!(cvar.get(), Some(-1));
    lp.close()
}

/// `test_context_4` / `test_context_5` / `test_context_6`: a task given
/// `context=ctx` runs in that very context: its sets land in `ctx`.
pub fn test_context_4(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let cvar = Rc::new(ContextVar::<i32>::new("cvar"));
    let (l, cv) = (lp.clone(), cvar.clone());
    let ret = lp.run_until_complete(async move {
        let mut ret = Vec::new();
        let ctx = copy_context();
        ret.push(ctx.get(&*cv));
        for val in [1, 2] {
            let cv2 = cv.clone();
            let t = l.create_task_with(
                async move {
                    loop_api::sleep(0.0).await?;
                    cv2.set(val);
                    Ok::<_, Error>(())
                },
                TaskOptions {
                    context: Some(ctx.clone()),
                    ..Default::default()
                },
            )?;
            t.await?;
            ret.push(ctx.get(&*cv));
        }
        assert_eq!(cv.get(), None, "the creator's context is not the task's");
        Ok::<_, Error>(ret)
    })?;
    assert_eq!(ret, vec![None, Some(1), Some(2)]);
    lp.close()
}

/// `test_get_context`: `task.get_context()` is the context given at
/// creation, the same object.
pub fn test_get_context(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let context = copy_context();
    let t = lp.create_task_with(
        async { Ok::<_, Error>(()) },
        TaskOptions {
            context: Some(context.clone()),
            ..Default::default()
        },
    )?;
    assert!(t.get_context().ptr_eq(&context));
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert!(t.get_context().ptr_eq(&context));
    lp.close()
}

/// The task's own context persists across its steps and is what
/// `get_context()` returns, from inside (via `current_task()`) and
/// outside, as one object that shows the task's sets.
pub fn test_task_context_persists_across_awaits(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let var = Rc::new(ContextVar::<u32>::new("var"));
    let inside: Rc<RefCell<Option<Context>>> = Default::default();
    let (v, ins) = (var.clone(), inside.clone());
    let t: Task<Vec<Option<u32>>> = lp.create_task(async move {
        let mut seen = vec![v.get()];
        v.set(1);
        loop_api::sleep(0.0).await?;
        seen.push(v.get());
        let me = current_task().expect("in a task");
        *ins.borrow_mut() = Some(me.get_context());
        v.set(2);
        loop_api::sleep(0.001).await?;
        seen.push(v.get());
        v.set(3);
        Ok(seen)
    })?;
    var.set(99);
    run_until_done(&lp, &*t.as_obj(), 5.0)?;
    assert_eq!(t.result()?, vec![None, Some(1), Some(2)]);
    let after = t.get_context();
    assert_eq!(after.get(&*var), Some(3));
    let inside = inside.borrow_mut().take().expect("ran");
    assert!(
        inside.ptr_eq(&after),
        "one context object for the task's life"
    );
    assert_eq!(inside.get(&*var), Some(3));
    assert_eq!(var.get(), Some(99), "the creator's value is untouched");
    lp.close()
}

/// `test_context_threads_1`-style isolation for tasks: a task created after
/// the caller changed a variable sees the value as of `create_task`.
pub fn test_task_copies_context_at_creation(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let var = Rc::new(ContextVar::<u32>::new("var"));
    Context::new().run(|| -> Result<()> {
        var.set(1);
        let v = var.clone();
        let t = lp.create_task(async move { Ok::<_, Error>(v.get()) })?;
        var.set(2);
        run_until_done(&lp, &*t.as_obj(), 5.0)?;
        assert_eq!(t.result()?, Some(1));
        assert_eq!(var.get(), Some(2));
        Ok(())
    })??;
    lp.close()
}

/// `add_done_callback(cb, context=ctx)`: the callback runs in the context given.
pub fn test_done_callback_with_context(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let var = Rc::new(ContextVar::<&'static str>::new("var"));
    let given = Context::new();
    given.run(|| var.set("given"))?;
    let seen = Log::new();
    let f = lp.create_future::<()>();
    let (v, s) = (var.clone(), seen.clone());
    f.add_done_callback(
        move |_| {
            s.push(v.get());
            v.set("set by callback");
        },
        Some(given.clone()),
    );
    f.set_result(())?;
    run_once(&lp)?;
    assert_eq!(seen.get(), vec![Some("given")]);
    assert_eq!(given.get(&*var), Some("set by callback"));
    lp.close()
}
