"""The input side of a run: the caller's iterable read lazily on a thread, each item turned
into a fresh bundle.

Invariants:
- at most ``cap`` prepared bundles wait for the coordinator's loop; the thread blocks, never
  the loop, and stops reading once told to stop;
- every item gives exactly one bundle: an item that cannot be used (no URL, a failing
  ``url_map``, a ``__str__`` that raises) gives a failed one (``bad_input``) and the rest of
  the input goes on; an exception raised by the iterable itself ends the input and is
  re-raised in the caller;
- an async iterable is awaited in the loop that runs the coordinator (the caller's, in
  ``aeach``), one item at a time, from the same thread; stopping cancels the item awaited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import threading
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeAlias

from .bundle import PENDING, Bundle
from .errors import DownloadFailed, ErrorKind
from .paths import is_text_path

# What a run reads: an iterable, or in asyncio programs an async iterable too.
Items: TypeAlias = Iterable[Any] | AsyncIterable[Any]


class InputReader:
    """Iterates the caller's input on a thread, at most ``cap`` bundles ahead of the loop."""

    def __init__(
        self,
        items: Items,
        prepare: Callable[[int, Any], Bundle],
        wake: Callable[[], None],
        cap: int,
    ) -> None:
        self._items: Iterable[Any]
        if isinstance(items, AsyncIterable) and not isinstance(items, Iterable):
            self._items = AsyncItems(items, asyncio.get_running_loop())
        else:  # an iterable, or what fails as one in the caller
            self._items = items
        self._prepare = prepare
        self._wake = wake
        self._cap = cap
        self._buffer: deque[Bundle] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self.done = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name="shardload-input")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            for seq, item in enumerate(self._items):
                if self._stopped:  # the run ended while the caller's iterator made this item
                    return
                bundle = self._prepare(seq, item)
                with self._cond:
                    while len(self._buffer) >= self._cap and not self._stopped:
                        self._cond.wait(0.5)
                    if self._stopped:
                        return
                    self._buffer.append(bundle)
                    first = len(self._buffer) == 1
                if first:
                    self._wake()
        except BaseException as exc:  # the caller's iterator failed: re-raised in the caller
            if isinstance(exc, Exception):
                # Its traceback shows shardload's thread, not the caller's: say why, and what
                # to do about an input that can only be read on the thread that made it.
                exc.add_note(
                    "(raised while shardload read the input on its own thread; an input tied to "
                    "the thread that made it, such as a sqlite3 cursor, must be read into a "
                    "list first)"
                )
            self.error = exc
        finally:
            with self._cond:
                self.done = True
            self._wake()

    def take(self, limit: int) -> list[Bundle]:
        with self._cond:
            count = min(limit, len(self._buffer))
            out = [self._buffer.popleft() for _ in range(count)]
            self._cond.notify()
        return out

    @property
    def exhausted(self) -> bool:
        with self._cond:
            return self.done and not self._buffer

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if isinstance(self._items, AsyncItems):
            self._items.stop()


class AsyncItems:
    """An async iterable, read as an iterable from a thread other than its loop's."""

    def __init__(self, items: AsyncIterable[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._items = items
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[Any] | None = None
        self._stopped = False

    def __iter__(self) -> Iterator[Any]:
        iterator = aiter(self._items)
        while True:
            with self._lock:
                if self._stopped:
                    return
                pending = asyncio.run_coroutine_threadsafe(_next(iterator), self._loop)
                self._pending = pending
            try:
                item = pending.result()
            except concurrent.futures.CancelledError:
                return  # stopped while it was awaited
            if item is _END:
                return
            yield item

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self._pending is not None:
                self._pending.cancel()


_END = object()


async def _next(iterator: AsyncIterator[Any]) -> Any:
    return await anext(iterator, _END)


class Handed:
    """An input item that is a bundle its caller keeps no reference to (the CLI's lines):
    the run may hold it as an equal copy, on disk while it waits. Its info must pickle."""

    __slots__ = ("bundle",)

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle


class RunMark:
    """Marks the bundles one run holds, while it is live."""

    __slots__ = ("live",)

    def __init__(self) -> None:
        self.live = True


def _own(bundle: Bundle, run: RunMark) -> Bundle:
    """The bundle itself, or a copy when this run handed it out already (its caller may
    hold it still) or it is pending in another live run."""
    other = isinstance(bundle._run, RunMark) and bundle._run.live and bundle.state == PENDING
    return copy.copy(bundle) if bundle._run is run or other else bundle


def prepare_item(seq: int, item: Any, url_map: Callable[[Any], Any] | None, run: RunMark) -> Bundle:
    """Turn one input item into a fresh bundle; an item that cannot be used gives a failed one.

    A bundle made here from a plain URL (its info, if any, a plain string or number), or
    ``Handed`` over, is the run's own (``_spare``): it may wait on disk as an equal copy.
    A caller's bundle is reset and used in place, except one this run handed out already (the
    same object twice in the input, or answered by url_map for two items) or one still pending
    in another live run: that one gets a copy, so each item has its own.
    """
    spare = False
    try:
        if isinstance(item, Handed):
            bundle = item.bundle
            # What a parked job keeps (``parked``): a subclass's own or params would be lost.
            spare = type(bundle) is Bundle and bundle.params is None
        elif isinstance(item, Bundle):
            bundle = _own(item, run)
        else:
            try:
                url = url_map(item) if url_map is not None else item
            except Exception as exc:
                return _failed_item(seq, item, f"url_map failed: {describe_error(exc)}")
            if isinstance(url, Bundle):
                bundle = _own(url, run)  # url_map may answer one bundle for several items
                if bundle.info is None or bundle._info_by is run:
                    bundle.info = item  # as aiodownload did: the item rides along
                    bundle._info_by = run
            elif url is None:
                return _failed_item(seq, item, "no URL: the item (or url_map's answer) is None")
            elif no_url_in(url, _NEVER_URLS):
                name = type(url).__name__
                if url_map is None:
                    why = f"a {name} is not a URL: pass url_map= to say where its URL is"
                else:
                    why = f"url_map gave a {name}, not a URL"
                return _failed_item(seq, item, why)
            else:
                # Never `url == item` on the caller's objects: their __eq__ may raise or
                # answer with an array (a numpy row). A plain URL string is its own item; any
                # other (a record whose str() is its URL, a yarl.URL) rides along as info, as
                # aiodownload's default url_map=str kept it.
                plain = type(url) is str and type(item) is str and url == item
                bundle = Bundle(url=_text(url), info=None if plain else item)
                # A copy of a plain string or number is the same value to its caller.
                spare = plain or type(item) in _VALUES
        _start(bundle, seq, run, spare)
        if bundle.file_path is not None and not is_text_path(bundle.file_path):
            # Caught here, it fails alone: a swarm() that met it while ordering its results
            # raised, and every other result was lost.
            name = type(bundle.file_path).__name__
            return bundle.fail(ErrorKind.BAD_INPUT, f"file_path is a {name}, not a path (a str)")
    except DownloadFailed as exc:
        return _failed_item(seq, item, exc.message)
    except Exception as exc:  # one unusable item fails alone; the rest of the input goes on
        return _failed_item(seq, item, f"unusable input item: {describe_error(exc)}")
    return bundle


def _start(bundle: Bundle, seq: int, run: RunMark, spare: bool) -> None:
    bundle._begin()
    bundle._run = run
    bundle.seq = seq
    bundle._spare = spare


def parked(bundle: Bundle) -> tuple[int, str, str | None, Any]:
    """What a ``_spare`` bundle's job keeps while it waits on disk: all its caller gave."""
    return bundle.seq, bundle.url, bundle.file_path, bundle.info


def unparked(record: tuple[Any, ...], run: RunMark) -> Bundle:
    """The bundle again, from what ``parked`` kept: an equal copy, started in ``run``."""
    seq, url, path, info = record
    bundle = Bundle(url, info=info, file_path=path)
    _start(bundle, seq, run, spare=True)
    return bundle


COLLECTIONS = (Mapping, list, tuple, set, frozenset)
_NEVER_URLS = (*COLLECTIONS, int, float, complex)


def no_url_in(value: Any, kinds: tuple[type, ...]) -> bool:
    """Whether ``value`` is a plain one of ``kinds`` (containers, numbers): its str() is never
    a URL. A record class that subclasses one and says its URL in __str__ is taken as
    aiodownload took it."""
    if not isinstance(value, kinds):
        return False
    str_of: Any = type(value).__str__
    return str_of is object.__str__


_VALUES = frozenset({str, bytes, int, float, bool})


def _failed_item(seq: int, item: Any, message: str) -> Bundle:
    bundle = Bundle(url=_safe_text(item), info=item, seq=seq)
    return bundle.fail(ErrorKind.BAD_INPUT, message)


def _text(value: Any) -> str:
    """A URL item as text; bytes must be UTF-8, as the CLI's input lines must: decoded with
    replacement, ``caf\xe9`` and ``caf\xe8`` became one URL, one request and one file."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DownloadFailed(ErrorKind.BAD_INPUT, f"URL bytes are not UTF-8: {exc}") from None
    return str(value)


def _safe_text(value: Any) -> str:
    """``_text``, for reporting a failure: the caller's ``__str__`` may be what failed."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    try:
        return _text(value)
    except Exception:
        return f"<unprintable {type(value).__name__}>"


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_safe_text(exc)}"
