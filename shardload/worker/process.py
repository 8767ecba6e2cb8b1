"""The entry point of a worker process: one uvloop event loop running one ShardWorker.

Messages in (pickled tuples over a pipe): ("jobs", [Job, ...]), ("finish",), ("abort",).
End of file on the inbox (the coordinator died) means abort. Messages out: lists of Results;
the first, empty, says the worker is ready.
Pipe IO runs in two threads so the event loop never blocks on the coordinator.
The process ignores SIGINT: Ctrl-C reaches the whole process group, and the coordinator decides
how its workers stop (DESIGN rule 8 keeps signal handling out of the caller's process; this is
the worker's own process).
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import queue
import signal
import threading
from multiprocessing.connection import Connection
from typing import Any

from ..bundle import Result
from .engine import AioDownload
from .shard import ShardWorker


def worker_main(config_blob: bytes, inbox: Connection, outbox: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = pickle.loads(config_blob)
    run_loop(_serve(config, inbox, outbox))


def run_loop(main: Any) -> Any:
    """Run a coroutine on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop  # noqa: PLC0415  (optional: plain asyncio where it does not install)
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def _serve(config: dict[str, Any], inbox: Connection, outbox: Connection) -> None:
    engine = AioDownload(
        download_strategy=config["download_strategy"],
        request_strategy=config["request_strategy"],
    )
    engine.host_budgets = dict(config["host_budgets"])
    loop = asyncio.get_running_loop()
    out: queue.SimpleQueue[list[Result] | None] = queue.SimpleQueue()
    writer = threading.Thread(target=_write_loop, args=(out, outbox), daemon=True)
    writer.start()
    out.put([])  # "ready": the coordinator tells a failed start from a crash by this
    worker = ShardWorker(engine, emit=out.put, batch_size=config.get("batch_size", 256))
    stop: asyncio.Future[str] = loop.create_future()

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
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            loop.call_soon_threadsafe(on_message, message)
        if message[0] != "jobs":
            return


def _write_loop(out: queue.SimpleQueue[list[Result] | None], outbox: Connection) -> None:
    while (results := out.get()) is not None:
        try:
            outbox.send_bytes(pickle.dumps(results, pickle.HIGHEST_PROTOCOL))
        except OSError:
            return
    outbox.close()
