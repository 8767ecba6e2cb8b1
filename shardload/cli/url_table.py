"""URL -> value for ``--resume`` over millions of URLs, in about 30 bytes a URL.

A dict keyed by the URL strings held ~130 bytes a URL (the string object, its hash, the
dict's slots): 1.3 GB to resume a 10-million-URL crawl. This table keeps a 96-bit blake2b
fingerprint of each URL in flat arrays (open addressing, linear probing) and its value as a
one-byte code.

Invariants:
- Two URLs share an entry only if their 96-bit fingerprints are equal. With 10 million URLs
  recorded and 10 million looked up, the chance that any one is taken for another is about
  1e-15 (n * m / 2**96); such a URL would be skipped as done.
- Setting a URL again replaces its value: the manifest's latest record wins.
- At most 255 distinct values (a manifest has five).
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable
from hashlib import blake2b
from struct import Struct
from typing import Generic, TypeVar

V = TypeVar("V", bound=Hashable)

_FIRST_SLOTS = 1 << 10
_MAX_LOAD = 0.7  # linear probing stays short below this


_SPLIT = Struct("<QI").unpack  # a 12-byte digest -> the arrays' two parts


def _fingerprint(url: str) -> tuple[int, int]:
    # surrogatepass: a manifest's JSON may hold a lone surrogate ("\udc80"); never raise.
    high_low: tuple[int, int] = _SPLIT(
        blake2b(url.encode("utf-8", "surrogatepass"), digest_size=12).digest()
    )
    return high_low


class UrlTable(Generic[V]):
    """``table[url] = value``, ``table.get(url)``, ``url in table``, ``len(table)``; nothing
    is ever removed."""

    def __init__(self) -> None:
        self._values: list[V] = []  # code - 1 -> value; code 0 marks an empty slot
        self._codes: dict[V, int] = {}
        self._size = 0
        self._allocate(_FIRST_SLOTS)

    def _allocate(self, slots: int) -> None:
        self._mask = slots - 1
        self._high = array("Q", bytes(8 * slots))
        self._low = array("I", bytes(4 * slots))
        self._code = bytearray(slots)
        self._limit = int(slots * _MAX_LOAD)

    def _slot(self, high: int, low: int) -> int:
        """The slot that holds this fingerprint, or the empty slot where it would go."""
        mask, highs, lows, codes = self._mask, self._high, self._low, self._code
        i = high & mask
        while codes[i] and (highs[i] != high or lows[i] != low):
            i = (i + 1) & mask
        return i

    def _code_of(self, value: V) -> int:
        code = self._codes.get(value)
        if code is None:
            if len(self._values) == 255:
                raise ValueError("a UrlTable holds at most 255 distinct values")
            self._values.append(value)
            code = self._codes[value] = len(self._values)
        return code

    def __setitem__(self, url: str, value: V) -> None:
        high, low = _fingerprint(url)
        i = self._slot(high, low)
        if not self._code[i]:
            if self._size >= self._limit:
                self._grow()
                i = self._slot(high, low)
            self._size += 1
            self._high[i], self._low[i] = high, low
        self._code[i] = self._code_of(value)

    def get(self, url: str) -> V | None:
        code = self._code[self._slot(*_fingerprint(url))]
        return self._values[code - 1] if code else None

    def __contains__(self, url: object) -> bool:
        return isinstance(url, str) and bool(self._code[self._slot(*_fingerprint(url))])

    def __len__(self) -> int:
        return self._size

    def _grow(self) -> None:
        highs, lows, codes = self._high, self._low, self._code
        self._allocate(2 * len(codes))
        new_highs, new_lows, new_codes = self._high, self._low, self._code
        for i, code in enumerate(codes):
            if code:
                j = self._slot(highs[i], lows[i])
                new_highs[j], new_lows[j], new_codes[j] = highs[i], lows[i], code
