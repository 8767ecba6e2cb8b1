"""A host that holds the coordinator's memory does not hold back the hosts after it (DESIGN
rules 5 and 7): past its memory bound the coordinator parks that host's jobs on disk and reads
on. Driven with an executor whose one host never answers until told to."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

import shardload
import shardload.coordinator as coordinator_module
from shardload.bundle import Bundle, Job
from shardload.coordinator import Limits, coordinate
from shardload.executors.base import ExecutorSink
from shardload.flow import FlowControl
from shardload.intake import Handed, RunMark, parked, prepare_item, unparked
from shardload.spill import Spill
from shardload.urls import host_key

from .conftest import make_download, written_result

STUCK = "127.0.0.2"
LIMITS = dict(
    waiting_cap=200, lane_cap=4, read_ahead=64, spill_cap=50_000, patience=1.0, pace_window=0.2
)


class StuckHost:
    """Answers every job ``delay`` seconds after it came (at once: 0), except those of STUCK,
    held until ``release`` is set."""

    crosses_processes = False
    imports_main = False

    def __init__(self, shards: int, delay: float = 0.0) -> None:
        self.shards = shards
        self.delay = delay
        self.release = asyncio.Event()
        self.jobs: dict[int, Job] = {}  # every job sent, by seq
        self.sent_twice: list[int] = []
        self._held: list[tuple[int, Job]] = []
        self._sink: ExecutorSink | None = None

    async def start(self, sink: ExecutorSink) -> None:
        self._sink = sink

    def send(self, shard: int, jobs: list[Job]) -> None:
        for job in jobs:
            if job[0] in self.jobs:
                self.sent_twice.append(job[0])
            self.jobs[job[0]] = job
            if host_key(job[1]) == STUCK and not self.release.is_set():
                self._held.append((shard, job))
            else:
                self._answer(shard, job)

    def let_go(self) -> None:
        self.release.set()
        for shard, job in self._held:
            self._answer(shard, job)
        self._held = []

    def _answer(self, shard: int, job: Job) -> None:
        sink = self._sink
        if sink is None:
            raise RuntimeError("not started")
        result = written_result(job[0], job[4])
        asyncio.get_running_loop().call_later(self.delay, sink.results, shard, [result])

    async def restart(self, shard: int) -> None:
        raise AssertionError("no worker dies here")

    async def finish(self) -> None:
        pass

    async def abort(self) -> None:
        pass


@pytest.fixture
def most_waiting(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The most jobs that ever waited in the coordinator's memory (flow control)."""
    most = [0]

    class Watched(FlowControl[Any]):
        def push(self, shard: int, lane: Any, item: Any) -> None:
            super().push(shard, lane, item)
            most[0] = max(most[0], self.waiting)

    monkeypatch.setattr(coordinator_module, "FlowControl", Watched)
    return most


@pytest.fixture
def parked_seqs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The place in the input of each job parked on disk."""
    seqs: list[int] = []
    real_put = Spill.put

    def put(self: Any, lane: Any, record: Any) -> None:
        seqs.append(record[0])
        real_put(self, lane, record)

    monkeypatch.setattr(Spill, "put", put)
    return seqs


def run_until_others_done(
    items: list[Any], executor: StuckHost, others: int, limits: Limits, release_after: float = 5.0
) -> tuple[list[Bundle], float | None, int]:
    """Run to the end; the stuck host is let go once ``others`` other bundles are done, or
    after ``release_after`` s. Returns the bundles, when the others were done (None: not
    while the stuck host was held), and how many stuck ones had finished by then."""
    seen: list[Bundle] = []
    done_at: list[float] = []
    stuck_done_then: list[int] = []

    async def main() -> None:
        start = time.monotonic()

        def let_go_later() -> None:
            if not executor.release.is_set():
                executor.let_go()

        asyncio.get_running_loop().call_later(release_after, let_go_later)
        async with asyncio.timeout(60):
            async with contextlib.aclosing(coordinate(items, executor, limits=limits)) as batches:
                async for batch in batches:
                    seen.extend(batch)
                    done = [b for b in seen if host_key(b.url) != STUCK]
                    if not done_at and len(done) == others and not executor.release.is_set():
                        done_at.append(time.monotonic() - start)
                        stuck_done_then.append(len(seen) - len(done))
                        executor.let_go()

    asyncio.run(main())
    return seen, (done_at[0] if done_at else None), (stuck_done_then or [0])[0]


def other_urls(n: int) -> list[str]:
    return [f"http://127.0.0.{3 + i % 5}/o{i}" for i in range(n)]


@pytest.mark.parametrize("shards", [1, 2])
def test_a_stuck_hosts_thousands_at_the_front_do_not_hold_back_the_hosts_after_it(
    shards, most_waiting
):
    items = [f"http://{STUCK}/s{i}" for i in range(3000)] + other_urls(100)
    executor = StuckHost(shards)
    limits = Limits(**LIMITS)
    seen, others_done_at, stuck_done = run_until_others_done(items, executor, 100, limits)
    # Before: the 200 in memory were all the stuck host's, and the input was read no further.
    assert others_done_at is not None and others_done_at < 4.0
    assert stuck_done == 0
    # Every item once, each job sent once, after the stuck host came back too.
    assert sorted(b.seq for b in seen) == list(range(len(items)))
    assert [b.url for b in sorted(seen, key=lambda b: b.seq)] == items
    assert all(b.state == "written" for b in seen)
    assert executor.sent_twice == []
    # Memory stayed bounded: the rest of the stuck host's jobs waited on disk.
    lane_memory = 4 * limits.lane_cap
    assert most_waiting[0] <= 2 * limits.waiting_cap + lane_memory


def test_items_url_map_turns_into_urls_park_when_their_info_is_a_plain_value(most_waiting):
    n = 3000

    def url_map(i: int) -> str:
        return f"http://{STUCK}/s{i}" if i < n else f"http://127.0.0.{3 + i % 5}/o{i}"

    executor = StuckHost(2)

    async def main() -> tuple[list[Bundle], float | None]:
        seen: list[Bundle] = []
        others_at = None
        start = time.monotonic()
        asyncio.get_running_loop().call_later(
            5.0, lambda: executor.release.is_set() or executor.let_go()
        )
        async with asyncio.timeout(60):
            stream = coordinate(range(n + 100), executor, url_map=url_map, limits=Limits(**LIMITS))
            async with contextlib.aclosing(stream) as batches:
                async for batch in batches:
                    seen.extend(batch)
                    if others_at is None and sum(b.info >= n for b in seen) == 100:
                        others_at = time.monotonic() - start
                        executor.let_go()
        return seen, others_at

    seen, others_at = asyncio.run(main())
    assert others_at is not None and others_at < 4.0
    assert most_waiting[0] <= 2 * LIMITS["waiting_cap"] + 4 * LIMITS["lane_cap"]
    assert sorted(b.info for b in seen) == list(range(n + 100))
    assert all(b.url == url_map(b.info) and b.state == "written" for b in seen)


def test_jobs_handed_over_come_back_from_disk_with_their_path_and_info(most_waiting, parked_seqs):
    stuck = [
        Handed(Bundle(f"http://{STUCK}/s{i}", info={"line": i}, file_path=f"p/{i}"))
        for i in range(1500)
    ]
    items: list[Any] = [*stuck, *other_urls(50)]
    executor = StuckHost(2)
    seen, others_done_at, _ = run_until_others_done(items, executor, 50, Limits(**LIMITS))
    assert others_done_at is not None and others_done_at < 4.0
    assert len(parked_seqs) >= 1000  # most of the stuck host's jobs waited on disk
    assert set(parked_seqs) <= set(range(1500))
    by_seq = {b.seq: b for b in seen}
    assert len(by_seq) == len(items) == len(seen)
    for i in range(1500):
        assert by_seq[i].info == {"line": i} and by_seq[i].file_path == f"p/{i}"
        assert executor.jobs[i][3] == {"line": i} and executor.jobs[i][4] == f"p/{i}"


def test_a_callers_own_bundles_are_never_parked_and_come_back_as_themselves(most_waiting):
    """A bundle the caller made is its object: it cannot wait on disk as a copy. Memory
    still stays bounded (the input waits instead)."""
    mine = [Bundle(f"http://{STUCK}/s{i}", info=object()) for i in range(1000)]
    executor = StuckHost(1)
    limits = Limits(**LIMITS)
    seen, _, _ = run_until_others_done([*mine, *other_urls(10)], executor, 10, limits, 1.0)
    assert len(seen) == 1010
    assert {id(b) for b in seen if host_key(b.url) == STUCK} == {id(b) for b in mine}
    assert all(b.state == "written" for b in seen)
    assert most_waiting[0] <= 2 * limits.waiting_cap


def test_a_fast_drain_is_waited_for_not_read_past(most_waiting, parked_seqs):
    """When memory is full but drains fast (hosts that answer within a millisecond), the
    input is not read on onto disk: the jobs in memory go soon enough."""
    items = [f"http://127.0.0.{3 + i % 2}/f{i}" for i in range(6000)]
    executor = StuckHost(1, delay=0.001)
    limits = Limits(**{**LIMITS, "read_ahead": 4096})

    async def main() -> list[Bundle]:
        seen: list[Bundle] = []
        async with asyncio.timeout(60):
            async with contextlib.aclosing(coordinate(items, executor, limits=limits)) as it:
                async for batch in it:
                    seen.extend(batch)
        return seen

    seen = asyncio.run(main())
    assert most_waiting[0] >= limits.waiting_cap  # the memory was full: the case in question
    assert len(seen) == 6000 and parked_seqs == []


def test_a_slow_hosts_many_urls_at_the_front_do_not_stall_the_rest_end_to_end(srv, home):
    """Through the public API, with real workers: 25,000 URLs of a host that answers in
    0.5 s (2 at a time) fill more than the coordinator's memory bound; the 300 URLs of other
    hosts after them are done within seconds, not after the hours the slow host needs."""
    slow = [f"{srv.base_urls[0]}/slow/500/s{i}" for i in range(25_000)]
    fast = [f"{srv.base_urls[1 + i % 3]}/bytes/10?name=f{i}" for i in range(300)]
    download = make_download(home, shardload.RequestStrategy(concurrent=2, timeout=5))
    start = time.monotonic()
    fast_done = 0
    with shardload.each(slow + fast, download=download, processes=2) as run:
        for bundle in run:
            if "/bytes/" in bundle.url:
                assert bundle.state == "written"
                fast_done += 1
                if fast_done == len(fast):
                    break
            if time.monotonic() - start > 60:
                break
    assert fast_done == len(fast)
    assert srv.stats()["hosts"][srv.host_key(0)]["requests"] < 1000


def batches_of(items: Any, executor: StuckHost, limits: Limits) -> list[list[Bundle]]:
    """Every batch the coordinator yields; the stuck host is let go after 3 s."""
    out: list[list[Bundle]] = []

    async def main() -> None:
        asyncio.get_running_loop().call_later(3.0, executor.let_go)
        async with asyncio.timeout(60):
            async with contextlib.aclosing(coordinate(items, executor, limits=limits)) as it:
                async for batch in it:
                    out.append(batch)

    asyncio.run(main())
    return out


def test_parked_repeats_of_an_answered_url_come_back_a_step_at_a_time(most_waiting):
    """Jobs brought back that finish at once (repeats of an answered URL) do not raise their
    lane's count in memory: without a bound one pass brought back the whole lane at once."""
    same = f"http://{STUCK}/same"
    items = [same] + [f"http://{STUCK}/s{i}" for i in range(1000)] + [same] * 30_000
    executor = StuckHost(1)
    batches = batches_of(items, executor, Limits(**LIMITS))
    assert sum(len(b) for b in batches) == len(items)
    assert max(len(b) for b in batches) <= 2 * LIMITS["waiting_cap"] + 2048
    assert sum(1 for b in executor.jobs.values() if b[1] == same) == 1


def test_with_memory_full_a_new_host_waits_in_the_input_instead_of_opening_a_lane(
    monkeypatch: pytest.MonkeyPatch,
):
    """Repeats of a pending URL fill the memory without any lane holding many jobs: hosts
    read after them do not each open a lane on disk (each costs memory of its own)."""
    lanes: list[int] = []
    real_put = Spill.put

    def put(self: Any, lane: Any, record: Any) -> None:
        real_put(self, lane, record)
        lanes.append(len(self._lanes))

    monkeypatch.setattr(Spill, "put", put)
    same = f"http://{STUCK}/same"
    others = [f"http://127.0.{i // 250}.{2 + i % 250}/x" for i in range(3000)]
    executor = StuckHost(1)
    batches = batches_of([same] * 1000 + others, executor, Limits(**LIMITS))
    assert sum(len(b) for b in batches) == 4000
    assert max(lanes, default=0) <= 1


class Mine(Bundle):
    pass


@pytest.mark.parametrize(
    ("item", "url_map", "spare"),
    [
        ("http://h/a", None, True),  # a plain URL: the run makes the bundle
        (7, lambda i: f"http://h/{i}", True),  # info 7: a copy is the same value
        ({"id": 7}, lambda d: f"http://h/{d['id']}", False),  # info is the caller's dict
        (Bundle("http://h/a"), None, False),  # the caller's own object
        (Handed(Bundle("http://h/a", info={"line": 1}, file_path="p")), None, True),
        (Handed(Bundle("http://h/a", params={"q": 1})), None, False),  # params would be lost
        (Handed(Mine("http://h/a")), None, False),  # so would a subclass
    ],
)
def test_which_items_the_run_owns_and_may_park(item, url_map, spare):
    run = RunMark()
    bundle = prepare_item(3, item, url_map, run)
    assert bundle._spare is spare
    if spare:
        back = unparked(parked(bundle), run)
        assert (back.seq, back.url, back.info, back.file_path, back._spare) == (
            3,
            bundle.url,
            bundle.info,
            bundle.file_path,
            True,
        )
        assert back._run is run and back.state == "pending"
