//! The whole conformance suite on the io_uring backend.
#![cfg(target_os = "linux")]

mod expected;

conformance::suite!(backend_uring::loop_factory, expected::capabilities());
