//! Errors across the boundary: a Rust [`Error`] becomes the Python
//! exception asyncio raises for it, and a Python exception travels through
//! Rust code as `Error::Other` holding the `PyErr` itself, so it comes out
//! on the Python side as the very object that was raised.

use std::io;
use std::sync::Arc;

use loop_api::Error;
use pyo3::exceptions::{
    PyException, PyKeyboardInterrupt, PyNotImplementedError, PyOSError, PyRuntimeError,
    PyTimeoutError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// A Python exception as a Rust error.
pub fn from_py(err: PyErr) -> Error {
    Error::Other(Arc::new(err))
}

/// The Python exception asyncio raises for `err`.
pub fn to_py(py: Python<'_>, err: &Error) -> PyErr {
    match err {
        Error::Other(inner) => match inner.downcast_ref::<PyErr>() {
            Some(e) => e.clone_ref(py),
            None => PyException::new_err(inner.to_string()),
        },
        Error::Cancelled(msg) => asyncio_error(py, "CancelledError", msg.clone()),
        Error::InvalidState(msg) => asyncio_error(py, "InvalidStateError", Some(msg.clone())),
        Error::Timeout => PyTimeoutError::new_err(()),
        Error::Runtime(msg) => PyRuntimeError::new_err(msg.clone()),
        Error::Value(msg) => PyValueError::new_err(msg.clone()),
        Error::Type(msg) => PyTypeError::new_err(msg.clone()),
        Error::NotImplemented(what) => PyNotImplementedError::new_err(*what),
        Error::NotSupported { feature, reason } => {
            PyNotImplementedError::new_err(format!("{feature}: {reason}"))
        }
        Error::Io(e) => {
            let copy = match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            };
            PyErr::from(copy)
        }
        Error::KeyboardInterrupt => PyKeyboardInterrupt::new_err(()),
        Error::SendfileNotAvailable(msg) => {
            asyncio_error(py, "SendfileNotAvailableError", Some(msg.clone()))
        }
        Error::Panic(msg) => PyRuntimeError::new_err(format!("panic in Rust code: {msg}")),
        other => match other.raw_os_error() {
            Some(code) => PyOSError::new_err((code, other.to_string())),
            None => PyException::new_err(other.to_string()),
        },
    }
}

/// `asyncio.<name>(msg)`.
fn asyncio_error(py: Python<'_>, name: &str, msg: Option<String>) -> PyErr {
    let made = py
        .import("asyncio")
        .and_then(|m| m.getattr(name))
        .and_then(|cls| match msg {
            Some(m) => cls.call1((m,)),
            None => cls.call1(PyTuple::empty(py)),
        });
    match made {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// Turns a loop result into a Python one.
pub fn check<T>(py: Python<'_>, r: loop_api::Result<T>) -> PyResult<T> {
    r.map_err(|e| to_py(py, &e))
}

/// Reports a Python exception raised inside a Rust callback that has no
/// `Result` to return (a protocol method): unwinds with the error as the
/// payload, which the transport catches and turns back into this error
/// (`Error::from_panic`), so it reaches the exception handler as raised.
pub fn raise_through_rust(err: PyErr) -> ! {
    std::panic::resume_unwind(Box::new(from_py(err)))
}
