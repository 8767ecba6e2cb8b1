"""Shared fixtures: one real multi-host server per test session, a fresh download home per test."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from shardload import AioDownload, DownloadStrategy, RequestStrategy
from shardload.bundle import Result
from shardload.testing.server import LocalServer

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]


def written_result(seq: int, path: str | None = None, size: int = 0) -> Result:
    """What a worker sends back for a job it wrote (for fake executors)."""
    return (seq, path, "written", 200, 1, size, None, 0.0, None, None, False, None, None)


@pytest.fixture(scope="session")
def server() -> Iterator[LocalServer]:
    with LocalServer(hosts=HOSTS) as srv:
        yield srv


@pytest.fixture
def srv(server: LocalServer) -> LocalServer:
    """The session server with its counters reset for this test."""
    server.reset()
    return server


@pytest.fixture
def home(tmp_path: os.PathLike[str]) -> str:
    path = os.path.join(os.fspath(tmp_path), "home")
    os.makedirs(path)
    return path


class ViaAiohttp(DownloadStrategy):
    """The default download strategy with on_success overridden (to itself), which keeps the
    engine's requests on aiohttp instead of the lean client: tests of faults run on both."""

    async def on_success(self, response: object, bundle: object) -> None:
        await super().on_success(response, bundle)  # type: ignore[arg-type]


def make_download(
    home: str, request: RequestStrategy | None = None, *, client: str = "lean", **download: object
) -> AioDownload:
    strategy = ViaAiohttp if client == "aiohttp" else DownloadStrategy
    return AioDownload(
        download_strategy=strategy(home=home, **download),  # type: ignore[arg-type]
        request_strategy=request or RequestStrategy(),
    )


@pytest.fixture(params=["lean", "aiohttp"])
def client(request: pytest.FixtureRequest) -> str:
    """Which HTTP client the engine uses: its own lean one, or aiohttp (see ViaAiohttp)."""
    return str(request.param)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 with nothing listening (connections are refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def files_under(home: str) -> set[str]:
    """Every regular file below home, relative, excluding the temporary folder."""
    out = set()
    for root, dirs, names in os.walk(home):
        dirs[:] = [d for d in dirs if d != ".shardload-tmp"]
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), home)
            out.add(rel)
    return out


def temp_files(home: str) -> list[str]:
    tmp = os.path.join(home, ".shardload-tmp")
    return os.listdir(tmp) if os.path.isdir(tmp) else []
