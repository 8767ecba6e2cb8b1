"""robots.txt policy and RFC 9309 matching (pure)."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shardload import robots
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
        ("otherbot", "http://h/private/x", True, 2.5),  # its own group: '*' no longer applies
        ("otherbot", "http://h/slow/x", False, 2.5),  # multiple agents in one group
    ],
)
def test_rules_for_agents(agent, url, allowed, delay):
    rules = RobotRules(TEXT, agent)
    assert rules.allows(url) is allowed
    assert rules.crawl_delay == delay


@pytest.mark.parametrize(
    ("user_agent", "token"),
    [
        ("shardload/0.1 (+https://example.org/bot)", "shardload"),
        ("MyBot", "MyBot"),
        ("Mozilla/5.0 (compatible; MyBot/1.0; +http://example.org/bot.html)", "MyBot"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "Googlebot"),
        ("Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0", "Mozilla"),
        ("Mozilla/5.0 (compatible; MJ12bot/v1.4.8; http://mj12bot.com/)", "MJ12bot"),
        (
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1;"
            " +http://www.google.com/bot.html) Chrome/120 Safari/537.36",
            "Googlebot",
        ),
        ("", "*"),
    ],
)
def test_the_product_token_of_a_user_agent(user_agent, token):
    """A browser-style agent was matched as Mozilla, never as the bot it names."""
    assert RobotRules("", user_agent).agent == token


def test_a_browser_style_user_agent_gets_its_bots_group():
    body = "User-agent: MyBot\nDisallow: /private\n\nUser-agent: *\nDisallow: /"
    rules = RobotRules(body, "Mozilla/5.0 (compatible; MyBot/1.0)")
    assert rules.allows("http://h/public") and not rules.allows("http://h/private/x")


def _rules(body: str, agent: str = "shardload/1.0") -> RobotRules:
    return RobotRules(body, agent)


@pytest.mark.parametrize(
    ("body", "path", "allowed"),
    [
        # plain prefixes
        ("User-agent: *\nDisallow: /a", "/a", False),
        ("User-agent: *\nDisallow: /a", "/abc/d", False),
        ("User-agent: *\nDisallow: /a", "/b", True),
        ("User-agent: *\nDisallow: /", "/", False),
        ("User-agent: *\nDisallow: /", "", False),  # an empty path is '/'
        ("User-agent: *\nDisallow: /x/", "/x", True),
        # wildcards
        ("User-agent: *\nDisallow: /*.pdf$", "/docs/a.pdf", False),
        ("User-agent: *\nDisallow: /*.pdf$", "/docs/a.pdf?x=1", True),
        ("User-agent: *\nDisallow: /*.pdf$", "/docs/a.pdfx", True),
        ("User-agent: *\nDisallow: /*.pdf", "/docs/a.pdfx", False),
        ("User-agent: *\nDisallow: /a/*/secret", "/a/b/c/secret/d", False),
        ("User-agent: *\nDisallow: /a/*/secret", "/a/secret", True),
        ("User-agent: *\nDisallow: /a/*/secret", "/a//secret", False),
        ("User-agent: *\nDisallow: /*a*a*a*a*a*a*b", "/" + "a" * 300, True),
        ("User-agent: *\nDisallow: /**x", "/yyx", False),
        ("User-agent: *\nDisallow: *", "/anything", False),
        # the '$' anchor
        ("User-agent: *\nDisallow: /a$", "/a", False),
        ("User-agent: *\nDisallow: /a$", "/ab", True),
        ("User-agent: *\nDisallow: /a$", "/a?q", True),
        ("User-agent: *\nDisallow: /$", "/", False),
        ("User-agent: *\nDisallow: /$", "/x", True),
        ("User-agent: *\nDisallow: /a$b", "/a$bc", False),  # '$' inside is literal
        ("User-agent: *\nDisallow: /a*$", "/a/anything", False),
        # longest match, Allow winning ties
        ("User-agent: *\nDisallow: /ok\nAllow: /ok/yes", "/ok/yes", True),
        ("User-agent: *\nDisallow: /ok\nAllow: /ok/yes", "/ok/no", False),
        ("User-agent: *\nAllow: /ok\nDisallow: /ok/no", "/ok/no", False),
        ("User-agent: *\nAllow: /ok\nDisallow: /ok/no", "/ok/yes", True),
        ("User-agent: *\nDisallow: /p\nAllow: /p", "/page", True),
        ("User-agent: *\nAllow: /p\nDisallow: /p", "/page", True),
        ("User-agent: *\nDisallow: /p*\nAllow: /p$", "/p", True),  # as long: a tie
        ("User-agent: *\nDisallow: /p**\nAllow: /p$", "/p", False),  # longer
        ("User-agent: *\nDisallow: /*.php\nAllow: /page.php$", "/page.php", True),
        ("User-agent: *\nAllow: /$\nDisallow: /", "/", True),
        ("User-agent: *\nAllow: /$\nDisallow: /", "/x", False),
        # empty rules
        ("User-agent: *\nDisallow:", "/x", True),
        ("User-agent: *\nDisallow:   # nothing", "/x", True),
        ("User-agent: *\nAllow:\nDisallow: /x", "/x", False),
        # query strings
        ("User-agent: *\nDisallow: /*?session=", "/a?session=1", False),
        ("User-agent: *\nDisallow: /*?session=", "/a?x=1&session=1", True),
        ("User-agent: *\nDisallow: /*session=", "/a?x=1&session=1", False),
        ("User-agent: *\nDisallow: /*?session=", "/a/session=1", True),
        ("User-agent: *\nDisallow: /a?", "/a?b", False),
        ("User-agent: *\nDisallow: /a?", "/a", True),
        ("User-agent: *\nDisallow: /a?", "/a?", False),  # an empty query keeps its '?'
        ("User-agent: *\nDisallow: /a?", "/a#?", True),
        # percent-encoding equivalence
        ("User-agent: *\nDisallow: /a%3cd", "/a%3Cd", False),
        ("User-agent: *\nDisallow: /a%3Cd", "/a%3cd", False),
        ("User-agent: *\nDisallow: /a%3Cd", "/a<d", False),
        ("User-agent: *\nDisallow: /%62%61%7A", "/baz", False),  # RFC 9309 2.2.2
        ("User-agent: *\nDisallow: /baz", "/%62%61%7a", False),
        ("User-agent: *\nDisallow: /foo/bar/\u30c4", "/foo/bar/%E3%83%84", False),
        ("User-agent: *\nDisallow: /foo/bar/%E3%83%84", "/foo/bar/\u30c4", False),
        ("User-agent: *\nDisallow: /a b", "/a%20b", False),
        ("User-agent: *\nDisallow: /a%7Cb", "/a|b", False),
        ("User-agent: *\nDisallow: /a%7e", "/a~", False),
        ("User-agent: *\nDisallow: /a%2F", "/a/", True),  # an encoded '/' stays distinct
        ("User-agent: *\nDisallow: /100%", "/100%25", False),  # a stray '%' is literal
        # comments, BOM, line breaks, key spelling
        ("\ufeffUser-agent: *\nDisallow: /x", "/x", False),
        ("User-agent: *\r\nDisallow: /x\r\n", "/x", False),
        ("User-agent: *\rDisallow: /x\r", "/x", False),
        ("# User-agent: *\n# Disallow: /x", "/x", True),
        ("User-agent: * # all\nDisallow: /x#y", "/x", False),
        ("USER-AGENT : *\nDISALLOW :/x", "/x", False),
        ("user-agent:*\ndisallow:/x", "/x", False),
        ("User-agent: *\nSitemap: http://h/s.xml\nDisallow: /x", "/x", False),
        ("User-agent: *\nNoindex: /x\nDisallow: /y", "/x", True),
        ("Disallow: /x\nUser-agent: *\nDisallow: /y", "/x", True),  # before any group
        ("Disallow: /x\nUser-agent: *\nDisallow: /y", "/y", False),
        ("User-agent: *\nno colon /x\nDisallow /x", "/x", True),
        # /robots.txt itself is always allowed
        ("User-agent: *\nDisallow: /", "/robots.txt", True),
        ("User-agent: *\nDisallow: /robots.txt", "/robots.txt", True),
        # the fragment is not part of the path
        ("User-agent: *\nDisallow: /a$", "/a#frag", False),
        # nothing for us, or no rules at all
        ("", "/x", True),
        ("User-agent: other\nDisallow: /", "/x", True),
    ],
)
def test_matching(body, path, allowed):
    assert _rules(body).allows(f"http://h:8080{path}") is allowed


@pytest.mark.parametrize(
    ("body", "agent", "path", "allowed"),
    [
        # exact, case-insensitive product token: no substring match either way
        ("User-agent: ShardLoad\nDisallow: /", "shardload/1.0", "/x", False),
        ("User-agent: shard\nDisallow: /", "shardload/1.0", "/x", True),
        ("User-agent: shardloadbot\nDisallow: /", "shardload/1.0", "/x", True),
        ("User-agent: shardload/2.0\nDisallow: /", "ShardLoad/1.0 (+x)", "/x", False),
        # our group wins over '*', which no longer applies at all
        (
            "User-agent: *\nDisallow: /\n\nUser-agent: shardload\nDisallow: /mine",
            "shardload",
            "/x",
            True,
        ),
        (
            "User-agent: *\nDisallow: /\n\nUser-agent: shardload\nDisallow: /mine",
            "shardload",
            "/mine",
            False,
        ),
        # fallback to '*'
        (
            "User-agent: other\nDisallow: /\n\nUser-agent: *\nDisallow: /star",
            "shardload",
            "/star",
            False,
        ),
        (
            "User-agent: other\nDisallow: /\n\nUser-agent: *\nDisallow: /star",
            "shardload",
            "/x",
            True,
        ),
        # duplicate groups are merged
        (
            "User-agent: *\nDisallow: /a\n\nUser-agent: b\nDisallow: /\n\nUser-agent: *\n"
            "Disallow: /c",
            "shardload",
            "/c",
            False,
        ),
        (
            "User-agent: *\nDisallow: /a\n\nUser-agent: b\nDisallow: /\n\nUser-agent: *\n"
            "Disallow: /c",
            "shardload",
            "/a",
            False,
        ),
        (
            "User-agent: ShardLoad\nDisallow: /a\nUser-agent: shardload\nAllow: /a/b",
            "shardload",
            "/a/b",
            True,
        ),
        # several agents in one group; a user-agent after rules starts a new group
        (
            "User-agent: a\nUser-agent: shardload\nUser-agent: c\nDisallow: /x",
            "shardload",
            "/x",
            False,
        ),
        (
            "User-agent: shardload\nDisallow: /x\nUser-agent: other\nDisallow: /y",
            "shardload",
            "/y",
            True,
        ),
        # a sitemap line does not split the agents of a group
        (
            "User-agent: a\nSitemap: /s.xml\nUser-agent: shardload\nDisallow: /x",
            "shardload",
            "/x",
            False,
        ),
        # our agent is '*' when the user agent has no product token
        ("User-agent: *\nDisallow: /x", "/1.0", "/x", False),
        ("User-agent: *\nDisallow: /x", "", "/x", False),
    ],
)
def test_group_selection(body, agent, path, allowed):
    assert RobotRules(body, agent).allows(f"http://h{path}") is allowed


@pytest.mark.parametrize(
    ("user_agent", "agent"),
    [("shardload/0.1", "shardload"), (" Shard Load /2", "Shard Load"), ("", "*"), ("/x", "*")],
)
def test_agent_is_the_product_token(user_agent, agent):
    assert RobotRules("", user_agent).agent == agent


@pytest.mark.parametrize(
    ("body", "agent", "delay"),
    [
        ("User-agent: *\nCrawl-delay: 0.25", "x", 0.25),
        ("User-agent: *\nCrawl-delay: 3", "x", 3.0),
        ("User-agent: *\nCrawl-delay: 0", "x", 0.0),
        ("User-agent: *\nCrawl-delay: abc\nCrawl-delay: 2", "x", 2.0),  # first valid value
        ("User-agent: *\nCrawl-delay: 1\nCrawl-delay: 2", "x", 1.0),
        ("User-agent: *\nDisallow: /\n\nUser-agent: *\nCrawl-delay: 4", "x", 4.0),  # merged
        # our own group has none: the '*' one does not apply
        ("User-agent: *\nCrawl-delay: 5\n\nUser-agent: x\nDisallow: /a", "x/1", None),
        ("User-agent: *\nCrawl-delay: 5\n\nUser-agent: x\nCrawl-delay: 1.5", "x/1", 1.5),
        ("User-agent: y\nCrawl-delay: 5", "x", None),
        ("Crawl-delay: 5\nUser-agent: *\nDisallow: /", "x", None),  # before any group
        ("", "x", None),
    ],
)
def test_crawl_delay_selection(body, agent, delay):
    assert RobotRules(body, agent).crawl_delay == delay


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "-inf", "", "1,5"])
def test_bad_crawl_delay_is_ignored(value):
    assert RobotRules(f"User-agent: *\nCrawl-delay: {value}\n", "x").crawl_delay is None


@pytest.mark.parametrize("value", ["inf", "Infinity", "1e999"])
def test_an_endless_crawl_delay_asks_for_the_slowest_crawl(value):
    """Not ignored (which crawled at full speed): the engine caps it at retry_after_cap."""
    assert RobotRules(f"User-agent: *\nCrawl-delay: {value}\n", "x").crawl_delay == math.inf


def test_rules_are_parsed_once_per_host(monkeypatch):
    """The engine asks on every request to the host: it must not re-parse the text."""
    calls = []
    real = robots._parse

    def counting(text, agent):
        calls.append(text)
        return real(text, agent)

    monkeypatch.setattr(robots, "_parse", counting)
    rules = RobotRules(TEXT, "slowbot/1.0")
    assert [rules.crawl_delay for _ in range(3)] == [2.5, 2.5, 2.5]
    assert [rules.allows("http://h/slow/x") for _ in range(3)] == [False] * 3
    assert len(calls) == 1


def test_rules_are_frozen_and_compare_by_input():
    rules = RobotRules(TEXT, "x")
    assert rules == RobotRules(TEXT, "x") and rules != RobotRules(TEXT, "y")
    with pytest.raises(AttributeError):
        rules.text = ""  # type: ignore[misc]


def test_pathological_rule_counts_are_capped(monkeypatch):
    monkeypatch.setattr(robots, "_MAX_RULES", 3)
    body = "User-agent: *\n" + "".join(f"Disallow: /{i}\n" for i in range(10))
    rules = RobotRules(body, "x")
    assert not rules.allows("http://h/2") and rules.allows("http://h/3")


# rules_from_response: every status class


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, b"User-agent: *\nDisallow: /"),
        (401, b""),
        (403, b""),
        (410, b""),
        (499, b""),
        (100, b""),
        (301, b"User-agent: *\nDisallow: /"),
        (399, b""),
    ],
)
def test_unavailable_robots_allow_everything(status, body):
    rules = rules_from_response(status, body, "x")
    assert rules == ALLOW_ALL and rules.allows("http://h/any") and rules.crawl_delay is None
    assert rules.unreachable is None
    assert rules.refusal == "disallowed by robots.txt for *"


@pytest.mark.parametrize(
    ("status", "what"),
    [
        (429, "HTTP 429"),
        (500, "HTTP 500"),
        (503, "HTTP 503"),
        (599, "HTTP 599"),
        (None, "no answer"),
    ],
)
def test_unreachable_robots_disallow_everything(status, what):
    rules = rules_from_response(status, b"User-agent: *\nAllow: /", "shardload/1.0")
    assert rules.unreachable == what
    assert rules.agent == "shardload"
    for url in ["http://h/", "http://h/any", "http://h/x?y=1", "http://h"]:
        assert not rules.allows(url)
    assert rules.allows("http://h/robots.txt")  # refetching it is how the rules lift
    assert rules.crawl_delay is None
    assert rules.refusal == (
        f"robots.txt unreachable ({what}): every URL of the host is disallowed (RFC 9309)"
    )
    assert rules != ALLOW_ALL


@pytest.mark.parametrize("status", [200, 203, 299])
def test_success_parses_the_body(status):
    rules = rules_from_response(status, b"User-agent: *\nDisallow: /p\xff/\nCrawl-delay: 1", "x/2")
    assert not rules.allows("http://h/p%EF%BF%BD/x")  # a bad byte is replaced, not fatal
    assert rules.allows("http://h/q")
    assert rules.crawl_delay == 1.0
    assert rules.refusal == "disallowed by robots.txt for x"


def test_success_with_a_bom_and_crlf():
    rules = rules_from_response(200, b"\xef\xbb\xbfUser-agent: *\r\nDisallow: /x\r\n", "x")
    assert not rules.allows("http://h/x")


def test_refusal_texts():
    assert RobotRules("", "ShardLoad/1.0").refusal == "disallowed by robots.txt for ShardLoad"
    assert ALLOW_ALL.refusal == "disallowed by robots.txt for *"
    assert RobotRules(unreachable="HTTP 503").refusal == (
        "robots.txt unreachable (HTTP 503): every URL of the host is disallowed (RFC 9309)"
    )


# properties

_PATH = st.text(alphabet="ab/.?=", max_size=12).map(lambda rest: "/" + rest)
_LITERAL = st.text(alphabet="ab/.?=", max_size=6).map(lambda rest: "/" + rest)
_PATTERN = st.text(alphabet="ab/.?=*", max_size=8).flatmap(
    lambda body: st.sampled_from(["/" + body, "/" + body + "$"])
)
_RULE = st.tuples(st.booleans(), _PATTERN)


def _oracle(rules: list[tuple[bool, str]], path: str) -> bool:
    """Every matching rule found by regex, the longest winning, Allow breaking ties."""
    best: tuple[int, bool] | None = None
    for allow, pattern in rules:
        anchored = pattern.endswith("$")
        body = pattern[:-1] if anchored else pattern
        regex = ".*".join(re.escape(piece) for piece in body.split("*"))
        found = re.fullmatch(regex, path) if anchored else re.match(regex, path)
        if found and (best is None or (len(pattern), allow) > best):
            best = (len(pattern), allow)
    return best is None or best[1]


def _body(rules: list[tuple[bool, str]]) -> str:
    lines = [f"{'Allow' if allow else 'Disallow'}: {pattern}" for allow, pattern in rules]
    return "User-agent: *\n" + "\n".join(lines)


@given(st.lists(_RULE, max_size=6), _PATH)
def test_matching_agrees_with_a_regex_oracle(rules, path):
    expected = path == "/robots.txt" or _oracle(rules, path)
    assert RobotRules(_body(rules), "x").allows("http://h" + path) is expected


@given(st.lists(_LITERAL, max_size=6), _PATH)
def test_a_path_no_pattern_matches_is_allowed(patterns, path):
    if any(path.startswith(pattern) for pattern in patterns):
        return
    assert RobotRules(_body([(False, p) for p in patterns]), "x").allows("http://h" + path)


@given(st.lists(st.tuples(st.booleans(), _LITERAL), max_size=6), _PATH)
def test_allowing_the_exact_path_always_allows_it(rules, path):
    """No wildcard rule here: ``/p**`` is longer than ``/p$`` and rightly beats it."""
    body = _body([*rules, (True, path + "$")])
    assert RobotRules(body, "x").allows("http://h" + path)


@given(st.text(max_size=200), st.text(max_size=20), st.sampled_from(["", "?a=1", "#f"]))
def test_robots_txt_is_always_allowed(body, agent, suffix):
    assert RobotRules(body, agent).allows("http://h/robots.txt" + suffix)


@given(st.text(max_size=200), st.text(max_size=20), st.text(max_size=30))
def test_any_text_and_url_are_answered(body, agent, url):
    rules = RobotRules(body, agent)
    assert isinstance(rules.allows(url), bool)
    assert rules.crawl_delay is None or rules.crawl_delay >= 0
