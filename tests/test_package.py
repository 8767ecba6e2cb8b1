"""The package's face: its public names load on first use, and a worker's start skips the rest."""

from __future__ import annotations

import subprocess
import sys

import pytest

import shardload

AIODOWNLOAD_NAMES = [
    "one",
    "swarm",
    "each",
    "AioDownload",
    "AioDownloadBundle",
    "DownloadStrategy",
    "RequestStrategy",
    "Lenient",
    "BackOff",
]


@pytest.mark.parametrize("name", sorted(shardload.__all__))
def test_every_public_name_loads_and_is_listed(name: str) -> None:
    assert getattr(shardload, name) is not None
    assert name in dir(shardload)


def test_aiodownload_names_are_public() -> None:
    assert set(AIODOWNLOAD_NAMES) <= set(shardload.__all__)
    assert shardload.AioDownloadBundle is shardload.Bundle


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = shardload.no_such_name  # type: ignore[attr-defined]


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from shardload import *", namespace)
    assert set(shardload.__all__) <= set(namespace)


def test_a_worker_start_imports_only_what_a_worker_runs() -> None:
    """Each worker process imports ``shardload.worker.process`` and the caller's main module
    (which usually does ``from shardload import AioDownload, DownloadStrategy``); the coordinator,
    the executors and the stdlib parsers that only robots.txt and HTTP-date Retry-After need must
    not come with them: they are ~30 ms of every worker's start."""
    code = (
        "import sys\n"
        "from shardload import AioDownload, DownloadStrategy\n"
        "import shardload.worker.process\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        ).stdout.split()
    )
    assert "shardload.worker.engine" in loaded
    unwanted = {
        "shardload.api",
        "shardload.coordinator",
        "shardload.executors.processes",
        "shardload.run",
        "urllib.robotparser",
        "email.utils",
    }
    assert not loaded & unwanted
