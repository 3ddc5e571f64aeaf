//! asyncio's `events` module: the event-loop trait, handles, servers,
//! policies, and the running-loop registry.

mod abstract_loop;
mod exception_context;
mod ext;
mod handles;
pub mod options;
mod policy;
mod running;
mod server;

pub use abstract_loop::{
    AbstractEventLoop, DatagramPair, LocalBoxFuture, Loop, RemoteLoop, Step, StreamPair,
    SubprocessPair, ThreadsafeCaller,
};
pub use exception_context::{ExceptionContext, ExceptionHandler};
pub(crate) use ext::check_can_run;
pub use ext::{Connected, Endpoint, EventLoopExt, Spawned};
pub use handles::{Callback, Handle, RepeatCallback, SendCallback, TimerHandle};
pub(crate) use handles::{OnceEntry, Repr, SoonKey, SoonSlab};
pub use policy::AbstractEventLoopPolicy;
pub use running::{_get_running_loop, _set_running_loop, get_running_loop, running_loop_id};
pub use server::AbstractServer;

/// A file descriptor (Unix) or socket handle (Windows), as `add_reader` takes.
#[cfg(unix)]
pub type RawFd = std::os::fd::RawFd;
/// A file descriptor (Unix) or socket handle (Windows), as `add_reader` takes.
#[cfg(windows)]
pub type RawFd = std::os::windows::io::RawSocket;
