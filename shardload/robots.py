"""robots.txt rules for one host, matched as RFC 9309 says (pure: no IO).

Policy, by how fetching /robots.txt went (``rules_from_response``):

- 2xx: the body is the rules. It is decoded leniently (UTF-8, bad bytes replaced) because a
  stray byte must not turn a site's Disallow lines into "allow everything".
- 4xx but 429: robots.txt is *unavailable*, and RFC 9309 lets a crawler access anything.
- 429, 5xx, or no answer at all: robots.txt is *unreachable*, and RFC 9309 asks a crawler
  to assume a complete disallow: a site that is failing must not be crawled harder because
  its robots.txt failed too. Such rules carry the reason, so a skipped URL says why.
- Anything else (a 1xx or 3xx the caller gave up following): unavailable, like a 4xx.

Invariants, and why:

- The text is parsed once, when the rules are made: a host's rules are asked about on every
  request to it, so ``allows`` and ``crawl_delay`` only read what ``__post_init__`` stored.
  Only the groups for our agent are kept, pre-normalised and sorted by precedence, so a
  lookup is the first matching rule of a short list.
- Groups are chosen by *equality* of the product token (case-insensitive), never by
  substring: ``User-agent: shard`` must not capture ``shardload``. All groups naming us are
  merged; only when none does are the ``*`` groups used (merged too); with neither, all is
  allowed. Crawl-delay comes from the chosen groups alone, so a ``*`` delay does not slow a
  crawler the site gave its own group.
- The most specific rule wins: the longest (normalised) pattern, ``*`` and ``$`` counted;
  on equal length Allow beats Disallow, as the RFC prefers the less restrictive rule.
- Percent-encoding is compared in one canonical form, applied alike to patterns and to the
  URL's path and query: ``%XX`` of an unreserved character (letters, digits, ``-._~``) is
  decoded, any other ``%XX`` has its hex upper-cased, a ``%`` not starting ``%XX`` becomes
  ``%25``, and any other character a URI cannot hold as it is (a space, ``<``, a control
  or non-ASCII character) is written as the ``%XX`` of its UTF-8 bytes. So ``/a%3cd``,
  ``/a%3Cd`` and ``/a<d`` are one path, and ``/%62`` is ``/b``; reserved characters
  (``/?=&:``...) are left as they are, since encoding them changes their meaning.
- ``*`` matches any run of characters and a final ``$`` anchors the end; a ``$`` elsewhere
  is literal. Matching finds each literal piece left-most in turn (with ``str.find``), which
  is exact for such patterns and never backtracks, so a hostile pattern like ``/*a*a*a*b``
  costs a few linear scans, not exponential time. At most ``_MAX_RULES`` rules are kept
  for our agent (the first ones in the file); the caller caps the text's size.
- An empty Allow or Disallow matches nothing. ``/robots.txt`` itself is always allowed,
  unreachable rules included: refusing it would forbid the one fetch that can lift them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple
from urllib.parse import urlsplit

from .urls import normal_escape

_MAX_RULES = 10_000  # rules kept for our agent; beyond it a file is pathological
# A well-formed %XX, or a character a URI cannot hold as it is: neither unreserved nor
# reserved (RFC 3986), so a stray '%', a space, '<', a control or non-ASCII character.
_TO_NORMALISE = re.compile(r"%([0-9A-Fa-f]{2})|[^A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# A browser-style user agent names its bot after "compatible;", first in its comment or not
# ("(KHTML, like Gecko; compatible; Googlebot/2.1; ...)"). RFC 9309 2.2.1 gives a product
# token letters, "_" and "-"; real ones hold digits too (MJ12bot), as robots.txt writes them.
_COMPATIBLE = re.compile(r"[(;]\s*compatible\s*;\s*([A-Za-z0-9_-]+)", re.IGNORECASE)


class _Rule(NamedTuple):
    """One Allow/Disallow pattern, split on ``*`` into the literal pieces it must contain."""

    length: int  # of the normalised pattern, '*' and '$' counted: its precedence
    allow: bool
    pieces: tuple[str, ...]  # at least one; the first must start the path
    anchored: bool  # a trailing '$': the last piece must end the path

    def matches(self, path: str) -> bool:
        first = self.pieces[0]
        if not path.startswith(first):
            return False
        if len(self.pieces) == 1:
            return not self.anchored or len(path) == len(first)
        pos = len(first)
        for piece in self.pieces[1:-1]:
            found = path.find(piece, pos)
            if found < 0:
                return False
            pos = found + len(piece)
        last = self.pieces[-1]
        if self.anchored:
            return len(path) - pos >= len(last) and path.endswith(last)
        return path.find(last, pos) >= 0


@dataclass(frozen=True)
class RobotRules:
    """A host's rules for ``user_agent``; ``unreachable`` (say ``"HTTP 503"``) when its
    robots.txt could not be read, which disallows every URL but /robots.txt itself."""

    text: str = ""
    user_agent: str = "*"
    unreachable: str | None = None

    # Parsed once per host, never per URL (see the module's invariants).
    _rules: tuple[_Rule, ...] = field(init=False, repr=False, compare=False)
    _crawl_delay: float | None = field(init=False, repr=False, compare=False)
    _weight: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rules: tuple[_Rule, ...] = ()
        delay: float | None = None
        if self.text and self.unreachable is None:
            rules, delay = _parse(self.text, self.agent)
        object.__setattr__(self, "_rules", rules)
        object.__setattr__(self, "_crawl_delay", delay)
        pieces = sum(len(piece) + 56 for rule in rules for piece in rule.pieces)
        object.__setattr__(self, "_weight", 200 + 2 * len(self.text) + 120 * len(rules) + pieces)

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.path == "/robots.txt":
            return True
        if self.unreachable is not None:
            return False
        if not self._rules:
            return True
        path = _normalise(parts.path or "/")
        if parts.query or "?" in url.split("#", 1)[0]:  # "/a?" is not "/a": keep its '?'
            path += "?" + _normalise(parts.query)
        for rule in self._rules:  # sorted by precedence: the first match is the best
            if rule.matches(path):
                return rule.allow
        return True

    @property
    def weight(self) -> int:
        """Roughly the bytes these rules hold in memory (the text, and each parsed rule)."""
        return self._weight

    @property
    def agent(self) -> str:
        """Our product token: the bot a browser-style user agent names as compatible
        (``Mozilla/5.0 (compatible; MyBot/1.0)``: ``MyBot``, as Googlebot's does), else the
        user agent before its first '/', or ``*``."""
        named = _COMPATIBLE.search(self.user_agent)
        if named is not None:
            return named.group(1)
        return self.user_agent.split("/", 1)[0].strip() or "*"

    @property
    def crawl_delay(self) -> float | None:
        """Crawl-delay of the chosen group(s); fractions allowed, unlike the stdlib's."""
        return self._crawl_delay

    @property
    def refusal(self) -> str:
        """Why a URL these rules do not allow is skipped."""
        if self.unreachable is not None:
            return (
                f"robots.txt unreachable ({self.unreachable}): "
                "every URL of the host is disallowed (RFC 9309)"
            )
        return f"disallowed by robots.txt for {self.agent}"


def _normalise(text: str) -> str:
    """The canonical percent-encoding of a path, query or pattern (see the module)."""

    def one(match: re.Match[str]) -> str:
        hex_digits = match.group(1)
        if hex_digits is not None:
            return normal_escape(hex_digits)
        raw = match.group(0).encode("utf-8", "surrogatepass")
        return "".join(f"%{byte:02X}" for byte in raw)

    return _TO_NORMALISE.sub(one, text)


def _compile(value: str, allow: bool) -> _Rule | None:
    pattern = _normalise(value)
    if not pattern:
        return None  # an empty Allow/Disallow matches nothing
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    return _Rule(len(pattern), allow, tuple(body.split("*")), anchored)


class _Group(NamedTuple):
    agents: list[str]
    rules: list[tuple[bool, str]]  # (allow, pattern as written)
    delays: list[str]


def _groups(text: str) -> list[_Group]:
    """The groups of a robots.txt, in file order; records outside any group are dropped."""
    groups: list[_Group] = []
    current: _Group | None = None
    in_agents = False  # the last record was a user-agent line: another one joins the group
    for raw in _LINE_BREAK.split(text.removeprefix("\ufeff")):
        key, colon, value = raw.split("#", 1)[0].partition(":")
        if not colon:
            continue
        key = key.strip().lower()
        value = value.strip()
        if key == "user-agent":
            if current is None or not in_agents:
                current = _Group([], [], [])
                groups.append(current)
            current.agents.append(value.split("/", 1)[0].strip().lower())
            in_agents = True
        elif key in {"allow", "disallow", "crawl-delay"}:
            in_agents = False
            if current is None:
                continue  # a rule before any user-agent line belongs to no group
            if key == "crawl-delay":
                current.delays.append(value)
            else:
                current.rules.append((key == "allow", value))
        # Other records (sitemap, unknown keys) neither end a group nor belong to one.
    return groups


def _parse(text: str, agent: str) -> tuple[tuple[_Rule, ...], float | None]:
    """The rules for ``agent``, by precedence, and its Crawl-delay."""
    groups = _groups(text)
    ours = agent.lower()
    chosen = [group for group in groups if ours != "*" and ours in group.agents]
    if not chosen:
        chosen = [group for group in groups if "*" in group.agents]
    rules: list[_Rule] = []
    for allow, value in (pair for group in chosen for pair in group.rules):
        if len(rules) == _MAX_RULES:
            break
        rule = _compile(value, allow)
        if rule is not None:
            rules.append(rule)
    # Longest first; on equal length, Allow (True) before Disallow. sort() is stable.
    rules.sort(key=lambda rule: (rule.length, rule.allow), reverse=True)
    delays = (_delay(value) for group in chosen for value in group.delays)
    return tuple(rules), next((delay for delay in delays if delay is not None), None)


def _delay(value: str) -> float | None:
    try:
        delay = float(value)
    except ValueError:
        return None
    # "inf" (or 1e999) asks for the slowest crawl: it is capped where used, as a huge number is.
    return delay if delay >= 0 else None  # NaN and negatives say nothing


ALLOW_ALL = RobotRules()


def rules_from_response(
    status: int | None, body: bytes, user_agent: str, why: str | None = None
) -> RobotRules:
    """The rules to apply given how fetching /robots.txt went (see the module's policy);
    ``why`` says what kept it from answering, where it did not."""
    if status is None:
        return RobotRules(
            user_agent=user_agent, unreachable="no answer" + (f": {why}" if why else "")
        )
    if 200 <= status < 300:
        return RobotRules(body.decode("utf-8", "replace"), user_agent)
    if status == 429 or 500 <= status < 600:
        return RobotRules(user_agent=user_agent, unreachable=f"HTTP {status}")
    return ALLOW_ALL  # 4xx: unavailable; 1xx/3xx left over: treated as unavailable too
