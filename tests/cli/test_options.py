"""Option parsing and mapping (tables), signal deferral, and main()'s usage errors in-process."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from shardload import BackOff, Lenient, RequestStrategy
from shardload.cli.main import main
from shardload.cli.options import (
    DEFAULT_ATTEMPTS,
    DEFAULT_PER_HOST,
    build_parser,
    make_download,
    merge_headers,
    parse_header,
    parse_size,
    parse_split,
    run_options,
    strategy_options,
)
from shardload.cli.signals import StopSignals
from shardload.executors.starting import processes_that_fit


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1", 1),
        ("123", 123),
        ("1K", 1024),
        ("1k", 1024),
        ("10M", 10 * 1024**2),
        ("10MB", 10 * 1024**2),
        ("10MiB", 10 * 1024**2),
        ("1.5G", int(1.5 * 1024**3)),
        ("2T", 2 * 1024**4),
        (" 7 kb ", 7 * 1024),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "ten", "-1", "1X", "1.2.3M", "1 M B", "0", "0.5", "0K"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "header"),
    [
        ("X-A: 1", ("X-A", "1")),
        ("X-A:1", ("X-A", "1")),
        ("Cookie: a=b; c=d", ("Cookie", "a=b; c=d")),
        ("X-Empty:", ("X-Empty", "")),
        ("X-Url: http://x/y", ("X-Url", "http://x/y")),
    ],
)
def test_parse_header(text: str, header: tuple[str, str]) -> None:
    assert parse_header(text) == header


@pytest.mark.parametrize(
    "text",
    [
        "no colon",
        ": value",
        "Two Words: v",
        "",
        "X-A: a\r\nX-Injected: 1",
        "X-A: a\n",
        "X(bad): 1",  # not a token: every URL got a 400
        "Content-Length: 40",  # the server waited for a body the GET never sends
        "Transfer-Encoding: chunked",
    ],
)
def test_parse_header_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_header(text)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ([("X-Tag", "a"), ("X-Tag", "b")], {"X-Tag": "a, b"}),  # only "b" was sent
        ([("X-Tag", "a"), ("x-tag", "b"), ("Y", "c")], {"X-Tag": "a, b", "Y": "c"}),
        ([("X-A", "1")], {"X-A": "1"}),
    ],
)
def test_a_repeated_header_is_sent_once_with_every_value(
    given: list[tuple[str, str]], sent: dict[str, str]
) -> None:
    assert merge_headers(given) == sent


BASE = {
    "max_attempts": DEFAULT_ATTEMPTS,
    "concurrent": DEFAULT_PER_HOST,
    "worker_concurrent": 64,
    "timeout": 60.0,
}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], BASE),
        (["--attempts", "1"], {**BASE, "max_attempts": 1}),
        (["--retries", "0"], {**BASE, "max_attempts": 1}),
        (["--retries", "2"], {**BASE, "max_attempts": 3}),
        (
            ["--per-host", "1", "--concurrency", "8"],
            {**BASE, "concurrent": 1, "worker_concurrent": 8},
        ),
        (["--delay", "0.5", "--jitter", "0.1"], {**BASE, "delay": 0.5, "jitter": 0.1}),
        (
            ["--timeout", "5", "--connect-timeout", "2"],
            {**BASE, "timeout": 5.0, "connect_timeout": 2.0},
        ),
        (["--max-time", "30"], {**BASE, "max_time": 30.0}),
        (["--user-agent", "me/1"], {**BASE, "user_agent": "me/1"}),
        (["-H", "A: 1", "-H", "B: 2"], {**BASE, "headers": {"A": "1", "B": "2"}}),
        (["--robots", "--adaptive"], {**BASE, "robots": True, "adaptive": True}),
        (["--max-redirects", "0"], {**BASE, "max_redirects": 0}),
        (["--no-continue"], {**BASE, "continue_partial": False}),
        (
            ["--breaker-threshold", "0", "--breaker-cooldown", "5"],
            {**BASE, "breaker_threshold": 0, "breaker_cooldown": 5.0},
        ),
        (["--retry-after-cap", "2.5"], {**BASE, "retry_after_cap": 2.5}),
        (
            ["--low-speed-limit", "1K", "--low-speed-time", "10"],
            {**BASE, "low_speed_limit": 1024, "low_speed_time": 10.0},
        ),
        # curl's --speed-time alone: 1 byte/s (it was silently no limit at all)
        (["--low-speed-time", "10"], {**BASE, "low_speed_limit": 1, "low_speed_time": 10.0}),
    ],
)
def test_strategy_options(argv: list[str], expected: dict[str, Any]) -> None:
    args = build_parser().parse_args(["in.txt", *argv])
    assert strategy_options(args) == expected


@pytest.mark.parametrize(
    ("name", "cls", "delay"),
    [("default", RequestStrategy, 0.0), ("lenient", Lenient, 0.25), ("backoff", BackOff, 0.0)],
)
def test_make_download_strategies(tmp_path: Path, name: str, cls: type, delay: float) -> None:
    argv = [
        "in.txt",
        "-o",
        str(tmp_path),
        "--strategy",
        name,
        "--max-size",
        "1M",
        "--skip-existing",
    ]
    download = make_download(build_parser().parse_args(argv))
    rs = download.request_strategy
    assert type(rs) is cls
    defaults = RequestStrategy()
    for name in ("breaker_threshold", "breaker_cooldown", "robots", "adaptive", "max_redirects"):
        assert getattr(rs, name) == getattr(defaults, name)  # unset options keep the library's
    assert rs.max_attempts == DEFAULT_ATTEMPTS
    assert rs.concurrent == DEFAULT_PER_HOST
    assert rs.delay == delay  # a strategy's own delay stays unless --delay is given
    ds = download.download_strategy
    assert ds.home == str(tmp_path)
    assert ds.max_bytes == 1024**2
    assert ds.skip_cached is True


def test_defaults() -> None:
    args = build_parser().parse_args(["in.txt"])
    assert args.output == "."
    assert args.processes is None  # the CPU count, fitted to ulimit -n (run_options)
    assert run_options(args)["processes"] == processes_that_fit(os.cpu_count() or 1)
    # On Ray, the library's default: the cluster's CPU count (this machine's is the head's).
    assert "processes" not in run_options(build_parser().parse_args(["in", "--backend", "ray"]))
    assert args.strategy == "backoff"
    assert args.manifest is None and not args.resume and not args.retry_transient
    assert args.progress == "auto"


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        ([], 2),
        (["--help"], 0),
        (["--version"], 0),
        (["x", "--progress", "sometimes"], 2),
        (["x", "--concurrency", "0"], 2),
        (["x", "--delay", "-1"], 2),
    ],
)
def test_main_returns_usage_codes(argv: list[str], code: int, capsys: Any) -> None:
    assert main(argv) == code


@pytest.mark.parametrize(
    "argv",
    [
        ["--timeout", "nan"],
        ["--max-time", "nan"],
        ["--delay", "inf"],
        ["--delay", "1e400"],
        ["--progress-interval", "nan"],
        ["--jitter", "nan"],
        ["--user-agent", "ua\r\nX: 1"],
        ["-H", "X-A: a\r\nX-Injected: 1"],
    ],
)
def test_values_no_run_could_use_are_usage_errors(argv: list[str], capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["in.txt", *argv])
    assert exited.value.code == 2


def test_main_missing_input_is_a_usage_error(tmp_path: Path, capsys: Any) -> None:
    assert main([str(tmp_path / "nope.txt"), "-o", str(tmp_path / "out")]) == 2
    assert "shardload: error:" in capsys.readouterr().err


def test_stop_signals_defer_inside_critical_sections() -> None:
    signals = StopSignals()
    old = signal.getsignal(signal.SIGINT)
    signals.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals.critical():
                os.kill(os.getpid(), signal.SIGINT)
                reached = True  # the interrupt waits for the section to end
        assert reached
        assert signals.received == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # after the first, signals are only noted
        assert signals.received == signal.SIGTERM
        with signals.critical():
            pass
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGINT) is old


def test_stop_signals_first_signal_interrupts_outside_critical() -> None:
    signals = StopSignals()
    signals.install()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # give the handler a chance to run
        signals.disarm()
        os.kill(os.getpid(), signal.SIGINT)
    finally:
        signals.restore()


@pytest.mark.parametrize(
    ("text", "parsed"), [("example.com=4", ("example.com", 4)), ("H:8080=2", ("h:8080", 2))]
)
def test_parse_split(text: str, parsed: tuple[str, int]) -> None:
    assert parse_split(text) == parsed


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("example.com", "not HOST:PORT=K"),
        ("=3", "not HOST"),
        ("h=x", "not HOST"),
        ("h:1=0", "K must"),
    ],
)
def test_parse_split_rejects(text: str, why: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=why):
        parse_split(text)


def test_run_options_mapping() -> None:
    args = build_parser().parse_args(
        ["urls.txt", "-p", "3", "--split-host", "a.com=2", "--backend", "ray",
         "--ray-address", "ray://head:10001", "--hang-timeout", "90"]
    )  # fmt: skip
    assert run_options(args) == {
        "processes": 3,
        "backend": "ray",
        "split_hosts": {"a.com": 2},
        "ray_address": "ray://head:10001",
        "hang_timeout": 90.0,
    }
    defaults = run_options(build_parser().parse_args(["u"]))
    assert defaults["split_hosts"] is None and defaults["hang_timeout"] == 600.0
    assert run_options(build_parser().parse_args(["u", "--hang-timeout", "0"]))["hang_timeout"] == 0


def test_a_ray_address_without_the_ray_backend_is_a_usage_error(
    tmp_path: Path, capsys: Any
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("http://127.0.0.1:9/x\n")
    argv = [str(src), "-o", str(tmp_path / "out"), "--ray-address", "ray://h:10001"]
    assert main(argv) == 2
    assert "--ray-address needs --backend ray" in capsys.readouterr().err


def test_a_manifest_on_standard_output_is_a_usage_error(tmp_path: Path, capsys: Any) -> None:
    """``--manifest -`` once made a file named ``-`` in the working directory."""
    src = tmp_path / "in.txt"
    src.write_text("http://127.0.0.1:9/x\n")
    out = tmp_path / "out"
    assert main([str(src), "-o", str(out), "--manifest", "-"]) == 2
    assert "--manifest needs a file path" in capsys.readouterr().err
    assert not out.exists() and not os.path.exists("-")
