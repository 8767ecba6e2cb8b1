"""Progress: pure line formatting and ETA, mode choice, and the line reporter's timing."""

from __future__ import annotations

import io

import pytest

from shardload.cli.progress import (
    BarProgress,
    Counts,
    LineProgress,
    NullProgress,
    RecentRate,
    choose_mode,
    format_eta,
    format_line,
    make_progress,
)


@pytest.mark.parametrize(
    ("counts", "rate", "eta"),
    [
        (Counts(done=10, total=None), 1.0, "?"),
        (Counts(done=0, total=100), 0.0, "?"),
        (Counts(done=10, total=100), 1.0, "0:01:30"),
        (Counts(done=5, failed=5, earlier=10, total=100), 1.0, "0:01:20"),
        (Counts(done=5, failed=3, skipped=2, total=100), 1.0, "0:01:30"),
        (Counts(done=100, total=100), 0.0, "0:00:00"),
        (Counts(done=120, total=100), 10.0, "0:00:00"),
    ],
)
def test_format_eta(counts: Counts, rate: float, eta: str) -> None:
    assert format_eta(counts, rate) == eta


def test_format_line() -> None:
    counts = Counts(done=90, failed=10, skipped=0, bytes=2_000_000, total=400)
    line = format_line(counts, 2.0, 50, 1_000_000)
    assert line == (
        "shardload: 100/400 (25%) | done 90 | failed 10 | 50.0 files/s | 1.0 MB/s"
        " | elapsed 0:00:02 | ETA 0:00:06"
    )
    unknown = format_line(Counts(done=1, skipped=2, earlier=4), 0.0, 0.0, 0.0)
    assert unknown.startswith(
        "shardload: 7/? | done 1 | failed 0 | skipped 2 | earlier runs 4 | 0.0 files/s"
    )
    assert unknown.endswith("ETA ?")


@pytest.mark.parametrize(
    ("samples", "rate"),
    [
        ([(1.0, 100)], 100.0),  # since the start, under a window
        ([(5.0, 5000), (10.0, 5000)], 500.0),  # a window (10 s) back: the start
        ([(5.0, 5000), (10.0, 5000), (15.0, 5050)], 5.0),  # fast, then stalled, then slow
        ([(5.0, 5000), (10.0, 5000), (21.0, 5000)], 0.0),
        ([(0.0, 0)], 0.0),
    ],
)
def test_the_recent_rate_follows_a_slowdown(samples: list[tuple[float, int]], rate: float) -> None:
    """The bar's tqdm rate stayed at a fast start's 1,900 files/s (and its ETA at 0) while
    the slow hosts left went at 70."""
    recent = RecentRate(start=0.0, window=10.0)
    assert [recent.at(now, n) for now, n in samples][-1] == pytest.approx(rate)


@pytest.mark.parametrize(
    ("mode", "tty", "quiet", "tqdm", "chosen"),
    [
        ("auto", True, False, True, "bar"),
        ("auto", False, False, True, "lines"),
        ("auto", True, False, False, "lines"),
        ("bar", False, False, True, "bar"),
        ("bar", True, False, False, "lines"),
        ("lines", True, False, True, "lines"),
        ("none", True, False, True, "none"),
        ("auto", True, True, True, "none"),
        ("lines", False, True, True, "none"),
    ],
)
def test_choose_mode(mode: str, tty: bool, quiet: bool, tqdm: bool, chosen: str) -> None:
    assert choose_mode(mode, is_tty=tty, quiet=quiet, have_tqdm=tqdm) == chosen


@pytest.mark.parametrize(
    ("mode", "size", "chosen"),
    [("auto", (0, 24), "lines"), ("bar", (0, 24), "lines"), ("auto", (19, 24), "lines"),
     ("auto", (20, 24), "bar"), ("bar", (120, 40), "bar"), ("auto", None, "bar"),
     ("auto", (130, 0), "lines"), ("auto", (130, 1), "bar")],
)  # fmt: skip
def test_a_terminal_too_small_for_a_bar_gets_lines(
    mode: str, size: tuple[int, int] | None, chosen: str
) -> None:
    """A pty that says 0 columns (``script -qc``), or 0 rows, showed nothing at all, not
    even the end."""
    assert choose_mode(mode, is_tty=True, quiet=False, have_tqdm=True, size=size) == chosen


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_prints_every_interval_and_at_close() -> None:
    out = io.StringIO()
    clock = Clock()
    p = LineProgress(out, interval=5.0, clock=clock)
    p.set_total(3)
    p.finished("written", 100)
    p.finished("cached", 100)
    p.tick()
    assert out.getvalue() == ""
    clock.now += 5.0
    p.tick()
    p.tick()
    assert out.getvalue().count("\n") == 1
    assert "2/3 (67%) | done 2 | failed 0" in out.getvalue()
    p.finished("failed", 0)
    p.close()
    last = out.getvalue().splitlines()[-1]
    assert "3/3 (100%) | done 2 | failed 1" in last
    assert p.counts.bytes == 100  # cached bytes are not downloaded bytes


def test_bar_progress_writes_to_its_stream() -> None:
    out = io.StringIO()
    p = BarProgress(out)
    p.finished("written", 10)
    p.finished("skipped", 0)  # robots.txt said no
    p.earlier()
    p.set_total(5)
    p.tick()
    p.close()
    assert "3/5" in out.getvalue()
    assert "skipped=1" in out.getvalue() and "earlier=1" in out.getvalue()
    assert p.counts.done == 1


def test_the_bars_rate_and_eta_are_this_runs_own() -> None:
    """A resumed run's items left alone are no throughput (the bar said 18,585 files/s and
    ETA 00:00 for a run going at 71), and the rate follows a slowdown."""
    out = io.StringIO()
    clock = Clock()
    p = BarProgress(out, clock=clock)
    p.set_total(10_100)
    for _ in range(10_000):
        p.earlier()
    clock.now += 10.0
    for _ in range(50):
        p.finished("written", 0)
    p.tick()
    last = out.getvalue().split("\r")[-1]
    assert "5.0 file/s" in last and "ETA 0:00:10" in last, last
    p.close()


def test_a_discarded_progress_leaves_nothing_behind() -> None:
    """A usage error found as the run starts is the one line the user sees."""
    lines = io.StringIO()
    LineProgress(lines, interval=5.0, clock=Clock()).discard()
    assert lines.getvalue() == ""
    bar = io.StringIO()
    BarProgress(bar).discard()
    assert bar.getvalue().split("\r")[-1].strip() == ""  # the bar is wiped


def test_make_progress_kinds() -> None:
    assert isinstance(make_progress("none", io.StringIO()), NullProgress)
    assert isinstance(make_progress("lines", io.StringIO()), LineProgress)


@pytest.mark.parametrize(("received", "shown"), [(5_000_000, "1.0 MB/s"), (None, "20 B/s")])
def test_the_byte_rate_is_of_bytes_received_where_the_run_tells(
    received: int | None, shown: str
) -> None:
    """Bytes as they arrive (``Run.received``), a large file still downloading included;
    without them (Ray), the bytes of the files written."""
    out = io.StringIO()
    clock = Clock()
    p = LineProgress(out, interval=5.0, clock=clock)
    p.counts.received = 0 if received is not None else None
    clock.now += 5.0
    p.finished("written", 100)
    p.counts.received = received
    p.tick()
    assert f"| {shown} |" in out.getvalue()
