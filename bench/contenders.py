"""The contenders: how each downloader is run on a workload, and where its files land.

Every contender gets the same URL list, writes every body to a file under its own output folder
on tmpfs, keeps at most 64 requests in flight per process (shardload: ``worker_concurrent=64``
and a per-host limit, ``--per-host``, 16 by default), makes one attempt per URL, and writes
nothing for an error response (aiodownload excepted: it writes an empty file, a known defect).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .workloads import Item, Workload

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PARALLEL = 64


@dataclass
class Prepared:
    argv: list[str]
    env: dict[str, str] | None = None


@dataclass
class Contender:
    name: str
    family: str  # shardload, aiohttp, or the peer's own name
    processes: int
    layout: Callable[[Item, int], str]  # the file of an item, relative to the output folder
    prepare: Callable[[Workload, Path, Path, int], Prepared]  # (workload, out, work, port)
    note: str = ""
    # Exit codes by which the tool says "some URLs failed": fine only on a workload with
    # URLs meant to fail (curl --fail: 22; aria2: 3 not found, 29 busy; wget2: 8).
    failure_exits: frozenset[int] = frozenset()


def layout_host_port(item: Item, port: int) -> str:
    return f"{item.host}_{port}{item.path}"


def layout_host(item: Item, port: int) -> str:
    return f"{item.host}{item.path}"


def layout_host_colon_port(item: Item, port: int) -> str:
    return f"{item.host}:{port}{item.path}"


def _url_file(workload: Workload, work: Path) -> Path:
    path = work / f"{workload.name}.urls"
    if not path.exists():
        path.write_text("".join(item.url + "\n" for item in workload.items))
    return path


def shardload(
    processes: int,
    per_host: int,
    worker: int = PARALLEL,
    sha256: bool = True,
    variant: str = "",
) -> Contender:
    """``shardload-pN``, or ``shardload-<variant>-pN`` for the same run with other settings:
    ``nohash`` (``sha256=False``: hashes nothing, like every peer) and ``host64`` (64 requests
    per host, as many as the peers and the plain scripts allow one host)."""

    def prepare(workload: Workload, out: Path, work: Path, port: int) -> Prepared:
        urls = _url_file(workload, work)
        return Prepared(
            [
                sys.executable,
                "-m",
                "bench.clients.shardload_client",
                str(urls),
                str(out),
                "--processes",
                str(processes),
                "--per-host",
                str(per_host),
                "--worker",
                str(worker),
                *([] if sha256 else ["--no-sha256"]),
            ]
        )

    return Contender(
        f"shardload-{variant}-p{processes}" if variant else f"shardload-p{processes}",
        "shardload",
        processes,
        layout_host_port,
        prepare,
        f"swarm(processes={processes}), concurrent={per_host}/host, worker_concurrent={worker}"
        + ("" if sha256 else ", DownloadStrategy(sha256=False)"),
    )


def aiohttp_plain(processes: int) -> Contender:
    def prepare(workload: Workload, out: Path, work: Path, port: int) -> Prepared:
        urls = _url_file(workload, work)
        argv = [sys.executable, "-m", "bench.clients.aiohttp_plain", str(urls), str(out)]
        return Prepared([*argv, "--processes", str(processes), "--concurrency", str(PARALLEL)])

    split = "" if processes == 1 else f", split by host over {processes} processes"
    return Contender(
        f"aiohttp-p{processes}",
        "aiohttp",
        processes,
        layout_host_port,
        prepare,
        f"one session, uvloop, semaphore {PARALLEL}{split}",
    )


def curl() -> Contender:
    def prepare(workload: Workload, out: Path, work: Path, port: int) -> Prepared:
        config = work / f"{workload.name}.curl"
        with open(config, "w") as f:
            for item in workload.items:
                target = out / layout_host_port(item, port)
                f.write(f'url = "{item.url}"\noutput = "{target}"\n')
        return Prepared(
            [
                "curl",
                "--parallel",
                "--parallel-max",
                str(PARALLEL),
                "--create-dirs",
                "--fail",
                "--no-progress-meter",
                "--config",
                str(config),
            ]
        )

    return Contender(
        "curl",
        "curl",
        1,
        layout_host_port,
        prepare,
        f"curl --parallel --parallel-max {PARALLEL} --fail --config FILE (url/output pairs)",
        frozenset({22}),
    )


def aria2() -> Contender:
    def prepare(workload: Workload, out: Path, work: Path, port: int) -> Prepared:
        listing = work / f"{workload.name}.aria2"
        with open(listing, "w") as f:
            for item in workload.items:
                f.write(f"{item.url}\n  out={layout_host_port(item, port)}\n")
        return Prepared(
            [
                "aria2c",
                "-q",
                "-i",
                str(listing),
                "-d",
                str(out),
                "-j",
                str(PARALLEL),
                "--max-tries=1",
                "--retry-wait=0",
                "--file-allocation=none",
                "--allow-overwrite=true",
                "--auto-file-renaming=false",
                "--console-log-level=error",
                "--summary-interval=0",
                "--deferred-input=true",
                "--max-connection-per-server=1",
                "--split=1",
            ]
        )

    return Contender(
        "aria2",
        "aria2",
        1,
        layout_host_port,
        prepare,
        f"aria2c -i FILE (out= per URL) -j {PARALLEL} --max-tries=1",
        frozenset({3, 29}),
    )


def wget2() -> Contender:
    def prepare(workload: Workload, out: Path, work: Path, port: int) -> Prepared:
        urls = _url_file(workload, work)
        return Prepared(
            [
                "wget2",
                "--no-config",
                "-q",
                f"--max-threads={PARALLEL}",
                "--tries=1",
                "--force-directories",
                "--directory-prefix",
                str(out),
                "--input-file",
                str(urls),
            ]
        )

    return Contender(
        "wget2",
        "wget2",
        1,
        layout_host,
        prepare,
        f"wget2 --max-threads={PARALLEL} --force-directories -i FILE (files at host/path)",
        frozenset({8}),
    )


def aiodownload(python: str) -> Contender:
    script = BENCH_DIR / "clients" / "aiodownload_client.py"

    def prepare(workload: Workload, out: Path, work: Path, port: int) -> Prepared:
        urls = _url_file(workload, work)
        argv = [python, str(script), str(urls), str(out), "--concurrent", str(PARALLEL)]
        return Prepared(argv, env={"PYTHONPATH": "", "PATH": os.environ.get("PATH", "")})

    return Contender(
        "aiodownload",
        "aiodownload",
        1,
        layout_host_colon_port,
        prepare,
        f"aiodownload 0.2.5 on Python 3.8 + aiohttp 2.3.10, RequestStrategy(concurrent={PARALLEL})",
    )


def _python38() -> str | None:
    """A working Python 3.8 (pyenv shims on PATH may name one that is not selected)."""
    candidates = [
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8"))),
        *sorted(glob.glob("/root/.pyenv/versions/3.8*/bin/python3.8")),
        "/usr/local/bin/python3.8",
        "/usr/bin/python3.8",
        shutil.which("python3.8") or "",
    ]
    for candidate in candidates:
        if not candidate or not os.path.exists(candidate):
            continue
        probe = subprocess.run([candidate, "--version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return candidate
    return None


def setup_aiodownload(venv: Path) -> tuple[str | None, str]:
    """A Python 3.8 venv with aiodownload 0.2.5 + aiohttp 2.3.10; (python, note)."""
    python = venv / "bin" / "python"
    probe = "import aiodownload, aiohttp; assert aiohttp.__version__ == '2.3.10'"
    check = [str(python), "-c", probe]
    if python.exists() and subprocess.run(check, capture_output=True, check=False).returncode == 0:
        return str(python), "ready"
    base = _python38()
    if base is None:
        return None, "no Python 3.8 interpreter found (aiodownload 0.2.5 needs aiohttp 2.3.10)"
    print(f"[bench] setting up aiodownload 0.2.5 in {venv} with {base}", flush=True)
    try:
        subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, timeout=120)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                "aiodownload==0.2.5",
                "aiohttp==2.3.10",
                "async-timeout<3",
            ],
            check=True,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        return None, f"could not install aiodownload 0.2.5: {exc}"
    if subprocess.run(check, capture_output=True, check=False).returncode != 0:
        return None, "aiodownload 0.2.5 installed but does not import"
    return str(python), "installed"


def select(
    names: list[str] | None,
    cores: int,
    per_host: int,
    aiodownload_python: str | None,
) -> list[Contender]:
    """The contenders to run (all available ones when ``names`` is None)."""
    n = max(2, cores)
    every: list[Contender] = [shardload(1, per_host)]
    every.append(shardload(n, per_host))
    every.append(shardload(n, per_host, sha256=False, variant="nohash"))
    every.append(shardload(n, PARALLEL, variant="host64"))
    every += [aiohttp_plain(1), aiohttp_plain(n)]
    if shutil.which("curl"):
        every.append(curl())
    if shutil.which("aria2c"):
        every.append(aria2())
    if shutil.which("wget2"):
        every.append(wget2())
    if aiodownload_python:
        every.append(aiodownload(aiodownload_python))
    available = {c.name: c for c in every}
    if not names:
        return every
    out = []
    for name in names:
        if name not in available:
            raise SystemExit(f"unknown or unavailable contender {name!r}: {sorted(available)}")
        out.append(available[name])
    return out
