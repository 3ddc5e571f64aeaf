//! Our stream transports with Python protocols.
//!
//! asyncio's `create_connection`, `create_server`, `start_tls` and the
//! streams API run as asyncio wrote them; where they make a transport
//! (`loop._make_socket_transport(sock, protocol, waiter)`), the transport
//! is this project's (select or uring), and the Python protocol is called
//! from it through [`PyProtocol`]: `data_received` with `bytes`, or a
//! `BufferedProtocol`'s `get_buffer`/`buffer_updated`.
//!
//! The socket: the transport uses the Python socket's descriptor and
//! closes it; the Python socket object (the `socket` extra, as asyncio
//! gives it) is detached just before, so it never closes a number that
//! may already be reused.

use std::cell::RefCell;
use std::os::fd::{BorrowedFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use loop_api::protocols::{BaseProtocol, BufferedProtocol, Protocol};
use loop_api::transports::Transport;
use loop_api::{Error, Future};
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use socket2::Socket;

use crate::core::Core;
use crate::errors::{check, from_py, raise_through_rust, to_py};
use crate::front::{socket_extra, Front};
use crate::thread_bound::ThreadBound;

/// An asyncio class, looked up once.
pub(crate) fn asyncio_attr<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
) -> PyResult<&'py Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || py.import(module)?.getattr(name).map(Bound::unbind))
        .map(|o| o.bind(py))
}

/// A Python file or socket object's descriptor.
fn fd_of_file(obj: &Bound<'_, PyAny>) -> PyResult<i32> {
    let fd: i32 = obj.call_method0("fileno")?.extract()?;
    if fd < 0 {
        return Err(PyErr::from(std::io::Error::from_raw_os_error(libc::EBADF)));
    }
    Ok(fd)
}

/// A close-on-exec duplicate of a Python file object's descriptor, ours to
/// own and close (a pipe transport's, a sendfile's).
pub(crate) fn dup_file(obj: &Bound<'_, PyAny>) -> PyResult<std::fs::File> {
    let fd = fd_of_file(obj)?;
    // SAFETY: `fd` is the open descriptor of a live Python object, borrowed
    // only for the duplication.
    let owned = unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?;
    Ok(owned.into())
}

/// Hands the Python socket's descriptor to `make` (a Rust transport's
/// constructor), which takes it over: the Python socket stays the `socket`
/// extra and is detached just before the transport closes the descriptor
/// ([`Front::let_go`]). If `make` fails, the descriptor goes back to the
/// Python socket untouched.
pub(crate) fn adopt_socket<T>(
    sock: &Bound<'_, PyAny>,
    make: impl FnOnce(Rc<Socket>) -> loop_api::Result<T>,
) -> PyResult<T> {
    let fd = fd_of_file(sock)?;
    // SAFETY: `fd` is the open descriptor of a live Python socket; the
    // transport made from it owns it from now on (see above), and if none
    // is made, `into_raw_fd` gives it back unclosed.
    let rsock = Rc::new(unsafe { Socket::from_raw_fd(fd) });
    make(rsock.clone()).map_err(|e| {
        if let Ok(s) = Rc::try_unwrap(rsock) {
            let _ = s.into_raw_fd();
        }
        to_py(sock.py(), &e)
    })
}

/// Forwards a Rust waiter's outcome to asyncio's waiter future.
pub(crate) fn rust_waiter(lp: &Core, waiter: Option<Py<PyAny>>) -> Option<Future<()>> {
    let waiter = waiter?;
    let fut = Future::new(lp.lp.clone());
    fut.add_done_callback(
        move |f: &Future<()>| {
            crate::core::on_loop(|py| {
                let w = waiter.bind(py);
                if w.call_method0("cancelled")
                    .and_then(|c| c.is_truthy())
                    .unwrap_or(true)
                {
                    return;
                }
                let r = match f.result() {
                    Ok(()) => w.call_method1("set_result", (py.None(),)),
                    Err(e) => w.call_method1("set_exception", (to_py(py, &e).value(py),)),
                };
                if let Err(e) = r {
                    e.write_unraisable(py, Some(w));
                }
            })
        },
        None,
    );
    Some(fut)
}

/// A stream transport of ours, as Python sees it (asyncio's
/// `transports.Transport` interface).
#[pyclass(module = "rust_asyncio._core", frozen, weakref)]
pub struct SocketTransport {
    st: ThreadBound<TransportState>,
    /// Set once the connection is lost: then `is_closing`, `close` and
    /// `abort` answer from any thread (a finalizer the GC runs on another
    /// thread, such as `StreamWriter.__del__`, asks `is_closing`).
    lost: AtomicBool,
}

/// What only the loop's thread touches.
pub struct TransportState {
    inner: RefCell<Option<Rc<dyn Transport>>>,
    front: Front,
    server: RefCell<Option<Py<PyAny>>>,
    /// Between the protocol's `pause_writing` and `resume_writing`
    /// (asyncio's `_protocol_paused`, which its sendfile fallback reads).
    protocol_paused: std::cell::Cell<bool>,
    /// A pipe transport: the Python pipe object is closed with it (the
    /// transport closes a duplicate of its descriptor), as asyncio's pipe
    /// transports close their pipe.
    pipe: bool,
}

impl std::ops::Deref for SocketTransport {
    type Target = TransportState;

    fn deref(&self) -> &TransportState {
        &self.st
    }
}

impl SocketTransport {
    pub(crate) fn face(&self, py: Python<'_>) -> Py<PyAny> {
        self.front.face(py)
    }

    /// The object and its front (made by `face(obj, lp)`), not connected
    /// to a Rust transport yet.
    fn create(
        lp: &Bound<'_, Core>,
        info: Bound<'_, PyDict>,
        protocol: &Bound<'_, PyAny>,
        file: &Bound<'_, PyAny>,
        server: Option<&Py<PyAny>>,
        face: &Bound<'_, PyAny>,
        pipe: bool,
    ) -> PyResult<(Py<SocketTransport>, Py<PyAny>)> {
        let py = lp.py();
        let obj = Py::new(
            py,
            SocketTransport {
                lost: AtomicBool::new(false),
                st: ThreadBound::new(TransportState {
                    inner: RefCell::new(None),
                    front: Front::new(info, protocol, file),
                    server: RefCell::new(server.map(|s| s.clone_ref(py))),
                    protocol_paused: std::cell::Cell::new(false),
                    pipe,
                }),
            },
        )?;
        let face = face.call1((&obj, lp))?.unbind();
        *obj.get().front.face.borrow_mut() = Some(face.clone_ref(py));
        Ok((obj, face))
    }

    /// The state, or `RuntimeError` on another thread (Python-facing
    /// methods go through this).
    fn state(&self) -> PyResult<&TransportState> {
        self.st.get()
    }

    pub(crate) fn inner(&self) -> PyResult<Rc<dyn Transport>> {
        self.state()?
            .inner
            .borrow()
            .clone()
            .ok_or_else(|| PyRuntimeError::new_err("transport is not connected"))
    }

    /// Called by the protocol adapter as the connection is lost: the
    /// Python socket lets go of the descriptor the transport is closing,
    /// and a server learns one connection fewer.
    fn lost(slf: &Bound<'_, Self>) {
        let py = slf.py();
        let me = slf.get();
        me.lost.store(true, Ordering::Release);
        let face = me.front.let_go(py, me.pipe);
        let server = me.server.borrow_mut().take();
        if let Some(server) = server {
            if let Err(e) = server.bind(py).call_method1("_detach", (face,)) {
                e.write_unraisable(py, Some(server.bind(py)));
            }
        }
    }
}

pub(crate) fn bytes_like(data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    if let Ok(b) = data.cast::<PyBytes>() {
        return Ok(b.as_bytes().to_vec());
    }
    if let Ok(b) = data.cast::<PyByteArray>() {
        return Ok(b.to_vec());
    }
    if data.cast::<PyMemoryView>().is_ok() {
        return Ok(data
            .call_method0("tobytes")?
            .cast::<PyBytes>()?
            .as_bytes()
            .to_vec());
    }
    Err(PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not '{}'",
        data.get_type().name()?
    )))
}

#[pymethods]
impl SocketTransport {
    // The garbage collector sees what this object holds, so a cycle
    // through it (transport -> protocol -> transport) is collected.
    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        match self.st.try_get() {
            Some(st) => st.front.traverse(&visit, &[&st.server]),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        if let Some(st) = self.st.try_get() {
            st.front.clear(&[&st.server]);
        }
    }

    #[classattr]
    fn _start_tls_compatible() -> bool {
        true
    }

    #[classattr]
    fn _sendfile_compatible(py: Python<'_>) -> PyResult<Py<PyAny>> {
        static MODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let m = asyncio_attr(py, &MODE, "asyncio.constants", "_SendfileMode")?;
        Ok(m.getattr("TRY_NATIVE")?.unbind())
    }

    fn write(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = data.py();
        if let Ok(b) = data.cast::<PyBytes>() {
            return check(py, self.inner()?.write(b.as_bytes()));
        }
        let v = bytes_like(data)?;
        check(py, self.inner()?.write(&v))
    }

    fn writelines(&self, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = list_of_data.py();
        let mut parts = Vec::new();
        for item in list_of_data.try_iter()? {
            parts.push(bytes_like(&item?)?);
        }
        let slices: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        check(py, self.inner()?.writelines(&slices))
    }

    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        check(py, self.inner()?.write_eof())
    }

    fn can_write_eof(&self) -> PyResult<bool> {
        Ok(self.inner()?.can_write_eof())
    }

    fn close(&self) -> PyResult<()> {
        if self.lost.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(t) = self.state()?.inner.borrow().clone() {
            t.close();
        }
        Ok(())
    }

    fn abort(&self) -> PyResult<()> {
        if self.lost.load(Ordering::Acquire) {
            return Ok(());
        }
        if let Some(t) = self.state()?.inner.borrow().clone() {
            t.abort();
        }
        Ok(())
    }

    fn is_closing(&self) -> PyResult<bool> {
        if self.lost.load(Ordering::Acquire) {
            return Ok(true);
        }
        let st = self.state()?;
        let closing = st.inner.borrow().as_ref().is_none_or(|t| t.is_closing());
        Ok(closing)
    }

    fn is_reading(&self) -> PyResult<bool> {
        let st = self.state()?;
        let reading = st.inner.borrow().as_ref().is_some_and(|t| t.is_reading());
        Ok(reading)
    }

    fn pause_reading(&self) -> PyResult<()> {
        self.inner()?.pause_reading();
        Ok(())
    }

    fn resume_reading(&self) -> PyResult<()> {
        self.inner()?.resume_reading();
        Ok(())
    }

    #[pyo3(signature = (high = None, low = None))]
    fn set_write_buffer_limits(
        &self,
        py: Python<'_>,
        high: Option<usize>,
        low: Option<usize>,
    ) -> PyResult<()> {
        check(py, self.inner()?.set_write_buffer_limits(high, low))
    }

    fn get_write_buffer_limits(&self) -> PyResult<(usize, usize)> {
        let (high, low) = self.inner()?.get_write_buffer_limits();
        Ok((low, high))
    }

    fn get_write_buffer_size(&self) -> PyResult<usize> {
        let st = self.state()?;
        let size = st
            .inner
            .borrow()
            .as_ref()
            .map_or(0, |t| t.get_write_buffer_size());
        Ok(size)
    }

    #[pyo3(signature = (name, default = None))]
    fn get_extra_info(
        &self,
        py: Python<'_>,
        name: &str,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.state()?.front.extra_info(py, name, default)
    }

    #[pyo3(signature = (exc = None))]
    fn _force_close(&self, exc: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let exc = exc
            .filter(|e| !e.is_none())
            .map(|e| from_py(PyErr::from_value(e)));
        if let Some(t) = self.state()?.inner.borrow().clone() {
            t._force_close(exc);
        }
        Ok(())
    }

    #[getter]
    fn _protocol_paused(&self) -> PyResult<bool> {
        Ok(self.state()?.protocol_paused.get())
    }

    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.state()?.front.protocol(py))
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        let st = slf.get().state()?;
        let adapter = PyProtocol::new(slf, &protocol)?;
        *st.front.protocol.borrow_mut() = Some(protocol.unbind());
        if let Some(t) = st.inner.borrow().as_ref() {
            t.set_protocol(Rc::new(adapter));
        }
        Ok(())
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let state = if self.is_closing()? {
            "closing"
        } else {
            "open"
        };
        let fd = self
            .state()?
            .front
            .file
            .borrow()
            .as_ref()
            .and_then(|s| s.bind(py).call_method0("fileno").ok())
            .and_then(|f| f.extract::<i64>().ok())
            .unwrap_or(-1);
        Ok(format!("<rust_asyncio.SocketTransport fd={fd} {state}>"))
    }
}

/// A Python protocol called from a Rust transport.
pub(crate) struct PyProtocol {
    protocol: Py<PyAny>,
    transport: RefCell<Option<Py<SocketTransport>>>,
    buffered: bool,
    /// The buffer the last `get_buffer` returned, until `buffer_updated`.
    lent: RefCell<Option<Py<PyAny>>>,
}

impl PyProtocol {
    fn new(transport: &Bound<'_, SocketTransport>, protocol: &Bound<'_, PyAny>) -> PyResult<Self> {
        static BUFFERED: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
        let py = protocol.py();
        let cls = asyncio_attr(py, &BUFFERED, "asyncio", "BufferedProtocol")?;
        Ok(PyProtocol {
            protocol: protocol.clone().unbind(),
            transport: RefCell::new(Some(transport.clone().unbind())),
            buffered: protocol.is_instance(cls)?,
            lent: RefCell::new(None),
        })
    }

    fn set_paused(&self, paused: bool) {
        crate::core::on_loop(|py| {
            if let Some(t) = self.transport.borrow().as_ref() {
                t.borrow(py).protocol_paused.set(paused);
            }
        })
    }

    fn call0(&self, name: &str) {
        crate::core::on_loop(|py| {
            if let Err(e) = self.protocol.bind(py).call_method0(name) {
                raise_through_rust(e);
            }
        })
    }
}

impl BaseProtocol for PyProtocol {
    fn connection_lost(&self, exc: Option<Error>) {
        crate::front::connection_lost(&self.protocol, exc, |py| {
            if let Some(t) = self.transport.borrow_mut().take() {
                SocketTransport::lost(t.bind(py));
            }
        })
    }

    fn pause_writing(&self) {
        self.set_paused(true);
        self.call0("pause_writing")
    }

    fn resume_writing(&self) {
        self.set_paused(false);
        self.call0("resume_writing")
    }
}

impl Protocol for PyProtocol {
    fn connection_made(&self, _transport: Rc<dyn Transport>) {
        crate::core::on_loop(|py| {
            let Some(face) = self
                .transport
                .borrow()
                .as_ref()
                .map(|t| t.borrow(py).face(py))
            else {
                return;
            };
            if let Err(e) = self
                .protocol
                .bind(py)
                .call_method1("connection_made", (face,))
            {
                raise_through_rust(e);
            }
        })
    }

    fn data_received(&self, data: &[u8]) {
        crate::core::on_loop(|py| {
            let bytes = PyBytes::new(py, data);
            if let Err(e) = self
                .protocol
                .bind(py)
                .call_method1("data_received", (bytes,))
            {
                raise_through_rust(e);
            }
        })
    }

    fn eof_received(&self) -> bool {
        crate::core::on_loop(
            |py| match self.protocol.bind(py).call_method0("eof_received") {
                Ok(r) => r.is_truthy().unwrap_or(false),
                Err(e) => raise_through_rust(e),
            },
        )
    }

    fn as_buffered(&self) -> Option<&dyn BufferedProtocol> {
        if self.buffered {
            Some(self)
        } else {
            None
        }
    }
}

impl BufferedProtocol for PyProtocol {
    /// The Python protocol's buffer, as a Rust buffer of the same length
    /// for the transport to fill; `buffer_updated` copies it over.
    fn get_buffer(&self, sizehint: usize) -> Result<Vec<u8>, Error> {
        crate::core::on_loop(|py| {
            let buf = self
                .protocol
                .bind(py)
                .call_method1("get_buffer", (sizehint,))
                .map_err(from_py)?;
            let len = buf.len().map_err(from_py)?;
            if len == 0 {
                return Err(Error::runtime("get_buffer() returned an empty buffer"));
            }
            *self.lent.borrow_mut() = Some(buf.unbind());
            Ok(vec![0; len])
        })
    }

    fn buffer_updated(&self, buf: Vec<u8>, nbytes: usize) -> Result<(), Error> {
        crate::core::on_loop(|py| {
            let lent = self.lent.borrow_mut().take();
            if let Some(target) = lent {
                let target = target.bind(py);
                let view = PyMemoryView::from(target).map_err(from_py)?;
                let src = PyBytes::new(py, &buf[..nbytes]);
                view.set_item(pyo3::types::PySlice::new(py, 0, nbytes as isize, 1), src)
                    .map_err(from_py)?;
            }
            self.protocol
                .bind(py)
                .call_method1("buffer_updated", (nbytes,))
                .map(drop)
                .map_err(from_py)
        })
    }

    fn eof_received(&self) -> bool {
        Protocol::eof_received(self)
    }
}

/// `loop._make_socket_transport(sock, protocol, waiter, extra, server)`.
pub(crate) fn make_socket_transport(
    lp: &Bound<'_, Core>,
    sock: &Bound<'_, PyAny>,
    protocol: &Bound<'_, PyAny>,
    waiter: Option<Py<PyAny>>,
    extra: Option<&Bound<'_, PyDict>>,
    server: Option<Py<PyAny>>,
    face: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let info = socket_extra(sock, extra)?;
    let (obj, face) =
        SocketTransport::create(lp, info, protocol, sock, server.as_ref(), face, false)?;
    let bound = obj.bind(py);
    let adapter = Rc::new(PyProtocol::new(bound, protocol)?);
    let core = lp.get();
    let waiter = rust_waiter(core, waiter);
    let t = adopt_socket(sock, |rsock| {
        core.base
            ._make_socket_transport(rsock, adapter, waiter, None)
    })?;
    *bound.get().inner.borrow_mut() = Some(t);
    if let Some(server) = server {
        server.bind(py).call_method1("_attach", (&face,))?;
    }
    Ok(face)
}

/// `loop._make_read_pipe_transport` / `_make_write_pipe_transport`: our
/// pipe transport over a duplicate of the pipe's descriptor.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_pipe_transport(
    lp: &Bound<'_, Core>,
    pipe: &Bound<'_, PyAny>,
    protocol: &Bound<'_, PyAny>,
    waiter: Option<Py<PyAny>>,
    extra: Option<&Bound<'_, PyDict>>,
    face: &Bound<'_, PyAny>,
    write: bool,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let file = dup_file(pipe)?;
    let info = PyDict::new(py);
    if let Some(extra) = extra {
        info.update(extra.as_mapping())?;
    }
    info.set_item("pipe", pipe)?;
    let (obj, face) = SocketTransport::create(lp, info, protocol, pipe, None, face, true)?;
    let bound = obj.bind(py);
    let adapter = Rc::new(PyProtocol::new(bound, protocol)?);
    let core = lp.get();
    let waiter = rust_waiter(core, waiter);
    let made = if write {
        core.base._make_write_pipe_transport(file, adapter, waiter)
    } else {
        core.base._make_read_pipe_transport(file, adapter, waiter)
    };
    let t = check(py, made)?;
    *bound.borrow().inner.borrow_mut() = Some(t);
    Ok(face)
}
