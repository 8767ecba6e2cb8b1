"""shardload as a user runs it: ``swarm()`` over a URL list, files under OUT.

``python -m bench.clients.shardload_client URLS OUT --processes N --per-host C --worker W
[--no-sha256]``

Prints one JSON line: the time inside ``swarm()`` and the count of each final state.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter

import shardload
from shardload import AioDownload, DownloadStrategy, RequestStrategy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("urls")
    parser.add_argument("out")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--per-host", type=int, default=16)
    parser.add_argument("--worker", type=int, default=64)
    parser.add_argument("--no-sha256", dest="sha256", action="store_false")
    args = parser.parse_args(argv)
    download = AioDownload(
        download_strategy=DownloadStrategy(home=args.out, sha256=args.sha256),
        request_strategy=RequestStrategy(concurrent=args.per_host, worker_concurrent=args.worker),
    )
    started = time.perf_counter()
    states: Counter[str] = Counter()
    with open(args.urls) as f:
        urls = [line.strip() for line in f if line.strip()]
    for bundle in shardload.swarm(urls, download=download, processes=args.processes):
        states[bundle.state] += 1
    inner = time.perf_counter() - started
    json.dump({"inner_s": inner, "states": dict(states)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
