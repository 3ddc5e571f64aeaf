//! Where the loop's log lines go (asyncio's `logger`).
//!
//! By default, to stderr. A thread may install its own sink, which is how
//! tests read `"Executing <Handle> took 0.150 seconds"` and what the default
//! exception handler wrote.

use std::cell::RefCell;
use std::rc::Rc;

/// Severity, as Python's logging levels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `logger.debug`.
    Debug,
    /// `logger.info`.
    Info,
    /// `logger.warning`.
    Warning,
    /// `logger.error`.
    Error,
}

/// A log sink: receives each line with its level.
pub type Sink = Rc<dyn Fn(Level, &str)>;

thread_local! {
    static SINK: RefCell<Option<Sink>> = const { RefCell::new(None) };
}

/// Sends this thread's log lines to `sink` (`None`: back to stderr).
/// Returns the previous sink.
pub fn set_sink(sink: Option<Sink>) -> Option<Sink> {
    SINK.with(|s| s.replace(sink))
}

/// Logs one message.
pub fn log(level: Level, msg: &str) {
    let sink = SINK.with(|s| s.borrow().clone());
    match sink {
        Some(s) => s(level, msg),
        None if level >= Level::Warning => eprintln!("asyncio {level:?}: {msg}"),
        None => {}
    }
}
