"""``shardload INPUT -o OUT``: the batch command. Argv, signals, progress and exit codes live here.

Exit codes: 0 every URL done, 1 some URLs failed, 2 usage error, 130 interrupted (SIGINT/SIGTERM,
after a clean stop: workers stopped, manifest flushed, partial summary printed).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any, BinaryIO, TextIO

import shardload
from shardload import AioDownload, BackOff, DownloadStrategy, Lenient, RequestStrategy
from shardload.bundle import Bundle
from shardload.cli.inputs import BadLine, count_items, iter_parsed, open_input
from shardload.cli.manifest import Action, ManifestWriter, Prior, decide, load_priors
from shardload.cli.progress import MODES, Progress, choose_mode, have_tqdm, make_progress
from shardload.cli.summary import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    RunStats,
    exit_code,
    format_summary,
)
from shardload.errors import ConfigurationError

DEFAULT_PER_HOST = 4
DEFAULT_ATTEMPTS = 4
STRATEGIES = ("default", "lenient", "backoff")
# Options given to the request strategy under their own names, only when set on the command line.
PASS_THROUGH = (
    "delay", "jitter", "connect_timeout", "max_time", "user_agent", "low_speed_limit",
    "low_speed_time", "max_redirects", "adaptive", "breaker_threshold", "breaker_cooldown",
    "robots",
)  # fmt: skip
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)

EPILOG = """\
input lines: a URL, or a JSON object {"url": ..., "path": "rel/path", "info": ...};
  blank lines and lines starting with '#' are ignored; gzip input is detected.
  A line that cannot be parsed is recorded as failed (error_kind bad_input).
manifest: one JSON record per input line (url, path, state, status, bytes, sha256, attempts,
  elapsed, error_kind, error_message, info). --resume appends and skips URLs whose latest
  record is written/cached; --retry-transient also skips permanent failures (404, 410,
  invalid URL, bad input), so only transient failures and never-attempted URLs run.
exit codes: 0 all done; 1 some URLs failed (including permanent failures skipped by
  --retry-transient); 2 usage error; 130 interrupted (SIGINT/SIGTERM), manifest kept consistent.
"""


def parse_size(text: str) -> int:
    """``10M`` -> 10485760: an integer with an optional K/M/G/T suffix (powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 500K, 10M, 2G)")
    power = " kmgt".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * 1024**power)


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``("Name", "value")``."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise argparse.ArgumentTypeError(f"not a header: {text!r} (expected 'Name: value')")
    return name.strip(), value.strip()


def _number(kind: type[int] | type[float], low: float, strict: bool = False) -> Any:
    def convert(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}: {text}")
        return value

    return convert


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    add("-p", "--processes", type=int1, metavar="N", default=os.cpu_count() or 1,
        help="worker processes (default: CPU count, %(default)s)")
    add("--concurrency", type=int1, metavar="N", default=64,
        help="requests in flight per worker process (default: 64)")
    add("--per-host", type=int1, metavar="N", default=DEFAULT_PER_HOST,
        help=f"requests in flight per host (default: {DEFAULT_PER_HOST})")
    add("--delay", type=secs0, metavar="S", help="per-host seconds between request starts "
        "(default: 0; 0.25 with --strategy lenient)")
    add("--jitter", type=secs0, metavar="S", help="add up to this many seconds to --delay")
    add("--strategy", choices=STRATEGIES, default="backoff",
        help="retries: default (at once, transient failures), lenient (60 s apart, all but "
        "404), backoff (0.25 s doubling to 60 s, transient failures; the default)")
    tries = p.add_mutually_exclusive_group()
    tries.add_argument("--attempts", type=int1, metavar="N",
                       help=f"attempts per URL, first included (default: {DEFAULT_ATTEMPTS})")
    tries.add_argument("--retries", type=int0, metavar="N", help="retries per URL (= attempts - 1)")
    add("--timeout", type=secs, metavar="S", default=60.0,
        help="seconds to connect, and per stall while reading (default: 60)")
    add("--connect-timeout", type=secs, metavar="S", help="seconds to connect")
    add("--max-time", type=secs, metavar="S", help="seconds per attempt, whole body included")
    add("--max-size", type=parse_size, metavar="SIZE", help="max response size, e.g. 500K, 10M, 1G")
    add("--low-speed-limit", type=parse_size, metavar="SIZE",
        help="fail an attempt slower than SIZE bytes/s for --low-speed-time seconds")
    add("--low-speed-time", type=secs, metavar="S", help="see --low-speed-limit (default: 30)")
    add("--max-redirects", type=int0, metavar="N", help="redirects to follow (default: 10)")
    add("--adaptive", action="store_true", default=None,
        help="per-host concurrency starts at 1, grows while healthy, halves on 429/503")
    add("--breaker-threshold", type=int0, metavar="N", help="connection failures in a row "
        "that make a host fail fast (default: 5; 0: never)")
    add("--breaker-cooldown", type=secs, metavar="S", help="seconds before probing a host "
        "again (default: 30)")
    add("--robots", action="store_true", default=None,
        help="obey robots.txt (Disallow and Crawl-delay)")
    add("--user-agent", metavar="UA", help="User-Agent header")
    add("-H", "--header", type=parse_header, action="append", default=[],
        metavar="'NAME: VALUE'", help="extra request header (repeatable)")
    add("--skip-existing", action="store_true", help="keep files already at their path")
    add("--manifest", metavar="PATH", help="manifest path (default: OUTPUT/manifest.jsonl)")
    add("--resume", action="store_true",
        help="append to the manifest; skip URLs it records as done")
    add("--retry-transient", action="store_true",
        help="like --resume, and also skip permanent failures")
    add("--progress", choices=MODES, default="auto",
        help="bar (terminal), lines (logs), none; auto picks (default)")
    add("--progress-interval", type=secs, metavar="S", default=5.0,
        help="seconds between progress lines (default: 5)")
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
    if args.header:
        options["headers"] = dict(args.header)
    return options


def make_download(args: argparse.Namespace) -> Any:
    cls = {"default": RequestStrategy, "lenient": Lenient, "backoff": BackOff}[args.strategy]
    download_strategy = DownloadStrategy(
        home=args.output, skip_cached=args.skip_existing, max_bytes=args.max_size
    )
    return AioDownload(
        download_strategy=download_strategy, request_strategy=cls(**strategy_options(args))
    )


class StopSignals:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` in the main thread, once.

    Inside ``critical()`` (manifest writes, shutdown) the interrupt waits for the section to end.
    After the first, signals are only noted, so the clean stop runs to completion; a third one
    exits at once.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._count = 0
        self._armed = True
        self._depth = 0
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def disarm(self) -> None:
        self._armed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self._count += 1
        if self._count >= 3:
            os.write(2, b"shardload: interrupted again, exiting now\n")
            os._exit(EXIT_INTERRUPTED)
        if self._armed and not self._depth:
            self._armed = False
            raise KeyboardInterrupt

    @contextmanager
    def critical(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._armed and self.received is not None:
                self._armed = False
                raise KeyboardInterrupt


class Recorder:
    """Everything a finished or skipped URL updates, under one lock (main loop and ticker)."""

    def __init__(
        self, writer: ManifestWriter, progress: Progress, signals: StopSignals, interval: float
    ) -> None:
        self.writer, self.progress, self.signals = writer, progress, signals
        self.stats = RunStats()
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick, args=(interval,), daemon=True)
        self._ticker.start()

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def record(self, record: dict[str, Any]) -> None:
        with self.signals.critical(), self.lock:
            if self.closed:  # the input thread, after a stop: too late to count
                return
            self.writer.add(record)
            self.stats.add(record)
            self.progress.finished(str(record["state"]), int(record.get("bytes") or 0))
        if self.error is not None:
            raise self.error

    def skip(self, action: Action) -> None:
        with self.signals.critical(), self.lock:
            if self.closed:
                return
            if action is Action.SKIP_DONE:
                self.stats.skipped_done += 1
            else:
                self.stats.skipped_permanent += 1
            self.progress.skipped()

    def set_total(self, total: int) -> None:
        with self.lock:
            if not self.closed:
                self.progress.set_total(total)

    def _tick(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self.lock:
                if self.closed:
                    return
                try:
                    self.writer.flush_if_due()
                    self.progress.tick()
                except OSError as exc:  # a full disk: the main loop re-raises it
                    self.error = exc

    def close(self) -> None:
        with self.lock:
            self._stop.set()
            try:
                self.progress.close()
                self.writer.close()
            except OSError as exc:
                self.error = self.error or exc
        self._ticker.join()


def _items(
    stream: BinaryIO,
    priors: dict[str, Prior | None] | None,
    transient_only: bool,
    rec: Recorder,
    reserved: str,
) -> Iterator[str | Bundle]:
    """Input items for the library; bad lines and skipped URLs are recorded here instead."""
    for parsed in iter_parsed(stream, reserved):
        if rec.closed:
            return
        key = parsed.key if isinstance(parsed, BadLine) else parsed.url
        action = Action.RUN
        if priors is not None:
            action = decide(priors.get(key), transient_only=transient_only)
        if action is not Action.RUN:
            rec.skip(action)
        elif isinstance(parsed, BadLine):
            failed = Bundle(parsed.key, info=parsed.info, state="failed")
            failed.error_kind, failed.error_message = "bad_input", parsed.reason
            rec.record(failed.to_record())
        elif parsed.path is None and parsed.info is None:
            yield parsed.url
        else:
            yield Bundle(parsed.url, info=parsed.info, file_path=parsed.path)


def _count_total(spec: str, rec: Recorder) -> None:
    with contextlib.suppress(Exception):  # a nicety; the run reports read errors itself
        total = count_items(spec)
        if total is not None:
            rec.set_total(total)


def main(argv: list[str] | None = None, *, stdin: BinaryIO | None = None) -> int:
    """Run the command; returns the exit code (the console script passes it to ``sys.exit``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run(args, stdin=stdin, stderr=sys.stderr)


def _usage_error(stderr: TextIO, message: str) -> int:
    print(f"shardload: error: {message}", file=stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace, *, stdin: BinaryIO | None, stderr: TextIO) -> int:
    """Set up (usage errors exit 2 before anything runs), then crawl."""
    args.manifest = args.manifest or os.path.join(args.output, "manifest.jsonl")
    try:
        os.makedirs(args.output, exist_ok=True)
        download = make_download(args)
        resume = args.resume or args.retry_transient
        priors, unreadable = load_priors(args.manifest) if resume else (None, 0)
        opened = open_input(args.input, stdin)
        stream = opened.__enter__()
    except (OSError, ValueError) as exc:
        return _usage_error(stderr, str(exc))
    try:
        if unreadable and not args.quiet:
            print(f"shardload: ignoring {unreadable} unreadable manifest lines", file=stderr)
        return _crawl(args, stream, priors, download, stderr)
    finally:
        opened.__exit__(None, None, None)


def _crawl(
    args: argparse.Namespace,
    stream: BinaryIO,
    priors: dict[str, Prior | None] | None,
    download: Any,
    stderr: TextIO,
) -> int:
    manifest = args.manifest
    signals = StopSignals()
    tty = getattr(stderr, "isatty", lambda: False)()
    mode = choose_mode(args.progress, is_tty=tty, quiet=args.quiet, have_tqdm=have_tqdm())
    start = time.monotonic()
    try:
        writer = ManifestWriter(manifest, append=priors is not None)
    except OSError as exc:
        return _usage_error(stderr, f"cannot write the manifest: {exc}")
    progress = make_progress(mode, stderr, interval=args.progress_interval)
    rec = Recorder(writer, progress, signals, 0.25)
    if mode != "none" and args.input != "-":
        threading.Thread(target=_count_total, args=(args.input, rec), daemon=True).start()
    reserved = os.path.relpath(manifest, args.output)
    code: int | None = None
    interrupted = False
    results: Iterator[Bundle] | None = None
    signals.install()
    try:
        items = _items(stream, priors, args.retry_transient, rec, reserved)
        results = shardload.each(items, download=download, processes=args.processes)
        for bundle in results:
            rec.record(bundle.to_record())
    except KeyboardInterrupt:
        interrupted = True
    except ConfigurationError as exc:
        code = _usage_error(stderr, str(exc))
    except Exception:
        traceback.print_exc(file=stderr)
        code = EXIT_FAILED
    finally:
        signals.disarm()
        close = getattr(results, "close", None)
        if close is not None:
            close()
        rec.close()
        signals.restore()
    if rec.error is not None:
        print(f"shardload: error: cannot write the manifest: {rec.error}", file=stderr)
        code = EXIT_FAILED
    interrupted = interrupted or signals.received is not None
    if not args.quiet:
        summary = format_summary(
            rec.stats,
            time.monotonic() - start,
            interrupted=interrupted,
            output=os.path.abspath(args.output),
            manifest=os.path.abspath(manifest),
        )
        print(summary, file=stderr, flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    return code if code is not None else exit_code(rec.stats, interrupted=False)
