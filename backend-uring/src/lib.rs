//! The io_uring backend (Linux): asyncio's proactor model on io_uring.
//!
//! Socket I/O is completion-based: stream transports receive with one
//! multishot request into a provided-buffer ring and send with vectored
//! `sendmsg` requests; servers accept with multishot accepts; `sock_recv`,
//! `sock_sendall`, `sock_connect` and `sock_accept` are single requests.
//! Every buffer, iovec and address a request points into is owned by the
//! driver until the request's completion arrives (see `ops`), cancelled
//! requests included, and closing the loop cancels and drains what is in
//! flight without ever freeing memory the kernel still holds.
//!
//! Readiness (`add_reader`, `add_writer`, and through them datagram
//! transports, pipes, signals and `sock_recvfrom`/`sock_sendto`) is a
//! one-shot `IORING_OP_POLL_ADD` per watched descriptor, re-armed on each
//! iteration. A fresh poll on a descriptor that is still ready completes at
//! once, so readiness is level-triggered, as a selector's is; a multishot
//! poll would report each wakeup once (edge-triggered), which the
//! `add_reader` contract does not allow.
//!
//! One `io_uring_enter` per iteration submits every queued request and
//! waits, with the loop's next timer as its timeout
//! (`IORING_ENTER_EXT_ARG`); an eventfd under a multishot poll carries
//! cross-thread wakeups.
//!
//! Where io_uring is unavailable (not Linux, `ENOSYS`, `EPERM` under a
//! seccomp filter, the `io_uring_disabled` sysctl, a kernel older than
//! 5.11), [`loop_factory`] returns [`loop_api::Error::NotSupported`] with
//! the reason, and the policy's `"auto"` falls back to select.
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(target_os = "linux")]
mod accept;
#[cfg(target_os = "linux")]
mod buf_ring;
#[cfg(target_os = "linux")]
mod driver;
#[cfg(target_os = "linux")]
mod ops;
#[cfg(target_os = "linux")]
mod pipe;
#[cfg(target_os = "linux")]
mod sock_ops;
#[cfg(target_os = "linux")]
mod transport;

#[cfg(target_os = "linux")]
pub use driver::{Features, UringConfig, UringDriver, CLOSE_DRAIN};
#[cfg(target_os = "linux")]
use loop_api::{Error, Loop, Result};

/// The io_uring backend's event loop type.
#[cfg(target_os = "linux")]
pub type UringEventLoop = loop_api::base_events::BaseEventLoop<UringDriver>;

/// A new io_uring loop.
#[cfg(target_os = "linux")]
pub fn new_event_loop() -> Result<std::rc::Rc<UringEventLoop>> {
    new_event_loop_with(&UringConfig::default())
}

/// A new io_uring loop set up as `config` says (ring size, provided
/// buffers, multishot accept).
#[cfg(target_os = "linux")]
pub fn new_event_loop_with(config: &UringConfig) -> Result<std::rc::Rc<UringEventLoop>> {
    let driver = UringDriver::with_config(config).map_err(|e| Error::NotSupported {
        feature: "uring backend",
        reason: format!("io_uring is unavailable on this machine: {e}"),
    })?;
    Ok(loop_api::base_events::BaseEventLoop::new(driver))
}

/// A new io_uring loop as a `dyn` [`Loop`] (a `loop_factory`).
#[cfg(target_os = "linux")]
pub fn loop_factory() -> Result<Loop> {
    Ok(new_event_loop()?)
}

/// io_uring exists only on Linux.
#[cfg(not(target_os = "linux"))]
pub fn loop_factory() -> Result<Loop> {
    Err(Error::NotSupported {
        feature: "uring backend",
        reason: "io_uring exists only on Linux".into(),
    })
}
