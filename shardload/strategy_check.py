"""A strategy's values checked before a run starts: each bad one is a ``ConfigurationError``
naming it, instead of a ``TypeError`` from deep inside a worker, or every URL failing alike
(``max_bytes=-1`` made each one ``too_large``; ``concurrent=0`` quietly became 1).

Pure: reads attributes, raises, nothing else. Timeouts of 0 (or None) mean no limit, as in
aiohttp and curl; counts are integers, never booleans.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from .errors import ConfigurationError

# (attribute, smallest value, None allowed): whole numbers.
_COUNTS = (
    ("concurrent", 1, False),
    ("worker_concurrent", 1, False),
    ("max_attempts", 0, False),
    ("max_redirects", 0, False),
    ("breaker_threshold", 0, False),
    ("dns_ttl", 0, True),
)
# (attribute, None allowed): seconds, or bytes per second, from 0 up.
_AMOUNTS = (
    ("timeout", True),
    ("connect_timeout", True),
    ("max_time", True),
    ("delay", False),
    ("jitter", False),
    ("retry_after_cap", False),
    ("breaker_cooldown", False),
    ("low_speed_limit", False),
    ("low_speed_time", False),
)


def check_request_strategy(strategy: Any) -> None:
    """Raise ``ConfigurationError`` for the first value of a request strategy that no run can
    use; attributes a subclass removed are left to its own code."""
    name = type(strategy).__name__
    for attr, least, optional in _COUNTS:
        if hasattr(strategy, attr):
            _count(name, attr, getattr(strategy, attr), least, optional)
    for attr, optional in _AMOUNTS:
        if hasattr(strategy, attr):
            _amount(name, attr, getattr(strategy, attr), optional)


def check_download_strategy(strategy: Any) -> None:
    name = type(strategy).__name__
    if hasattr(strategy, "chunk_size"):
        _count(name, "chunk_size", strategy.chunk_size, 1, False)
    if hasattr(strategy, "max_bytes"):
        _count(name, "max_bytes", strategy.max_bytes, 0, True)


def _count(owner: str, attr: str, value: Any, least: int, optional: bool) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < least:
        wanted = "a whole number" + (f" >= {least}" if least else " >= 0")
        raise ConfigurationError(f"{owner}.{attr} must be {wanted}, got {value!r}")


def _amount(owner: str, attr: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or value < 0
    ):
        extra = " (0 or None: no limit)" if optional else ""
        raise ConfigurationError(
            f"{owner}.{attr} must be a finite number >= 0{extra}, got {value!r}"
        )
