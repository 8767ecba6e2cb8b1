"""one / swarm / each, and their async twins: the public entry points.

``each`` returns a ``Run`` (see ``shardload.run``); the async functions run the coordinator in
the caller's own event loop. Closing an ``each()`` iterator early (leaving its ``with`` block,
``close()``, a break out of ``for b in each(...)`` that drops it, an exception, Ctrl-C) cancels
the run: workers stop, temporary files are removed, nothing is left at a final path but
complete files. A run kept in a variable and no longer iterated is paused, not cancelled: it
stops once a few thousand finished bundles wait for the caller, and goes on when iterated.

Library rule (DESIGN rule 8): nothing here installs signal handlers, exits or prints.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any, Unpack

from .bundle import Bundle
from .errors import ConfigurationError
from .intake import COLLECTIONS, Items, no_url_in
from .paths import is_text_path
from .plan import RunOptions, make_plan
from .run import Run
from .worker.engine import AioDownload
from .worker.tree import find_complete


def each(
    iterable: Items,
    url_map: Callable[[Any], Any] | None = None,
    download: AioDownload | None = None,
    **options: Unpack[RunOptions],
) -> Run:
    """Download every item; yield each bundle as it finishes (input read lazily).

    ``url_map(item)`` gives the URL (or a Bundle) of an item; the item becomes ``bundle.info``.
    Options (``RunOptions``): ``processes``, ``split_hosts``, ``start_method``, ``backend``,
    ``ray_address``; they are checked before any work starts.

    A bundle's ``file_path`` is where its file was when the bundle was yielded. If a URL that
    comes later needs that path as a directory (``/a``, then ``/a/b``), the file moves to
    ``shardload.paths.displaced_path(path)`` (``<path>/%file``); ``swarm`` returns the final
    paths.
    """
    return Run(make_plan(iterable, url_map, download, options, sync=True))


def swarm(
    iterable: Items,
    download: AioDownload | None = None,
    *,
    url_map: Callable[[Any], Any] | None = None,
    **options: Unpack[RunOptions],
) -> list[Bundle]:
    """Download every item; return the bundles in input order (``[]`` for an empty input)."""
    return _in_order(list(each(iterable, url_map, download, **options)))


def one(
    url_or_bundle: str | Bundle,
    download: AioDownload | None = None,
    **options: Unpack[RunOptions],
) -> Bundle:
    """Download one URL (or bundle) and return its bundle."""
    return swarm([_single(url_or_bundle)], download, **options)[0]


def _single(item: Any) -> Any:
    """``one``'s item: several URLs are a usage error, as one URL given to ``swarm`` is (a
    list came back as a failed bundle whose URL was the list's text)."""
    if no_url_in(item, (*COLLECTIONS, Iterator)):
        raise ConfigurationError(
            f"one() takes a single URL or bundle, not a {type(item).__name__}: use swarm() "
            "or each() for several"
        )
    return item


async def aeach(
    iterable: Items,
    url_map: Callable[[Any], Any] | None = None,
    download: AioDownload | None = None,
    **options: Unpack[RunOptions],
) -> AsyncGenerator[Bundle, None]:
    """``each`` for asyncio programs: runs in the current loop (a ``client=`` session works)."""
    plan = make_plan(iterable, url_map, download, options, sync=False)
    async with contextlib.aclosing(plan.run()) as batches:
        step = _first_step_closed_by_us(batches)
        while True:
            try:
                batch = await step
            except StopAsyncIteration:
                return
            for bundle in batch:
                yield bundle
            step = batches.__anext__()


def _first_step_closed_by_us(batches: AsyncGenerator[list[Bundle], None]) -> Awaitable[Any]:
    """The run's first step, its generator kept off the event loop's list of generators to
    close at shutdown: ``aeach`` closes it. Listed, ``asyncio.run`` ending on an exception
    raised in the caller's ``async for`` (a KeyboardInterrupt) closed both at once, and the
    second close, while the first still stopped the workers, printed "aclose(): asynchronous
    generator is already running". Its finalizer stays: dropped unclosed, it is still closed."""
    firstiter, finalizer = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(firstiter=None, finalizer=finalizer)
    try:
        return batches.__anext__()  # a generator meets the hooks on its first __anext__
    finally:
        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)


async def aswarm(
    iterable: Items,
    download: AioDownload | None = None,
    *,
    url_map: Callable[[Any], Any] | None = None,
    **options: Unpack[RunOptions],
) -> list[Bundle]:
    """``swarm`` for asyncio programs."""
    stream = aeach(iterable, url_map, download, **options)
    async with contextlib.aclosing(stream):
        bundles = [bundle async for bundle in stream]
    return _in_order(bundles)


async def aone(
    url_or_bundle: str | Bundle,
    download: AioDownload | None = None,
    **options: Unpack[RunOptions],
) -> Bundle:
    """``one`` for asyncio programs."""
    return (await aswarm([_single(url_or_bundle)], download, **options))[0]


def _in_order(bundles: list[Bundle]) -> list[Bundle]:
    bundles.sort(key=lambda b: b.seq)
    # Only a path that another bundle of this run needs as a directory can have been moved:
    # checking those alone spares a stat per file at the tail of every run.
    directories: set[str] = set()
    for bundle in bundles:
        path = bundle.file_path
        if not is_text_path(path):  # a bundle refused for it (intake)
            continue
        while path and (path := os.path.dirname(path)) not in directories:
            directories.add(path)
    for bundle in bundles:
        if bundle.file_path in directories:
            _follow_displacement(bundle)
    return bundles


def _follow_displacement(bundle: Bundle) -> None:
    """A file moved to ``<path>/%file`` after its bundle was made: point the bundle there."""
    path = bundle.file_path
    if bundle.ok and path:
        found = find_complete(path, None)  # a path this run wrote, walked safely then
        if found is not None:
            bundle.file_path = bundle._run_path = found[0]
