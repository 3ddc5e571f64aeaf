//! `Core`: the Rust half of `rust_asyncio.EventLoop`.
//!
//! One of this project's loops (`BaseEventLoop` over a backend's driver)
//! with the methods asyncio's Python code calls most: scheduling, running,
//! readiness callbacks, signals, and the private hooks through which
//! asyncio's own `create_connection`, `create_server`, `sock_*` and
//! `sslproto` reach the loop's transports (`_make_socket_transport`,
//! `_add_reader`, ...). The Python class puts asyncio's orchestration on
//! top; Python and Rust callbacks share this loop's one ready queue.
//!
//! Ground rules:
//! - The interpreter lock is held while callbacks run, and released while
//!   the loop waits for the OS ([`GilRelease`]).
//! - After each wait, Python's signal handlers run (`PyErr_CheckSignals`),
//!   so Ctrl-C reaches `asyncio.Runner` while the loop is idle; an
//!   exception they raise, like `SystemExit`/`KeyboardInterrupt` from a
//!   callback, stops the loop and comes out of `run_forever`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use loop_api::base_events::{BaseLoop, PollHook};
use loop_api::events::{ExceptionContext, Loop, RemoteLoop};
use loop_api::Error;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyWeakrefReference};
use slab::Slab;

use crate::errors::{check, to_py};
use crate::handles::{self, Handle, TimerHandle};
use crate::thread_bound::ThreadBound;

/// The backends this build has, best first.
pub fn available() -> Vec<&'static str> {
    if cfg!(target_os = "linux") {
        vec!["uring", "select"]
    } else {
        vec!["select"]
    }
}

fn make_loop(name: &str) -> loop_api::Result<(Rc<dyn BaseLoop>, &'static str)> {
    match name {
        "select" => Ok((backend_select::new_event_loop()?, "select")),
        #[cfg(target_os = "linux")]
        "uring" => Ok((backend_uring::new_event_loop()?, "uring")),
        "auto" => {
            #[cfg(target_os = "linux")]
            if let Ok(lp) = backend_uring::new_event_loop() {
                return Ok((lp, "uring"));
            }
            make_loop("select")
        }
        other => Err(Error::value(format!(
            "unknown event loop backend '{other}'; this build has: {}",
            available().join(", ")
        ))),
    }
}

type Pending = Rc<RefCell<Option<PyErr>>>;

/// Runs `f` with the GIL, from code the loop runs: callbacks, steps,
/// timers, readiness, protocol methods. All of it runs inside
/// `_rs_run_forever` or `_rs_close`, Python methods, so the GIL is held
/// (it is released only around the driver's wait, where nothing of ours
/// runs); this skips pyo3's thread-local check, a `__tls_get_addr` call
/// per callback in a shared library.
#[inline]
pub(crate) fn on_loop<R>(f: impl FnOnce(Python<'_>) -> R) -> R {
    // SAFETY: see above: the thread running the loop holds the GIL
    // whenever the loop runs code of this crate.
    f(unsafe { Python::assume_attached() })
}

/// Releases the interpreter lock while the loop waits for the OS, and
/// runs Python's signal handlers after the wait.
struct GilRelease {
    pending: Pending,
    lp: Weak<dyn BaseLoop>,
}

/// The driver's wait, handed to `Python::detach`.
struct Wait<'a>(&'a mut dyn FnMut());

// SAFETY: `detach` runs the closure on this same thread (it only releases
// the GIL around it); the wait touches no Python object, and what it drops
// (a transport whose last reference was an operation in flight) drops its
// Python references with pyo3's GIL count at zero, which defers them to
// pyo3's pool until the GIL is back.
unsafe impl Send for Wait<'_> {}

impl PollHook for GilRelease {
    fn around_poll(&self, timeout: Option<Duration>, poll: &mut dyn FnMut()) {
        on_loop(|py| {
            if timeout == Some(Duration::ZERO) {
                // A poll that only looks is not worth two lock hand-overs.
                poll();
            } else {
                let wait = Wait(poll);
                py.detach(move || {
                    let wait = wait;
                    (wait.0)()
                });
            }
            // SAFETY: the GIL is held (given back by `detach`).
            if unsafe { ffi::PyErr_CheckSignals() } < 0 {
                stop_with(&self.pending, &self.lp, PyErr::fetch(py));
            }
        })
    }
}

fn stop_with(pending: &Pending, lp: &Weak<dyn BaseLoop>, err: PyErr) {
    let mut p = pending.borrow_mut();
    if p.is_none() {
        *p = Some(err);
    }
    if let Some(lp) = lp.upgrade() {
        lp.stop();
    }
}

/// The Rust half of the loop; `rust_asyncio.EventLoop` subclasses it.
#[pyclass(module = "rust_asyncio._core", subclass, frozen)]
pub struct Core {
    st: ThreadBound<CoreState>,
    backend: &'static str,
    remote: Py<Remote>,
}

/// What only the loop's thread touches.
pub struct CoreState {
    pub(crate) base: Rc<dyn BaseLoop>,
    pub(crate) lp: Loop,
    pending: Pending,
    /// The loop's timers behind Python `TimerHandle`s, by key.
    timers: RefCell<Slab<loop_api::TimerHandle>>,
    /// asyncio's debug mode, mirrored by the Python class's `set_debug`.
    debug: Cell<bool>,
    /// The Python handle watching each descriptor: replaced or removed,
    /// it is cancelled, as the selector loop does (asyncio's `sock_*`
    /// rely on it).
    readers: RefCell<HashMap<i32, Py<Handle>>>,
    writers: RefCell<HashMap<i32, Py<Handle>>>,
}

impl std::ops::Deref for Core {
    type Target = CoreState;

    fn deref(&self) -> &CoreState {
        &self.st
    }
}

impl CoreState {
    /// Stops the loop and makes `run_forever` raise `err`.
    pub(crate) fn raise_out_of_run(&self, err: PyErr) {
        stop_with(&self.pending, &Rc::downgrade(&self.base), err);
    }

    pub(crate) fn cancel_timer(&self, key: usize) {
        if let Some(t) = self.timers.borrow_mut().try_remove(key) {
            t.cancel();
        }
    }
}

impl Core {
    /// True on the loop's own thread.
    pub(crate) fn owned_here(&self) -> bool {
        self.st.on_owner_thread()
    }

    fn handle(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
        repeat: bool,
    ) -> PyResult<Handle> {
        Handle::new(
            slf.py(),
            slf.clone().into_any().unbind(),
            callback.unbind(),
            args.unbind(),
            context.map(Bound::unbind),
            repeat,
        )
    }

    /// asyncio's debug-mode checks of a scheduling call (`method`): the
    /// loop's thread, a callback that is not a coroutine; and where the
    /// call came from, for the handle.
    fn debug_checks(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
    ) -> PyResult<Option<Py<PyAny>>> {
        if !slf.get().debug.get() {
            return Ok(None);
        }
        slf.call_method0("_check_thread")?;
        slf.call_method1("_check_callback", (callback, method))?;
        handles::source_traceback(slf.py(), 0).map(Some)
    }
}

fn fd_of(obj: &Bound<'_, PyAny>) -> PyResult<i32> {
    let fd: i32 = match obj.extract::<i32>() {
        Ok(fd) => fd,
        Err(_) => obj
            .call_method0("fileno")
            .map_err(|_| PyValueError::new_err(format!("Invalid file object: {obj}")))?
            .extract()?,
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    Ok(fd)
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (backend = "auto", *_args, **_kwargs))]
    fn new(
        py: Python<'_>,
        backend: &str,
        _args: &Bound<'_, PyTuple>,
        _kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let name = backend.trim().to_ascii_lowercase();
        let (base, backend) = check(py, make_loop(&name))?;
        let lp = base.as_loop();
        crate::thread_bound::bury_own();
        let remote = Py::new(
            py,
            Remote {
                remote: lp.remote(),
            },
        )?;
        Ok(Core {
            st: ThreadBound::new(CoreState {
                base,
                lp,
                pending: Rc::new(RefCell::new(None)),
                timers: RefCell::new(Slab::new()),
                debug: Cell::new(false),
                readers: RefCell::new(HashMap::new()),
                writers: RefCell::new(HashMap::new()),
            }),
            backend,
            remote,
        })
    }

    /// The backend this loop runs on: `"select"` or `"uring"`.
    #[getter]
    fn backend(&self) -> &'static str {
        self.backend
    }

    #[getter]
    fn _rs_remote(&self, py: Python<'_>) -> Py<Remote> {
        self.remote.clone_ref(py)
    }

    fn time(&self) -> f64 {
        self.lp.time()
    }

    #[pyo3(signature = (callback, *args, context = None))]
    fn call_soon(
        slf: &Bound<'_, Self>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let tb = Self::debug_checks(slf, &callback, "call_soon")?;
        let handle = Self::handle(slf, callback, args, context, false)?;
        handle.set_source_traceback(py, tb);
        let h = Py::new(py, handle)?;
        let step = Rc::new(handles::Scheduled(h.clone_ref(py)));
        check(py, slf.get().lp.call_soon_step(step))?;
        Ok(h)
    }

    #[pyo3(signature = (delay, callback, *args, context = None))]
    fn call_later(
        slf: &Bound<'_, Self>,
        delay: f64,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let when = slf.get().lp.time() + delay;
        Self::call_at(slf, when, callback, args, context)
    }

    #[pyo3(signature = (when, callback, *args, context = None))]
    fn call_at(
        slf: &Bound<'_, Self>,
        when: f64,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        context: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let tb = Self::debug_checks(slf, &callback, "call_at")?;
        let base = Self::handle(slf, callback, args, context, false)?;
        base.set_source_traceback(py, tb);
        let init = PyClassInitializer::from(base).add_subclass(TimerHandle {
            when,
            key: handles::GilCell::new(None),
        });
        let h: Py<TimerHandle> = Py::new(py, init)?;
        let me = slf.get();
        let fire = h.clone_ref(py);
        let lp_obj = slf.clone().unbind();
        let timer = me.lp.call_at_dyn(
            when,
            Box::new(move || {
                on_loop(|py| {
                    let th = fire.bind(py);
                    if let Some(key) = th.get().key.with(py, Option::take) {
                        lp_obj.get().timers.borrow_mut().try_remove(key);
                    }
                    handles::run(py, th.as_super());
                })
            }),
            None,
        );
        let timer = check(py, timer)?;
        let key = me.timers.borrow_mut().insert(timer);
        h.get().key.with(py, |k| *k = Some(key));
        Ok(h)
    }

    /// Runs the loop until `stop()`; the Python class wraps it in asyncio's
    /// set-up and clean-up (running loop, async generator hooks).
    fn _rs_run_forever(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        crate::thread_bound::bury_own();
        let me = slf.get();
        let weak = PyWeakrefReference::new(slf)?.unbind();
        me.lp
            .set_exception_handler(Some(Rc::new(move |_lp, ctx: &ExceptionContext| {
                Python::attach(|py| {
                    if let Some(obj) = weak.bind(py).upgrade() {
                        report_rust_context(py, &obj, ctx);
                    }
                })
            })));
        me.base.set_poll_hook(Some(Rc::new(GilRelease {
            pending: me.pending.clone(),
            lp: Rc::downgrade(&me.base),
        })));
        let r = me.lp.run_forever();
        me.base.set_poll_hook(None);
        if let Some(err) = me.pending.borrow_mut().take() {
            return Err(err);
        }
        check(py, r)
    }

    fn stop(&self) {
        self.lp.stop();
    }

    fn _rs_set_debug(&self, enabled: bool) {
        self.debug.set(enabled);
    }

    fn _rs_close(&self, py: Python<'_>) -> PyResult<()> {
        self.timers.borrow_mut().clear();
        self.readers.borrow_mut().clear();
        self.writers.borrow_mut().clear();
        check(py, self.lp.close())
    }

    fn _rs_is_running(&self) -> bool {
        self.lp.is_running()
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_fd(slf, fd, callback, args, true)
    }

    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_fd(slf, fd, callback, args, false)
    }

    fn _remove_reader(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_fd(py, fd, true)
    }

    fn _remove_writer(&self, py: Python<'_>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_fd(py, fd, false)
    }

    fn _rs_add_signal_handler(
        slf: &Bound<'_, Self>,
        sig: i32,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        let py = slf.py();
        let h = Py::new(py, Self::handle(slf, callback, args, None, true)?)?;
        let r = slf.get().lp.add_signal_handler_dyn(
            sig,
            Box::new(move || on_loop(|py| handles::run(py, h.bind(py)))),
        );
        check(py, r)
    }

    /// asyncio's `_make_socket_transport`; `face` makes the Python object
    /// protocols see from the Rust transport and the loop.
    #[pyo3(signature = (sock, protocol, waiter, extra, server, face))]
    fn _rs_make_socket_transport(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        waiter: Option<Py<PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
        server: Option<Py<PyAny>>,
        face: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        crate::transport::make_socket_transport(slf, sock, protocol, waiter, extra, server, face)
    }

    /// asyncio's `_make_datagram_transport`, with the front's class.
    #[pyo3(signature = (sock, protocol, address, waiter, extra, face))]
    fn _rs_make_datagram_transport(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        address: Option<&Bound<'_, PyAny>>,
        waiter: Option<Py<PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
        face: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        crate::datagram::make_datagram_transport(slf, sock, protocol, address, waiter, extra, face)
    }

    /// asyncio's `_make_read_pipe_transport` / `_make_write_pipe_transport`.
    #[pyo3(signature = (pipe, protocol, waiter, extra, face, write))]
    fn _rs_make_pipe_transport(
        slf: &Bound<'_, Self>,
        pipe: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        waiter: Option<Py<PyAny>>,
        extra: Option<&Bound<'_, PyDict>>,
        face: &Bound<'_, PyAny>,
        write: bool,
    ) -> PyResult<Py<PyAny>> {
        crate::transport::make_pipe_transport(slf, pipe, protocol, waiter, extra, face, write)
    }

    /// The transport's zero-copy sendfile (asyncio's `_sendfile_native`),
    /// as an asyncio future of the bytes sent.
    fn _rs_sendfile_native(
        slf: &Bound<'_, Self>,
        transport: &Bound<'_, crate::transport::SocketTransport>,
        file: &Bound<'_, PyAny>,
        offset: u64,
        count: Option<u64>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let file = Rc::new(crate::transport::dup_file(file)?);
        let t = transport.borrow().inner()?;
        let Some(fut) = t._sendfile_native(file, offset, count) else {
            return Err(to_py(
                py,
                &Error::SendfileNotAvailable("the transport has no zero-copy sendfile".into()),
            ));
        };
        crate::bridge::future_to_py(slf, fut, |py, n| {
            Ok(n.into_pyobject(py)?.into_any().unbind())
        })
    }

    fn _rs_remove_signal_handler(&self, py: Python<'_>, sig: i32) -> PyResult<bool> {
        check(py, self.lp.remove_signal_handler(sig))
    }
}

impl Core {
    fn add_fd(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: Bound<'_, PyAny>,
        args: Bound<'_, PyTuple>,
        reader: bool,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let fd = fd_of(fd)?;
        let me = slf.get();
        if me.lp.is_closed() {
            return Err(PyRuntimeError::new_err("Event loop is closed"));
        }
        let h = Py::new(py, Self::handle(slf, callback, args, None, true)?)?;
        let run = h.clone_ref(py);
        let lp_obj = slf.clone().unbind();
        let cb = Box::new(move || {
            on_loop(|py| {
                if run.get().is_cancelled(py) {
                    // Cancelled through the handle: stop watching, as the
                    // selector loop does when the event comes.
                    let core = lp_obj.get();
                    let map = if reader { &core.readers } else { &core.writers };
                    let current = map.borrow().get(&fd).is_some_and(|h| h.is(&run));
                    if current {
                        map.borrow_mut().remove(&fd);
                        let _ = if reader {
                            core.base._remove_reader(fd)
                        } else {
                            core.base._remove_writer(fd)
                        };
                    }
                    return;
                }
                handles::run(py, run.bind(py))
            })
        });
        let r = if reader {
            me.base._add_reader(fd, cb)
        } else {
            me.base._add_writer(fd, cb)
        };
        check(py, r)?;
        let map = if reader { &me.readers } else { &me.writers };
        let old = map.borrow_mut().insert(fd, h.clone_ref(py));
        if let Some(old) = old {
            Handle::cancel_now(py, &old);
        }
        Ok(h)
    }

    fn remove_fd(&self, py: Python<'_>, fd: &Bound<'_, PyAny>, reader: bool) -> PyResult<bool> {
        if self.lp.is_closed() {
            return Ok(false);
        }
        let fd = fd_of(fd)?;
        let map = if reader { &self.readers } else { &self.writers };
        let old = map.borrow_mut().remove(&fd);
        if let Some(old) = old {
            Handle::cancel_now(py, &old);
        }
        let r = if reader {
            self.base._remove_reader(fd)
        } else {
            self.base._remove_writer(fd)
        };
        check(py, r)
    }
}

/// An error the Rust side of the loop reports (a transport's fatal error,
/// an exception in a protocol method), handed to the Python loop's
/// `call_exception_handler` with the exception asyncio would raise.
fn report_rust_context(py: Python<'_>, lp: &Bound<'_, PyAny>, ctx: &ExceptionContext) {
    let dict = PyDict::new(py);
    let mut r = dict.set_item("message", &ctx.message);
    if let Some(e) = &ctx.exception {
        r = r.and_then(|_| dict.set_item("exception", to_py(py, e).value(py)));
    }
    if let Some(fd) = ctx.socket {
        r = r.and_then(|_| dict.set_item("socket", fd));
    }
    let r = r.and_then(|_| lp.call_method1("call_exception_handler", (dict,)));
    if let Err(e) = r {
        e.write_unraisable(py, Some(lp));
    }
}

/// The thread-safe side of a loop: `call_soon_threadsafe` from any thread.
#[pyclass(module = "rust_asyncio._core", frozen)]
pub struct Remote {
    remote: RemoteLoop,
}

#[pymethods]
impl Remote {
    /// Schedules `callback(*args)` on the loop `lp` and wakes it.
    /// With `debug`, the handle records where the caller of the caller
    /// (the Python `call_soon_threadsafe`) was.
    #[pyo3(signature = (lp, callback, args, context = None, debug = false))]
    fn call_soon_threadsafe(
        &self,
        py: Python<'_>,
        lp: Py<PyAny>,
        callback: Py<PyAny>,
        args: Py<PyTuple>,
        context: Option<Py<PyAny>>,
        debug: bool,
    ) -> PyResult<Py<Handle>> {
        let handle = Handle::new(py, lp, callback, args, context, false)?;
        if debug {
            handle.set_source_traceback(py, Some(handles::source_traceback(py, 1)?));
        }
        let h = Py::new(py, handle)?;
        let run = h.clone_ref(py);
        let r = self
            .remote
            .call_soon_threadsafe(move || on_loop(|py| handles::run(py, run.bind(py))));
        check(py, r)?;
        Ok(h)
    }
}
