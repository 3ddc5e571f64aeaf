//! asyncio's `staggered.staggered_race` and `base_events._interleave_addrinfos`:
//! the machinery behind Happy Eyeballs (RFC 8305) in `create_connection`.
//!
//! # `staggered_race(lp, attempts, delay)`
//! - Attempt 0 starts at once. Attempt `i + 1` starts when attempt `i`
//!   fails, or `delay` seconds after attempt `i` started, whichever comes
//!   first; with `delay` `None`, only when it fails. Only the most recently
//!   started attempt's failure starts the next one.
//! - The first attempt to succeed wins. Every other running attempt is
//!   cancelled by dropping its future (which closes whatever it owned, a
//!   connecting socket say) before the race returns; attempts not yet
//!   started are never called.
//! - [`RaceOutcome::errors`] has one entry per started attempt, in start
//!   order: its error, or `None` if it did not fail (it won, or was still
//!   running when another won). asyncio records `CancelledError` for the
//!   losers; a dropped Rust future has no error to give.
//! - All failing: no winner, every error. No attempts: no winner, no errors.
//! - Cancelling the task awaiting the race makes it return
//!   `Err(Cancelled)`, with every running attempt dropped; dropping the race
//!   drops them too. An attempt's `Err(KeyboardInterrupt)` is not a failure
//!   to record: it ends the race, as asyncio re-raises it.
//!
//! Attempts are polled inline, inside the awaiting task, rather than
//! spawned as tasks: a loser is then dropped at once, not at some later
//! step. The stagger is a loop timer that completes a loop future.
//!
//! # `interleave_addrinfos(infos, first_family_count)`
//! Groups the addresses by family, families in first-seen order, keeping
//! each family's order. The first family's first `first_family_count - 1`
//! addresses lead; then the families take turns, one address each, in
//! first-seen order, until all are used. So the first family opens with
//! `first_family_count` addresses in a row (0 counts as 1).

use std::collections::VecDeque;
use std::future::{Future as _, IntoFuture};
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use crate::events::options::{AddrInfo, Family};
use crate::events::{LocalBoxFuture, Loop};
use crate::exceptions::{Error, Result};
use crate::futures::{Future, Wait};
use crate::TimerHandle;

/// One attempt of a race: called when the attempt starts.
pub type Attempt<T> = Box<dyn FnOnce() -> LocalBoxFuture<'static, Result<T>>>;

/// The outcome of [`staggered_race`].
pub struct RaceOutcome<T> {
    /// The first attempt to succeed: its value and index.
    pub winner: Option<(T, usize)>,
    /// Each started attempt's error, in start order (`None`: it did not fail).
    pub errors: Vec<Option<Error>>,
}

/// Runs `attempts` with staggered starts; see the [module docs](self).
pub async fn staggered_race<T: 'static>(
    lp: &Loop,
    attempts: Vec<Attempt<T>>,
    delay: Option<f64>,
) -> Result<RaceOutcome<T>> {
    let mut race = Race {
        lp: lp.clone(),
        not_started: attempts.into_iter(),
        running: Vec::new(),
        errors: Vec::new(),
        delay,
        stagger: None,
        cancel_probe: Future::new(lp.clone()).into_future(),
    };
    race.start_next()?;
    race.await
}

/// The race's state, polled as one future inside the awaiting task.
struct Race<T> {
    lp: Loop,
    not_started: std::vec::IntoIter<Attempt<T>>,
    /// Started and not yet failed, in start order, with their indexes.
    running: Vec<(usize, LocalBoxFuture<'static, Result<T>>)>,
    errors: Vec<Option<Error>>,
    delay: Option<f64>,
    /// Fires `delay` after the latest start, while attempts remain.
    stagger: Option<Stagger>,
    /// Completed only by cancelling the awaiting task. It is awaited last
    /// in every poll, so it is the future the task's `cancel()` cancels,
    /// not some future inside an attempt (which would read as a failure).
    cancel_probe: Wait<(), true>,
}

/// The timer that starts the next attempt; cancelled when dropped.
struct Stagger {
    timer: TimerHandle,
    fired: Wait<(), true>,
}

impl Drop for Stagger {
    fn drop(&mut self) {
        self.timer.cancel();
    }
}

impl<T: 'static> Race<T> {
    /// Starts the next attempt, if any, and rearms the stagger timer.
    fn start_next(&mut self) -> Result<()> {
        self.stagger = None;
        let Some(attempt) = self.not_started.next() else {
            return Ok(());
        };
        self.running.push((self.errors.len(), attempt()));
        self.errors.push(None);
        if let (Some(delay), true) = (self.delay, self.not_started.len() > 0) {
            let fired = Future::<()>::new(self.lp.clone());
            let setter = fired.clone();
            let timer = self.lp.call_later_dyn(
                delay,
                Box::new(move || {
                    let _ = setter.set_result(());
                }),
                None,
            )?;
            self.stagger = Some(Stagger {
                timer,
                fired: fired.into_future(),
            });
        }
        Ok(())
    }

    /// Polls the running attempts in start order: the first success, or
    /// whether the latest attempt failed.
    fn poll_attempts(&mut self, cx: &mut TaskContext<'_>) -> Result<Option<(T, usize)>> {
        let latest = self.errors.len().wrapping_sub(1);
        let mut latest_failed = false;
        let mut i = 0;
        while i < self.running.len() {
            let (index, fut) = &mut self.running[i];
            match fut.as_mut().poll(cx) {
                Poll::Pending => i += 1,
                Poll::Ready(Ok(v)) => return Ok(Some((v, *index))),
                Poll::Ready(Err(Error::KeyboardInterrupt)) => return Err(Error::KeyboardInterrupt),
                Poll::Ready(Err(e)) => {
                    latest_failed |= *index == latest;
                    self.errors[*index] = Some(e);
                    drop(self.running.remove(i));
                }
            }
        }
        if latest_failed {
            self.start_next()?;
        }
        Ok(None)
    }

    /// True if the stagger timer has fired.
    fn stagger_fired(&mut self, cx: &mut TaskContext<'_>) -> bool {
        match &mut self.stagger {
            Some(s) => Pin::new(&mut s.fired).poll(cx).is_ready(),
            None => false,
        }
    }

    /// Awaits the cancel probe: the error if the awaiting task was cancelled.
    fn poll_cancel_probe(&mut self, cx: &mut TaskContext<'_>) -> Option<Error> {
        match Pin::new(&mut self.cancel_probe).poll(cx) {
            Poll::Ready(Err(e)) => Some(e),
            _ => None,
        }
    }

    fn finish(&mut self, winner: Option<(T, usize)>) -> Poll<Result<RaceOutcome<T>>> {
        self.abandon();
        Poll::Ready(Ok(RaceOutcome {
            winner,
            errors: std::mem::take(&mut self.errors),
        }))
    }

    fn fail(&mut self, e: Error) -> Poll<Result<RaceOutcome<T>>> {
        self.abandon();
        Poll::Ready(Err(e))
    }

    /// Drops every running attempt and the timer.
    fn abandon(&mut self) {
        self.running.clear();
        self.stagger = None;
    }
}

impl<T: 'static> std::future::Future for Race<T> {
    type Output = Result<RaceOutcome<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(e) = this.poll_cancel_probe(cx) {
            return this.fail(e);
        }
        loop {
            let started = this.errors.len();
            match this.poll_attempts(cx) {
                Ok(Some(winner)) => return this.finish(Some(winner)),
                Ok(None) => {}
                Err(e) => return this.fail(e),
            }
            if this.errors.len() == started && this.stagger_fired(cx) {
                if let Err(e) = this.start_next() {
                    return this.fail(e);
                }
            }
            if this.errors.len() == started {
                break;
            }
            // A new attempt started: poll it, and the timer rearmed for it.
        }
        if this.running.is_empty() && this.not_started.len() == 0 {
            return this.finish(None);
        }
        // Last, so that the task's fut_waiter is the probe.
        match this.poll_cancel_probe(cx) {
            Some(e) => this.fail(e),
            None => Poll::Pending,
        }
    }
}

/// asyncio's `_interleave_addrinfos`; see the [module docs](self).
pub fn interleave_addrinfos(infos: Vec<AddrInfo>, first_family_count: usize) -> Vec<AddrInfo> {
    let mut by_family: Vec<(Family, VecDeque<AddrInfo>)> = Vec::new();
    for info in infos {
        match by_family.iter_mut().find(|(f, _)| *f == info.family) {
            Some((_, group)) => group.push_back(info),
            None => by_family.push((info.family, VecDeque::from([info]))),
        }
    }
    let mut out = Vec::new();
    if let Some((_, first)) = by_family.first_mut() {
        let lead = first_family_count.saturating_sub(1).min(first.len());
        out.extend(first.drain(..lead));
    }
    while by_family.iter().any(|(_, g)| !g.is_empty()) {
        for (_, group) in &mut by_family {
            out.extend(group.pop_front());
        }
    }
    out
}
