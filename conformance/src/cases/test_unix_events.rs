//! From CPython's `test_unix_events.py`: signal handlers.

#[allow(unused_imports)]
use crate::Ctx;
