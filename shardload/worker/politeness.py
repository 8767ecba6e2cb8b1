"""Politeness state of the engine: its per-host slots and each host's robots.txt rules.

``Politeness`` is a base class of ``AioDownload`` (after ``Exchange``, the request side).

Invariants:
- one ``HostSlot`` per host while any bundle of the host is inside the engine (``users``), or
  while its slot still remembers something that matters (a gap, a pause, recent trouble);
  idle slots are dropped, so a crawl over millions of hosts keeps only the busy ones;
- a host split over k workers gets its budget (concurrency, delay) from ``host_budgets``; its
  workers do not talk, so each waits k times its Crawl-delay: the host gets the rate it asked
  for on average, not its minimum gap (a ``delay`` keeps a host whole for that reason, but a
  Crawl-delay is only known once the run has split the host);
- a host's robots.txt is fetched once, through its slot (the fetch is the host's first start),
  and its Crawl-delay (capped as a Retry-After is) becomes the host's gap; one that could not
  be read (disallowing all) is asked again by the host's first URL after ``breaker_cooldown``,
  so a day-long crawl does not write a host off for a passing outage;
- the rules of a host with URLs in the engine are kept; those of idle hosts are kept, most
  recently used first, up to ``_IDLE_ROBOTS_BYTES``, so memory follows the busy hosts, not
  every host the run has seen (a host whose rules were let go fetches them again);
- a robots.txt fetch takes at most ``max_time`` (or else ``timeout``) seconds in all: a
  server dripping it byte by byte must not hold its host's URLs for hours.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from ..robots import ALLOW_ALL, RobotRules, rules_from_response
from ..urls import UrlParts, redirect_target, split_url
from .exchange import Exchange, effective_user_agent, time_limit
from .failures import classify
from .files import READ_SIZE
from .hosts import HostSlot, WorkerSlots
from .http import REDIRECT_STATUSES

_ROBOTS_MAX_BYTES = 512 * 1024
_ROBOTS_MAX_HOPS = 5  # redirects followed for robots.txt (RFC 9309: at least five)
# Rules kept for hosts with nothing in flight, by ``RobotRules.weight``: thousands of
# typical robots.txt files per worker, and a crawl of millions of hosts stays flat.
_IDLE_ROBOTS_BYTES = 32 * 1024 * 1024
# What keeping any host's rules costs besides the rules (measured ~820 bytes: the finished
# task and its coroutine, the key, two dict entries); a 404's rules are the shared ALLOW_ALL.
_IDLE_ENTRY_BYTES = 1024


class Politeness(Exchange):
    """Host slots and robots.txt rules of ``AioDownload``; see the module's invariants."""

    host_budgets: dict[str, tuple[int, float, int]]
    _hosts: dict[str, HostSlot]
    _robots: dict[str, asyncio.Future[RobotRules]]
    _robots_until: dict[str, float]
    _robots_idle: OrderedDict[str, int]  # idle hosts with rules kept: their weight, oldest first
    _robots_idle_weight: int
    _worker_sem: WorkerSlots | None

    def _slot(self, host_key: str) -> HostSlot:
        slot = self._hosts.get(host_key)
        if slot is None:
            rs = self.request_strategy
            concurrency, delay, _ = self.host_budgets.get(host_key, (rs.concurrent, rs.delay, 1))
            slot = self._hosts[host_key] = HostSlot(
                concurrency,
                max(delay, self._crawl_delay(host_key)),
                rs.jitter,
                adaptive=rs.adaptive,
                breaker_threshold=rs.breaker_threshold,
                breaker_cooldown=rs.breaker_cooldown,
                retry_after_cap=rs.retry_after_cap,
            )
        return slot

    def _crawl_delay(self, host_key: str) -> float:
        known = self._robots.get(host_key)
        if known is None or not known.done() or known.cancelled():
            return 0.0
        return self._crawl_gap(known.result(), host_key)

    def _crawl_gap(self, rules: RobotRules, host_key: str) -> float:
        """This worker's gap between the host's starts for its Crawl-delay."""
        # Capped as a Retry-After is: "Crawl-delay: 86400" must not park the run for days.
        delay = min(rules.crawl_delay or 0.0, self.request_strategy.retry_after_cap)
        ways = self.host_budgets[host_key][2] if host_key in self.host_budgets else 1
        return delay * ways

    def _worker_slots(self) -> WorkerSlots:
        if self._worker_sem is None:
            self._worker_sem = WorkerSlots(self._worker_limit())
        return self._worker_sem

    def _take_slot(self, host_key: str) -> HostSlot:
        slot = self._slot(host_key)
        slot.users += 1
        if self._robots_idle:  # empty unless robots.txt is obeyed
            weight = self._robots_idle.pop(host_key, None)
            if weight is not None:
                self._robots_idle_weight -= weight
        return slot

    def _give_back_slot(self, host_key: str, slot: HostSlot) -> None:
        slot.end_probe()
        slot.users -= 1
        if slot.users == 0 and self._robots:
            self._keep_idle_rules(host_key)
        if slot.idle() and self._hosts.get(host_key) is slot:
            del self._hosts[host_key]

    def _keep_idle_rules(self, host_key: str) -> None:
        """The host has nothing in flight: its rules join the idle ones, whose oldest are let
        go beyond the budget."""
        known = self._robots.get(host_key)
        if known is None or not known.done() or known.cancelled():
            return
        weight = known.result().weight + _IDLE_ENTRY_BYTES
        self._robots_idle[host_key] = weight
        self._robots_idle_weight += weight
        while self._robots_idle_weight > _IDLE_ROBOTS_BYTES:
            oldest, weight = self._robots_idle.popitem(last=False)
            self._robots_idle_weight -= weight
            self._robots.pop(oldest, None)
            self._robots_until.pop(oldest, None)

    async def _robots_rules(
        self, parts: UrlParts, slot: HostSlot, asked: bool = True
    ) -> RobotRules:
        """The host's robots.txt rules, fetched once (politely, through its slot; again after
        ``breaker_cooldown`` if it could not be read); its
        Crawl-delay becomes the host's gap, counted from the robots.txt request itself.
        ``asked`` False: the host is a redirect's target, not the origin a URL asked for, so
        the request carries none of the caller's origin-only headers."""
        key = parts.host_key
        known = self._robots.get(key)
        now = asyncio.get_running_loop().time()
        if known is None or now >= self._robots_until.get(key, now + 1):
            self._robots_until.pop(key, None)
            known = self._robots[key] = asyncio.ensure_future(
                self._fetch_robots(parts, slot, asked)
            )
        rules = await asyncio.shield(known)
        if (
            rules.unreachable is not None
            and self._robots.get(key) is known
            and key not in self._robots_until
        ):
            wait = max(self.request_strategy.breaker_cooldown, 1.0)
            self._robots_until[key] = asyncio.get_running_loop().time() + wait
        if rules.crawl_delay:
            slot.slow_to(self._crawl_gap(rules, key))
        return rules

    async def _fetch_robots(self, parts: UrlParts, slot: HostSlot, asked: bool) -> RobotRules:
        origin = (parts.scheme, parts.authority)
        url = f"{parts.scheme}://{parts.authority}/robots.txt"
        target = split_url(url)
        rs = self.request_strategy
        worker = self._worker_slots()
        await slot.enter(worker, breaker=False)  # the rules are wanted even while it is open
        limit = time_limit(rs.max_time) or time_limit(rs.timeout)
        try:
            async with asyncio.timeout(limit):
                return await self._read_robots(url, target, origin, asked, slot)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # No answer: robots.txt is unreachable, which RFC 9309 reads as "disallow all".
            # Its URLs' failures name the cause: a host that is down is not blamed on robots.
            why = "timed out" if type(exc) is TimeoutError else classify(exc, url)[1]
            return rules_from_response(None, b"", effective_user_agent(rs), why)
        finally:
            slot.leave(worker)

    async def _read_robots(
        self,
        url: str,
        target: UrlParts,
        origin: tuple[str, str],
        asked: bool,
        slot: HostSlot,
    ) -> RobotRules:
        rs = self.request_strategy
        for _ in range(_ROBOTS_MAX_HOPS + 1):
            same_origin = asked and (target.scheme, target.authority) == origin
            # Its start is the host's first: a slow connect must not shorten a
            # Crawl-delay counted from it.
            request = self._request(url, target, same_origin=same_origin, went=slot.went)
            async with request as response:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location is not None:
                    url, target = redirect_target(url, location)
                    continue
                # read(n) returns what is buffered (on aiohttp), not n bytes: gather them.
                body = bytearray()
                async for piece in response.content.iter_chunked(READ_SIZE):
                    body += piece
                    if len(body) >= _ROBOTS_MAX_BYTES:
                        break
                if len(body) >= _ROBOTS_MAX_BYTES:
                    # Past the cap is ignored (RFC 9309 2.5), and so is the line the cap
                    # cuts: "Disallow: /private" cut to "Disallow: /" would refuse all.
                    del body[body.rfind(b"\n", 0, _ROBOTS_MAX_BYTES + 1) + 1 :]
                return rules_from_response(response.status, bytes(body), effective_user_agent(rs))
        return ALLOW_ALL  # a redirect loop: robots.txt unavailable (RFC 9309)
