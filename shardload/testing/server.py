"""A real local HTTP server with one port per loopback host, run in a child process.

Used by the demo, the test suite and the benchmarks, so that every test talks to a real server
over real sockets. Each host in ``hosts`` (127.0.0.x addresses) gets its own listening port, so
each is a distinct host to the client (distinct host:port, distinct shard).

The server measures what politeness tests need: per host, the number of requests, the peak
number of requests in flight, and the start time of each request; per path, a request count;
and, across all hosts, the peak number of requests in flight at once.
``LocalServer`` starts it, waits for its address line, and stops it by PID.

Routes (on every host):
  /links/{n}                         small HTML page, like httpbin's
  /bytes/{n}[?name=x]                n deterministic bytes (see ``body_for``)
  /status/{code}                     that status
  /flaky/{key}/{fails}/{code}        the first ``fails`` requests for key get ``code``, then 200
  /retry-after/{key}/{fails}/{code}?after=S[&date=1]   same, with Retry-After (seconds or date)
  /slow/{ms}/{name}                  200 after ms milliseconds
  /truncate/{n}                      Content-Length n, sends n // 2 bytes, then closes
  /reset/{n}                         sends some bytes, then aborts the connection
  /chunked-cut                       a chunked body cut off before its last chunk
  /stall/{n}                         sends n bytes, then never another
  /hang                              reads the request and never answers
  /drip/{n}?ms=1000                  n bytes, one every ms milliseconds
  /redirect/{n}                      a chain of n redirects ending in 200
  /loop                              redirects to itself forever
  /redirect-to?url=U[&code=C]        one redirect to U (status C, 302 by default)
  /gzip/{n}                          a gzip body that expands to n zero bytes
  /any/{anything}                    200 with the path, for any path below /any/
  /robots.txt                        ``ROBOTS_TXT``: /any/private/ disallowed, Crawl-delay 0.3
  /echo                              JSON of method, query and headers
  /_stats, /_reset                   the measurements, and their reset
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from email.utils import formatdate
from types import TracebackType
from typing import Any

from aiohttp import web

_MAX_STARTS = 20_000
ROBOTS_TXT = """\
User-agent: *
Disallow: /any/private/
Crawl-delay: 0.3

User-agent: blockedbot
Disallow: /
"""


def body_for(n: int, name: str = "") -> bytes:
    """The deterministic body of ``/bytes/{n}?name=...``: tests compare files against it."""
    seed = hashlib.sha256(f"{n}:{name}".encode()).digest()
    return (seed * (n // len(seed) + 1))[:n]


class _Stats:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.requests: dict[str, int] = defaultdict(int)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.max_concurrency: dict[str, int] = defaultdict(int)
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.paths: dict[str, int] = defaultdict(int)
        self.counters: dict[str, int] = defaultdict(int)
        self.serial: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)  # see /queued
        # Server-wide, counting only requests started since this reset: one still running from
        # before it (a /hang, a /slow whose client left) neither adds nor, ending, subtracts.
        self.generation = getattr(self, "generation", 0) + 1
        self.total_in_flight = 0
        self.max_total_in_flight = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "hosts": {
                host: {
                    "requests": self.requests[host],
                    "max_concurrency": self.max_concurrency[host],
                    "in_flight": self.in_flight[host],
                    "starts": self.starts[host],
                }
                for host in self.requests
            },
            "paths": dict(self.paths),
            "max_total_in_flight": self.max_total_in_flight,
        }


def _build_app(stats: _Stats) -> web.Application:
    routes = web.RouteTableDef()

    @web.middleware
    async def measure(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/_"):
            return await handler(request)  # type: ignore[no-any-return]
        host = request.host
        stats.requests[host] += 1
        stats.paths[request.path_qs] += 1
        if len(stats.starts[host]) < _MAX_STARTS:
            stats.starts[host].append(time.monotonic())
        stats.in_flight[host] += 1
        stats.max_concurrency[host] = max(stats.max_concurrency[host], stats.in_flight[host])
        generation = stats.generation
        stats.total_in_flight += 1
        stats.max_total_in_flight = max(stats.max_total_in_flight, stats.total_in_flight)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            stats.in_flight[host] -= 1
            if stats.generation == generation:
                stats.total_in_flight -= 1

    @routes.get("/_stats")
    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats.as_json())

    @routes.get("/_reset")
    async def reset(request: web.Request) -> web.Response:
        stats.reset()
        return web.Response(text="ok")

    @routes.get("/links/{n}")
    async def links(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        items = "".join(f"<a href='/links/{n}/{i}'>{i}</a> " for i in range(n))
        return web.Response(text=f"<html><body>{items}</body></html>", content_type="text/html")

    @routes.get("/bytes/{n}")
    async def some_bytes(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        return web.Response(body=body_for(n, request.query.get("name", "")))

    @routes.get("/status/{code}")
    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}")

    def _count(key: str) -> int:
        stats.counters[key] += 1
        return stats.counters[key]

    @routes.get("/flaky/{key}/{fails}/{code}")
    async def flaky(request: web.Request) -> web.Response:
        seen = _count("flaky:" + request.match_info["key"])
        if seen <= int(request.match_info["fails"]):
            return web.Response(status=int(request.match_info["code"]), text="not yet")
        return web.Response(text=f"ok after {seen}")

    @routes.get("/retry-after/{key}/{fails}/{code}")
    async def retry_after(request: web.Request) -> web.Response:
        seen = _count("retry-after:" + request.match_info["key"])
        if seen <= int(request.match_info["fails"]):
            after = float(request.query.get("after", "1"))
            if request.query.get("date"):
                value = formatdate(time.time() + after, usegmt=True)
            else:
                value = str(int(after))
            code = int(request.match_info["code"])
            return web.Response(status=code, text="slow down", headers={"Retry-After": value})
        return web.Response(text=f"ok after {seen}")

    @routes.get("/slow/{ms}/{name}")
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(text="slow " + request.match_info["name"])

    @routes.get("/queued/{ms}/{name}")
    async def queued(request: web.Request) -> web.Response:
        """A host that serves one request at a time: more in flight only wait longer."""
        async with stats.serial[request.host]:
            await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return web.Response(text="queued " + request.match_info["name"])

    async def _raw_start(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        return response

    @routes.get("/truncate/{n}")
    async def truncate(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        response = await _raw_start(request, {"Content-Length": str(n)})
        await response.write(body_for(n)[: n // 2])
        await asyncio.sleep(0.05)
        if request.transport is not None:
            request.transport.close()
        return response

    @routes.get("/reset/{n}")
    async def reset_conn(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        response = await _raw_start(request, {"Content-Length": str(n)})
        await response.write(body_for(n)[: n // 3])
        await asyncio.sleep(0.05)
        if request.transport is not None:
            request.transport.abort()
        return response

    @routes.get("/chunked-cut")
    async def chunked_cut(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"x" * 1000)
        await asyncio.sleep(0.05)
        if request.transport is not None:
            request.transport.close()
        return response

    @routes.get("/stall/{n}")
    async def stall(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        response = await _raw_start(request, {"Content-Length": str(n * 2)})
        await response.write(b"s" * n)
        await asyncio.sleep(3600)
        return response

    @routes.get("/hang")
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response(text="never")

    @routes.get("/drip/{n}")
    async def drip(request: web.Request) -> web.StreamResponse:
        n = int(request.match_info["n"])
        pause = int(request.query.get("ms", "1000")) / 1000
        response = await _raw_start(request, {"Content-Length": str(n)})
        for _ in range(n):
            await response.write(b"d")
            await asyncio.sleep(pause)
        return response

    @routes.get("/redirect/{n}")
    async def redirect(request: web.Request) -> web.Response:
        n = int(request.match_info["n"])
        if n <= 0:
            return web.Response(text="end of chain")
        raise web.HTTPFound(f"/redirect/{n - 1}")

    @routes.get("/loop")
    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    @routes.get("/redirect-to")
    async def redirect_to(request: web.Request) -> web.Response:
        code = int(request.query.get("code", "302"))
        return web.Response(status=code, headers={"Location": request.query["url"]})

    @routes.get("/gzip/{n}")
    async def gzipped(request: web.Request) -> web.Response:
        body = gzip.compress(b"\0" * int(request.match_info["n"]))
        return web.Response(body=body, headers={"Content-Encoding": "gzip"})

    @routes.get("/robots.txt")
    async def robots(request: web.Request) -> web.Response:
        return web.Response(text=ROBOTS_TXT)

    @routes.get("/any/{tail:.*}")
    async def anything(request: web.Request) -> web.Response:
        return web.Response(text="path " + request.path_qs)

    @routes.route("*", "/echo")
    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "method": request.method,
                "query": dict(request.query),
                "headers": dict(request.headers),
            }
        )

    app = web.Application(middlewares=[measure])
    app.add_routes(routes)
    return app


async def _serve(hosts: list[str]) -> None:
    stats = _Stats()
    # A stop should not wait a minute for idle keep-alive clients (aiohttp's default).
    runner = web.AppRunner(
        _build_app(stats), access_log=None, handle_signals=False, shutdown_timeout=1.0
    )
    await runner.setup()
    base_urls = []
    for host in hosts:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, 0))
        await web.SockSite(runner, sock, backlog=1024).start()
        base_urls.append(f"http://{host}:{sock.getsockname()[1]}")
    print(json.dumps({"base_urls": base_urls, "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Also stop when the parent goes away (stdin closes), so no server outlives its test.
    stdin = sys.stdin.fileno()

    def parent_gone() -> None:
        if not sys.stdin.read(1):
            loop.remove_reader(stdin)  # an end of file stays readable: it would spin
            stop.set()

    with contextlib.suppress(OSError):  # /dev/null or a file cannot be watched: signals only
        loop.add_reader(stdin, parent_gone)
    await stop.wait()
    loop.remove_reader(stdin)
    await runner.cleanup()


class LocalServer:
    """Context manager: a child process serving every route above on each of ``hosts``."""

    def __init__(self, hosts: list[str] | None = None, start_timeout: float = 30.0) -> None:
        self.hosts = hosts or ["127.0.0.1"]
        self.start_timeout = start_timeout
        self.base_urls: list[str] = []
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> LocalServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shardload.testing.server", "--hosts", ",".join(self.hosts)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        stdout = self.process.stdout
        if stdout is None:
            raise RuntimeError("no stdout from the server")
        deadline = time.monotonic() + self.start_timeout
        line = ""
        while not line and time.monotonic() < deadline and self.process.poll() is None:
            line = stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("the local server did not start")
        self.base_urls = json.loads(line)["base_urls"]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base_urls[0] + path, timeout=10) as response:
            return json.loads(response.read().decode())

    def stats(self) -> dict[str, Any]:
        """Per host key ("127.0.0.2:PORT"): requests, max_concurrency, starts; per path; and
        ``max_total_in_flight``, the server-wide peak of requests in flight across all hosts."""
        return self._get("/_stats")  # type: ignore[no-any-return]

    def reset(self) -> None:
        with urllib.request.urlopen(self.base_urls[0] + "/_reset", timeout=10):
            pass

    def host_key(self, index: int) -> str:
        return self.base_urls[index].removeprefix("http://")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", default="127.0.0.1")
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415  (optional)

        uvloop.install()
    asyncio.run(_serve(args.hosts.split(",")))


if __name__ == "__main__":
    main()
