"""The end-of-run summary: counts by state and error kind, bytes, rate, top failing hosts.

``RunStats`` accumulates manifest records (memory grows with the number of distinct error
labels, never with the number of URLs); the per-host numbers come from the library's run
statistics (``shardload.stats``). ``format_summary`` and ``exit_code`` are pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shardload.stats import NO_HOST, HostStats

from .manifest import worth_retrying

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

STATE_ORDER = ("written", "cached", "failed")


def error_label(kind: str | None, status: int | None) -> str:
    """``http 404`` for HTTP errors (the status matters), the bare kind otherwise."""
    if kind is None:
        return "unknown"
    if kind == "http" and status is not None:
        return f"http {status}"
    return str(kind)


@dataclass
class RunStats:
    """What one run did; fed with the manifest records it writes and the URLs it skips."""

    by_state: Counter[str] = field(default_factory=Counter)
    by_error: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    skipped_done: int = 0
    skipped_permanent: int = 0
    transient: int = 0

    def add(self, record: Mapping[str, Any], *, repeat: bool = False) -> None:
        """Count one finished line; ``repeat``: its URL was fetched for an earlier line, so its
        bytes were counted there (as the library's statistics count them)."""
        state = str(record.get("state"))
        self.by_state[state] += 1
        self.bytes += int(record.get("bytes") or 0) if state == "written" and not repeat else 0
        if state != "failed":
            return
        status = record.get("status")
        kind = record.get("error_kind")
        self.transient += worth_retrying(kind, status)
        self.by_error[error_label(record.get("error_kind"), status)] += 1

    @property
    def finished(self) -> int:
        return sum(self.by_state.values())

    @property
    def failed(self) -> int:
        return self.by_state["failed"]

    @property
    def ok(self) -> int:
        return self.by_state["written"] + self.by_state["cached"]


def exit_code(stats: RunStats, *, interrupted: bool) -> int:
    """130 when interrupted; 1 when any URL of the input is failed (now, or skipped as a
    permanent failure by ``--retry-transient``); 0 otherwise."""
    if interrupted:
        return EXIT_INTERRUPTED
    if stats.failed or stats.skipped_permanent:
        return EXIT_FAILED
    return EXIT_OK


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")  # pragma: no cover


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


def format_summary(
    stats: RunStats,
    elapsed: float,
    *,
    interrupted: bool = False,
    output: str | None = None,
    manifest: str | None = None,
    hosts: list[HostStats] | None = None,
    hosts_file: str | None = None,
    unrecorded: int | None = None,
) -> str:
    """The multi-line summary printed at the end of a run (and after an interrupt).
    ``unrecorded``: the run stopped because the manifest could not be written, and this many
    of the finished URLs are not in it (None: the manifest was written)."""
    if unrecorded is not None:
        title = "shardload: stopped (cannot write the manifest), partial summary"
    elif interrupted:
        title = "shardload: interrupted, partial summary"
    else:
        title = "shardload: summary"
    lines = [title]
    states = ", ".join(f"{s} {stats.by_state[s]:,}" for s in STATE_ORDER)
    others = sorted(s for s in stats.by_state if s not in STATE_ORDER)
    states += "".join(f", {s} {stats.by_state[s]:,}" for s in others)
    lines.append(f"  finished   {stats.finished:,} ({states})")
    if stats.skipped_done or stats.skipped_permanent:
        lines.append(
            f"  skipped    {stats.skipped_done:,} already done, "
            f"{stats.skipped_permanent:,} permanent failures not retried"
        )
    per_s = stats.finished / elapsed if elapsed > 0 else 0.0
    bytes_s = stats.bytes / elapsed if elapsed > 0 else 0.0
    lines.append(
        f"  bytes      {format_bytes(stats.bytes)} in {format_duration(elapsed)} "
        f"({per_s:,.1f} files/s, {format_bytes(bytes_s)}/s)"
    )
    if stats.by_error:
        lines.append("  errors")
        for label, n in sorted(stats.by_error.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"    {n:>9,}  {label}")
    # URLs with no host (invalid ones) are in the error counts above; they are not a host.
    hosts = [host for host in hosts or [] if host.host != NO_HOST]
    if hosts:
        lines.append("  hosts with the most failures (failed/requests, errors)")
        for host in hosts:
            errors = ", ".join(f"{k} {n:,}" for k, n in sorted(host.errors.items()))
            breaker = "; breaker opened" if host.breaker_opened else ""
            lines.append(
                f"    {host.failed:>9,}/{host.requests:<9,} {host.host}  ({errors}{breaker})"
            )
    if output is not None:
        lines.append(f"  files      {output}")
    if manifest is not None:
        lines.append(f"  manifest   {manifest}")
    if hosts_file is not None:
        lines.append(f"  per host   {hosts_file}")
    if unrecorded is not None:
        if unrecorded:
            lines.append(f"  unrecorded {unrecorded:,} finished, not in the manifest")
        lines.append(
            "  rerun with --resume to finish once the manifest can be written; "
            "URLs not in it are fetched again"
        )
    elif interrupted:
        lines.append("  rerun with --resume to finish; URLs in flight were not recorded")
    elif stats.transient:
        lines.append(
            f"  rerun with --retry-transient to retry the {stats.transient:,} transient "
            + ("failure" if stats.transient == 1 else "failures")
        )
    return "\n".join(lines)
