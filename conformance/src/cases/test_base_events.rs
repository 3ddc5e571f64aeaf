//! From CPython's `test_base_events.py`: the loop's scheduling core.

use loop_api::{AbstractEventLoop, Result};

use crate::util::Log;
use crate::Ctx;

/// `BaseEventLoopTests.test_call_soon`: callbacks run in the order scheduled.
pub fn test_call_soon_fifo(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let log = Log::new();
    for i in 0..5 {
        let l = log.clone();
        lp.call_soon(Box::new(move || l.push(i)), None)?;
    }
    let l = lp.clone();
    lp.call_soon(Box::new(move || l.stop()), None)?;
    lp.run_forever()?;
    assert_eq!(log.get(), vec![0, 1, 2, 3, 4]);
    lp.close()
}
