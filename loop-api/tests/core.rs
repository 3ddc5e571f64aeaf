//! The generic core on the test loop: scheduling, timers, stopping,
//! tasks and errors, in virtual time, with no OS underneath. Each test
//! also checks that it took no real time to speak of: a timer that slept
//! for real would show.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use loop_api::events::{ExceptionContext, ExceptionHandler};
use loop_api::test_utils::{new_test_loop, TestEventLoop};
use loop_api::{sleep, AbstractEventLoop, Error, EventLoopExt, Loop};

/// A log the callbacks append to.
#[derive(Clone, Default)]
struct Log<T>(Rc<RefCell<Vec<T>>>);

impl<T: Clone> Log<T> {
    fn push(&self, v: T) {
        self.0.borrow_mut().push(v);
    }
    fn get(&self) -> Vec<T> {
        self.0.borrow().clone()
    }
}

/// Runs `body` on a fresh test loop and checks it took under a second of
/// real time, whatever loop time went by.
fn quick(body: impl FnOnce(Rc<TestEventLoop>)) {
    let t0 = Instant::now();
    let lp = new_test_loop();
    body(lp.clone());
    lp.close().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?} of real time",
        t0.elapsed()
    );
}

fn stopper(lp: &Rc<TestEventLoop>) -> Box<dyn FnOnce()> {
    let l = lp.clone();
    Box::new(move || l.stop())
}

#[test]
fn the_clock_starts_at_zero_and_moves_only_when_the_loop_would_block() {
    quick(|lp| {
        assert_eq!(lp.time(), 0.0);
        // Ready callbacks: the loop does not wait, the clock stays.
        let times = Log::default();
        for _ in 0..3 {
            let (t, l) = (times.clone(), lp.clone());
            lp.call_soon_dyn(Box::new(move || t.push(l.time())), None)
                .unwrap();
        }
        lp.call_soon_dyn(stopper(&lp), None).unwrap();
        lp.run_forever().unwrap();
        assert_eq!(times.get(), [0.0, 0.0, 0.0]);
        assert_eq!(lp.time(), 0.0);
    });
}

#[test]
fn timers_fire_in_deadline_order_exactly_at_their_deadlines() {
    quick(|lp| {
        let fired = Log::default();
        for delay in [3600.0, 0.25, 86_400.0 * 3.0, 1.5, 0.1] {
            let (f, l) = (fired.clone(), lp.clone());
            lp.call_later_dyn(delay, Box::new(move || f.push((delay, l.time()))), None)
                .unwrap();
        }
        lp.call_later_dyn(86_400.0 * 3.0 + 1.0, stopper(&lp), None)
            .unwrap();
        lp.run_forever().unwrap();
        let fired = fired.get();
        let order: Vec<f64> = fired.iter().map(|(d, _)| *d).collect();
        assert_eq!(order, [0.1, 0.25, 1.5, 3600.0, 86_400.0 * 3.0]);
        for (delay, at) in fired {
            assert_eq!(at, delay, "a timer due at {delay} ran at {at}");
        }
        assert_eq!(lp.time(), 86_400.0 * 3.0 + 1.0);
    });
}

#[test]
fn same_deadline_runs_in_scheduling_order_after_ready_callbacks() {
    quick(|lp| {
        let log = Log::default();
        for i in 0..5 {
            let l = log.clone();
            lp.call_at_dyn(10.0, Box::new(move || l.push(format!("at{i}"))), None)
                .unwrap();
        }
        let l = log.clone();
        lp.call_soon_dyn(Box::new(move || l.push("soon".to_string())), None)
            .unwrap();
        lp.call_at_dyn(10.0, stopper(&lp), None).unwrap();
        lp.run_forever().unwrap();
        assert_eq!(log.get(), ["soon", "at0", "at1", "at2", "at3", "at4"]);
    });
}

#[test]
fn a_cancelled_timer_never_runs_and_does_not_move_the_clock_to_it() {
    quick(|lp| {
        let log = Log::default();
        let l = log.clone();
        let h = lp
            .call_later_dyn(5.0, Box::new(move || l.push("cancelled")), None)
            .unwrap();
        h.cancel();
        lp.call_later_dyn(1.0, stopper(&lp), None).unwrap();
        lp.run_forever().unwrap();
        assert!(log.get().is_empty());
        assert_eq!(lp.time(), 1.0);
        // Many cancelled timers are purged, not waited for.
        let handles: Vec<_> = (0..500)
            .map(|i| {
                lp.call_later_dyn(100.0 + f64::from(i), Box::new(|| {}), None)
                    .unwrap()
            })
            .collect();
        for h in &handles {
            h.cancel();
        }
        lp.call_later_dyn(2.0, stopper(&lp), None).unwrap();
        lp.run_forever().unwrap();
        assert_eq!(lp.time(), 3.0);
    });
}

#[test]
fn stop_finishes_the_current_iteration() {
    quick(|lp| {
        let log = Log::default();
        let (l1, l2, l3) = (log.clone(), log.clone(), log.clone());
        let lp2 = lp.clone();
        lp.call_soon_dyn(
            Box::new(move || {
                l1.push(1);
                lp2.stop();
                // Scheduled now: runs in the next iteration, after the stop.
                let l = l3.clone();
                lp2.call_soon_dyn(Box::new(move || l.push(3)), None)
                    .unwrap();
            }),
            None,
        )
        .unwrap();
        lp.call_soon_dyn(Box::new(move || l2.push(2)), None)
            .unwrap();
        lp.run_forever().unwrap();
        assert_eq!(log.get(), [1, 2]);
        lp.call_soon_dyn(stopper(&lp), None).unwrap();
        lp.run_forever().unwrap();
        assert_eq!(log.get(), [1, 2, 3]);
    });
}

#[test]
fn tasks_sleep_in_virtual_time() {
    quick(|lp| {
        let order = Log::default();
        let (o1, o2) = (order.clone(), order.clone());
        let slow = lp
            .create_task(async move {
                sleep(7200.0).await?;
                o1.push("slow");
                Ok(loop_api::get_running_loop()?.time())
            })
            .unwrap();
        let fast = lp
            .create_task(async move {
                sleep(0.5).await?;
                o2.push("fast");
                Ok(loop_api::get_running_loop()?.time())
            })
            .unwrap();
        assert_eq!(lp.run_until_complete(slow).unwrap(), 7200.0);
        assert_eq!(lp.run_until_complete(fast).unwrap(), 0.5);
        assert_eq!(order.get(), ["fast", "slow"]);
    });
}

#[test]
fn advance_moves_time_by_hand() {
    quick(|lp| {
        let fired = Log::default();
        let f = fired.clone();
        lp.call_later_dyn(10.0, Box::new(move || f.push(())), None)
            .unwrap();
        lp.with_driver(|d| d.advance(10.0));
        assert_eq!(lp.time(), 10.0);
        // Due already: it runs in the next iteration without moving time.
        lp.call_soon_dyn(stopper(&lp), None).unwrap();
        lp.run_forever().unwrap();
        assert_eq!(fired.get().len(), 1);
        assert_eq!(lp.time(), 10.0);
    });
}

#[test]
fn a_panicking_callback_goes_to_the_exception_handler_and_the_loop_goes_on() {
    quick(|lp| {
        let seen = Log::default();
        let s = seen.clone();
        let handler: ExceptionHandler =
            Rc::new(move |_lp, ctx: &ExceptionContext| s.push(ctx.message.clone()));
        lp.set_exception_handler(Some(handler));
        lp.call_later_dyn(1.0, Box::new(|| panic!("boom")), None)
            .unwrap();
        let after = Log::default();
        let a = after.clone();
        lp.call_later_dyn(2.0, Box::new(move || a.push(())), None)
            .unwrap();
        lp.call_later_dyn(3.0, stopper(&lp), None).unwrap();
        lp.run_forever().unwrap();
        assert_eq!(seen.get().len(), 1);
        assert!(
            seen.get()[0].starts_with("Exception in callback"),
            "{:?}",
            seen.get()
        );
        assert_eq!(after.get().len(), 1, "the loop went on");
    });
}

#[test]
fn with_nothing_scheduled_the_loop_waits_for_other_threads() {
    quick(|lp| {
        let remote = lp.remote();
        let got = Log::default();
        let g = got.clone();
        let l = lp.clone();
        // Nothing scheduled: the loop blocks (for real) until the thread
        // calls in, and the clock does not move meanwhile.
        lp.call_soon_dyn(
            Box::new(move || {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    remote.stop().unwrap();
                });
                g.push(l.time());
            }),
            None,
        )
        .unwrap();
        lp.run_forever().unwrap();
        assert_eq!(got.get(), [0.0]);
        assert_eq!(lp.time(), 0.0);
    });
}

#[test]
fn the_executor_result_arrives_through_the_wakeup() {
    quick(|lp| {
        let fut = lp.run_in_executor(None, || 6 * 7).unwrap();
        assert_eq!(lp.run_until_complete(fut).unwrap(), 42);
        assert_eq!(lp.time(), 0.0);
        lp.run_until_complete(lp.shutdown_default_executor(None))
            .unwrap();
    });
}

#[test]
fn readiness_is_not_supported() {
    quick(|lp| {
        let err = lp.add_reader_dyn(0, Box::new(|| {})).unwrap_err();
        assert!(matches!(err, Error::NotSupported { .. }), "{err}");
        // The loop is still usable.
        lp.call_later_dyn(1.0, stopper(&lp), None).unwrap();
        lp.run_forever().unwrap();
        let as_dyn: Loop = lp.clone();
        assert_eq!(as_dyn.backend_name(), "test");
    });
}
