"""Flow control: which waiting jobs may be sent to which shard now. Pure bookkeeping, no IO.

Why: one slow host must delay only itself (DESIGN rule 7), and memory must stay bounded
(rule 5). So the coordinator keeps, per (host, shard) lane, at most ``lane_cap`` jobs outstanding
in the worker, and per shard at most ``shard_cap``; jobs beyond those wait here, in one FIFO per
lane, and are released round-robin across lanes as results come back. A slow lane fills only its
own FIFO while every other lane keeps flowing; the caller bounds the total waiting (``waiting``)
by pausing its input.

Invariants: ``outstanding(shard) <= shard_cap``; a lane's outstanding <= ``lane_cap``; every
pushed item is taken exactly once; a lane with waiting items and room is in its shard's ready
ring exactly once.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")


class FlowControl(Generic[T]):
    def __init__(self, shards: int, shard_cap: int, lane_cap: int) -> None:
        self.shard_cap = max(1, shard_cap)
        self.lane_cap = max(1, lane_cap)
        self._shard_out = [0] * shards
        self._lane_out: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, deque[T]] = {}
        self._ready: list[OrderedDict[Hashable, None]] = [OrderedDict() for _ in range(shards)]
        self.waiting = 0

    def push(self, shard: int, lane: Hashable, item: T) -> None:
        key = (shard, lane)
        self._waiting.setdefault(key, deque()).append(item)
        self.waiting += 1
        if self._lane_out.get(key, 0) < self.lane_cap:
            self._ready[shard][key] = None

    def take(self, shard: int) -> list[T]:
        """Items to send to ``shard`` now, round-robin over its lanes, within both caps."""
        out: list[T] = []
        ready = self._ready[shard]
        while ready and self._shard_out[shard] < self.shard_cap:
            key, _ = ready.popitem(last=False)
            queue = self._waiting[key]
            out.append(queue.popleft())
            self.waiting -= 1
            self._shard_out[shard] += 1
            lane_out = self._lane_out[key] = self._lane_out.get(key, 0) + 1
            if not queue:
                del self._waiting[key]
            elif lane_out < self.lane_cap:
                ready[key] = None  # back of the ring: round-robin between lanes
        return out

    def done(self, shard: int, lane: Hashable) -> None:
        """One item of this lane finished in its shard: free its place."""
        key = (shard, lane)
        self._shard_out[shard] -= 1
        left = self._lane_out[key] - 1
        if left:
            self._lane_out[key] = left
        else:
            del self._lane_out[key]
        if key in self._waiting:
            self._ready[shard][key] = None

    def queued(self, shard: int, lane: Hashable) -> int:
        """How many of the lane's items wait here."""
        queue = self._waiting.get((shard, lane))
        return 0 if queue is None else len(queue)

    def ready(self, shard: int) -> bool:
        """Whether the shard has a lane with waiting items and room."""
        return bool(self._ready[shard])

    def outstanding(self, shard: int) -> int:
        return self._shard_out[shard]

    def drop_waiting(self, shard: int) -> list[T]:
        """Remove and return every item still waiting for ``shard`` (a shard given up on)."""
        out: list[T] = []
        for key in [k for k in self._waiting if k[0] == shard]:  # type: ignore[index]
            out.extend(self._waiting.pop(key))
        self.waiting -= len(out)
        self._ready[shard].clear()
        return out


class DrainPace:
    """How long the jobs waiting would take to finish at the pace of the last ``window``
    seconds: the coordinator reads on past its memory bound only for a slow drain (a polite
    or stuck host holding the memory), never for a fast one that frees room soon anyway."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.finished = 0  # the caller counts its finished jobs here
        self._samples: deque[tuple[float, int]] = deque()

    def seconds_for(self, waiting: int, now: float) -> float | None:
        """Seconds to finish ``waiting`` jobs at the recent pace (inf with none finished);
        None until the pace has been watched for a whole window."""
        samples = self._samples
        if not samples or now - samples[-1][0] >= self.window / 8:
            samples.append((now, self.finished))
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        then, count = samples[0]
        if now - then < self.window:
            return None
        done = self.finished - count
        return math.inf if done <= 0 else waiting * (now - then) / done


@dataclass(frozen=True, slots=True)
class MemoryBound:
    """How many jobs may wait in memory: ``soft`` before the input is read on past it,
    ``hard`` in all, ``lane`` per lane once past ``soft`` (more of that lane are parked)."""

    soft: int
    hard: int
    lane: int


class Place(Enum):
    MEMORY = "memory"
    DISK = "disk"
    HOLD = "hold"  # neither has room: the input waits


def place_for(
    bound: MemoryBound, waiting: int, queued: int, *, parked: bool, parkable: bool
) -> Place:
    """Where a job from the input waits: ``waiting`` jobs are in memory, ``queued`` of its
    lane; ``parked`` when its lane has jobs on disk (a lane keeps its order); ``parkable``
    when the job may go to disk (the run's own, and the disk has room). With memory full, a
    lane that has nothing parked and few waiting opens no lane on disk (each costs memory
    of its own): the input waits."""
    if parkable and (parked or (waiting >= bound.soft and queued >= bound.lane)):
        return Place.DISK
    return Place.HOLD if waiting >= bound.hard else Place.MEMORY
