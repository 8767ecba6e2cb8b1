"""The engine's binding to one event loop: the clients, slots and downloads it made there.

``LoopBinding`` is a base class of ``AioDownload`` (after ``Politeness`` and ``Exchange``).

Invariants:
- everything ``_reset`` makes belongs to one event loop: made lazily inside it, useless in
  another. A run in another loop while this one is in use gets a fresh copy (``for_run``);
- the clients made in a loop are closed by ``close()``, by the last run's ``end_run``, or when
  that loop shuts down (``_close_at_loop_end``, which holds the clients, not the engine, so a
  download made inside the coroutine that ran it is closed too); a session passed as
  ``client`` belongs to the caller and is never closed here;
- the loop ``loop`` gave the caller (no loop was running: the thread's current one) is closed
  at exit, its async generators, and so the clients opened in it, first.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import warnings
from collections import OrderedDict
from collections.abc import AsyncGenerator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from ..bundle import Bundle
from ..errors import ErrorKind
from ..robots import RobotRules
from ..urls import UrlParts
from .hosts import HostSlot, WorkerSlots
from .http import LeanClient
from .politeness import Politeness
from .tree import forget_directories

if TYPE_CHECKING:
    import aiohttp


class LoopBinding(Politeness):
    """See the module's invariants."""

    _runs: int  # runs (swarm/each calls) using this engine now, all in self._loop
    _calls: int  # downloads under way in self._loop, a run's or called directly (main())
    # (loop, generator): closes what this engine opened in that loop when the loop ends.
    _closer: tuple[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] | None
    _opened: list[Any]  # the clients it will close
    _own_loop: asyncio.AbstractEventLoop | None  # see ``loop``

    def _reset(self) -> None:
        # Everything below belongs to one event loop: made lazily inside it, useless in another.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = self._client
        self._lean: LeanClient | None = None
        self._worker_sem: WorkerSlots | None = None
        self._main_sem: asyncio.BoundedSemaphore | None = None  # see AioDownload._main_semaphore
        self._hosts: dict[str, HostSlot] = {}
        # A file's download under way: (what it requests, its outcome).
        self._inflight: dict[str, tuple[tuple[UrlParts, str], asyncio.Future[Bundle]]] = {}
        self._robots: dict[str, asyncio.Future[RobotRules]] = {}
        self._robots_until: dict[str, float] = {}  # when an unreachable robots.txt is re-asked
        self._robots_idle: OrderedDict[str, int] = OrderedDict()  # see Politeness
        self._robots_idle_weight = 0

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """aiodownload's ``loop``, which its own ``each`` drove the engine in
        (``download.loop.run_until_complete(download.main(bundle))``): the running event loop,
        else the loop of the caller's ``client=`` session, else this thread's current one (what
        ``asyncio.get_event_loop()`` and so ``asyncio.gather(...)`` outside a loop use, as
        aiodownload's was), made and set as current when there is none. One made or set here
        is closed when the program exits (its clients with it), unless closed before."""
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            pass
        # aiodownload's was the session's when the caller gave one: it cannot leave it.
        session_loop = getattr(getattr(self, "_client", None), "_loop", None)
        if isinstance(session_loop, asyncio.AbstractEventLoop) and not session_loop.is_closed():
            return session_loop
        own = getattr(self, "_own_loop", None)  # a subclass may skip __init__
        current = _current_loop(own)
        if current is not own:
            self._own_loop = current
            atexit.register(_close_idle_loop, current)
        return current

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def for_run(self) -> Self:
        """The engine a run in the running loop uses: this one, or a fresh copy of it (same
        class and strategies) when a run in another event loop holds this one (``one()``
        called while iterating ``each()``, two threads sharing one download, or ``main()``
        awaited in another loop)."""
        loop = asyncio.get_running_loop()
        engine = self
        # A copy costs nothing: take one also when the other loop merely runs (a subclass's
        # main() between two attempts there holds no count, but comes back to this engine).
        if self._busy_elsewhere(loop, or_running=True):
            engine = copy.copy(self)
            engine._runs = engine._calls = 0
            engine._closer = None
            engine._reset()
        engine._bind(loop)
        engine._runs += 1
        return engine

    async def end_run(self) -> None:
        """A run that ``for_run`` gave this engine is over; the last one closes it, unless
        direct ``main()`` calls in this loop still use it (the loop's end closes it then)."""
        self._runs = max(0, self._runs - 1)
        if self._runs == 0 and self._calls == 0:
            await self.close()

    def _busy_elsewhere(self, loop: asyncio.AbstractEventLoop, *, or_running: bool = False) -> bool:
        """Whether another live loop holds this engine: a run, or direct main() calls (a run
        rebinding it would reset their downloads); ``or_running``: or that loop merely runs."""
        bound = self._loop
        if bound is None or bound is loop or bound.is_closed():
            return False
        return self._runs > 0 or self._calls > 0 or (or_running and bound.is_running())

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not loop:
            self._reset()  # made in a loop that is gone or stopped: start afresh in this one
            self._loop = loop
        if self._closer is None or self._closer[0] is not loop:
            # Each binding to a loop has its own list: a closer dropped when the engine moved
            # to another loop (and finalised whenever the collector gets to it) closes what
            # was opened in its loop then, never what a later binding opened.
            self._opened = []
            closer = _close_at_loop_end(self._opened, self.download_strategy.home)
            self._closer = (loop, closer)
            # Run it to its yield: that registers it with the loop, whose shutdown (the end of
            # asyncio.run) closes it, and so the clients, even if this engine is gone by then
            # (a local of the coroutine that ran it).
            with contextlib.suppress(StopIteration):
                self._closer[1].__anext__().send(None)

    async def close(self) -> None:
        """Close the session this engine created (never a caller's ``client``)."""
        session, lean = self._session, self._lean
        forget_directories(self.download_strategy.home)
        for pending in self._robots.values():
            pending.cancel()
        self._reset()
        self._opened[:] = [c for c in self._opened if c is not session and c is not lean]
        if session is not None and session is not self._client:
            await session.close()
        if lean is not None:
            await lean.close()

    def _in_this_loop(self, bundle: Bundle) -> bool:
        """Bind to the running loop (its end closes the clients) unless a run in another loop
        holds this engine, which fails the bundle."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._busy_elsewhere(loop):
                message = "this AioDownload is running in another event loop: use one per loop"
                bundle.fail(ErrorKind.STRATEGY, message)
                return False
            self._bind(loop)
        return True


async def _close_at_loop_end(opened: list[Any], home: str) -> AsyncGenerator[None, None]:
    """Closes the clients an engine opened in one event loop when that loop shuts down, for
    code that calls ``await download.main(bundle)`` under ``asyncio.run`` and never
    ``close()`` (as with aiodownload, which had no close): no unclosed session or socket is
    left behind. It holds the clients, not the engine, which may be gone by then."""
    try:
        yield
    finally:
        forget_directories(home)
        # The lean client closes without waiting; an aiohttp session's close waits, and a
        # closer finalised as the loop shuts down may never get past a wait: lean ones first.
        opened.sort(key=lambda client: isinstance(client, LeanClient))  # popped from the end
        while opened:
            await opened.pop().close()


def _current_loop(last: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    """This thread's current event loop, outside any running one. Where there is none (or it
    is closed), ``last`` (the one handed out before: an ``asyncio.run()`` since unset it) or
    else a new one, set as current."""
    with warnings.catch_warnings():
        # Python 3.12+ warns where the policy makes the loop, 3.14 where the policy is asked.
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            current = asyncio.get_event_loop_policy().get_event_loop()
        except RuntimeError:  # none set: another thread, after asyncio.run(), or Python 3.14
            current = None
    if current is None or current.is_closed():
        current = last if last is not None and not last.is_closed() else asyncio.new_event_loop()
        asyncio.set_event_loop(current)
    return current


def _close_idle_loop(loop: asyncio.AbstractEventLoop) -> None:
    """At exit: what this loop still holds (the engine's clients close as its async
    generators shut down), then the loop itself."""
    if loop.is_closed() or loop.is_running():
        return
    with contextlib.suppress(Exception):
        loop.run_until_complete(_shut_down(loop))
    loop.close()


async def _shut_down(loop: asyncio.AbstractEventLoop) -> None:
    # A closer the engine dropped when it moved to another loop was finalised while this one
    # stood still: its close was only scheduled, and runs now.
    await asyncio.sleep(0)
    await loop.shutdown_asyncgens()
    others = asyncio.all_tasks(loop) - {asyncio.current_task(loop)}
    await asyncio.gather(*others, return_exceptions=True)
