"""Per-URL overhead of the back ends: in-process, worker processes, Ray actors.

``python -m bench.backends [--urls N] [--runs 3]``

What it isolates: the cost of moving a URL through the coordinator, a back end and back, not
the network. Every URL's file already exists and ``skip_cached=True`` is on, so a worker
answers each URL with one lstat (the resume-a-crawl case). A second measurement runs the same
number of real requests against the local test server (4 hosts on 127.0.0.x), where the
server, not the back end, is usually the limit. Writes bench/results/backends.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import shardload
from shardload import AioDownload, DownloadStrategy, RequestStrategy
from shardload.testing.server import LocalServer

RESULTS = Path(__file__).parent / "results"
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def _download(home: str, cached: bool) -> AioDownload:
    return AioDownload(
        download_strategy=DownloadStrategy(home=home, skip_cached=cached),
        request_strategy=RequestStrategy(concurrent=16, worker_concurrent=64),
    )


def _prefill(home: str, urls: list[str]) -> None:
    strategy = DownloadStrategy(home=home)
    for url in urls:
        path = strategy.get_file_path(shardload.Bundle(url))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(b"x")


def _time(urls: list[str], home: str, cached: bool, **options: Any) -> float:
    started = time.perf_counter()
    bundles = shardload.swarm(urls, download=_download(home, cached), **options)
    elapsed = time.perf_counter() - started
    ok = sum(b.ok for b in bundles)
    if ok != len(urls):
        raise SystemExit(f"only {ok} of {len(urls)} URLs done with {options}")
    return elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--urls", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    import ray  # noqa: PLC0415  (optional: only this benchmark needs it)

    ray.init(address="local", num_cpus=os.cpu_count() or 2, include_dashboard=False)
    backends: dict[str, dict[str, Any]] = {
        "in-process (processes=1)": {"processes": 1},
        "processes=2": {"processes": 2},
        "ray, 2 actors": {"backend": "ray", "processes": 2},
    }
    rows: dict[str, dict[str, Any]] = {}
    work = tempfile.mkdtemp(prefix="shardload-backends-", dir="/dev/shm")
    try:
        with LocalServer(hosts=HOSTS) as server:
            urls = [f"{server.base_urls[i % 4]}/bytes/64?name=b{i}" for i in range(args.urls)]
            cached_home = os.path.join(work, "cached")
            _prefill(cached_home, urls)
            rows = {name: {"cached": [], "network": []} for name in backends}
            for _ in range(args.runs):  # alternate the back ends within each round
                for name, options in backends.items():
                    rows[name]["cached"].append(_time(urls, cached_home, True, **options))
                    home = os.path.join(work, "net")
                    shutil.rmtree(home, ignore_errors=True)
                    rows[name]["network"].append(_time(urls, home, False, **options))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()
    _write(rows, args.urls)


def _write(rows: dict[str, dict[str, Any]], n: int) -> None:
    RESULTS.mkdir(exist_ok=True)
    summary = {
        name: {
            kind: {
                "seconds": times,
                "median_us_per_url": statistics.median(times) / n * 1e6,
                "files_per_s": n / statistics.median(times),
            }
            for kind, times in kinds.items()
        }
        for name, kinds in rows.items()
    }
    machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "urls": n}
    (RESULTS / "backends.json").write_text(json.dumps({"machine": machine, **summary}, indent=1))
    lines = [
        f"# Back-end overhead ({n:,} URLs, {os.cpu_count()} cores, median of the runs)",
        "",
        "| back end | cached: µs/URL | cached: URLs/s | network: µs/URL | network: files/s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, kinds in summary.items():
        c, w = kinds["cached"], kinds["network"]
        lines.append(
            f"| {name} | {c['median_us_per_url']:.0f} | {c['files_per_s']:,.0f} "
            f"| {w['median_us_per_url']:.0f} | {w['files_per_s']:,.0f} |"
        )
    (RESULTS / "backends.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
