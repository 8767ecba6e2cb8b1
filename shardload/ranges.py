"""Continuing a cut body on the next attempt (HTTP range requests, RFC 9110 14 and 13.1.5):
which cut bodies may be continued, what the retry asks for, and whether its answer continues
the bytes kept. Pure policy: no IO.

Invariants:
- a body is continued only where the server can prove the rest belongs to the same bytes:
  the retry sends a strong validator of the first response as ``If-Range`` (its strong ETag,
  else a Last-Modified at least a second older than its Date), so a changed resource comes
  back whole (200) and is written from the start;
- only a body stored as sent (no content coding: a range counts the coded bytes) whose whole
  length was declared (Content-Length) is continued;
- a 206 continues it only when its Content-Range starts where the kept bytes end, runs to the
  end, and names the same whole length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .backoff import http_date


@dataclass(frozen=True, slots=True)
class Continuable:
    """What the retry of a cut body needs: the ``If-Range`` value, and the whole length."""

    validator: str
    total: int


def continuable(headers: Mapping[str, str], total: int | None) -> Continuable | None:
    """Whether a cut 200 answered with ``headers`` can be continued (None: it cannot);
    ``total`` is its Content-Length (None: not declared)."""
    if total is None or total <= 0:
        return None
    coding = headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        return None
    if headers.get("Accept-Ranges", "").strip().lower() == "none":
        return None
    validator = strong_validator(headers)
    return None if validator is None else Continuable(validator, total)


def strong_validator(headers: Mapping[str, str]) -> str | None:
    """The response's validator an ``If-Range`` may carry (RFC 9110 13.1.5): its ETag unless
    weak, else its Last-Modified if that is strong (a second or more before its Date)."""
    etag = headers.get("ETag")
    if etag is not None:
        etag = etag.strip()
        if _ETAG.fullmatch(etag):
            return etag
        return None  # a weak or malformed one: no date stands in for it
    modified = headers.get("Last-Modified")
    date = headers.get("Date")
    if modified is None or date is None:
        return None
    modified_at, date_at = http_date(modified), http_date(date)
    if modified_at is None or date_at is None or date_at - modified_at < 1:
        return None
    return modified.strip()


def range_request(offset: int, validator: str) -> dict[str, str]:
    """The headers of a retry that asks for the rest of a body from ``offset`` on."""
    return {"Range": f"bytes={offset}-", "If-Range": validator}


def content_range(value: str | None) -> tuple[int, int, int] | None:
    """``(first, last, total)`` of a 206's ``Content-Range: bytes first-last/total``; None for
    anything else (an unknown total ``*`` included)."""
    if value is None:
        return None
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        return None
    first, last, total = (int(g) for g in match.groups())
    if not first <= last < total:
        return None
    return first, last, total


def continues(value: str | None, offset: int, total: int) -> bool:
    """Whether a 206 with Content-Range ``value`` is the rest of a body of ``total`` bytes
    whose first ``offset`` are kept."""
    return content_range(value) == (offset, total - 1, total)


def conflicting(headers: Mapping[str, str]) -> bool:
    """Whether the caller's own request headers already ask for a range: theirs stands, and
    no cut body is continued behind their back."""
    return any(name.lower() in ("range", "if-range") for name in headers)


# A strong entity tag: a quoted string of visible characters but the quote (RFC 9110 8.8.3).
_ETAG = re.compile(r'"[\x21\x23-\x7e\x80-\xff]*"')
_CONTENT_RANGE = re.compile(r"bytes\s+(\d{1,19})-(\d{1,19})/(\d{1,19})", re.IGNORECASE)
