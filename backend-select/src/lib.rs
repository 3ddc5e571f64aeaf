//! The select backend: asyncio's `SelectorEventLoop`.
//!
//! The generic core of `loop-api` over a [`polling::Poller`] (epoll on
//! Linux, kqueue on the BSDs and macOS, IOCP+AFD on Windows), registered in
//! level-triggered mode so that readiness behaves as a selector's: a reader
//! callback runs on every iteration while its descriptor stays readable.

use std::rc::Rc;

use loop_api::base_events::BaseEventLoop;
use loop_api::{Loop, Result};

mod driver;

pub use driver::PollingDriver;

/// The select backend's event loop type.
pub type SelectEventLoop = BaseEventLoop<PollingDriver>;

/// A new select loop.
pub fn new_event_loop() -> Result<Rc<SelectEventLoop>> {
    Ok(BaseEventLoop::new(PollingDriver::new()?))
}

/// A new select loop, as a `dyn` [`Loop`] (a `loop_factory`).
pub fn loop_factory() -> Result<Loop> {
    Ok(new_event_loop()?)
}
