//! From CPython's `test_runners.py`: `run()` and `Runner`.

#[allow(unused_imports)]
use crate::Ctx;
