"""main() wiring in-process with a fake library: records, skips, crashes and interrupts."""

from __future__ import annotations

import copy
import io
import json
import signal
import subprocess
import sys
import time
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import Any

import pytest

import shardload
from shardload.bundle import Bundle
from shardload.cli.main import main
from shardload.cli.manifest import ManifestWriter
from shardload.intake import Handed

from .conftest import read_manifest


def _finish(item: str | Bundle) -> Bundle:
    bundle = item if isinstance(item, Bundle) else Bundle(item)
    bundle.attempts = 1
    if "/ok" in bundle.url:
        bundle.state, bundle.status, bundle.bytes = "written", 200, 3
        bundle.file_path = bundle.file_path or "/somewhere"
    else:
        code = int(bundle.url.rsplit("/", 1)[1])
        bundle.state, bundle.status, bundle.error_kind = "failed", code, "http"
        bundle.error_message = f"HTTP {code}"
    return bundle


class FakeRun:
    """What the CLI uses of the ``Run`` that ``each`` returns."""

    def __init__(self, bundles: Generator[Bundle, None, None]) -> None:
        self._bundles = bundles
        self.unread: list[Bundle] = []

    def poll(self, timeout: float) -> Bundle | None:
        return next(self._bundles)

    def close(self) -> None:
        self._bundles.close()


class FakeLibrary:
    """Stands in for ``shardload.each``; remembers what it was asked to download."""

    def __init__(self, interrupt_after: int | None = None, crash_after: int | None = None):
        self.seen: list[str] = []
        self.received: list[Any] = []  # each item as it arrived, before the fake finishes it
        self.handed: list[bool] = []  # whether it came as Handed (the library may park it)
        self.interrupt_after = interrupt_after
        self.crash_after = crash_after
        self.closed = False

    def each(self, items: Iterable[Any], **options: Any) -> FakeRun:
        return FakeRun(self._each(items, **options))

    def _each(self, items: Iterable[Any], **options: Any) -> Generator[Bundle, None, None]:
        assert options["processes"] >= 1
        self.options = options
        try:
            for n, given in enumerate(items):
                if n == self.interrupt_after:
                    raise KeyboardInterrupt
                if n == self.crash_after:
                    raise RuntimeError("worker pool exploded")
                self.handed.append(isinstance(given, Handed))
                item = given.bundle if isinstance(given, Handed) else given
                self.received.append(copy.copy(item))
                bundle = _finish(item)
                self.seen.append(bundle.url)
                yield bundle
        finally:
            self.closed = True


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeLibrary:
    lib = FakeLibrary()
    monkeypatch.setattr(shardload, "each", lib.each)
    return lib


def _run(tmp_path: Path, lines: list[str], *extra: str) -> int:
    data = ("\n".join(lines) + "\n").encode()
    argv = ["-", "-o", str(tmp_path / "out"), "-p", "1", "--progress", "none", *extra]
    return main(argv, stdin=io.BytesIO(data))


def test_records_every_line_and_exit_codes(fake: FakeLibrary, tmp_path: Path) -> None:
    assert _run(tmp_path, ["http://h/ok/1", "http://h/ok/2"]) == 0
    assert _run(tmp_path, ["http://h/ok/1", "http://h/x/404", "{bad"]) == 1
    records = read_manifest(tmp_path / "out" / "manifest.jsonl")  # truncated: no --resume
    assert [r["state"] for r in records] == ["written", "failed", "failed"]
    assert records[2]["error_kind"] == "bad_input"
    assert "{bad" not in fake.seen


def test_resume_onto_a_file_that_is_not_a_manifest_is_a_usage_error(
    fake: FakeLibrary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = tmp_path / "list.txt"
    urls.write_text("http://h/ok/1\nhttp://h/ok/2\n")
    assert _run(tmp_path, ["http://h/ok/3"], "--resume", "--manifest", str(urls)) == 2
    assert "list.txt is not a manifest" in capsys.readouterr().err
    assert urls.read_text() == "http://h/ok/1\nhttp://h/ok/2\n"
    assert not fake.seen
    assert not (tmp_path / "list.txt.hosts.json").exists()
    assert not list((tmp_path / "out").iterdir())


def test_a_ctrl_c_while_ray_starts_waits_for_ray_to_be_up(
    fake: FakeLibrary,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Interrupted inside ray.init, Ray's helper processes were left running: the CLI lets
    Ray come up whole, then stops (exit 130) before anything is downloaded."""
    import os

    import shardload.executors.ray as ray_backend

    started: list[str | None] = []

    def ensure_ray(address: str | None, *, quiet: bool = False) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while Ray starts
        started.append(address)  # still reached: the interrupt waited

    monkeypatch.setattr(ray_backend, "ensure_ray", ensure_ray)
    code = _run(tmp_path, ["http://h/ok/1"], "--backend", "ray", "--ray-address", "auto")
    assert code == 130 and started == ["auto"]
    assert not fake.seen
    assert "Traceback" not in capsys.readouterr().err


def test_jsonl_items_reach_the_library_as_bundles(fake: FakeLibrary, tmp_path: Path) -> None:
    lines = [
        json.dumps({"url": "http://h/ok/j", "path": "a/b.bin", "info": {"k": [1]}}),
        json.dumps({"url": "http://h/ok/i", "info": "only info"}),
        json.dumps({"url": "http://h/ok/p", "path": "c.bin"}),
        "http://h/ok/plain",
    ]
    assert _run(tmp_path, lines) == 0
    # What the library was handed: a Bundle carrying the line's path and info whenever the
    # line has either (a plain URL line may reach it as a string or a Bundle).
    assert len(fake.received) == 4
    first, second, third, plain = fake.received
    assert all(isinstance(item, Bundle) for item in (first, second, third))
    assert fake.handed[:3] == [True, True, True]  # the CLI holds none of them: may be parked
    assert (first.url, first.file_path, first.info) == ("http://h/ok/j", "a/b.bin", {"k": [1]})
    assert (second.url, second.file_path, second.info) == ("http://h/ok/i", None, "only info")
    assert (third.url, third.file_path, third.info) == ("http://h/ok/p", "c.bin", None)
    assert (plain.url if isinstance(plain, Bundle) else plain) == "http://h/ok/plain"
    records = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert [r["url"] for r in records] == [
        "http://h/ok/j",
        "http://h/ok/i",
        "http://h/ok/p",
        "http://h/ok/plain",
    ]
    assert records[0]["path"] == "a/b.bin"  # the fake keeps the preset path
    assert records[0]["info"] == {"k": [1]}
    assert records[1]["info"] == "only info"


def test_resume_and_retry_transient_choose_what_runs(fake: FakeLibrary, tmp_path: Path) -> None:
    lines = ["http://h/ok/1", "http://h/x/404", "http://h/x/503", "{bad"]
    assert _run(tmp_path, lines) == 1
    fake.seen.clear()
    assert _run(tmp_path, lines, "--retry-transient", "-q") == 1
    assert fake.seen == ["http://h/x/503"]
    fake.seen.clear()
    assert _run(tmp_path, lines, "--resume", "-q") == 1
    assert fake.seen == ["http://h/x/404", "http://h/x/503"]
    records = read_manifest(tmp_path / "out" / "manifest.jsonl")
    assert len(records) == 4 + 1 + 3  # appended, history kept (the bad line is recorded again)


def test_interrupt_flushes_and_returns_130(
    fake: FakeLibrary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.interrupt_after = 2
    lines = [f"http://h/ok/{i}" for i in range(5)]
    data = ("\n".join(lines) + "\n").encode()
    code = main(["-", "-o", str(tmp_path / "out"), "-p", "1"], stdin=io.BytesIO(data))
    assert code == 130
    assert fake.closed
    assert len(read_manifest(tmp_path / "out" / "manifest.jsonl")) == 2
    assert "interrupted, partial summary" in capsys.readouterr().err


def test_library_crash_is_reported_and_the_manifest_kept(
    fake: FakeLibrary, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake.crash_after = 3
    assert _run(tmp_path, [f"http://h/ok/{i}" for i in range(5)]) == 1
    assert len(read_manifest(tmp_path / "out" / "manifest.jsonl")) == 3
    err = capsys.readouterr().err
    assert "worker pool exploded" in err and "shardload: summary" in err


def test_a_manifest_that_cannot_be_written_is_one_line_not_a_traceback(
    fake: FakeLibrary,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def disk_full(self: object, record: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ManifestWriter, "add", disk_full)
    assert _run(tmp_path, [f"http://h/ok/{i}" for i in range(3)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "cannot write the manifest: [Errno 28] No space left on device" in err
    assert len(fake.seen) == 1  # the run stops at the first record it cannot keep


def test_ctrl_c_while_a_long_manifest_is_read_for_resume_exits_130_without_a_traceback(
    tmp_path, monkeypatch, capsys
):
    import shardload.cli
    import shardload.cli.main

    def interrupted(path):
        raise KeyboardInterrupt

    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/ok\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("")
    monkeypatch.setattr(shardload.cli.main, "load_priors", interrupted)
    argv = [str(urls), "-o", str(tmp_path / "out"), "--manifest", str(manifest), "--resume"]
    monkeypatch.setattr("sys.argv", ["shardload", *argv])

    assert shardload.cli.run() == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "Traceback" not in err


def test_ctrl_c_while_the_command_imports_exits_130_without_a_traceback(monkeypatch, capsys):
    import importlib.abc
    import sys

    import shardload.cli

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "shardload.cli.main":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "shardload.cli.main")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    monkeypatch.delattr(shardload.cli, "main", raising=False)
    assert shardload.cli.run() == 130
    err = capsys.readouterr().err
    assert err.strip() == "shardload: interrupted"


def test_no_more_workers_than_a_small_input_file_has_hosts(
    fake: FakeLibrary, tmp_path: Path
) -> None:
    src = tmp_path / "urls.txt"
    src.write_text("http://a/ok/1\nhttp://a/ok/2\nhttp://b:81/ok/3\nnot a url\n")
    out = str(tmp_path / "out")
    main([str(src), "-o", out, "-p", "8", "--progress", "none"])
    assert fake.options["processes"] == 2
    main(["-", "-o", out, "-p", "8", "--progress", "none"], stdin=io.BytesIO(src.read_bytes()))
    assert fake.options["processes"] == 8  # a stream cannot be read ahead
    main([str(src), "-o", out, "-p", "8", "--progress", "none", "--split-host", "a=4"])
    assert fake.options["processes"] == 8  # a split host's shards are the library's to count


def test_sigterm_while_the_manifest_loads_exits_130(tmp_path):
    """A batch scheduler's SIGTERM during a long ``--resume`` read ends as exit 130 too."""
    manifest = tmp_path / "m.jsonl"
    record = '{"url":"http://127.0.0.1:9/%d","state":"written"}\n'
    with open(manifest, "w") as f:
        f.writelines(record % i for i in range(600_000))
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/ok\n")
    argv = [str(urls), "-o", str(tmp_path / "out"), "--manifest", str(manifest), "--resume"]
    code = "import sys, shardload.cli; sys.exit(shardload.cli.run())"
    process = subprocess.Popen(
        [sys.executable, "-c", code, *argv], stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.8)  # imports done, the manifest is being read
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.strip().endswith("shardload: interrupted") and "Traceback" not in err
