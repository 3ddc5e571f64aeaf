//! Running one case: the loop factory, what the backend declares it will
//! skip, and a watchdog so a hung case fails instead of hanging CI.
//!
//! # Skips are declared
//! A case skips by returning [`Error::NotSupported`] or
//! [`Error::NotImplemented`]. That counts as a skip only when the suite
//! invocation expected it: the case needed a feature the backend declared
//! missing ([`Ctx::require`] on a [`Capabilities`] field), or the case is
//! listed in [`Capabilities::skips`]. Any other skip fails the case, so a
//! method that regressed to `NotImplemented` cannot pass as "skipped". A
//! listed case that passes is reported on stderr (`conformance: DECLARED
//! SKIP PASSED`), so the lists stay true.

use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use loop_api::{Error, Loop, Result};

/// What a backend's suite invocation declares it will skip: features it
/// lacks (a case that needs one calls [`Ctx::require`], which skips it,
/// visibly, with the reason), and single cases, each with the reason.
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    /// `Some(reason)` if `add_signal_handler` cannot work on this backend.
    pub no_signals: Option<&'static str>,
    /// `Some(reason)` if `add_reader`/`add_writer` cannot work.
    pub no_readiness: Option<&'static str>,
    /// `Some(reason)` if Unix domain sockets are unavailable.
    pub no_unix_sockets: Option<&'static str>,
    /// `Some(reason)` if `connect_read_pipe`/`connect_write_pipe` are
    /// unavailable.
    pub no_pipes: Option<&'static str>,
    /// `Some(reason)` if subprocesses are unavailable.
    pub no_subprocesses: Option<&'static str>,
    /// `Some(reason)` if the `sock_*` methods do not wait with
    /// `add_reader`/`add_writer` (a completion-based backend's own
    /// requests), so that cases which look for those watches cannot.
    pub no_readiness_sock_ops: Option<&'static str>,
    /// `Some(reason)` if `sock_sendfile`'s zero-copy path is a
    /// completion-based request (IOCP's `TransmitFile`) rather than
    /// `sendfile(2)` on writability: its progress is known only per
    /// completed request, so cases that cancel or break a transfer midway
    /// and check the file's position to the byte cannot.
    pub no_readiness_sendfile: Option<&'static str>,
    /// `Some(reason)` if the platform starts processes so slowly (Wine)
    /// that a case starting hundreds of children would outlast the case
    /// time limit: such cases start a fifth as many, and print the reason.
    pub slow_process_start: Option<&'static str>,
    /// Single cases expected to skip, each `("module::case", reason)`;
    /// build it from the shared lists ([`crate::NOT_BUILT_YET`],
    /// [`crate::MACHINE_DEPENDENT`], [`crate::UNIX_ONLY_CHECKS`],
    /// [`crate::WINE`]) and your own, e.g. `[A, B].concat()`. A name that
    /// is no case fails the suite's `declared_skips_name_cases` test.
    pub skips: Vec<(&'static str, &'static str)>,
}

/// A feature named in [`Capabilities`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Unix signals.
    Signals,
    /// `add_reader` / `add_writer`.
    Readiness,
    /// AF_UNIX sockets.
    UnixSockets,
    /// Pipe transports.
    Pipes,
    /// Child processes.
    Subprocesses,
    /// `sock_*` methods built on `add_reader`/`add_writer`.
    ReadinessSockOps,
    /// `sock_sendfile`'s zero-copy path on writability, a call at a time.
    ReadinessSendfile,
}

/// What a case gets: a way to make loops of the backend under test.
pub struct Ctx {
    factory: fn() -> Result<Loop>,
    caps: Capabilities,
    name: &'static str,
    /// Set when `require` turned the case into a declared skip.
    required_missing: Cell<bool>,
}

impl Ctx {
    /// A fresh loop of the backend under test.
    pub fn new_loop(&self) -> Loop {
        (self.factory)().unwrap_or_else(|e| panic!("{}: the loop factory failed: {e}", self.name))
    }

    /// How many children a case that wants `n` starts: `n`, or a fifth of
    /// it where [`Capabilities::slow_process_start`] says why (printed).
    pub fn children(&self, n: usize) -> usize {
        match self.caps.slow_process_start {
            Some(why) => {
                eprintln!(
                    "conformance: {} starts {} children, not {n}: {why}",
                    self.name,
                    n / 5
                );
                n / 5
            }
            None => n,
        }
    }

    /// The factory itself, for cases that hand it to a `Runner`.
    pub fn factory(&self) -> fn() -> Result<Loop> {
        self.factory
    }

    /// `Err(NotSupported)` (a visible skip) if the backend lacks `feature`.
    pub fn require(&self, feature: Feature) -> Result<()> {
        let missing = match feature {
            Feature::Signals => self.caps.no_signals,
            Feature::Readiness => self.caps.no_readiness,
            Feature::UnixSockets => self.caps.no_unix_sockets,
            Feature::Pipes => self.caps.no_pipes,
            Feature::Subprocesses => self.caps.no_subprocesses,
            Feature::ReadinessSockOps => self.caps.no_readiness_sock_ops,
            Feature::ReadinessSendfile => self.caps.no_readiness_sendfile,
        };
        match missing {
            Some(reason) => {
                self.required_missing.set(true);
                Err(Error::NotSupported {
                    feature: feature_name(feature),
                    reason: reason.to_string(),
                })
            }
            None => Ok(()),
        }
    }

    /// The case's name, `module::case`.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

fn feature_name(f: Feature) -> &'static str {
    match f {
        Feature::Signals => "signals",
        Feature::Readiness => "readiness",
        Feature::UnixSockets => "unix sockets",
        Feature::Pipes => "pipes",
        Feature::Subprocesses => "subprocesses",
        Feature::ReadinessSockOps => "sock_* methods on readiness",
        Feature::ReadinessSendfile => "sock_sendfile on readiness",
    }
}

/// How long a case may run before the watchdog fails the whole run.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one case. It passes by returning `Ok`, and fails by returning an
/// error or panicking; a skip (an `Err` of [`Error::NotSupported`] or
/// [`Error::NotImplemented`]) is accepted only when declared (see the
/// module docs). Skips are reported on the real stderr, past the test
/// harness's capture, so they show in every run.
pub fn run_case(
    name: &'static str,
    factory: fn() -> Result<Loop>,
    caps: Capabilities,
    case: fn(&Ctx) -> Result<()>,
) {
    let declared = caps
        .skips
        .iter()
        .find(|(c, _)| *c == name)
        .map(|(_, reason)| *reason);
    let ctx = Ctx {
        factory,
        caps,
        name,
        required_missing: Cell::new(false),
    };
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(CASE_TIMEOUT) {
            let _ = writeln!(
                std::io::stderr(),
                "conformance: {name} still running after {CASE_TIMEOUT:?}; aborting"
            );
            std::process::exit(101);
        }
    });
    let outcome = catch_unwind(AssertUnwindSafe(|| case(&ctx)));
    let _ = done_tx.send(());
    match outcome {
        Ok(Ok(())) => {
            if let Some(reason) = declared {
                let _ = writeln!(
                    std::io::stderr(),
                    "conformance: DECLARED SKIP PASSED {name} (declared: {reason}); \
                     take it off the list if it passes here for good"
                );
            }
        }
        Ok(Err(e)) if e.is_unsupported() => {
            if ctx.required_missing.get() {
                let _ = writeln!(std::io::stderr(), "conformance: SKIPPED {name}: {e}");
            } else if let Some(reason) = declared {
                let _ = writeln!(
                    std::io::stderr(),
                    "conformance: SKIPPED {name}: {e} (declared: {reason})"
                );
            } else {
                panic!(
                    "{name} skipped without being declared: {e}\n\
                     (if this backend cannot do it, declare it in the suite invocation: \
                     a missing feature in conformance::Capabilities, or the case in its `skips`)"
                );
            }
        }
        Ok(Err(e)) => panic!("{name} failed: {e}"),
        Err(p) => resume_unwind(p),
    }
}

/// Fails if `caps` declares a skip for a case that does not exist (a typo
/// would otherwise leave the real case undeclared, and the list untrue).
pub fn check_declared(caps: &Capabilities) {
    let unknown: Vec<&str> = caps
        .skips
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| !crate::ALL_CASES.contains(c))
        .collect();
    assert!(
        unknown.is_empty(),
        "declared skips name no case: {unknown:?}"
    );
}
