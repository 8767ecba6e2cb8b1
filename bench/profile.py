"""``python -m bench.profile``: where shardload spends its time on the small-files workload.

Starts the bench's nginx, then profiles shardload on N x 1 KiB URLs over the 8 hosts:
- ``cprofile``: processes=1 through ``aswarm()`` on this thread's uvloop, so one deterministic
  profile covers the coordinator, the engine, the HTTP client and the file writes (cProfile inflates
  call-heavy code; read it with the sampling profile beside it);
- ``pyspy``: py-spy (``pip install py-spy``) samples the sync ``swarm()`` with processes=1 and
  processes=N, children included, and folds the stacks into categories and top frames;
- ``threads``: the CPU time of every thread of the caller and its workers, from /proc (py-spy
  may count a thread blocked in a pipe read as busy; /proc does not).
Writes ``bench/out/profile/`` (top functions by self and cumulative time, folded stacks).
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .contenders import BENCH_DIR, REPO
from .nginx import HOSTS, Nginx, generate_files
from .system import compile_bytecode, kill_group, tree_pids

if TYPE_CHECKING:
    from shardload import AioDownload

SCRATCH = Path("/dev/shm/shardload-bench-profile")


def _urls(n: int, port: int) -> list[str]:
    return [f"http://{HOSTS[i % len(HOSTS)]}:{port}/small/{i}.bin" for i in range(n)]


def _download(home: Path, per_host: int) -> AioDownload:
    from shardload import AioDownload, DownloadStrategy, RequestStrategy  # noqa: PLC0415

    return AioDownload(
        download_strategy=DownloadStrategy(home=str(home)),
        request_strategy=RequestStrategy(concurrent=per_host, worker_concurrent=64),
    )


def run_cprofile(urls: list[str], out: Path, per_host: int) -> str:
    import uvloop  # noqa: PLC0415

    import shardload  # noqa: PLC0415

    home = SCRATCH / "out-cprofile"
    shutil.rmtree(home, ignore_errors=True)
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    bundles = uvloop.run(shardload.aswarm(urls, download=_download(home, per_host)))
    profiler.disable()
    elapsed = time.perf_counter() - started
    ok = sum(1 for b in bundles if b.ok)
    profiler.dump_stats(out / "cprofile.pstats")
    text = io.StringIO()
    text.write(f"{ok}/{len(urls)} files in {elapsed:.2f} s under cProfile\n\n")
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(40)
    stats.sort_stats("cumulative").print_stats(60)
    (out / "cprofile.txt").write_text(text.getvalue())
    shutil.rmtree(home, ignore_errors=True)
    return text.getvalue()


_SWARM = """
import sys, time, shardload
from bench.profile import _download, _urls
from pathlib import Path
if __name__ == "__main__":
    n, port, p, per_host = map(int, sys.argv[1:5])
    home = sys.argv[5]
    urls = _urls(n, port)
    t = time.perf_counter()
    bundles = shardload.swarm(urls, download=_download(Path(home), per_host), processes=p)
    print(sum(b.ok for b in bundles), "files in", round(time.perf_counter() - t, 2), "s")
"""


# Where a sample's time goes: the deepest frame that matches, checked in this order.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("start-up: imports", ("importlib", "<module>")),
    ("aiohttp: socket send (transport.write)", ("StreamWriter._write (aiohttp/http_writer.py",)),
    (
        "IPC: pipe threads, pickling",
        ("multiprocessing/connection.py", "_write_loop", "_read_loop", "pickle"),
    ),
    ("file write: temp file, write, commit (files.py)", ("worker/files.py",)),
    (
        "URL parsing and path mapping (urls.py, paths.py)",
        ("shardload/urls.py", "shardload/paths.py", "get_file_path"),
    ),
    ("per-host slots (hosts.py)", ("worker/hosts.py",)),
    ("HTTP client: lean (worker/http/), incl. socket send", ("worker/http/",)),
    ("engine, shard worker (engine.py, shard.py)", ("worker/engine.py", "worker/shard.py")),
    (
        "coordinator, flow control (coordinator.py, flow.py)",
        ("shardload/coordinator.py", "shardload/flow.py", "shardload/sharding.py"),
    ),
    (
        "caller API: bridge, ordering, stats (api.py, stats.py)",
        ("shardload/api.py", "shardload/stats.py", "shardload/bundle.py"),
    ),
    ("aiohttp: request/response machinery", ("aiohttp/", "yarl/", "multidict/")),
)


def _category(frames: list[str]) -> str:
    if frames and frames[-1].startswith(("Runner.run ", "run (uvloop")):
        return "event loop: uvloop callbacks (self time)"
    for frame in reversed(frames):
        for name, needles in CATEGORIES:
            if any(needle in frame for needle in needles):
                return name
    return "event loop, other"


def fold(path: Path, top: int = 45) -> str:
    """Summarise py-spy's raw (folded) output: categories, then self and inclusive frames."""
    self_count: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    categories: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        process = "worker" if "spawn_main" in stack else "caller"
        categories[(process, _category(frames))] += n
        self_count[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    out = [f"{total} samples", "", "by process and category (share of all samples):"]
    out += [f"{n / total:6.1%} {p:6} {c}" for (p, c), n in categories.most_common()]
    out += ["", "self:"]
    out += [f"{n / total:6.1%} {f}" for f, n in self_count.most_common(top)]
    out += ["", "inclusive:"]
    out += [f"{n / total:6.1%} {f}" for f, n in inclusive.most_common(top + 30)]
    return "\n".join(out) + "\n"


def run_pyspy(n: int, port: int, processes: int, out: Path, per_host: int) -> str:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(pyspy):
        return "py-spy not installed (pip install py-spy)\n"
    home = SCRATCH / f"out-pyspy-{processes}"
    shutil.rmtree(home, ignore_errors=True)
    script = out / "swarm_script.py"
    script.write_text(_SWARM)
    raw = out / f"pyspy-p{processes}.folded"
    argv = [
        pyspy, "record", "--subprocesses", "--threads", "-r", "200", "-f", "raw",
        "-o", str(raw), "--", sys.executable, str(script),
        str(n), str(port), str(processes), str(per_host), str(home),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600, check=False)
    shutil.rmtree(home, ignore_errors=True)
    summary = done.stdout.strip() + "\n" + fold(raw)
    (out / f"pyspy-p{processes}.txt").write_text(summary)
    return summary


def run_threads(n: int, port: int, processes: int, out: Path, per_host: int) -> str:
    """CPU seconds of every thread of the caller and its workers, read from /proc.

    A sampling profiler can count a thread blocked in a pipe read as busy; this cannot.
    """
    home = SCRATCH / f"out-threads-{processes}"
    shutil.rmtree(home, ignore_errors=True)
    script = out / "swarm_script.py"
    script.write_text(_SWARM)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, str(script), str(n), str(port), str(processes), str(per_host)]
    process = subprocess.Popen(
        [*argv, str(home)], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    ticks = os.sysconf("SC_CLK_TCK")
    seen: dict[tuple[int, int], float] = {}
    deadline = time.monotonic() + 600
    while process.poll() is None:
        if time.monotonic() > deadline:
            kill_group(process)
            break
        for pid in tree_pids(process.pid):
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for task in tids:
                try:
                    stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
                except OSError:
                    continue
                fields = stat.rsplit(")", 1)[1].split()
                seen[(pid, int(task))] = (int(fields[11]) + int(fields[12])) / ticks
        time.sleep(0.05)
    stdout = process.stdout.read() if process.stdout else ""
    shutil.rmtree(home, ignore_errors=True)
    lines = [
        stdout.strip(),
        f"CPU seconds per thread (processes={processes}; tid = pid: main thread):",
    ]
    for (pid, tid), seconds in sorted(seen.items()):
        if seconds >= 0.01:
            role = "caller" if pid == process.pid else "child"
            kind = "main thread" if pid == tid else "thread"
            lines.append(f"  {role:6} pid {pid} {kind:11} tid {tid}: {seconds:6.2f} s")
    text = "\n".join(lines) + "\n"
    (out / f"threads-p{processes}.txt").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--port", type=int, default=8091)
    parser.add_argument("--per-host", type=int, default=16)
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out" / "profile")
    parser.add_argument("--only", choices=("cprofile", "pyspy", "threads"))
    parser.add_argument("--fold", type=Path, nargs="+", help="only summarise folded files")
    args = parser.parse_args()
    compile_bytecode()
    if args.fold:
        for path in args.fold:
            print(path, fold(path)[:4000])
        return
    args.out.mkdir(parents=True, exist_ok=True)
    generate_files(SCRATCH / "www", {"small": args.n})
    urls = _urls(args.n, args.port)
    with Nginx(SCRATCH / "nginx", SCRATCH / "www", args.port):
        if args.only in (None, "cprofile"):
            print(run_cprofile(urls, args.out, args.per_host)[:6000])
        if args.only in (None, "pyspy"):
            for p in sorted({1, args.processes}):
                print(run_pyspy(args.n, args.port, p, args.out, args.per_host)[:5000])
        if args.only in (None, "threads"):
            print(run_threads(args.n, args.port, args.processes, args.out, args.per_host))
    print(f"profiles in {args.out}")


if __name__ == "__main__":
    main()
