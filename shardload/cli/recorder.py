"""What a finished or skipped URL updates in the batch command: the manifest, the run's counts
and the progress display, under one lock shared by the main loop and the progress ticker.

Invariants:
- a record is counted only while the recorder is open: after a stop, the input thread's late
  records change neither the manifest nor the summary;
- only the manifest's errors stop a run (``ManifestFailed``); a progress display whose stderr
  was closed is dropped and the crawl goes on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from shardload import stats as run_stats
from shardload.bundle import Bundle
from shardload.cli.manifest import Action, ManifestWriter
from shardload.cli.progress import NullProgress, Progress
from shardload.cli.signals import StopSignals
from shardload.cli.summary import RunStats
from shardload.errors import ShardloadError


class ManifestFailed(ShardloadError):
    """The manifest cannot be written (``Recorder.error`` says why): the run stops."""


class Recorder:
    """Everything a finished or skipped URL updates, under one lock (main loop and ticker)."""

    def __init__(
        self, writer: ManifestWriter, progress: Progress, signals: StopSignals, interval: float
    ) -> None:
        self.writer, self.progress, self.signals = writer, progress, signals
        self.stats = RunStats()
        self.uncounted = run_stats.RunStats()  # see record()
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._received: Callable[[], int | None] = lambda: None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(interval,), daemon=True)
        self._ticker.start()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def record(
        self, record: dict[str, Any], *, repeat: bool = False, uncounted: Bundle | None = None
    ) -> None:
        """``uncounted``: the bundle, where the run's statistics do not count it (a line the
        CLI failed itself, or one left unread when the run stopped): ``self.uncounted``
        counts it, so that the side-car's totals match the manifest's."""
        with self.signals.critical(), self.lock:
            if self.closed:  # the input thread, after a stop: too late to count
                return
            try:
                self.writer.add(record)
            except OSError as exc:  # a full disk: reported once, as one line, by _crawl
                self.error = self.error or exc
            self.stats.add(record, repeat=repeat)
            if uncounted is not None:
                self.uncounted.add(uncounted)
            fetched = 0 if repeat else int(record.get("bytes") or 0)
            self._show(self.progress.finished, str(record["state"]), fetched)
        if self.error is not None:
            raise ManifestFailed from self.error

    def skip(self, action: Action) -> None:
        with self.signals.critical(), self.lock:
            if self.closed:
                return
            if action is Action.SKIP_DONE:
                self.stats.skipped_done += 1
            else:
                self.stats.skipped_permanent += 1
            self._show(self.progress.earlier)

    def set_total(self, total: int) -> None:
        with self.lock:
            if not self.closed:
                self.progress.set_total(total)

    def follow(self, run: Iterator[Bundle]) -> None:
        """Show the bytes the run's workers receive, downloads in progress included
        (``Run.received``)."""
        self._received = lambda: getattr(run, "received", None)

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self.lock:
                if self.closed:
                    return
                try:
                    self.writer.flush_if_due()
                except OSError as exc:  # a full disk: the main loop re-raises it
                    self.error = exc
                self.progress.counts.received = self._received()
                self._show(self.progress.tick)

    def close(self, *, ran_nothing: bool = False, interrupted: bool = False) -> None:
        """``ran_nothing``: a usage error stopped the run before it began, so the progress
        ends without a last line and the previous run's manifest stays as it was; so it
        does when the run was ``interrupted`` before it had anything to record."""
        with self.lock:
            self._stop.set()
            self.progress.counts.received = self._received()
            self._show(self.progress.discard if ran_nothing else self.progress.close)
            try:
                self.writer.close(keep_previous=interrupted, leave_no_trace=ran_nothing)
            except OSError as exc:
                self.error = self.error or exc
        self._ticker.join()

    def _show(self, update: Callable[..., None], *args: Any) -> None:
        """Progress goes to stderr, which its reader may have closed (``2>&1 | head``): the
        crawl then goes on without it. Only the manifest's errors stop a run."""
        try:
            update(*args)
        except OSError:
            self.progress = NullProgress()
