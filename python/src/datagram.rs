//! Our datagram transports with Python `DatagramProtocol`s (asyncio's
//! `loop._make_datagram_transport`, which `create_datagram_endpoint`
//! calls). The socket is shared as for stream transports (see
//! [`crate::transport`]): the Python socket is detached as the transport
//! closes the descriptor.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::rc::Rc;

use loop_api::protocols::{BaseProtocol, DatagramProtocol};
use loop_api::Error;
use pyo3::exceptions::{PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString, PyTuple};
use socket2::SockAddr;

use crate::core::Core;
use crate::errors::{check, raise_through_rust, to_py};
use crate::front::{socket_extra, Front};
use crate::thread_bound::ThreadBound;
use crate::transport::{adopt_socket, rust_waiter};

/// A datagram transport of ours, as Python sees it.
#[pyclass(module = "rust_asyncio._core", frozen, weakref)]
pub struct DatagramTransport {
    st: ThreadBound<DatagramState>,
}

/// What only the loop's thread touches.
pub struct DatagramState {
    inner: RefCell<Option<Rc<dyn loop_api::transports::DatagramTransport>>>,
    front: Front,
    family: i32,
}

impl std::ops::Deref for DatagramTransport {
    type Target = DatagramState;

    fn deref(&self) -> &DatagramState {
        &self.st
    }
}

impl DatagramTransport {
    /// The state, or `RuntimeError` on another thread (Python-facing
    /// methods go through this).
    fn state(&self) -> PyResult<&DatagramState> {
        self.st.get()
    }

    fn inner(&self) -> PyResult<Rc<dyn loop_api::transports::DatagramTransport>> {
        self.state()?
            .inner
            .borrow()
            .clone()
            .ok_or_else(|| PyRuntimeError::new_err("transport is not connected"))
    }

    fn face(&self, py: Python<'_>) -> Py<PyAny> {
        self.front.face(py)
    }
}

/// A Python address for `family` as a socket address.
fn sockaddr_of(family: i32, addr: &Bound<'_, PyAny>) -> PyResult<SockAddr> {
    let py = addr.py();
    if family == libc::AF_UNIX {
        let path: std::path::PathBuf = if let Ok(b) = addr.cast::<PyBytes>() {
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b.as_bytes()).into()
        } else {
            addr.extract::<String>()?.into()
        };
        return SockAddr::unix(path).map_err(PyErr::from);
    }
    let t = addr
        .cast::<PyTuple>()
        .map_err(|_| PyTypeError::new_err(format!("address must be a tuple, not {addr}")))?;
    let host: String = t.get_item(0)?.extract()?;
    let port: u16 = t.get_item(1)?.extract()?;
    if let Ok(ip) = host.parse::<IpAddr>() {
        let sa = match ip {
            IpAddr::V6(v6) => {
                let flow: u32 = t.get_item(2).and_then(|f| f.extract()).unwrap_or(0);
                let scope: u32 = t.get_item(3).and_then(|f| f.extract()).unwrap_or(0);
                SocketAddr::V6(SocketAddrV6::new(v6, port, flow, scope))
            }
            v4 => SocketAddr::new(v4, port),
        };
        return Ok(sa.into());
    }
    // A name: resolved as the socket module would, blocking.
    let infos = py
        .import("socket")?
        .call_method1("getaddrinfo", (host, port, family, libc::SOCK_DGRAM))?;
    let first = infos.get_item(0)?;
    sockaddr_of(family, &first.get_item(4)?)
}

/// A socket address as Python gives it: `(host, port)`, `(host, port,
/// flowinfo, scope_id)`, or a Unix path.
fn py_addr<'py>(py: Python<'py>, addr: &SockAddr) -> PyResult<Bound<'py, PyAny>> {
    if let Some(sa) = addr.as_socket() {
        return Ok(match sa {
            SocketAddr::V4(v4) => (v4.ip().to_string(), v4.port())
                .into_pyobject(py)?
                .into_any(),
            SocketAddr::V6(v6) => (v6.ip().to_string(), v6.port(), v6.flowinfo(), v6.scope_id())
                .into_pyobject(py)?
                .into_any(),
        });
    }
    if let Some(path) = addr.as_pathname() {
        return Ok(PyString::new(py, &path.to_string_lossy()).into_any());
    }
    if let Some(name) = addr.as_abstract_namespace() {
        let mut v = vec![0u8];
        v.extend_from_slice(name);
        return Ok(PyBytes::new(py, &v).into_any());
    }
    Ok(PyString::new(py, "").into_any())
}

#[pymethods]
impl DatagramTransport {
    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        match self.st.try_get() {
            Some(st) => st.front.traverse(&visit, &[]),
            None => Ok(()),
        }
    }

    fn __clear__(&self) {
        if let Some(st) = self.st.try_get() {
            st.front.clear(&[]);
        }
    }

    #[pyo3(signature = (data, addr = None))]
    fn sendto(&self, data: &Bound<'_, PyAny>, addr: Option<&Bound<'_, PyAny>>) -> PyResult<()> {
        let py = data.py();
        let bytes = crate::transport::bytes_like(data)?;
        let addr = match addr {
            Some(a) if !a.is_none() => Some(sockaddr_of(self.state()?.family, a)?),
            _ => None,
        };
        check(py, self.inner()?.sendto(&bytes, addr))
    }

    fn close(&self) -> PyResult<()> {
        if let Some(t) = self.state()?.inner.borrow().clone() {
            t.close();
        }
        Ok(())
    }

    fn abort(&self) -> PyResult<()> {
        if let Some(t) = self.state()?.inner.borrow().clone() {
            t.abort();
        }
        Ok(())
    }

    fn is_closing(&self) -> PyResult<bool> {
        let st = self.state()?;
        let closing = st.inner.borrow().as_ref().is_none_or(|t| t.is_closing());
        Ok(closing)
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

    fn get_protocol(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(self.state()?.front.protocol(py))
    }

    fn set_protocol(slf: &Bound<'_, Self>, protocol: Bound<'_, PyAny>) -> PyResult<()> {
        let adapter = PyDatagramProtocol {
            protocol: protocol.clone().unbind(),
            transport: RefCell::new(Some(slf.clone().unbind())),
        };
        let me = slf.get().state()?;
        *me.front.protocol.borrow_mut() = Some(protocol.unbind());
        if let Some(t) = me.inner.borrow().as_ref() {
            t.set_protocol(Rc::new(adapter));
        }
        Ok(())
    }

    fn __repr__(&self) -> PyResult<String> {
        let state = if self.is_closing()? {
            "closing"
        } else {
            "open"
        };
        Ok(format!("<rust_asyncio.DatagramTransport {state}>"))
    }
}

/// A Python datagram protocol called from a Rust transport.
struct PyDatagramProtocol {
    protocol: Py<PyAny>,
    transport: RefCell<Option<Py<DatagramTransport>>>,
}

impl PyDatagramProtocol {
    fn call(
        &self,
        name: &str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>>,
    ) {
        crate::core::on_loop(|py| {
            let r = args(py).and_then(|a| self.protocol.bind(py).call_method1(name, a));
            if let Err(e) = r {
                raise_through_rust(e);
            }
        })
    }
}

impl BaseProtocol for PyDatagramProtocol {
    fn connection_lost(&self, exc: Option<Error>) {
        crate::front::connection_lost(&self.protocol, exc, |py| {
            if let Some(t) = self.transport.borrow_mut().take() {
                t.get().front.let_go(py, false);
            }
        })
    }

    fn pause_writing(&self) {
        self.call("pause_writing", |py| Ok(PyTuple::empty(py)))
    }

    fn resume_writing(&self) {
        self.call("resume_writing", |py| Ok(PyTuple::empty(py)))
    }
}

impl DatagramProtocol for PyDatagramProtocol {
    fn connection_made(&self, _transport: Rc<dyn loop_api::transports::DatagramTransport>) {
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

    fn datagram_received(&self, data: &[u8], addr: &SockAddr) {
        self.call("datagram_received", |py| {
            PyTuple::new(py, [PyBytes::new(py, data).into_any(), py_addr(py, addr)?])
        })
    }

    fn error_received(&self, exc: Error) {
        self.call("error_received", |py| {
            PyTuple::new(
                py,
                [to_py(py, &exc).into_value(py).into_any().into_bound(py)],
            )
        })
    }
}

/// `loop._make_datagram_transport(sock, protocol, address, waiter, extra)`.
pub(crate) fn make_datagram_transport(
    lp: &Bound<'_, Core>,
    sock: &Bound<'_, PyAny>,
    protocol: &Bound<'_, PyAny>,
    address: Option<&Bound<'_, PyAny>>,
    waiter: Option<Py<PyAny>>,
    extra: Option<&Bound<'_, PyDict>>,
    face: &Bound<'_, PyAny>,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let family: i32 = sock.getattr("family")?.extract()?;
    let info = socket_extra(sock, extra)?;
    let address = match address {
        Some(a) if !a.is_none() => Some(sockaddr_of(family, a)?),
        _ => None,
    };
    let obj = Py::new(
        py,
        DatagramTransport {
            st: ThreadBound::new(DatagramState {
                inner: RefCell::new(None),
                front: Front::new(info, protocol, sock),
                family,
            }),
        },
    )?;
    let bound = obj.bind(py);
    let face = face.call1((bound, lp))?.unbind();
    *bound.get().front.face.borrow_mut() = Some(face.clone_ref(py));
    let adapter = Rc::new(PyDatagramProtocol {
        protocol: protocol.clone().unbind(),
        transport: RefCell::new(Some(obj.clone_ref(py))),
    });
    let core = lp.get();
    let waiter = rust_waiter(core, waiter);
    let t = adopt_socket(sock, |rsock| {
        core.base
            ._make_datagram_transport(rsock, adapter, address, waiter)
    })?;
    *bound.get().inner.borrow_mut() = Some(t);
    Ok(face)
}
