//! What a loop keeps after a burst: 1M `call_soon` (three times), 1M
//! `call_soon_dyn`, then 1M timers all cancelled, each followed by an
//! iteration that starts with nothing ready, on the select loop.
//!
//! Run: `cargo run --release -p backend-select --example burst_memory`
//!
//! For each step it prints the process's RSS, and the RSS after
//! `malloc_trim(0)`: what the loop still holds, without the freed memory
//! glibc keeps in its free lists for the next allocations.

use std::hint::black_box;

use loop_api::{AbstractEventLoop, EventLoopExt};

const N: u64 = 1_000_000;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn report(step: &str) {
    let rss = rss_kib();
    // SAFETY: malloc_trim has no preconditions; it only returns free memory.
    unsafe { libc::malloc_trim(0) };
    let held = rss_kib();
    println!(
        "{step:<36} RSS {:>7.1} MiB, after malloc_trim {:>6.1} MiB",
        rss as f64 / 1024.0,
        held as f64 / 1024.0
    );
}

fn main() {
    let lp = backend_select::new_event_loop().expect("loop");
    // Runs until a timer 1 ms ahead: the callbacks queued run first, then
    // an iteration starts with nothing ready.
    let settle = || {
        let l = lp.clone();
        lp.call_later(0.001, move || l.stop()).expect("call_later");
        lp.run_forever().expect("run");
    };
    settle();
    report("idle loop");
    for round in 1..=3 {
        for i in 0..N {
            black_box(
                lp.call_soon(move || {
                    black_box(i);
                })
                .expect("call_soon"),
            );
        }
        settle();
        report(&format!("1M call_soon, round {round}"));
    }
    for i in 0..N {
        let cb = Box::new(move || {
            black_box(i);
        });
        black_box(lp.call_soon_dyn(cb, None).expect("call_soon_dyn"));
    }
    settle();
    report("1M call_soon_dyn");
    let timers: Vec<_> = (0..N)
        .map(|i| {
            lp.call_later(1000.0, move || {
                black_box(i);
            })
        })
        .collect::<Result<_, _>>()
        .expect("call_later");
    report("1M timers pending");
    for t in &timers {
        t.cancel();
    }
    drop(timers);
    settle();
    report("1M timers cancelled");
    lp.close().expect("close");
}
