"""A strategy's values checked before a run starts: each bad one is a ``ConfigurationError``
naming it, instead of a ``TypeError`` from deep inside a worker, or every URL failing alike
(``max_bytes=-1`` made each one ``too_large``; ``concurrent=0`` quietly became 1).

Only what no run can use is refused: a value of the wrong type, NaN, a negative amount, a
count of hosts' requests under 1, an endless delay. Timeouts of 0, None or infinity mean no
limit, as in aiohttp and curl; counts are whole numbers (``4.0`` too), never booleans;
``max_attempts`` under 1 means one attempt. Pure: reads attributes, raises, nothing else.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from .errors import ConfigurationError

# (attribute, smallest value): whole numbers.
_COUNTS = (
    ("concurrent", 1),
    ("worker_concurrent", 1),
    ("max_attempts", -math.inf),
    ("max_redirects", -math.inf),
    ("breaker_threshold", -math.inf),
)
# (attribute, None allowed, infinity allowed): seconds, or bytes per second, from 0 up.
_AMOUNTS = (
    ("timeout", True, True),
    ("connect_timeout", True, True),
    ("max_time", True, True),
    ("dns_ttl", True, True),
    ("delay", False, False),  # an endless gap would hang the run at its tail
    ("jitter", False, False),
    ("retry_after_cap", False, True),
    ("breaker_cooldown", False, True),
    ("low_speed_limit", False, False),
    ("low_speed_time", False, True),
)


def check_request_strategy(strategy: Any) -> None:
    """Raise ``ConfigurationError`` for the first value of a request strategy that no run can
    use; attributes a subclass removed are left to its own code."""
    name = type(strategy).__name__
    for attr, least in _COUNTS:
        if hasattr(strategy, attr):
            _count(name, attr, getattr(strategy, attr), least)
    for attr, optional, endless in _AMOUNTS:
        if hasattr(strategy, attr):
            _amount(name, attr, getattr(strategy, attr), optional, endless)


def check_download_strategy(strategy: Any) -> None:
    """``max_bytes``; ``chunk_size`` only for its type: a hint (reads are at least 1 MiB)."""
    name = type(strategy).__name__
    value = getattr(strategy, "max_bytes", None)
    if value is not None:
        _count(name, "max_bytes", value, 0)
    size = getattr(strategy, "chunk_size", 0)
    if isinstance(size, bool) or not isinstance(size, Real):
        raise ConfigurationError(f"{name}.chunk_size must be a number, got {size!r}")


def _whole(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, Integral):
        return True
    return isinstance(value, Real) and math.isfinite(value) and float(value).is_integer()


def _count(owner: str, attr: str, value: Any, least: float) -> None:
    if not _whole(value) or value < least:
        wanted = "a whole number" + (f" >= {least:g}" if least > -math.inf else "")
        raise ConfigurationError(f"{owner}.{attr} must be {wanted}, got {value!r}")


def _amount(owner: str, attr: str, value: Any, optional: bool, endless: bool) -> None:
    if value is None and optional:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or math.isnan(value)
        or value < 0
        or (math.isinf(value) and not endless)
    ):
        wanted = "a number >= 0" if endless else "a finite number >= 0"
        extra = " (0 or None: no limit)" if optional else ""
        raise ConfigurationError(f"{owner}.{attr} must be {wanted}{extra}, got {value!r}")
