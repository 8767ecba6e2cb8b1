"""Jobs that wait on disk: a FIFO per lane in one anonymous temporary file.

Why: memory is bounded (DESIGN rule 5), so the coordinator can hold only so many waiting jobs;
when one host has more than that at the front of the input, every host after it would wait
(rule 7). Past that bound the coordinator reads on and parks the overloaded lanes' jobs here,
and takes them back as their lanes drain.

Invariants:
- per lane, records come back in the order they were put, each exactly once;
- memory holds at most ``block`` records per lane being filled, ``max_buffered`` in all
  (past that every buffer is written out), the records of one block being taken per lane, and
  a few numbers per written block;
- records are plain tuples (pickled a block at a time); the file has no name, so nothing is
  left behind however the run ends, and it is emptied whenever nothing waits in it;
- a failed write (a full disk) does not lose records: they stay in memory, ``broken`` is set,
  and the caller puts nothing more here.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zlib
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar

Record = tuple[Any, ...]
L = TypeVar("L", bound=Hashable)


@dataclass(slots=True)
class _Lane:
    head: deque[Record] = field(default_factory=deque)  # read back, not yet taken
    blocks: deque[tuple[int, int]] = field(default_factory=deque)  # (offset, size) on disk
    tail: list[Record] = field(default_factory=list)  # newest, not yet written
    count: int = 0


class Spill(Generic[L]):
    def __init__(
        self, directory: str | None = None, block: int = 512, max_buffered: int = 8192
    ) -> None:
        self._directory = directory
        self._block = block
        self._max_buffered = max_buffered
        self._lanes: dict[L, _Lane] = {}
        self._file: IO[bytes] | None = None
        self._end = 0
        self._buffered = 0
        self.count = 0
        self.broken: str | None = None  # why the last write failed

    def __len__(self) -> int:
        return self.count

    def __contains__(self, lane: object) -> bool:
        return lane in self._lanes

    def lanes(self) -> Iterator[L]:
        return iter(list(self._lanes))

    def put(self, lane: L, record: Record) -> None:
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = _Lane()
        state.tail.append(record)
        state.count += 1
        self.count += 1
        self._buffered += 1
        if self.broken is None:
            if len(state.tail) >= self._block:
                self._write(state)
            elif self._buffered > self._max_buffered:
                for other in self._lanes.values():
                    if other.tail and self.broken is None:
                        self._write(other)

    def take(self, lane: L, limit: int) -> list[Record]:
        """Up to ``limit`` of the lane's oldest records."""
        state = self._lanes.get(lane)
        out: list[Record] = []
        while state is not None and len(out) < limit:
            if not state.head:
                if state.blocks:
                    state.head.extend(self._read(*state.blocks.popleft()))
                else:
                    # The tail is what came last: taken only once nothing older waits.
                    state.head.extend(state.tail)
                    self._buffered -= len(state.tail)
                    state.tail = []
            while state.head and len(out) < limit:
                out.append(state.head.popleft())
            if not state.head and not state.blocks and not state.tail:
                del self._lanes[lane]
                state = None
        self.count -= len(out)
        if not self._lanes and self._file is not None:
            self._file.truncate(0)  # nothing waits: give the disk space back
            self._end = 0
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lanes.clear()
        self.count = self._buffered = 0

    def _write(self, state: _Lane) -> None:
        data = zlib.compress(pickle.dumps(state.tail, pickle.HIGHEST_PROTOCOL), 1)
        try:
            fd = self._opened().fileno()
            done = 0
            while done < len(data):  # a short write (a disk filling up) writes the rest
                wrote = os.pwrite(fd, data[done:], self._end + done)
                if wrote <= 0:
                    raise OSError("the spill file took no bytes")
                done += wrote
        except OSError as exc:
            self.broken = f"{type(exc).__name__}: {exc}"
            return
        state.blocks.append((self._end, len(data)))
        self._end += len(data)
        self._buffered -= len(state.tail)
        state.tail = []

    def _read(self, offset: int, size: int) -> list[Record]:
        data = os.pread(self._opened().fileno(), size, offset)
        records: list[Record] = pickle.loads(zlib.decompress(data))
        return records

    def _opened(self) -> IO[bytes]:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 (closed by close())
        return self._file
