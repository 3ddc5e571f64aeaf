//! Memory follows the load: what a burst made the ready queue, the
//! `call_soon` slab and the timer heap grow to is given back when an
//! iteration starts with nothing ready (the loop is about to wait), and not
//! while it is busy.

use std::cell::Cell;
use std::rc::Rc;

use crate::events::{AbstractEventLoop, EventLoopExt};
use crate::idle_memory::IDLE_KEEP;
use crate::test_utils::{new_test_loop, TestEventLoop};

const BURST: usize = 50_000;

fn capacities(lp: &TestEventLoop) -> (usize, usize, usize) {
    (
        lp.ready.borrow().items.capacity(),
        lp.soon.capacity(),
        lp.scheduled.borrow().capacity(),
    )
}

/// Runs until the loop has waited once (a timer 1 s ahead) and stopped.
fn run_through_a_wait(lp: &Rc<TestEventLoop>) {
    let l = lp.clone();
    lp.call_later(1.0, move || l.stop()).unwrap();
    lp.run_forever().unwrap();
}

#[test]
fn a_burst_is_given_back_when_the_loop_waits() {
    let lp = new_test_loop();
    let ran = Rc::new(Cell::new(0));
    for _ in 0..BURST {
        let r = ran.clone();
        lp.call_soon(move || r.set(r.get() + 1)).unwrap();
        let r = ran.clone();
        lp.call_soon_dyn(Box::new(move || r.set(r.get() + 1)), None)
            .unwrap();
        let r = ran.clone();
        lp.call_later(0.5, move || r.set(r.get() + 1)).unwrap();
    }
    let (ready, slab, heap) = capacities(&lp);
    assert!(ready >= 2 * BURST && slab >= BURST && heap >= BURST);

    run_through_a_wait(&lp);
    assert_eq!(ran.get(), 3 * BURST, "every callback ran once");
    let (ready, slab, heap) = capacities(&lp);
    assert!(ready <= IDLE_KEEP, "ready queue kept {ready} slots");
    assert!(slab <= IDLE_KEEP, "slab kept {slab} slots");
    assert!(heap <= IDLE_KEEP, "timer heap kept {heap} slots");

    // The loop goes on as before: FIFO order through the trimmed stores.
    let order = Rc::new(std::cell::RefCell::new(Vec::new()));
    for i in 0..3 * IDLE_KEEP {
        let o = order.clone();
        if i % 2 == 0 {
            lp.call_soon(move || o.borrow_mut().push(i)).unwrap();
        } else {
            lp.call_soon_dyn(Box::new(move || o.borrow_mut().push(i)), None)
                .unwrap();
        }
    }
    run_through_a_wait(&lp);
    assert_eq!(*order.borrow(), (0..3 * IDLE_KEEP).collect::<Vec<_>>());
    lp.close().unwrap();
}

#[test]
fn a_kept_handle_holds_the_slab_until_it_is_dropped() {
    let lp = new_test_loop();
    let ran = Rc::new(Cell::new(0usize));
    let handles: Vec<_> = (0..BURST)
        .map(|_| {
            let ran = ran.clone();
            lp.call_soon_dyn(Box::new(move || ran.set(ran.get() + 1)), None)
                .unwrap()
        })
        .collect();
    run_through_a_wait(&lp);
    assert_eq!(
        ran.get(),
        BURST,
        "kept handles do not hold their callbacks back"
    );
    // The entries are still referenced: their slots cannot go.
    assert!(lp.soon.capacity() >= BURST);
    drop(handles);
    run_through_a_wait(&lp);
    assert!(lp.soon.capacity() <= IDLE_KEEP);
    lp.close().unwrap();
}

#[test]
fn a_busy_loop_keeps_its_queue() {
    // A callback that schedules the next burst keeps the loop from waiting:
    // nothing is given back between the iterations of a busy loop.
    let lp = new_test_loop();
    let rounds = Rc::new(Cell::new(0));
    fn burst(lp: &Rc<TestEventLoop>, rounds: Rc<Cell<usize>>) {
        rounds.set(rounds.get() + 1);
        for _ in 0..BURST - 1 {
            lp.call_soon(|| {}).unwrap();
        }
        if rounds.get() < 3 {
            let l = lp.clone();
            lp.call_soon(move || burst(&l, rounds)).unwrap();
        } else {
            let l = lp.clone();
            lp.call_soon(move || {
                // The previous iteration ran a full burst and did not wait.
                assert!(l.ready.borrow().items.capacity() >= BURST);
                l.stop();
            })
            .unwrap();
        }
    }
    burst(&lp, rounds.clone());
    lp.run_forever().unwrap();
    assert_eq!(rounds.get(), 3);
    lp.close().unwrap();
}
