//! From CPython's `test_futures.py`: `Future` and its callbacks.

#[allow(unused_imports)]
use crate::Ctx;
