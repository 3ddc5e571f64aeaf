//! From the policy tests of CPython's `test_events.py`: policies and the running-loop functions.
//!
//! The policy is process-wide and cases run on parallel threads: every case
//! that goes through the global policy holds `policy_read`, and the ones
//! that replace it hold `policy_write` and put the default back.
//! Current loops are per thread, and each case has its own thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use loop_api::events::AbstractEventLoopPolicy;
use loop_api::{get_running_loop, Loop, Result};
use policy::{DefaultEventLoopPolicy, LoopFactory, Runner};

use crate::util::expect_runtime;
use crate::Ctx;

static POLICY_LOCK: RwLock<()> = RwLock::new(());

/// Held by cases that use the process's policy without replacing it.
pub(crate) fn policy_read() -> RwLockReadGuard<'static, ()> {
    POLICY_LOCK.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held by cases that replace the process's policy.
pub(crate) fn policy_write() -> RwLockWriteGuard<'static, ()> {
    POLICY_LOCK.write().unwrap_or_else(PoisonError::into_inner)
}

/// Clears this thread's current loop on the way out, even on failure.
struct ClearCurrent;

impl Drop for ClearCurrent {
    fn drop(&mut self) {
        policy::set_event_loop(None);
    }
}

/// Puts the default policy back on the way out, even on failure.
pub(crate) struct RestoreDefaultPolicy;

impl Drop for RestoreDefaultPolicy {
    fn drop(&mut self) {
        policy::set_event_loop_policy(None);
    }
}

fn no_current_loop_message() -> String {
    format!(
        "There is no current event loop in thread '{}'.",
        std::thread::current().name().unwrap_or("<unnamed>")
    )
}

/// `get_running_loop()`: an error outside a running loop, the running loop
/// inside.
pub fn test_get_running_loop(ctx: &Ctx) -> Result<()> {
    expect_runtime(get_running_loop().map(drop), "no running event loop");
    let mut runner = Runner::new(None, Some(ctx.factory()));
    let lp = runner.get_loop()?;
    expect_runtime(get_running_loop().map(drop), "no running event loop");
    let inside = runner.run(async { Ok(policy::get_running_loop()?.loop_id()) }, None)?;
    assert_eq!(inside, lp.loop_id());
    expect_runtime(get_running_loop().map(drop), "no running event loop");
    runner.close()
}

/// `set_event_loop` / `get_event_loop` (3.14): no current loop is an error
/// naming the thread; a loop set is returned; `None` unsets it.
pub fn test_set_event_loop(ctx: &Ctx) -> Result<()> {
    let _policy = policy_read();
    let _clear = ClearCurrent;
    expect_runtime(
        policy::get_event_loop().map(drop),
        &no_current_loop_message(),
    );
    let lp = ctx.new_loop();
    policy::set_event_loop(Some(lp.clone()));
    assert_eq!(policy::get_event_loop()?.loop_id(), lp.loop_id());
    assert_eq!(policy::get_event_loop()?.loop_id(), lp.loop_id());
    policy::set_event_loop(None);
    expect_runtime(
        policy::get_event_loop().map(drop),
        &no_current_loop_message(),
    );
    lp.close()
}

/// `get_event_loop()` inside a running loop returns the running loop, not
/// the thread's current one.
pub fn test_get_event_loop_returns_running_loop(ctx: &Ctx) -> Result<()> {
    let _policy = policy_read();
    let _clear = ClearCurrent;
    let current = ctx.new_loop();
    policy::set_event_loop(Some(current.clone()));
    let mut runner = Runner::new(None, Some(ctx.factory()));
    let running = runner.get_loop()?;
    assert_ne!(running.loop_id(), current.loop_id());
    let seen = runner.run(async { Ok(policy::get_event_loop()?.loop_id()) }, None)?;
    assert_eq!(seen, running.loop_id());
    assert_eq!(policy::get_event_loop()?.loop_id(), current.loop_id());
    runner.close()?;
    current.close()
}

/// The current loop is per thread.
pub fn test_current_loop_is_per_thread(ctx: &Ctx) -> Result<()> {
    let _policy = policy_read();
    let _clear = ClearCurrent;
    let lp = ctx.new_loop();
    policy::set_event_loop(Some(lp.clone()));
    let factory = ctx.factory();
    let other = std::thread::Builder::new()
        .name("policy-other".into())
        .spawn(move || -> Result<(String, bool)> {
            let before = match policy::get_event_loop() {
                Ok(_) => "a loop".to_string(),
                Err(e) => e.to_string(),
            };
            let mine = factory()?;
            policy::set_event_loop(Some(mine.clone()));
            let got = policy::get_event_loop()?.loop_id() == mine.loop_id();
            policy::set_event_loop(None);
            mine.close()?;
            Ok((before, got))
        })
        .expect("spawn")
        .join()
        .expect("thread")?;
    assert_eq!(
        other.0,
        "RuntimeError: There is no current event loop in thread 'policy-other'."
    );
    assert!(other.1);
    assert_eq!(policy::get_event_loop()?.loop_id(), lp.loop_id());
    policy::set_event_loop(None);
    lp.close()
}

/// `get_event_loop_policy()` is one object for the whole process.
pub fn test_get_event_loop_policy_is_process_wide(_ctx: &Ctx) -> Result<()> {
    let _policy = policy_read();
    let here = policy::get_event_loop_policy();
    let there = std::thread::spawn(policy::get_event_loop_policy)
        .join()
        .expect("thread");
    assert!(Arc::ptr_eq(&here, &there));
    assert!(Arc::ptr_eq(&here, &policy::get_event_loop_policy()));
    Ok(())
}

/// A policy that makes loops of the backend under test and counts its calls.
struct CountingPolicy {
    inner: DefaultEventLoopPolicy,
    made: AtomicUsize,
    sets: AtomicUsize,
}

impl CountingPolicy {
    fn new(factory: LoopFactory) -> Arc<Self> {
        Arc::new(CountingPolicy {
            inner: DefaultEventLoopPolicy::with_factory(factory),
            made: AtomicUsize::new(0),
            sets: AtomicUsize::new(0),
        })
    }
}

impl AbstractEventLoopPolicy for CountingPolicy {
    fn get_event_loop(&self) -> Result<Loop> {
        self.inner.get_event_loop()
    }
    fn set_event_loop(&self, lp: Option<Loop>) {
        self.sets.fetch_add(1, Ordering::SeqCst);
        self.inner.set_event_loop(lp)
    }
    fn new_event_loop(&self) -> Result<Loop> {
        self.made.fetch_add(1, Ordering::SeqCst);
        self.inner.new_event_loop()
    }
}

/// `set_event_loop_policy(custom)`: the module functions, `run` and
/// `Runner` without a factory go through it.
pub fn test_set_event_loop_policy(ctx: &Ctx) -> Result<()> {
    let _policy = policy_write();
    let _restore = RestoreDefaultPolicy;
    let _clear = ClearCurrent;
    let expected_backend = {
        let lp = ctx.new_loop();
        let name = lp.backend_name();
        lp.close()?;
        name
    };
    let custom = CountingPolicy::new(ctx.factory());
    policy::set_event_loop_policy(Some(custom.clone()));
    let installed = policy::get_event_loop_policy();
    assert!(std::ptr::addr_eq(
        Arc::as_ptr(&installed),
        Arc::as_ptr(&custom)
    ));

    let lp = policy::new_event_loop()?;
    assert_eq!(custom.made.load(Ordering::SeqCst), 1);
    assert_eq!(lp.backend_name(), expected_backend);
    lp.close()?;

    let backend = policy::run(async { Ok(get_running_loop()?.backend_name()) }, None, None)?;
    assert_eq!(backend, expected_backend);
    assert_eq!(custom.made.load(Ordering::SeqCst), 2);
    assert_eq!(
        custom.sets.load(Ordering::SeqCst),
        2,
        "run() sets its loop as current, then unsets it"
    );

    policy::set_event_loop_policy(None);
    let fresh = policy::get_event_loop_policy();
    assert!(
        !std::ptr::addr_eq(Arc::as_ptr(&fresh), Arc::as_ptr(&custom)),
        "back to a default policy"
    );
    // Made through the new policy, not the custom one.
    let lp = fresh.get_event_loop();
    assert!(lp.is_err(), "the fresh policy has no current loop");
    assert_eq!(custom.made.load(Ordering::SeqCst), 2);
    Ok(())
}

/// `set_event_loop_policy(None)` installs a fresh default policy, which
/// does not see the current loops of the one it replaced.
pub fn test_set_event_loop_policy_none(ctx: &Ctx) -> Result<()> {
    let _policy = policy_write();
    let _restore = RestoreDefaultPolicy;
    let _clear = ClearCurrent;
    let old = policy::get_event_loop_policy();
    let lp = ctx.new_loop();
    policy::set_event_loop(Some(lp.clone()));
    policy::set_event_loop_policy(None);
    let new = policy::get_event_loop_policy();
    assert!(!Arc::ptr_eq(&old, &new));
    expect_runtime(
        policy::get_event_loop().map(drop),
        &no_current_loop_message(),
    );
    old.set_event_loop(None);
    lp.close()
}

/// `DefaultEventLoopPolicy` on its own, with the backend under test as its
/// factory.
pub fn test_default_policy_with_factory(ctx: &Ctx) -> Result<()> {
    let p = DefaultEventLoopPolicy::with_factory(ctx.factory());
    expect_runtime(p.get_event_loop().map(drop), &no_current_loop_message());
    let lp = p.new_event_loop()?;
    let reference = ctx.new_loop();
    assert_eq!(lp.backend_name(), reference.backend_name());
    reference.close()?;
    expect_runtime(p.get_event_loop().map(drop), &no_current_loop_message());
    p.set_event_loop(Some(lp.clone()));
    assert_eq!(p.get_event_loop()?.loop_id(), lp.loop_id());
    p.set_event_loop(None);
    assert!(p.get_event_loop().is_err());
    lp.close()
}
