//! asyncio's `events` policy functions and its `runners` module, over the
//! project's backends.
//!
//! - [`run`] and [`Runner`]: asyncio's `asyncio.run()` and
//!   `asyncio.Runner`, Ctrl-C handling included (see [`runners`]).
//! - [`get_running_loop`], [`get_event_loop`], [`set_event_loop`],
//!   [`new_event_loop`], [`get_event_loop_policy`],
//!   [`set_event_loop_policy`] and [`DefaultEventLoopPolicy`]: the policy
//!   system (see [`events`] for where the policy and the current loops live).
//! - [`backend`], [`backend_from_env`], [`available_backends`]: backends by
//!   name (`"select"`, `"uring"`, `"iocp"`, `"auto"`), and the
//!   [`BACKEND_ENV`] variable (`RUST_ASYNCIO_BACKEND`) that picks the
//!   backend of loops made without a `loop_factory`. [`auto_choice`] says
//!   which backend `"auto"` chose at run time (uring where io_uring works,
//!   else select) and why better ones were skipped.
//!
//! - [`prelude`]: everything a program needs, in one `use`.
//!
//! ```
//! let answer = policy::run(async { Ok(6 * 7) }, None, None).unwrap();
//! assert_eq!(answer, 42);
//! ```

#![warn(missing_docs)]

pub mod backends;
pub mod events;
pub mod prelude;
pub mod runners;

pub use backends::{
    auto_backend, auto_choice, auto_loop_factory, available_backends, backend, backend_from_env,
    default_backend, default_loop_factory, AutoChoice, LoopFactory, AUTO, BACKEND_ENV,
    KNOWN_BACKENDS,
};
pub use events::{
    get_event_loop, get_event_loop_policy, new_event_loop, set_event_loop, set_event_loop_policy,
    DefaultEventLoopPolicy, Policy,
};
pub use loop_api::events::{get_running_loop, AbstractEventLoopPolicy};
pub use runners::{run, Runner, THREAD_JOIN_TIMEOUT};
