"""The policy of continuing a cut body (``shardload.ranges``): tables and properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardload.ranges import (
    Continuable,
    conflicting,
    content_range,
    continuable,
    continues,
    range_request,
    strong_validator,
)

DATE = "Tue, 24 Nov 2026 10:00:00 GMT"
OLDER = "Mon, 23 Nov 2026 10:00:00 GMT"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"ETag": '"abc"'}, '"abc"'),
        ({"ETag": ' "abc" '}, '"abc"'),
        ({"ETag": '""'}, '""'),
        # Weak ETags may not go in If-Range, and no date stands in for a weak one.
        ({"ETag": 'W/"abc"', "Last-Modified": OLDER, "Date": DATE}, None),
        ({"ETag": "abc"}, None),  # unquoted: malformed
        ({"ETag": '"a"b"'}, None),
        ({"Last-Modified": OLDER, "Date": DATE}, OLDER),
        # A date is strong only if it is a second or more before the response's Date.
        ({"Last-Modified": DATE, "Date": DATE}, None),
        ({"Last-Modified": OLDER}, None),
        ({"Last-Modified": "yesterday", "Date": DATE}, None),
        ({"Last-Modified": OLDER, "Date": "now"}, None),
        ({}, None),
    ],
)
def test_strong_validator(headers: dict[str, str], expected: str | None) -> None:
    assert strong_validator(headers) == expected


@pytest.mark.parametrize(
    ("headers", "total", "expected"),
    [
        ({"ETag": '"v1"'}, 1000, Continuable('"v1"', 1000)),
        ({"ETag": '"v1"', "Accept-Ranges": "bytes"}, 1000, Continuable('"v1"', 1000)),
        ({"ETag": '"v1"', "Content-Encoding": "identity"}, 1000, Continuable('"v1"', 1000)),
        ({"ETag": '"v1"'}, None, None),  # no Content-Length: the whole length is unknown
        ({"ETag": '"v1"'}, 0, None),
        ({"ETag": '"v1"', "Accept-Ranges": "none"}, 1000, None),
        ({"ETag": '"v1"', "Content-Encoding": "gzip"}, 1000, None),  # ranges count coded bytes
        ({"ETag": 'W/"v1"'}, 1000, None),
        ({}, 1000, None),
    ],
)
def test_continuable(
    headers: dict[str, str], total: int | None, expected: Continuable | None
) -> None:
    assert continuable(headers, total) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("bytes 100-999/1000", (100, 999, 1000)),
        ("BYTES 0-0/1", (0, 0, 1)),
        (" bytes 5-9/10 ", (5, 9, 10)),
        ("bytes 100-999/*", None),
        ("bytes */1000", None),
        ("bytes 100-99/1000", None),  # last before first
        ("bytes 100-1000/1000", None),  # past the end
        ("items 0-1/2", None),
        ("bytes 1-2/3, bytes 4-5/6", None),
        ("bytes -1-2/3", None),
        ("", None),
        (None, None),
    ],
)
def test_content_range(value: str | None, expected: tuple[int, int, int] | None) -> None:
    assert content_range(value) == expected


@pytest.mark.parametrize(
    ("value", "offset", "total", "expected"),
    [
        ("bytes 400-999/1000", 400, 1000, True),
        ("bytes 0-999/1000", 400, 1000, False),  # from the start: not the rest
        ("bytes 400-998/1000", 400, 1000, False),  # stops short of the end
        ("bytes 400-1199/1200", 400, 1000, False),  # another length: another resource
        ("bytes 401-999/1000", 400, 1000, False),
        (None, 400, 1000, False),
    ],
)
def test_continues(value: str | None, offset: int, total: int, expected: bool) -> None:
    assert continues(value, offset, total) is expected


@given(st.integers(0, 2**62), st.integers(1, 2**62))
def test_the_request_for_the_rest_is_answered_by_its_own_range(offset: int, more: int) -> None:
    total = offset + more
    asked = range_request(offset, '"v"')
    assert asked == {"Range": f"bytes={offset}-", "If-Range": '"v"'}
    assert continues(f"bytes {offset}-{total - 1}/{total}", offset, total)
    assert not continues(f"bytes {offset}-{total - 1}/{total + 1}", offset, total)


@given(st.text(max_size=40))
def test_content_range_never_raises(value: str) -> None:
    parsed = content_range(value)
    if parsed is not None:
        first, last, total = parsed
        assert 0 <= first <= last < total


@pytest.mark.parametrize(
    ("headers", "expected"),
    [({"Range": "bytes=0-9"}, True), ({"if-range": '"x"'}, True), ({"Accept": "*/*"}, False)],
)
def test_a_callers_own_range_stands(headers: dict[str, str], expected: bool) -> None:
    assert conflicting(headers) is expected
