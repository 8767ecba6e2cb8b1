"""Fixtures for the CLI tests: one local multi-host server, and a runner for the command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shardload.testing.server import LocalServer

REPO = Path(__file__).resolve().parents[2]
HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@pytest.fixture(scope="session")
def server() -> Iterator[LocalServer]:
    with LocalServer(hosts=HOSTS) as srv:
        yield srv


def cli_env() -> dict[str, str]:
    """The child finds this checkout's package whatever its working directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def cli_command(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "shardload", *map(str, args)]


def run_cli(
    *args: str | Path, stdin: bytes | None = None, cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        cli_command(*args),
        input=stdin,
        capture_output=True,
        cwd=cwd,
        env=cli_env(),
        timeout=timeout,
        check=False,
    )


def read_manifest(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for record in records:
        out[record["url"]] = record
    return out


def path_counts(srv: LocalServer) -> dict[str, int]:
    """Requests per path and query, over the whole session."""
    paths: dict[str, int] = srv.stats()["paths"]
    return paths
