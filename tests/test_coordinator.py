"""The multiprocess coordinator: exactly once, exact host limits, faults (issue 3)."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

import shardload
from shardload import ConfigurationError, ErrorKind, RequestStrategy

from .conftest import files_under, make_download, temp_files


def mixed_urls(srv, n: int) -> list[str]:
    urls = [f"{srv.base_urls[i % 4]}/bytes/{100 + i % 7}?name=m{i}" for i in range(n)]
    urls[5] = "ftp://example.com/nope"
    urls[9] = srv.base_urls[1] + "/status/404"
    urls[13] = "http://exa mple.com/"
    return urls


@pytest.mark.parametrize("processes", [1, 2, 4])
def test_every_url_exactly_once(srv, home, processes):
    urls = mixed_urls(srv, 400)
    seen = list(shardload.each(urls, download=make_download(home), processes=processes))
    assert sorted(b.seq for b in seen) == list(range(400))
    assert sorted(b.url for b in seen) == sorted(urls)
    failed = {b.url for b in seen if not b.ok}
    assert failed == {urls[5], urls[9], urls[13]}
    assert len(files_under(home)) == 397
    # Each good URL was requested exactly once across all workers.
    paths = srv.stats()["paths"]
    assert all(count == 1 for path, count in paths.items() if path.startswith("/bytes/"))


def test_swarm_keeps_order_across_processes(srv, home):
    urls = mixed_urls(srv, 100)
    bundles = shardload.swarm(urls, download=make_download(home), processes=3)
    assert [b.url for b in bundles] == urls


def test_per_host_limit_holds_across_processes(srv, home):
    urls = [f"{srv.base_urls[i % 4]}/slow/80/p{i}" for i in range(48)]
    strategy = RequestStrategy(concurrent=2)
    bundles = shardload.swarm(urls, download=make_download(home, strategy), processes=4)
    assert all(b.ok for b in bundles)
    peaks = [h["max_concurrency"] for h in srv.stats()["hosts"].values()]
    assert peaks and max(peaks) == 2


def test_split_hot_host_divides_its_budget(srv, home):
    hot = srv.host_key(0)
    urls = [f"http://{hot}/slow/150/h{i}" for i in range(40)]
    strategy = RequestStrategy(concurrent=4)
    bundles = shardload.swarm(
        urls, download=make_download(home, strategy), processes=2, split_hosts={hot: 2}
    )
    assert all(b.ok for b in bundles)
    peak = srv.stats()["hosts"][hot]["max_concurrency"]
    # Two workers with 2 each: more than one worker's share, never more than the host's limit.
    assert 2 < peak <= 4


def test_a_split_host_with_a_delay_keeps_its_gap_between_starts(srv, home):
    """Workers that share a host do not talk: only one worker keeps a minimum gap exact."""
    hot = srv.host_key(1)
    urls = [f"http://{hot}/links/1?gap={i}" for i in range(20)]
    strategy = RequestStrategy(concurrent=4, delay=0.05)
    bundles = shardload.swarm(
        urls, download=make_download(home, strategy), processes=2, split_hosts={hot: 2}
    )
    assert all(b.ok for b in bundles)
    starts = sorted(srv.stats()["hosts"][hot]["starts"])
    assert len(starts) == 20
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 0.045


@pytest.mark.parametrize(
    ("spacing", "split"), [({}, {"h": 2}), ({"delay": 0.1}, {}), ({"jitter": 0.1}, {})]
)
def test_a_host_whose_starts_are_spaced_is_never_split(home, spacing, split):
    """A jitter alone spaces starts 0 to jitter seconds apart: split, each worker kept its
    own spacing and the host's average rate doubled."""
    from shardload.plan import make_plan

    download = make_download(home, RequestStrategy(concurrent=4, **spacing))
    options = {"processes": 2, "split_hosts": {"h:80": 2}}
    plan = make_plan(["http://h/a", "http://h/b"], None, download, options, sync=True)
    assert plan.split_hosts == split


def test_a_split_hosts_crawl_delay_holds_as_an_average_rate(srv, home):
    """Each of the k workers sharing a host waits k times its Crawl-delay: the workers do
    not talk, and each kept the whole delay, so the host got k times the rate it asked for."""
    hot = srv.host_key(2)
    urls = [f"http://{hot}/links/1?cd={i}" for i in range(10)]
    strategy = RequestStrategy(concurrent=4, robots=True)
    bundles = shardload.swarm(
        urls, download=make_download(home, strategy), processes=2, split_hosts={hot: 2}
    )
    assert all(b.ok for b in bundles)
    starts = sorted(srv.stats()["hosts"][hot]["starts"])
    assert len(starts) == 10 + 2  # each worker reads robots.txt (Crawl-delay: 0.3) itself
    assert starts[-1] - starts[0] >= 10 * 0.3 - 0.1


def test_a_worker_killed_mid_run_loses_nothing(srv, home):
    urls = [f"{srv.base_urls[i % 4]}/slow/40/k{i}" for i in range(200)]
    strategy = RequestStrategy(concurrent=4)
    seen = []
    killed = False
    for bundle in shardload.each(urls, download=make_download(home, strategy), processes=2):
        seen.append(bundle)
        if len(seen) == 20 and not killed:
            children = multiprocessing.active_children()
            assert children, "no worker processes found"
            os.kill(children[0].pid, signal.SIGKILL)
            killed = True
    assert killed
    assert sorted(b.url for b in seen) == sorted(urls)
    assert all(b.ok for b in seen), {b.error_kind for b in seen}
    assert temp_files(home) == []
    assert multiprocessing.active_children() == []


def test_each_closed_early_stops_every_worker(srv, home):
    urls = [f"{srv.base_urls[i % 4]}/slow/50/e{i}" for i in range(300)]
    stream = shardload.each(urls, download=make_download(home), processes=2)
    for count, _bundle in enumerate(stream, 1):
        if count == 10:
            break
    stream.close()
    assert multiprocessing.active_children() == []
    assert temp_files(home) == []


@pytest.mark.parametrize("processes", [1, 2])
def test_a_run_closed_early_tells_what_finished_without_being_yielded(srv, home, processes):
    """Bundles waiting for the caller, and results workers sent once the coordinator stopped
    taking them (the caller stopped reading: past max_undelivered it waits), are ``unread``
    after close(): with the yielded ones they name every file on disk. The CLI records them;
    before, files a stop left behind had no record (up to ~40 in a 200k-URL run)."""
    urls = [f"{srv.base_urls[i % 4]}/bytes/3?name=u{i}" for i in range(6_000)]
    run = shardload.each(urls, download=make_download(home), processes=processes)
    yielded = [next(run)]
    deadline = time.monotonic() + 30
    count = -1  # until the files on disk stop growing: the workers have nothing left to do
    while len(files_under(home)) != count and time.monotonic() < deadline:
        count = len(files_under(home))
        time.sleep(0.5)
    run.close()
    assert len(run.unread) > 4_096  # more than the caller's queue holds: some came late
    told = {os.path.relpath(b.file_path, home) for b in yielded + run.unread if b.ok}
    assert told == files_under(home)
    assert len({b.seq for b in yielded + run.unread}) == len(yielded) + len(run.unread)
    assert next(run, None) is None and temp_files(home) == []


def test_workers_outlive_a_stop_signal_to_the_process_group(srv, home):
    """`timeout`, a terminal or a service manager signals a whole process group: a worker
    killed by SIGTERM or SIGHUP took the results of the files it had just written with it.
    Workers ignore them, and end when the coordinator says so."""
    urls = [f"{srv.base_urls[i % 4]}/slow/100/g{i}" for i in range(200)]
    with shardload.each(urls, download=make_download(home), processes=2) as run:
        got = [next(run)]
        workers = multiprocessing.active_children()
        assert len(workers) == 2
        for worker in workers:
            assert worker.pid is not None
            os.kill(worker.pid, signal.SIGTERM)
            os.kill(worker.pid, signal.SIGHUP)
        time.sleep(0.5)
        assert all(worker.is_alive() for worker in workers)
        got.extend(run)
    assert [b.state for b in got] == ["written"] * 200
    assert multiprocessing.active_children() == []


def test_unpicklable_strategy_is_a_clear_error_before_any_work(home):
    class Local(RequestStrategy):  # defined inside a function: cannot be pickled
        pass

    download = make_download(home, Local())
    with pytest.raises(ConfigurationError, match="picklable"):
        shardload.each(["http://127.0.0.2/a", "http://127.0.0.3/b"], download=download, processes=2)
    assert multiprocessing.active_children() == []


def test_processes_asked_for_are_checked_even_when_one_host_runs_in_the_caller(home):
    """One host needs one worker, which runs in the caller: an unpicklable strategy or a
    live client went through there, and failed only once the same script met many hosts."""

    class Local(RequestStrategy):  # defined inside a function: cannot be pickled
        pass

    one_host = ["http://127.0.0.2/a", "http://127.0.0.2/b"]
    with pytest.raises(ConfigurationError, match="picklable"):
        shardload.swarm(one_host, download=make_download(home, Local()), processes=2)

    async def with_a_client() -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            download = shardload.AioDownload(client=session)
            await shardload.aswarm(one_host, download=download, processes=2)

    with pytest.raises(ConfigurationError, match="live client"):
        asyncio.run(with_a_client())


@pytest.mark.parametrize("processes", [0, -1, "2", 2.0, True])
def test_bad_processes_value(home, processes):
    with pytest.raises(ConfigurationError, match="processes must be"):
        shardload.swarm(["http://127.0.0.2/"], processes=processes)


def test_never_more_workers_than_hosts(srv, home):
    from shardload.plan import make_plan

    one_host = [f"{srv.base_urls[0]}/links/{i}" for i in range(6)]
    plan = make_plan(one_host, None, make_download(home), {"processes": 8}, sync=True)
    assert plan.processes == 1
    two_hosts = [f"{srv.base_urls[i % 2]}/slow/100/w{i}" for i in range(6)]
    plan = make_plan(two_hosts, None, make_download(home), {"processes": 8}, sync=True)
    assert plan.processes == 2
    for collection, hosts in (
        (set(one_host), 1),
        (dict.fromkeys(one_host).keys(), 1),
        (frozenset(two_hosts), 2),
    ):
        plan = make_plan(collection, None, make_download(home), {"processes": 8}, sync=True)
        assert plan.processes == hosts

    # An input with no URL to download (empty, or nothing with a host) needs no worker.
    for nothing in ([], ["http://", "not a url"]):
        plan = make_plan(nothing, None, make_download(home), {"processes": 8}, sync=True)
        assert (plan.processes, plan.in_caller) == (1, True)

    # And while a run is under way, no more worker processes exist than there are hosts.
    before = set(multiprocessing.active_children())
    for urls, hosts in ((one_host, 1), (two_hosts, 2)):
        counts = []
        for bundle in shardload.each(urls, download=make_download(home), processes=8):
            assert bundle.ok, bundle.error_message
            counts.append(len(set(multiprocessing.active_children()) - before))
        assert len(counts) == len(urls)
        assert max(counts) == hosts
    assert set(multiprocessing.active_children()) == before


def test_one_host_asked_of_worker_processes_runs_in_one_not_in_the_caller(srv, home):
    """processes=2 over one host ran in the caller's process: a URL that killed its process
    killed the caller with every result, and overrides ran where README says they do not."""
    urls = [f"{srv.base_urls[1]}/links/{i}" for i in range(4)]
    download = shardload.AioDownload(download_strategy=ReportsItsCollector(home=home))
    bundles = shardload.swarm(urls, download=download, processes=2)
    assert all(b.ok for b in bundles)
    (worker,) = {b.collector[0] for b in bundles}
    assert worker != os.getpid()
    poisoned = shardload.swarm(
        [*urls, f"{srv.base_urls[1]}/any/poison"],
        download=shardload.AioDownload(download_strategy=KillsItsWorker(home=home)),
        processes=2,
    )
    assert [b.error_kind for b in poisoned] == [None] * 4 + [ErrorKind.WORKER_CRASH]


START_METHOD_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    import shardload
    from shardload import AioDownload, DownloadStrategy

    if __name__ == "__main__":
        bases, home = sys.argv[1].split(","), sys.argv[2]
        if sys.argv[3] == "chosen":
            multiprocessing.set_start_method("forkserver")
        urls = [f"{bases[i % len(bases)]}/bytes/{100 + i}" for i in range(8)]
        download = AioDownload(download_strategy=DownloadStrategy(home=home))
        print("OK", sum(b.ok for b in shardload.swarm(urls, download=download, processes=2)))
        print("METHOD", multiprocessing.get_start_method(allow_none=True))
        if sys.argv[3] == "unset":
            multiprocessing.set_start_method("spawn")  # raised: context has already been set
            print("SET", multiprocessing.get_start_method())
    """
)


@pytest.mark.parametrize("caller", ["unset", "chosen"])
def test_a_run_leaves_the_callers_start_method_as_it_found_it(srv, home, tmp_path, caller):
    """Starting a worker made multiprocessing fix its default start method, so the caller's
    own set_start_method() afterwards raised; one the caller chose stays."""
    script = tmp_path / "script.py"
    script.write_text(START_METHOD_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), ",".join(srv.base_urls), home, caller],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = (
        ["OK 8", "METHOD None", "SET spawn"] if caller == "unset" else ["OK 8", "METHOD forkserver"]
    )
    assert done.stdout.split("\n")[:-1] == expected


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_start_methods(srv, home, method):
    urls = mixed_urls(srv, 40)
    bundles = shardload.swarm(urls, download=make_download(home), processes=2, start_method=method)
    assert [b.url for b in bundles] == urls
    assert [i for i, b in enumerate(bundles) if not b.ok] == [5, 9, 13]
    assert len(files_under(home)) == 37


FORKSERVER_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    from multiprocessing import forkserver
    import shardload
    from shardload import AioDownload, DownloadStrategy

    if __name__ == "__main__":
        bases, home = sys.argv[1].split(","), sys.argv[2]
        multiprocessing.set_forkserver_preload(["json"])  # the caller's own list is kept
        for run in range(2):
            urls = [f"{bases[i % len(bases)]}/bytes/{100 + i}?run={run}" for i in range(8)]
            download = AioDownload(download_strategy=DownloadStrategy(home=home))
            bundles = shardload.swarm(urls, download=download, processes=2,
                                      start_method="forkserver")
            print("OK", sum(b.ok for b in bundles), flush=True)
        print("PRELOAD", *forkserver._forkserver._preload_modules, flush=True)
    """
)


def _run_script(text: str, srv, home, tmp_path) -> subprocess.CompletedProcess[str]:
    """Run ``text`` as a script of its own, given the server's base URLs and home."""
    script = tmp_path / "script.py"
    script.write_text(text)
    return subprocess.run(
        [sys.executable, str(script), ",".join(srv.base_urls), home],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_forkserver_preloads_the_worker_once_for_every_run(srv, home, tmp_path):
    result = _run_script(FORKSERVER_SCRIPT, srv, home, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["OK 8", "OK 8", "PRELOAD json shardload.worker.process"], result.stderr


def test_fork_is_refused(home):
    with pytest.raises(ConfigurationError, match="fork"):
        shardload.swarm(
            ["http://127.0.0.2/", "http://127.0.0.3/"], processes=2, start_method="fork"
        )


SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys
    import shardload
    from shardload import AioDownload, DownloadStrategy, RequestStrategy

    if __name__ == "__main__":
        bases, home = sys.argv[1].split(","), sys.argv[2]
        urls = [f"{bases[i % len(bases)]}/drip/50?ms=40&n={i}" for i in range(400)]
        download = AioDownload(download_strategy=DownloadStrategy(home=home),
                               request_strategy=RequestStrategy(concurrent=4))
        try:
            for i, bundle in enumerate(shardload.each(urls, download=download, processes=2)):
                if i == 0:
                    pids = [p.pid for p in multiprocessing.active_children()]
                    print("PIDS", *pids, flush=True)
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            print("LEFT", len(multiprocessing.active_children()), flush=True)
            raise
    """
)


def start_script(srv, home, tmp_path) -> tuple[subprocess.Popen[str], list[int]]:
    """Run SCRIPT in a child interpreter; returns it and its workers' pids once they work."""
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), ",".join(srv.base_urls), home],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    assert line.startswith("PIDS"), line + proc.stderr.read()
    return proc, [int(p) for p in line.split()[1:]]


def test_keyboard_interrupt_stops_workers_and_leaves_no_partial_files(srv, home, tmp_path):
    proc, pids = start_script(srv, home, tmp_path)
    time.sleep(0.5)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - started < 20
    assert "INTERRUPTED" in out and "LEFT 0" in out
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert "resource_tracker" not in err and "leaked" not in err
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    # Only complete files at final paths (each /drip/50 body is 50 bytes), no temp files.
    for rel in files_under(home):
        assert os.path.getsize(os.path.join(home, rel)) == 50
    assert temp_files(home) == []


AEACH_INTERRUPTED = textwrap.dedent(
    """
    import asyncio, sys, time
    import shardload
    from shardload import AioDownload, DownloadStrategy

    async def consume(bases, home):
        seen = 0
        download = AioDownload(download_strategy=DownloadStrategy(home=home))
        urls = [f"{bases[i % 4]}/slow/300/u{i}" for i in range(40)]
        async for _ in shardload.aeach(urls, download=download, processes=3):
            seen += 1
            if seen == 2:
                raise KeyboardInterrupt

    if __name__ == "__main__":
        try:
            asyncio.run(consume(sys.argv[1].split(","), sys.argv[2]))
        except KeyboardInterrupt:
            print("CAUGHT", flush=True)
        time.sleep(1)  # the program goes on
    """
)


def test_aeach_left_by_a_keyboard_interrupt_in_the_callers_loop(srv, home, tmp_path):
    """The caller's ``async for`` over aeach() (3 workers) raises KeyboardInterrupt and the
    program goes on: asyncio.run closing the run's generators closed the inner one twice
    ("aclose(): asynchronous generator is already running"), and the workers' reaper thread
    called into the closed loop ("Exception in thread shardload-reap")."""
    proc = _run_script(AEACH_INTERRUPTED, srv, home, tmp_path)
    assert proc.stdout.strip() == "CAUGHT", proc.stderr
    assert "already running" not in proc.stderr
    assert "Exception in thread" not in proc.stderr
    assert temp_files(home) == []


def test_workers_exit_when_the_coordinator_is_killed(srv, home, tmp_path):
    proc, pids = start_script(srv, home, tmp_path)
    assert pids
    proc.kill()
    proc.communicate()
    deadline = time.monotonic() + 20
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in pids if _alive(p)]
    assert alive == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not running; it only waits to be reaped by its (dead) parent's init.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


class ReportsItsCollector(shardload.DownloadStrategy):
    """Says how the garbage collector of the process downloading it is set."""

    def get_file_path(self, bundle: shardload.Bundle) -> str:
        bundle.collector = (os.getpid(), gc.get_threshold(), gc.get_freeze_count())
        return super().get_file_path(bundle)


def test_workers_collect_garbage_less_often_and_the_caller_keeps_its_settings(srv, home):
    """A worker freezes what its imports made and collects every 10,000 allocations (Python's
    700 cost it 60-120 ms of CPU per 10,000 small files); the caller's process is not ours."""
    from shardload.sharding import shard_of

    before = gc.get_threshold()
    urls = [f"{srv.base_urls[i % 4]}/links/{i}" for i in range(8)]
    download = shardload.AioDownload(download_strategy=ReportsItsCollector(home=home))
    bundles = shardload.swarm(urls, download=download, processes=2)
    assert all(b.ok for b in bundles)
    workers = {b.collector[0] for b in bundles}
    # One per shard its hosts hash to (the test server's ports change: both, most runs).
    shards = {shard_of(b.host, 2) for b in bundles}
    assert len(workers) == len(shards) and os.getpid() not in workers
    assert {b.collector[1][0] for b in bundles} == {10_000}
    assert all(b.collector[2] > 1000 for b in bundles)  # modules, classes, functions
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    (caller,) = shardload.swarm(urls[:1], download=download, processes=1)
    assert caller.collector == (os.getpid(), before, 0)


class KillsItsWorker(shardload.DownloadStrategy):
    """A URL that kills the process downloading it (a segfault in a parser, say)."""

    def get_file_path(self, bundle: shardload.Bundle) -> str:
        if bundle.url.endswith("/poison"):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().get_file_path(bundle)


def test_a_url_that_kills_its_worker_fails_alone(srv, home):
    """Its worker dies at every restart before any result: the jobs it had are then tried one
    at a time, the poison fails alone, and every other URL of the shard (and those read
    later) is downloaded."""
    urls = [f"{srv.base_urls[i % 4]}/links/{i}" for i in range(120)]
    urls.insert(5, f"{srv.base_urls[1]}/any/poison")
    download = shardload.AioDownload(download_strategy=KillsItsWorker(home=home))
    bundles = shardload.swarm(urls, download=download, processes=2)
    assert [b.url for b in bundles] == urls
    poison, rest = bundles[5], bundles[:5] + bundles[6:]
    assert poison.error_kind == ErrorKind.WORKER_CRASH
    assert "kills its worker" in poison.error_message
    assert all(b.ok for b in rest), {b.error_message for b in rest if not b.ok}


def test_a_lone_url_that_kills_its_worker_fails_alone(srv, home):
    """The poison is all its worker has (the input pauses after it): it fails alone at the
    second crash in a row, and its shard goes on with what comes later, other hosts too."""
    others = [f"{srv.base_urls[i % 4]}/links/{i}" for i in range(12)]

    def items():
        yield f"{srv.base_urls[1]}/any/poison"
        time.sleep(1.5)  # meanwhile the poison kills its worker again and again
        yield from others

    download = shardload.AioDownload(download_strategy=KillsItsWorker(home=home))
    bundles = list(shardload.each(items(), download=download, processes=2))
    by_url = {b.url: b for b in bundles}
    assert len(bundles) == 13
    assert by_url[f"{srv.base_urls[1]}/any/poison"].error_kind == ErrorKind.WORKER_CRASH
    assert all(by_url[url].ok for url in others), [by_url[u].error_message for u in others]


def test_a_worker_that_works_between_crashes_keeps_being_restarted(srv, home):
    """The restart limit counts crashes in a row: a shard whose worker is killed now and then
    (an OOM kill an hour) and does work in between keeps its URLs."""
    from shardload.coordinator import Limits
    from shardload.plan import make_plan
    from shardload.run import Run
    from shardload.sharding import shard_of

    urls = [f"{srv.base_urls[i % 4]}/slow/50/k{i}" for i in range(80)]
    plan = make_plan(urls, None, make_download(home), {"processes": 2}, sync=True)
    plan.limits = Limits(max_restarts=1)
    seen, kills, since, target = [], 0, -3, None  # the first kill comes after a few results
    killed: int | None = None  # the pid of the worker killed last, until its replacement shows

    def worker_of(shard: int) -> multiprocessing.Process | None:
        name = f"shardload-worker-{shard}"
        found = [c for c in multiprocessing.active_children() if c.name == name]
        return found[0] if found and found[0].pid != killed else None

    for bundle in Run(plan):
        seen.append(bundle)
        target = shard_of(bundle.host, 2) if target is None else target
        if shard_of(bundle.host, 2) != target:
            continue
        if killed is not None:
            # Results the killed worker sent before it died still come in while its
            # replacement starts: only those that come once it is there count as its work.
            if worker_of(target) is not None:
                killed = None
            continue
        since += 1
        if since >= 3 and kills < 3:  # the shard's new worker did work since the last kill
            worker = worker_of(target)
            assert worker is not None and worker.pid is not None
            os.kill(worker.pid, signal.SIGKILL)
            kills, since, killed = kills + 1, 0, worker.pid
    assert kills == 3
    assert sorted(b.url for b in seen) == sorted(urls)
    assert all(b.ok for b in seen), {b.error_message for b in seen if not b.ok}


def test_crash_limit_fails_jobs_with_the_reason(srv, home):
    """A shard that keeps dying is given up on: its jobs fail with worker_crash, none is lost."""
    from shardload.coordinator import Limits
    from shardload.plan import make_plan
    from shardload.run import Run

    urls = [f"{srv.base_urls[i % 4]}/slow/300/c{i}" for i in range(40)]
    plan = make_plan(urls, None, make_download(home), {"processes": 2}, sync=True)
    plan.limits = Limits(max_restarts=0)

    seen = []
    for bundle in Run(plan):
        seen.append(bundle)
        if len(seen) == 1:
            for child in multiprocessing.active_children():
                os.kill(child.pid, signal.SIGKILL)
    assert sorted(b.url for b in seen) == sorted(urls)
    crashed = [b for b in seen if b.error_kind == ErrorKind.WORKER_CRASH]
    assert crashed and "killed by signal 9" in crashed[0].error_message


def test_a_replacement_killed_as_it_starts_is_one_more_crash(srv, home):
    """A worker killed (an OOM kill) before it reported ready was taken for a setup error:
    the shard was given up after two crashes, with a message about a missing main guard,
    though restarts were left. It counts as a crash, and a third worker finishes the shard."""
    from shardload.sharding import shard_of
    from shardload.urls import host_key

    urls = [f"{srv.base_urls[0]}/slow/50/r{i}" for i in range(30)]
    name = f"shardload-worker-{shard_of(host_key(urls[0]), 2)}"
    killed: list[str] = []

    def workers() -> list[multiprocessing.Process]:
        return [p for p in multiprocessing.active_children() if p.name == name]

    def killer() -> None:
        deadline = time.monotonic() + 20
        while not workers() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.3)  # let it work
        (first,) = workers()
        os.kill(first.pid, signal.SIGKILL)
        killed.append("worker")
        while time.monotonic() < deadline:
            fresh = [p for p in workers() if p.pid != first.pid]
            if fresh:
                os.kill(fresh[0].pid, signal.SIGKILL)  # long before it can be ready
                killed.append("replacement")
                return
            time.sleep(0.001)

    thread = threading.Thread(target=killer)
    thread.start()
    bundles = shardload.swarm(iter(urls), download=make_download(home), processes=2)
    thread.join()
    assert killed == ["worker", "replacement"]
    assert [b.state for b in bundles] == ["written"] * 30, {b.error_message for b in bundles}


class SlowToRebuild(shardload.DownloadStrategy):
    """Takes a second to unpickle in a worker process: the worker is not ready for that long."""

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        if multiprocessing.parent_process() is not None:
            time.sleep(1.0)


@pytest.mark.parametrize("kills", [1, 3])
def test_a_worker_killed_as_the_run_starts_is_started_again(srv, home, kills):
    """Killed before it is ready at the very start (an OOM kill), a worker made swarm()
    raise ConfigurationError: no bundle came back. It is started again, as a crash later on
    is; only a worker killed at every try makes the run fail to start, saying so."""
    name = "shardload-worker-0"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.monotonic() + 30
        while len(killed) < kills and time.monotonic() < deadline:
            found = [
                p
                for p in multiprocessing.active_children()
                if p.name == name and p.pid not in killed
            ]
            if found:
                time.sleep(0.2)  # inside its second of unpickling the strategy
                os.kill(found[0].pid, signal.SIGKILL)
                killed.append(found[0].pid)
            time.sleep(0.005)

    thread = threading.Thread(target=killer)
    thread.start()
    download = shardload.AioDownload(download_strategy=SlowToRebuild(home=home))
    urls = [srv.base_urls[0] + "/links/1", srv.base_urls[1] + "/links/2"]
    try:
        if kills == 1:
            bundles = shardload.swarm(iter(urls), download=download, processes=2)
            assert [b.state for b in bundles] == ["written", "written"]
        else:
            with pytest.raises(ConfigurationError, match="killed by signal 9 as it started"):
                shardload.swarm(iter(urls), download=download, processes=2)
    finally:
        thread.join()
    assert len(killed) == kills


def test_a_bundle_answered_again_after_it_finished_is_copied_and_keeps_later_info(srv, home):
    """Reset in place, a bundle the caller already held turned into the last item's (all four
    said item3); and a later run overwrote the info its owner set between the runs."""
    shared = shardload.Bundle(srv.base_urls[0] + "/links/1")

    def slowly() -> Iterator[str]:
        for i in range(3):
            yield f"item{i}"
            time.sleep(0.3)  # the one before is finished and handed out

    seen = list(shardload.each(slowly(), url_map=lambda x: shared, download=make_download(home)))
    assert [b.info for b in seen] == ["item0", "item1", "item2"]
    assert len({id(b) for b in seen}) == 3
    shared.info = {"mine": True}
    (again,) = shardload.swarm(["item9"], url_map=lambda x: shared, download=make_download(home))
    assert again.info == {"mine": True}


class LoadsOnlyHere:
    """Loads in the caller, and raises when a worker process unpickles it."""

    def __init__(self) -> None:
        self.state = 1  # pickle calls __setstate__ only for a state that is not empty

    def __setstate__(self, state: dict[str, object]) -> None:
        if multiprocessing.parent_process() is not None:
            raise RuntimeError("this object cannot be loaded in a worker")
        self.__dict__.update(state)


def test_a_job_a_worker_cannot_load_fails_alone_and_the_run_ends(srv, home):
    """The worker's reader thread died on the batch and the worker lived on, reading no
    more: the run hung. Now the worker ends as a crash, and the job is isolated. An info
    that does not load there is no such job: it stays in the caller, and its URL is
    downloaded (its batch died, and it failed as worker_crash)."""
    urls = [f"{srv.base_urls[i % 2]}/links/{i}" for i in range(6)]  # two hosts: two workers
    info = LoadsOnlyHere()
    bundles = shardload.swarm(
        [
            shardload.Bundle(
                url,
                info=info if i == 3 else None,
                params={"p": LoadsOnlyHere()} if i == 4 else None,
            )
            for i, url in enumerate(urls)
        ],
        download=make_download(home),
        processes=2,
    )
    states = [(b.state, b.error_kind) for b in bundles]
    assert states[4] == ("failed", ErrorKind.WORKER_CRASH), bundles[4].error_message
    assert states[:4] + states[5:] == [("written", None)] * 5
    assert bundles[3].info is info


class TwoArgs(Exception):
    """Pickles, and does not load back: its __init__ wants two arguments."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}{b}")


class SetsAHashObject(shardload.DownloadStrategy):
    async def on_success(self, response: object, bundle: shardload.Bundle) -> None:
        await super().on_success(response, bundle)
        if bundle.url.endswith("/links/2"):
            bundle.sha256 = hashlib.sha256()  # type: ignore[assignment]  # .hexdigest() forgotten
        if bundle.url.endswith("/links/3"):
            bundle.sha256 = TwoArgs("x", "y")  # type: ignore[assignment]


def test_a_field_a_strategy_set_to_what_cannot_cross_fails_that_bundle_only(srv, home):
    """The worker's writer thread died on the pickling and the run hung; a field that
    pickled but did not load back was taken for the worker's crash, four times (21 s)."""
    download = shardload.AioDownload(download_strategy=SetsAHashObject(home=home))
    for odd in (2, 3):  # separately: in one batch with the other, it took the other's path
        urls = [f"{srv.base_urls[i % 2]}/links/{i}" for i in (0, 1, odd)]  # two workers
        bundles = shardload.swarm(urls, download=download, processes=2)
        assert [b.state for b in bundles] == ["written", "written", "failed"]
        assert bundles[2].error_kind == ErrorKind.STRATEGY
        assert "sha256" in (bundles[2].error_message or "")


class ExitsOnBoom(shardload.DownloadStrategy):
    """A strategy that ends its process (sys.exit) for one URL; on aiohttp (on_success is
    overridden), as the audit found it."""

    def get_file_path(self, bundle: shardload.Bundle) -> str:
        if "/boom" in bundle.url:
            sys.exit(3)
        return super().get_file_path(bundle)

    async def on_success(self, response: object, bundle: shardload.Bundle) -> None:
        await super().on_success(response, bundle)


def test_downloads_cancelled_by_a_dying_worker_are_redone_not_failed(srv, home):
    """The dying worker's engine closed before its cancelled downloads ended; their cleanup
    then raised KeyError, reported as their final failure (1-15 of 200 in each run)."""
    hosts = srv.base_urls
    urls = [f"{hosts[i % len(hosts)]}/any/{'boom' if i % 20 == 7 else 'ok'}{i}" for i in range(200)]
    download = shardload.AioDownload(
        download_strategy=ExitsOnBoom(home=home), request_strategy=RequestStrategy(concurrent=4)
    )
    bundles = shardload.swarm(urls, download=download, processes=2)
    failed = {b.url: (b.error_kind, b.error_message) for b in bundles if b.state != "written"}
    assert sorted(failed) == sorted(url for url in urls if "boom" in url), failed
    assert {kind for kind, _ in failed.values()} == {ErrorKind.WORKER_CRASH}, failed


def test_one_bundle_url_map_answers_for_several_items_gives_each_its_own(srv, home):
    """Item "b" got no bundle and "a" got two (swarm's order broke)."""
    other = srv.base_urls[1] + "/links/2"
    for processes in (1, 2):
        shared = shardload.Bundle(srv.base_urls[0] + "/links/1")
        bundles = shardload.swarm(
            ["a", "b", "c"],
            url_map=lambda x, shared=shared: shared if x != "c" else other,
            download=make_download(home),
            processes=processes,
        )
        assert [b.info for b in bundles] == ["a", "b", "c"]
        assert [b.state for b in bundles] == ["written"] * 3
        assert len({id(b) for b in bundles}) == 3
