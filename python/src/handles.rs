//! `Handle` and `TimerHandle`: what `call_soon`, `call_later` and the
//! readiness methods return to Python.
//!
//! The loop's ready queue holds a Rust closure that owns a reference to
//! the Python handle; running it runs the handle's callback in the
//! handle's `contextvars.Context`. Cancelling only marks the handle (and
//! drops its callback, breaking reference cycles as asyncio does); a timer
//! also tells the loop, which purges cancelled timers.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use std::cell::UnsafeCell;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use crate::core::Core;

/// A cell read and written only with the interpreter lock held, by one
/// thread at a time: what a handle needs, without pyo3's borrow checks on
/// the hot path (`call_soon`, running a callback, the GC's traversal).
pub(crate) struct GilCell<T>(UnsafeCell<T>);

// SAFETY: every access goes through `with`, which takes a `Python` token
// (the GIL is held) and runs no Python code while the `&mut T` lives; this
// extension is built for the GIL-enabled interpreter (it does not declare
// free-threading support), where the GIL excludes other threads.
unsafe impl<T: Send> Sync for GilCell<T> {}

impl<T> GilCell<T> {
    pub(crate) fn new(value: T) -> Self {
        GilCell(UnsafeCell::new(value))
    }

    /// Runs `f` on the value. `f` must not call into Python.
    pub(crate) fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> R {
        // SAFETY: see the `Sync` impl; `f` runs no Python code, so nothing
        // re-enters this cell while the reference lives.
        f(unsafe { &mut *self.0.get() })
    }

    /// For `__traverse__`, which runs inside the GC with the GIL held and
    /// calls no Python code.
    fn during_gc(&self) -> &T {
        // SAFETY: the GC runs with the GIL held and no `with` is active
        // then (a `with` closure never calls into Python).
        unsafe { &*self.0.get() }
    }
}

/// What running or cancelling a handle changes.
pub(crate) struct HandleState {
    pub(crate) callback: Option<Py<PyAny>>,
    pub(crate) args: Option<Py<PyTuple>>,
    pub(crate) context: Option<Py<PyAny>>,
    pub(crate) cancelled: bool,
    /// Where it was scheduled from, in debug mode.
    pub(crate) source_traceback: Option<Py<PyAny>>,
}

/// A scheduled callback (asyncio's `events.Handle`).
#[pyclass(module = "rust_asyncio._core", subclass, frozen, weakref)]
pub struct Handle {
    pub(crate) st: GilCell<HandleState>,
    pub(crate) loop_: Py<PyAny>,
    /// Readers, writers and signal handlers run more than once.
    pub(crate) repeat: bool,
}

impl Handle {
    pub(crate) fn new(
        py: Python<'_>,
        loop_: Py<PyAny>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        repeat: bool,
    ) -> PyResult<Handle> {
        let context = match context {
            Some(c) if !c.is_none(py) => c,
            // SAFETY: called with the GIL held; returns a new reference or
            // NULL with an exception set, which `from_owned_ptr_or_err` checks.
            _ => unsafe { Py::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent())? },
        };
        Ok(Handle {
            st: GilCell::new(HandleState {
                callback: Some(callback),
                args: Some(args),
                context: Some(context),
                cancelled: false,
                source_traceback: None,
            }),
            loop_,
            repeat,
        })
    }

    pub(crate) fn set_source_traceback(&self, py: Python<'_>, tb: Option<Py<PyAny>>) {
        self.st.with(py, |s| s.source_traceback = tb);
    }

    pub(crate) fn is_cancelled(&self, py: Python<'_>) -> bool {
        self.st.with(py, |s| s.cancelled)
    }

    /// Cancels from Rust (a replaced or removed reader or writer).
    pub(crate) fn cancel_now(py: Python<'_>, h: &Py<Handle>) {
        h.get().mark_cancelled(py);
    }

    /// Marks the handle cancelled and drops its callback (returned, to be
    /// released after the cell is left). False if it was cancelled already.
    fn mark_cancelled(&self, py: Python<'_>) -> bool {
        let dropped = self.st.with(py, |s| {
            if s.cancelled {
                return None;
            }
            s.cancelled = true;
            Some((s.callback.take(), s.args.take()))
        });
        dropped.is_some()
    }

    fn describe(slf: &Bound<'_, Self>, extra: &str) -> PyResult<String> {
        let py = slf.py();
        let name = slf.get_type().name()?;
        let (cancelled, cb, args) = slf.get().st.with(py, |s| {
            (
                s.cancelled,
                s.callback.as_ref().map(|c| c.clone_ref(py)),
                s.args.as_ref().map(|a| a.clone_ref(py)),
            )
        });
        let mut out = format!("<{name}");
        if cancelled {
            out.push_str(" cancelled");
        }
        out.push_str(extra);
        if let (Some(cb), Some(args)) = (cb, args) {
            out.push(' ');
            out.push_str(&format_callback(py, &cb, &args)?);
        }
        out.push('>');
        Ok(out)
    }
}

#[pymethods]
impl Handle {
    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        let s = self.st.during_gc();
        visit.call(&s.callback)?;
        visit.call(&s.args)?;
        visit.call(&s.context)?;
        visit.call(&s.source_traceback)?;
        visit.call(&self.loop_)
    }

    fn __clear__(&self) {
        // The GC holds the GIL while it clears; the values are dropped
        // after the cell is left.
        let taken = Python::attach(|py| {
            self.st.with(py, |s| {
                (
                    s.callback.take(),
                    s.args.take(),
                    s.context.take(),
                    s.source_traceback.take(),
                )
            })
        });
        drop(taken);
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .with(py, |s| s.source_traceback.as_ref().map(|t| t.clone_ref(py)))
    }

    /// Cancels the callback; it will not run. Idempotent.
    fn cancel(&self, py: Python<'_>) {
        self.mark_cancelled(py);
    }

    fn cancelled(&self, py: Python<'_>) -> bool {
        self.is_cancelled(py)
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .with(py, |s| s.context.as_ref().map(|c| c.clone_ref(py)))
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.st
            .with(py, |s| s.callback.as_ref().map(|c| c.clone_ref(py)))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.st
            .with(py, |s| s.args.as_ref().map(|c| c.clone_ref(py)))
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.loop_.clone_ref(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        Handle::describe(slf, "")
    }
}

/// A callback at a point in time (asyncio's `events.TimerHandle`).
#[pyclass(module = "rust_asyncio._core", extends = Handle, subclass, frozen)]
pub struct TimerHandle {
    pub(crate) when: f64,
    /// The loop's key for its Rust timer; `None` once it ran or was cancelled.
    pub(crate) key: GilCell<Option<usize>>,
}

#[pymethods]
impl TimerHandle {
    fn when(&self) -> f64 {
        self.when
    }

    fn cancel(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let base: &Handle = slf.as_super().get();
        if !base.mark_cancelled(py) {
            return;
        }
        let Some(key) = slf.get().key.with(py, Option::take) else {
            return;
        };
        if let Ok(core) = base.loop_.bind(py).cast::<Core>() {
            // From another thread (not thread-safe in asyncio either) the
            // timer stays queued; marked cancelled, it will not run.
            let core = core.get();
            if core.owned_here() {
                core.cancel_timer(key);
            }
        }
    }

    fn __lt__(&self, other: PyRef<'_, TimerHandle>) -> bool {
        self.when < other.when
    }

    fn __le__(&self, other: PyRef<'_, TimerHandle>) -> bool {
        self.when <= other.when
    }

    fn __gt__(&self, other: PyRef<'_, TimerHandle>) -> bool {
        self.when > other.when
    }

    fn __ge__(&self, other: PyRef<'_, TimerHandle>) -> bool {
        self.when >= other.when
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let when = slf.get().when;
        Handle::describe(slf.as_super(), &format!(" when={when}"))
    }
}

/// Where a handle is being made from, as asyncio records it in debug
/// mode: the stack of the Python caller `depth` frames above the call.
pub(crate) fn source_traceback(py: Python<'_>, depth: u32) -> PyResult<Py<PyAny>> {
    static EXTRACT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let extract = EXTRACT.get_or_try_init(py, || {
        py.import("asyncio.format_helpers")?
            .getattr("extract_stack")
            .map(Bound::unbind)
    })?;
    let frame = py.import("sys")?.call_method1("_getframe", (depth,))?;
    Ok(extract.bind(py).call1((frame,))?.unbind())
}

/// asyncio's own text for a callback and its arguments.
fn format_callback(py: Python<'_>, cb: &Py<PyAny>, args: &Py<PyTuple>) -> PyResult<String> {
    static FORMAT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let f = FORMAT.get_or_try_init(py, || {
        py.import("asyncio.format_helpers")?
            .getattr("_format_callback_source")
            .map(Bound::unbind)
    })?;
    f.bind(py).call1((cb, args, false))?.extract::<String>()
}

/// A handle in the loop's ready queue: one allocation, run as a step.
pub(crate) struct Scheduled(pub(crate) Py<Handle>);

impl loop_api::events::Step for Scheduled {
    fn run_step(self: std::rc::Rc<Self>) {
        crate::core::on_loop(|py| run(py, self.0.bind(py)))
    }

    fn describe(&self) -> String {
        Python::attach(|py| {
            self.0
                .bind(py)
                .repr()
                .map(|r| r.to_string())
                .unwrap_or_else(|_| "<Handle>".into())
        })
    }
}

/// Runs the handle's callback in its context, as asyncio's `Handle._run`:
/// `SystemExit` and `KeyboardInterrupt` stop the loop and come out of
/// `run_forever`; any other exception goes to the exception handler.
pub(crate) fn run(py: Python<'_>, handle: &Bound<'_, Handle>) {
    let h = handle.get();
    let taken = h.st.with(py, |s| {
        if s.cancelled {
            return None;
        }
        let cb = if h.repeat {
            s.callback.as_ref().map(|c| c.clone_ref(py))
        } else {
            s.callback.take()
        };
        Some((
            cb?,
            s.args.as_ref()?.clone_ref(py),
            s.context.as_ref().map(|c| c.clone_ref(py)),
        ))
    });
    let Some((cb, args, ctx)) = taken else {
        return;
    };
    let result = match &ctx {
        Some(ctx) => call_in_context(py, ctx, &cb, &args),
        None => cb.bind(py).call1(args.bind(py)).map(drop),
    };
    if let Err(err) = result {
        report(py, &h.loop_, handle, &cb, &args, err);
    }
}

fn call_in_context(
    py: Python<'_>,
    ctx: &Py<PyAny>,
    cb: &Py<PyAny>,
    args: &Py<PyTuple>,
) -> PyResult<()> {
    // SAFETY: the GIL is held and `ctx` is a `contextvars.Context` (made by
    // `PyContext_CopyCurrent` or checked by the caller of `Handle::new`);
    // entering fails with an exception set when it is entered already.
    if unsafe { ffi::PyContext_Enter(ctx.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    let r = cb.bind(py).call1(args.bind(py)).map(drop);
    // SAFETY: entered just above, on this thread.
    if unsafe { ffi::PyContext_Exit(ctx.as_ptr()) } < 0 {
        let exit_err = PyErr::fetch(py);
        return r.and(Err(exit_err));
    }
    r
}

fn report(
    py: Python<'_>,
    lp: &Py<PyAny>,
    handle: &Bound<'_, Handle>,
    cb: &Py<PyAny>,
    args: &Py<PyTuple>,
    err: PyErr,
) {
    if err.is_instance_of::<PySystemExit>(py) || err.is_instance_of::<PyKeyboardInterrupt>(py) {
        match lp.bind(py).cast::<Core>() {
            Ok(core) => core.get().raise_out_of_run(err),
            Err(_) => err.restore(py),
        }
        return;
    }
    let text = format_callback(py, cb, args).unwrap_or_else(|_| "<callback>".into());
    let context = PyDict::new(py);
    let filled = context
        .set_item("message", format!("Exception in callback {text}"))
        .and_then(|_| context.set_item("exception", err.value(py)))
        .and_then(|_| context.set_item("handle", handle))
        .and_then(|_| {
            let tb = handle
                .get()
                .st
                .with(py, |s| s.source_traceback.as_ref().map(|t| t.clone_ref(py)));
            match tb {
                Some(tb) => context.set_item("source_traceback", tb),
                None => Ok(()),
            }
        });
    let called = filled.and_then(|_| {
        lp.bind(py)
            .call_method1("call_exception_handler", (context,))
    });
    if let Err(e) = called {
        e.write_unraisable(py, Some(handle.as_any()));
    }
}
