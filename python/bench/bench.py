"""Python on our loop, uvloop and asyncio's own loop, in the same run.

    python python/bench/bench.py            # the README's table
    python python/bench/bench.py --quick    # a smoke run

Echo server (asyncio protocol and streams APIs): server CPU per round trip.
Each server is a child interpreter pinned to CPU 0, running one loop; the
load generator is this interpreter, pinned to CPU 1, on uvloop (the same
client for every server). Each connection sends a message, reads exactly
its length back (checking the bytes of every 16th echo), and sends again.
After a warm-up the server reports its CPU time (``getrusage``, asked over
a control pipe) at the start and the end of the window; CPU per round trip
is the difference over the round trips the clients completed in between.
Median of ``--reps`` runs; the order of the servers rotates between reps.

Loop micro-benchmarks, each loop in a child interpreter: ``call_soon``
(callbacks per second, 100 000 scheduled then run), ``create_task`` (a
task made and awaited, one after another), ``sleep(0)`` (a task yielding).
"""

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

LOOPS = ["asyncio", "uvloop", "select", "uring"]


def loop_factory(name):
    if name == "asyncio":
        return asyncio.SelectorEventLoop
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop
    import rust_asyncio
    return lambda: rust_asyncio.EventLoop(name)


# ----- the server (child) ----------------------------------------------------

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def echo_stream(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def server(name, api):
    import resource
    os.sched_setaffinity(0, {0})

    async def main():
        loop = asyncio.get_running_loop()
        if api == "protocol":
            srv = await loop.create_server(Echo, "127.0.0.1", 0)
        else:
            srv = await asyncio.start_server(echo_stream, "127.0.0.1", 0)
        print(srv.sockets[0].getsockname()[1], flush=True)
        # Control: each line in asks for the CPU time used so far.
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.readline():
            r = resource.getrusage(resource.RUSAGE_SELF)
            print(r.ru_utime + r.ru_stime, flush=True)

    asyncio.run(main(), loop_factory=loop_factory(name))


# ----- the load generator ----------------------------------------------------

async def drive(port, conns, size, warmup, window, ask):
    counts = [0] * conns
    running = True
    payload = os.urandom(size)

    async def one(i):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        while running:
            w.write(payload)
            got = await r.readexactly(size)
            if n % 16 == 0 and got != payload:
                raise AssertionError("echo differs")
            n += 1
            counts[i] += 1
        w.close()

    tasks = [asyncio.create_task(one(i)) for i in range(conns)]
    await asyncio.sleep(warmup)
    cpu0 = await ask()
    n0 = sum(counts)
    await asyncio.sleep(window)
    cpu1 = await ask()
    n1 = sum(counts)
    running = False
    await asyncio.gather(*tasks)
    return (cpu1 - cpu0) / (n1 - n0)


def echo_point(name, api, conns, size, warmup, window):
    child = subprocess.Popen(
        [sys.executable, __file__, "--server", name, api],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(child.stdout.readline())

        async def ask():
            child.stdin.write("cpu\n")
            child.stdin.flush()
            return float(await asyncio.to_thread(child.stdout.readline))

        import uvloop
        return uvloop.run(drive(port, conns, size, warmup, window, ask))
    finally:
        child.stdin.close()
        child.kill()
        child.wait()


# ----- loop micro-benchmarks (child) -----------------------------------------

def micro(name):
    os.sched_setaffinity(0, {0})
    n = 100_000

    async def noop():
        pass

    async def main():
        loop = asyncio.get_running_loop()
        out = {}

        done = loop.create_future()
        left = [n]

        def cb():
            left[0] -= 1
            if left[0] == 0:
                done.set_result(None)

        t = time.perf_counter()
        for _ in range(n):
            loop.call_soon(cb)
        await done
        out["call_soon"] = n / (time.perf_counter() - t)

        t = time.perf_counter()
        for _ in range(n):
            await loop.create_task(noop())
        out["create_task"] = n / (time.perf_counter() - t)

        t = time.perf_counter()
        for _ in range(n):
            await asyncio.sleep(0)
        out["sleep(0)"] = n / (time.perf_counter() - t)
        return out

    print(repr(asyncio.run(main(), loop_factory=loop_factory(name))))


def micro_point(name):
    out = subprocess.run([sys.executable, __file__, "--micro", name],
                         capture_output=True, text=True, check=True).stdout
    return eval(out)


# ----- the table ---------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--loops", default=",".join(LOOPS))
    args = ap.parse_args()
    import rust_asyncio
    loops = [l for l in args.loops.split(",")
             if l in ("asyncio", "uvloop") or l in rust_asyncio.available_backends()]
    os.sched_setaffinity(0, {1})
    reps = 1 if args.quick else args.reps
    warmup, window = (0.3, 0.7) if args.quick else (1.0, 3.0)

    print("Echo server, CPU per round trip (µs), median of", reps)
    print(f"{'api':<9}{'conns':>6}{'size':>8}" + "".join(f"{l:>10}" for l in loops)
          + "".join(f"{l + '/uv':>10}" for l in loops if l in ("select", "uring")))
    for api in ("protocol", "streams"):
        for conns in (10, 100):
            for size in (1024, 100 * 1024):
                samples = {l: [] for l in loops}
                for rep in range(reps):
                    order = loops[rep % len(loops):] + loops[:rep % len(loops)]
                    for l in order:
                        samples[l].append(echo_point(l, api, conns, size, warmup, window))
                med = {l: statistics.median(v) * 1e6 for l, v in samples.items()}
                row = f"{api:<9}{conns:>6}{size // 1024:>7}K"
                row += "".join(f"{med[l]:>10.2f}" for l in loops)
                if "uvloop" in med:
                    row += "".join(f"{med[l] / med['uvloop']:>10.2f}"
                                   for l in loops if l in ("select", "uring"))
                print(row, flush=True)

    print()
    print("Loop operations from Python, per second (millions), median of", reps)
    print(f"{'operation':<13}" + "".join(f"{l:>10}" for l in loops)
          + "".join(f"{l + '/uv':>10}" for l in loops if l in ("select", "uring")))
    samples = {l: [] for l in loops}
    for rep in range(reps):
        for l in loops:
            samples[l].append(micro_point(l))
    for op in ("call_soon", "create_task", "sleep(0)"):
        med = {l: statistics.median(s[op] for s in samples[l]) / 1e6 for l in loops}
        row = f"{op:<13}" + "".join(f"{med[l]:>10.3f}" for l in loops)
        if "uvloop" in med:
            row += "".join(f"{med[l] / med['uvloop']:>10.2f}"
                           for l in loops if l in ("select", "uring"))
        print(row, flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--server":
        server(sys.argv[2], sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--micro":
        micro(sys.argv[2])
    else:
        main()
