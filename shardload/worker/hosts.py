"""Per-host slots: the politeness limits and health of one host, exact because one worker owns it.

Invariants:
- at most ``limit`` requests of the host are in flight; ``limit`` stays within
  [1, concurrency] and moves only when adaptive: additive increase on a success whose latency
  is healthy (at most twice the host's quickest success, plus 50 ms: much slower says the
  host queues our requests, as TCP Vegas reads its base RTT), halving on 429/503/timeouts;
- two request starts of the host are at least ``delay`` (+ jitter) seconds apart; the gap
  counts from when the request is written (``went``), so neither a slow connect nor a busy
  loop between the claim and the write eats the gap before the next start;
- no request of the host starts before ``paused_until``: a Retry-After (capped) or a 429 pauses
  the whole host; a 503 without Retry-After pauses it only when at least half of its last
  ``_WINDOW`` responses were 429/503, for at least two different URLs (an overloaded host, not
  one broken URL retried, nor one unlucky first answer: a lone URL's retries keep the
  strategy's own backoff). Without a Retry-After the pause is 1 s, doubling with each
  consecutive pause, up to 60 s; any unthrottled answer ends the run of pauses, also one to a
  request sent before the pause (a host that serves a few requests at a time and rejects the
  rest at once is serving: doubling against it only adds waiting); throttled answers that
  arrive while the host is paused are the same burst and do not lengthen it. Answers are not
  told apart by when their request went: a rate limiter answers its rejections at once, and
  the slow answers it serves arrive after them;
- a request waiting for its turn holds no worker-wide slot: the worker-wide semaphore is taken
  last, right before the request starts, so a slow or paused host never blocks other hosts;
  the host's start is claimed only once that slot is held, so a wait for it (however long)
  never lets two starts come closer than the gap, nor one start inside a pause;
- the circuit breaker opens after ``breaker_threshold`` consecutive connection-level failures
  (a timeout counts only before the host answered: a body cut by a time or speed limit is
  that response's trouble, and the host is reachable); while open, requests fail fast; after
  ``breaker_cooldown`` one probe goes through (others wait for its outcome): any answer from
  the host closes the breaker, a connection failure opens it again, and a probe cancelled
  before its outcome hands the probe to the next request.

Times are ``time.monotonic()``, not the loop's clock: uvloop's is read once per turn of the
loop, in whole milliseconds, and a gap counted from it came out up to a tick short at the
server (0.2491-0.2497 s for Lenient's 0.25 s).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque

from ..errors import ErrorKind

# Failures that say the host (not the URL) is unreachable.
CONNECTION_KINDS = frozenset({ErrorKind.DNS, ErrorKind.CONNECT, ErrorKind.TLS, ErrorKind.TIMEOUT})
_THROTTLE_STATUSES = frozenset({429, 503})
_THROTTLE_FIRST, _THROTTLE_MAX = 1.0, 60.0
_WINDOW = 8
# Added to a gap counted from a write: the server sees each request a little later than it
# was written, and by a few tens of microseconds more or less each time.
_GAP_MARGIN = 0.001
# A success slower than this times the host's quickest, plus the slack, adds no concurrency.
_SLOW_FACTOR, _SLOW_SLACK = 2.0, 0.05

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class HostSlot:
    def __init__(
        self,
        concurrency: int,
        delay: float = 0.0,
        jitter: float = 0.0,
        *,
        adaptive: bool = False,
        breaker_threshold: int = 0,
        breaker_cooldown: float = 30.0,
        retry_after_cap: float = 300.0,
    ) -> None:
        self.concurrency = max(1, concurrency)
        self.delay = max(0.0, delay)
        self.jitter = max(0.0, jitter)
        self.adaptive = adaptive
        self.limit = 1.0 if adaptive else float(self.concurrency)
        self._quickest: float | None = None  # the quickest success's latency (adaptive only)
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._next_start = 0.0
        self._last_start: float | None = None
        self._gap = 0.0  # the gap drawn at the last start
        self.paused_until = 0.0
        self._throttles = 0  # consecutive throttled responses
        self._pauses = 0  # throttle pauses since the last unthrottled response
        # The URL of each recent throttled response, None for the others; newest last.
        self._recent: deque[str | None] = deque(maxlen=_WINDOW)
        self._retry_after_cap = retry_after_cap
        self.breaker_threshold = breaker_threshold
        self.breaker_cooldown = breaker_cooldown
        self.breaker = CLOSED
        self._failures = 0
        self._open_until = 0.0
        self._last_trouble = 0.0  # when a failure or a throttle was last recorded
        self._probe_done: asyncio.Event | None = None
        self._prober: asyncio.Task[object] | None = None
        self.users = 0  # bundles of this host inside the engine; 0 means the slot may be dropped
        self.held = 0  # the worker's places this host holds (see WorkerSlots)
        self.worker_waiters: deque[asyncio.Future[None]] = deque()

    # -- concurrency -------------------------------------------------------------------------

    async def _acquire(self) -> None:
        if self.in_flight < int(self.limit) and not self._waiters:
            self.in_flight += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # it was handed a place it will not use
            raise

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < int(self.limit):
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)

    async def enter(self, worker: WorkerSlots, *, breaker: bool = True) -> str | None:
        """Wait for this host's next start, then for a worker-wide slot; ``leave`` frees both.
        With ``breaker`` (every request but the robots.txt fetch), an open breaker enters
        nothing and says why the request must fail fast instead, also when it opened while
        this request waited for its turn.

        Plain methods rather than a context manager: this runs once per request.
        """
        if breaker and self.breaker != CLOSED:
            refused = await self.admit()
            if refused is not None:
                return refused
        await self._acquire()
        try:
            while True:
                await self._wait_start()
                await worker.acquire(self)
                # The worker-wide wait can be long: meanwhile another request of this host may
                # have started, or an answer paused it. The start is claimed only now, when the
                # request really goes; else the slot goes back and the host's turn is awaited.
                if self._start_now():
                    break
                worker.release(self)
        except BaseException:
            self._release()
            raise
        if breaker and self.breaker != CLOSED and (refused := self.open_reason()) is not None:
            self.leave(worker)
            return refused
        return None

    def leave(self, worker: WorkerSlots) -> None:
        worker.release(self)
        self._release()

    async def _wait_start(self) -> None:
        """Until neither the gap after the last start nor a pause holds this host."""
        while True:
            wait = max(self._next_start, self.paused_until) - time.monotonic()
            if wait <= 0:
                return
            await asyncio.sleep(wait)  # the gap or pause may grow meanwhile: look again

    def _start_now(self) -> bool:
        """Claim this host's start now, if neither its gap nor a pause holds it."""
        now = time.monotonic()
        if max(self._next_start, self.paused_until) > now:
            return False
        gap = self._gap_after(self.delay)
        self._next_start = now + gap
        self._last_start = now
        self._gap = gap
        return True

    def _gap_after(self, delay: float) -> float:
        """Seconds from one start to the next: ``delay`` plus a draw of the jitter."""
        return delay + (random.uniform(0.0, self.jitter) if self.jitter else 0.0)

    def spaced(self) -> bool:
        """Whether starts are spaced at all (only then does ``went`` matter)."""
        return self.delay > 0 or self.jitter > 0

    def went(self) -> None:
        """A request of this host is written now (after its claim: a wait for a connection,
        or a busy loop, can come between): the next start keeps the gap from now."""
        now = time.monotonic()
        self._last_start = max(self._last_start or now, now)
        if self._gap:
            self._next_start = max(self._next_start, now + self._gap + _GAP_MARGIN)

    def slow_to(self, delay: float) -> None:
        """Space this host's starts at least ``delay`` apart from now on, counting from the
        last start (the robots.txt fetch that told us its Crawl-delay, say), as ``went``
        would have counted that gap had it been known then."""
        if delay > self.delay:
            self.delay = delay
            if self._last_start is not None:
                gap = self._gap_after(delay) + _GAP_MARGIN
                self._next_start = max(self._next_start, self._last_start + gap)

    def pause(self, seconds: float) -> None:
        """Hold every request of this host for ``seconds`` from now."""
        if seconds > 0:
            until = time.monotonic() + seconds
            self.paused_until = max(self.paused_until, until)

    # -- what each attempt teaches us --------------------------------------------------------

    def record(
        self,
        status: int | None,
        kind: str | None,
        retry_after: float | None,
        url: str,
        latency: float | None = None,
    ) -> bool:
        """Feed back one request's outcome (kind None = success); ``url`` is what it asked,
        ``latency`` how long its response's headers took (None: not known). True when this
        outcome opened the breaker (the stats say which hosts it opened for)."""
        throttled = status in _THROTTLE_STATUSES
        self._recent.append(url if throttled else None)
        if retry_after is not None and (throttled or status is None or status >= 300):
            self.pause(min(retry_after, self._retry_after_cap))
        elif (status == 429 or (throttled and self._overloaded())) and not self._paused():
            # Answers to requests already in flight when the host paused are the same burst:
            # only a throttle after a pause ended makes the next pause longer.
            self.pause(min(_THROTTLE_FIRST * 2**self._pauses, _THROTTLE_MAX))
            self._pauses += 1
        if not throttled:
            self._pauses = 0
        self._throttles = self._throttles + 1 if throttled else 0
        if throttled:
            self._last_trouble = time.monotonic()
        if self.adaptive:
            if throttled or kind == ErrorKind.TIMEOUT:
                self.limit = max(1.0, self.limit / 2)
            elif kind is None and self._healthy(latency):
                self.limit = min(float(self.concurrency), self.limit + 1 / self.limit)
                self._wake()
        # A timeout once the host had answered (a body cut by max_time or low_speed_limit, a
        # stall mid-body) is this response's trouble: the host is reachable.
        return self._breaker_record(
            None if status is not None and kind in CONNECTION_KINDS else kind
        )

    def _healthy(self, latency: float | None) -> bool:
        """Whether a success came about as fast as the host's quickest (which it may be)."""
        if latency is None:
            return True
        if self._quickest is None or latency < self._quickest:
            self._quickest = latency
        return latency <= _SLOW_FACTOR * self._quickest + _SLOW_SLACK

    def _paused(self) -> bool:
        return self.paused_until > time.monotonic()

    def _overloaded(self) -> bool:
        throttled = [url for url in self._recent if url is not None]
        return 2 * len(throttled) >= len(self._recent) and len(set(throttled)) >= 2

    # -- circuit breaker ---------------------------------------------------------------------

    async def admit(self) -> str | None:
        """None when a request may go; else why it must fail fast (the breaker is open)."""
        while self.breaker != CLOSED:
            if self.breaker == OPEN:
                if time.monotonic() < self._open_until:
                    return self.open_reason()
                self.breaker = HALF_OPEN
                self._probe_done = asyncio.Event()
                self._prober = asyncio.current_task()
                return None  # this request is the probe
            probe = self._probe_done
            if probe is None:
                return None
            await probe.wait()
        return None

    def open_reason(self) -> str | None:
        """Why requests fail fast now (the breaker is open and cooling down), else None."""
        if self.breaker != OPEN:
            return None
        left = self._open_until - time.monotonic()
        return (
            f"circuit open: {self._failures} consecutive connection failures or timeouts; "
            f"next probe in {max(0.0, left):.1f} s"
        )

    def _breaker_record(self, kind: str | None) -> bool:
        if self.breaker_threshold <= 0:
            return False
        opened = False
        if kind in CONNECTION_KINDS:
            self._failures += 1
            self._last_trouble = time.monotonic()
            if self.breaker == HALF_OPEN or self._failures >= self.breaker_threshold:
                opened = self.breaker != OPEN
                self.breaker = OPEN
                self._open_until = self._last_trouble + self.breaker_cooldown
        else:
            # Any other outcome (an error status, a reset, a bad body, a full disk) means the
            # host answered: it is reachable.
            self._failures = 0
            self.breaker = CLOSED
        self._release_probe()
        return opened

    def end_probe(self) -> None:
        """Call when a request of this host is over: a probe that recorded no outcome (it was
        cancelled) hands the probe to the next request instead of holding the host forever."""
        if self.breaker == HALF_OPEN and self._prober is asyncio.current_task():
            self.breaker = OPEN
            self._open_until = time.monotonic()
            self._release_probe()

    def _release_probe(self) -> None:
        if self._probe_done is not None:
            self._probe_done.set()
        self._probe_done = self._prober = None

    def idle(self) -> bool:
        """True when dropping the slot loses nothing that still matters: no user, no pending
        gap or pause, no probe under way, and no failure or throttle in the last
        ``breaker_cooldown`` seconds. Older trouble is forgotten with the slot (a host that
        failed long ago starts again like a new one, as a cooled-down breaker would let its
        next request through anyway), so a crawl full of dead hosts does not keep a slot for
        each of them."""
        if self.users or self.breaker == HALF_OPEN:
            return False  # the common case while a host is busy: no clock read
        now = time.monotonic()
        if max(self._next_start, self.paused_until) > now:
            return False
        troubled = self._failures or self._throttles or self.breaker == OPEN
        return not troubled or now >= self._last_trouble + self.breaker_cooldown


class WorkerSlots:
    """The worker-wide cap on requests in flight, handed out fairly between hosts.

    A place that frees goes to the waiting host that holds the fewest places (first come
    among equals), not to the oldest waiter: hosts whose slow requests fill the cap would
    otherwise queue a fast host's requests behind all of theirs (DESIGN rule 7). Waiting hosts
    are kept in buckets by how many places they hold (a small number: at most their own
    concurrency), so handing out a place does not scan every waiting host.
    """

    def __init__(self, limit: int) -> None:
        self._free = max(1, limit)
        self._buckets: dict[int, dict[HostSlot, None]] = {}  # places held: hosts waiting

    async def acquire(self, host: HostSlot) -> None:
        if self._free > 0:  # free places exist only while nobody waits
            self._free -= 1
            host.held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        if not host.worker_waiters:
            self._buckets.setdefault(host.held, {})[host] = None
        host.worker_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(host)  # it was handed a place it will not use
            elif waiter in host.worker_waiters:  # not yet skipped by a release()
                host.worker_waiters.remove(waiter)
                if not host.worker_waiters:
                    self._unlist(host, host.held)
            raise

    def release(self, host: HostSlot) -> None:
        held = host.held
        host.held = held - 1
        if host.worker_waiters:  # it waits for more: it now holds fewer
            self._unlist(host, held)
            self._buckets.setdefault(held - 1, {})[host] = None
        self._free += 1
        while self._free > 0 and self._buckets:
            fewest = min(self._buckets)
            waiting = self._buckets[fewest]
            chosen = next(iter(waiting))
            self._unlist(chosen, fewest)
            waiter = chosen.worker_waiters.popleft()
            if not waiter.done():  # a waiter cancelled since is skipped (its task resumes later)
                self._free -= 1
                chosen.held += 1
                waiter.set_result(None)
            if chosen.worker_waiters:
                self._buckets.setdefault(chosen.held, {})[chosen] = None

    def _unlist(self, host: HostSlot, held: int) -> None:
        waiting = self._buckets[held]
        del waiting[host]
        if not waiting:
            del self._buckets[held]
