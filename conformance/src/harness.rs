//! Running one case: the loop factory, capability flags, visible skips,
//! and a watchdog so a hung case fails instead of hanging CI.

use std::io::Write;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::Duration;

use loop_api::{Error, Loop, Result};

/// Features a backend may lack. A case that needs one calls
/// [`Ctx::require`], which skips the case (visibly, with the reason) when
/// the backend declared it missing.
#[derive(Clone, Debug, Default)]
pub struct Capabilities {
    /// `Some(reason)` if `add_signal_handler` cannot work on this backend.
    pub no_signals: Option<&'static str>,
    /// `Some(reason)` if `add_reader`/`add_writer` cannot work.
    pub no_readiness: Option<&'static str>,
    /// `Some(reason)` if Unix domain sockets are unavailable.
    pub no_unix_sockets: Option<&'static str>,
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
}

impl Ctx {
    /// A fresh loop of the backend under test.
    pub fn new_loop(&self) -> Loop {
        (self.factory)().unwrap_or_else(|e| panic!("{}: the loop factory failed: {e}", self.name))
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
            Feature::Subprocesses => self.caps.no_subprocesses,
            Feature::ReadinessSockOps => self.caps.no_readiness_sock_ops,
            Feature::ReadinessSendfile => self.caps.no_readiness_sendfile,
        };
        match missing {
            Some(reason) => Err(Error::NotSupported {
                feature: feature_name(feature),
                reason: reason.to_string(),
            }),
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
        Feature::Subprocesses => "subprocesses",
        Feature::ReadinessSockOps => "sock_* methods on readiness",
        Feature::ReadinessSendfile => "sock_sendfile on readiness",
    }
}

/// How long a case may run before the watchdog fails the whole run.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs one case. A case passes by returning `Ok`, skips by returning
/// [`Error::NotSupported`] or [`Error::NotImplemented`] (reported on the
/// real stderr, past the test harness's capture, so it shows in every run),
/// and fails by returning any other error or panicking.
pub fn run_case(
    name: &'static str,
    factory: fn() -> Result<Loop>,
    caps: Capabilities,
    case: fn(&Ctx) -> Result<()>,
) {
    let ctx = Ctx {
        factory,
        caps,
        name,
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
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_unsupported() => {
            let _ = writeln!(std::io::stderr(), "conformance: SKIPPED {name}: {e}");
        }
        Ok(Err(e)) => panic!("{name} failed: {e}"),
        Err(p) => resume_unwind(p),
    }
}
