"""Live progress on stderr: a tqdm bar on a terminal, periodic plain lines otherwise.

Reporters are not thread-safe; the CLI calls them under one lock (from the main loop and from
its ticker thread). ``format_line`` and ``format_eta`` are pure.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

from shardload.cli.summary import format_bytes, format_duration

MODES = ("auto", "bar", "lines", "none")


@dataclass
class Counts:
    """Progress so far. ``total`` is the number of input items when known. ``skipped`` are
    this run's skipped URLs (robots.txt), as in the summary; ``earlier`` are items a resumed
    run leaves alone (done, or failed for good, in an earlier run). ``bytes`` are those of
    the files written; ``received``, when the run can tell, all bytes received so far,
    downloads in progress included (``Run.received``)."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    earlier: int = 0
    bytes: int = 0
    total: int | None = None
    received: int | None = None

    @property
    def processed(self) -> int:
        return self.done + self.failed + self.skipped

    @property
    def seen(self) -> int:
        return self.processed + self.earlier


def format_eta(counts: Counts, rate: float) -> str:
    """Remaining time at ``rate`` (files/s of this run, lately); ``?`` when it cannot be
    known."""
    if counts.total is None:
        return "?"
    remaining = max(0, counts.total - counts.seen)
    if remaining == 0:
        return format_duration(0)
    return format_duration(remaining / rate) if rate > 0 else "?"


def format_line(counts: Counts, elapsed: float, rate: float, byte_rate: float) -> str:
    """One plain progress line, for logs and pipes; ``rate`` (files/s) and ``byte_rate``
    (bytes/s): this run's, lately."""
    total = "?" if counts.total is None else f"{counts.total:,}"
    head = f"{counts.seen:,}/{total}"
    if counts.total:
        head += f" ({100 * counts.seen / counts.total:.0f}%)"
    parts = [f"shardload: {head}", f"done {counts.done:,}", f"failed {counts.failed:,}"]
    if counts.skipped:
        parts.append(f"skipped {counts.skipped:,}")
    if counts.earlier:
        parts.append(f"earlier runs {counts.earlier:,}")
    parts.append(f"{rate:,.1f} files/s")
    parts.append(f"{format_bytes(byte_rate)}/s")
    parts.append(f"elapsed {format_duration(elapsed)}")
    parts.append(f"ETA {format_eta(counts, rate)}")
    return " | ".join(parts)


class RecentRate:
    """Files (or bytes) per second over about the last ``window`` seconds (since the start
    before that), from samples of a count, as curl's current speed: a run that slows down
    (its fast hosts done, its slow ones left) shows the rate it has now, and an ETA that
    follows it."""

    def __init__(self, start: float, window: float = 5.0) -> None:
        self._window = window
        self._samples: deque[tuple[float, int]] = deque([(start, 0)])

    def at(self, now: float, processed: int) -> float:
        samples = self._samples
        samples.append((now, processed))
        # The oldest sample kept is the last one at least a window old.
        while len(samples) > 2 and now - samples[1][0] >= self._window:
            samples.popleft()
        then, before = samples[0]
        return (processed - before) / (now - then) if now > then else 0.0


class Progress(Protocol):
    counts: Counts

    def finished(self, state: str, nbytes: int) -> None: ...
    def earlier(self) -> None: ...
    def set_total(self, total: int) -> None: ...
    def tick(self) -> None: ...
    def close(self) -> None: ...
    def discard(self) -> None: ...


class _Base:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.counts = Counts()
        self._clock = clock
        self._start = clock()
        self._rate = RecentRate(self._start)
        self._byte_rate = RecentRate(self._start)

    def elapsed(self) -> float:
        return self._clock() - self._start

    def rate(self) -> float:
        """This run's files/s lately (resumed items left alone are not counted)."""
        return self._rate.at(self._clock(), self.counts.processed)

    def byte_rate(self) -> float:
        """Bytes/s lately: as received, where the run tells (a large file shows its speed
        while it downloads), else as files are written."""
        counts = self.counts
        done = counts.received if counts.received is not None else counts.bytes
        return self._byte_rate.at(self._clock(), done)

    def finished(self, state: str, nbytes: int) -> None:
        if state == "failed":
            self.counts.failed += 1
        elif state == "skipped":
            self.counts.skipped += 1
        else:
            self.counts.done += 1
            self.counts.bytes += nbytes if state == "written" else 0
        self._advance()

    def earlier(self) -> None:
        self.counts.earlier += 1
        self._advance()

    def set_total(self, total: int) -> None:
        self.counts.total = total

    def _advance(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def close(self) -> None:
        pass

    def discard(self) -> None:
        """End without a last word: the run ran nothing (a usage error says why)."""


class NullProgress(_Base):
    """Counts, shows nothing (``--quiet``, ``--progress none``)."""


class LineProgress(_Base):
    """A plain line every ``interval`` seconds (from ``tick``) and one at the end."""

    def __init__(
        self, stream: TextIO, interval: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(clock)
        self._stream = stream
        self._interval = interval
        self._last = self._start

    def tick(self) -> None:
        now = self._clock()
        if now - self._last >= self._interval:
            self._last = now
            self._emit()

    def _emit(self) -> None:
        line = format_line(self.counts, self.elapsed(), self.rate(), self.byte_rate())
        print(line, file=self._stream, flush=True)

    def close(self) -> None:
        self._emit()


# The rate and ETA are this reporter's own (``tick``): tqdm's stop moving once a fast start
# has made it redraw only every few thousand files, and it counts what a resumed run left
# alone as throughput.
_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
_COUNTER = "{desc}: {n_fmt} files [{elapsed}{postfix}]"


class BarProgress(_Base):
    """A tqdm bar: files as the unit; rate, ETA, MB/s and failures in the postfix."""

    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        tqdm = importlib.import_module("tqdm").tqdm  # optional: imported only for a bar
        self._bar: Any = tqdm(
            total=None,
            unit="file",
            file=stream,
            dynamic_ncols=True,
            mininterval=0.2,
            desc="shardload",
            bar_format=_COUNTER,
        )

    def _advance(self) -> None:
        self._bar.update(1)

    def set_total(self, total: int) -> None:
        super().set_total(total)
        self._bar.total = total
        self._bar.bar_format = _BAR
        self._bar.refresh()

    def tick(self) -> None:
        rate = self.rate()
        text = f"{rate:,.1f} file/s, {format_bytes(self.byte_rate())}/s"
        if self.counts.total is not None:
            text += f", ETA {format_eta(self.counts, rate)}"
        text += f", failed={self.counts.failed:,}"
        if self.counts.skipped:
            text += f" skipped={self.counts.skipped:,}"
        if self.counts.earlier:
            text += f" earlier={self.counts.earlier:,}"
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.refresh()

    def close(self) -> None:
        self.tick()
        self._bar.close()

    def discard(self) -> None:
        self._bar.leave = False  # the bar is wiped from the terminal
        self._bar.close()


def choose_mode(
    mode: str,
    *,
    is_tty: bool,
    quiet: bool,
    have_tqdm: bool,
    size: tuple[int, int] | None = None,
) -> str:
    """The reporter to use: ``bar``, ``lines`` or ``none``. Pure. ``size``: the terminal's
    (columns, rows) where known; one that says 0 of either (some ptys) would show no bar."""
    if quiet or mode == "none":
        return "none"
    if mode == "auto":
        mode = "bar" if is_tty else "lines"
    too_small = size is not None and (size[0] < _BAR_MIN_COLUMNS or size[1] < 1)
    if mode == "bar" and (not have_tqdm or too_small):
        return "lines"
    return mode


_BAR_MIN_COLUMNS = 20


def terminal_size(stream: TextIO) -> tuple[int, int] | None:
    """The (columns, rows) of the terminal ``stream`` writes to, or None when it is none."""
    try:
        size = os.get_terminal_size(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return None
    return size.columns, size.lines


def have_tqdm() -> bool:
    return importlib.util.find_spec("tqdm") is not None


def make_progress(mode: str, stream: TextIO, *, interval: float = 5.0) -> Progress:
    """A reporter for a mode chosen by ``choose_mode``."""
    if mode == "bar":
        return BarProgress(stream)
    if mode == "lines":
        return LineProgress(stream, interval)
    return NullProgress()
