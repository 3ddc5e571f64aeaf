//! Event-loop backends by name: `"select"`, `"uring"`, `"iocp"`, `"auto"`.
//!
//! The registry is one small table, `REGISTRY`, of the backends this build
//! can make loops of. A backend joins by adding an entry (under the `cfg`
//! of the platforms it builds on) and its dependency in `Cargo.toml`.
//! Names in [`KNOWN_BACKENDS`] that are not in the table are "unavailable
//! here" ([`Error::NotSupported`]); any other name is unknown
//! ([`Error::Value`]). Both messages list what this machine has.
//!
//! `"auto"` is decided at run time, once per process ([`auto_choice`]): the
//! first registered backend whose factory makes a loop wins, and one that
//! answers [`Error::NotSupported`] (io_uring under a seccomp filter, with
//! `ENOSYS`, or disabled by the `kernel.io_uring_disabled` sysctl) is
//! skipped. The choice, and why better backends were skipped, is logged
//! once through [`loop_api::log`] at [`Level::Info`]:
//!
//! ```text
//! auto backend: chose "select" (uring unavailable: io_uring is unavailable on this machine: Operation not permitted (os error 1))
//! ```

use std::fmt;
use std::sync::OnceLock;

use loop_api::log::{self, Level};
use loop_api::{Error, Loop, Result};

/// A loop factory: what `Runner`'s and `run`'s `loop_factory` take, and what
/// every backend crate exports as `loop_factory`.
pub type LoopFactory = fn() -> Result<Loop>;

/// Environment variable naming the backend that [`crate::new_event_loop`],
/// the default policy and [`crate::run`] (without a `loop_factory`) use.
/// Unset or empty: the platform default ([`default_backend`]).
pub const BACKEND_ENV: &str = "RUST_ASYNCIO_BACKEND";

/// The name that picks the best backend that works here ([`auto_choice`]).
pub const AUTO: &str = "auto";

/// Every backend the project has, whether or not this build includes it.
pub const KNOWN_BACKENDS: &[&str] = &["select", "uring", "iocp"];

/// One backend this build includes.
struct Backend {
    name: &'static str,
    factory: LoopFactory,
}

/// The backends this build includes, best first: `"auto"` takes the first
/// that works on this machine ([`auto_choice`]).
///
/// To add a backend, add its entry here, e.g.
/// `#[cfg(windows)] Backend { name: "iocp", factory: backend_iocp::loop_factory },`
/// and the dependency (`[target.'cfg(windows)'.dependencies]`) in
/// `policy/Cargo.toml`. `"select"` exists everywhere and is the fallback;
/// a backend goes before it once it runs everything select runs.
const REGISTRY: &[Backend] = &[
    // The completion backend (issue 4). Where io_uring is unavailable its
    // factory answers NotSupported and "auto" falls back to select.
    #[cfg(all(target_os = "linux", feature = "uring"))]
    Backend {
        name: "uring",
        factory: backend_uring::loop_factory,
    },
    #[cfg(feature = "select")]
    Backend {
        name: "select",
        factory: backend_select::loop_factory,
    },
    // After select until it has overlapped networking (issue 5).
    #[cfg(all(windows, feature = "iocp"))]
    Backend {
        name: "iocp",
        factory: backend_iocp::loop_factory,
    },
];

/// The platform's default backend, in order of preference: the first one
/// registered wins (asyncio's `EventLoop`: the proactor on Windows, the
/// selector loop elsewhere). Not `"auto"`: the default stays select on Unix.
#[cfg(windows)]
const DEFAULT_PREFERENCE: &[&str] = &["iocp", "select"];
#[cfg(not(windows))]
const DEFAULT_PREFERENCE: &[&str] = &["select"];

fn registered(name: &str) -> Option<&'static Backend> {
    REGISTRY.iter().find(|b| b.name == name)
}

/// The names of the backends this build includes, best first (`"auto"` not
/// included). A backend listed here may still be unusable on this machine
/// (its factory then returns [`Error::NotSupported`]); see [`auto_choice`].
pub fn available_backends() -> Vec<&'static str> {
    REGISTRY.iter().map(|b| b.name).collect()
}

/// What `"auto"` chose on this machine: see [`auto_choice`].
#[derive(Clone, Debug)]
pub struct AutoChoice {
    /// The backend chosen, e.g. `"uring"`, or `"select"` where io_uring is
    /// unavailable.
    pub name: &'static str,
    /// The better backends skipped, best first, each with the
    /// [`Error::NotSupported`] its factory returned.
    pub skipped: Vec<(&'static str, Error)>,
    factory: LoopFactory,
}

impl AutoChoice {
    /// The chosen backend's loop factory.
    pub fn factory(&self) -> LoopFactory {
        self.factory
    }
}

/// `"select" (uring unavailable: <reason>)`, or `"uring"`.
impl fmt::Display for AutoChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.name)?;
        for (i, (name, err)) in self.skipped.iter().enumerate() {
            let why = match err {
                Error::NotSupported { reason, .. } => reason.clone(),
                other => other.to_string(),
            };
            let sep = if i == 0 { " (" } else { "; " };
            write!(f, "{sep}{name} unavailable: {why}")?;
        }
        if !self.skipped.is_empty() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// The line [`auto_choice`] logs.
fn auto_log_line(choice: &AutoChoice) -> String {
    format!("{AUTO} backend: chose {choice}")
}

/// Picks `"auto"`'s backend among `candidates` (best first): the first whose
/// factory makes a loop (closed again at once) wins; one answering
/// [`Error::NotSupported`] is skipped, with its error recorded. Any other
/// error stops the search and comes back unchanged, with the name of the
/// backend that failed. All unsupported: `NotSupported` naming each reason.
fn choose(
    candidates: &[(&'static str, LoopFactory)],
) -> std::result::Result<AutoChoice, (&'static str, Error)> {
    let mut skipped = Vec::new();
    for &(name, factory) in candidates {
        match factory() {
            Ok(lp) => {
                lp.close().map_err(|e| (name, e))?;
                return Ok(AutoChoice {
                    name,
                    skipped,
                    factory,
                });
            }
            Err(e @ Error::NotSupported { .. }) => skipped.push((name, e)),
            Err(e) => return Err((name, e)),
        }
    }
    let reasons: Vec<String> = skipped
        .iter()
        .map(|(name, e)| format!("{name}: {e}"))
        .collect();
    let fallback = candidates.last().map_or(AUTO, |(name, _)| name);
    Err((
        fallback,
        Error::NotSupported {
            feature: "event loop backend",
            reason: format!(
                "no event loop backend works on this machine ({})",
                reasons.join("; ")
            ),
        },
    ))
}

static AUTO_CHOICE: OnceLock<AutoChoice> = OnceLock::new();

fn probe() -> std::result::Result<&'static AutoChoice, (&'static str, Error)> {
    if let Some(choice) = AUTO_CHOICE.get() {
        return Ok(choice);
    }
    let candidates: Vec<_> = REGISTRY.iter().map(|b| (b.name, b.factory)).collect();
    let found = choose(&candidates)?;
    let mut first = false;
    let choice = AUTO_CHOICE.get_or_init(|| {
        first = true;
        found
    });
    if first {
        log::log(Level::Info, &auto_log_line(choice));
    }
    Ok(choice)
}

/// The backend `"auto"` uses on this machine, and why better ones were
/// skipped.
///
/// The first call probes: it makes (and closes) a loop of each registered
/// backend, best first, until one works; a backend whose factory returns
/// [`Error::NotSupported`] is skipped (io_uring under a container's
/// seccomp filter, `ENOSYS`, or `kernel.io_uring_disabled`). The choice is
/// kept for the life of the process and logged once, at [`Level::Info`]:
/// `auto backend: chose "uring"`, or
/// `auto backend: chose "select" (uring unavailable: <reason>)`.
///
/// Any other error from a factory is returned as is, and not kept: the next
/// call probes again.
pub fn auto_choice() -> Result<&'static AutoChoice> {
    probe().map_err(|(_, e)| e)
}

/// The backend `"auto"` picks: [`auto_choice`]'s name. Should the probe
/// fail (see [`auto_choice`]), the backend that failed.
pub fn auto_backend() -> &'static str {
    match probe() {
        Ok(choice) => choice.name,
        Err((name, _)) => name,
    }
}

/// The loop factory `"auto"` names: a loop of [`auto_choice`]'s backend.
/// The probe's error, if it failed; the chosen factory's, if it fails later.
pub fn auto_loop_factory() -> Result<Loop> {
    (auto_choice()?.factory)()
}

/// The platform's default backend (`"select"` on Unix, `"iocp"` on
/// Windows); in a build without backends, `"none"`.
pub fn default_backend() -> &'static str {
    DEFAULT_PREFERENCE
        .iter()
        .find_map(|n| registered(n))
        .or_else(|| REGISTRY.first())
        .map_or("none", |b| b.name)
}

/// The platform's default loop factory, ignoring [`BACKEND_ENV`] and the
/// policy (asyncio's `asyncio.EventLoop`). In a build without backends, a
/// factory that answers [`Error::NotSupported`].
pub fn default_loop_factory() -> LoopFactory {
    registered(default_backend()).map_or(no_backend, |b| b.factory)
}

/// The factory of a build without backends.
fn no_backend() -> Result<Loop> {
    Err(Error::NotSupported {
        feature: "event loop backend",
        reason: "this build of the policy crate has no backend (its features select, uring \
                 and iocp are off): pass a loop_factory"
            .into(),
    })
}

/// "select, uring (auto = uring)": what the error messages list, in
/// [`KNOWN_BACKENDS`] order.
fn machine_has() -> String {
    let names: Vec<&str> = KNOWN_BACKENDS
        .iter()
        .copied()
        .filter(|n| registered(n).is_some())
        .collect();
    format!("{} ({AUTO} = {})", names.join(", "), auto_backend())
}

fn lookup(name: &str, origin: &str) -> Result<LoopFactory> {
    let wanted = name.trim().to_ascii_lowercase();
    if wanted == AUTO {
        return Ok(auto_loop_factory);
    }
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
/// `"auto"` gives [`auto_loop_factory`] (the backend [`auto_choice`] picks).
/// A known backend this build lacks is [`Error::NotSupported`]; an unknown
/// name is [`Error::Value`]. Both messages list the backends this machine has.
/// A registered backend that cannot run here (io_uring blocked) is found,
/// and its factory returns [`Error::NotSupported`] with the reason.
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

    /// A backend this machine cannot run, as uring under seccomp.
    fn unsupported() -> Result<Loop> {
        Err(Error::NotSupported {
            feature: "fake backend",
            reason: "fake is unavailable on this machine: Operation not permitted (os error 1)"
                .into(),
        })
    }

    /// A backend that fails for another reason.
    fn broken() -> Result<Loop> {
        Err(Error::runtime("broken backend"))
    }

    fn works() -> Result<Loop> {
        backend_select::loop_factory()
    }

    #[test]
    fn choose_skips_not_supported_and_records_why() {
        let choice = choose(&[("fake", unsupported), ("select", works)]).expect("a choice");
        assert_eq!(choice.name, "select");
        assert_eq!(backend_of(choice.factory()), "select");
        assert_eq!(choice.skipped.len(), 1);
        let (name, err) = &choice.skipped[0];
        assert_eq!(*name, "fake");
        let Error::NotSupported { feature, reason } = err else {
            panic!("expected NotSupported, got {err}");
        };
        assert_eq!(*feature, "fake backend");
        assert!(reason.contains("Operation not permitted"), "{reason}");
        assert_eq!(
            auto_log_line(&choice),
            "auto backend: chose \"select\" (fake unavailable: fake is unavailable on this \
             machine: Operation not permitted (os error 1))"
        );
    }

    #[test]
    fn choose_takes_the_first_that_works() {
        let choice = choose(&[("select", works), ("fake", unsupported)]).expect("a choice");
        assert_eq!(choice.name, "select");
        assert!(choice.skipped.is_empty());
        assert_eq!(auto_log_line(&choice), "auto backend: chose \"select\"");
    }

    #[test]
    fn choose_returns_other_errors_as_they_are() {
        let (name, err) = choose(&[("fake", unsupported), ("broken", broken), ("select", works)])
            .expect_err("broken is not skipped");
        assert_eq!(name, "broken");
        assert!(
            matches!(&err, Error::Runtime(m) if m == "broken backend"),
            "{err}"
        );
    }

    #[test]
    fn choose_with_nothing_supported_names_every_reason() {
        let (_, err) =
            choose(&[("fake", unsupported), ("other", unsupported)]).expect_err("nothing works");
        let Error::NotSupported { feature, reason } = &err else {
            panic!("expected NotSupported, got {err}");
        };
        assert_eq!(*feature, "event loop backend");
        assert!(reason.contains("no event loop backend works"), "{reason}");
        assert!(reason.contains("fake: "), "{reason}");
        assert!(reason.contains("other: "), "{reason}");
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
    fn uring_comes_before_select() {
        let names = available_backends();
        #[cfg(target_os = "linux")]
        assert_eq!(names, ["uring", "select"]);
        #[cfg(windows)]
        assert_eq!(names, ["select", "iocp"]);
        #[cfg(not(any(target_os = "linux", windows)))]
        assert_eq!(names, ["select"]);
    }

    #[test]
    fn auto_is_the_first_registered_backend_that_works_here() {
        let choice = auto_choice().expect("auto choice");
        assert_eq!(auto_backend(), choice.name);
        let names = available_backends();
        let pos = names
            .iter()
            .position(|n| *n == choice.name)
            .expect("registered");
        // Everything better was skipped as unsupported, with its reason.
        let skipped: Vec<_> = choice.skipped.iter().map(|(n, _)| *n).collect();
        assert_eq!(skipped, names[..pos]);
        for (name, err) in &choice.skipped {
            assert!(matches!(err, Error::NotSupported { .. }), "{name}: {err}");
        }
        // On Linux with io_uring working (this machine), that is uring.
        #[cfg(target_os = "linux")]
        if backend_uring::loop_factory().map(|lp| lp.close()).is_ok() {
            assert_eq!(choice.name, "uring");
            assert!(choice.skipped.is_empty());
        }
        assert_eq!(backend_of(backend("auto").unwrap()), choice.name);
        assert_eq!(backend_of(auto_loop_factory), choice.name);
        // Cached: the same choice every time.
        assert!(std::ptr::eq(choice, auto_choice().unwrap()));
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
        assert!(msg.contains("this machine has: select"), "{msg}");
        assert!(
            msg.contains(&format!("(auto = {})", auto_backend())),
            "{msg}"
        );
    }

    #[test]
    fn known_but_missing_backends_are_not_supported_and_list_the_backends() {
        let missing: Vec<_> = KNOWN_BACKENDS
            .iter()
            .filter(|n| !available_backends().contains(n))
            .collect();
        // On this Linux build, iocp is not registered; once it is (on
        // Windows), this loop checks whatever remains.
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
