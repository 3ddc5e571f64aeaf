//! Everything that touches Win32: the port, AFD polling, overlapped socket
//! operations, the driver, Wine detection.

mod accept;
mod afd;
mod driver;
mod ops;
mod pipe;
mod port;
mod sendfile;
mod sock_ops;
mod transport;
mod wine;

pub use accept::ACCEPTS_IN_FLIGHT;
pub use driver::{IocpDriver, DRAIN_LIMIT};
pub use wine::{running_under_wine, wine_version};

/// The IOCP backend's event loop type.
pub type IocpEventLoop = loop_api::base_events::BaseEventLoop<IocpDriver>;
