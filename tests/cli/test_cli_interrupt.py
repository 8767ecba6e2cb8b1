"""Interrupts: SIGINT/SIGTERM/SIGHUP stop cleanly with 130; --resume finishes without repeats."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shardload.testing.server import LocalServer

from .conftest import cli_command, cli_env, latest, path_counts, read_manifest

# SIGHUP too: the terminal or the ssh session went away (it died by the signal, with no
# summary and up to 0.5 s of records lost).
STOPS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]


def _slow_urls(srv: LocalServer, tag: str, count: int, ms: int) -> list[str]:
    hosts = srv.base_urls[:2]
    return [f"{hosts[i % 2]}/slow/{ms}/{tag}-{i}" for i in range(count)]


def _path(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def _interrupt_when_recorded(
    src: Path, out: Path, at_least: int, sig: signal.Signals
) -> subprocess.CompletedProcess[bytes]:
    """Start the command in its own process group; signal the group (like Ctrl-C in a
    terminal) once the manifest holds ``at_least`` records."""
    manifest = out / "manifest.jsonl"

    def recorded() -> bool:
        return manifest.exists() and manifest.read_bytes().count(b"\n") >= at_least

    return _interrupt_when(src, out, recorded, sig, "--progress", "lines")


def _interrupt_when(
    src: Path,
    out: Path,
    ready: Callable[[], bool],
    sig: signal.Signals,
    *extra: str,
    nohup: bool = False,
) -> subprocess.CompletedProcess[bytes]:
    """Run the command (2 workers, 2 per host) in its own process group and signal the
    group once ``ready()``; ``nohup``: started under nohup(1), SIGHUP ignored."""
    args: list[str | Path] = [src, "-o", out, "-p", "2", "--per-host", "2", *extra]
    child = subprocess.Popen(
        ["nohup", *cli_command(*args)] if nohup else cli_command(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and child.poll() is None and not ready():
            time.sleep(0.01)
        assert child.poll() is None, "the run ended before it could be interrupted"
        assert ready(), "the run never reached the point to interrupt it at"
        os.killpg(child.pid, sig)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    return subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)


def _interrupted_run(
    srv: LocalServer, tmp_path: Path, sig: signal.Signals
) -> tuple[list[str], Path, Path, set[str]]:
    """Run 200 slow URLs, send ``sig`` once 10 records are flushed, and check the clean stop
    every interrupt owes: exit 130, a partial summary with the rerun hint, a manifest of whole,
    unique, written records whose files exist, and no temporary file left.

    200 URLs at 50 ms each, 2 hosts x 2 in flight: at least 2.5 s of work, interrupted as soon as
    the first flushed records appear (about 0.5 s in). Returns the URLs, the input file, the
    output folder and the URLs recorded as written."""
    urls = _slow_urls(srv, f"{sig.name}-{tmp_path.name}", 200, 50)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"

    result = _interrupt_when_recorded(src, out, 10, sig)
    err = result.stderr.decode()
    assert result.returncode == 130, err
    assert "interrupted, partial summary" in err
    assert "rerun with --resume" in err
    assert "Traceback" not in err
    records = read_manifest(out / "manifest.jsonl")  # every line is a whole record
    done = {r["url"] for r in records if r["state"] == "written"}
    assert len(records) == len({r["url"] for r in records})  # nothing recorded twice
    assert all(r["state"] == "written" for r in records)  # a stop is not a failure
    assert 10 <= len(done) < len(urls)
    assert done <= set(urls)
    for record in records:
        assert Path(record["path"]).is_file()
    # no temporary files are left, nor their folder (workers killed by a group's SIGTERM
    # remove neither themselves); files finished but not yet recorded may exist (complete)
    assert not [p for p in out.rglob("*.part")]
    assert not (out / ".shardload-tmp").exists()
    on_disk = {p for p in out.rglob("*") if p.is_file() and not p.name.startswith("manifest")}
    assert on_disk >= {Path(r["path"]) for r in records}
    # The side-car counts what the manifest holds, the bundles a stop left unread too.
    side = json.loads((out / "manifest.hosts.json").read_text())
    assert side["total"]["bundles"] == len(records)
    return urls, src, out, done


@pytest.mark.parametrize("sig", STOPS, ids=lambda sig: sig.name)
def test_signal_stops_cleanly(server: LocalServer, tmp_path: Path, sig: signal.Signals) -> None:
    _interrupted_run(server, tmp_path, sig)


@pytest.mark.parametrize("sig", STOPS, ids=lambda sig: sig.name)
def test_a_signal_to_the_group_mid_body_leaves_no_temporary_folder(
    server: LocalServer, tmp_path: Path, sig: signal.Signals
) -> None:
    """Bodies are being written when the group gets the signal: SIGTERM kills the workers
    where they stand (as timeout(1), systemd or Slurm send it), and their coordinator removes
    what they left, the empty temporary folder included."""
    hosts = server.base_urls[:2]
    urls = [f"{hosts[i % 2]}/drip/20?ms=100&n={i}" for i in range(8)]
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"

    def writing() -> bool:
        return bool(list(out.glob(".shardload-tmp/*.part")))

    result = _interrupt_when(src, out, writing, sig, "--progress", "none")
    assert result.returncode == 130, result.stderr.decode()
    # The run's manifest and its per-host side-car (what it counted: maybe nothing) only.
    assert sorted(p.name for p in out.iterdir()) == ["manifest.hosts.json", "manifest.jsonl"]


def test_a_sighup_under_nohup_is_ignored(server: LocalServer, tmp_path: Path) -> None:
    """``nohup shardload ...`` must outlive its terminal: workers and coordinator alike."""
    urls = _slow_urls(server, f"nohup-{tmp_path.name}", 60, 50)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    manifest = out / "manifest.jsonl"

    def recorded() -> bool:
        return manifest.exists() and manifest.read_bytes().count(b"\n") >= 5

    result = _interrupt_when(src, out, recorded, signal.SIGHUP, "--progress", "none", nohup=True)
    assert result.returncode == 0, result.stderr.decode()
    records = read_manifest(manifest)
    assert sorted(r["url"] for r in records) == sorted(urls)
    assert all(r["state"] == "written" for r in records)


def test_resume_after_sigint(server: LocalServer, tmp_path: Path) -> None:
    urls, src, out, done_first = _interrupted_run(server, tmp_path, signal.SIGINT)

    second = subprocess.run(
        cli_command(src, "-o", out, "-p", "2", "--progress", "lines", "--resume"),
        capture_output=True,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert second.returncode == 0, second.stderr.decode()
    assert f"skipped    {len(done_first)} already done" in second.stderr.decode()
    final = latest(read_manifest(out / "manifest.jsonl"))
    assert set(final) == set(urls)  # nothing missing
    assert all(r["state"] == "written" for r in final.values())
    counts = path_counts(server)
    for url in done_first:  # nothing recorded as done was downloaded again
        assert counts[_path(url)] == 1
    assert all(counts[_path(url)] >= 1 for url in urls)


def test_sigint_while_stdin_is_still_open(server: LocalServer, tmp_path: Path) -> None:
    """`tail -f urls | shardload -`: the input never ends; an interrupt still exits cleanly
    (the input thread blocked on the pipe must not abort the interpreter at shutdown)."""
    out = tmp_path / "out"
    child = subprocess.Popen(
        cli_command("-", "-o", out, "-p", "2", "--progress", "none"),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    assert child.stdin is not None and child.stderr is not None
    try:
        urls = [f"{server.base_urls[0]}/bytes/10?name=open-{tmp_path.name}-{i}" for i in range(3)]
        child.stdin.write(("\n".join(urls) + "\n").encode())
        child.stdin.flush()
        manifest = out / "manifest.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if manifest.exists() and manifest.read_bytes().count(b"\n") >= 3:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 130  # stdin is still open here
        assert b"Fatal Python error" not in child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdin.close()
        child.stderr.close()
    assert {r["url"] for r in read_manifest(out / "manifest.jsonl")} == set(urls)


def test_a_plain_rerun_interrupted_before_its_first_record_keeps_the_last_manifest(
    server: LocalServer, tmp_path: Path
) -> None:
    """It emptied the previous run's manifest and left nothing in its place."""
    out = tmp_path / "out"
    quick = tmp_path / "quick.txt"
    quick.write_text("".join(f"{url}\n" for url in _slow_urls(server, "quick", 4, 1)))
    first = subprocess.run(
        cli_command(quick, "-o", out, "-q"),
        env=cli_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert first.returncode == 0, first.stderr.decode()
    before = (out / "manifest.jsonl").read_bytes()
    assert before.count(b"\n") == 4
    slow = tmp_path / "slow.txt"
    slow.write_text("".join(f"{url}\n" for url in _slow_urls(server, "late", 4, 10_000)))
    started = time.monotonic()

    result = _interrupt_when(slow, out, lambda: time.monotonic() - started > 1.0, signal.SIGINT)
    assert result.returncode == 130, result.stderr.decode()
    assert (out / "manifest.jsonl").read_bytes() == before
