"""What a Python user relies on, on every backend of this build.

    python -m unittest discover -s python/tests -p 'test_*.py'

Each test class runs once per backend (``SelectTests``, ``UringTests``).
Real sockets, threads, signals and child processes; no sleeps as
synchronisation.
"""

import asyncio
import contextvars
import os
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import unittest

import rust_asyncio

CERTS = os.path.join(os.path.dirname(unittest.__file__), "..", "test", "certdata")
CERT = os.path.join(CERTS, "ssl_cert.pem")
KEY = os.path.join(CERTS, "ssl_key.pem")


def open_fds():
    return len(os.listdir("/proc/self/fd"))


class EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)

    def eof_received(self):
        self.transport.close()


class BufferedEcho(asyncio.BufferedProtocol):
    """Echoes through get_buffer/buffer_updated, in 1000-byte buffers."""

    def __init__(self):
        self.buf = bytearray(1000)

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.transport.write(bytes(self.buf[:nbytes]))

    def eof_received(self):
        self.transport.close()


class LoopTests:
    backend = None

    def new_loop(self):
        return rust_asyncio.EventLoop(self.backend)

    def run_main(self, coro_fn):
        return asyncio.run(coro_fn(), loop_factory=self.new_loop)

    # ----- the loop itself --------------------------------------------------

    def test_is_an_asyncio_loop_on_its_backend(self):
        async def main():
            loop = asyncio.get_running_loop()
            return loop, loop.backend, asyncio.current_task()

        loop, backend, task = self.run_main(main)
        self.assertIsInstance(loop, asyncio.AbstractEventLoop)
        self.assertEqual(backend, self.backend)
        self.assertIsInstance(task, asyncio.Task)
        self.assertTrue(loop.is_closed())

    def test_callbacks_run_in_order_each_in_its_context(self):
        var = contextvars.ContextVar("var")
        seen = []

        async def main():
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            for i in range(100):
                ctx = contextvars.copy_context()
                ctx.run(var.set, i)
                loop.call_soon(lambda i=i: seen.append((i, var.get())), context=ctx)
            loop.call_soon(done.set_result, None)
            await done

        self.run_main(main)
        self.assertEqual(seen, [(i, i) for i in range(100)])

    def test_timers_fire_in_deadline_order_and_cancel(self):
        order = []

        async def main():
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            now = loop.time()
            loop.call_at(now + 0.03, order.append, 3)
            loop.call_at(now + 0.01, order.append, 1)
            cancelled = loop.call_at(now + 0.02, order.append, 2)
            loop.call_at(now + 0.04, done.set_result, None)
            cancelled.cancel()
            self.assertTrue(cancelled.cancelled())
            await done
            self.assertGreaterEqual(loop.time(), now + 0.04)

        self.run_main(main)
        self.assertEqual(order, [1, 3])

    def test_gil_is_released_while_the_loop_waits(self):
        counted = [0]
        stop = threading.Event()

        def count():
            while not stop.is_set():
                counted[0] += 1

        async def main():
            t = threading.Thread(target=count)
            t.start()
            try:
                before = counted[0]
                await asyncio.sleep(0.2)
                return counted[0] - before
            finally:
                stop.set()
                t.join()

        # With the GIL held through the wait, the thread would get at most
        # a few switch intervals; released, it counts for the whole 0.2 s.
        self.assertGreater(self.run_main(main), 100_000)

    def test_call_soon_threadsafe_from_four_threads_runs_each_once(self):
        n = 20_000

        async def main():
            loop = asyncio.get_running_loop()
            seen = [0] * (4 * n)
            done = loop.create_future()
            left = [4 * n]

            def hit(i):
                seen[i] += 1
                left[0] -= 1
                if left[0] == 0:
                    done.set_result(None)

            def producer(k):
                for i in range(k * n, (k + 1) * n):
                    loop.call_soon_threadsafe(hit, i)

            threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            await done
            for t in threads:
                t.join()
            return seen

        self.assertEqual(set(self.run_main(main)), {1})

    def test_exception_in_callback_reaches_the_handler_and_the_loop_goes_on(self):
        caught = []
        boom = ZeroDivisionError("boom")

        def fail():
            raise boom

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_exception_handler(lambda lp, ctx: caught.append(ctx))
            loop.call_soon(fail)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            return "went on"

        self.assertEqual(self.run_main(main), "went on")
        self.assertEqual(len(caught), 1)
        self.assertIs(caught[0]["exception"], boom)
        self.assertIn("Exception in callback", caught[0]["message"])

    def test_keyboard_interrupt_in_callback_leaves_run_forever(self):
        loop = self.new_loop()
        try:
            def interrupt():
                raise KeyboardInterrupt

            loop.call_soon(interrupt)
            with self.assertRaises(KeyboardInterrupt):
                loop.run_forever()
            self.assertFalse(loop.is_running())
            # Still usable.
            self.assertEqual(loop.run_until_complete(asyncio.sleep(0, "again")), "again")
        finally:
            loop.close()

    def test_closed_loop_refuses_callbacks(self):
        loop = self.new_loop()
        loop.close()
        with self.assertRaisesRegex(RuntimeError, "Event loop is closed"):
            loop.call_soon(print)
        with self.assertRaisesRegex(RuntimeError, "Event loop is closed"):
            loop.call_soon_threadsafe(print)

    def test_eager_task_factory(self):
        async def child():
            return "eager"

        async def main():
            loop = asyncio.get_running_loop()
            loop.set_task_factory(asyncio.eager_task_factory)
            t = loop.create_task(child())
            # An eager task that never suspends is done at once.
            self.assertTrue(t.done())
            return await t

        self.assertEqual(self.run_main(main), "eager")

    def test_policy_makes_our_loops(self):
        old = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(rust_asyncio.EventLoopPolicy(self.backend))
        try:
            loop = asyncio.new_event_loop()
            self.assertIsInstance(loop, rust_asyncio.EventLoop)
            self.assertEqual(loop.backend, self.backend)
            loop.close()
        finally:
            asyncio.set_event_loop_policy(old)

    # ----- I/O ----------------------------------------------------------------

    def test_tcp_echo_protocols_are_byte_exact_and_close_their_fds(self):
        payload = os.urandom(4 * 1024 * 1024)

        async def one_client(port):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(payload)
            w.write_eof()
            got = await r.read()
            w.close()
            await w.wait_closed()
            return got

        async def main(proto):
            loop = asyncio.get_running_loop()
            srv = await loop.create_server(proto, "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            got = await asyncio.gather(*(one_client(port) for _ in range(4)))
            srv.close()
            await srv.wait_closed()
            return got

        for proto in (EchoProtocol, BufferedEcho):
            with self.subTest(proto=proto.__name__):
                before = open_fds()
                got = asyncio.run(main(proto), loop_factory=self.new_loop)
                self.assertEqual(got, [payload] * 4)
                self.assertEqual(open_fds(), before)

    def test_transport_is_an_asyncio_transport(self):
        async def main():
            loop = asyncio.get_running_loop()
            srv = await loop.create_server(EchoProtocol, "127.0.0.1", 0)
            port = srv.sockets[0].getsockname()[1]
            lost = loop.create_future()

            class Client(asyncio.Protocol):
                def connection_lost(self, exc):
                    lost.set_result(exc)

            tr, _ = await loop.create_connection(Client, "127.0.0.1", port)
            info = (tr.get_extra_info("peername"), tr.get_extra_info("socket").family)
            self.assertIsInstance(tr, asyncio.Transport)
            self.assertEqual(tr.get_write_buffer_size(), 0)
            # From another thread: an error, not a crash or a data race.
            raised = []

            def poke():
                try:
                    tr.is_closing()
                except RuntimeError as e:
                    raised.append(str(e))

            t = threading.Thread(target=poke)
            t.start()
            t.join()
            self.assertEqual(len(raised), 1)
            self.assertIn("call_soon_threadsafe", raised[0])
            tr.close()
            self.assertIsNone(await lost)
            # Once the connection is lost, a finalizer on another thread
            # (StreamWriter.__del__ asks is_closing) gets its answer.
            closing = []
            t = threading.Thread(target=lambda: closing.append(tr.is_closing()))
            t.start()
            t.join()
            self.assertEqual(closing, [True])
            srv.close()
            await srv.wait_closed()
            return info, port

        (peer, family), port = self.run_main(main)
        self.assertEqual(peer, ("127.0.0.1", port))
        self.assertEqual(family, socket.AF_INET)

    def test_udp_echo(self):
        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, tr):
                self.tr = tr

            def datagram_received(self, data, addr):
                self.tr.sendto(data[::-1], addr)

        class Client(asyncio.DatagramProtocol):
            def __init__(self, fut):
                self.fut = fut

            def datagram_received(self, data, addr):
                self.fut.set_result((data, addr))

        async def main():
            loop = asyncio.get_running_loop()
            srv, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
            addr = srv.get_extra_info("sockname")
            fut = loop.create_future()
            cli, _ = await loop.create_datagram_endpoint(lambda: Client(fut), remote_addr=addr)
            self.assertIsInstance(cli, asyncio.DatagramTransport)
            cli.sendto(b"datagram")
            got = await fut
            cli.close()
            srv.close()
            return got, addr

        (data, from_addr), addr = self.run_main(main)
        self.assertEqual(data, b"margatad")
        self.assertEqual(from_addr, addr)

    def test_tls_with_the_users_sslcontext(self):
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(CERT, KEY)
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        payload = os.urandom(1024 * 1024)

        async def handle(r, w):
            w.write(await r.readexactly(len(payload)))
            await w.drain()
            w.close()

        async def main():
            srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
            port = srv.sockets[0].getsockname()[1]
            r, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            version = w.get_extra_info("ssl_object").version()
            w.write(payload)
            got = await r.readexactly(len(payload))
            w.close()
            await w.wait_closed()
            srv.close()
            await srv.wait_closed()
            return got, version

        got, version = self.run_main(main)
        self.assertEqual(got, payload)
        self.assertTrue(version.startswith("TLS"))

    def test_reader_callbacks(self):
        async def main():
            loop = asyncio.get_running_loop()
            a, b = socket.socketpair()
            with a, b:
                a.setblocking(False)
                got = loop.create_future()

                def readable():
                    got.set_result(a.recv(100))
                    loop.remove_reader(a)

                loop.add_reader(a, readable)
                b.send(b"ready")
                return await got

        self.assertEqual(self.run_main(main), b"ready")

    def test_subprocess_output_and_returncode(self):
        async def main():
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read().upper()); sys.exit(3)",
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            out, _ = await proc.communicate(b"child")
            return out, proc.returncode

        self.assertEqual(self.run_main(main), (b"CHILD", 3))

    def test_signal_handler(self):
        async def main():
            loop = asyncio.get_running_loop()
            got = loop.create_future()
            loop.add_signal_handler(signal.SIGUSR1, got.set_result, "usr1")
            os.kill(os.getpid(), signal.SIGUSR1)
            result = await got
            self.assertTrue(loop.remove_signal_handler(signal.SIGUSR1))
            return result

        self.assertEqual(self.run_main(main), "usr1")

    def test_ctrl_c_cancels_the_main_task(self):
        child = textwrap.dedent(f"""
            import asyncio, sys, rust_asyncio
            async def main():
                print("ready", flush=True)
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    print("cancelled", flush=True)
                    raise
            asyncio.run(main(), loop_factory=lambda: rust_asyncio.EventLoop({self.backend!r}))
        """)
        proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.assertEqual(proc.stdout.readline().strip(), "ready")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(out.strip(), "cancelled")
        self.assertIn("KeyboardInterrupt", err)
        self.assertEqual(proc.returncode, -signal.SIGINT)


    def test_loop_collected_on_another_thread_is_quiet(self):
        # A closed loop in a reference cycle, collected by the GC on
        # another thread: its Rust state goes back to its own thread,
        # with no error printed and nothing raised.
        child = textwrap.dedent(f"""
            import gc, threading, rust_asyncio
            gc.disable()
            loop = rust_asyncio.EventLoop({self.backend!r})
            loop.run_until_complete(__import__("asyncio").sleep(0))
            loop.close()
            loop.cycle = loop
            del loop
            t = threading.Thread(target=gc.collect)
            t.start()
            t.join()
            rust_asyncio.EventLoop({self.backend!r}).close()
            print("ok")
        """)
        done = subprocess.run([sys.executable, "-c", child], capture_output=True,
                              text=True, timeout=60)
        self.assertEqual((done.stdout.strip(), done.stderr), ("ok", ""))


def bad_backend_message():
    try:
        rust_asyncio.EventLoop("nope")
    except ValueError as e:
        return str(e)


class PackageTests(unittest.TestCase):
    def test_unknown_backend_is_a_value_error_naming_the_choices(self):
        msg = bad_backend_message()
        self.assertIn("unknown event loop backend 'nope'", msg)
        self.assertIn("select", msg)

    def test_available_backends(self):
        have = rust_asyncio.available_backends()
        self.assertIn("select", have)
        if sys.platform == "linux":
            self.assertIn("uring", have)


for _name in rust_asyncio.available_backends():
    _cls = type(f"{_name.capitalize()}Tests", (LoopTests, unittest.TestCase), {"backend": _name})
    globals()[_cls.__name__] = _cls
del _name, _cls


if __name__ == "__main__":
    unittest.main()
