//! Everything that touches Win32: the port, AFD polling, the driver, Wine
//! detection.

mod afd;
mod driver;
mod port;
mod wine;

pub use driver::IocpDriver;
pub use wine::{running_under_wine, wine_version};

/// The IOCP backend's event loop type.
pub type IocpEventLoop = loop_api::base_events::BaseEventLoop<IocpDriver>;
