"""The coordinator: input in, bundles out, exactly once each (DESIGN rules 1, 4, 5, 7).

It takes bundles from the input thread (``intake``), sends each as a plain job to
the shard that owns its host, and yields the caller's own bundles back as results arrive.

Invariants:
- every input item yields exactly one bundle: invalid items fail here, everything else is in
  ``pending`` from admission until its first result; a later duplicate result is dropped;
- a request (same URL, same preset path, no params) is sent once (``Repeats``); with
  ``dedupe=False`` (a strategy whose ``get_file_path`` may name one URL's files differently)
  only bundles with a preset path are matched so;
- memory is bounded: at most ``shard_cap`` jobs are outstanding per shard, the input thread
  reads at most ``read_ahead`` items ahead, and ``Admission`` bounds the jobs waiting (in
  memory up to ``waiting_cap``, past it parked on disk);
- the loop never blocks on a worker, a host or the input: it only awaits ``wake``;
- a crashed shard is restarted and its outstanding jobs resent, up to ``max_restarts`` crashes
  in a row (a result in between starts the count again, so a day-long crawl survives
  occasional OOM kills); after that, or when its restart fails, its jobs fail with
  ``worker_crash`` and the reason. When two workers in a row die with jobs in their hands
  (no result between), those jobs are tried in halves ("isolating", a bisection): a group that
  comes back whole is cleared, one whose worker dies is halved again, and a job that kills its
  worker alone fails alone (``worker_crash``); the shard goes on with the rest. A crash that
  halves a group does not count against ``max_restarts``: it narrows the search.
  A restart runs beside the loop (spawning a worker takes ~0.1 s, a Ray actor longer): the other
  shards' results keep coming and their jobs keep going out; the restarting shard's new jobs
  wait in flow control. The loop ends only after every restart it began has ended, so no worker
  is still being started when the executor is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .admission import Admission
from .bundle import (
    Bundle,
    Job,
    Packed,
    Result,
    apply_result,
    extra_of,
    loadable_pickle,
    why_unpicklable,
)
from .errors import ErrorKind, WorkerKilledAtStart
from .executors.base import Executor
from .flow import FlowControl
from .intake import InputReader, Items, RunMark, describe_error, prepare_item
from .repeats import Repeats, Request


@dataclass
class Limits:
    shard_cap: int = 512
    lane_cap: int = 16
    waiting_cap: int = 20_000
    spill_cap: int = 1_000_000  # jobs parked on disk past waiting_cap (~15 bytes each)
    # Past waiting_cap, the input is read on (and jobs parked) only while a shard has room
    # and the jobs in memory would take patience seconds to finish at the pace of the last
    # pace_window seconds.
    patience: float = 10.0
    pace_window: float = 2.0
    read_ahead: int = 4096
    max_restarts: int = 3
    dedupe_window: int = 32_768  # answered requests remembered for repeats (~10 MB when full)


@dataclass(slots=True)
class _Entry:
    bundle: Bundle
    shard: int
    lane: str
    job: Job
    sent: bool = False
    same: Request | None = None  # the request's key, when repeats may follow it
    crashes: int = 0  # crashes of a worker that had this job in its hands


@dataclass
class _Events:
    """The executor's sink: what happened since the coordinator last looked.

    Its callbacks run in the loop thread (the executor's contract) and only record and wake.
    """

    wake: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: deque[tuple[int, list[Result]]] = field(default_factory=deque)
    crashes: deque[tuple[int, str]] = field(default_factory=deque)

    def results(self, shard: int, results: list[Result]) -> None:
        self.arrived.append((shard, results))
        self.wake.set()

    def crashed(self, shard: int, reason: str) -> None:
        self.crashes.append((shard, reason))
        self.wake.set()


def _wire(value: Any, imports_main: bool) -> Any:
    """``info`` or ``extra`` as sent to a worker process, or None when it cannot go (it stays
    here; a bundle without its extra goes as a plain Bundle). A spawned worker gets it pickled
    on its own (``Packed``), loaded job by job: one naming a class the worker cannot import
    would otherwise fail its whole batch there. Ray pickles classes by value, so the value
    itself goes, if it makes the trip."""
    if imports_main:
        try:
            return Packed(pickle.dumps(value, pickle.HIGHEST_PROTOCOL))
        except Exception:
            return None
    return value if loadable_pickle(value) is not None else None


async def coordinate(
    items: Items,
    executor: Executor,
    *,
    url_map: Callable[[Any], Any] | None = None,
    split_hosts: Mapping[str, int] | None = None,
    limits: Limits | None = None,
    dedupe: bool = True,
    on_late: Callable[[list[Bundle]], None] | None = None,
) -> AsyncGenerator[list[Bundle], None]:
    """Yield batches of finished bundles (the caller's own objects) as they complete.

    A run stopped early (closed, cancelled) never yields again: ``on_late`` gets the bundles
    that finished as it stopped (a file written, or failed for good), which a caller keeping
    records may still record."""
    limits = limits or Limits()
    split = dict(split_hosts or {})
    shards = executor.shards
    remote = executor.crosses_processes
    events = _Events()
    loop = asyncio.get_running_loop()
    run = RunMark()  # marks the bundles this call holds

    def wake_from_thread() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closing: nobody is waiting
            loop.call_soon_threadsafe(events.wake.set)

    flow: FlowControl[_Entry] = FlowControl(shards, limits.shard_cap, limits.lane_cap)
    pending: dict[int, _Entry] = {}
    repeats = Repeats(limits.dedupe_window)
    restarts = [0] * shards
    restarting: dict[int, tuple[asyncio.Future[None], str]] = {}  # shard: (restart, reason)
    crash_after_restart: dict[int, str] = {}  # a crash reported while its shard restarted
    dead: dict[int, str] = {}
    # Shards whose workers died twice in a row with jobs in their hands: the groups of those
    # jobs still to try, a group at a time, so a job that kills its worker fails alone
    # instead of the whole shard. Halving keeps it to ~2 log2(n) rounds: one at a time, 512
    # slow jobs held the shard's other hosts for minutes.
    isolating: dict[int, deque[list[_Entry]]] = {}
    reader = InputReader(
        items,
        lambda seq, item: prepare_item(seq, item, url_map, run),
        wake_from_thread,
        limits.read_ahead,
    )

    def admit(bundle: Bundle, shard: int, key: str, out: list[Bundle], dirty: set[int]) -> None:
        if shard in dead:
            out.append(bundle.fail(ErrorKind.WORKER_CRASH, dead[shard]))
            return
        if remote and bundle.params is not None:
            # Checked here, per bundle: a batch that does not pickle cannot reach its worker,
            # and would take every other job of that batch down with it.
            problem = why_unpicklable(bundle.params)
            if problem is not None:
                message = f"params cannot be sent to a worker process (must pickle): {problem}"
                out.append(bundle.fail(ErrorKind.BAD_INPUT, message))
                return
        bundle.host = key
        same = None
        if bundle.params is None and (dedupe or bundle.file_path is not None):
            same = (bundle.url, bundle.file_path)
        if same is not None:
            if repeats.follow(same, bundle):
                return
            known = repeats.answer(same)
            if known is not None:
                out.append(apply_result(bundle, known, shared=True))
                return
            repeats.lead(same, bundle.seq)
        info, extra = bundle.info, extra_of(bundle)
        if remote:
            if info is not None and not isinstance(info, str | int | float | bool):
                info = _wire(info, executor.imports_main)
            if extra is not None:
                extra = _wire(extra, executor.imports_main)
        job: Job = (bundle.seq, bundle.url, bundle.params, info, bundle.file_path, extra)
        entry = _Entry(bundle, shard, key, job, same=same)
        pending[bundle.seq] = entry
        flow.push(shard, key, entry)
        dirty.add(shard)

    def sent_to(shard: int) -> list[_Entry]:
        """The jobs a shard's worker had and has not answered, in input order."""
        return sorted(
            (e for e in pending.values() if e.shard == shard and e.sent),
            key=lambda e: e.bundle.seq,
        )

    def give_up(shard: int, reason: str, out: list[Bundle]) -> None:
        dead[shard] = reason
        lost = sent_to(shard) + [e for group in isolating.pop(shard, ()) for e in group]
        for entry in lost:
            flow.done(shard, entry.lane)
        for entry in lost + flow.drop_waiting(shard):
            crash_fails(entry, reason, out)

    def crash_fails(entry: _Entry, reason: str, out: list[Bundle]) -> None:
        """The job (out of flow control already) and its followers fail as worker_crash."""
        del pending[entry.bundle.seq]
        for bundle in [entry.bundle, *settle(entry, None)]:
            out.append(bundle.fail(ErrorKind.WORKER_CRASH, reason))

    def isolate_next(shard: int, dirty: set[int]) -> None:
        """Send the next group of an isolating shard alone; with none left, resume its flow."""
        queue = isolating[shard]
        if queue:
            group = queue.popleft()
            for entry in group:
                entry.sent = True
            executor.send(shard, [entry.job for entry in group])
        else:
            del isolating[shard]
            dirty.add(shard)

    def settle(entry: _Entry, result: Result | None) -> list[Bundle]:
        """The bundles that repeat the entry's request, now answered."""
        if entry.same is None:
            return []
        return repeats.settle(entry.same, entry.bundle.seq, result)

    def crashed(shard: int, reason: str, out: list[Bundle], narrowing: bool = False) -> None:
        if shard in dead:
            return  # already given up on: nothing of it is outstanding
        if not narrowing:
            restarts[shard] += 1
        if restarts[shard] > limits.max_restarts:
            give_up(shard, f"{reason}; gave up after {limits.max_restarts} restarts", out)
            return
        task = asyncio.ensure_future(executor.restart(shard))
        task.add_done_callback(lambda _: events.wake.set())
        restarting[shard] = (task, reason)

    def restarted(out: list[Bundle], dirty: set[int]) -> None:
        for shard, (task, reason) in list(restarting.items()):
            if not task.done():
                continue
            del restarting[shard]
            died_again = crash_after_restart.pop(shard, None)
            exc = asyncio.CancelledError() if task.cancelled() else task.exception()
            if isinstance(exc, WorkerKilledAtStart):
                crashed(shard, str(exc), out)  # one more crash in a row: restart or give up
                continue
            if exc is not None:
                # A shard that cannot come back fails its own jobs; the others go on (rule 7).
                give_up(
                    shard, f"{reason}; restarting the worker failed: {describe_error(exc)}", out
                )
                continue
            if died_again is not None:
                crashed(shard, died_again, out)  # the new worker died as it started
                continue
            lost = sent_to(shard)
            queue = isolating.get(shard)
            # Two workers in a row (no result between) died with a job in their hands (one
            # that dies as it starts has none: no evidence), or an isolated group's worker
            # died: alone, the job is the culprit; with others, they are tried in halves.
            suspect = queue is not None or (
                restarts[shard] >= 2 and any(entry.crashes >= 2 for entry in lost)
            )
            if len(lost) == 1 and suspect:
                flow.done(shard, lost[0].lane)
                why = f"{reason}, with only this URL in its hands: it kills its worker"
                crash_fails(lost[0], why, out)
                restarts[shard] = 0
                lost = []
            elif queue is None and suspect:
                queue = isolating[shard] = deque()
            if queue is not None:
                for entry in lost:
                    entry.sent = False  # not in the worker's hands until its group is sent
                half = (len(lost) + 1) // 2
                queue.extendleft(group for group in (lost[half:], lost[:half]) if group)
                isolate_next(shard, dirty)
            elif lost:
                executor.send(shard, [e.job for e in lost])
            dirty.add(shard)  # what waited in flow control during the restart goes out now

    def answer(entry: _Entry, result: Result, out: list[Bundle]) -> int:
        """The result to its bundle, and to those that repeat its request; how many."""
        out.append(apply_result(entry.bundle, result))
        alike = settle(entry, result)
        out.extend(apply_result(bundle, result, shared=True) for bundle in alike)
        return 1 + len(alike)

    def take_results(out: list[Bundle], dirty: set[int]) -> None:
        while events.arrived:
            shard, results = events.arrived.popleft()
            for result in results:
                entry = pending.pop(result[0], None)
                if entry is None:
                    continue  # a job resent after a crash finished twice: keep the first
                admission.finished(answer(entry, result, out))
                flow.done(shard, entry.lane)
                dirty.add(shard)
            restarts[shard] = 0  # it works again: only crashes in a row use up its restarts
            if shard in isolating and not sent_to(shard):
                isolate_next(shard, dirty)

    def take_late() -> list[Bundle]:
        """Results that came in once the run was stopping: applied to their bundles, and
        nothing more sent (the workers are gone)."""
        out: list[Bundle] = []
        while events.arrived:
            _, results = events.arrived.popleft()
            for result in results:
                entry = pending.pop(result[0], None)
                if entry is not None:
                    answer(entry, result, out)
        return out

    admission = Admission(
        reader,
        flow,
        repeats,
        limits,
        shards=shards,
        split=split,
        dead=dead,
        admit=admit,
        run=run,
        wake=events.wake,
    )

    # The input is read (bounded by read_ahead) while the workers start: spawned workers take
    # ~0.1 s to import, and the first jobs are ready when they are.
    reader.start()
    try:
        await executor.start(events)
    except BaseException:
        reader.stop()
        # Some workers may have started before another failed: none may outlive the run. The
        # start's error is the one the caller can act on, so a failing abort does not hide it.
        with contextlib.suppress(Exception):
            await executor.abort()
        raise
    finished = False
    try:
        while True:
            events.wake.clear()
            out: list[Bundle] = []
            dirty: set[int] = set()
            # Results first: a worker's last results arrive before its crash does, and a job
            # that has its result must not be counted as lost and downloaded again.
            take_results(out, dirty)
            restarted(out, dirty)
            while events.crashes:
                shard, reason = events.crashes.popleft()
                if shard in restarting:
                    crash_after_restart[shard] = reason  # handled when the restart ends
                else:
                    in_hands = sent_to(shard)
                    for entry in in_hands:
                        entry.crashes += 1  # the worker that died had it
                    # An isolated group of several that died holds a culprit: halved next.
                    narrowing = shard in isolating and len(in_hands) > 1
                    crashed(shard, reason, out, narrowing)
            more = admission.step(out, dirty)
            for shard in dirty:
                if shard in restarting or shard in isolating:
                    continue  # sent when its worker is back (restarted()), or one by one
                entries = flow.take(shard)
                if entries:
                    for entry in entries:
                        entry.sent = True
                    executor.send(shard, [e.job for e in entries])
            if out:
                yield out
            if not pending and admission.empty and reader.exhausted:
                if reader.error is not None:
                    raise reader.error
                break
            if more:
                await asyncio.sleep(0)  # let replies and pipe IO in between the steps
            elif not (events.arrived or events.crashes):
                await events.wake.wait()
        finished = True
    finally:
        run.live = False  # its bundles that never finished may go to another run as they are
        reader.stop()
        admission.close()
        try:
            for task, _ in restarting.values():
                # A worker half started must be in the executor's list before it is told to
                # stop; its failure no longer matters.
                with contextlib.suppress(Exception):
                    await asyncio.shield(task)
        finally:
            if finished:
                await executor.finish()
            else:
                await executor.abort()
                late = take_late()
                if late and on_late is not None:
                    on_late(late)
