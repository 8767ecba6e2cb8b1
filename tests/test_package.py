"""The package's face: its public names load on first use, and a worker's start skips the rest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
        "shardload.executors.starting",
        "shardload.run",
        "urllib.robotparser",
        "email.utils",
    }
    assert not loaded & unwanted


def test_every_documented_state_is_public() -> None:
    states = (shardload.PENDING, shardload.WRITTEN, shardload.CACHED, shardload.FAILED)
    assert {*states, shardload.SKIPPED} == {"pending", "written", "cached", "failed", "skipped"}


_USER_SCRIPT = """
from __future__ import annotations

import aiohttp

import shardload
from shardload import AioDownload, Bundle, DownloadStrategy, RequestStrategy


class Mine(DownloadStrategy):
    async def on_success(self, response: aiohttp.ClientResponse, bundle: Bundle) -> None:
        await super().on_success(response, bundle)


class Checked(RequestStrategy):
    def assert_response(self, response: aiohttp.ClientResponse) -> None:
        super().assert_response(response)


def main() -> list[Bundle]:
    download = AioDownload(download_strategy=Mine(home="out"), request_strategy=Checked())
    done: list[Bundle] = shardload.swarm(["http://127.0.0.1:9/x"], download=download)
    return done
"""


def test_overrides_typed_as_aiodownload_users_wrote_them_pass_mypy_strict(tmp_path) -> None:
    """The README says overrides receive aiohttp's response: annotated so, they must pass a
    strict type check against the shipped hints (py.typed)."""
    script = tmp_path / "user.py"
    script.write_text(_USER_SCRIPT)
    root = Path(shardload.__file__).resolve().parent.parent
    checked = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(script),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "MYPYPATH": str(root)},
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_test_docs_guarantees_names_exists() -> None:
    """docs/guarantees.md names, for each guarantee, the tests that check it: a renamed or
    removed test must not leave a guarantee pointing at nothing."""
    root = Path(__file__).resolve().parent
    text = (root.parent / "docs" / "guarantees.md").read_text()
    named = set(re.findall(r"`((?:cli/)?test_\w+\.py)(?:::(\w+))?`", text))
    assert len(named) > 100  # the pattern still matches how the table names tests
    missing = []
    for module, test in sorted(named):
        path = root / module
        if not path.is_file():
            missing.append(module)
        elif test and not re.search(rf"^(?:async )?def {test}\b", path.read_text(), re.M):
            missing.append(f"{module}::{test}")
    assert missing == []


@pytest.mark.parametrize(
    ("name", "clean"),
    [
        ("report.pdf", "report.pdf"),
        ("Crème brûlée", "Creme brulee"),  # accents dropped, the letters kept
        ("a=1&b=2,c;d", "a_1-b_2.c-d"),
        ("x/../y?<>|:*", "x..y"),  # path separators and shell characters removed
        ("日本", ""),
    ],
)
def test_aiodownload_util_clean_filename(name: str, clean: str) -> None:
    """aiodownload's ``util`` helpers, used by its users' get_file_path overrides, reached
    as aiodownload's were under ``import shardload as aiodownload``."""
    assert shardload.util.clean_filename(name) == clean


def test_aiodownload_util_paths(tmp_path: Path) -> None:
    from shardload import util

    assert util.default_url_transform("https://httpbin.org/links/0") == "httpbin.org/links/0"
    for url in ("http://h/../../etc/passwd", "http://h/a/%2e%2e/%2E%2E/b"):
        joined = os.path.normpath(os.path.join(tmp_path, util.default_url_transform(url)))
        assert joined.startswith(f"{tmp_path}{os.sep}h{os.sep}")
    with pytest.raises(ValueError, match="scheme 'ftp'"):
        util.default_url_transform("ftp://h/x")
    target = tmp_path / "a" / "b" / "file"
    util.make_dirs(str(target))
    util.make_dirs(str(target))  # already there: fine
    assert target.parent.is_dir() and not target.exists()
