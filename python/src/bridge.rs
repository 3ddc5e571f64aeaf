//! A Rust future as an asyncio future: the future runs as a task of the
//! Rust loop; its outcome completes an asyncio future made by the loop,
//! and cancelling that asyncio future cancels the task.

use loop_api::events::LocalBoxFuture;
use loop_api::{EventLoopExt, Task};
use pyo3::prelude::*;

use crate::core::Core;
use crate::errors::{check, to_py};
use crate::thread_bound::ThreadBound;

/// Runs `fut` on the loop; returns an asyncio future of `convert(value)`.
pub(crate) fn future_to_py<T: 'static>(
    lp: &Bound<'_, Core>,
    fut: LocalBoxFuture<'static, loop_api::Result<T>>,
    convert: impl FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + 'static,
) -> PyResult<Py<PyAny>> {
    let py = lp.py();
    let target = lp.call_method0("create_future")?.unbind();
    let done = target.clone_ref(py);
    let task = lp.borrow().lp.create_task(async move {
        let r = fut.await;
        Python::attach(|py| {
            let f = done.bind(py);
            if f.call_method0("done")
                .and_then(|d| d.is_truthy())
                .unwrap_or(true)
            {
                return;
            }
            let set = match r {
                Ok(v) => match convert(py, v) {
                    Ok(obj) => f.call_method1("set_result", (obj,)),
                    Err(e) => f.call_method1("set_exception", (e.value(py),)),
                },
                Err(e) => f.call_method1("set_exception", (to_py(py, &e).value(py),)),
            };
            if let Err(e) = set {
                e.write_unraisable(py, Some(f));
            }
        });
        Ok(())
    });
    let task = check(py, task)?;
    target.bind(py).call_method1(
        "add_done_callback",
        (CancelTask {
            task: ThreadBound::new(std::cell::RefCell::new(Some(task))),
        },),
    )?;
    Ok(target)
}

/// The asyncio future's done callback: a cancelled future cancels the task.
#[pyclass(frozen)]
struct CancelTask {
    task: ThreadBound<std::cell::RefCell<Option<Task<()>>>>,
}

#[pymethods]
impl CancelTask {
    fn __call__(&self, fut: &Bound<'_, PyAny>) -> PyResult<()> {
        let task = self.task.borrow_mut().take();
        if fut.call_method0("cancelled")?.is_truthy()? {
            if let Some(t) = task {
                t.cancel(None);
            }
        }
        Ok(())
    }
}
