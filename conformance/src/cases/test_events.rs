//! From CPython's `test_events.py`: handles, timer handles, thread-safe calls, readiness on real descriptors.

#[allow(unused_imports)]
use crate::Ctx;
