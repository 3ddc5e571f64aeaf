"""``EventLoop``: the Rust core under asyncio's own orchestration.

The loop's scheduling, running, readiness callbacks, signals and stream
transports are Rust (``_core.Core``). What asyncio writes in Python on
top of its private hooks (``create_connection`` and Happy Eyeballs,
``create_server``, ``sock_*``, ``start_tls`` over ``sslproto``, pipes and
subprocesses over ``base_subprocess``, the exception handler,
``run_until_complete``, async generator hooks) is asyncio's own code,
inherited from its Unix loop class, reaching the Rust core through those
hooks (``_add_reader``, ``_make_socket_transport``, ...). Futures and tasks
are asyncio's own.
"""

import asyncio
import threading
import weakref
from asyncio import (base_events, constants, coroutines, exceptions, sslproto,
                     transports, unix_events)

from . import _core


class EventLoop(_core.Core, unix_events._UnixSelectorEventLoop):
    """An asyncio event loop on one of this project's backends."""

    def __init__(self, backend="auto"):
        # asyncio's loop state; not the selector loop's (no selector, no
        # self-pipe: the Rust core has its own wakeup).
        base_events.BaseEventLoop.__init__(self)
        self._transports = weakref.WeakValueDictionary()
        self._signal_handlers = {}
        self._unix_server_sockets = {}
        self._selector = None
        self._ssock = self._csock = None
        # Read here, on the loop's thread: other threads use only this.
        self._remote = self._rs_remote

    def __repr__(self):
        return (f"<{type(self).__name__} backend={self.backend} "
                f"running={self.is_running()} closed={self.is_closed()} "
                f"debug={self.get_debug()}>")

    # ----- running ----------------------------------------------------------

    def run_forever(self):
        self._run_forever_setup()
        try:
            self._rs_run_forever()
        finally:
            self._run_forever_cleanup()

    def close(self):
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        for sig in list(self._signal_handlers):
            self.remove_signal_handler(sig)
        base_events.BaseEventLoop.close(self)
        self._rs_close()

    def call_soon_threadsafe(self, callback, *args, context=None):
        if self._debug:
            self._check_callback(callback, "call_soon_threadsafe")
        return self._remote.call_soon_threadsafe(self, callback, args, context,
                                                 self._debug)

    def _write_to_self(self):
        self._remote.call_soon_threadsafe(self, _nothing, ())

    def set_debug(self, enabled):
        super().set_debug(enabled)
        self._rs_set_debug(enabled)

    # ----- signals ----------------------------------------------------------

    def add_signal_handler(self, sig, callback, *args):
        if (coroutines.iscoroutine(callback)
                or coroutines.iscoroutinefunction(callback)):
            raise TypeError("coroutines cannot be used "
                            "with add_signal_handler()")
        self._check_signal(sig)
        self._check_closed()
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("set_wakeup_fd only works in main thread "
                               "of the main interpreter")
        try:
            self._rs_add_signal_handler(sig, callback, args)
        except (ValueError, OSError) as exc:
            raise RuntimeError(str(exc)) from exc
        self._signal_handlers[sig] = True

    def remove_signal_handler(self, sig):
        self._check_signal(sig)
        removed = self._rs_remove_signal_handler(sig)
        self._signal_handlers.pop(sig, None)
        return removed

    # ----- transports -------------------------------------------------------

    def _make_socket_transport(self, sock, protocol, waiter=None, *,
                               extra=None, server=None):
        fd = sock.fileno()
        transport = self._rs_make_socket_transport(
            sock, protocol, waiter, extra, server, SocketTransport)
        self._transports[fd] = transport
        return transport

    def _make_datagram_transport(self, sock, protocol, address=None,
                                 waiter=None, extra=None):
        fd = sock.fileno()
        transport = self._rs_make_datagram_transport(
            sock, protocol, address, waiter, extra, DatagramTransport)
        self._transports[fd] = transport
        return transport

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None,
                                  extra=None):
        return self._rs_make_pipe_transport(pipe, protocol, waiter, extra,
                                            ReadPipeTransport, False)

    def _make_write_pipe_transport(self, pipe, protocol, waiter=None,
                                   extra=None):
        return self._rs_make_pipe_transport(pipe, protocol, waiter, extra,
                                            WritePipeTransport, True)

    async def _sendfile_native(self, transp, file, offset, count):
        rs = getattr(transp, "_rs", None)
        if rs is None:
            raise exceptions.SendfileNotAvailableError(
                f"{transp!r} has no zero-copy sendfile")
        return await self._rs_sendfile_native(rs, file, offset, count)

    def _make_ssl_transport(
            self, rawsock, protocol, sslcontext, waiter=None,
            *, server_side=False, server_hostname=None,
            extra=None, server=None,
            ssl_handshake_timeout=None,
            ssl_shutdown_timeout=None,
    ):
        ssl_protocol = sslproto.SSLProtocol(
            self, protocol, sslcontext, waiter,
            server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )
        self._make_socket_transport(rawsock, ssl_protocol,
                                    extra=extra, server=server)
        return ssl_protocol._app_transport


def _nothing():
    pass


# The methods a SocketTransport takes from the Rust transport it fronts.
_FORWARDED = (
    "write", "writelines", "write_eof", "can_write_eof", "close", "abort",
    "is_closing", "is_reading", "pause_reading", "resume_reading",
    "set_write_buffer_limits", "get_write_buffer_limits",
    "get_write_buffer_size", "get_extra_info", "get_protocol",
    "set_protocol", "_force_close",
)


class SocketTransport(transports._FlowControlMixin):
    """An ``asyncio.Transport`` over one of our stream transports.

    Each method is the Rust transport's own, bound on the instance: a call
    runs no Python frame of ours.
    """

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, rs, loop):
        self._rs = rs
        self._loop = loop
        for name in _FORWARDED:
            setattr(self, name, getattr(rs, name))

    @property
    def _protocol_paused(self):
        return self._rs._protocol_paused

    def __repr__(self):
        return repr(self._rs)


class EventLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """A policy whose new loops are ``EventLoop(backend)``."""

    def __init__(self, backend="auto"):
        super().__init__()
        self._backend = backend

    def _loop_factory(self):
        return EventLoop(self._backend)


def new_event_loop(backend="auto"):
    """A new ``EventLoop``: ``asyncio.run(main(), loop_factory=new_event_loop)``."""
    return EventLoop(backend)


def run(main, *, backend="auto", debug=None):
    """``asyncio.run(main)`` on a new ``EventLoop(backend)``."""
    return asyncio.run(main, debug=debug,
                       loop_factory=lambda: EventLoop(backend))


class DatagramTransport(transports._FlowControlMixin,
                        transports.DatagramTransport):
    """An ``asyncio.DatagramTransport`` over one of our datagram transports."""

    def __init__(self, rs, loop):
        super().__init__(None, loop)
        self._rs = rs
        for name in ("sendto", "close", "abort", "is_closing",
                     "get_write_buffer_size", "get_extra_info",
                     "get_protocol", "set_protocol"):
            setattr(self, name, getattr(rs, name))

    def __repr__(self):
        return repr(self._rs)


class ReadPipeTransport(transports.ReadTransport):
    """An ``asyncio.ReadTransport`` over one of our read pipe transports."""

    def __init__(self, rs, loop):
        super().__init__(None)
        self._rs = rs
        self._loop = loop
        for name in ("close", "is_closing", "is_reading", "pause_reading",
                     "resume_reading", "get_extra_info", "get_protocol",
                     "set_protocol"):
            setattr(self, name, getattr(rs, name))

    def __repr__(self):
        return repr(self._rs)


class WritePipeTransport(transports._FlowControlMixin,
                         transports.WriteTransport):
    """An ``asyncio.WriteTransport`` over one of our write pipe transports."""

    def __init__(self, rs, loop):
        self._rs = rs
        self._loop = loop
        for name in ("write", "writelines", "write_eof", "can_write_eof",
                     "close", "abort", "is_closing", "get_write_buffer_size",
                     "get_write_buffer_limits", "set_write_buffer_limits",
                     "get_extra_info", "get_protocol", "set_protocol"):
            setattr(self, name, getattr(rs, name))

    @property
    def _protocol_paused(self):
        return self._rs._protocol_paused

    def __repr__(self):
        return repr(self._rs)
