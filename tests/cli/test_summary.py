"""Summary: counting, labels, formatting and exit codes (tables)."""

from __future__ import annotations

from typing import Any

import pytest

from shardload.bundle import Bundle
from shardload.cli.summary import (
    RunStats,
    error_label,
    exit_code,
    format_bytes,
    format_duration,
    format_summary,
)
from shardload.stats import RunStats as RunStatsLib


@pytest.mark.parametrize(
    ("kind", "status", "label"),
    [
        ("http", 404, "http 404"),
        ("http", None, "http"),
        ("timeout", None, "timeout"),
        ("connect", 0, "connect"),
        (None, None, "unknown"),
    ],
)
def test_error_label(kind: str | None, status: int | None, label: str) -> None:
    assert error_label(kind, status) == label


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 KB"), (1_500_000, "1.5 MB"), (3e12, "3.0 TB")],
)
def test_format_bytes(n: float, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("s", "text"), [(0, "0:00:00"), (59.6, "0:01:00"), (3725, "1:02:05"), (-3, "0:00:00")]
)
def test_format_duration(s: float, text: str) -> None:
    assert format_duration(s) == text


def _stats(*records: dict[str, Any], skipped_done: int = 0, skipped_permanent: int = 0) -> RunStats:
    stats = RunStats(skipped_done=skipped_done, skipped_permanent=skipped_permanent)
    for r in records:
        stats.add(r)
    return stats


W = {"url": "http://a:1/x", "state": "written", "bytes": 1000}
C = {"url": "http://a:1/y", "state": "cached", "bytes": 50}
F404 = {"url": "http://b:2/z", "state": "failed", "error_kind": "http", "status": 404}
F503 = {"url": "http://c:3/z", "state": "failed", "error_kind": "http", "status": 503}
FBAD = {"url": "{oops", "state": "failed", "error_kind": "bad_input", "status": None}


@pytest.mark.parametrize(
    ("stats", "interrupted", "code"),
    [
        (_stats(), False, 0),
        (_stats(W, C), False, 0),
        (_stats(W, F404), False, 1),
        (_stats(FBAD), False, 1),
        (_stats(W, skipped_done=5), False, 0),
        (_stats(W, skipped_permanent=1), False, 1),
        (_stats(W), True, 130),
        (_stats(F503), True, 130),
    ],
)
def test_exit_code(stats: RunStats, interrupted: bool, code: int) -> None:
    assert exit_code(stats, interrupted=interrupted) == code


def test_stats_counts() -> None:
    stats = _stats(W, W, C, F404, F503, F503, FBAD)
    assert stats.finished == 7
    assert stats.ok == 3
    assert stats.failed == 4
    assert stats.bytes == 2000  # cached files were not downloaded
    assert stats.by_error == {"http 404": 1, "http 503": 2, "bad_input": 1}
    assert stats.transient == 2


def test_format_summary_contents() -> None:
    stats = _stats(W, W, C, F404, F503, F503, FBAD, skipped_done=3, skipped_permanent=1)
    text = format_summary(stats, 2.0, output="/o", manifest="/o/m.jsonl")
    lines = text.splitlines()
    assert lines[0] == "shardload: summary"
    assert "finished   7 (written 2, cached 1, failed 4)" in text
    assert "skipped    3 already done, 1 permanent failures not retried" in text
    assert "2.0 KB in 0:00:02 (3.5 files/s, 1.0 KB/s)" in text
    errors = lines.index("  errors")
    assert lines[errors + 1].split() == ["2", "http", "503"]  # most frequent first
    assert "  files      /o" in lines
    assert "  manifest   /o/m.jsonl" in lines
    assert lines[-1] == "  rerun with --retry-transient to retry the 2 transient failures"


def test_format_summary_interrupted() -> None:
    records = [
        {"url": f"http://h{i}/x", "state": "failed", "error_kind": "connect"} for i in range(15)
    ]
    text = format_summary(_stats(*records), 0.0, interrupted=True)
    assert text.startswith("shardload: interrupted, partial summary")
    assert "--resume" in text.splitlines()[-1]


@pytest.mark.parametrize("interrupted", [False, True])
def test_format_summary_after_the_manifest_failed(interrupted: bool) -> None:
    """The run stopped: the summary says so, how many finished URLs the manifest lacks, and
    to resume (not to retry the transient failures, a hint for a complete run)."""
    records = [
        {"url": f"http://h/{i}", "state": "failed", "error_kind": "connect"} for i in range(3)
    ]
    text = format_summary(_stats(*records), 1.0, interrupted=interrupted, unrecorded=2)
    lines = text.splitlines()
    assert lines[0] == "shardload: stopped (cannot write the manifest), partial summary"
    assert "  unrecorded 2 finished, not in the manifest" in lines
    assert "--resume" in lines[-1] and "--retry-transient" not in text
    nothing_lost = format_summary(_stats(*records), 1.0, unrecorded=0)
    assert "unrecorded" not in nothing_lost and "--resume" in nothing_lost


def test_format_summary_lists_troubled_hosts_from_run_stats() -> None:
    run = RunStatsLib()
    for i in range(3):
        run.add(Bundle("http://c:3/x", host="c:3", state="failed", error_kind="http", status=503,
                       attempts=2))  # fmt: skip
    run.add(Bundle("http://d:4/x", host="d:4", state="failed", error_kind="breaker_open"))
    run.add(Bundle("http://e:5/x", host="e:5", state="written", attempts=1))
    text = format_summary(_stats(), 1.0, hosts=run.worst_hosts(), hosts_file="/o/m.hosts.json")
    lines = text.splitlines()
    at = lines.index("  hosts with the most failures (failed/requests, errors)")
    assert lines[at + 1].split()[:2] == ["3/6", "c:3"] and "http 3" in lines[at + 1]
    assert "d:4" in lines[at + 2] and "breaker opened" in lines[at + 2]
    assert "e:5" not in text
    assert "  per host   /o/m.hosts.json" in lines


def test_format_summary_all_ok_has_no_error_sections() -> None:
    text = format_summary(_stats(W), 1.0)
    assert "errors" not in text and "hosts" not in text and "skipped" not in text
    only_permanent = format_summary(_stats(F404), 1.0)
    assert "rerun" not in only_permanent


def test_urls_without_a_host_are_not_listed_as_a_host() -> None:
    run = RunStatsLib()
    run.add(Bundle("nope", state="failed", error_kind="invalid_url"))
    run.add(Bundle("http://c:3/x", host="c:3", state="failed", error_kind="http", status=500))
    text = format_summary(_stats(), 1.0, hosts=run.worst_hosts())
    hosts = text.split("hosts with the most failures", 1)[1].splitlines()[1:]
    assert hosts[0].split()[1] == "c:3"
    assert not any(line.split()[1:2] == ["-"] for line in hosts if line.startswith("    "))


def test_no_side_car_is_written_into_dev_or_beside_a_pipe(tmp_path) -> None:
    """`--manifest /dev/stdout > f`: stat follows /dev/stdout to f, a regular file, and the
    side-car went to /dev/stdout.hosts.json (created in /dev when run as root)."""
    import os

    from shardload.cli.host_stats import hosts_path, write_host_stats

    stats = RunStatsLib()
    stats.add(Bundle("http://a/x", state="written"))
    try:
        assert write_host_stats("/dev/stdout", stats) is None
    finally:
        if os.path.exists(hosts_path("/dev/stdout")):
            os.remove(hosts_path("/dev/stdout"))
    fifo = tmp_path / "m.jsonl"
    os.mkfifo(fifo)
    assert write_host_stats(str(fifo), stats) is None
    regular = tmp_path / "r.jsonl"
    regular.write_text("")
    assert write_host_stats(str(regular), stats) == str(tmp_path / "r.hosts.json")


def test_a_side_car_is_written_beside_a_manifest_on_tmpfs() -> None:
    """/dev/shm is a folder like any other: only the standard streams and /proc are not."""
    import os
    import tempfile

    from shardload.cli.host_stats import write_host_stats

    stats = RunStatsLib()
    stats.add(Bundle("http://a/x", state="written"))
    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        manifest = os.path.join(folder, "manifest.jsonl")
        open(manifest, "w").close()
        assert write_host_stats(manifest, stats) == os.path.join(folder, "manifest.hosts.json")
