//! asyncio's event loop model in Rust: the traits, and the one generic loop
//! core that every I/O backend plugs a [`driver::Driver`] into.
//!
//! Module names follow CPython's `asyncio` package: [`events`],
//! [`base_events`], [`futures`], [`tasks`], [`protocols`], [`transports`],
//! [`exceptions`]. Start at [`events::AbstractEventLoop`].
//!
//! A [`events::Loop`] is not `Send`: it lives on the thread that made it,
//! which is how this crate enforces at compile time what asyncio's debug
//! mode checks at run time ("Non-thread-safe operation invoked on an event
//! loop other than the current one"). Other threads get a
//! [`events::RemoteLoop`]:
//!
//! ```compile_fail
//! fn needs_send<T: Send>(_: T) {}
//! fn give_away(lp: loop_api::events::Loop) {
//!     needs_send(lp); // error: `Rc<dyn AbstractEventLoop>` cannot be sent between threads
//! }
//! ```

#![warn(missing_docs)]

pub mod base_events;
pub mod base_subprocess;
mod cancel_scope;
pub mod concurrent;
pub mod contextvars;
pub mod driver;
pub mod events;
pub mod exceptions;
pub mod executor;
pub mod futures;
#[cfg(feature = "hyper")]
pub mod hyper_rt;
pub mod idle_memory;
pub mod log;
pub mod proactor_events;
pub mod protocols;
pub mod selector_events;
pub mod ssl;
pub mod sslproto;
pub mod staggered;
pub mod streams;
pub mod subprocess;
pub mod taskgroups;
pub mod tasks;
pub mod test_utils;
pub mod timeouts;
pub mod transports;
#[cfg(unix)]
pub mod unix_events;
#[cfg(unix)]
mod unix_signals;
#[cfg(windows)]
mod windows_events;
#[cfg(windows)]
pub mod windows_utils;

#[cfg(unix)]
pub use unix_signals::NSIG;

#[doc(hidden)]
pub use socket2 as __socket2;

pub use events::{
    get_running_loop, AbstractEventLoop, EventLoopExt, Handle, Loop, RemoteLoop, TimerHandle,
};
pub use exceptions::{Error, Result};
pub use futures::Future;
pub use tasks::{all_tasks, current_task, sleep, Task};
