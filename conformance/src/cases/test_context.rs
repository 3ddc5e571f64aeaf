//! From CPython's `test_context.py` and the context parts of `test_tasks.py`: context variables in callbacks and tasks.

#[allow(unused_imports)]
use crate::Ctx;
