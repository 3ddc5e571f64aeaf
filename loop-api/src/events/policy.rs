//! `asyncio.AbstractEventLoopPolicy`.

use super::Loop;
use crate::exceptions::Result;

/// Decides which loop `get_event_loop` returns and what `new_event_loop`
/// builds. asyncio deprecates policies in 3.14 in favour of `loop_factory`;
/// the `policy` crate keeps both, with `loop_factory` the main path.
pub trait AbstractEventLoopPolicy {
    /// The current thread's loop; as in asyncio 3.14, a `RuntimeError` if
    /// none was set (no loop is created implicitly).
    fn get_event_loop(&self) -> Result<Loop>;
    /// Sets the current thread's loop.
    fn set_event_loop(&self, lp: Option<Loop>);
    /// A new loop of this policy's kind.
    fn new_event_loop(&self) -> Result<Loop>;
}
