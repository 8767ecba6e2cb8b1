"""backend="ray": one Ray actor per shard, for jobs larger than one machine.

The actor runs the same ShardWorker as a worker process (one host lives in exactly one actor,
so per-host limits stay exact), in Ray's own event loop. Jobs go out with ``submit`` (the
coordinator's flow control bounds how many are outstanding per actor: back-pressure); results
stream back through one poller per actor calling ``take``, which returns what finished so far.
An actor that dies surfaces as an error in its poller: the coordinator restarts the shard and
resends its unfinished jobs, exactly as with worker processes.

Ray is optional (``pip install 'shardload[ray]'``). ``ray.init`` is the caller's choice: if Ray
is already initialised it is used as is; else ``ray_address`` is passed to ``ray.init`` (None
starts a local cluster). Output goes to the download home, which on a cluster must be a path
every node can write and the caller can read (a shared filesystem); see README "Scaling out".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from ..bundle import Job, Result, sendable_results
from ..errors import ConfigurationError, ShardloadError
from ..worker.config import rebuild
from ..worker.files import hash_as_read
from ..worker.shard import ShardWorker
from ..worker.temp_files import forget_temp_dir, remove_temp_files, temp_prefix
from .base import START_SECONDS, THE_DOWNLOAD, ExecutorSink

_POLL_SECONDS = 0.5
_STOP_SECONDS = 5.0


def import_ray() -> Any:
    try:
        import ray  # noqa: PLC0415  (optional dependency)
    except ImportError as exc:
        raise ConfigurationError("backend='ray' needs Ray: pip install 'shardload[ray]'") from exc
    return ray


def ensure_ray(address: str | None, *, quiet: bool = False) -> Any:
    """Ray, initialised: the caller's cluster if already initialised, else ``address``;
    ``quiet``: Ray's own notes as it starts (INFO and WARNING lines) are not printed."""
    ray = import_ray()
    if not ray.is_initialized():
        # With no address, ray.init reads RAY_ADDRESS: an unreachable one hangs as well.
        named = address or os.environ.get("RAY_ADDRESS")
        if named:
            _check_reachable(named)
        try:
            with _signal_handlers_kept():
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR if quiet else logging.INFO,
                )
        except Exception as exc:  # a bad address, a missing ray[client]: the caller's to fix
            where = f"the Ray cluster at {named!r}" if named else "a local Ray cluster"
            raise ConfigurationError(f"cannot start or reach {where}: {exc}") from exc
    return ray


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """``ray.init`` installs a SIGTERM handler of its own (``sys.exit(15)``): the caller's
    (the CLI's clean stop, exit 130) is put back, as a library installs no handler (rule 8)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread has handlers to change
        return
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            if handler is not None and signal.getsignal(sig) is not handler:
                signal.signal(sig, handler)


def _check_reachable(address: str) -> None:
    """A ``host:port`` address nobody listens at fails here, at once: ``ray.init`` would
    retry it for minutes (for ever, from the CLI) before giving up."""
    where = address.removeprefix("ray://")
    host, colon, port = where.rpartition(":")
    if not colon or not port.isdigit() or not host:
        return  # "auto", "local", or a form Ray reads itself
    try:
        with socket.create_connection((host.strip("[]"), int(port)), _REACH_TIMEOUT) as sock:
            speaks = address.startswith("ray://") or _speaks_grpc(sock)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot start or reach the Ray cluster at {address!r}: nothing answers at "
            f"{host}:{port} ({exc or type(exc).__name__})"
        ) from exc
    if not speaks:
        # A web server, the dashboard's port, a typo: ray.init would wait on it for minutes.
        raise ConfigurationError(
            f"cannot reach the Ray cluster at {address!r}: {host}:{port} answers, but not as "
            "a Ray head node (its GCS port, 6379 by default)"
        )


def _speaks_grpc(sock: socket.socket) -> bool:
    """Whether the server is a gRPC one, as a Ray head's GCS is: answered with HTTP/2's
    connection preface, it sends a SETTINGS frame. Behind TLS (RAY_USE_TLS) it cannot be
    asked in plain text, and is taken on trust."""
    if os.environ.get("RAY_USE_TLS", "0") not in ("", "0"):
        return True
    try:
        sock.sendall(_HTTP2_PREFACE + _EMPTY_SETTINGS)
        head = b""
        while len(head) < 9:
            more = sock.recv(9 - len(head))
            if not more:
                return False
            head += more
    except OSError:
        return False
    return head[3] == _SETTINGS  # a frame header: length (3 bytes), then its type


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_SETTINGS = 0x4
_EMPTY_SETTINGS = bytes([0, 0, 0, _SETTINGS, 0, 0, 0, 0, 0])
_REACH_TIMEOUT = 10.0


def cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


class ShardActor:
    """The body of a shard actor (wrapped by ``ray.remote`` when the executor starts)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = config
        hash_as_read(config.get("hash_as_read", False))
        self._worker: ShardWorker | None = None
        self._results: list[Result] = []
        self._ready: asyncio.Event | None = None
        self._stopping = False  # stop() began: a batch that comes now is not started
        self._stopped = False  # stop() ended: take() returns None once nothing is left

    def _the_worker(self) -> ShardWorker:
        if self._worker is None:
            engine = rebuild(self._config).for_run()  # bound as in a worker process
            self._ready = asyncio.Event()
            self._worker = ShardWorker(engine, emit=self._emit)
        return self._worker

    def _emit(self, results: list[Result]) -> None:
        self._results.extend(results)
        if self._ready is not None:
            self._ready.set()

    async def identity(self) -> str:
        """The prefix of this actor's temporary files (node and pid)."""
        return temp_prefix()

    async def submit(self, jobs: list[Job]) -> None:
        # A batch sent just before the stop can arrive after it: its files would be written
        # once the last results were taken, with nobody to tell of them.
        if not self._stopping:
            self._the_worker().accept(jobs)

    async def take(self, wait: float) -> list[Result] | None:
        """The results since the last take, waiting up to ``wait`` s for one; None once the
        actor has stopped and every result was taken."""
        if not self._stopped:
            self._the_worker()
        if not self._results and self._ready is not None and not self._stopped:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), wait)
        out, self._results = self._results, []
        if self._ready is not None:
            self._ready.clear()
        if not out and self._stopped:
            return None
        return sendable_results(out)

    async def stop(self) -> None:
        """Cancel the jobs under way; the results of those that finished (the worker's abort
        sends them) stay for the executor's poller to take."""
        self._stopping = True
        if self._worker is not None:
            await self._worker.abort()
            await self._worker.engine.close()
        self._stopped = True
        if self._ready is not None:
            self._ready.set()


class RayExecutor:
    crosses_processes = True
    imports_main = False

    def __init__(
        self,
        config: dict[str, Any],
        shards: int,
        home: str,
        address: str | None = None,
    ) -> None:
        self._ray = ensure_ray(address)
        self.shards = shards
        self._home = home
        cpus = cluster_cpus(self._ray)
        # Never ask for more CPUs than the cluster has, or actors would wait forever.
        self._cpus_each = min(1.0, cpus / shards)
        self._actor_class = self._ray.remote(ShardActor)
        try:  # as processes=N checks pickling before any worker starts
            self._ray.cloudpickle.dumps(config)
        except Exception as exc:
            raise ConfigurationError(
                f"{THE_DOWNLOAD} must be serialisable to run in Ray actors "
                f"(no open clients or locks): {exc}"
            ) from exc
        # One actor per CPU of the cluster or more: none has a core to spare (see hash_as_read).
        self._config = {**config, "hash_as_read": shards >= cpus}
        self._actors: list[tuple[Any, str] | None] = [None] * shards
        self._pollers: list[asyncio.Task[None] | None] = [None] * shards
        self._submits: set[asyncio.Future[None]] = set()  # batches on their way to an actor
        self._sink: ExecutorSink | None = None
        self._stopping = False
        # Named actors (shardload-<run>-<shard>-<n>) let an operator find and inspect them.
        self._run_id = uuid.uuid4().hex[:8]
        self._spawned = 0

    async def start(self, sink: ExecutorSink) -> None:
        self._sink = sink
        # Every spawn is awaited, so none is still creating an actor when the others are killed.
        outcomes = await asyncio.gather(
            *(self._spawn(shard) for shard in range(self.shards)), return_exceptions=True
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            await self.abort()
            raise errors[0]

    async def _spawn(self, shard: int) -> None:
        self._spawned += 1
        actor = self._actor_class.options(
            name=f"shardload-{self._run_id}-{shard}-{self._spawned}",
            num_cpus=self._cpus_each,
            max_restarts=0,
            max_concurrency=1000,
        ).remote(self._config)
        try:
            prefix = await asyncio.wait_for(actor.identity.remote(), START_SECONDS)
        except TimeoutError:
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
            raise ConfigurationError(
                f"a Ray actor did not start within {START_SECONDS:g} s "
                "(does the cluster have a free CPU for it?)"
            ) from None
        except BaseException:
            # Not yet known to _stop, so nothing else would ever kill it.
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
            raise
        if self._stopping:
            # The run stopped while it started (a restart a cancel did not wait for).
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
            remove_temp_files(self._home, prefix)
            raise ShardloadError("the executor stopped while this actor started")
        self._actors[shard] = (actor, prefix)
        self._pollers[shard] = asyncio.create_task(self._poll(shard, actor, prefix))

    def received(self) -> None:
        return None  # actors on other machines: their results carry their bytes

    def send(self, shard: int, jobs: list[Job]) -> None:
        entry = self._actors[shard]
        if entry is not None:
            actor, prefix = entry
            # A dead actor shows up in its poller; a batch the actor could not take (a job
            # whose unpickling fails there) only here: its jobs would be waited for for ever.
            task = asyncio.ensure_future(
                self._taken(shard, actor, prefix, actor.submit.remote(jobs))
            )
            self._submits.add(task)
            task.add_done_callback(self._submits.discard)

    async def _taken(self, shard: int, actor: Any, prefix: str, submitted: Any) -> None:
        try:
            await submitted
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self._lost(shard, actor, prefix, exc):
                with contextlib.suppress(Exception):
                    self._ray.kill(actor, no_restart=True)

    async def _poll(self, shard: int, actor: Any, prefix: str) -> None:
        if self._sink is None:
            return
        try:
            while (results := await actor.take.remote(_POLL_SECONDS)) is not None:
                if results:
                    self._sink.results(shard, results)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lost(shard, actor, prefix, exc)

    def _lost(self, shard: int, actor: Any, prefix: str, exc: Exception) -> bool:
        """Report the shard's actor as crashed, once; False when it was replaced already."""
        current = self._actors[shard]
        if self._stopping or current is None or current[0] is not actor or self._sink is None:
            return False
        self._actors[shard] = None
        remove_temp_files(self._home, prefix)
        self._sink.crashed(shard, f"ray actor of shard {shard} died: {type(exc).__name__}")
        return True

    async def restart(self, shard: int) -> None:
        await self._spawn(shard)

    async def finish(self) -> None:
        await self._stop(graceful=False)

    async def abort(self) -> None:
        await self._stop(graceful=True)

    async def _stop(self, graceful: bool) -> None:
        self._stopping = True
        for submit in list(self._submits):
            submit.cancel()
        actors = [a for a in self._actors if a is not None]
        if graceful and actors:
            # Let each actor cancel its jobs (removing their temporary files) before it goes,
            # and its poller take the results of those that finished meanwhile (the run's late
            # ones): a poll cancelled here lost the files it told of.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(a.stop.remote() for a, _ in actors), return_exceptions=True),
                    _STOP_SECONDS,
                )
            pollers = [p for p in self._pollers if p is not None]
            if pollers:
                await asyncio.wait(pollers, timeout=_STOP_SECONDS)
        for poller in self._pollers:
            if poller is not None:
                poller.cancel()
        for actor, prefix in actors:
            with contextlib.suppress(Exception):
                self._ray.kill(actor, no_restart=True)
            remove_temp_files(self._home, prefix)
        self._actors = [None] * self.shards
        # Killed actors close no engine, which would remove the temporary folder if empty.
        forget_temp_dir(self._home)
