//! The cases, one module per CPython test module they come from.

/// Stand-ins, off Unix, for cases whose check is written with Unix calls:
/// each requires `$feature` (a declared skip where the backend lacks it),
/// then is `NotSupported` with `$reason`, which the suite declares
/// (`UNIX_ONLY_CHECKS`).
#[cfg(not(unix))]
macro_rules! unix_only {
    ($feature:expr, $what:literal, $reason:literal: $($name:ident),* $(,)?) => {
        $(
            /// Unix-only: see the Unix build.
            pub fn $name(ctx: &$crate::Ctx) -> loop_api::Result<()> {
                ctx.require($feature)?;
                Err(loop_api::Error::NotSupported {
                    feature: $what,
                    reason: $reason.into(),
                })
            }
        )*
    };
}

pub mod test_base_events;
pub mod test_context;
pub mod test_datagram;
pub mod test_events;
pub mod test_futures;
pub mod test_pipes;
pub mod test_policy;
pub mod test_runners;
pub mod test_selector_events;
pub mod test_sendfile;
pub mod test_server;
pub mod test_sock_lowlevel;
pub mod test_sslproto;
pub mod test_staggered;
pub mod test_streams;
pub mod test_subprocess;
pub mod test_taskgroups;
pub mod test_tasks;
pub mod test_timeouts;
pub mod test_unix_events;
pub mod test_waitfor;

/// Each case module's source, for the check that `__cases!` lists every case.
pub const SOURCES: &[(&str, &str)] = &[
    ("test_base_events", include_str!("test_base_events.rs")),
    ("test_events", include_str!("test_events.rs")),
    ("test_unix_events", include_str!("test_unix_events.rs")),
    ("test_futures", include_str!("test_futures.rs")),
    ("test_tasks", include_str!("test_tasks.rs")),
    ("test_context", include_str!("test_context.rs")),
    ("test_runners", include_str!("test_runners.rs")),
    ("test_policy", include_str!("test_policy.rs")),
    ("test_sock_lowlevel", include_str!("test_sock_lowlevel.rs")),
    (
        "test_selector_events",
        include_str!("test_selector_events.rs"),
    ),
    ("test_server", include_str!("test_server.rs")),
    ("test_datagram", include_str!("test_datagram.rs")),
    ("test_sendfile", include_str!("test_sendfile.rs")),
    ("test_staggered", include_str!("test_staggered.rs")),
    ("test_sslproto", include_str!("test_sslproto.rs")),
    ("test_pipes", include_str!("test_pipes.rs")),
    ("test_subprocess", include_str!("test_subprocess.rs")),
    ("test_streams", include_str!("test_streams.rs")),
    ("test_waitfor", include_str!("test_waitfor.rs")),
    ("test_timeouts", include_str!("test_timeouts.rs")),
    ("test_taskgroups", include_str!("test_taskgroups.rs")),
];
