"""Repeats of one request: downloaded once, answered for every bundle that asks (DESIGN rule
4). Pure bookkeeping, no IO.

A request is its URL and preset path (``Request``; bundles with params are never matched).
The first bundle of a request leads it. Repeats that come while it is pending follow it and
get its result; repeats that come later get the result kept for the last ``window`` distinct
requests answered (beyond that the request is downloaded again).

Invariants: a request has at most one leader, from ``lead`` until ``settle``; ``following``
is the number of bundles waiting behind leaders (they are held in memory: rule 5).
"""

from __future__ import annotations

from collections import OrderedDict

from .bundle import Bundle, Result

Request = tuple[str, str | None]  # URL, preset path


class Repeats:
    def __init__(self, window: int) -> None:
        self.window = window
        self.following = 0
        self._leaders: dict[Request, int] = {}  # a pending request: its leader's seq
        self._followers: dict[int, list[Bundle]] = {}  # a leader's seq: its repeats
        self._answered: OrderedDict[Request, Result] = OrderedDict()

    def follow(self, request: Request, bundle: Bundle) -> bool:
        """Whether the request is pending: the bundle then waits for its leader's result."""
        leader = self._leaders.get(request)
        if leader is None:
            return False
        self._followers.setdefault(leader, []).append(bundle)
        self.following += 1
        return True

    def answer(self, request: Request) -> Result | None:
        """The result kept from the request's last answer, if it is still remembered."""
        known = self._answered.get(request)
        if known is not None:
            self._answered.move_to_end(request)
        return known

    def lead(self, request: Request, seq: int) -> None:
        self._leaders[request] = seq

    def settle(self, request: Request, seq: int, result: Result | None) -> list[Bundle]:
        """The leader ``seq`` is answered (``None``: it failed without a result to share,
        a worker crash): the bundles that followed it, and the result kept for later repeats."""
        del self._leaders[request]
        if result is not None:
            self._answered[request] = result
            if len(self._answered) > self.window:
                self._answered.popitem(last=False)
        done = self._followers.pop(seq, [])
        self.following -= len(done)
        return done
