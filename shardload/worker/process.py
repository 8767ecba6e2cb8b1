"""The entry point of a worker process: one uvloop event loop running one ShardWorker.

Messages in (pickled tuples over a pipe): ("jobs", [Job, ...]), ("finish",), ("abort",).
End of file on the inbox (the coordinator died) means abort. Messages out: lists of Results;
the first, empty, says the worker is ready.
Pipe IO runs in two threads so the event loop never blocks on the coordinator.
The process ignores SIGINT, SIGTERM and SIGHUP (``STOP_SIGNALS``): a terminal's Ctrl-C, `timeout`,
or a service manager stopping its control group signals every process at once, and the
coordinator decides how its workers stop: killed on such a signal, a worker lost the results of
the files it had just written, so the caller never heard of them. A worker still ends when the
coordinator says so or is gone (end of file on its inbox), and a SIGKILL ends it anyway
(DESIGN rule 8 keeps signal handling out of the caller's process; this is the worker's own).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import pickle
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from ..bundle import Result, sendable_results
from ..stop_signals import STOP_SIGNALS
from .config import rebuild
from .files import hash_as_read
from .meter import Counter
from .shard import ShardWorker


def worker_main(config_blob: bytes, inbox: Connection, outbox: Connection, meter: Any) -> None:
    """``meter``: 64 bytes of shared memory: the first 8 count the bytes of bodies this worker
    receives (``worker.meter``), the next 8 its loop's heartbeats (``hang_timeout``)."""
    for stop in STOP_SIGNALS:
        signal.signal(stop, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by the coordinator while this started
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    _keep_freed_memory()
    config = pickle.loads(config_blob)  # imports the caller's strategy modules too
    _collect_less()
    hash_as_read(config.get("hash_as_read", False))
    received, beats = ctypes.c_uint64.from_buffer(meter), ctypes.c_uint64.from_buffer(meter, 8)
    run_loop(_serve(config, inbox, outbox, received, beats))


def _keep_freed_memory() -> None:
    """Let glibc keep freed heap memory for reuse instead of returning it at once.

    Every read of a body is a fresh bytes object (uvloop's, then httptools' for the part that
    came with the headers): ~100 KiB each on a medium file. With glibc's defaults the heap top
    is handed back to the kernel after ~128 KiB are free and faulted in again (pages zeroed) on
    the next read: ~30-45 us per 100 KiB response, a fifth of a medium file's CPU here. Keeping
    up to 64 MiB, and serving blocks up to 8 MiB from the heap rather than fresh mmaps, cut the
    system CPU of 2,000 x 100 KiB (processes=2) from 0.32 to 0.23 s. Peak memory is unchanged
    (flow control bounds it); memory freed after a peak returns to the kernel later. Only in
    worker processes: a caller's own process keeps its allocator settings.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's; musl's accepts and ignores these
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 8 << 20)  # fixing one threshold fixes both: set both
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)
    mallopt(_M_TOP_PAD, 1 << 20)


_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # <malloc.h>


def _collect_less() -> None:
    """Spare the worker's cyclic garbage collector most of its passes.

    Every request allocates tasks, futures, frames and tuples, and a worker holds a few
    hundred jobs at once, so with Python's defaults (a pass every 700 net allocations) the
    collector ran ~120 times per 10,000 small files, re-scanning live jobs and every module
    object: 60-120 ms of a worker's ~1.5 s of CPU. Freezing what exists once the imports are
    done (modules, classes, the strategies) keeps it out of every later pass, and a pass every
    10,000 allocations still bounds the young objects to a few MiB: 5-11 ms per worker, same
    peak memory with shardload's own strategies. The price: a strategy that leaves bodies in
    reference cycles (kept by an exception's traceback, say) frees them later (an audit's
    200 x 2 MB such bodies peaked at 237 MiB per worker against 148). Only in worker
    processes: a caller's own process keeps its settings.
    """
    gc.freeze()
    gc.set_threshold(_YOUNG_OBJECTS, *gc.get_threshold()[1:])


_YOUNG_OBJECTS = 10_000


def run_loop(main: Any) -> Any:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop  # noqa: PLC0415  (optional: plain asyncio where it does not install)
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve(
    config: dict[str, Any], inbox: Connection, outbox: Connection, meter: Counter, beats: Counter
) -> None:
    # Bound to this loop now, as a run binds it: a subclass's main() never binds it itself,
    # and its self.client (aiodownload's overrides call self.client.get) needs the loop.
    engine = rebuild(config).for_run()
    loop = asyncio.get_running_loop()
    out: queue.SimpleQueue[list[Result] | None] = queue.SimpleQueue()
    writer = threading.Thread(target=_write_loop, args=(out, outbox), daemon=True)
    writer.start()
    out.put([])  # "ready": the coordinator tells a failed start from a crash by this
    worker = ShardWorker(
        engine, emit=out.put, batch_size=config.get("batch_size", 256), meter=meter
    )
    stop: asyncio.Future[str] = loop.create_future()

    def beat() -> None:  # the coordinator kills a worker whose loop stops beating
        beats.value += 1
        loop.call_later(_BEAT_SECONDS, beat)

    beat()

    def on_message(message: tuple[Any, ...]) -> None:
        if message[0] == "jobs":
            worker.accept(message[1])
        elif not stop.done():
            stop.set_result(message[0])

    reader = threading.Thread(target=_read_loop, args=(inbox, loop, on_message), daemon=True)
    reader.start()
    try:
        if await stop == "finish":
            await worker.drain()
        else:
            await worker.abort()
    finally:
        await engine.close()
        out.put(None)
        writer.join(timeout=30)


def _read_loop(inbox: Connection, loop: asyncio.AbstractEventLoop, on_message: Any) -> None:
    while True:
        try:
            message = pickle.loads(inbox.recv_bytes())
        except (EOFError, OSError):
            message = ("abort",)
        except Exception as exc:
            # A batch this process cannot load (a class the caller's script defines where a
            # worker never runs it): end as a crash, so the coordinator isolates the job and
            # fails it alone, instead of waiting for ever on a worker that reads no more.
            with contextlib.suppress(OSError):
                os.write(2, f"shardload worker: cannot load jobs: {exc!r}\n".encode())
            os._exit(_CANNOT_LOAD)
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(on_message, message)
        if message[0] != "jobs":
            return


_CANNOT_LOAD = 70  # EX_SOFTWARE
_BEAT_SECONDS = 0.25


def _write_loop(out: queue.SimpleQueue[list[Result] | None], outbox: Connection) -> None:
    while (results := out.get()) is not None:
        results = sendable_results(results)
        try:
            outbox.send_bytes(pickle.dumps(results, pickle.HIGHEST_PROTOCOL))
        except OSError:
            return
    outbox.close()
