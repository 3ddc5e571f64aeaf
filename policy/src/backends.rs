//! Event-loop backends by name: `"select"`, `"uring"`, `"iocp"`, `"auto"`.
//!
//! The registry is one small table, `REGISTRY`, of the backends this build
//! can make loops of. A backend joins by adding an entry (under the `cfg`
//! of the platforms it builds on) and its dependency in `Cargo.toml`.
//! Names in [`KNOWN_BACKENDS`] that are not in the table are "unavailable
//! here" ([`Error::NotSupported`]); any other name is unknown
//! ([`Error::Value`]). Both messages list what this machine has.

use loop_api::{Error, Loop, Result};

/// A loop factory: what `Runner`'s and `run`'s `loop_factory` take, and what
/// every backend crate exports as `loop_factory`.
pub type LoopFactory = fn() -> Result<Loop>;

/// Environment variable naming the backend that [`crate::new_event_loop`],
/// the default policy and [`crate::run`] (without a `loop_factory`) use.
/// Unset or empty: the platform default ([`default_backend`]).
pub const BACKEND_ENV: &str = "RUST_ASYNCIO_BACKEND";

/// The name that picks the best backend available ([`auto_backend`]).
pub const AUTO: &str = "auto";

/// Every backend the project has, whether or not this build includes it.
pub const KNOWN_BACKENDS: &[&str] = &["select", "uring", "iocp"];

/// One backend this build includes.
struct Backend {
    name: &'static str,
    factory: LoopFactory,
}

/// The backends this build includes, best first: `"auto"` picks the first.
///
/// To add a backend, add its entry here, e.g.
/// `#[cfg(windows)] Backend { name: "iocp", factory: backend_iocp::loop_factory },`
/// and the dependency (`[target.'cfg(windows)'.dependencies]`) in
/// `policy/Cargo.toml`. `"select"` exists everywhere; a backend goes before
/// it once it runs everything select runs.
const REGISTRY: &[Backend] = &[
    Backend {
        name: "select",
        factory: backend_select::loop_factory,
    },
    // After select until it carries the networking select has (issue 4):
    // "auto" picks the first entry.
    #[cfg(target_os = "linux")]
    Backend {
        name: "uring",
        factory: backend_uring::loop_factory,
    },
    // Likewise after select until it has overlapped networking (issue 5).
    #[cfg(windows)]
    Backend {
        name: "iocp",
        factory: backend_iocp::loop_factory,
    },
];

/// The platform's default backend, in order of preference: the first one
/// registered wins (asyncio's `EventLoop`: the proactor on Windows, the
/// selector loop elsewhere).
#[cfg(windows)]
const DEFAULT_PREFERENCE: &[&str] = &["iocp", "select"];
#[cfg(not(windows))]
const DEFAULT_PREFERENCE: &[&str] = &["select"];

fn registered(name: &str) -> Option<&'static Backend> {
    REGISTRY.iter().find(|b| b.name == name)
}

/// The names of the backends this build includes, best first (`"auto"` not
/// included).
pub fn available_backends() -> Vec<&'static str> {
    REGISTRY.iter().map(|b| b.name).collect()
}

/// The backend `"auto"` picks: the best one this build includes.
pub fn auto_backend() -> &'static str {
    REGISTRY[0].name
}

/// The platform's default backend (`"select"` on Unix; `"iocp"` on Windows
/// once that backend is registered, `"select"` until then).
pub fn default_backend() -> &'static str {
    DEFAULT_PREFERENCE
        .iter()
        .find_map(|n| registered(n))
        .unwrap_or(&REGISTRY[0])
        .name
}

/// The platform's default loop factory, ignoring [`BACKEND_ENV`] and the
/// policy (asyncio's `asyncio.EventLoop`).
pub fn default_loop_factory() -> LoopFactory {
    registered(default_backend()).expect("registered").factory
}

/// "select (auto = select)": what the error messages list.
fn machine_has() -> String {
    format!(
        "{} ({AUTO} = {})",
        available_backends().join(", "),
        auto_backend()
    )
}

fn lookup(name: &str, origin: &str) -> Result<LoopFactory> {
    let wanted = name.trim().to_ascii_lowercase();
    let wanted = if wanted == AUTO {
        auto_backend().to_string()
    } else {
        wanted
    };
    if let Some(b) = registered(&wanted) {
        return Ok(b.factory);
    }
    if KNOWN_BACKENDS.contains(&wanted.as_str()) {
        return Err(Error::NotSupported {
            feature: "event loop backend",
            reason: format!(
                "{origin}the {wanted:?} backend is not available on this machine; \
                 this machine has: {}",
                machine_has()
            ),
        });
    }
    Err(Error::value(format!(
        "{origin}unknown event loop backend {name:?}; this machine has: {}",
        machine_has()
    )))
}

/// The loop factory of the backend called `name` (`"select"`, `"uring"`,
/// `"iocp"`, or `"auto"`; case and surrounding blanks are ignored).
///
/// A known backend this build lacks is [`Error::NotSupported`]; an unknown
/// name is [`Error::Value`]. Both messages list the backends this machine has.
pub fn backend(name: &str) -> Result<LoopFactory> {
    lookup(name, "")
}

/// The loop factory [`BACKEND_ENV`] names, or the platform default when it
/// is unset or empty. Read on every call.
pub fn backend_from_env() -> Result<LoopFactory> {
    factory_for_env_value(std::env::var_os(BACKEND_ENV))
}

fn factory_for_env_value(value: Option<std::ffi::OsString>) -> Result<LoopFactory> {
    let Some(value) = value.filter(|v| !v.is_empty()) else {
        return Ok(default_loop_factory());
    };
    let origin = format!("{BACKEND_ENV}={}: ", value.to_string_lossy());
    match value.to_str() {
        Some(name) => lookup(name, &origin),
        None => Err(Error::value(format!(
            "{origin}the backend name is not valid UTF-8; this machine has: {}",
            machine_has()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn backend_of(f: LoopFactory) -> &'static str {
        let lp = f().expect("loop");
        let name = lp.backend_name();
        lp.close().expect("close");
        name
    }

    #[test]
    fn every_available_backend_makes_its_own_loops() {
        let names = available_backends();
        assert!(names.contains(&"select"), "{names:?}");
        for name in names {
            assert_eq!(backend_of(backend(name).unwrap()), name);
            assert!(KNOWN_BACKENDS.contains(&name), "{name} must be known");
        }
    }

    #[test]
    fn auto_is_the_first_registered_and_select_for_now() {
        assert_eq!(auto_backend(), available_backends()[0]);
        assert_eq!(auto_backend(), "select");
        assert_eq!(backend_of(backend("auto").unwrap()), auto_backend());
    }

    #[test]
    fn names_ignore_case_and_blanks() {
        assert_eq!(backend_of(backend(" Select\n").unwrap()), "select");
        assert_eq!(backend_of(backend("AUTO").unwrap()), auto_backend());
    }

    #[test]
    fn default_backend_is_the_platforms() {
        let expected = if cfg!(windows) && available_backends().contains(&"iocp") {
            "iocp"
        } else {
            "select"
        };
        assert_eq!(default_backend(), expected);
        assert_eq!(backend_of(default_loop_factory()), expected);
    }

    #[test]
    fn unknown_name_is_a_value_error_listing_the_backends() {
        let err = backend("epoll").expect_err("unknown");
        let Error::Value(msg) = &err else {
            panic!("expected ValueError, got {err}");
        };
        assert!(msg.contains("\"epoll\""), "{msg}");
        assert!(msg.contains("unknown event loop backend"), "{msg}");
        for name in available_backends() {
            assert!(msg.contains(name), "{msg} lacks {name}");
        }
        assert!(msg.contains("auto = select"), "{msg}");
    }

    #[test]
    fn known_but_missing_backends_are_not_supported_and_list_the_backends() {
        let missing: Vec<_> = KNOWN_BACKENDS
            .iter()
            .filter(|n| !available_backends().contains(n))
            .collect();
        // On this Linux build, uring and iocp are not registered yet; once
        // they are, this loop checks whatever remains.
        #[cfg(target_os = "linux")]
        assert!(missing.contains(&&"iocp"), "iocp is Windows only");
        for name in missing {
            let err = backend(name).expect_err("unavailable");
            let Error::NotSupported { feature, reason } = &err else {
                panic!("{name}: expected NotSupported, got {err}");
            };
            assert_eq!(*feature, "event loop backend");
            assert!(reason.contains(&format!("{name:?}")), "{reason}");
            assert!(reason.contains("not available on this machine"), "{reason}");
            assert!(reason.contains("select"), "{reason}");
        }
    }

    #[test]
    fn env_value_unset_or_empty_is_the_default() {
        assert_eq!(
            backend_of(factory_for_env_value(None).unwrap()),
            default_backend()
        );
        assert_eq!(
            backend_of(factory_for_env_value(Some(OsString::new())).unwrap()),
            default_backend()
        );
    }

    #[test]
    fn env_value_names_the_backend() {
        let f = factory_for_env_value(Some("select".into())).unwrap();
        assert_eq!(backend_of(f), "select");
        let f = factory_for_env_value(Some("auto".into())).unwrap();
        assert_eq!(backend_of(f), auto_backend());
    }

    #[test]
    fn bad_env_value_names_the_variable_and_lists_the_backends() {
        let err = factory_for_env_value(Some("nope".into())).expect_err("unknown");
        let msg = err.to_string();
        assert!(matches!(err, Error::Value(_)), "{msg}");
        assert!(msg.contains("RUST_ASYNCIO_BACKEND=nope: "), "{msg}");
        assert!(msg.contains("this machine has: select"), "{msg}");
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_env_value_is_a_value_error() {
        use std::os::unix::ffi::OsStringExt;
        let err =
            factory_for_env_value(Some(OsString::from_vec(vec![0xff]))).expect_err("not UTF-8");
        assert!(matches!(err, Error::Value(_)), "{err}");
        assert!(err.to_string().contains("not valid UTF-8"), "{err}");
    }
}
