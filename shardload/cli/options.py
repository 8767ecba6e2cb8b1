"""Command-line options: the parser, and the mapping from options to strategies. Pure.

Every option maps to a documented library parameter; nothing here runs or prints.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any, NoReturn

import shardload
from shardload import AioDownload, BackOff, DownloadStrategy, Lenient, RequestStrategy
from shardload.cli.progress import MODES
from shardload.executors.starting import processes_that_fit
from shardload.plan import BACKENDS, DEFAULT_HANG_TIMEOUT, RunOptions
from shardload.strategy_check import header_problem

DEFAULT_PER_HOST = 4
DEFAULT_ATTEMPTS = 4
STRATEGIES = ("default", "lenient", "backoff")
# Options given to the request strategy under their own names, only when set on the command line.
PASS_THROUGH = (
    "delay", "jitter", "connect_timeout", "max_time", "user_agent", "low_speed_limit",
    "low_speed_time", "max_redirects", "adaptive", "breaker_threshold", "breaker_cooldown",
    "robots", "retry_after_cap", "continue_partial",
)  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)

EPILOG = """\
input lines: a URL, or a JSON object {"url": ..., "path": "rel/path", "info": ...};
  blank lines and lines starting with '#' are ignored; gzip input is detected.
  A line that cannot be parsed is recorded as failed (error_kind bad_input).
manifest: one JSON record per input line (url, path, state, status, bytes, sha256, attempts,
  elapsed, error_kind, error_message, info). --resume appends and skips URLs whose latest
  record is written/cached; --retry-transient also skips permanent failures (404, 410,
  invalid URL, bad input), so only transient failures (5xx, 429, network errors, a full
  disk) and never-attempted URLs run.
exit codes: 0 all done; 1 some URLs failed (including permanent failures skipped by
  --retry-transient); 2 usage error; 130 interrupted (SIGINT/SIGTERM/SIGHUP), manifest kept
  consistent.
"""


def parse_size(text: str) -> int:
    """``10M`` -> 10485760: an integer with an optional K/M/G/T suffix (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 500K, 10M, 2G)")
    power = " kmgt".index(match.group(2).lower() or " ")
    size = int(float(match.group(1)) * 1024**power)
    if size < 1:
        # 0 would fail every download with a body; leaving the option out means no limit.
        raise argparse.ArgumentTypeError(f"a size must be at least 1 byte: {text!r}")
    return size


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``("Name", "value")``."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise argparse.ArgumentTypeError(f"not a header: {text!r} (expected 'Name: value')")
    if _line_break(value):
        raise argparse.ArgumentTypeError(f"a header value cannot hold a line break: {text!r}")
    problem = header_problem(name.strip(), value.strip())
    if problem is not None:
        raise argparse.ArgumentTypeError(f"not a header to send: {problem}")
    return name.strip(), value.strip()


def merge_headers(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Repeated ``-H`` of one name (in any case) become one header, the values joined by
    ", " in order, as HTTP defines a repeated field (RFC 9110 5.3); curl sends them as lines."""
    merged: dict[str, tuple[str, str]] = {}
    for name, value in headers:
        key = name.lower()
        first = merged.get(key)
        merged[key] = (name, value) if first is None else (first[0], f"{first[1]}, {value}")
    return dict(merged.values())


def parse_user_agent(text: str) -> str:
    if _line_break(text):
        raise argparse.ArgumentTypeError(f"a User-Agent cannot hold a line break: {text!r}")
    return text


def _line_break(text: str) -> bool:
    return any(c in text for c in "\r\n\0")


def _number(kind: type[int] | type[float], low: float, strict: bool = False) -> Any:
    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number: {text!r}")
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}: {text}")
        return value

    return convert


def parse_split(text: str) -> tuple[str, int]:
    """``'example.com=4'`` -> ``("example.com", 4)``."""
    host, sep, count = text.rpartition("=")
    if not sep or not host.strip() or not count.strip().isdigit():
        raise argparse.ArgumentTypeError(f"not HOST:PORT=K: {text!r} (e.g. example.com:443=4)")
    if int(count) < 1:
        raise argparse.ArgumentTypeError(f"K must be at least 1: {text!r}")
    return host.strip().lower(), int(count)


class _OneLineErrors(argparse.ArgumentParser):
    """A usage error is one line, as the CLI's own are, not the whole usage block first."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineErrors(
        prog="shardload",
        description="Download a list of URLs to disk, fast and politely, on every core.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    int1, int0 = _number(int, 1), _number(int, 0)
    secs, secs0 = _number(float, 0, strict=True), _number(float, 0)
    add = p.add_argument
    # fmt: off
    add("input", help="file of URLs or JSON lines (plain or gzip), or - for stdin")
    add("-o", "--output", default=".", metavar="DIR", help="download directory (default: .)")
    add("-p", "--processes", type=int1, metavar="N", default=None,
        help=f"worker processes (default: CPU count, {os.cpu_count() or 1}, or fewer when the "
        "open-file limit, ulimit -n, is too low for them; with --backend ray, the cluster's)")
    add("--concurrency", type=int1, metavar="N", default=64,
        help="requests in flight per worker process (default: 64)")
    add("--per-host", type=int1, metavar="N", default=DEFAULT_PER_HOST,
        help=f"requests in flight per host (default: {DEFAULT_PER_HOST})")
    add("--delay", type=secs0, metavar="S", help="per-host seconds between request starts "
        "(default: 0; 0.25 with --strategy lenient)")
    add("--jitter", type=secs0, metavar="S", help="add up to this many seconds to --delay")
    add("--strategy", choices=STRATEGIES, default="backoff",
        help="retries: backoff (the default: 0.25 s doubling to 60 s, transient failures), "
        "lenient (60 s apart, all but 404), default (RequestStrategy's: at once, transient "
        "failures)")
    tries = p.add_mutually_exclusive_group()
    tries.add_argument("--attempts", type=int1, metavar="N",
                       help=f"attempts per URL, first included (default: {DEFAULT_ATTEMPTS})")
    tries.add_argument("--retries", type=int0, metavar="N", help="retries per URL (= attempts - 1)")
    add("--timeout", type=secs, metavar="S", default=60.0,
        help="seconds to connect, and per stall while reading (default: 60)")
    add("--connect-timeout", type=secs, metavar="S", help="seconds to connect")
    add("--max-time", type=secs, metavar="S", help="seconds per attempt, whole body included")
    add("--max-size", type=parse_size, metavar="SIZE",
        help="max response size, e.g. 500K, 10M, 1G (K = 1024 bytes)")
    add("--low-speed-limit", type=parse_size, metavar="SIZE",
        help="fail an attempt slower than SIZE bytes/s for --low-speed-time seconds")
    add("--low-speed-time", type=secs, metavar="S",
        help="see --low-speed-limit (default: 30; alone: a limit of 1 byte/s, as curl)")
    add("--max-redirects", type=int0, metavar="N", help="redirects to follow (default: 10)")
    add("--no-continue", dest="continue_partial", action="store_false", default=None,
        help="a retry of a body cut mid-way asks for the whole body again (default: only the "
        "rest, with Range and If-Range, where the server can prove it unchanged)")
    add("--adaptive", action="store_true", default=None,
        help="per-host concurrency starts at 1, grows while answers come about as fast as "
        "the host's quickest, halves on 429/503/timeouts")
    add("--breaker-threshold", type=int0, metavar="N", help="connection failures in a row "
        "that make a host fail fast (default: 5; 0: never)")
    add("--breaker-cooldown", type=secs, metavar="S", help="seconds before probing a host "
        "again (default: 30)")
    add("--retry-after-cap", type=secs0, metavar="S", help="longest wait a Retry-After "
        "(or robots.txt's Crawl-delay) may put on a host (default: 300)")
    add("--robots", action="store_true", default=None,
        help="obey robots.txt (Disallow and Crawl-delay)")
    add("--user-agent", type=parse_user_agent, metavar="UA", help="User-Agent header")
    add("-H", "--header", type=parse_header, action="append", default=[],
        metavar="'NAME: VALUE'",
        help="extra request header (repeatable; a name given twice is sent once, its values "
        "joined by ', ')")
    add("--skip-existing", action="store_true", help="keep files already at their path")
    add("--no-sha256", dest="sha256", action="store_false",
        help="do not hash bodies (the manifest's sha256 is null; ~0.6 CPU-s per GiB saved)")
    add("--manifest", metavar="PATH", help="manifest path (default: OUTPUT/manifest.jsonl)")
    add("--resume", action="store_true",
        help="append to the manifest; skip URLs it records as done")
    add("--retry-transient", action="store_true",
        help="like --resume, and also skip permanent failures")
    add("--progress", choices=MODES, default="auto",
        help="bar (terminal), lines (logs), none; auto picks (default)")
    add("--progress-interval", type=secs, metavar="S", default=5.0,
        help="seconds between progress lines (default: 5)")
    add("--split-host", type=parse_split, action="append", default=[], metavar="HOST:PORT=K",
        help="spread a hot host over K workers, dividing its concurrency between them "
        "(a host with a --delay or --jitter is not split; repeatable)")
    add("--backend", choices=BACKENDS, default="local",
        help="local: worker processes on this machine (default); ray: actors on a Ray cluster")
    add("--ray-address", metavar="ADDR",
        help="Ray cluster to join (default: a running session, else a local cluster)")
    add("--hang-timeout", type=secs0, metavar="S", default=DEFAULT_HANG_TIMEOUT,
        help="kill and replace a worker process whose event loop stands still this long, "
        "its URLs sent again (default: 600; 0: never)")
    add("-q", "--quiet", action="store_true", help="no progress and no summary")
    add("--version", action="version", version=f"shardload {shardload.__version__}")
    # fmt: on
    return p


def strategy_options(args: argparse.Namespace) -> dict[str, Any]:
    """The request strategy's keyword arguments for the parsed options. Pure."""
    attempts = args.attempts or (args.retries + 1 if args.retries is not None else None)
    options: dict[str, Any] = {
        "max_attempts": attempts or DEFAULT_ATTEMPTS,
        "concurrent": args.per_host,
        "worker_concurrent": args.concurrency,
        "timeout": args.timeout,
    }
    passed = {name: getattr(args, name) for name in PASS_THROUGH}
    options.update({k: v for k, v in passed.items() if v is not None})
    if args.low_speed_time is not None and args.low_speed_limit is None:
        options["low_speed_limit"] = 1  # as curl: --speed-time alone means 1 byte/s
    if args.header:
        options["headers"] = merge_headers(args.header)
    return options


def make_download(args: argparse.Namespace) -> Any:
    cls = {"default": RequestStrategy, "lenient": Lenient, "backoff": BackOff}[args.strategy]
    download_strategy = DownloadStrategy(
        home=args.output,
        skip_cached=args.skip_existing,
        max_bytes=args.max_size,
        sha256=args.sha256,
    )
    return AioDownload(
        download_strategy=download_strategy, request_strategy=cls(**strategy_options(args))
    )


def run_options(args: argparse.Namespace) -> RunOptions:
    """The library's run options (processes, hot hosts, back end) for the parsed options."""
    options: RunOptions = {
        "backend": args.backend,
        "split_hosts": dict(args.split_host) or None,
        "hang_timeout": args.hang_timeout,
    }
    if args.processes is not None:
        options["processes"] = args.processes
    elif args.backend == "local":  # the CPU count, as many as descriptors allow
        options["processes"] = processes_that_fit(os.cpu_count() or 1)
    # else Ray's default, as the library's: the cluster's CPU count, not this machine's
    if args.ray_address:
        options["ray_address"] = args.ray_address
    return options
