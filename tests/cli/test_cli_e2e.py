"""The command end to end, in a child process, against the local multi-host server."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import resource
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from shardload.testing.server import LocalServer, body_for

from ..raw_server import RawServer, gated
from .conftest import cli_command, cli_env, latest, path_counts, read_manifest, run_cli

FAST = ("-p", "2", "--progress", "lines")


def _byte_urls(srv: LocalServer, tag: str, count: int) -> list[str]:
    return [
        f"{srv.base_urls[i % len(srv.base_urls)]}/bytes/{100 + i}?name={tag}{i}"
        for i in range(count)
    ]


def _check_written(record: dict[str, object], url: str) -> None:
    size = int(url.split("/bytes/")[1].split("?", maxsplit=1)[0])
    body = body_for(size, url.split("name=")[1])
    assert record["state"] == "written"
    assert record["status"] == 200
    assert record["bytes"] == size
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    assert record["error_kind"] is None
    assert Path(str(record["path"])).read_bytes() == body


def test_file_input_all_ok(server: LocalServer, tmp_path: Path) -> None:
    urls = _byte_urls(server, "ok", 30)
    src = tmp_path / "urls.txt"
    src.write_text("# my urls\n\n" + "\n".join(urls) + "\n")
    out = tmp_path / "out"
    result = run_cli(src, "-o", out, *FAST)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    records = read_manifest(out / "manifest.jsonl")
    assert sorted(r["url"] for r in records) == sorted(urls)
    for record in records:
        _check_written(record, record["url"])
    err = result.stderr.decode()
    assert "30/30 (100%) | done 30 | failed 0" in err
    assert "finished   30 (written 30, cached 0, failed 0)" in err


def test_a_repeated_url_counts_its_bytes_once(server: LocalServer, tmp_path: Path) -> None:
    """One URL on three lines: three records, one request, and the summary's bytes (as the
    per-host file's) are what was downloaded."""
    src = tmp_path / "urls.txt"
    src.write_text(f"{server.base_urls[0]}/bytes/100000?name=rep\n" * 3)
    out = tmp_path / "out"
    result = run_cli(src, "-o", out, *FAST)
    assert result.returncode == 0, result.stderr.decode()
    assert [r["bytes"] for r in read_manifest(out / "manifest.jsonl")] == [100_000] * 3
    assert "bytes      100.0 KB in" in result.stderr.decode()
    hosts = json.loads((out / "manifest.hosts.json").read_text())
    assert sum(h["bytes"] for h in hosts["hosts"]) == 100_000


def test_retry_after_cap_bounds_the_wait_a_server_asks_for(
    server: LocalServer, tmp_path: Path
) -> None:
    # The server asks for 30 s; the cap lets the retry go after 0.3 s.
    url = f"{server.base_urls[0]}/retry-after/cli-cap/1/503?after=30"
    out = tmp_path / "out"
    result = run_cli("-", "-o", out, "-q", "--retry-after-cap", "0.3", stdin=url.encode())
    assert result.returncode == 0, result.stderr.decode()
    (record,) = read_manifest(out / "manifest.jsonl")
    assert (record["state"], record["attempts"]) == ("written", 2)
    starts = server.stats()["hosts"][server.host_key(0)]["starts"]
    assert 0.29 <= starts[-1] - starts[-2] < 10


def test_no_sha256_leaves_the_digest_null(server: LocalServer, tmp_path: Path) -> None:
    urls = _byte_urls(server, "nohash", 4)
    out = tmp_path / "out"
    result = run_cli("-", "-o", out, "-p", "2", "-q", "--no-sha256", stdin="\n".join(urls).encode())
    assert result.returncode == 0, result.stderr.decode()
    records = read_manifest(out / "manifest.jsonl")
    assert len(records) == 4
    for record in records:
        assert record["state"] == "written" and record["sha256"] is None
        size = int(str(record["url"]).split("/bytes/")[1].split("?", maxsplit=1)[0])
        assert Path(str(record["path"])).stat().st_size == size


def test_stdin_input_and_quiet(server: LocalServer, tmp_path: Path) -> None:
    urls = _byte_urls(server, "stdin", 5)
    out = tmp_path / "out"
    result = run_cli("-", "-o", out, "-p", "2", "-q", stdin="\n".join(urls).encode())
    assert result.returncode == 0
    assert result.stdout == b"" and result.stderr == b""
    records = read_manifest(out / "manifest.jsonl")
    assert sorted(r["url"] for r in records) == sorted(urls)
    for record in records:
        _check_written(record, record["url"])


@pytest.mark.parametrize("via_stdin", [False, True])
def test_gzip_input_detected_by_magic(server: LocalServer, tmp_path: Path, via_stdin: bool) -> None:
    urls = _byte_urls(server, f"gz{via_stdin}", 6)
    data = gzip.compress(("\n".join(urls) + "\n").encode())
    out = tmp_path / "out"
    if via_stdin:
        result = run_cli("-", "-o", out, *FAST, stdin=data)
    else:
        src = tmp_path / "urls.txt"  # no .gz suffix: detected by its magic bytes
        src.write_bytes(data)
        result = run_cli(src, "-o", out, *FAST)
    assert result.returncode == 0, result.stderr.decode()
    records = read_manifest(out / "manifest.jsonl")
    assert sorted(r["url"] for r in records) == sorted(urls)
    for record in records:
        _check_written(record, record["url"])


def test_jsonl_paths_info_and_bad_lines(server: LocalServer, tmp_path: Path) -> None:
    a, b = server.base_urls[:2]
    lines = [
        json.dumps({"url": f"{a}/bytes/64?name=j1", "path": "mine/one.bin", "info": {"id": 1}}),
        json.dumps({"url": f"{b}/bytes/65?name=j2", "info": ["x", 2]}),
        f"{a}/bytes/66?name=j3",
        "# a comment",
        "",
        "{not json",
        json.dumps({"path": "p", "info": {"id": 5}}),
        json.dumps({"url": f"{a}/bytes/1", "path": 7}),
        json.dumps({"url": f"{b}/status/404"}),
        "ftp://example.invalid/file",
        "http://",
        json.dumps({"url": f"{a}/bytes/2?name=clobber", "path": "./manifest.jsonl"}),
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = run_cli(src, "-o", out, *FAST)
    assert result.returncode == 1, result.stderr.decode()
    records = read_manifest(out / "manifest.jsonl")
    assert len(records) == 10  # one per line that is not blank or a comment
    by_url = latest(records)

    one = by_url[f"{a}/bytes/64?name=j1"]
    _check_written(one, one["url"])
    assert Path(one["path"]) == out / "mine" / "one.bin"
    assert one["info"] == {"id": 1}
    assert by_url[f"{b}/bytes/65?name=j2"]["info"] == ["x", 2]
    assert by_url[f"{a}/bytes/66?name=j3"]["info"] is None

    bad = [r for r in records if r["error_kind"] == "bad_input"]
    assert [r["state"] for r in bad] == ["failed"] * 4
    reasons = "\n".join(r["error_message"] for r in bad)
    assert "line 6: invalid JSON" in reasons
    assert "line 7: missing 'url' field" in reasons
    assert "line 8: 'path' must be a non-empty string" in reasons
    assert "line 12: 'path' would overwrite manifest.jsonl" in reasons
    assert {"id": 5} in [r["info"] for r in bad]

    assert by_url[f"{b}/status/404"]["status"] == 404
    assert by_url[f"{b}/status/404"]["error_kind"] == "http"
    assert by_url["ftp://example.invalid/file"]["error_kind"] == "unsupported_scheme"
    assert by_url["http://"]["error_kind"] == "invalid_url"
    err = result.stderr.decode()
    assert "bad_input" in err and "http 404" in err


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["{missing}"],
        ["{src}", "--max-size", "lots"],
        ["{src}", "--attempts", "0"],
        ["{src}", "--attempts", "2", "--retries", "1"],
        ["{src}", "-H", "no colon"],
        ["{src}", "--strategy", "yolo"],
        ["{src}", "-p", "0"],
        ["{src}", "--timeout", "0"],
        ["{src}", "--max-size", "0"],
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    src = tmp_path / "urls.txt"
    src.write_text("http://127.0.0.2:9/x\n")
    argv = [a.format(src=src, missing=tmp_path / "missing.txt") for a in args]
    result = run_cli(*argv, "-o", tmp_path / "out")
    assert result.returncode == 2
    assert b"error" in result.stderr
    assert not (tmp_path / "out" / "manifest.jsonl").exists()


def test_options_reach_the_requests(server: LocalServer, tmp_path: Path) -> None:
    a = server.base_urls[0]
    src = tmp_path / "urls.txt"
    src.write_text(f"{a}/echo?case=opts\n{a}/bytes/5000?name=big\n")
    out = tmp_path / "out"
    result = run_cli(
        src, "-o", out, *FAST, "-H", "X-Test: yes", "--user-agent", "cli-test/1",
        "--max-size", "1K", "--manifest", tmp_path / "m" / "run.jsonl",
    )  # fmt: skip
    assert result.returncode == 1
    by_url = latest(read_manifest(tmp_path / "m" / "run.jsonl"))
    echo = json.loads(Path(by_url[f"{a}/echo?case=opts"]["path"]).read_text())
    headers = {k.lower(): v for k, v in echo["headers"].items()}
    assert headers["x-test"] == "yes"
    assert headers["user-agent"] == "cli-test/1"
    assert by_url[f"{a}/bytes/5000?name=big"]["error_kind"] == "too_large"
    assert not (out / "manifest.jsonl").exists()


def test_skip_existing_reports_cached(server: LocalServer, tmp_path: Path) -> None:
    urls = _byte_urls(server, "cache", 4)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls))
    out = tmp_path / "out"
    assert run_cli(src, "-o", out, *FAST).returncode == 0
    before = path_counts(server)
    result = run_cli(src, "-o", out, *FAST, "--skip-existing")
    assert result.returncode == 0
    assert {r["state"] for r in read_manifest(out / "manifest.jsonl")} == {"cached"}
    assert sum(path_counts(server).values()) == sum(before.values())  # nothing requested again


def test_retry_transient_runs_only_transient_failures(server: LocalServer, tmp_path: Path) -> None:
    a, b, c = server.base_urls
    flaky = f"{a}/flaky/rt-{tmp_path.name}/1/502"  # 503 would pause the host
    gone = f"{b}/status/404?rt={tmp_path.name}"
    ok = f"{c}/bytes/10?name=rt-{tmp_path.name}"
    src = tmp_path / "urls.txt"
    src.write_text("\n".join([flaky, gone, ok, "{bad"]) + "\n")
    out = tmp_path / "out"

    first = run_cli(src, "-o", out, *FAST, "--attempts", "1")
    assert first.returncode == 1
    state = latest(read_manifest(out / "manifest.jsonl"))
    assert state[flaky]["status"] == 502 and state[flaky]["state"] == "failed"
    assert state[gone]["status"] == 404
    assert state[ok]["state"] == "written"

    second = run_cli(src, "-o", out, *FAST, "--attempts", "1", "--retry-transient")
    assert second.returncode == 1  # the 404 and the bad line are still failed
    records = read_manifest(out / "manifest.jsonl")
    assert len(records) == 5  # 4 from the first run, then only the flaky URL
    assert records[-1]["url"] == flaky and records[-1]["state"] == "written"
    counts = path_counts(server)
    assert counts[flaky.split(a)[1]] == 2
    assert counts[gone.split(b)[1]] == 1
    assert counts[ok.split(c)[1]] == 1
    assert "skipped    1 already done, 2 permanent failures not retried" in second.stderr.decode()

    third = run_cli(src, "-o", out, *FAST, "--attempts", "1", "--resume")
    assert third.returncode == 1
    counts = path_counts(server)
    assert counts[gone.split(b)[1]] == 2  # --resume retries permanent failures too
    assert counts[flaky.split(a)[1]] == 2
    assert counts[ok.split(c)[1]] == 1


def test_resume_without_manifest_runs_everything(server: LocalServer, tmp_path: Path) -> None:
    urls = _byte_urls(server, "fresh-resume", 3)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls))
    result = run_cli(src, "-o", tmp_path / "out", *FAST, "--resume")
    assert result.returncode == 0
    assert len(read_manifest(tmp_path / "out" / "manifest.jsonl")) == 3


def test_missing_input_creates_no_output_directory(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "missing.txt", "-o", tmp_path / "out")
    assert result.returncode == 2
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "urls.txt"
    src.write_text("http://127.0.0.2:9/x\n")
    (tmp_path / "afile").write_text("mine")
    result = run_cli(src, "-o", tmp_path / "afile")
    assert result.returncode == 2
    assert b"not a directory" in result.stderr
    assert (tmp_path / "afile").read_text() == "mine"


@pytest.mark.parametrize("resume", [False, True])
def test_a_manifest_that_is_the_input_is_refused_and_the_input_kept(
    tmp_path: Path, resume: bool
) -> None:
    src = tmp_path / "urls.txt"
    text = "http://127.0.0.2:9/x\nhttp://127.0.0.2:9/y\n"
    src.write_text(text)
    flags = ["--resume"] if resume else []
    result = run_cli(src, "-o", tmp_path / "out", "--manifest", src, *flags)
    assert result.returncode == 2
    assert b"input file is also the manifest" in result.stderr
    assert src.read_text() == text


def test_resume_downloads_a_done_url_again_for_a_path_it_was_not_written_to(
    server: LocalServer, tmp_path: Path
) -> None:
    url = f"{server.base_urls[0]}/bytes/100?name=twopaths-{tmp_path.name}"
    first, second = {"url": url, "path": "a/one.bin"}, {"url": url, "path": "b/two.bin"}
    src = tmp_path / "in.jsonl"
    out = tmp_path / "out"
    src.write_text(json.dumps(first) + "\n")
    assert run_cli(src, "-o", out, *FAST).returncode == 0
    src.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    result = run_cli(src, "-o", out, *FAST, "--resume")
    assert result.returncode == 0, result.stderr.decode()
    assert (out / "b" / "two.bin").read_bytes() == body_for(100, f"twopaths-{tmp_path.name}")
    assert "skipped    1 already done" in result.stderr.decode()  # a/one.bin, not b/two.bin


@pytest.mark.parametrize("path", ["dir/", "./x", "a//b", "c/../d"])
def test_resume_skips_a_line_whose_own_path_is_spelled_loosely(
    server: LocalServer, tmp_path: Path, path: str
) -> None:
    """The file is where the download put it ("dir/" is out/dir): --resume must look there,
    not fetch it again on every run."""
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"url": f"{server.base_urls[0]}/bytes/7", "path": path}) + "\n")
    out = tmp_path / "out"
    assert run_cli(src, "-o", out, *FAST).returncode == 0
    result = run_cli(src, "-o", out, *FAST, "--resume")
    assert result.returncode == 0, result.stderr.decode()
    assert "skipped    1 already done" in result.stderr.decode()
    assert len(read_manifest(out / "manifest.jsonl")) == 1


def test_a_path_with_a_nul_is_an_unsafe_path(server: LocalServer, tmp_path: Path) -> None:
    line = json.dumps({"url": f"{server.base_urls[0]}/bytes/5", "path": "a\u0000b"})
    out = tmp_path / "out"
    result = run_cli("-", "-o", out, *FAST, stdin=line.encode() + b"\n")
    assert result.returncode == 1
    (record,) = read_manifest(out / "manifest.jsonl")
    assert record["error_kind"] == "unsafe_path"


def test_lines_that_fail_on_their_own_path_or_info_stop_nothing_now_or_on_resume(
    server: LocalServer, tmp_path: Path
) -> None:
    """From the CLI audit, each line alone broke the run or a resume: an info nested ~990
    deep stopped the run at its record (RecursionError); a path with a lone surrogate was
    fetched, then failed as strategy, and made every --resume die at the check of its file; a
    line's own path outside the folder failed as the URL's latest record, so the URL another
    line had written was fetched again; a line that failed before its path was resolved
    recorded that path relative (and an absolute one outside the folder as it was)."""
    name = f"ownfail-{tmp_path.name}"
    url = f"{server.base_urls[0]}/bytes/10?name={name}"
    deep = "[" * 989 + "]" * 989
    lines = [
        url,
        json.dumps({"url": url, "path": "a\ud800b"}),
        json.dumps({"url": url, "path": "../outside.bin"}),
        json.dumps({"url": url, "path": str(tmp_path / "outside-too.bin")}),
        json.dumps({"url": "ftp://h/y", "path": "p/q"}),
        f'{{"url": "{server.base_urls[1]}/bytes/3?name={name}", "info": {deep}}}',
        f"{server.base_urls[1]}/bytes/4?name={name}",
    ]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = run_cli(src, "-o", out, "-p", "1", "--progress", "none")
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr.decode()
    records = read_manifest(out / "manifest.jsonl")
    dirs = [u.removeprefix("http://").replace(":", "_") for u in server.base_urls]
    assert sorted((r["error_kind"] or r["state"], r["path"]) for r in records) == sorted(
        [
            ("written", str(out.absolute() / dirs[0] / "bytes" / f"10@name={name}")),
            ("unsafe_path", None),  # the surrogate: refused before any request
            ("unsafe_path", None),
            ("unsafe_path", None),  # absolute, outside: null as the relative one is
            ("unsupported_scheme", str(out.absolute() / "p" / "q")),
            ("bad_input", None),
            ("written", str(out.absolute() / dirs[1] / "bytes" / f"4@name={name}")),
        ]
    )
    assert server.stats()["paths"][f"/bytes/10?name={name}"] == 1
    result = run_cli(src, "-o", out, "-p", "1", "--progress", "none", "--resume")
    assert b"Traceback" not in result.stderr, result.stderr.decode()
    assert "skipped    2 already done" in result.stderr.decode()
    assert server.stats()["paths"][f"/bytes/10?name={name}"] == 1


def test_per_host_side_car_adds_up_to_the_manifest(server: LocalServer, tmp_path: Path) -> None:
    urls = [*_byte_urls(server, "side", 12), server.base_urls[0] + "/status/404"]
    src = tmp_path / "urls.txt"
    # Lines the CLI fails itself (not JSON, no URL) are counted as the manifest counts them.
    src.write_text("\n".join(urls) + '\nnot a url\n{"url": 5}\n{broken\n')
    out = tmp_path / "out"
    result = run_cli(src, "-o", out, *FAST)
    assert result.returncode == 1
    side = json.loads((out / "manifest.hosts.json").read_text())
    records = read_manifest(out / "manifest.jsonl")
    hosts = {h["host"]: h for h in side["hosts"]}
    assert sum(h["bundles"] for h in hosts.values()) == side["total"]["bundles"] == 16
    assert side["total"]["requests"] == sum(r["attempts"] for r in records)
    assert side["total"]["states"] == {"written": 12, "failed": 4}
    first = server.base_urls[0].removeprefix("http://")
    assert hosts[first]["errors"] == {"http": 1} and hosts[first]["statuses"]["4xx"] == 1
    assert hosts["-"]["errors"] == {"invalid_url": 1, "bad_input": 2}
    err = result.stderr.decode()
    assert "hosts with the most failures" in err and "manifest.hosts.json" in err


def test_the_side_car_is_the_latest_runs_also_when_it_counted_no_host(
    server: LocalServer, tmp_path: Path
) -> None:
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(_byte_urls(server, "latest", 3)) + "\n")
    out = tmp_path / "out"
    assert run_cli(src, "-o", out, *FAST).returncode == 0
    side = out / "manifest.hosts.json"
    assert json.loads(side.read_text())["total"]["bundles"] == 3
    # A resume with nothing left to do: the first run's numbers would read as its own.
    assert run_cli(src, "-o", out, "--resume", *FAST).returncode == 0
    after = json.loads(side.read_text())
    assert after["hosts"] == [] and after["total"]["bundles"] == 0
    # A fresh run over an input with no URL at all.
    src.write_text("# nothing here\n")
    assert run_cli(src, "-o", out, *FAST).returncode == 0
    assert json.loads(side.read_text())["hosts"] == []


def test_a_symlink_planted_at_the_side_cars_name_is_replaced_not_followed(
    server: LocalServer, tmp_path: Path
) -> None:
    """The side-car was written through a symlink at its name: a file outside the output
    folder was overwritten."""
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(_byte_urls(server, "planted", 2)) + "\n")
    out, outside = tmp_path / "out", tmp_path / "outside"
    out.mkdir()
    outside.write_text("precious")
    (out / "manifest.hosts.json").symlink_to(outside)
    assert run_cli(src, "-o", out, *FAST).returncode == 0
    assert outside.read_text() == "precious"
    side = out / "manifest.hosts.json"
    assert not side.is_symlink()
    assert json.loads(side.read_text())["total"]["bundles"] == 2
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "manifest.hosts.json",
        "manifest.jsonl",
    ]


def test_the_side_car_keeps_its_mode_and_a_long_name(server: LocalServer, tmp_path: Path) -> None:
    """Written beside its name and renamed over it, the side-car came back 0644 from 0600,
    and one whose name was near the file system's limit was not written at all."""
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(_byte_urls(server, "mode", 2)) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    manifest = out / ("m" * 238 + ".jsonl")  # its side-car's name: 249 bytes of 255
    side = manifest.with_name("m" * 238 + ".hosts.json")
    side.write_text("{}")
    side.chmod(0o600)
    assert run_cli(src, "-o", out, "--manifest", manifest, *FAST).returncode == 0
    assert json.loads(side.read_text())["total"]["bundles"] == 2
    assert stat.S_IMODE(side.stat().st_mode) == 0o600
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == sorted(
        [manifest.name, side.name]
    )


def test_ray_backend_from_the_command_line(server: LocalServer, tmp_path: Path) -> None:
    urls = _byte_urls(server, "ray", 20)
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    result = run_cli(src, "-o", out, "--backend", "ray", "-p", "2", "-q", timeout=180)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert result.stderr == b""  # -q silences Ray's notes as it starts too
    records = read_manifest(out / "manifest.jsonl")
    assert sorted(r["url"] for r in records) == sorted(urls)
    for record in records:
        _check_written(record, record["url"])


def test_stdin_that_is_the_manifest_is_refused(server: LocalServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    urls = _byte_urls(server, "own", 3)
    assert run_cli("-", "-o", out, "-q", stdin="\n".join(urls).encode()).returncode == 0
    manifest = out / "manifest.jsonl"
    before = manifest.read_bytes()
    with manifest.open("rb") as stdin:
        result = subprocess.run(
            cli_command("-", "-o", out, "-q"),
            stdin=stdin,
            capture_output=True,
            env=cli_env(),
            timeout=60,
            check=False,
        )
    assert result.returncode == 2
    assert b"standard input is also the manifest" in result.stderr
    assert manifest.read_bytes() == before


def test_an_output_directory_reached_through_a_symlink_still_protects_the_manifest(
    server: LocalServer, tmp_path: Path
) -> None:
    real, link = tmp_path / "real", tmp_path / "link"
    real.mkdir()
    link.symlink_to(real)
    urls = _byte_urls(server, "sym", 2)
    lines = [urls[0], json.dumps({"url": urls[1], "path": "manifest.jsonl"})]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(lines) + "\n")
    result = run_cli(src, "-o", link, "--manifest", real / "manifest.jsonl", "-q", "-p", "1")
    assert result.returncode == 1, result.stderr.decode()
    records = {r["url"]: r for r in read_manifest(real / "manifest.jsonl")}
    assert records[urls[0]]["state"] == "written"
    assert records[urls[1]]["state"] == "failed"
    assert "this run's own file" in records[urls[1]]["error_message"]


def _refused_own_paths(server: LocalServer, out: Path, tag: str, paths: dict[str, str]) -> Path:
    """Run a list in ``out`` (its first URL plain, one line for each path of ``paths``): every
    path is a bad_input record naming the run's file it would overwrite (the path's value),
    and the list is left as it was. Returns the list."""
    urls = _byte_urls(server, tag, len(paths) + 1)
    lines = [urls[0], *(json.dumps({"url": u, "path": p}) for u, p in zip(urls[1:], paths))]
    src = out / "urls.txt"
    text = "\n".join(lines) + "\n"
    src.write_text(text)
    result = run_cli(src, "-o", out, "-q", "-p", "1")
    assert result.returncode == 1, result.stderr.decode()
    assert src.read_text() == text
    records = latest(read_manifest(out / "manifest.jsonl"))
    assert records[urls[0]]["state"] == "written"
    for url, taken in zip(urls[1:], paths.values()):
        assert records[url]["error_kind"] == "bad_input", records[url]
        why = f"would overwrite {taken} (this run's own file)"
        assert why in records[url]["error_message"], records[url]
    return src


def test_a_path_onto_or_below_the_input_file_is_refused(
    server: LocalServer, tmp_path: Path
) -> None:
    """The URL list inside the output folder (``-o .``, the default): a line's path onto it
    replaced the list with a body (exit 0), one below it moved the list to ``urls.txt/%file``
    and the documented ``--resume`` then failed ("Is a directory")."""
    out = tmp_path / "out"
    out.mkdir()
    src = _refused_own_paths(server, out, "inp", {"urls.txt": "urls.txt", "urls.txt/b": "urls.txt"})
    text = src.read_text()
    again = run_cli(src, "-o", out, "-q", "-p", "1", "--resume")
    assert again.returncode == 1, again.stderr.decode()
    assert src.read_text() == text


def test_a_path_onto_the_runs_own_files_is_refused_however_it_is_spelled(
    server: LocalServer, tmp_path: Path
) -> None:
    """An absolute path, one through ``..`` or through a symlinked folder: the body replaced
    the manifest (every other record lost, exit 0) or the input file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "link").symlink_to(out)
    spellings = {
        str(out / "manifest.jsonl"): "manifest.jsonl",
        "../out/manifest.jsonl": "manifest.jsonl",
        "link/manifest.hosts.json": "manifest.hosts.json",
        str(out / "." / "urls.txt"): "urls.txt",
    }
    _refused_own_paths(server, out, "spelled", spellings)
    assert json.loads((out / "manifest.hosts.json").read_text())


def test_repeated_headers_reach_the_server_and_bad_ones_are_usage_errors(
    server: LocalServer, tmp_path: Path
) -> None:
    """``-H`` is repeatable: a name given twice was sent with its last value only. A header
    that cannot be sent (not a token; a body's framing) is exit 2, not every URL failing."""
    out = tmp_path / "out"
    url = f"{server.base_urls[0]}/echo"
    result = run_cli(
        "-", "-o", out, "-q", "-p", "1", "-H", "X-Tag: a", "-H", "x-tag: b",
        stdin=f"{url}\n".encode(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    (record,) = read_manifest(out / "manifest.jsonl")
    echoed = json.loads(Path(record["path"]).read_text())
    tags = [v for k, v in echoed["headers"].items() if k.lower() == "x-tag"]
    assert tags == ["a, b"], echoed["headers"]
    for bad in ("X(bad): 1", "Content-Length: 40"):
        refused = run_cli("-", "-o", tmp_path / "o2", "-H", bad, stdin=f"{url}\n".encode())
        assert refused.returncode == 2, (bad, refused.stderr.decode())
        assert not (tmp_path / "o2" / "manifest.jsonl").exists()


def test_a_url_whose_default_path_is_the_manifest_is_refused(
    server: LocalServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    host = server.base_urls[0].removeprefix("http://").replace(":", "_")
    manifest = out / host / "any" / "m.jsonl"
    urls = [f"{server.base_urls[0]}/any/a", f"{server.base_urls[0]}/any/m.jsonl"]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(urls) + "\n")
    result = run_cli(src, "-o", out, "--manifest", manifest, "-q", "-p", "1")
    assert result.returncode == 1, result.stderr.decode()
    records = {r["url"]: r for r in read_manifest(manifest)}
    assert records[urls[0]]["state"] == "written"
    assert records[urls[1]]["state"] == "failed"
    assert "this run's own file" in records[urls[1]]["error_message"]


def test_robots_is_read_for_the_user_agent_a_header_sets(
    server: LocalServer, tmp_path: Path
) -> None:
    # The server's robots.txt disallows everything to BlockedBot (see ROBOTS_TXT).
    out = tmp_path / "out"
    url = f"{server.base_urls[1]}/links/1"
    result = run_cli(
        "-", "-o", out, "-q", "--robots", "-H", "User-Agent: BlockedBot/2.0", stdin=url.encode()
    )
    assert result.returncode == 0, result.stderr.decode()
    (record,) = read_manifest(out / "manifest.jsonl")
    assert record["state"] == "skipped" and record["error_kind"] == "robots"


def test_too_many_processes_is_one_clear_error(server: LocalServer, tmp_path: Path) -> None:
    # From stdin: a small file's hosts would cap the workers at one.
    url = f"{server.base_urls[0]}/links/1\n".encode()
    result = run_cli("-", "-o", tmp_path / "out", "-q", "-p", "100000", stdin=url, timeout=120)
    assert result.returncode == 2, result.stderr.decode()[-2000:]
    assert b"Traceback" not in result.stderr
    assert b"cannot start 100000 worker processes" in result.stderr


@pytest.mark.parametrize(
    "bad", [["--split-host", "exa_mple.com:99999=2"], ["-p", "100000"]], ids=["split", "processes"]
)
def test_a_usage_error_the_library_finds_keeps_the_previous_manifest(
    server: LocalServer, tmp_path: Path, bad: list[str]
) -> None:
    """Rerunning a crawl with a bad option ran nothing, and must not empty the manifest of
    the run before it (the library finds these errors after the manifest was opened)."""
    urls = "".join(f"{url}\n" for url in _byte_urls(server, "keep", 3)).encode()
    out = tmp_path / "out"
    first = run_cli("-", "-o", out, "-q", stdin=urls)
    assert first.returncode == 0, first.stderr.decode()
    before = (out / "manifest.jsonl").read_bytes()
    assert len(read_manifest(out / "manifest.jsonl")) == 3
    again = run_cli("-", "-o", out, "--progress", "lines", *bad, stdin=urls, timeout=120)
    assert again.returncode == 2, again.stderr.decode()[-2000:]
    # One line: no progress line, no summary of a run that did not run.
    (line,) = again.stderr.decode().splitlines()
    assert line.startswith("shardload: error: ")
    assert (out / "manifest.jsonl").read_bytes() == before
    fresh = run_cli("-", "-o", tmp_path / "fresh", "-q", *bad, stdin=urls, timeout=120)
    assert fresh.returncode == 2
    assert not (tmp_path / "fresh" / "manifest.jsonl").exists()


def test_a_closed_stdin_is_a_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        cli_command("-", "-o", tmp_path / "out", "--progress", "none"),
        env=cli_env(),
        capture_output=True,
        check=False,
        timeout=60,
        preexec_fn=lambda: os.close(0),  # `shardload - <&-`
    )
    assert result.returncode == 2, result.stderr.decode()
    assert result.stderr == b"shardload: error: standard input is closed\n"


def test_a_closed_stderr_does_not_stop_the_crawl(server: LocalServer, tmp_path: Path) -> None:
    """``shardload ... 2>&1 | head -1``: progress can no longer be shown, the crawl goes on."""
    bases = server.base_urls
    urls = [f"{bases[i % len(bases)]}/slow/20/closed-{tmp_path.name}-{i}" for i in range(200)]
    src = tmp_path / "urls.txt"
    src.write_text("\n".join(urls) + "\n")
    out = tmp_path / "out"
    args = [src, "-o", out, "--progress", "lines", "--progress-interval", "0.01", "-p", "1"]
    process = subprocess.Popen(
        cli_command(*args), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=cli_env()
    )
    assert process.stderr is not None
    process.stderr.readline()  # the first progress line, then the reader goes away
    process.stderr.close()
    assert process.wait(timeout=60) == 0
    records = read_manifest(out / "manifest.jsonl")
    assert len(records) == 200 and {r["state"] for r in records} == {"written"}


def test_resume_fetches_a_plain_line_whose_url_was_done_only_at_another_lines_path(
    server: LocalServer, tmp_path: Path
) -> None:
    """A URL wanted at a custom path and, on a later line, at its default path: a run stopped
    between the two leaves a "done" record for the URL; resume must still fetch the plain
    line (its file does not exist), and give it its own record."""
    url = f"{server.base_urls[0]}/bytes/100?name=both-{tmp_path.name}"
    custom = json.dumps({"url": url, "path": "custom/u.bin"})
    src = tmp_path / "in.jsonl"
    out = tmp_path / "out"
    src.write_text(custom + "\n")
    assert run_cli(src, "-o", out, *FAST).returncode == 0  # the run that stopped early
    src.write_text(custom + "\n" + url + "\n")
    result = run_cli(src, "-o", out, *FAST, "--resume")
    assert result.returncode == 0, result.stderr.decode()
    records = read_manifest(out / "manifest.jsonl")
    assert [r.get("own_path", False) for r in records] == [True, False]
    assert Path(records[1]["path"]).read_bytes() == body_for(100, f"both-{tmp_path.name}")
    again = run_cli(src, "-o", out, *FAST, "--resume")  # both done now: nothing to fetch
    assert "skipped    2 already done" in again.stderr.decode()
    assert len(read_manifest(out / "manifest.jsonl")) == 2


def test_a_low_open_file_limit_shrinks_the_default_process_count(server, tmp_path):
    """Without -p, the CPU count is fitted to ``ulimit -n`` (here 40: one process) instead of
    being refused; an explicit -p that cannot fit is still a clear usage error."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{server.base_urls[i % 3]}/links/{i}\n" for i in range(30)))

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))

    def run(*extra: str) -> subprocess.CompletedProcess[bytes]:
        command = cli_command(urls, "-o", tmp_path / "out", "--progress", "none", *extra)
        return subprocess.run(
            command,
            capture_output=True,
            env=cli_env(),
            timeout=60,
            check=False,
            preexec_fn=low_limit,
        )

    done = run()
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert len(list((tmp_path / "out").rglob("*"))) >= 30
    refused = run("-p", "4")
    assert refused.returncode == 2 and b"ulimit -n" in refused.stderr, refused.stderr


def _run_under_file_size_limit(limit: int, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    """The CLI where no file may grow past ``limit`` bytes (EFBIG, as a full disk would)."""

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        cli_command(*args), capture_output=True, env=cli_env(), timeout=60, check=False,
        preexec_fn=small_files,
    )  # fmt: skip


def test_a_file_the_disk_refused_is_retried_by_retry_transient(server, tmp_path):
    """A full disk (here a file-size limit) fails a URL as ``disk``: fixed on this machine, not
    at the server, so ``--retry-transient`` fetches it again, and the summary says to."""
    big, small = f"{server.base_urls[0]}/bytes/100000", f"{server.base_urls[0]}/bytes/10"
    urls = tmp_path / "urls.txt"
    urls.write_text(f"{big}\n{small}\n")
    out = tmp_path / "out"
    first = _run_under_file_size_limit(8192, urls, "-o", out, "--progress", "none")
    assert first.returncode == 1, first.stderr.decode()[-2000:]
    records = latest(read_manifest(out / "manifest.jsonl"))
    assert (records[big]["error_kind"], records[small]["state"]) == ("disk", "written")
    assert "--retry-transient to retry the 1 transient" in first.stderr.decode()
    again = run_cli(urls, "-o", out, "--progress", "none", "--retry-transient")
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    assert "skipped    1 already done, 0 permanent" in again.stderr.decode()
    record = latest(read_manifest(out / "manifest.jsonl"))[big]
    assert record["state"] == "written" and Path(record["path"]).stat().st_size == 100_000


def test_a_manifest_the_disk_refuses_stops_the_run_and_says_what_it_lacks(server, tmp_path):
    """A manifest over the file-size limit (as a full disk would) stops the run; the summary
    says how many finished URLs are not in it and to resume, and --resume finishes the job.
    Before, the summary counted every finished URL as recorded, with no hint, and a stop
    recorded only the first of the bundles it still held."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{server.base_urls[i % 3]}/links/{i}\n" for i in range(1500)))
    out = tmp_path / "out"
    first = _run_under_file_size_limit(60_000, urls, "-o", out, "--progress", "none")
    err = first.stderr.decode()
    assert first.returncode == 1, err[-2000:]
    assert "cannot write the manifest: [Errno 27]" in err and "rerun with --resume" in err, err
    finished = int(re.search(r"finished +([\d,]+)", err)[1].replace(",", ""))  # type: ignore[index]
    unrecorded = int(re.search(r"unrecorded ([\d,]+)", err)[1].replace(",", ""))  # type: ignore[index]
    data = (out / "manifest.jsonl").read_bytes()
    whole = [json.loads(line) for line in data.split(b"\n")[:-1]]  # after it, a torn line
    assert finished - unrecorded == len(whole) > 0, (finished, unrecorded, len(whole))
    on_disk = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith("manifest")]
    assert len(on_disk) == finished  # every file a stop left is in the summary's count
    again = run_cli(urls, "-o", out, "--progress", "none", "--resume")
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    records = latest(read_manifest(out / "manifest.jsonl"))
    assert len(records) == 1500 and {r["state"] for r in records.values()} == {"written"}


def test_a_closed_stderr_sends_nothing_to_stdout(server, tmp_path):
    """``2>&-``: progress and the summary have nowhere to go; they must not land in stdout."""
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{server.base_urls[i % 3]}/links/{i}\n" for i in range(5)))
    command = cli_command(urls, "-o", tmp_path / "out", "--progress", "lines")
    done = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        env=cli_env(),
        timeout=60,
        check=False,
        preexec_fn=lambda: os.close(2),
    )
    assert done.returncode == 0
    assert done.stdout == b""
    usage = subprocess.run(
        cli_command(urls, "-p", "0"),
        stdout=subprocess.PIPE,
        env=cli_env(),
        timeout=60,
        check=False,
        preexec_fn=lambda: os.close(2),
    )
    assert usage.returncode == 2 and usage.stdout == b""  # argparse's usage went nowhere too


def test_a_manifest_that_is_a_pipe_is_written_and_gets_no_side_car(
    server: LocalServer, tmp_path: Path
) -> None:
    """`--manifest` on a FIFO (or /dev/stdout): the records stream through it, and no
    side-car is created beside it (for /dev/stdout that was /dev/stdout.hosts.json)."""
    urls = _byte_urls(server, "fifo", 4)
    fifo = tmp_path / "records"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read() -> None:
        with open(fifo, "rb") as f:
            received.append(f.read())

    reader = threading.Thread(target=read)
    reader.start()
    stdin = "".join(f"{url}\n" for url in urls).encode()
    result = run_cli("-", "-o", tmp_path / "out", "-q", "--manifest", fifo, stdin=stdin)
    reader.join(30)
    assert result.returncode == 0, result.stderr.decode()
    records = [json.loads(line) for line in received[0].splitlines()]
    assert sorted(r["url"] for r in records) == sorted(urls)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "records"]


def test_a_second_run_on_a_manifest_in_use_is_refused(server: LocalServer, tmp_path: Path) -> None:
    """Two runs into one output folder: the second emptied the shared manifest at its first
    flush, and 127 of 300 downloaded files had no record."""
    slow = [f"{server.base_urls[0]}/slow/100/busy{i}" for i in range(20)]
    src = tmp_path / "slow.txt"
    src.write_text("".join(f"{url}\n" for url in slow))
    out = tmp_path / "out"
    first = subprocess.Popen(
        cli_command(src, "-o", out, "-p", "1", "--per-host", "1", "-q"),
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        manifest = out / "manifest.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not manifest.exists():  # created at its start
            time.sleep(0.02)
        urls = "".join(f"{url}\n" for url in _byte_urls(server, "second", 3)).encode()
        second = run_cli("-", "-o", out, "-q", stdin=urls)
        assert first.poll() is None, "the first run ended before the second started"
        _, first_err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert second.returncode == 2, second.stderr.decode()
    assert "another shardload run is writing" in second.stderr.decode()
    assert first.returncode == 0, first_err.decode()
    assert sorted(r["url"] for r in read_manifest(manifest)) == sorted(slow)


def test_a_manifest_path_naming_a_file_that_is_no_manifest_is_refused(
    server: LocalServer, tmp_path: Path
) -> None:
    """A mistyped ``--manifest urls.txt`` emptied the user's URL list."""
    urls = "".join(f"{url}\n" for url in _byte_urls(server, "mistyped", 2))
    listed = tmp_path / "other-urls.txt"
    listed.write_text(urls)
    result = run_cli("-", "-o", tmp_path / "out", "--manifest", listed, stdin=urls.encode())
    assert result.returncode == 2, result.stderr.decode()
    assert "is not a shardload manifest" in result.stderr.decode()
    assert listed.read_text() == urls
    # An earlier manifest, and an empty file, are what a new manifest may replace.
    for manifest in (tmp_path / "out" / "m.jsonl", tmp_path / "empty.jsonl"):
        manifest.parent.mkdir(exist_ok=True)
        manifest.touch()
        for _ in range(2):
            again = run_cli("-", "-o", tmp_path / "out", "-q", "--manifest", manifest,
                            stdin=urls.encode())  # fmt: skip
            assert again.returncode == 0, again.stderr.decode()
            assert len(read_manifest(manifest)) == 2


def test_an_output_directory_no_file_can_be_made_in_is_a_usage_error(
    server: LocalServer, tmp_path: Path
) -> None:
    """Every URL was downloaded, then failed as a disk error (root's access() says yes to a
    read-only or immutable folder; /proc/self is one for everybody)."""
    urls = "".join(f"{url}\n" for url in _byte_urls(server, "unwritable", 2)).encode()
    result = run_cli("-", "-o", "/proc/self", "--manifest", tmp_path / "m.jsonl", stdin=urls)
    assert result.returncode == 2, result.stderr.decode()
    assert "cannot write into the output directory /proc/self" in result.stderr.decode()
    assert not (tmp_path / "m.jsonl").exists()


def test_a_split_host_that_matches_no_url_is_noted(server: LocalServer, tmp_path: Path) -> None:
    """``--split-host 127.0.0.2=2`` (no port) was ignored without a word."""
    urls = _byte_urls(server, "split", 4)
    hostport = urls[0].split("/")[2]
    stdin = "".join(f"{url}\n" for url in urls).encode()
    for split, noted in ((hostport.split(":")[0], True), (hostport, False)):
        result = run_cli("-", "-o", tmp_path / split, "-p", "2", "--progress", "none",
                         "--split-host", f"{split}=2", stdin=stdin)  # fmt: skip
        assert result.returncode == 0, result.stderr.decode()
        said = f"--split-host {split} matched no URL" in result.stderr.decode()
        assert said is noted, result.stderr.decode()


@pytest.mark.parametrize(
    "bad",
    [["-p", "0"], ["--max-size", "5Q"], ["--bogus"], ["--split-host", "foo"], ["--timeout", "-1"]],
)
def test_an_option_error_is_one_line(tmp_path: Path, bad: list[str]) -> None:
    """guarantees.md: usage errors exit 2 with one line; argparse's printed its whole usage
    block first (15 lines)."""
    result = run_cli("-", "-o", tmp_path / "out", *bad, stdin=b"")
    assert result.returncode == 2
    (line,) = result.stderr.decode().splitlines()
    assert line.startswith("shardload: error: ") and line.endswith("(see shardload --help)")


def test_progress_shows_the_speed_of_a_file_still_downloading(tmp_path: Path) -> None:
    """A run of one large file showed 0 B/s until the file was complete: the progress counted
    only finished files' bytes. It now counts bytes as they arrive."""
    gate = threading.Event()
    with RawServer(gated(gate, 4_000_000, 2_000_000)) as server:
        src = tmp_path / "urls.txt"
        src.write_text(f"{server.url}/big\n")
        args = ["--progress", "lines", "--progress-interval", "0.1", "-p", "1"]
        child = subprocess.Popen(
            cli_command(src, "-o", tmp_path / "out", *args),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=cli_env(),
        )
        try:
            assert child.stderr is not None
            lines: list[bytes] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                line = child.stderr.readline()
                lines.append(line)
                if not line or (b"done 0 " in line and b" 0 B/s" not in line):
                    break
            # Half the file is in, none of it finished: the line says how fast it comes.
            assert re.search(rb"done 0 \|.* [0-9.]+ [KMG]?B/s", lines[-1]), lines
            assert b" 0 B/s" not in lines[-1]
        finally:
            gate.set()
            child.communicate(timeout=30)
    assert child.returncode == 0
