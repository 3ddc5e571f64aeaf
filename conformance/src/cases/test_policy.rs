//! From the policy tests of CPython's `test_events.py`: policies and the running-loop functions.

#[allow(unused_imports)]
use crate::Ctx;
