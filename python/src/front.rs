//! What every transport object of ours keeps for Python: the `extra`
//! mapping, the protocol, the Python socket or pipe object, and the front
//! (the `asyncio.Transport` subclass instance protocols see), with what
//! their lifecycle shares: the GC's view, `get_extra_info`, and letting go
//! at `connection_lost`.

use std::cell::RefCell;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

use crate::transport::asyncio_attr;

pub(crate) struct Front {
    extra: Py<PyDict>,
    pub(crate) protocol: RefCell<Option<Py<PyAny>>>,
    /// The Python socket or pipe object the transport's descriptor is of.
    pub(crate) file: RefCell<Option<Py<PyAny>>>,
    /// What protocols, servers and `loop._transports` see: the package's
    /// `asyncio` transport subclass whose methods are this object's.
    pub(crate) face: RefCell<Option<Py<PyAny>>>,
}

impl Front {
    pub(crate) fn new(
        extra: Bound<'_, PyDict>,
        protocol: &Bound<'_, PyAny>,
        file: &Bound<'_, PyAny>,
    ) -> Self {
        Front {
            extra: extra.unbind(),
            protocol: RefCell::new(Some(protocol.clone().unbind())),
            file: RefCell::new(Some(file.clone().unbind())),
            face: RefCell::new(None),
        }
    }

    pub(crate) fn face(&self, py: Python<'_>) -> Py<PyAny> {
        self.face
            .borrow()
            .as_ref()
            .map(|f| f.clone_ref(py))
            .unwrap_or_else(|| py.None())
    }

    pub(crate) fn extra_info(
        &self,
        py: Python<'_>,
        name: &str,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        if let Some(v) = self.extra.bind(py).get_item(name)? {
            return Ok(v.unbind());
        }
        Ok(default.unwrap_or_else(|| py.None()))
    }

    pub(crate) fn protocol(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.protocol.borrow().as_ref().map(|p| p.clone_ref(py))
    }

    /// The cells the GC sees and clears, `more` included.
    pub(crate) fn traverse(
        &self,
        visit: &pyo3::PyVisit<'_>,
        more: &[&RefCell<Option<Py<PyAny>>>],
    ) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.extra)?;
        for cell in [&self.protocol, &self.file, &self.face]
            .into_iter()
            .chain(more.iter().copied())
        {
            if let Ok(obj) = cell.try_borrow() {
                if let Some(obj) = obj.as_ref() {
                    visit.call(obj)?;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn clear(&self, more: &[&RefCell<Option<Py<PyAny>>>]) {
        for cell in [&self.protocol, &self.face, &self.file]
            .into_iter()
            .chain(more.iter().copied())
        {
            if let Ok(mut obj) = cell.try_borrow_mut() {
                obj.take();
            }
        }
    }

    /// At `connection_lost`: the Python socket is detached (the transport
    /// closes the descriptor) or the pipe object closed (the transport
    /// closed a duplicate), and what asyncio's `_call_connection_lost`
    /// lets go of goes: the protocol, and the front, which refers back to
    /// the transport object. Returns the front, for the server's `_detach`.
    pub(crate) fn let_go(&self, py: Python<'_>, close_file: bool) -> Py<PyAny> {
        if let Some(file) = self.file.borrow_mut().take() {
            let how = if close_file { "close" } else { "detach" };
            let _ = file.bind(py).call_method0(how);
        }
        let face = self.face(py);
        self.protocol.borrow_mut().take();
        self.face.borrow_mut().take();
        face
    }
}

/// asyncio's extra information of a socket transport: the caller's
/// `extra`, then `socket` (a `TransportSocket`), `sockname`, `peername`.
pub(crate) fn socket_extra<'py>(
    sock: &Bound<'py, PyAny>,
    extra: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    static TRSOCK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = sock.py();
    let info = PyDict::new(py);
    if let Some(extra) = extra {
        info.update(extra.as_mapping())?;
    }
    let wrap = asyncio_attr(py, &TRSOCK, "asyncio.trsock", "TransportSocket")?;
    info.set_item("socket", wrap.call1((sock,))?)?;
    if let Ok(name) = sock.call_method0("getsockname") {
        info.set_item("sockname", name)?;
    }
    if !info.contains("peername")? {
        if let Ok(name) = sock.call_method0("getpeername") {
            info.set_item("peername", name)?;
        }
    }
    Ok(info)
}

/// A protocol's `connection_lost(exc)`; then `after` (the transport object
/// lets go: it runs before the transport closes the descriptor); then an
/// exception the protocol raised goes on to the transport.
pub(crate) fn connection_lost(
    protocol: &Py<PyAny>,
    exc: Option<loop_api::Error>,
    after: impl FnOnce(Python<'_>),
) {
    crate::core::on_loop(|py| {
        let exc = match exc {
            Some(e) => crate::errors::to_py(py, &e).into_value(py).into_any(),
            None => py.None(),
        };
        let called = protocol.bind(py).call_method1("connection_lost", (exc,));
        after(py);
        if let Err(e) = called {
            crate::errors::raise_through_rust(e);
        }
    })
}
