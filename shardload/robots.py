"""robots.txt rules for one host: a pure wrapper around the standard library's parser.

Policy: a robots.txt that is missing (4xx) or unreadable (5xx, network error, not text)
allows everything, as most crawlers do; the rules are read for our user agent (the product
token before the first '/'), falling back to '*'. Crawl-delay becomes the host's minimum delay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from urllib.robotparser import RobotFileParser


@dataclass(frozen=True)
class RobotRules:
    text: str = ""
    user_agent: str = "*"

    def __post_init__(self) -> None:
        parser = None
        if self.text:
            # Imported here: urllib.request comes with it, ~10 ms of every worker's start
            # that a crawl without robots.txt never needs.
            from urllib.robotparser import RobotFileParser  # noqa: PLC0415

            parser = RobotFileParser()
            parser.parse(self.text.splitlines())
            parser.modified()  # the stdlib answers crawl_delay() only once a read time is set
        object.__setattr__(self, "_parser", parser)  # parsed once per host, not per URL
        object.__setattr__(self, "_crawl_delay", self._find_crawl_delay())

    _parser: RobotFileParser | None = field(init=False, repr=False, compare=False)
    _crawl_delay: float | None = field(init=False, repr=False, compare=False)

    def allows(self, url: str) -> bool:
        if self._parser is None:
            return True
        return self._parser.can_fetch(self.agent, url)

    @property
    def agent(self) -> str:
        return self.user_agent.split("/", 1)[0].strip() or "*"

    @property
    def crawl_delay(self) -> float | None:
        """Crawl-delay for our agent (else ``*``); fractions allowed, unlike the stdlib's."""
        return self._crawl_delay

    def _find_crawl_delay(self) -> float | None:
        delays = _crawl_delays(self.text)
        agent = self.agent.lower()
        for name, delay in delays.items():
            if name != "*" and name in agent:
                return delay
        return delays.get("*")


def _crawl_delays(text: str) -> dict[str, float]:
    """Crawl-delay per user-agent token, from the groups of a robots.txt."""
    delays: dict[str, float] = {}
    group: list[str] = []
    in_agents = False
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        field_name, value = (part.strip() for part in line.split(":", 1))
        field_name = field_name.lower()
        if field_name == "user-agent":
            group = [*group, value.lower()] if in_agents else [value.lower()]
            in_agents = True
            continue
        in_agents = False
        if field_name == "crawl-delay":
            try:
                delay = float(value)
            except ValueError:
                continue
            if math.isfinite(delay) and delay >= 0:
                for agent in group:
                    delays.setdefault(agent, delay)
    return delays


ALLOW_ALL = RobotRules()


def rules_from_response(status: int | None, body: bytes, user_agent: str) -> RobotRules:
    """The rules to apply given how fetching /robots.txt went."""
    if status is None or not 200 <= status < 300:
        return ALLOW_ALL
    return RobotRules(body.decode("utf-8", "replace"), user_agent)
