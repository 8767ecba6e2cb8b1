"""The plain baseline: one aiohttp session, a semaphore of 64, uvloop; optionally N processes.

``python -m bench.clients.aiohttp_plain URLS OUT [--processes N] [--concurrency 64]``

With ``--processes N`` the URLs are split by host (crc32 of host:port modulo N, the same rule as
shardload) over N spawned processes, each running this same single-process loop. Files are
written to ``OUT/<host>_<port>/<path>`` straight (no temporary file, no retries): the naive
script a user would write. Error responses (>= 400) write nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import sys
import time
import zlib
from urllib.parse import urlsplit

import aiohttp
import uvloop


def relpath(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}_{parts.port}{parts.path}"


async def _download(urls: list[str], out: str, concurrency: int) -> tuple[int, int]:
    sem = asyncio.Semaphore(concurrency)
    made: set[str] = set()
    ok = failed = 0
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(url: str) -> None:
            nonlocal ok, failed
            async with sem:
                try:
                    async with session.get(url) as response:
                        if response.status >= 400:
                            failed += 1
                            return
                        path = os.path.join(out, relpath(url))
                        folder = os.path.dirname(path)
                        if folder not in made:
                            os.makedirs(folder, exist_ok=True)
                            made.add(folder)
                        with open(path, "wb") as f:  # noqa: ASYNC230 (naive on purpose)
                            async for chunk in response.content.iter_chunked(1 << 16):
                                f.write(chunk)
                        ok += 1
                except (TimeoutError, aiohttp.ClientError, OSError):
                    failed += 1

        await asyncio.gather(*(one(url) for url in urls))
    return ok, failed


def run_one(urls: list[str], out: str, concurrency: int) -> tuple[int, int]:
    return uvloop.run(_download(urls, out, concurrency))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("urls")
    parser.add_argument("out")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    with open(args.urls) as f:
        urls = [line.strip() for line in f if line.strip()]
    started = time.perf_counter()
    if args.processes == 1:
        ok, failed = run_one(urls, args.out, args.concurrency)
    else:
        groups: list[list[str]] = [[] for _ in range(args.processes)]
        for url in urls:
            host = urlsplit(url).netloc.encode()
            groups[zlib.crc32(host) % args.processes].append(url)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.processes) as pool:
            counts = pool.starmap(run_one, [(g, args.out, args.concurrency) for g in groups if g])
        ok = sum(c[0] for c in counts)
        failed = sum(c[1] for c in counts)
    inner = time.perf_counter() - started
    json.dump({"inner_s": inner, "ok": ok, "failed": failed}, sys.stdout)
    print()


if __name__ == "__main__":
    main()
