//! Helpers shared by cases.

use std::cell::RefCell;
use std::rc::Rc;

use loop_api::events::ExceptionContext;
use loop_api::{AbstractEventLoop, Loop};

/// An ordered record that callbacks append to.
#[derive(Clone, Default)]
pub struct Log<T>(Rc<RefCell<Vec<T>>>);

impl<T: Clone> Log<T> {
    /// An empty log.
    pub fn new() -> Self {
        Log(Rc::new(RefCell::new(Vec::new())))
    }
    /// Appends.
    pub fn push(&self, v: T) {
        self.0.borrow_mut().push(v)
    }
    /// A copy of the entries.
    pub fn get(&self) -> Vec<T> {
        self.0.borrow().clone()
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.borrow().len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Installs an exception handler that records every context, and returns the record.
pub fn capture_exceptions(lp: &Loop) -> Log<ExceptionContext> {
    let log = Log::new();
    let l = log.clone();
    lp.set_exception_handler(Some(Rc::new(move |_lp: &dyn AbstractEventLoop, ctx: &ExceptionContext| {
        l.push(ctx.clone())
    })));
    log
}

/// Stops `lp` after `secs` of loop time: a safety net for cases that run
/// the loop forever, never the way a case synchronises.
pub fn stop_after(lp: &Loop, secs: f64) {
    let l = lp.clone();
    lp.call_later(secs, Box::new(move || l.stop()), None)
        .expect("loop open");
}
