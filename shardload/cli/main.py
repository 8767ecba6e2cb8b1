"""``shardload INPUT -o OUT``: the batch command. Argv, signals, progress and exit codes live here.

Exit codes: 0 every URL done, 1 some URLs failed, 2 usage error, 130 interrupted (SIGINT, SIGTERM,
SIGHUP; after a clean stop: workers stopped, manifest flushed, partial summary printed).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any, BinaryIO, TextIO

import shardload
from shardload.bundle import Bundle
from shardload.cli.host_stats import hosts_path, write_host_stats
from shardload.cli.inputs import (
    BadLine,
    InputItem,
    count_hosts,
    count_items,
    default_path,
    iter_parsed,
    open_input,
)
from shardload.cli.manifest import (
    Action,
    ManifestInUse,
    ManifestWriter,
    Prior,
    Priors,
    decide,
    load_priors,
    looks_like_manifest,
)
from shardload.cli.options import build_parser, make_download, run_options
from shardload.cli.progress import choose_mode, have_tqdm, make_progress, terminal_size
from shardload.cli.recorder import ManifestFailed, Recorder
from shardload.cli.signals import StopSignals
from shardload.cli.summary import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    exit_code,
    format_summary,
)
from shardload.errors import ConfigurationError, DownloadFailed
from shardload.intake import Handed
from shardload.plan import RunOptions, split_key
from shardload.run import Run
from shardload.worker.tree import check_target, find_complete


def _items(
    stream: BinaryIO,
    priors: Priors | None,
    transient_only: bool,
    rec: Recorder,
    output: str,
    reserved: list[str],
    own_paths: set[int],
) -> Iterator[str | Handed]:
    """Input items for the library; bad lines and skipped URLs are recorded here instead.
    The place (``seq``) of each item that names its own path goes into ``own_paths``."""
    seq = 0
    for parsed in iter_parsed(stream, reserved, os.path.realpath(output)):
        if rec.closed:
            return
        key = parsed.key if isinstance(parsed, BadLine) else parsed.url
        action = Action.RUN
        if priors is not None:
            prior = priors.get(key)
            action = decide(prior, transient_only=transient_only)
            if (
                action is Action.SKIP_DONE
                and isinstance(parsed, InputItem)
                and _done_elsewhere(parsed, prior, output)
            ):
                action = Action.RUN
        if action is not Action.RUN:
            rec.skip(action)
        elif isinstance(parsed, BadLine):
            failed = Bundle(parsed.key, info=parsed.info, state="failed")
            failed.error_kind, failed.error_message = "bad_input", parsed.reason
            rec.record(failed.to_record(), uncounted=failed)
        elif parsed.path is None and parsed.info is None:
            yield parsed.url
            seq += 1
        else:
            if parsed.path is not None:
                own_paths.add(seq)
            # Handed over: the library may park it on disk (its info is JSON) and answer
            # with an equal copy.
            yield Handed(Bundle(parsed.url, info=parsed.info, file_path=parsed.path))
            seq += 1


def _record(
    rec: Recorder, bundle: Bundle, own_paths: set[int], output: str, *, unread: bool = False
) -> None:
    """``unread``: left in ``run.unread`` by a stop, so not in the run's statistics."""
    record = bundle.to_record()
    if bundle.seq in own_paths:
        own_paths.discard(bundle.seq)
        record["own_path"] = True  # see _done_elsewhere
        path = record["path"]
        if path is not None:
            # Failed before the line's path was resolved (an invalid URL, a path outside
            # the folder): where it would have gone, as other records say; null where it
            # could never go. A resolved one comes back as it is.
            try:
                record["path"] = check_target(output, path)
            except DownloadFailed:
                record["path"] = None
    rec.record(record, repeat=bundle._shared, uncounted=bundle if unread else None)


def _done_elsewhere(item: InputItem, prior: Prior | None, output: str) -> bool:
    """Whether the manifest's "done" for this line's URL was for another line's path (one URL
    wanted in two places): the manifest knows URLs, and which records were at a line's own
    path; a file missing where this line wants it is then fetched."""
    if item.path:
        wanted = item.path
    elif prior is Prior.DONE_AT_OWN_PATH:
        wanted = default_path(item.url)
    else:
        return False
    if not wanted:
        return True
    try:
        target = check_target(output, wanted)  # spelled as the download spells it ("dir/")
    except DownloadFailed:
        return True  # the run fails it with the reason
    return find_complete(target, output) is None


def _count_total(spec: str, rec: Recorder) -> None:
    with contextlib.suppress(Exception):  # a nicety; the run reports read errors itself
        total = count_items(spec)
        if total is not None:
            rec.set_total(total)


def main(argv: list[str] | None = None, *, stdin: BinaryIO | None = None) -> int:
    """Run the command; returns the exit code (the console script passes it to ``sys.exit``)."""
    if sys.stderr is not None:
        return _main(argv, stdin)
    # Started with stderr closed (2>&-): Python's sys.stderr is None, and argparse and
    # print(file=None) would send usage errors, progress and the summary to stdout instead.
    with open(os.devnull, "w", encoding="utf-8") as nowhere:
        sys.stderr = nowhere
        try:
            return _main(argv, stdin)
        finally:
            sys.stderr = None


def _main(argv: list[str] | None, stdin: BinaryIO | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return run(args, stdin=stdin, stderr=sys.stderr)


def _say(stderr: TextIO, text: str) -> None:
    """Print the run's closing lines; a closed stderr does not change its exit code."""
    with contextlib.suppress(OSError):
        print(text, file=stderr, flush=True)


def _usage_error(stderr: TextIO, message: str) -> int:
    print(f"shardload: error: {message}", file=stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace, *, stdin: BinaryIO | None, stderr: TextIO) -> int:
    """Set up (usage errors exit 2 before anything runs), then crawl."""
    args.manifest = args.manifest or os.path.join(args.output, "manifest.jsonl")
    if args.ray_address and args.backend != "ray":
        return _usage_error(stderr, "--ray-address needs --backend ray")
    if args.manifest == "-":
        # Not standard output: the manifest is rewritten in place and read back by --resume.
        return _usage_error(stderr, "--manifest needs a file path, not '-'")
    problem = _own_files_problem(args, stdin)
    if problem is not None:
        return _usage_error(stderr, problem)
    try:
        opened = open_input(args.input, stdin)
        stream = opened.__enter__()
    except (OSError, ValueError) as exc:
        return _usage_error(stderr, str(exc))
    try:
        os.makedirs(args.output, exist_ok=True)
        _check_writable(args.output)
        download = make_download(args)
        resume = args.resume or args.retry_transient
        priors, unreadable = load_priors(args.manifest) if resume else (None, 0)
    except (OSError, ValueError) as exc:
        opened.__exit__(None, None, None)
        return _usage_error(stderr, str(exc))
    try:
        if unreadable and not args.quiet:
            print(f"shardload: ignoring {unreadable} unreadable manifest lines", file=stderr)
        return _crawl(args, stream, priors, download, stderr)
    finally:
        opened.__exit__(None, None, None)


def _check_writable(output: str) -> None:
    """Raise OSError when no file can be made in the output directory: a read-only or
    immutable one (where root's access() says yes) failed every URL after its download.
    The probe is a file with no name (O_TMPFILE), so it leaves nothing behind; a file
    system that cannot make one is not probed."""
    nameless = getattr(os, "O_TMPFILE", None)  # Linux's
    if nameless is None:
        return
    try:
        fd = os.open(output, nameless | os.O_WRONLY, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise OSError(
                f"cannot write into the output directory {output}: {exc.strerror}"
            ) from exc
        return
    os.close(fd)


def _own_files_problem(args: argparse.Namespace, stdin: BinaryIO | None) -> str | None:
    """Why the output directory, manifest and input cannot work together, if they cannot."""
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        return f"the output directory is not a directory: {args.output}"
    try:
        if args.input == "-":  # `shardload - < out/manifest.jsonl`: stdin is that file
            source: os.stat_result | None = os.fstat((stdin or sys.stdin).fileno())
        else:
            source = os.stat(args.input)
    except (OSError, ValueError, AttributeError):
        source = None  # a pipe without a file, or an input that cannot open: said later
    for name, path in (("manifest", args.manifest), ("per-host file", hosts_path(args.manifest))):
        with contextlib.suppress(OSError):
            if source is not None and os.path.samestat(source, os.stat(path)):
                what = "standard input" if args.input == "-" else "input file"
                return f"the {what} is also the {name}, which would destroy it: {path}"
    resume = args.resume or args.retry_transient
    if not resume and os.path.isfile(args.manifest) and not looks_like_manifest(args.manifest):
        return (
            f"{args.manifest} is not a shardload manifest (none of its first lines is a "
            "record); a new manifest would empty it: remove it or pick another --manifest"
        )
    return None


def _options(args: argparse.Namespace) -> RunOptions:
    """``run_options``, with no more local workers than the input has hosts, when a small
    input file tells (the library cannot: the CLI hands it a stream of items)."""
    options = run_options(args)
    wanted = options.get("processes") or 1
    if wanted > 1 and args.backend == "local" and not options.get("split_hosts"):
        hosts = count_hosts(args.input) if args.input != "-" else None
        if hosts is not None:
            options["processes"] = max(1, min(wanted, hosts))
    return options


def _crawl(
    args: argparse.Namespace,
    stream: BinaryIO,
    priors: Priors | None,
    download: Any,
    stderr: TextIO,
) -> int:
    manifest = args.manifest
    signals = StopSignals()
    tty = getattr(stderr, "isatty", lambda: False)()
    size = terminal_size(stderr) if tty else None
    mode = choose_mode(
        args.progress, is_tty=tty, quiet=args.quiet, have_tqdm=have_tqdm(), size=size
    )
    start = time.monotonic()
    try:
        writer = ManifestWriter(manifest, append=priors is not None)
    except ManifestInUse as exc:
        return _usage_error(stderr, str(exc))
    except OSError as exc:
        return _usage_error(stderr, f"cannot write the manifest: {exc}")
    progress = make_progress(mode, stderr, interval=args.progress_interval)
    rec = Recorder(writer, progress, signals, 0.25)
    if mode != "none" and args.input != "-":
        threading.Thread(target=_count_total, args=(args.input, rec), daemon=True).start()
    # Resolved: an output directory reached through a symlink is still the manifest's.
    output = os.path.realpath(args.output)
    # The run's own files, which no download may replace or move aside: the input file too
    # (read as the run goes, and what --resume reads again).
    own_files = [manifest, hosts_path(manifest), *([args.input] if args.input != "-" else [])]
    reserved = [os.path.relpath(os.path.realpath(p), output) for p in own_files]
    code: int | None = None
    usage_error: str | None = None
    interrupted = False
    results: Run | None = None
    own_paths: set[int] = set()
    signals.install()
    try:
        if args.backend == "ray":
            from shardload.executors.ray import ensure_ray  # noqa: PLC0415  (optional)

            # Started whole or not at all: a Ctrl-C inside ray.init left Ray's helper
            # processes running after we exited.
            with signals.critical():
                ensure_ray(args.ray_address, quiet=args.quiet)
        items = _items(stream, priors, args.retry_transient, rec, args.output, reserved, own_paths)
        results = shardload.each(items, download=download, **_options(args))
        rec.follow(results)
        while True:
            # A stop signal waits for the bundle on its way to the manifest (it comes at most
            # 0.25 s late): one raised in between lost the batch it was in.
            with signals.critical():
                try:
                    bundle = results.poll(0.25)
                except StopIteration:
                    break
                if bundle is not None:
                    _record(rec, bundle, own_paths, args.output)
    except KeyboardInterrupt:
        interrupted = True
    except ManifestFailed:
        code = EXIT_FAILED  # rec.error is printed below
    except ConfigurationError as exc:  # found by the library as the run starts
        usage_error = str(exc)
    except Exception:
        traceback.print_exc(file=stderr)
        code = EXIT_FAILED
    finally:
        signals.disarm()
        try:
            if results is not None:
                results.close()
                # Done as the run stopped (files written, or failed for good): recorded, so
                # the manifest knows every file a stop left on disk, and --resume skips it.
                for bundle in results.unread:
                    with contextlib.suppress(ManifestFailed):  # counted as unrecorded
                        _record(rec, bundle, own_paths, args.output, unread=True)
        finally:
            rec.close(
                ran_nothing=usage_error is not None,
                interrupted=interrupted or signals.received is not None,
            )
            signals.restore()
    if usage_error is not None:
        return _usage_error(stderr, usage_error)
    if rec.error is not None:
        _say(stderr, f"shardload: error: cannot write the manifest: {rec.error}")
        code = EXIT_FAILED
    interrupted = interrupted or signals.received is not None
    host_stats = getattr(results, "stats", None)
    if host_stats is not None:
        host_stats.absorb(rec.uncounted)  # the side-car counts every record, as the summary does
    hosts_file = write_host_stats(os.path.abspath(manifest), host_stats)
    if not args.quiet and not interrupted and host_stats is not None:
        for host, _ in args.split_host:
            if split_key(host) not in host_stats.hosts:
                _say(stderr, f"shardload: note: --split-host {host} matched no URL (HOST:PORT)")
    if not args.quiet:
        summary = format_summary(
            rec.stats,
            time.monotonic() - start,
            interrupted=interrupted,
            output=os.path.abspath(args.output),
            manifest=os.path.abspath(manifest),
            hosts=host_stats.worst_hosts() if host_stats is not None else [],
            hosts_file=hosts_file,
            unrecorded=writer.unwritten if rec.error is not None else None,
        )
        _say(stderr, summary)
    if interrupted:
        return EXIT_INTERRUPTED
    return code if code is not None else exit_code(rec.stats, interrupted=False)
