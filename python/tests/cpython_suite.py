"""CPython's own test.test_asyncio, on CPython's loop and on ours.

    python python/tests/cpython_suite.py                 # every backend, table
    python python/tests/cpython_suite.py --loops uring test_streams

Runs the ``test.test_asyncio`` that ships with this interpreter (nothing is
copied). On ``cpython`` the tests run as CPython runs them on Linux (the
epoll selector loop). On ``select``/``uring`` the loop-parametrised classes
are bound to ``rust_asyncio.EventLoop(backend)`` through their own hook
(``create_event_loop`` / ``new_loop``), and every other test runs with
``rust_asyncio.EventLoopPolicy(backend)`` as the default policy, so
``asyncio.new_event_loop()``, ``asyncio.run()`` and
``IsolatedAsyncioTestCase`` get our loop. Classes binding other selectors
(poll, select, kqueue) are left out on both sides: they repeat the epoll
class.

Each module runs in its own interpreter, each test under a 60 s alarm; a
test that hangs the interpreter anyway is recorded as "hung" and the
module run again without it. Prints, per module and loop: passed, failed,
errors, skipped; then every test that passes on CPython's loop and not on
ours, with the reason written in ``KNOWN`` below or, if none is written,
the error it raised. Exits non-zero when a backend is below ``--target``
(95% by default) of CPython's passes, or when a test fails without a
written reason and ``--strict`` is given.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile

MODULES = [
    "test_base_events", "test_buffered_proto", "test_context",
    "test_eager_task_factory", "test_events", "test_futures",
    "test_futures2", "test_locks", "test_pep492", "test_protocols",
    "test_queues", "test_runners", "test_selector_events", "test_sendfile",
    "test_server", "test_sock_lowlevel", "test_ssl", "test_sslproto",
    "test_staggered", "test_streams", "test_subprocess", "test_taskgroups",
    "test_tasks", "test_threads", "test_timeouts", "test_transports",
    "test_unix_events", "test_waitfor",
]

# The classes each module binds to a loop through a hook, and the hook.
BIND = {
    "test_events": [("EPollEventLoopTests", "create_event_loop")],
    "test_sock_lowlevel": [("EPollEventLoopTests", "create_event_loop")],
    "test_sendfile": [("EPollEventLoopTests", "create_event_loop")],
    "test_server": [("SelectorStartServerTests", "new_loop")],
    "test_buffered_proto": [("BufferedProtocolSelectorTests", "new_loop")],
    "test_sslproto": [("SelectorStartTLSTests", "new_loop")],
    "test_ssl": [("TestSSL", "new_loop")],
}
# Repeats of the epoll classes on other selectors.
DROP = ["KqueueEventLoopTests", "PollEventLoopTests", "SelectEventLoopTests"]

# Why a test that passes on CPython's loop does not pass on ours: test id
# (or a prefix ending in '.') -> reason.
KNOWN = {
    "test.test_asyncio.test_events.EPollEventLoopTests.test_internal_fds":
        "reads the selector loop's self-pipe (_internal_fds, _csock, "
        "_ssock); ours wakes through its backend (eventfd, or a ring "
        "message) and has no self-pipe",
    "test.test_asyncio.test_events.EPollEventLoopTests.test_unclosed_pipe_transport":
        "expects a pipe transport left open to still say 'open' after "
        "loop.close(); our loop tears down the transports still open when "
        "it closes (connection_lost(None), descriptors closed), since "
        "nothing can run for them any more",
    "test.test_asyncio.test_unix_events.SelectorEventLoopUnixSockSendfileTests.":
        "reads the selector loop's private selector (loop._selector."
        "get_key); ours keeps its readiness registrations in the Rust core",
}

LOOPS = ["cpython", "select", "uring"]
TEST_TIMEOUT = 60


# ----- the worker: one module on one loop, in its own interpreter ------------

def worker(module, loop, skip, out_path):
    import asyncio
    import signal
    import unittest

    if loop != "cpython":
        import rust_asyncio

        class Policy(rust_asyncio.EventLoopPolicy):
            def __init__(self):
                super().__init__(loop)

        # asyncio re-creates its default policy from this name after a
        # test resets it with set_event_loop_policy(None).
        asyncio.DefaultEventLoopPolicy = Policy
        asyncio.events.DefaultEventLoopPolicy = Policy
        asyncio.set_event_loop_policy(Policy())

        # Which tests run on our loop: those that make one.
        made = [0]
        init = rust_asyncio.EventLoop.__init__

        def counting_init(self, *args, **kwargs):
            made[0] += 1
            init(self, *args, **kwargs)

        rust_asyncio.EventLoop.__init__ = counting_init
    else:
        made = [0]

    mod = __import__(f"test.test_asyncio.{module}", fromlist=["*"])
    if hasattr(mod, "EPollEventLoopTests"):
        for name in DROP:
            if hasattr(mod, name):
                delattr(mod, name)
    if loop != "cpython":
        for name, hook in BIND.get(module, []):
            cls = getattr(mod, name, None)
            if cls is None:
                continue

            def make(self, _backend=loop):
                return rust_asyncio.EventLoop(_backend)

            bound = type(cls.__name__, (cls,), {hook: make})
            bound.__module__ = cls.__module__
            bound.__qualname__ = cls.__qualname__
            setattr(mod, name, bound)

    class Timeout(Exception):
        pass

    def on_alarm(signum, frame):
        raise Timeout(f"test still running after {TEST_TIMEOUT} s")

    out = open(out_path, "a", buffering=1)

    started_with = [0]

    def record(test, outcome, detail=""):
        out.write(json.dumps({"id": test.id(), "outcome": outcome,
                              "ours": made[0] > started_with[0],
                              "detail": detail[-2000:]}) + "\n")

    class Result(unittest.TestResult):
        def startTest(self, test):
            out.write(json.dumps({"start": test.id()}) + "\n")
            started_with[0] = made[0]
            signal.signal(signal.SIGALRM, on_alarm)
            signal.alarm(TEST_TIMEOUT)
            super().startTest(test)

        def stopTest(self, test):
            signal.alarm(0)
            super().stopTest(test)

        def addSuccess(self, test):
            record(test, "passed")

        def addFailure(self, test, err):
            record(test, "failed", self._exc_info_to_string(err, test))

        def addError(self, test, err):
            if isinstance(test, unittest.TestCase):
                record(test, "error", self._exc_info_to_string(err, test))
            else:  # a module or class fixture
                out.write(json.dumps({"id": str(test), "outcome": "error",
                                      "detail": self._exc_info_to_string(err, test)[-2000:]}) + "\n")

        def addSkip(self, test, reason):
            record(test, "skipped", reason)

        def addExpectedFailure(self, test, err):
            record(test, "passed")

        def addUnexpectedSuccess(self, test):
            record(test, "failed", "unexpected success")

        def addSubTest(self, test, subtest, err):
            if err is not None:
                kind = "failed" if issubclass(err[0], test.failureException) else "error"
                record(test, kind, self._exc_info_to_string(err, test))

    suite = unittest.defaultTestLoader.loadTestsFromModule(mod)

    def skipping(s):
        for t in s:
            if isinstance(t, unittest.TestSuite):
                skipping(t)
            elif t.id() in skip:
                setattr(t, t._testMethodName,
                        unittest.skip("hung the interpreter")(lambda: None))
    skipping(suite)
    suite.run(Result())
    out.close()


# ----- the driver -------------------------------------------------------------

def run_module(module, loop, module_timeout):
    """{test id: (outcome, detail, ran on our loop)} for one module on one loop."""
    results = {}
    hung = []
    for _attempt in range(10):
        with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as f:
            path = f.name
        cmd = [sys.executable, __file__, "--worker", module, loop, path,
               json.dumps(hung)]
        try:
            subprocess.run(cmd, timeout=module_timeout, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            done = True
        except subprocess.TimeoutExpired:
            done = False
        started = None
        for line in open(path):
            rec = json.loads(line)
            if "start" in rec:
                started = rec["start"]
                continue
            prev = results.get(rec["id"])
            # A test with several subtests: the worst outcome counts.
            if prev is None or prev[0] in ("passed", "skipped"):
                results[rec["id"]] = (rec["outcome"], rec["detail"], rec.get("ours", False))
            if rec["id"] == started:
                started = None
        os.unlink(path)
        if done and started is None:
            break
        if started is not None:
            hung.append(started)
            results[started] = ("error", "hung the interpreter", loop != "cpython")
            if done:  # the interpreter died in it
                results[started] = ("error", "the interpreter died in this test",
                                    loop != "cpython")
    return results


def reason_for(test_id):
    for key, why in KNOWN.items():
        if test_id == key or (key.endswith(".") and test_id.startswith(key)):
            return why
    return None


def last_line(detail):
    lines = [l for l in detail.strip().splitlines() if l.strip()]
    return lines[-1].strip() if lines else ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--target", type=float, default=95.0)
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--json", help="write every outcome here")
    ap.add_argument("--module-timeout", type=int, default=900)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                    help="modules run at once (each in its own interpreter)")
    ap.add_argument("modules", nargs="*", default=MODULES)
    args = ap.parse_args()
    loops = args.loops.split(",")
    if "cpython" not in loops:
        loops.insert(0, "cpython")

    import rust_asyncio
    have = rust_asyncio.available_backends()
    loops = [l for l in loops if l == "cpython" or l in have]

    all_results = {l: {} for l in loops}
    jobs = [(m, l) for m in args.modules for l in loops]
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip(jobs, pool.map(
            lambda job: run_module(job[0], job[1], args.module_timeout), jobs)))
    print(f"{'module':<24}" + "".join(f"{l:>20}" for l in loops))
    print(f"{'':<24}" + "".join(f"{'pass fail err skip':>20}" for _ in loops))
    totals = {l: {k: 0 for k in ("passed", "failed", "error", "skipped")} for l in loops}
    for module in args.modules:
        row = f"{module:<24}"
        for loop in loops:
            res = done[(module, loop)]
            all_results[loop].update(res)
            c = {k: 0 for k in ("passed", "failed", "error", "skipped")}
            for outcome, _, _ in res.values():
                c[outcome] += 1
                totals[loop][outcome] += 1
            row += f"{c['passed']:>5}{c['failed']:>5}{c['error']:>5}{c['skipped']:>5}"
        print(row)
    row = f"{'total':<24}"
    for loop in loops:
        c = totals[loop]
        row += f"{c['passed']:>5}{c['failed']:>5}{c['error']:>5}{c['skipped']:>5}"
    print(row, flush=True)

    base = all_results["cpython"]
    base_pass = {t for t, (o, _, _) in base.items() if o == "passed"}
    status = 0
    print()
    for loop in loops[1:]:
        res = all_results[loop]
        lost = sorted(t for t in base_pass if res.get(t, ("missing",))[0] != "passed")
        kept = len(base_pass) - len(lost)
        share = 100.0 * kept / max(1, len(base_pass))
        print(f"{loop}: {kept} of the {len(base_pass)} tests passing on CPython's "
              f"loop pass on ours ({share:.1f}%)")
        on_ours = [t for t in base_pass if t in res and res[t][2]]
        ours_kept = sum(1 for t in on_ours if res[t][0] == "passed")
        print(f"    of those, {len(on_ours)} ran on our loop (made one); "
              f"{ours_kept} of them pass ({100.0 * ours_kept / max(1, len(on_ours)):.1f}%); "
              f"the rest test asyncio's own classes or mocks")
        unexplained = 0
        for t in lost:
            why = reason_for(t)
            if why is None:
                unexplained += 1
                o, d, _ = res.get(t, ("missing", "", False))
                why = f"[no written reason] {o}: {last_line(d)}"
            print(f"    {t}: {why}")
        if share < args.target or (args.strict and unexplained):
            status = 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(all_results, f, indent=1)
    sys.exit(status)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2], sys.argv[3], set(json.loads(sys.argv[5])), sys.argv[4])
    else:
        main()
