//! asyncio's policy functions: `get_event_loop`, `set_event_loop`,
//! `new_event_loop`, `get_event_loop_policy`, `set_event_loop_policy`.
//!
//! # Where things live
//! As in asyncio, the policy is one object for the whole process and the
//! *current loop* is per thread. A [`Loop`] is an `Rc` (not `Send`), so:
//! - the policy is a process-global `Arc<dyn AbstractEventLoopPolicy + Send
//!   + Sync>` ([`Policy`]) behind a lock, replaced with
//!   [`set_event_loop_policy`];
//! - a policy keeps its loops in thread-local storage, never in itself:
//!   [`DefaultEventLoopPolicy`] keys each thread's current loop by the
//!   policy's identity, so a policy set later does not see the loops of the
//!   one it replaced (asyncio's `threading.local()` in each policy object).
//!   A custom policy that keeps loops must do the same.
//!
//! asyncio deprecates policies in 3.14; `loop_factory` (see
//! [`crate::Runner`]) is the main path, and [`get_event_loop`] follows
//! 3.14: without a running or current loop it is an error, it never
//! creates one.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use loop_api::events::{_get_running_loop, AbstractEventLoopPolicy};
use loop_api::{Error, Loop, Result};

use crate::backends::{self, LoopFactory};

/// The process-wide policy object.
pub type Policy = Arc<dyn AbstractEventLoopPolicy + Send + Sync>;

static POLICY: RwLock<Option<Policy>> = RwLock::new(None);

/// `asyncio.get_event_loop_policy()`: the process's policy, a
/// [`DefaultEventLoopPolicy`] unless one was set.
pub fn get_event_loop_policy() -> Policy {
    if let Some(p) = POLICY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        return p.clone();
    }
    POLICY
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(|| Arc::new(DefaultEventLoopPolicy::new()))
        .clone()
}

/// `asyncio.set_event_loop_policy(policy)`: replaces the process's policy;
/// `None` goes back to a fresh default policy.
pub fn set_event_loop_policy(policy: Option<Policy>) {
    *POLICY.write().unwrap_or_else(PoisonError::into_inner) = policy;
}

/// `asyncio.get_event_loop()`: the loop running in this thread if any,
/// else the policy's current loop for this thread (set by
/// [`set_event_loop`]), else (asyncio 3.14) `RuntimeError` "There is no
/// current event loop in thread '...'".
pub fn get_event_loop() -> Result<Loop> {
    if let Some(lp) = _get_running_loop() {
        return Ok(lp);
    }
    get_event_loop_policy().get_event_loop()
}

/// `asyncio.set_event_loop(loop)`: sets (or, with `None`, clears) this
/// thread's current loop in the policy.
pub fn set_event_loop(lp: Option<Loop>) {
    get_event_loop_policy().set_event_loop(lp)
}

/// `asyncio.new_event_loop()`: a new loop from the policy. The default
/// policy builds one of the backend [`backends::BACKEND_ENV`] names, or the
/// platform default. The loop is not made current.
pub fn new_event_loop() -> Result<Loop> {
    get_event_loop_policy().new_event_loop()
}

thread_local! {
    /// Each thread's current loop, per default-policy object.
    static CURRENT: RefCell<Vec<(u64, Loop)>> = const { RefCell::new(Vec::new()) };
}

/// asyncio's `DefaultEventLoopPolicy`: a current loop per thread, and new
/// loops of the backend [`backends::BACKEND_ENV`] names (read at each
/// `new_event_loop`), or of a fixed factory.
#[derive(Debug)]
pub struct DefaultEventLoopPolicy {
    id: u64,
    factory: Option<LoopFactory>,
}

impl DefaultEventLoopPolicy {
    /// A policy whose loops follow [`backends::BACKEND_ENV`], else the
    /// platform default.
    pub fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        DefaultEventLoopPolicy {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            factory: None,
        }
    }

    /// A policy whose loops come from `factory` (e.g. `backend("select")?`).
    pub fn with_factory(factory: LoopFactory) -> Self {
        DefaultEventLoopPolicy {
            factory: Some(factory),
            ..Self::new()
        }
    }
}

impl Default for DefaultEventLoopPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl AbstractEventLoopPolicy for DefaultEventLoopPolicy {
    /// This thread's current loop; asyncio 3.14's `RuntimeError` if none
    /// was set (no loop is created implicitly, on any thread).
    fn get_event_loop(&self) -> Result<Loop> {
        let current = CURRENT.with(|c| {
            c.borrow()
                .iter()
                .find(|(id, _)| *id == self.id)
                .map(|(_, lp)| lp.clone())
        });
        current.ok_or_else(|| {
            let t = std::thread::current();
            Error::runtime(format!(
                "There is no current event loop in thread '{}'.",
                t.name().unwrap_or("<unnamed>")
            ))
        })
    }

    fn set_event_loop(&self, lp: Option<Loop>) {
        // The old loop is dropped outside the borrow: its destructors may
        // call back into the policy.
        let old = CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            let pos = c.iter().position(|(id, _)| *id == self.id);
            match (pos, lp) {
                (Some(i), Some(lp)) => Some(std::mem::replace(&mut c[i].1, lp)),
                (Some(i), None) => Some(c.swap_remove(i).1),
                (None, Some(lp)) => {
                    c.push((self.id, lp));
                    None
                }
                (None, None) => None,
            }
        });
        drop(old);
    }

    fn new_event_loop(&self) -> Result<Loop> {
        let factory = match self.factory {
            Some(f) => f,
            None => backends::backend_from_env()?,
        };
        factory()
    }
}
