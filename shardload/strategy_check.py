"""A strategy's values checked before a run starts: each bad one is a ``ConfigurationError``
naming it, instead of a ``TypeError`` from deep inside a worker, or every URL failing alike
(``max_bytes=-1`` made each one ``too_large``; ``concurrent=0`` quietly became 1).

Only what no run can use is refused: a value of the wrong type, NaN, a negative amount, a
count of hosts' requests under 1, an endless delay, a request header that cannot be sent.
Timeouts of 0, None or infinity mean no limit, as in aiohttp and curl; counts are whole
numbers (``4.0`` too), never booleans; ``max_attempts`` under 1 means one attempt. Pure: reads
attributes, raises, nothing else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
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


# RFC 9110's token: what a header name may hold.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# They frame a request body; a GET has none, and a server told of one waits for it (or reads
# the next request as its body).
_FRAMING = frozenset({"content-length", "transfer-encoding"})


def header_problem(name: Any, value: Any) -> str | None:
    """Why a request header cannot be sent as given (None: it can). A value is sent as its
    ``str``."""
    if not isinstance(name, str) or not _TOKEN.match(name):
        return f"{name!r} is not a header name (letters, digits and !#$%&'*+-.^_`|~)"
    if name.lower() in _FRAMING:
        return f"{name} frames a request body, and shardload's GET requests have none"
    if any(c in str(value) for c in "\r\n\0"):
        return f"the value of {name} holds a line break or a NUL: {str(value)!r}"
    return None


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
    headers = getattr(strategy, "headers", None)
    if headers is not None and not isinstance(headers, Mapping):
        raise ConfigurationError(f"{name}.headers must map names to values, got {headers!r}")
    # Refused here, not by every request: a bad name made each URL fail alike (a 400), a
    # framing header stalled each keep-alive connection until its timeout.
    for header, value in (headers or {}).items():
        problem = header_problem(header, value)
        if problem is not None:
            raise ConfigurationError(f"{name}.headers: {problem}")
    agent = getattr(strategy, "user_agent", None)
    if agent is not None and header_problem("User-Agent", agent) is not None:
        raise ConfigurationError(f"{name}.user_agent cannot hold a line break: {agent!r}")


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
