"""Per-host statistics of a run, folded from finished bundles. Pure, no IO.

Every finished bundle is counted exactly once, under the host it was scheduled for, so the
per-host numbers add up to the bundle counts. ``requests`` counts the attempts a finished
bundle reports (retries included; not redirect hops, robots.txt fetches, or attempts lost with
a crashed worker) and ``bytes`` what was downloaded: a repeat of a URL that got its first's
outcome adds neither (nor a latency), nor does a file found complete on disk (``cached``).
Bundles that never reached a host (an invalid URL) are counted under ``"-"``. ``errors``
counts the error kinds of failed bundles only, as the CLI's summary does: a URL robots.txt
kept us from requesting is ``skipped`` (in ``states``), not an error. ``breaker_opens``
counts the times a host's circuit breaker opened (a failed probe opens it again), from the
bundle whose attempt opened it. ``latency`` is of the bundles that got a response: from
starting the last request (connecting, if it did) to its headers, as Scrapy's download
latency; ``elapsed`` is from when a worker took the URL to its end, so the wait for the
host's turn counts there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .bundle import CACHED, FAILED, Bundle
from .errors import ErrorKind

NO_HOST = "-"


@dataclass
class HostStats:
    host: str
    bundles: int = 0
    requests: int = 0
    bytes: int = 0
    states: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)  # "2xx", "4xx", ...
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_total: float = 0.0
    elapsed_max: float = 0.0
    responses: int = 0  # bundles that got a response: what the latency is of
    latency_total: float = 0.0
    latency_max: float = 0.0
    breaker_opens: int = 0

    def add(self, bundle: Bundle) -> None:
        self.bundles += 1
        if not bundle._shared:  # a repeat's outcome is its first's: counted there
            self.requests += bundle.attempts
            if bundle.state != CACHED:  # its size, but nothing came over the network
                self.bytes += bundle.bytes
            self.breaker_opens += bundle._opened_breaker
            if bundle._latency is not None:
                self.responses += 1
                self.latency_total += bundle._latency
                self.latency_max = max(self.latency_max, bundle._latency)
        self.states[bundle.state] = self.states.get(bundle.state, 0) + 1
        if bundle.status is not None:
            klass = f"{bundle.status // 100}xx"
            self.statuses[klass] = self.statuses.get(klass, 0) + 1
        if bundle.error_kind and bundle.state == FAILED:
            kind = str(bundle.error_kind)
            self.errors[kind] = self.errors.get(kind, 0) + 1
        self.elapsed_total += bundle.elapsed
        self.elapsed_max = max(self.elapsed_max, bundle.elapsed)

    def absorb(self, other: HostStats) -> None:
        """Add the counts of bundles counted elsewhere (``other``) to these."""
        self.bundles += other.bundles
        self.requests += other.requests
        self.bytes += other.bytes
        for mine, theirs in (
            (self.states, other.states),
            (self.statuses, other.statuses),
            (self.errors, other.errors),
        ):
            for key, n in theirs.items():
                mine[key] = mine.get(key, 0) + n
        self.elapsed_total += other.elapsed_total
        self.elapsed_max = max(self.elapsed_max, other.elapsed_max)
        self.responses += other.responses
        self.latency_total += other.latency_total
        self.latency_max = max(self.latency_max, other.latency_max)
        self.breaker_opens += other.breaker_opens

    @property
    def failed(self) -> int:
        return self.states.get("failed", 0)

    @property
    def breaker_opened(self) -> bool:
        return self.breaker_opens > 0 or ErrorKind.BREAKER_OPEN.value in self.errors

    @property
    def latency_mean(self) -> float:
        """Seconds from a request's start to its response's headers, over the responses."""
        return self.latency_total / self.responses if self.responses else 0.0

    @property
    def elapsed_mean(self) -> float:
        """Seconds a bundle took, its waits for the host's turn and its retries included."""
        return self.elapsed_total / self.bundles if self.bundles else 0.0

    def to_record(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "bundles": self.bundles,
            "requests": self.requests,
            "bytes": self.bytes,
            "states": dict(self.states),
            "statuses": dict(self.statuses),
            "errors": dict(self.errors),
            "latency_mean": round(self.latency_mean, 6),
            "latency_max": round(self.latency_max, 6),
            "elapsed_mean": round(self.elapsed_mean, 6),
            "elapsed_max": round(self.elapsed_max, 6),
            "breaker_opened": self.breaker_opened,
            "breaker_opens": self.breaker_opens,
        }


class RunStats:
    """Totals and per-host statistics of one run."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostStats] = {}
        self.total = HostStats("*")

    def add(self, bundle: Bundle) -> None:
        host = bundle.host or NO_HOST
        stats = self.hosts.get(host)
        if stats is None:
            stats = self.hosts[host] = HostStats(host)
        stats.add(bundle)
        self.total.add(bundle)

    def absorb(self, other: RunStats) -> None:
        """Add the statistics of bundles counted elsewhere (``other``) to these."""
        for host, theirs in other.hosts.items():
            self.hosts.setdefault(host, HostStats(host)).absorb(theirs)
        self.total.absorb(other.total)

    def worst_hosts(self, count: int = 10) -> list[HostStats]:
        """Hosts with the most failed bundles, most first (ties: more bundles first)."""
        troubled = [h for h in self.hosts.values() if h.failed]
        troubled.sort(key=lambda h: (-h.failed, -h.bundles, h.host))
        return troubled[:count]
