"""Admission: each bundle from the input goes to memory (flow control), onto disk, or waits
(DESIGN rules 5 and 7).

Memory holds at most ``waiting_cap`` waiting jobs (in flow control, or behind a pending
request they repeat). Past that, the input is read on only while a shard has room and
nothing it may be sent, and either jobs are parked already or the jobs in memory would take
``patience`` seconds at the recent pace (one slow host's, say). Then a lane with
``bound.lane`` jobs in memory parks its further ones on disk (``Spill``, at most
``spill_cap``), and they come back as its memory drains.

Invariants:
- a parked lane parks all its new jobs, so each lane keeps its order;
- memory holds at most ``bound.hard`` (2 x ``waiting_cap``) jobs plus one refill;
- only bundles the run owns (``_spare``) are parked: a caller's object waits in memory, or,
  with memory full, in ``held`` (taken from the input, with nowhere to go yet), and the
  input waits;
- one call hands at most a step (``STEP``) of bundles on, so the first jobs go out (and
  results come back) while the rest of a large read-ahead is still being admitted.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .bundle import FAILED, Bundle
from .errors import DownloadFailed
from .flow import DrainPace, FlowControl, MemoryBound, Place, place_for
from .intake import InputReader, RunMark, parked, unparked
from .paths import url_to_relpath
from .repeats import Repeats
from .sharding import shard_for_url
from .spill import Spill
from .urls import host_key, split_url

if TYPE_CHECKING:
    from .coordinator import Limits

STEP = 1024

# admit(bundle, shard, host key, finished bundles out, shards with new jobs)
Admit = Callable[[Bundle, int, str, list[Bundle], set[int]], None]


class Admission:
    def __init__(
        self,
        reader: InputReader,
        flow: FlowControl[Any],
        repeats: Repeats,
        limits: Limits,
        *,
        shards: int,
        split: Mapping[str, int],
        dead: Mapping[int, str],
        admit: Admit,
        run: RunMark,
        wake: asyncio.Event,
    ) -> None:
        self._reader, self._flow, self._repeats, self._limits = reader, flow, repeats, limits
        self._split, self._dead, self._admit, self._run, self._wake = split, dead, admit, run, wake
        self._shards = shards
        self._loop = asyncio.get_running_loop()
        # Past waiting_cap, a lane with 4 x lane_cap jobs waiting in memory parks the rest of
        # its jobs on disk, so the input is read on for the other hosts; past twice that, all do.
        self._bound = MemoryBound(limits.waiting_cap, 2 * limits.waiting_cap, 4 * limits.lane_cap)
        # Blocks of one refill: a lane keeps no more than that read back from disk, untaken.
        self._spill: Spill[tuple[int, str]] = Spill(block=self._bound.lane)
        self._held: deque[Bundle] = deque()
        self._pace = DrainPace(limits.pace_window)
        self._recheck: asyncio.TimerHandle | None = None

    @property
    def empty(self) -> bool:
        """Nothing held or parked: every bundle taken from the input was handed on."""
        return not self._held and not self._spill.count

    def finished(self, count: int) -> None:
        """``count`` bundles got their results: the pace the drain is measured by."""
        self._pace.finished += count

    def close(self) -> None:
        self._spill.close()
        if self._recheck is not None:
            self._recheck.cancel()

    def step(self, out: list[Bundle], dirty: set[int]) -> bool:
        """Admit the next step: parked jobs whose lanes have room, then the input. True when
        there may be more to take now."""
        unspilling = self._unspill(out, dirty)
        return self._read_input(out, dirty) or unspilling

    def _route(self, bundle: Bundle, out: list[Bundle]) -> tuple[int, str] | None:
        """The bundle's lane (shard, host key); None when it failed here (added to out)."""
        if bundle.state == FAILED:
            out.append(bundle)
            return None
        try:
            key = host_key(bundle.url)
            shard = 0
            if self._shards > 1:
                k = self._split.get(key, 1)
                # A split host is spread by file path, so one file is only ever written by one
                # worker. The path includes the params, so bad params fail this bundle here.
                spread = url_to_relpath(split_url(bundle.url, bundle.params)) if k > 1 else ""
                shard = shard_for_url(key, spread, self._shards, k)
        except DownloadFailed as exc:
            out.append(bundle.fail(exc.kind, exc.message))
            return None
        return shard, key

    def _waiting(self) -> int:
        return self._flow.waiting + self._repeats.following

    def _place(self, bundle: Bundle, out: list[Bundle], dirty: set[int]) -> bool:
        """Admit a bundle from the input, or park it on disk when its lane has enough
        waiting in memory; False when memory is full and it cannot go to disk (held)."""
        lane = self._route(bundle, out)
        if lane is None:
            return True
        spill, waiting = self._spill, self._waiting()
        where = Place.MEMORY
        # Nothing parked and room in memory (the common case) or a dead shard (fails at
        # once): admitted without asking.
        if (spill.count or waiting >= self._bound.soft) and lane[0] not in self._dead:
            where = place_for(
                self._bound,
                waiting,
                self._flow.queued(*lane),
                parked=lane in spill,
                parkable=bundle._spare and self._can_park(),
            )
        if where is Place.DISK:
            spill.put(lane, parked(bundle))
        elif where is Place.MEMORY:
            self._admit(bundle, *lane, out, dirty)
        return where is not Place.HOLD

    def _can_park(self) -> bool:
        return self._spill.broken is None and self._spill.count < self._limits.spill_cap

    def _unspill(self, out: list[Bundle], dirty: set[int]) -> bool:
        """Lanes with jobs on disk and few in memory take the next ones back; True when it
        stopped early (a step's worth answered at once: repeats of answered URLs, a dead
        shard's jobs), so the rest come back in later steps, not in one huge batch."""
        spill, lane_size = self._spill, self._bound.lane
        for lane in spill.lanes():
            while (
                len(out) < STEP
                and lane in spill
                and self._flow.queued(*lane) < lane_size // 2
                and self._waiting() < self._bound.hard
            ):
                for record in spill.take(lane, lane_size):
                    self._admit(unparked(record, self._run), *lane, out, dirty)
        return len(out) >= STEP and spill.count > 0

    def _starving(self) -> bool:
        """Whether a live shard has room and nothing it may be sent: reading on may find it
        other hosts' jobs (when the memory is full of one slow host's, say)."""
        flow = self._flow
        return any(
            flow.outstanding(shard) < flow.shard_cap and not flow.ready(shard)
            for shard in range(self._shards)
            if shard not in self._dead
        )

    def _slow_drain(self, waiting: int) -> bool:
        """Whether the jobs in memory would take ``patience`` seconds at the recent pace."""
        now = self._loop.time()
        seconds = self._pace.seconds_for(waiting, now)
        if seconds is None or seconds < self._limits.patience:
            # Look again soon: a stuck host sends no result to wake the loop.
            if self._recheck is None or self._recheck.when() <= now:
                delay = self._limits.pace_window / 4
                self._recheck = self._loop.call_later(delay, self._wake.set)
            return False
        return True

    def _read_input(self, out: list[Bundle], dirty: set[int]) -> bool:
        held = self._held
        while held:
            if not self._place(held[0], out, dirty):
                return False
            held.popleft()
        waiting, cap = self._waiting(), self._limits.waiting_cap
        if waiting < cap:
            step = min(cap - waiting, STEP)
        elif (
            self._can_park()
            and self._starving()
            and (self._spill.count > 0 or self._slow_drain(waiting))
        ):
            # Once jobs are parked, reading goes on whenever a shard wants more: the pace of
            # the fast hosts found since would otherwise hide the host that holds the memory
            # (reading stopped and started, and a sorted input ran at two thirds of its pace).
            step = STEP
        else:
            return False
        taken = self._reader.take(step)
        for i, bundle in enumerate(taken):
            if not self._place(bundle, out, dirty):
                held.extend(taken[i:])
                return False
        return len(taken) == step
