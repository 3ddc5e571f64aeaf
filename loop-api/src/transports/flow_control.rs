//! Write flow control (asyncio's `_FlowControlMixin`), shared by every
//! transport that buffers writes, whatever its I/O model.
//!
//! The transport reports its buffer size after each change; this decides
//! when the protocol hears `pause_writing` (the buffer went over the high
//! mark) and `resume_writing` (it drained to the low mark or below). Each
//! is called once per crossing, never twice in a row.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::events::options::WRITE_BUFFER_HIGH_WATER;
use crate::exceptions::{Error, Result};
use crate::protocols::BaseProtocol;

/// The marks and whether the protocol is paused.
#[derive(Debug)]
pub struct FlowControl {
    high: Cell<usize>,
    low: Cell<usize>,
    paused: Cell<bool>,
}

/// What the protocol must be told after a change of buffer size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crossing {
    /// Nothing.
    None,
    /// Call `pause_writing`.
    Pause,
    /// Call `resume_writing`.
    Resume,
}

impl Default for FlowControl {
    fn default() -> Self {
        let (high, low) = limits(None, None).expect("the defaults are valid");
        FlowControl {
            high: Cell::new(high),
            low: Cell::new(low),
            paused: Cell::new(false),
        }
    }
}

/// asyncio's `_set_write_buffer_limits`: `high` defaults to 64 KiB (or
/// `4 * low` when only `low` is given), `low` to `high / 4`.
pub fn limits(high: Option<usize>, low: Option<usize>) -> Result<(usize, usize)> {
    limits_with(high, low, WRITE_BUFFER_HIGH_WATER)
}

/// asyncio's `add_flowcontrol_defaults(high, low, kb)`: as [`limits`], with
/// another default high-water mark (the TLS layer's 256 and 512 KiB).
pub fn limits_with(
    high: Option<usize>,
    low: Option<usize>,
    default_high: usize,
) -> Result<(usize, usize)> {
    let high = match (high, low) {
        (Some(h), _) => h,
        (None, Some(l)) => l.saturating_mul(4),
        (None, None) => default_high,
    };
    let low = low.unwrap_or(high / 4);
    if high < low {
        return Err(Error::value(format!(
            "high ({high}) must be >= low ({low}) must be >= 0"
        )));
    }
    Ok((high, low))
}

impl FlowControl {
    /// Sets the marks; the caller then reports the current size with
    /// [`after_write`](FlowControl::after_write), as asyncio does.
    pub fn set_limits(&self, high: Option<usize>, low: Option<usize>) -> Result<()> {
        let (h, l) = limits(high, low)?;
        self.high.set(h);
        self.low.set(l);
        Ok(())
    }

    /// `(low, high)`, as `get_write_buffer_limits` returns them.
    pub fn get_limits(&self) -> (usize, usize) {
        (self.low.get(), self.high.get())
    }

    /// True while the protocol is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.get()
    }

    /// After the buffer grew: `Pause` when it went over the high mark.
    pub fn after_write(&self, size: usize) -> Crossing {
        if size > self.high.get() && !self.paused.get() {
            self.paused.set(true);
            Crossing::Pause
        } else {
            Crossing::None
        }
    }

    /// After the buffer grew to `size`: calls the protocol's
    /// `pause_writing` on crossing the high mark. A panic in it comes back
    /// as the error to report ("protocol.pause_writing() failed").
    pub fn pause_if_over(&self, size: usize, protocol: &dyn BaseProtocol) -> Option<Error> {
        if self.after_write(size) != Crossing::Pause {
            return None;
        }
        catch_unwind(AssertUnwindSafe(|| protocol.pause_writing()))
            .err()
            .map(Error::from_panic)
    }

    /// After the buffer shrank to `size`: calls `resume_writing` on
    /// draining to the low mark; a panic comes back as the error to report
    /// ("protocol.resume_writing() failed").
    pub fn resume_if_drained(&self, size: usize, protocol: &dyn BaseProtocol) -> Option<Error> {
        if self.after_drain(size) != Crossing::Resume {
            return None;
        }
        catch_unwind(AssertUnwindSafe(|| protocol.resume_writing()))
            .err()
            .map(Error::from_panic)
    }

    /// After the buffer shrank: `Resume` when it drained to the low mark.
    pub fn after_drain(&self, size: usize) -> Crossing {
        if self.paused.get() && size <= self.low.get() {
            self.paused.set(false);
            Crossing::Resume
        } else {
            Crossing::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_asyncios() {
        assert_eq!(limits(None, None).unwrap(), (64 * 1024, 16 * 1024));
        assert_eq!(limits(Some(100), None).unwrap(), (100, 25));
        assert_eq!(limits(None, Some(10)).unwrap(), (40, 10));
        assert_eq!(limits(Some(0), Some(0)).unwrap(), (0, 0));
        let e = limits(Some(1), Some(2)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "ValueError: high (1) must be >= low (2) must be >= 0"
        );
    }

    #[test]
    fn one_call_per_crossing() {
        let f = FlowControl::default();
        f.set_limits(Some(10), Some(4)).unwrap();
        assert_eq!(f.after_write(10), Crossing::None);
        assert_eq!(f.after_write(11), Crossing::Pause);
        assert_eq!(f.after_write(50), Crossing::None);
        assert_eq!(f.after_drain(5), Crossing::None);
        assert_eq!(f.after_drain(4), Crossing::Resume);
        assert_eq!(f.after_drain(0), Crossing::None);
    }
}
