//! Micro-benchmarks of the loop core (select backend), side by side with
//! tokio's current-thread runtime in the same process.
//!
//! Run: `cargo run --release -p backend-select --example core_bench`
//! (`-- --quick` for fewer repetitions, `-- --only NAME` for one workload,
//! `-- --reps R`, `-- --scale F` to multiply every N, e.g. under valgrind).
//!
//! Every workload runs `REPS` times, ours and the comparison alternating,
//! and the table shows the median ops/s of each. Workloads 1-4 run on one
//! thread and are timed with that thread's CPU clock (user + system time,
//! so the select loop's per-iteration syscalls count; time the thread spent
//! preempted by other processes does not, which keeps a shared 2-core
//! machine's noise out). Workload 5 needs two threads and is timed by the
//! wall clock. What is compared:
//!
//! 1. `call_soon batch`: N `call_soon` (the generic one a Rust caller
//!    uses, each returning its `Handle`) then one iteration (`stop()`
//!    before `run_forever()`), against pushing and popping the same N
//!    closures boxed on a `VecDeque<Box<dyn FnOnce()>>` and calling them. Once
//!    with all N = 1M in one batch (as asked: 1M live handles, so page
//!    faults and cache misses weigh), and once as 1000 batches of 1000
//!    (steady state: the allocator reuses memory). A tokio
//!    row (N `spawn_local` on a `LocalSet`, run to completion) is shown for
//!    information.
//! 2. `call_soon chain`: each callback schedules the next, N times, so N
//!    loop iterations; against a chain of N `spawn_local` (each task spawns
//!    the next). Also a task that yields N times (`tasks::yield_now`, i.e.
//!    `await asyncio.sleep(0)`) against `tokio::task::yield_now` in a
//!    `spawn_local` task.
//! 3. `call_later timers`: N timers with deadlines spread (shuffled) over a
//!    5 ms window that starts after a lead long enough for every timer to be
//!    registered while still pending; all fire (and: 90% cancelled before
//!    the deadlines, the rest fire). Tokio: one `spawn_local` task per timer
//!    awaiting `sleep_until(deadline)`, polled once (timer registered)
//!    before 90% are `abort()`ed. The loop idles through the lead, which
//!    the CPU clock does not count.
//! 4. `create_task + await`: a task creates a task and awaits it, N times;
//!    against `spawn_local(..).await` (JoinHandle) inside a `spawn_local`
//!    task.
//!    And with `eager_start` (asyncio 3.12's `eager_task_factory`, 3.14's
//!    `create_task(eager_start=True)`): the task's first step runs inside
//!    `create_task`, so one that finishes without suspending costs no
//!    loop iteration, and awaiting it none either.
//! 5. `call_soon_threadsafe`: a second thread makes N calls into the running
//!    loop; ops/s from the first call until the last callback has run.
//!    Tokio: the same with `Handle::spawn` of a task per call, and with an
//!    unbounded `mpsc` of boxed closures received and called by a task (the
//!    closer equivalent, and the faster: the target is meant against it).

use std::cell::{Cell, OnceCell};
use std::collections::VecDeque;
use std::future::Future as _;
use std::hint::black_box;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::task::Poll;
use std::time::{Duration, Instant};

use backend_select::SelectEventLoop;
use loop_api::tasks::yield_now;
use loop_api::{AbstractEventLoop, EventLoopExt};

const REPS: usize = 7;

thread_local! {
    static COUNT: Cell<usize> = const { Cell::new(0) };
    static SUM: Cell<usize> = const { Cell::new(0) };
    static LP: OnceCell<Rc<SelectEventLoop>> = const { OnceCell::new() };
    static START: Cell<Option<Instant>> = const { Cell::new(None) };
    static END: Cell<Option<Instant>> = const { Cell::new(None) };
}

static TOKIO_DONE: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The work every callback does: count, and consume its captured value.
#[inline(always)]
fn bump(v: usize) -> usize {
    SUM.with(|s| s.set(s.get().wrapping_add(black_box(v))));
    COUNT.with(|c| {
        let n = c.get() + 1;
        c.set(n);
        n
    })
}

fn reset_count() {
    COUNT.with(|c| c.set(0));
}

fn count() -> usize {
    COUNT.with(|c| c.get())
}

fn lp() -> Rc<SelectEventLoop> {
    LP.with(|l| {
        l.get_or_init(|| backend_select::new_event_loop().expect("loop"))
            .clone()
    })
}

fn with_lp<R>(f: impl FnOnce(&SelectEventLoop) -> R) -> R {
    LP.with(|l| f(l.get().expect("loop made")))
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// CPU time used by this thread so far.
#[cfg(unix)]
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is
    // supported on every Unix this backend targets.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(not(unix))]
fn thread_cpu() -> Duration {
    // No per-thread CPU clock in std: wall time (timer rows then include the lead).
    static T0: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    T0.elapsed()
}

/// One measurement: operations done and the time they took.
type Sample = (usize, Duration);

fn ops_per_sec((n, d): Sample) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[derive(Clone, Copy)]
enum Target {
    None,
    /// Ours may cost at most this many times the comparison.
    CostAtMost(f64),
    /// Ours does at least as many ops/s.
    AtLeast,
    /// Ours does more ops/s.
    Faster,
}

struct Row {
    name: String,
    other_label: &'static str,
    ours: f64,
    other: f64,
    target: Target,
    spread: (f64, f64),
    ms: f64,
}

/// Runs `ours` and `other` `reps` times, alternating; median ops/s of each.
fn pair(
    reps: usize,
    mut ours: impl FnMut() -> Sample,
    mut other: impl FnMut() -> Sample,
) -> (f64, f64, (f64, f64), f64) {
    // One warm-up each (allocator, page faults, queue capacities).
    ours();
    other();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let mut ms = 0.0f64;
    for _ in 0..reps {
        let s = ours();
        ms = ms.max(s.1.as_secs_f64() * 1e3);
        a.push(ops_per_sec(s));
        // The comparison gets a warm-up of its own right before each
        // sample, so that it does not inherit our heap: after a 1M batch
        // glibc holds a million freed chunks of our size, and its first
        // allocation of another size pays for consolidating them. (Ours
        // runs after the comparison's sample, as it always did.)
        other();
        let s = other();
        ms = ms.max(s.1.as_secs_f64() * 1e3);
        b.push(ops_per_sec(s));
    }
    // Spread of ours: (min/median, max/median).
    let m = median(a.clone());
    let lo = a.iter().cloned().fold(f64::INFINITY, f64::min) / m;
    let hi = a.iter().cloned().fold(0.0, f64::max) / m;
    (m, median(b), (lo, hi), ms)
}

// ----- 1. call_soon batch -------------------------------------------------------

/// `n` callbacks in batches of `batch`: each batch is scheduled, then run by
/// one iteration (`stop()` before `run_forever()`).
fn ours_batch(n: usize, batch: usize) -> Sample {
    let lp = lp();
    reset_count();
    let t0 = thread_cpu();
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        for i in i..end {
            let h = lp.call_soon(move || {
                bump(i);
            });
            black_box(h.expect("call_soon"));
        }
        lp.stop();
        lp.run_forever().expect("run");
        i = end;
    }
    let dt = thread_cpu() - t0;
    assert_eq!(count(), n);
    (n, dt)
}

/// The same closures through a plain `VecDeque<Box<dyn FnOnce()>>`.
fn baseline_batch(n: usize, batch: usize, q: &mut VecDeque<Box<dyn FnOnce()>>) -> Sample {
    reset_count();
    let t0 = thread_cpu();
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        for i in i..end {
            q.push_back(Box::new(move || {
                bump(i);
            }));
        }
        let q = black_box(&mut *q);
        while let Some(f) = q.pop_front() {
            f();
        }
        i = end;
    }
    let dt = thread_cpu() - t0;
    assert_eq!(count(), n);
    (n, dt)
}

fn tokio_batch(n: usize, rt: &tokio::runtime::Runtime) -> Sample {
    reset_count();
    let local = tokio::task::LocalSet::new();
    let t0 = thread_cpu();
    local.block_on(rt, async {
        for i in 0..n {
            drop(tokio::task::spawn_local(async move {
                if bump(i) == n {
                    TOKIO_DONE.notify_one();
                }
            }));
        }
        TOKIO_DONE.notified().await;
    });
    let dt = thread_cpu() - t0;
    assert_eq!(count(), n);
    (n, dt)
}

// ----- 2. chains ----------------------------------------------------------------------

fn chain_cb(left: usize) -> impl FnOnce() {
    move || {
        bump(left);
        with_lp(|lp| {
            if left == 0 {
                lp.stop();
            } else {
                lp.call_soon(chain_cb(left - 1)).expect("call_soon");
            }
        });
    }
}

fn ours_chain(n: usize) -> Sample {
    let lp = lp();
    reset_count();
    let t0 = thread_cpu();
    lp.call_soon(chain_cb(n - 1)).expect("call_soon");
    lp.run_forever().expect("run");
    let dt = thread_cpu() - t0;
    assert_eq!(count(), n);
    (n, dt)
}

fn tokio_chain_spawn(left: usize) {
    drop(tokio::task::spawn_local(async move {
        bump(left);
        if left == 0 {
            TOKIO_DONE.notify_one();
        } else {
            tokio_chain_spawn(left - 1);
        }
    }));
}

fn tokio_chain(n: usize, rt: &tokio::runtime::Runtime) -> Sample {
    reset_count();
    let local = tokio::task::LocalSet::new();
    let t0 = thread_cpu();
    local.block_on(rt, async {
        tokio_chain_spawn(n - 1);
        TOKIO_DONE.notified().await;
    });
    let dt = thread_cpu() - t0;
    assert_eq!(count(), n);
    (n, dt)
}

fn ours_yield(n: usize) -> Sample {
    let lp = lp();
    let t0 = thread_cpu();
    lp.run_until_complete(async move {
        for i in 0..n {
            black_box(i);
            yield_now().await;
        }
        Ok(())
    })
    .expect("run");
    (n, thread_cpu() - t0)
}

fn tokio_yield(n: usize, rt: &tokio::runtime::Runtime) -> Sample {
    let local = tokio::task::LocalSet::new();
    let t0 = thread_cpu();
    local.block_on(rt, async {
        tokio::task::spawn_local(async move {
            for i in 0..n {
                black_box(i);
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("join");
    });
    (n, thread_cpu() - t0)
}

// ----- 3. timers ------------------------------------------------------------------------

/// A fixed pseudo-random permutation of 0..n (deadline order != schedule order).
fn shuffled(n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..n).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

const TIMER_WINDOW: f64 = 0.005;

/// How long scheduling may take at most before the first deadline.
fn timer_lead(n: usize) -> f64 {
    0.05 + n as f64 * 1.5e-6
}

fn timer_cb(target: usize) -> Box<dyn FnOnce()> {
    Box::new(move || {
        if bump(target) == target {
            END.with(|e| e.set(Some(Instant::now())));
            with_lp(|lp| lp.stop());
        }
    })
}

/// Ours: N timers, `cancel_pct`% of them cancelled before they are due.
fn ours_timers(n: usize, order: &[usize], cancel: bool, late: &AtomicBool) -> Sample {
    let lp = lp();
    reset_count();
    let expected = if cancel { n.div_ceil(10) } else { n };
    let lead = timer_lead(n);
    let cpu0 = thread_cpu();
    let base = lp.time() + lead;
    let mut handles = Vec::with_capacity(if cancel { n } else { 0 });
    for &k in order {
        let when = base + TIMER_WINDOW * k as f64 / n as f64;
        let h = lp
            .call_at_dyn(when, timer_cb(expected), None)
            .expect("call_at");
        if cancel {
            handles.push(h);
        }
    }
    for (i, h) in handles.iter().enumerate() {
        if i % 10 != 0 {
            h.cancel();
        }
    }
    if lp.time() >= base {
        late.store(true, Ordering::Relaxed);
    }
    drop(handles);
    lp.run_forever().expect("run");
    let cpu = thread_cpu() - cpu0;
    assert_eq!(count(), expected);
    (n, cpu)
}

fn tokio_timers(
    n: usize,
    order: &[usize],
    cancel: bool,
    rt: &tokio::runtime::Runtime,
    late: &AtomicBool,
) -> Sample {
    reset_count();
    let expected = if cancel { n.div_ceil(10) } else { n };
    let lead = Duration::from_secs_f64(timer_lead(n));
    let local = tokio::task::LocalSet::new();
    let registered = Rc::new(Cell::new(0usize));
    let cpu0 = thread_cpu();
    local.block_on(rt, async {
        let base = tokio::time::Instant::now() + lead;
        let mut handles = Vec::with_capacity(if cancel { n } else { 0 });
        for &k in order {
            let deadline = base + Duration::from_secs_f64(TIMER_WINDOW * k as f64 / n as f64);
            let registered = registered.clone();
            let h = tokio::task::spawn_local(async move {
                let mut sleep = pin!(tokio::time::sleep_until(deadline));
                // Register the timer on the first poll, as call_at does at once.
                std::future::poll_fn(|cx| {
                    let _ = sleep.as_mut().poll(cx);
                    Poll::Ready(())
                })
                .await;
                registered.set(registered.get() + 1);
                sleep.await;
                if bump(k) == expected {
                    TOKIO_DONE.notify_one();
                }
            });
            if cancel {
                handles.push(h);
            }
        }
        // Let every task register its timer before cancelling.
        while registered.get() < n {
            tokio::task::yield_now().await;
        }
        for (i, h) in handles.iter().enumerate() {
            if i % 10 != 0 {
                h.abort();
            }
        }
        if tokio::time::Instant::now() >= base {
            late.store(true, Ordering::Relaxed);
        }
        drop(handles);
        TOKIO_DONE.notified().await;
    });
    let cpu = thread_cpu() - cpu0;
    assert_eq!(count(), expected);
    (n, cpu)
}

// ----- 4. create_task + await ---------------------------------------------------------

/// A task creates a task and awaits it, `n` times. With `eager` set
/// (asyncio 3.12's eager task factory, 3.14's `eager_start=True`),
/// `create_task` runs the task's first step at once, so a task that
/// finishes without suspending is done when `create_task` returns and
/// awaiting it does not suspend the awaiter.
fn ours_tasks(n: usize, eager: bool) -> Sample {
    let lp = lp();
    let t0 = thread_cpu();
    let sum = lp
        .run_until_complete(async move {
            let mut sum = 0usize;
            for i in 0..n {
                let options = loop_api::tasks::TaskOptions {
                    eager_start: eager,
                    ..Default::default()
                };
                let t =
                    with_lp(|lp| lp.create_task_with(async move { Ok(black_box(i)) }, options))?;
                sum = sum.wrapping_add(t.await?);
            }
            Ok(sum)
        })
        .expect("run");
    let dt = thread_cpu() - t0;
    assert_eq!(sum, (0..n).sum::<usize>());
    (n, dt)
}

fn tokio_tasks(n: usize, rt: &tokio::runtime::Runtime) -> Sample {
    let local = tokio::task::LocalSet::new();
    let t0 = thread_cpu();
    let sum = local.block_on(rt, async {
        tokio::task::spawn_local(async move {
            let mut sum = 0usize;
            for i in 0..n {
                let h = tokio::task::spawn_local(async move { black_box(i) });
                sum = sum.wrapping_add(h.await.expect("join"));
            }
            sum
        })
        .await
        .expect("join")
    });
    let dt = thread_cpu() - t0;
    assert_eq!(sum, (0..n).sum::<usize>());
    (n, dt)
}

// ----- 5. call_soon_threadsafe ------------------------------------------------------------

fn ours_threadsafe(n: usize) -> Sample {
    let lp = lp();
    reset_count();
    let remote = lp.remote();
    let go = Arc::new(Barrier::new(2));
    let go2 = go.clone();
    let sender = std::thread::spawn(move || {
        go2.wait();
        for i in 0..n {
            remote
                .call_soon_threadsafe(move || {
                    if bump(i) == n {
                        END.with(|e| e.set(Some(Instant::now())));
                        with_lp(|lp| lp.stop());
                    }
                })
                .expect("call_soon_threadsafe");
        }
    });
    lp.call_soon_dyn(
        Box::new(move || {
            go.wait();
            START.with(|s| s.set(Some(Instant::now())));
        }),
        None,
    )
    .expect("call_soon");
    lp.run_forever().expect("run");
    sender.join().expect("sender");
    assert_eq!(count(), n);
    let dt = END.with(|e| e.get()).unwrap() - START.with(|s| s.get()).unwrap();
    (n, dt)
}

fn tokio_threadsafe_spawn(n: usize, rt: &tokio::runtime::Runtime) -> Sample {
    reset_count();
    let handle = rt.handle().clone();
    let go = Arc::new(Barrier::new(2));
    let go2 = go.clone();
    let sender = std::thread::spawn(move || {
        go2.wait();
        for i in 0..n {
            drop(handle.spawn(async move {
                if bump(i) == n {
                    END.with(|e| e.set(Some(Instant::now())));
                    TOKIO_DONE.notify_one();
                }
            }));
        }
    });
    rt.block_on(async {
        go.wait();
        START.with(|s| s.set(Some(Instant::now())));
        TOKIO_DONE.notified().await;
    });
    sender.join().expect("sender");
    assert_eq!(count(), n);
    let dt = END.with(|e| e.get()).unwrap() - START.with(|s| s.get()).unwrap();
    (n, dt)
}

type SendCb = Box<dyn FnOnce() + Send>;

fn tokio_threadsafe_mpsc(n: usize, rt: &tokio::runtime::Runtime) -> Sample {
    reset_count();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<SendCb>();
    let go = Arc::new(Barrier::new(2));
    let go2 = go.clone();
    let sender = std::thread::spawn(move || {
        go2.wait();
        for i in 0..n {
            let sent = tx.send(Box::new(move || {
                if bump(i) == n {
                    END.with(|e| e.set(Some(Instant::now())));
                }
            }));
            assert!(sent.is_ok(), "receiver dropped");
        }
    });
    rt.block_on(async {
        go.wait();
        START.with(|s| s.set(Some(Instant::now())));
        while let Some(f) = rx.recv().await {
            f();
            if count() == n {
                break;
            }
        }
    });
    sender.join().expect("sender");
    assert_eq!(count(), n);
    let dt = END.with(|e| e.get()).unwrap() - START.with(|s| s.get()).unwrap();
    (n, dt)
}

// ----- the table --------------------------------------------------------------------------

fn fmt_ops(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else {
        format!("{:.1} k/s", x / 1e3)
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<34} | {:>11} | {:>11} {:<9} | {:>6} | {:<16} | {:<4} | {:>11} | {:>7}",
        "workload", "ours", "other", "(what)", "ratio", "target", "met?", "ours spread", "max ms"
    );
    println!("{}", "-".repeat(135));
    for r in rows {
        let ratio = r.ours / r.other;
        let (target, met) = match r.target {
            Target::None => ("-".to_string(), "-"),
            Target::CostAtMost(x) => (
                format!("cost <= {x:.1}x"),
                if ratio >= 1.0 / x { "yes" } else { "NO" },
            ),
            Target::AtLeast => (
                ">= other".to_string(),
                if ratio >= 1.0 { "yes" } else { "NO" },
            ),
            Target::Faster => (
                "> other".to_string(),
                if ratio > 1.0 { "yes" } else { "NO" },
            ),
        };
        println!(
            "{:<34} | {:>11} | {:>11} {:<9} | {:>5.2}x | {:<16} | {:<4} | {:>4.2}-{:<4.2}x | {:>7.1}",
            r.name,
            fmt_ops(r.ours),
            fmt_ops(r.other),
            r.other_label,
            ratio,
            target,
            met,
            r.spread.0,
            r.spread.1,
            r.ms
        );
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let mut reps = if args.iter().any(|a| a == "--quick") {
        3
    } else {
        REPS
    };
    if let Some(r) = arg("--reps") {
        reps = r.parse().expect("--reps N");
    }
    // --scale F multiplies every N (for profiling under valgrind).
    let scale: f64 = arg("--scale").map_or(1.0, |s| s.parse().expect("--scale F"));
    let sized = |n: usize| ((n as f64 * scale) as usize).max(10);
    let only = arg("--only");
    let want = |name: &str| only.as_deref().is_none_or(|o| name.contains(o));

    let rt = tokio_rt();
    let _ = lp();
    println!(
        "core_bench: {reps} reps each, median ops/s; ratio = ours / other (higher is better for us)\n\
         rows 1-4: ops per second of loop-thread CPU time (user+sys); row 5: wall clock"
    );
    println!("load average before: {}", loadavg());
    let mut rows = Vec::new();
    let mut push = |name: &str,
                    other_label: &'static str,
                    target: Target,
                    (ours, other, spread, ms): (f64, f64, (f64, f64), f64)| {
        rows.push(Row {
            name: name.to_string(),
            other_label,
            ours,
            other,
            target,
            spread,
            ms,
        });
    };

    if want("batch") {
        let n = sized(1_000_000);
        let mut q: VecDeque<Box<dyn FnOnce()>> = VecDeque::with_capacity(n);
        push(
            &format!("1 call_soon batch N={n} x1"),
            "baseline",
            Target::CostAtMost(2.0),
            pair(reps, || ours_batch(n, n), || baseline_batch(n, n, &mut q)),
        );
        let b = 1000;
        push(
            &format!("1 call_soon batch {b} x{}", n / b),
            "baseline",
            Target::CostAtMost(2.0),
            pair(reps, || ours_batch(n, b), || baseline_batch(n, b, &mut q)),
        );
        push(
            &format!("1 call_soon batch N={n} x1"),
            "tokio",
            Target::None,
            pair(reps, || ours_batch(n, n), || tokio_batch(n, &rt)),
        );
    }
    if want("chain") {
        let n = sized(200_000);
        push(
            &format!("2 call_soon chain N={n}"),
            "tokio",
            Target::None,
            pair(reps, || ours_chain(n), || tokio_chain(n, &rt)),
        );
    }
    if want("yield") {
        let n = sized(200_000);
        push(
            &format!("2b task yields N={n}"),
            "tokio",
            Target::None,
            pair(reps, || ours_yield(n), || tokio_yield(n, &rt)),
        );
    }
    let late = AtomicBool::new(false);
    if want("timers") {
        let n = sized(200_000);
        let order = shuffled(n);
        push(
            &format!("3 call_later all fire N={n}"),
            "tokio",
            Target::AtLeast,
            pair(
                reps,
                || ours_timers(n, &order, false, &late),
                || tokio_timers(n, &order, false, &rt, &late),
            ),
        );
        push(
            &format!("3 call_later 90% cancel N={n}"),
            "tokio",
            Target::AtLeast,
            pair(
                reps,
                || ours_timers(n, &order, true, &late),
                || tokio_timers(n, &order, true, &rt, &late),
            ),
        );
    }
    if want("task") {
        let n = sized(100_000);
        push(
            &format!("4 create_task + await N={n}"),
            "tokio",
            Target::Faster,
            pair(reps, || ours_tasks(n, false), || tokio_tasks(n, &rt)),
        );
        push(
            &format!("4 create_task eager + await N={n}"),
            "tokio",
            Target::Faster,
            pair(reps, || ours_tasks(n, true), || tokio_tasks(n, &rt)),
        );
    }
    if want("threadsafe") {
        let n = sized(500_000);
        push(
            &format!("5 call_soon_threadsafe N={n}"),
            "spawn",
            Target::AtLeast,
            pair(
                reps,
                || ours_threadsafe(n),
                || tokio_threadsafe_spawn(n, &rt),
            ),
        );
        push(
            &format!("5 call_soon_threadsafe N={n}"),
            "mpsc",
            Target::AtLeast,
            pair(
                reps,
                || ours_threadsafe(n),
                || tokio_threadsafe_mpsc(n, &rt),
            ),
        );
    }
    print_table(&rows);
    println!("load average after: {}", loadavg());
    if late.load(Ordering::Relaxed) {
        println!("WARNING: some timers were due before scheduling finished (lead too short)");
    }
    with_lp(|lp| lp.close()).expect("close");
}
