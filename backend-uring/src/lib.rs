//! The io_uring backend (Linux).
//!
//! Today the driver gives the generic loop core what a selector gives it:
//! readiness, through one-shot `IORING_OP_POLL_ADD` requests re-armed on
//! each iteration (a fresh poll on a descriptor that is still ready
//! completes at once, so readiness is level-triggered, as a selector's),
//! an eventfd for cross-thread wakeups, and `io_uring_enter` with a timeout
//! (`IORING_ENTER_EXT_ARG`) for timers. One `io_uring_enter` per iteration
//! submits every pending request and waits.
//!
//! Completion-based socket I/O with owned buffers comes on top of this
//! driver (issue 4); the loop core does not change for it.
//!
//! Where io_uring is unavailable (not Linux, `ENOSYS`, `EPERM` under a
//! seccomp filter, `io_uring_disabled` sysctl), [`loop_factory`] returns
//! [`loop_api::Error::NotSupported`] with the reason.

#[cfg(target_os = "linux")]
mod driver;

#[cfg(target_os = "linux")]
pub use driver::UringDriver;

use loop_api::{Error, Loop, Result};

/// The io_uring backend's event loop type.
#[cfg(target_os = "linux")]
pub type UringEventLoop = loop_api::base_events::BaseEventLoop<UringDriver>;

/// A new io_uring loop.
#[cfg(target_os = "linux")]
pub fn new_event_loop() -> Result<std::rc::Rc<UringEventLoop>> {
    let driver = UringDriver::new().map_err(|e| Error::NotSupported {
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
