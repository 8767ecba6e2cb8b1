"""aiodownload 0.2.5 (Python 3.8, aiohttp 2.3.10): ``swarm()`` over a URL list.

Runs under the old interpreter, so it imports nothing from the bench or shardload.
``python aiodownload_client.py URLS OUT [--concurrent 64]``: the base ``RequestStrategy`` (no
sleeps, no retries) with a global semaphore of ``--concurrent``; aiodownload's default
``Lenient`` would sleep 0.25 s per request while holding its slot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

# aiodownload runs under its own Python 3.8 venv, not this one.
import aiodownload  # type: ignore[import-not-found]
from aiodownload import AioDownload, DownloadStrategy, RequestStrategy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("urls")
    parser.add_argument("out")
    parser.add_argument("--concurrent", type=int, default=64)
    args = parser.parse_args()
    with open(args.urls) as f:
        urls = [line.strip() for line in f if line.strip()]
    download = AioDownload(
        download_strategy=DownloadStrategy(home=args.out),
        request_strategy=RequestStrategy(concurrent=args.concurrent),
    )
    started = time.perf_counter()
    bundles = aiodownload.swarm(urls, download=download)
    inner = time.perf_counter() - started
    done = sum(1 for b in bundles if b.status_msg.endswith("File written]"))
    json.dump({"inner_s": inner, "written": done, "bundles": len(bundles)}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
