//! From CPython's `test_tasks.py`: `Task`, cancellation, task factories, `sleep`.

#[allow(unused_imports)]
use crate::Ctx;
