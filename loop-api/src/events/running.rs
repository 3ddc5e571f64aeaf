//! The running loop of each thread (`asyncio.get_running_loop`).

use std::cell::{Cell, RefCell};

use super::Loop;
use crate::exceptions::{Error, Result};

thread_local! {
    static RUNNING: RefCell<Option<Loop>> = const { RefCell::new(None) };
    static RUNNING_ID: Cell<Option<u64>> = const { Cell::new(None) };
}

/// The id of the loop running in this thread, without touching its `Rc`.
pub fn running_loop_id() -> Option<u64> {
    RUNNING_ID.with(|c| c.get())
}

/// The loop running in this thread, or asyncio's `RuntimeError`
/// "no running event loop".
pub fn get_running_loop() -> Result<Loop> {
    _get_running_loop().ok_or_else(|| Error::runtime("no running event loop"))
}

/// The loop running in this thread, if any.
pub fn _get_running_loop() -> Option<Loop> {
    RUNNING.with(|r| r.borrow().clone())
}

/// Sets (or clears) the loop running in this thread; loops call this as
/// they start and stop. Returns the previous value.
pub fn _set_running_loop(lp: Option<Loop>) -> Option<Loop> {
    RUNNING_ID.with(|c| c.set(lp.as_ref().map(|l| l.loop_id())));
    RUNNING.with(|r| r.replace(lp))
}
