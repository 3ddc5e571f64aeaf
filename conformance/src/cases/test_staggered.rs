//! From CPython's `test_staggered.py` and `test_base_events.py`:
//! `staggered_race` and the address interleaving behind Happy Eyeballs.
//!
//! A losing or abandoned attempt is dropped, not cancelled as a task: where
//! asyncio records `CancelledError` for it, its entry here is `None`, and a
//! drop flag in its future proves it is gone. Start times are loop time,
//! recorded when each attempt is called; an attempt that never finishes
//! awaits a loop future nobody completes.

use std::cell::Cell;
use std::future::Future as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;

use loop_api::events::options::{AddrInfo, Family};
use loop_api::staggered::{interleave_addrinfos, staggered_race, Attempt, RaceOutcome};
use loop_api::tasks::sleep_on;
use loop_api::{Error, EventLoopExt, Loop, Result};

use crate::util::{run_until_done, Log};
use crate::Ctx;

/// Safety net for the cases that run the loop: never how they synchronise.
const NET: f64 = 10.0;

/// Which attempts were called, with the loop time of each call.
type Starts = Log<(usize, f64)>;

/// Attempt `index`: logs its start, then runs `body`.
fn attempt<T, F>(lp: &Loop, starts: &Starts, index: usize, body: F) -> Attempt<T>
where
    T: 'static,
    F: std::future::Future<Output = Result<T>> + 'static,
{
    let (lp, starts) = (lp.clone(), starts.clone());
    Box::new(move || {
        starts.push((index, lp.time()));
        Box::pin(body)
    })
}

/// The indexes of the attempts that were called, in call order.
fn started(starts: &Starts) -> Vec<usize> {
    starts.get().into_iter().map(|(i, _)| i).collect()
}

/// The loop time attempt `index` was called at.
fn start_time(starts: &Starts, index: usize) -> f64 {
    let found = starts.get().into_iter().find(|(i, _)| *i == index);
    found
        .unwrap_or_else(|| panic!("attempt {index} never started"))
        .1
}

/// A future that never completes: a loop future nobody sets.
async fn forever<T: 'static>(lp: Loop) -> Result<T> {
    lp.create_future::<T>().await
}

/// Set when its [`Guard`] is dropped: proves an attempt's future is gone.
#[derive(Clone, Default)]
struct Dropped(Rc<Cell<bool>>);

struct Guard(Rc<Cell<bool>>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

impl Dropped {
    fn guard(&self) -> Guard {
        Guard(self.0.clone())
    }
    fn get(&self) -> bool {
        self.0.get()
    }
}

/// Runs the race in a task until done (with a safety net, so a broken
/// race fails instead of hanging), and returns its outcome.
fn race<T: 'static>(
    lp: &Loop,
    attempts: Vec<Attempt<T>>,
    delay: Option<f64>,
) -> Result<RaceOutcome<T>> {
    let l = lp.clone();
    let task = lp.create_task(async move { staggered_race(&l, attempts, delay).await })?;
    run_until_done(lp, &*task.as_obj(), NET)?;
    task.take_result()
}

/// Fails unless `e` is `Some(ValueError(msg))`.
#[track_caller]
fn expect_value(e: &Option<Error>, msg: &str) {
    match e {
        Some(Error::Value(m)) if m == msg => {}
        other => panic!("expected ValueError({msg:?}), got {other:?}"),
    }
}

/// Whether every entry of `errors` is `None`.
fn no_errors(errors: &[Option<Error>]) -> bool {
    errors.iter().all(Option::is_none)
}

// ----- staggered_race -------------------------------------------------------------

/// `test_empty`: no attempts, no winner, no errors.
pub fn test_empty(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let out = race::<String>(&lp, Vec::new(), None)?;
    assert!(out.winner.is_none());
    assert!(out.errors.is_empty());
    lp.close()
}

/// `test_one_successful`: the first attempt wins at once; the second is
/// never called, and `errors` has an entry for the started one only.
pub fn test_one_successful(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let attempts = vec![
        attempt(&lp, &starts, 0, async { Ok("Res: 0".to_string()) }),
        attempt(&lp, &starts, 1, async { Ok("Res: 1".to_string()) }),
    ];
    let out = race(&lp, attempts, None)?;
    assert_eq!(out.winner, Some(("Res: 0".to_string(), 0)));
    assert_eq!(out.errors.len(), 1);
    assert!(out.errors[0].is_none());
    assert_eq!(started(&starts), [0], "the second attempt was started");
    lp.close()
}

/// `test_first_error_second_successful`: the first fails, so the second
/// starts and wins; the first's error is kept.
pub fn test_first_error_second_successful(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let attempts = vec![
        attempt(&lp, &starts, 0, async { Err(Error::Value("0".into())) }),
        attempt(&lp, &starts, 1, async { Ok("Res: 1".to_string()) }),
    ];
    let out = race(&lp, attempts, None)?;
    assert_eq!(out.winner, Some(("Res: 1".to_string(), 1)));
    assert_eq!(out.errors.len(), 2);
    expect_value(&out.errors[0], "0");
    assert!(out.errors[1].is_none());
    lp.close()
}

/// `test_first_timeout_second_successful`: the first hangs, the second
/// starts `delay` later and wins, and the first is dropped (asyncio:
/// cancelled, `CancelledError` in its slot; here `None`).
pub fn test_first_timeout_second_successful(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let first = Dropped::default();
    let (g, l) = (first.guard(), lp.clone());
    let attempts = vec![
        attempt(&lp, &starts, 0, async move {
            let _g = g;
            forever::<String>(l).await
        }),
        attempt(&lp, &starts, 1, async { Ok("Res: 1".to_string()) }),
    ];
    let out = race(&lp, attempts, Some(0.1))?;
    assert_eq!(out.winner, Some(("Res: 1".to_string(), 1)));
    assert_eq!(out.errors.len(), 2);
    assert!(no_errors(&out.errors), "{:?}", out.errors);
    assert!(first.get(), "the hanging attempt was not dropped");
    let gap = start_time(&starts, 1) - start_time(&starts, 0);
    assert!(
        gap >= 0.1 - 1e-6,
        "the second started {gap}s after the first"
    );
    lp.close()
}

/// `test_none_successful`: every attempt fails, in turn (no delay: one at
/// a time); no winner, and every error in start order.
pub fn test_none_successful(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let attempts: Vec<Attempt<String>> = (0..3)
        .map(|i| {
            attempt(
                &lp,
                &starts,
                i,
                async move { Err(Error::Value(i.to_string())) },
            )
        })
        .collect();
    let out = race(&lp, attempts, None)?;
    assert!(out.winner.is_none());
    assert_eq!(out.errors.len(), 3);
    for (i, e) in out.errors.iter().enumerate() {
        expect_value(e, &i.to_string());
    }
    assert_eq!(started(&starts), [0, 1, 2]);
    lp.close()
}

/// `test_multiple_winners`: the third attempt releases the first two at
/// once; only the first counts, and by the time the race returns, the
/// other two are dropped.
pub fn test_multiple_winners(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let gate = lp.create_future::<()>();
    let (second, third) = (Dropped::default(), Dropped::default());
    let (g0, g1, g2) = (gate.clone(), gate.clone(), gate);
    let (guard1, guard2, l) = (second.guard(), third.guard(), lp.clone());
    let attempts = vec![
        attempt(&lp, &starts, 0, async move {
            (&g0).await?;
            Ok(0)
        }),
        attempt(&lp, &starts, 1, async move {
            let _g = guard1;
            (&g1).await?;
            Ok(1)
        }),
        attempt(&lp, &starts, 2, async move {
            let _g = guard2;
            g2.set_result(())?;
            forever::<i32>(l).await
        }),
    ];
    let l = lp.clone();
    let (s, t) = (second.clone(), third.clone());
    let task = lp.create_task(async move {
        let out = staggered_race(&l, attempts, Some(0.01)).await?;
        // Checked before anything else runs: dropped, not just cancelled.
        Ok((out.winner, out.errors.len(), s.get(), t.get()))
    })?;
    run_until_done(&lp, &*task.as_obj(), NET)?;
    let (winner, errors, second_dropped, third_dropped) = task.take_result()?;
    assert_eq!(winner, Some((0, 0)));
    assert_eq!(errors, 3);
    assert!(second_dropped, "the second winner was not dropped");
    assert!(third_dropped, "the running loser was not dropped");
    assert_eq!(started(&starts), [0, 1, 2]);
    lp.close()
}

/// `test_cancelled`: cancelling the task awaiting the race cancels the
/// race (asyncio's "cancelled 3"), drops the running attempts, and starts
/// no more; it is not taken for the failure of the attempt running then.
pub fn test_cancelled(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let second_running = lp.create_future::<()>();
    let (first, second) = (Dropped::default(), Dropped::default());
    let (g0, g1, running, l0, l1) = (
        first.guard(),
        second.guard(),
        second_running.clone(),
        lp.clone(),
        lp.clone(),
    );
    let attempts = vec![
        attempt(&lp, &starts, 0, async move {
            let _g = g0;
            forever::<i32>(l0).await
        }),
        attempt(&lp, &starts, 1, async move {
            let _g = g1;
            running.set_result(())?;
            forever::<i32>(l1).await
        }),
        attempt(&lp, &starts, 2, async { Ok(2) }),
    ];
    let l = lp.clone();
    let race_cancelled = Rc::new(Cell::new(false));
    let rc = race_cancelled.clone();
    let task = lp.create_task(async move {
        let r = staggered_race(&l, attempts, Some(0.01)).await;
        rc.set(matches!(r, Err(Error::Cancelled(_))));
        r.map(|out| out.winner.map(|(v, _)| v))
    })?;
    run_until_done(&lp, &*second_running.as_obj(), NET)?;
    assert!(task.cancel(Some("outer".into())));
    run_until_done(&lp, &*task.as_obj(), NET)?;
    assert!(race_cancelled.get(), "the race did not return Cancelled");
    assert!(task.cancelled(), "{:?}", task.result());
    assert!(first.get() && second.get(), "running attempts not dropped");
    assert_eq!(
        started(&starts),
        [0, 1],
        "an attempt started after the cancel"
    );
    lp.close()
}

/// No CPython counterpart: dropping the race future itself (Rust's
/// cancellation) drops the running attempt and calls no other.
pub fn test_drop_race_drops_attempts(ctx: &Ctx) -> Result<()> {
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let first = Dropped::default();
    let (g, l0) = (first.guard(), lp.clone());
    let attempts = vec![
        attempt(&lp, &starts, 0, async move {
            let _g = g;
            forever::<i32>(l0).await
        }),
        attempt(&lp, &starts, 1, async { Ok(1) }),
    ];
    let (l, f) = (lp.clone(), first.clone());
    let task = lp.create_task(async move {
        let mut race = Box::pin(staggered_race(&l, attempts, None));
        let polled = std::future::poll_fn(|cx| Poll::Ready(race.as_mut().poll(cx))).await;
        let pending = polled.is_pending();
        let alive_while_pending = !f.get();
        drop(race);
        Ok((pending, alive_while_pending, f.get()))
    })?;
    run_until_done(&lp, &*task.as_obj(), NET)?;
    let (pending, alive_while_pending, dropped) = task.take_result()?;
    assert!(pending, "the race finished with its only runner hanging");
    assert!(alive_while_pending, "the attempt was dropped while racing");
    assert!(dropped, "dropping the race did not drop the attempt");
    assert_eq!(started(&starts), [0]);
    lp.close()
}

/// No CPython counterpart: with every attempt hanging, each starts `delay`
/// after the one before, and the earlier ones keep running (staggered,
/// not sequential) until the last one wins.
pub fn test_delay_staggers_each_start(ctx: &Ctx) -> Result<()> {
    const DELAY: f64 = 0.05;
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let flags: Vec<Dropped> = (0..3).map(|_| Dropped::default()).collect();
    let mut attempts: Vec<Attempt<usize>> = flags
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let (g, l) = (d.guard(), lp.clone());
            attempt(&lp, &starts, i, async move {
                let _g = g;
                forever::<usize>(l).await
            })
        })
        .collect();
    let alive = flags.clone();
    attempts.push(attempt(&lp, &starts, 3, async move {
        Ok(alive.iter().filter(|d| !d.get()).count())
    }));
    let out = race(&lp, attempts, Some(DELAY))?;
    assert_eq!(
        out.winner,
        Some((3, 3)),
        "(alive when the last started, index)"
    );
    assert!(no_errors(&out.errors));
    for i in 1..4 {
        let gap = start_time(&starts, i) - start_time(&starts, i - 1);
        assert!(
            gap >= DELAY - 1e-6,
            "attempt {i} started {gap}s after {}",
            i - 1
        );
    }
    assert!(flags.iter().all(Dropped::get), "losers not dropped");
    lp.close()
}

/// No CPython counterpart: a failure starts the next attempt at once, not
/// when the (much longer) delay runs out.
pub fn test_failure_starts_next_at_once(ctx: &Ctx) -> Result<()> {
    const DELAY: f64 = 5.0;
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let failed_at = Rc::new(Cell::new(f64::NAN));
    let (f, l) = (failed_at.clone(), lp.clone());
    let attempts = vec![
        attempt(&lp, &starts, 0, async move {
            sleep_on(&l, 0.05).await?;
            f.set(l.time());
            Err(Error::Value("0".into()))
        }),
        attempt(&lp, &starts, 1, async { Ok(1) }),
    ];
    let out = race(&lp, attempts, Some(DELAY))?;
    assert_eq!(out.winner, Some((1, 1)));
    expect_value(&out.errors[0], "0");
    let wait = start_time(&starts, 1) - failed_at.get();
    assert!(
        (0.0..DELAY / 10.0).contains(&wait),
        "the next attempt started {wait}s after the failure"
    );
    lp.close()
}

/// No CPython counterpart (asyncio's `previous_failed` event): only the
/// latest attempt's failure starts the next one; an earlier attempt
/// failing leaves the next start to the delay.
pub fn test_earlier_failure_does_not_start_next(ctx: &Ctx) -> Result<()> {
    const DELAY: f64 = 0.05;
    let lp = ctx.new_loop();
    let starts = Starts::new();
    let gate = lp.create_future::<()>();
    let (g0, g1, l) = (gate.clone(), gate, lp.clone());
    let attempts = vec![
        attempt(&lp, &starts, 0, async move {
            (&g0).await?;
            Err(Error::Value("0".into()))
        }),
        attempt(&lp, &starts, 1, async move {
            // Makes attempt 0 fail while this one runs on.
            g1.set_result(())?;
            forever::<usize>(l).await
        }),
        attempt(&lp, &starts, 2, async { Ok(2) }),
    ];
    let out = race(&lp, attempts, Some(DELAY))?;
    assert_eq!(out.winner, Some((2, 2)));
    expect_value(&out.errors[0], "0");
    assert!(out.errors[1].is_none() && out.errors[2].is_none());
    let gap = start_time(&starts, 2) - start_time(&starts, 1);
    assert!(
        gap >= DELAY - 1e-6,
        "attempt 2 started {gap}s after attempt 1"
    );
    lp.close()
}

// ----- _interleave_addrinfos --------------------------------------------------------

fn info(family: Family, addr: &str) -> AddrInfo {
    AddrInfo {
        family,
        socktype: 1,
        proto: 6,
        canonname: String::new(),
        addr: addr.parse::<SocketAddr>().expect("address"),
    }
}

/// Two IPv6 addresses ahead of two IPv4 ones, and a third IPv6 after.
fn v6_first() -> Vec<AddrInfo> {
    vec![
        info(Family::Inet6, "[::1]:1"),
        info(Family::Inet6, "[::2]:1"),
        info(Family::Inet, "10.0.0.1:1"),
        info(Family::Inet, "10.0.0.2:1"),
        info(Family::Inet6, "[::3]:1"),
    ]
}

fn addrs(infos: &[AddrInfo]) -> Vec<String> {
    infos.iter().map(|i| i.addr.to_string()).collect()
}

/// `base_events._interleave_addrinfos` with the default count of 1: the
/// families alternate, the first one seen first; 0 counts as 1.
pub fn test_interleave_addrinfos(_ctx: &Ctx) -> Result<()> {
    let want = ["[::1]:1", "10.0.0.1:1", "[::2]:1", "10.0.0.2:1", "[::3]:1"];
    assert_eq!(addrs(&interleave_addrinfos(v6_first(), 1)), want);
    assert_eq!(addrs(&interleave_addrinfos(v6_first(), 0)), want);
    let v4_first = vec![
        info(Family::Inet, "10.0.0.1:1"),
        info(Family::Inet6, "[::1]:1"),
        info(Family::Inet6, "[::2]:1"),
    ];
    assert_eq!(
        addrs(&interleave_addrinfos(v4_first, 1)),
        ["10.0.0.1:1", "[::1]:1", "[::2]:1"]
    );
    assert!(interleave_addrinfos(Vec::new(), 1).is_empty());
    Ok(())
}

/// `_interleave_addrinfos(infos, 2)`: the first family opens with two
/// addresses, then the families alternate; a count past the first family's
/// size takes all of it first.
pub fn test_interleave_addrinfos_first_family_count(_ctx: &Ctx) -> Result<()> {
    assert_eq!(
        addrs(&interleave_addrinfos(v6_first(), 2)),
        ["[::1]:1", "[::2]:1", "10.0.0.1:1", "[::3]:1", "10.0.0.2:1"]
    );
    assert_eq!(
        addrs(&interleave_addrinfos(v6_first(), 9)),
        ["[::1]:1", "[::2]:1", "[::3]:1", "10.0.0.1:1", "10.0.0.2:1"]
    );
    Ok(())
}

/// `_interleave_addrinfos` with one family: the order is kept, whatever
/// the count.
pub fn test_interleave_addrinfos_single_family(_ctx: &Ctx) -> Result<()> {
    let only_v4: Vec<AddrInfo> = (1..=3)
        .map(|i| info(Family::Inet, &format!("10.0.0.{i}:1")))
        .collect();
    for count in [1, 2, 5] {
        assert_eq!(interleave_addrinfos(only_v4.clone(), count), only_v4);
    }
    Ok(())
}
