//! `rust_asyncio._core`: the Rust half of the `rust_asyncio` Python package.
//!
//! The package (`python/rust_asyncio`) makes this project's event loop an
//! `asyncio.AbstractEventLoop`: `rust_asyncio.EventLoop` subclasses
//! `core::Core` (scheduling, running, readiness, signals, transports,
//! all in Rust) and asyncio's own Unix loop class for the orchestration
//! asyncio writes in Python (`create_connection`, `create_server`,
//! `start_tls` over `sslproto`, subprocesses over `base_subprocess`), so
//! its futures and tasks are asyncio's own C ones and every asyncio
//! library runs unchanged.

mod bridge;
mod core;
mod datagram;
mod errors;
mod front;
mod handles;
mod thread_bound;
mod transport;

use pyo3::prelude::*;

/// The backends this build can make loops of, best first.
#[pyfunction]
fn available_backends() -> Vec<&'static str> {
    core::available()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<core::Core>()?;
    m.add_class::<core::Remote>()?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    m.add_class::<transport::SocketTransport>()?;
    m.add_class::<datagram::DatagramTransport>()?;
    m.add_function(wrap_pyfunction!(available_backends, m)?)?;
    Ok(())
}
