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
- a failed write (a full disk, a record that does not pickle) does not lose records: they
  stay in memory, ``broken`` is set, and the caller puts nothing more here;
- the file holds the blocks still waiting, and at most 3x that in blocks read back (past
  64 MiB it is rewritten), so a lane that never drains does not keep all that passed by.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zlib
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Generic, TypeVar

Record = tuple[Any, ...]
L = TypeVar("L", bound=Hashable)


@dataclass(slots=True)
class _Lane:
    # Lists, not deques: a lane costs ~300 bytes, and each list stays short (one block).
    head: list[Record] = field(default_factory=list)  # read back, not yet taken
    blocks: list[tuple[int, int]] = field(default_factory=list)  # (offset, size) on disk
    tail: list[Record] = field(default_factory=list)  # newest, not yet written


class Spill(Generic[L]):
    def __init__(
        self, directory: str | None = None, block: int = 512, max_buffered: int = 8192
    ) -> None:
        self._directory = directory
        self._block = block
        self._max_buffered = max_buffered
        self._lanes: dict[L, _Lane] = {}
        self._tails: dict[L, None] = {}  # lanes with records not yet written
        self._file: IO[bytes] | None = None
        self._end = 0
        self._live = 0  # bytes of blocks not yet read back
        self._buffered = 0
        self.count = 0  # records waiting, in all lanes
        self.broken: str | None = None  # why the last write failed

    def __contains__(self, lane: object) -> bool:
        return lane in self._lanes

    def lanes(self) -> Iterator[L]:
        return iter(list(self._lanes))

    def put(self, lane: L, record: Record) -> None:
        state = self._lanes.get(lane)
        if state is None:
            state = self._lanes[lane] = _Lane()
        state.tail.append(record)
        self.count += 1
        self._buffered += 1
        self._tails[lane] = None
        if self.broken is None:
            if len(state.tail) >= self._block:
                self._write(lane, state)
            elif self._buffered > self._max_buffered:
                for other in list(self._tails):
                    if self.broken is None:
                        self._write(other, self._lanes[other])

    def take(self, lane: L, limit: int) -> list[Record]:
        """Up to ``limit`` of the lane's oldest records."""
        state = self._lanes.get(lane)
        out: list[Record] = []
        while state is not None and len(out) < limit:
            if not state.head:
                if state.blocks:
                    state.head = self._read(*state.blocks.pop(0))
                else:
                    # The tail is what came last: taken only once nothing older waits.
                    state.head, state.tail = state.tail, []
                    self._buffered -= len(state.head)
                    self._tails.pop(lane, None)
            count = min(limit - len(out), len(state.head))
            out.extend(state.head[:count])
            del state.head[:count]
            if not state.head and not state.blocks and not state.tail:
                del self._lanes[lane]
                state = None
        self.count -= len(out)
        if self._file is not None and (not self._lanes or self._wasted()):
            self._compact()
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._lanes.clear()
        self._tails.clear()
        self.count = self._buffered = self._live = self._end = 0

    def _write(self, lane: L, state: _Lane) -> None:
        try:
            data = zlib.compress(pickle.dumps(state.tail, pickle.HIGHEST_PROTOCOL), 1)
            self._write_at(self._opened(), data, self._end)
        except Exception as exc:  # a full disk, or a record that does not pickle (deep info)
            self.broken = f"{type(exc).__name__}: {exc}"
            return
        state.blocks.append((self._end, len(data)))
        self._end += len(data)
        self._live += len(data)
        self._buffered -= len(state.tail)
        state.tail = []
        del self._tails[lane]

    @staticmethod
    def _write_at(file: IO[bytes], data: bytes, offset: int) -> None:
        fd, done = file.fileno(), 0
        while done < len(data):  # a short write (a disk filling up) writes the rest
            wrote = os.pwrite(fd, data[done:], offset + done)
            if wrote <= 0:
                raise OSError("the spill file took no bytes")
            done += wrote

    def _read(self, offset: int, size: int) -> list[Record]:
        data = os.pread(self._opened().fileno(), size, offset)
        self._live -= size
        records: list[Record] = pickle.loads(zlib.decompress(data))
        return records

    def _wasted(self) -> bool:
        """Whether most of the file is blocks read back already (one lane that never drains
        would otherwise keep every block ever written behind it)."""
        return self._end > _COMPACT_FROM and self._live * 4 < self._end

    def _compact(self) -> None:
        """Move the blocks still waiting to the start of a fresh file (or just empty the file
        when none waits): the disk holds what waits, not all that ever waited."""
        old = self._opened()
        if not self._live:
            old.truncate(0)
            self._end = 0
            return
        new: IO[bytes] | None = None
        moved: dict[L, list[tuple[int, int]]] = {}
        end = 0
        try:
            new = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 (closed by close())
            for lane, state in self._lanes.items():
                moved[lane] = []
                for offset, size in state.blocks:
                    self._write_at(new, os.pread(old.fileno(), size, offset), end)
                    moved[lane].append((end, size))
                    end += size
        except OSError:
            if new is not None:
                new.close()
            return  # the old file still holds every block: compacted another time
        for lane, blocks in moved.items():
            self._lanes[lane].blocks = blocks
        old.close()
        self._file, self._end = new, end

    def _opened(self) -> IO[bytes]:
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._directory)  # noqa: SIM115 (closed by close())
        return self._file


_COMPACT_FROM = 64 << 20  # bytes: a smaller file is not worth rewriting
