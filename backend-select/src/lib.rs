//! The select backend: asyncio's `SelectorEventLoop`.
//!
//! The generic core of `loop-api` over level-triggered readiness, so that
//! readiness behaves as a selector's: a reader callback runs on every
//! iteration while its descriptor stays readable. On Linux the driver is
//! epoll itself ([`EpollDriver`], one system call per wait); elsewhere a
//! [`polling::Poller`] (kqueue on the BSDs and macOS, IOCP+AFD on Windows).

use std::rc::Rc;

use loop_api::base_events::BaseEventLoop;
use loop_api::{Loop, Result};

mod driver;
#[cfg(any(target_os = "linux", target_os = "android"))]
mod epoll;

pub use driver::PollingDriver;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub use epoll::EpollDriver;

/// The driver this platform's select loop runs on.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub type SelectDriver = EpollDriver;
/// The driver this platform's select loop runs on.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub type SelectDriver = PollingDriver;

/// The select backend's event loop type.
pub type SelectEventLoop = BaseEventLoop<SelectDriver>;

/// A new select loop.
pub fn new_event_loop() -> Result<Rc<SelectEventLoop>> {
    Ok(BaseEventLoop::new(SelectDriver::new()?))
}

/// A new select loop, as a `dyn` [`Loop`] (a `loop_factory`).
pub fn loop_factory() -> Result<Loop> {
    Ok(new_event_loop()?)
}
