"""Host -> shard assignment (DESIGN rule 1: one host, one worker), and hot-host splitting.

Rules and invariants:

- ``shard_of(host_key, n)`` is ``zlib.crc32(host_key as UTF-8) % n``: stable across processes,
  machines and Python versions (never the salted built-in ``hash()``), so a host's politeness
  state (concurrency, delay, Retry-After pauses, breaker) lives in exactly one worker.
- Hot-host splitting spreads one host over ``k`` consecutive shards: a URL goes to
  ``(shard_of(host) + crc32(url_key) % k) % n``, with ``k`` clamped to ``n`` so the spread stays
  uniform. A host split ``k`` ways therefore uses exactly ``min(k, n)`` shards (given enough URLs),
  and ``split=1`` is the plain rule.
- ``split_budget`` divides one host's limits between the workers sharing it, so that their sum
  never exceeds the host's own limits: floor-divided concurrency (at least 1 each, with at most
  ``concurrency`` workers). A host with a ``delay`` (or a jitter) is not split at all: workers
  that do not talk could keep its average rate (each waiting ``delay * k``) but not its minimum
  gap between two starts, and one worker drives far more than the ``1 / delay`` starts a
  second it allows.

When to split: only for a host that allows much more throughput than one worker process can
drive (a CDN, an object store, your own server), with a high concurrency and little or no delay.
Splitting gives up part of rule 1: Retry-After pauses and the circuit breaker then act per worker,
not per host, so never split a third-party host whose politeness limits matter. Pass a
``url_key`` that sends URLs which share a file or a directory prefix to the same worker (the first
component of the relative path under the host is the safe choice): two workers must never write
the same file, or move a file that the other needs as a directory.
"""

from __future__ import annotations

import zlib

from shardload.errors import ConfigurationError


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


def _check_shards(shards: int) -> None:
    if shards < 1:
        raise ConfigurationError(f"shard count must be >= 1, got {shards}")


def shard_of(host_key: str, shards: int) -> int:
    """The shard, in ``range(shards)``, of every URL of ``host_key``."""
    _check_shards(shards)
    return _crc(host_key) % shards


def shard_for_url(host_key: str, url_key: str, shards: int, split: int = 1) -> int:
    """The shard of one URL of a host spread over ``split`` workers (``split=1``: no split)."""
    base = shard_of(host_key, shards)
    k = min(split, shards)
    if k <= 1:
        return base
    return (base + _crc(url_key) % k) % shards


def split_budget(concurrency: int, delay: float, k: int) -> tuple[int, int, float]:
    """``(k_eff, per-worker concurrency, per-worker delay)`` for one host split ``k`` ways.

    ``k_eff = min(k, concurrency)``, at least 1, and 1 for a host with a delay (see the module's
    rules); ``k_eff * per-worker concurrency <= concurrency``. Pass ``k`` already clamped to the
    shard count.
    """
    if concurrency < 1:
        raise ConfigurationError(f"concurrency must be >= 1, got {concurrency}")
    if not delay >= 0:  # also refuses NaN
        raise ConfigurationError(f"delay must be >= 0, got {delay}")
    k_eff = 1 if delay > 0 else max(1, min(k, concurrency))
    per_worker = max(1, concurrency // k_eff)
    return k_eff, per_worker, delay
