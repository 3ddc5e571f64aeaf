//! `Handle` and `TimerHandle`: what `call_soon`, `call_later` and the
//! readiness methods return to Python.
//!
//! The loop's ready queue holds a Rust closure that owns a reference to
//! the Python handle; running it runs the handle's callback in the
//! handle's `contextvars.Context`. Cancelling only marks the handle (and
//! drops its callback, breaking reference cycles as asyncio does); a timer
//! also tells the loop, which purges cancelled timers.

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use crate::core::Core;

/// A scheduled callback (asyncio's `events.Handle`).
#[pyclass(module = "rust_asyncio._core", subclass, weakref)]
pub struct Handle {
    pub(crate) callback: Option<Py<PyAny>>,
    pub(crate) args: Option<Py<PyTuple>>,
    pub(crate) context: Option<Py<PyAny>>,
    pub(crate) loop_: Py<PyAny>,
    pub(crate) cancelled: bool,
    /// Readers, writers and signal handlers run more than once.
    pub(crate) repeat: bool,
    /// Where it was scheduled from, in debug mode.
    pub(crate) source_traceback: Option<Py<PyAny>>,
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
            callback: Some(callback),
            args: Some(args),
            context: Some(context),
            loop_,
            cancelled: false,
            repeat,
            source_traceback: None,
        })
    }
}

#[pymethods]
impl Handle {
    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.callback)?;
        visit.call(&self.args)?;
        visit.call(&self.context)?;
        visit.call(&self.source_traceback)?;
        visit.call(&self.loop_)
    }

    fn __clear__(&mut self) {
        self.callback = None;
        self.args = None;
        self.context = None;
        self.source_traceback = None;
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback.as_ref().map(|t| t.clone_ref(py))
    }

    /// Cancels the callback; it will not run. Idempotent.
    fn cancel(&mut self) {
        self.mark_cancelled();
    }

    fn cancelled(&self) -> bool {
        self.cancelled
    }

    fn get_context(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.context.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.callback.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.args.as_ref().map(|c| c.clone_ref(py))
    }

    #[getter]
    fn _loop(&self, py: Python<'_>) -> Py<PyAny> {
        self.loop_.clone_ref(py)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let name = slf.get_type().name()?;
        let me = slf.borrow();
        let mut s = format!("<{name}");
        if me.cancelled {
            s.push_str(" cancelled");
        }
        if let (Some(cb), Some(args)) = (&me.callback, &me.args) {
            s.push(' ');
            s.push_str(&format_callback(slf.py(), cb, args)?);
        }
        s.push('>');
        Ok(s)
    }
}

impl Handle {
    /// Cancels from Rust (a replaced or removed reader or writer).
    pub(crate) fn cancel_now(py: Python<'_>, h: &Py<Handle>) {
        if let Ok(mut h) = h.bind(py).try_borrow_mut() {
            h.mark_cancelled();
        }
    }

    fn mark_cancelled(&mut self) {
        if !self.cancelled {
            self.cancelled = true;
            self.callback = None;
            self.args = None;
        }
    }
}

/// A callback at a point in time (asyncio's `events.TimerHandle`).
#[pyclass(module = "rust_asyncio._core", extends = Handle, subclass)]
pub struct TimerHandle {
    pub(crate) when: f64,
    /// The loop's key for its Rust timer; `None` once it ran or was cancelled.
    pub(crate) key: Option<usize>,
}

#[pymethods]
impl TimerHandle {
    fn when(&self) -> f64 {
        self.when
    }

    fn cancel(mut slf: PyRefMut<'_, Self>) {
        if slf.as_super().cancelled {
            return;
        }
        slf.as_super().mark_cancelled();
        if let Some(key) = slf.key.take() {
            let py = slf.py();
            let lp = slf.as_super().loop_.clone_ref(py);
            drop(slf);
            if let Ok(core) = lp.bind(py).cast::<Core>() {
                // From another thread (not thread-safe in asyncio either)
                // the timer stays queued; marked cancelled, it will not run.
                if let Ok(core) = core.try_borrow() {
                    if core.owned_here() {
                        core.cancel_timer(key);
                    }
                }
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
        let name = slf.get_type().name()?;
        let when = slf.borrow().when;
        let me = slf.as_super().borrow();
        let mut s = format!("<{name}");
        if me.cancelled {
            s.push_str(" cancelled");
        }
        s.push_str(&format!(" when={when}"));
        if let (Some(cb), Some(args)) = (&me.callback, &me.args) {
            s.push(' ');
            s.push_str(&format_callback(slf.py(), cb, args)?);
        }
        s.push('>');
        Ok(s)
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

/// Runs the handle's callback in its context, as asyncio's `Handle._run`:
/// `SystemExit` and `KeyboardInterrupt` stop the loop and come out of
/// `run_forever`; any other exception goes to the exception handler.
pub(crate) fn run(py: Python<'_>, handle: &Bound<'_, Handle>) {
    let (cb, args, ctx, lp) = {
        let mut h = handle.borrow_mut();
        if h.cancelled {
            return;
        }
        let (cb, args) = if h.repeat {
            match (&h.callback, &h.args) {
                (Some(c), Some(a)) => (c.clone_ref(py), a.clone_ref(py)),
                _ => return,
            }
        } else {
            match (h.callback.take(), h.args.take()) {
                (Some(c), Some(a)) => {
                    // Kept for the exception handler's message.
                    h.args = Some(a.clone_ref(py));
                    (c, a)
                }
                _ => return,
            }
        };
        let ctx = h.context.as_ref().map(|c| c.clone_ref(py));
        (cb, args, ctx, h.loop_.clone_ref(py))
    };
    let result = match &ctx {
        Some(ctx) => call_in_context(py, ctx, &cb, &args),
        None => cb.bind(py).call1(args.bind(py)).map(drop),
    };
    if let Err(err) = result {
        report(py, &lp, handle, &cb, &args, err);
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
            Ok(core) => core.borrow().raise_out_of_run(err),
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
        .and_then(|_| match &handle.borrow().source_traceback {
            Some(tb) => context.set_item("source_traceback", tb),
            None => Ok(()),
        });
    let called = filled.and_then(|_| {
        lp.bind(py)
            .call_method1("call_exception_handler", (context,))
    });
    if let Err(e) = called {
        e.write_unraisable(py, Some(handle.as_any()));
    }
}
