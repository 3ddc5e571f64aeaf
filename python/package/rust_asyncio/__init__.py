"""This project's event loop (Rust, on epoll or io_uring) for asyncio.

    import asyncio, rust_asyncio
    asyncio.run(main(), loop_factory=rust_asyncio.new_event_loop)

``EventLoop(backend="auto" | "select" | "uring")`` picks the backend;
``available_backends()`` lists what this build has, best first.
"""

from ._core import Handle, TimerHandle, available_backends
from ._loop import EventLoop, EventLoopPolicy, new_event_loop, run

__all__ = [
    "EventLoop",
    "EventLoopPolicy",
    "Handle",
    "TimerHandle",
    "available_backends",
    "new_event_loop",
    "run",
]
