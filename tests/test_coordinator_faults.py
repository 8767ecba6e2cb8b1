"""Faults around the coordinator and its executors: one bad item, pipe or start fails alone."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import shardload
from shardload import ConfigurationError, DownloadStrategy, ErrorKind, RequestStrategy
from shardload.api import _in_order
from shardload.bundle import Bundle, Job, Result
from shardload.coordinator import Limits, coordinate
from shardload.executors.base import ExecutorSink
from shardload.executors.processes import ProcessExecutor, _Worker
from shardload.worker.config import describe

from .conftest import files_under, make_download, temp_files, written_result


class Sink:
    """An executor sink that records what it is told."""

    def __init__(self) -> None:
        self.got: list[Result] = []
        self.crashes: list[tuple[int, str]] = []
        self.changed = asyncio.Event()

    def results(self, shard: int, results: list[Result]) -> None:
        self.got.extend(results)
        self.changed.set()

    def crashed(self, shard: int, reason: str) -> None:
        self.crashes.append((shard, reason))
        self.changed.set()

    async def until(self, done: Callable[[], object], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self.changed.clear()
                await self.changed.wait()


async def collect(items: list[Any], executor: Any, **options: Any) -> list[Bundle]:
    seen: list[Bundle] = []
    async with contextlib.aclosing(coordinate(items, executor, **options)) as batches:
        async for batch in batches:
            seen.extend(batch)
    return seen


def kill_leftover_children() -> None:
    """Leaves no worker to the next test when a fix under test is missing."""
    for child in multiprocessing.active_children():
        child.kill()
        child.join()


class FirstOnly:
    """Unpickles only once across processes: the first worker to start creates ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


class WhileExists:
    """Unpickles only while ``path`` exists: later workers fail to start once it is gone."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.stat, (self.path,))


# --- params that cannot cross to a worker --------------------------------------------------


@pytest.mark.timeout(60)
def test_unpicklable_params_fail_alone(srv, home):
    urls = [f"{srv.base_urls[i % 4]}/bytes/100?name=p{i}" for i in range(12)]
    bad = Bundle(srv.base_urls[1] + "/bytes/100?name=bad", params={"k": threading.Lock()})
    items: list[Any] = [*urls[:5], bad, *urls[5:]]
    bundles = shardload.swarm(items, download=make_download(home), processes=2)
    assert len(bundles) == 13
    assert bundles[5] is bad
    assert bad.state == "failed" and bad.error_kind == ErrorKind.BAD_INPUT
    assert "params" in bad.error_message and "pickle" in bad.error_message
    assert [b.url for b in bundles if b.ok] == urls
    assert len(files_under(home)) == 12


@pytest.mark.timeout(60)
def test_a_message_that_cannot_be_sent_ends_its_worker_like_a_broken_pipe(srv, home):
    """The executor's own guard, behind the coordinator's: a crash, not a silent hang."""

    async def main() -> list[tuple[int, str]]:
        executor = ProcessExecutor(describe(make_download(home)), 1, home)
        sink = Sink()
        await executor.start(sink)
        try:
            bad: Job = (0, srv.base_urls[0] + "/links/1", {"k": threading.Lock()}, None, None, None)
            executor.send(0, [bad])
            await sink.until(lambda: sink.crashes)
            await executor.restart(0)
            executor.send(0, [(1, srv.base_urls[0] + "/links/2", None, None, None, None)])
            await sink.until(lambda: any(r[0] == 1 for r in sink.got))
        finally:
            await executor.abort()
        return sink.crashes

    try:
        crashes = asyncio.run(main())
    finally:
        kill_leftover_children()
    assert [shard for shard, _ in crashes] == [0]
    assert multiprocessing.active_children() == []


@pytest.mark.timeout(60)
def test_a_worker_that_finishes_starting_after_the_stop_is_not_left_running(home):
    """A restart the stop did not wait for (the caller cancelled the wait) must not leave its
    new worker behind: it missed the stop message and would wait for jobs forever."""

    async def main() -> BaseException | None:
        executor = ProcessExecutor(describe(make_download(home)), 1, home)
        await executor.start(Sink())
        restart = asyncio.ensure_future(executor.restart(0))  # not started before the abort
        await executor.abort()
        outcome = await asyncio.gather(restart, return_exceptions=True)
        return outcome[0] if isinstance(outcome[0], BaseException) else None

    try:
        error = asyncio.run(main())
        assert multiprocessing.active_children() == []
    finally:
        kill_leftover_children()
    assert isinstance(error, shardload.ShardloadError)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_start_cancelled_while_it_spawns_leaves_no_worker_and_no_crossed_pipes(srv, home, method):
    """The caller gives up while workers spawn (a timeout around aswarm): each start goes on
    in its thread with its pipe ends, so they are closed, and the child stopped, only when it
    is over. Closed at once, their numbers were reused by the next run's pipes while the old
    child took its copies: workers read each other's messages."""

    urls = [f"{srv.base_urls[i % 4]}/links/{i}" for i in range(40)]

    async def main() -> list[Bundle]:
        download = make_download(home)
        for delay in [0.0, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08] * 3:
            run = shardload.aswarm(urls, download=download, processes=2, start_method=method)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(run, timeout=delay)  # gives up while workers spawn
        return await shardload.aswarm(urls, download=download, processes=2, start_method=method)

    try:
        bundles = asyncio.run(main())
        assert [b.state for b in bundles] == ["written"] * 40
        deadline = time.monotonic() + 10
        while multiprocessing.active_children() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert multiprocessing.active_children() == []
    finally:
        kill_leftover_children()


def test_bad_params_on_a_split_host_fail_alone(srv, home):
    hot = srv.host_key(0)
    urls = [f"http://{hot}/bytes/100?name=s{i}" for i in range(8)]
    bad = Bundle(f"http://{hot}/bytes/100?name=bad", params=[("x",)])  # type: ignore[arg-type]
    bundles = shardload.swarm(
        [*urls, bad],
        download=make_download(home, RequestStrategy(concurrent=4)),
        processes=2,
        split_hosts={hot: 2},
    )
    assert bundles[-1] is bad
    assert bad.state == "failed" and bad.error_kind == ErrorKind.INVALID_URL
    assert "params" in bad.error_message
    assert all(b.ok for b in bundles[:-1])


# --- starting and restarting workers ---------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_failed_start_leaves_no_worker_running(tmp_path, home):
    config = describe(make_download(home))
    config["gate"] = FirstOnly(str(tmp_path / "gate"))  # one worker starts, the others cannot
    executor = ProcessExecutor(config, 3, home)
    try:
        with pytest.raises(ConfigurationError, match="failed to start"):
            asyncio.run(executor.start(Sink()))
        assert multiprocessing.active_children() == []
    finally:
        kill_leftover_children()


class FailingStart:
    shards = 2
    crosses_processes = False

    def __init__(self) -> None:
        self.aborted = False

    async def start(self, sink: ExecutorSink) -> None:
        raise RuntimeError("no workers today")

    def send(self, shard: int, jobs: list[Job]) -> None:
        raise AssertionError("nothing is sent to an executor that did not start")

    async def restart(self, shard: int) -> None:
        raise AssertionError("never started")

    async def finish(self) -> None:
        raise AssertionError("never started")

    async def abort(self) -> None:
        self.aborted = True


def test_the_coordinator_aborts_an_executor_that_failed_to_start():
    """Whatever an executor got started before it failed is stopped, not left running."""
    executor = FailingStart()
    with pytest.raises(RuntimeError, match="no workers today"):
        asyncio.run(collect(["http://127.0.0.2/a", "http://127.0.0.3/b"], executor))
    assert executor.aborted


class LastWordsThenCrash:
    """A shard whose worker answers its first batch and dies at once, as a worker killed just
    after it sent its results does: the results and the crash reach the loop together."""

    shards = 1
    crosses_processes = False

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.restarts = 0
        self._sink: ExecutorSink | None = None

    async def start(self, sink: ExecutorSink) -> None:
        self._sink = sink

    def send(self, shard: int, jobs: list[Job]) -> None:
        assert self._sink is not None
        self.sent.extend(job[0] for job in jobs)
        results: list[Result] = [written_result(job[0]) for job in jobs]
        loop = asyncio.get_running_loop()
        loop.call_soon(self._sink.results, shard, results)
        if self.restarts == 0:
            loop.call_soon(self._sink.crashed, shard, "killed right after sending")

    async def restart(self, shard: int) -> None:
        self.restarts += 1

    async def finish(self) -> None:
        pass

    async def abort(self) -> None:
        pass


def test_a_dead_workers_last_results_count_and_are_not_sent_again():
    executor = LastWordsThenCrash()
    urls = [f"http://127.0.0.2/r{i}" for i in range(5)]
    seen = asyncio.run(collect(urls, executor))
    assert executor.restarts == 1
    assert sorted(executor.sent) == list(range(5))  # each job went out once
    assert sorted(b.url for b in seen) == urls
    assert all(b.state == "written" for b in seen)


class SlowRestart:
    """Two shards. Shard 0's first worker dies: on its first jobs, or (``idle``) at once, with
    nothing outstanding. Its restart lasts until the test lets it end (``release``); shard 1
    answers its first jobs only once that restart began."""

    shards = 2
    crosses_processes = False

    def __init__(self, idle: bool, dies_again: bool = False) -> None:
        self.idle = idle
        self.dies_again = dies_again  # the first new worker dies too, while it is starting
        self.restarting = 0
        self.overlapped = False
        self.sent: list[tuple[int, int]] = []
        self.sent_while_restarting: list[int] = []
        self.sent_to_dead: list[int] = []
        self.restarts = 0
        self.release = asyncio.Event()
        self.restart_began = threading.Event()
        self.held: list[Job] = []
        self._sink: ExecutorSink | None = None

    async def start(self, sink: ExecutorSink) -> None:
        self._sink = sink
        if self.idle:
            asyncio.get_running_loop().call_soon(sink.crashed, 0, "killed while idle")

    def _answer(self, shard: int, jobs: list[Job]) -> None:
        assert self._sink is not None
        results: list[Result] = [written_result(job[0]) for job in jobs]
        asyncio.get_running_loop().call_soon(self._sink.results, shard, results)

    def send(self, shard: int, jobs: list[Job]) -> None:
        assert self._sink is not None
        self.sent.extend((shard, job[0]) for job in jobs)
        if shard == 0 and self.restarts == 1 and not self.release.is_set():
            self.sent_while_restarting.extend(job[0] for job in jobs)
        if shard == 1 and self.restarts == 0:
            self.held.extend(jobs)
        elif shard == 0 and self.restarts == 0:
            self.sent_to_dead.extend(job[0] for job in jobs)
            asyncio.get_running_loop().call_soon(self._sink.crashed, 0, "killed")
        else:
            self._answer(shard, jobs)

    async def restart(self, shard: int) -> None:
        self.restarts += 1
        self.overlapped |= self.restarting > 0
        self.restarting += 1
        self.restart_began.set()
        self._answer(1, self.held)
        self.held = []
        if self.dies_again and self.restarts == 1:
            assert self._sink is not None
            asyncio.get_running_loop().call_soon(self._sink.crashed, 0, "died again")
        await self.release.wait()
        self.restarting -= 1

    async def finish(self) -> None:
        pass

    async def abort(self) -> None:
        pass


@pytest.mark.parametrize(
    ("idle", "dies_again"),
    [(False, False), (True, False), (False, True)],
    ids=["busy", "idle", "dies-again"],
)
def test_a_restart_does_not_hold_up_the_other_shards(idle, dies_again):
    from shardload.sharding import shard_of
    from shardload.urls import host_key

    urls = [f"http://127.0.0.{i}/r{i}" for i in range(2, 40)]
    zeros = [u for u in urls if shard_of(host_key(u), 2) == 0]
    ones = [u for u in urls if shard_of(host_key(u), 2) == 1]
    assert len(zeros) > 4 and len(ones) > 4
    # Read before the crash: some of shard 0 (none when it dies idle) and of shard 1. Read
    # while shard 0 restarts: the rest, ending with shard 1, so that once all of shard 1 is
    # back every URL has been admitted.
    early_zeros = [] if idle else zeros[:4]
    first = early_zeros + ones[:2]
    rest = zeros[len(early_zeros) :] + ones[2:]
    executor = SlowRestart(idle, dies_again)

    def items() -> Iterator[str]:
        yield from first
        executor.restart_began.wait(5)
        yield from rest

    async def main() -> list[Bundle]:
        seen: list[Bundle] = []
        async with asyncio.timeout(10):
            async with contextlib.aclosing(coordinate(items(), executor)) as batches:
                async for batch in batches:
                    seen.extend(batch)
                    if not executor.release.is_set() and set(ones) <= {b.url for b in seen}:
                        # All of shard 1 came through while shard 0 was restarting.
                        assert executor.restarts == 1
                        executor.release.set()
        return seen

    seen = asyncio.run(main())
    assert sorted(b.url for b in seen) == sorted(urls)
    assert all(b.state == "written" for b in seen)
    assert executor.sent_while_restarting == []  # shard 0's new jobs waited for its worker
    assert not executor.overlapped  # a crash during a restart is handled after it
    if dies_again:
        assert executor.restarts == 2
        return
    assert executor.restarts == 1
    # What the dead worker had was sent again once; the rest of shard 0 once (how many went
    # to it before it died depends on how the reader thread's items were admitted).
    assert bool(executor.sent_to_dead) != idle
    zero_seqs = [seq for seq, url in enumerate(first + rest) if url in zeros]
    sent_zero = sorted(seq for shard, seq in executor.sent if shard == 0)
    assert sent_zero == sorted(zero_seqs + executor.sent_to_dead)


@pytest.mark.timeout(90)
def test_a_shard_that_cannot_restart_fails_its_jobs_and_the_rest_go_on(srv, home, tmp_path):
    gate = tmp_path / "gate"
    gate.write_text("")
    config = describe(make_download(home))
    config["gate"] = WhileExists(str(gate))
    executor = ProcessExecutor(config, 2, home)
    urls = [f"{srv.base_urls[i % 4]}/slow/300/r{i}" for i in range(40)]
    # Every host spread over both shards, so both have work whichever one is killed.
    split = {srv.host_key(i): 2 for i in range(4)}

    async def main() -> list[Bundle]:
        seen: list[Bundle] = []
        async with contextlib.aclosing(coordinate(urls, executor, split_hosts=split)) as batches:
            async for batch in batches:
                if not seen:
                    gate.unlink()  # from now on, no worker can start
                    os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
                seen.extend(batch)
        return seen

    try:
        seen = asyncio.run(main())
    finally:
        kill_leftover_children()
    assert sorted(b.url for b in seen) == sorted(urls)
    crashed = [b for b in seen if not b.ok]
    assert crashed, "the killed shard had jobs outstanding"
    for bundle in crashed:
        assert bundle.error_kind == ErrorKind.WORKER_CRASH
        assert "killed by signal 9" in bundle.error_message
        assert "restarting the worker failed" in bundle.error_message
    # The other shard went on to the end.
    assert len(seen) - len(crashed) >= 10
    assert multiprocessing.active_children() == []
    assert temp_files(home) == []


# --- a crashed worker's leftovers ------------------------------------------------------------


def _pipe_threads() -> set[threading.Thread]:
    names = ("shardload-send", "shardload-recv")
    return {t for t in threading.enumerate() if t.name.startswith(names)}


def test_a_crashed_worker_leaves_no_pipe_thread_behind(srv, home):
    before = _pipe_threads()
    urls = [f"{srv.base_urls[i % 4]}/slow/40/t{i}" for i in range(80)]
    killed = False
    seen = []
    for bundle in shardload.each(urls, download=make_download(home), processes=2):
        seen.append(bundle)
        if not killed:
            os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
            killed = True
    assert all(b.ok for b in seen) and len(seen) == 80
    deadline = time.monotonic() + 10
    while _pipe_threads() - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _pipe_threads() - before == set()


@pytest.mark.timeout(60)
def test_a_worker_whose_pipe_ends_while_it_runs_is_killed(home):
    """No restart may leave the old process running beside the new one."""
    context = multiprocessing.get_context("spawn")
    process = context.Process(target=time.sleep, args=(60,), daemon=True)
    process.start()
    outbox, outbox_w = context.Pipe(duplex=False)
    outbox_w.close()  # end of file on its pipe, the process still running
    _inbox_r, inbox = context.Pipe(duplex=False)
    executor = ProcessExecutor({}, 1, home, stop_grace=0.2)
    worker = _Worker(1, process, inbox, outbox)
    worker.ready.set()  # running: its start was over (a death before that is _started's)
    executor._workers[0] = worker

    async def main() -> tuple[Sink, threading.Thread]:
        sink = Sink()
        executor._sink, executor._loop = sink, asyncio.get_running_loop()
        writer = threading.Thread(target=executor._write_loop, args=(worker,), daemon=True)
        writer.start()
        await asyncio.to_thread(executor._read_loop, 0, worker)
        await sink.until(lambda: sink.crashes)
        return sink, writer

    try:
        sink, writer = asyncio.run(main())
        assert not process.is_alive()
        writer.join(timeout=5)
        assert not writer.is_alive()  # told to stop, not left waiting for jobs forever
        assert [shard for shard, _ in sink.crashes] == [0]
    finally:
        process.kill()
        process.join()


# --- input items -------------------------------------------------------------------------------


class Touchy:
    """An item that refuses comparison, as a numpy row does (``==`` gives an array)."""

    def __init__(self, number: int) -> None:
        self.number = number

    def __eq__(self, other: object) -> bool:
        raise TypeError("the truth value of an array is ambiguous")

    __hash__ = object.__hash__


class NoText:
    def __str__(self) -> str:
        raise ValueError("cannot be shown")


@pytest.mark.parametrize("processes", [1, 2])
def test_items_are_never_compared_with_their_url(srv, home, processes):
    items = [Touchy(i) for i in range(6)]
    bundles = shardload.swarm(
        items,
        download=make_download(home),
        url_map=lambda t: f"{srv.base_urls[t.number % 4]}/links/{t.number}",
        processes=processes,
    )
    assert [b.state for b in bundles] == ["written"] * 6
    assert all(b.info is item for b, item in zip(bundles, items, strict=True))


def test_an_item_that_cannot_be_prepared_fails_alone(srv, home):
    def url_map(item: int) -> object:
        return NoText() if item == 1 else f"{srv.base_urls[item % 4]}/links/{item}"

    bundles = shardload.swarm([0, 1, 2], download=make_download(home), url_map=url_map)
    assert [b.state for b in bundles] == ["written", "failed", "written"]
    assert bundles[1].error_kind == ErrorKind.BAD_INPUT
    assert "cannot be shown" in bundles[1].error_message
    assert bundles[1].info == 1


# --- results that point at displaced files -----------------------------------------------------


@pytest.mark.parametrize("link", [False, True])
def test_a_displaced_file_is_followed_only_when_it_is_a_regular_file(tmp_path, home, link):
    outside = tmp_path / "outside"
    outside.write_text("not ours")
    directory = os.path.join(home, "h", "a")
    os.makedirs(directory)
    displaced = os.path.join(directory, "%file")
    if link:
        os.symlink(outside, displaced)
    else:
        with open(displaced, "w") as f:
            f.write("ours")
    with open(os.path.join(directory, "b"), "w") as f:
        f.write("b")
    first = Bundle("http://h/a", file_path=directory, state="written", seq=0)
    second = Bundle("http://h/a/b", file_path=os.path.join(directory, "b"), state="written", seq=1)
    _in_order([second, first])
    # A symlink is never one of our files (writes never follow one): the bundle is not sent there.
    assert first.file_path == (directory if link else displaced)


_MASK_PROBE = """
import multiprocessing, signal, sys
from shardload.executors.starting import Start

def report(conn):
    conn.send(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))

def probe(context, start):
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=report, args=(writer,))
    start(process)
    print(reader.recv(), flush=True)
    process.join()

if __name__ == "__main__":
    context = multiprocessing.get_context(sys.argv[1])
    for _ in range(2):  # the first start also starts multiprocessing's helpers
        probe(context, lambda process: Start(process, ()).run())
    probe(context, lambda process: process.start())  # the caller's own process
    print(signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, []))
"""


@pytest.mark.parametrize(
    ("method", "blocked"), [("spawn", "True"), ("forkserver", "False")], ids=["spawn", "forkserver"]
)
def test_a_worker_starts_with_sigint_blocked_so_ctrl_c_cannot_kill_it_in_its_imports(
    tmp_path, method, blocked
):
    """A terminal's Ctrl-C reaches every process of the group; a spawned worker still
    importing died of it with a traceback on the user's terminal. It starts with SIGINT
    blocked (until worker_main ignores it); the caller's own processes, and the caller's
    mask, are left as they were. On forkserver, workers are forked preloaded from a server
    the caller's forkserver processes share: it must not keep SIGINT blocked for them. A
    fresh interpreter: multiprocessing's resource tracker, which unblocks SIGINT after its
    own start, is not yet running there."""
    probe = tmp_path / "probe.py"
    probe.write_text(_MASK_PROBE)
    done = subprocess.run(
        [sys.executable, str(probe), method],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [blocked, blocked, "False", "False"]


class PoisonedWorkers:
    """One shard whose worker dies whenever the jobs sent to it hold a poison URL (before
    answering any of them); it answers every other batch at once."""

    shards = 1
    crosses_processes = False

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.restarts = 0
        self._sink: ExecutorSink | None = None
        self._dead = False

    async def start(self, sink: ExecutorSink) -> None:
        self._sink = sink
        # As a spawned worker's import does: the input thread reads the whole (small) list
        # meanwhile, so every job goes out in the first batch, and the rounds counted below
        # are the isolation's alone, not the reader thread's timing.
        await asyncio.sleep(0.3)

    def send(self, shard: int, jobs: list[Job]) -> None:
        assert self._sink is not None
        self.batches.append([job[1] for job in jobs])
        loop = asyncio.get_running_loop()
        if self._dead:
            return  # sent before its crash was seen: lost with the worker
        if any("poison" in job[1] for job in jobs):
            self._dead = True
            loop.call_soon(self._sink.crashed, 0, "killed")
            return
        results: list[Result] = [written_result(job[0]) for job in jobs]
        loop.call_soon(self._sink.results, 0, results)

    async def restart(self, shard: int) -> None:
        self.restarts += 1
        self._dead = False

    async def finish(self) -> None:
        pass

    async def abort(self) -> None:
        pass


@pytest.mark.parametrize("poisons", [[0], [100], [255], [3, 200], [10, 11, 12]])
def test_jobs_that_kill_their_worker_are_found_by_halving_not_one_at_a_time(poisons):
    """128 jobs in the dead workers' hands: tried one at a time, the shard's other URLs waited
    behind 128 rounds (minutes, on slow hosts). Halving finds each culprit in ~2 log2(128)
    rounds, and a crash that narrows the search is not one of the shard's max_restarts."""
    urls = [
        f"http://127.0.0.{2 + i % 8}/{'poison' if i in poisons else 'ok'}/{i}" for i in range(256)
    ]
    executor = PoisonedWorkers()

    async def main() -> list[Bundle]:
        seen: list[Bundle] = []
        async with asyncio.timeout(20):
            async with contextlib.aclosing(coordinate(urls, executor)) as batches:
                async for batch in batches:
                    seen.extend(batch)
        return seen

    seen = asyncio.run(main())
    by_url = {b.url: b for b in seen}
    assert sorted(by_url) == sorted(urls) and len(seen) == len(urls)
    for i, url in enumerate(urls):
        bundle = by_url[url]
        if i in poisons:
            assert bundle.error_kind == ErrorKind.WORKER_CRASH
            assert "kills its worker" in bundle.error_message
        else:
            assert bundle.state == "written", bundle.error_message
    # As many in the dead worker's hands as flow control lets out at once (8 hosts).
    assert len(executor.batches[0]) == 8 * Limits().lane_cap
    rounds = len(executor.batches)
    assert rounds <= 8 + len(poisons) * 2 * 8, rounds  # one at a time: over 128


def _worker_processes() -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name.startswith("shardload-worker")]


def test_a_worker_that_stands_still_is_killed_and_its_jobs_finish_elsewhere(srv, home):
    """A worker stopped (SIGSTOP here; a deadlock or a blocked loop alike) sends nothing and
    never ends: without hang_timeout the run waited for it for ever."""
    urls = [f"{srv.base_urls[i % 4]}/slow/30/still{i}" for i in range(40)]
    download = make_download(home, RequestStrategy(concurrent=2))
    with shardload.each(urls, download=download, processes=2, hang_timeout=1.0) as run:
        finished = iter(run)
        bundles = [next(finished)]
        victim = _worker_processes()[0]
        os.kill(victim.pid, signal.SIGSTOP)
        bundles += list(finished)
    assert sorted(b.url for b in bundles) == sorted(urls)
    assert all(b.ok for b in bundles), [b.error_message for b in bundles if not b.ok]
    assert not victim.is_alive() and victim.exitcode == -signal.SIGKILL
    assert temp_files(home) == []


class BlocksItsLoop(DownloadStrategy):
    """A strategy whose own code blocks the worker's event loop on one URL."""

    async def on_success(self, response: Any, bundle: Bundle) -> None:
        if bundle.url.endswith("/block"):
            time.sleep(30)
        await super().on_success(response, bundle)


def test_a_url_whose_strategy_blocks_its_worker_fails_alone_as_standing_still(srv, home):
    urls = [f"{srv.base_urls[i % 2]}/links/{i}" for i in range(20)]
    urls.insert(7, f"{srv.base_urls[1]}/any/block")
    download = shardload.AioDownload(download_strategy=BlocksItsLoop(home=home))
    started = time.monotonic()
    bundles = shardload.swarm(urls, download=download, processes=2, hang_timeout=0.5)
    assert time.monotonic() - started < 25  # not one 30 s sleep
    blocked = bundles.pop(7)
    assert (blocked.state, blocked.error_kind) == ("failed", ErrorKind.WORKER_CRASH)
    assert "stood still for" in blocked.error_message and "hang_timeout" in blocked.error_message
    assert all(b.ok for b in bundles), [b.error_message for b in bundles if not b.ok]
    assert _worker_processes() == []


@pytest.mark.parametrize("value", [-1, "10", True, float("nan")])
def test_hang_timeout_is_checked(value):
    with pytest.raises(ConfigurationError, match="hang_timeout"):
        shardload.swarm(["http://127.0.0.1:1/x"], processes=2, hang_timeout=value)
