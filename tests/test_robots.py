"""robots.txt policy (pure)."""

from __future__ import annotations

import pytest

from shardload.robots import ALLOW_ALL, RobotRules, rules_from_response

TEXT = """
# comment
User-agent: slowbot
User-agent: otherbot
Crawl-delay: 2.5
Disallow: /slow/

User-agent: *
Crawl-delay: 0.3
Disallow: /private/
"""


@pytest.mark.parametrize(
    ("agent", "url", "allowed", "delay"),
    [
        ("shardload/0.1", "http://h/private/x", False, 0.3),
        ("shardload/0.1", "http://h/public/x", True, 0.3),
        ("SlowBot/1.0 (+x)", "http://h/slow/x", False, 2.5),
        ("otherbot", "http://h/private/x", True, 2.5),
    ],
)
def test_rules_for_agents(agent, url, allowed, delay):
    rules = RobotRules(TEXT, agent)
    assert rules.allows(url) is allowed
    assert rules.crawl_delay == delay


@pytest.mark.parametrize(
    ("status", "body"), [(404, b"User-agent: *\nDisallow: /"), (500, b""), (None, b"")]
)
def test_missing_or_unreadable_robots_allow_everything(status, body):
    rules = rules_from_response(status, body, "x")
    assert rules == ALLOW_ALL and rules.allows("http://h/any") and rules.crawl_delay is None


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", ""])
def test_bad_crawl_delay_is_ignored(value):
    assert RobotRules(f"User-agent: *\nCrawl-delay: {value}\n", "x").crawl_delay is None


def test_crawl_delay_is_read_once_per_host(monkeypatch):
    """The engine asks for it on every request to the host: it must not re-parse the text."""
    from shardload import robots

    calls = []
    real = robots._crawl_delays

    def counting(text):
        calls.append(text)
        return real(text)

    monkeypatch.setattr(robots, "_crawl_delays", counting)
    rules = RobotRules(TEXT, "slowbot/1.0")
    assert [rules.crawl_delay for _ in range(3)] == [2.5, 2.5, 2.5]
    assert len(calls) == 1
