"""``python -m bench.memory``: peak RSS of shardload's whole process tree against input size.

For each size N, a fresh child process runs ``shardload.each()`` over a *generator* of N URLs
(``/z/<i>`` on the 8 hosts; nginx answers ``return 204;`` at once) with ``processes`` workers,
and removes each (empty) file as its bundle arrives, so tmpfs never holds more than the files in
flight. The child samples the RSS of itself (the coordinator, plus the caller's loop) and of its
workers every ``--interval`` seconds and reports, at the end, the exact per-process peaks from
``VmHWM`` (the coordinator's own, and the largest worker's as last seen before it exited).

Sizes run smallest first; the URL rate of each run extrapolates the time of the next ones, and a
size whose estimate exceeds ``--max-minutes`` is skipped (say so, or pass a larger limit).
Results merge into ``bench/results/memory.json`` (so a 10M run can be added later), with
memory.md and memory.png next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .contenders import BENCH_DIR, REPO
from .nginx import HOSTS, Nginx
from .system import compile_bytecode, kill_group, machine, rss_bytes, tree_pids

SCRATCH = Path("/dev/shm/shardload-bench-memory")
MIB = 2**20


def _hwm(pid: int | str) -> int:
    """VmHWM: the peak RSS of a process's current address space, in bytes (0 if gone).

    Not ``getrusage``: Linux carries the pre-exec parent's RSS into ``ru_maxrss`` across
    fork + exec, so a child started from a big parent would report the parent's size.
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child(args: argparse.Namespace) -> None:
    import shardload  # noqa: PLC0415
    from shardload import AioDownload, DownloadStrategy, RequestStrategy  # noqa: PLC0415

    n, port = args.child, args.port
    home = SCRATCH / "out"
    download = AioDownload(
        download_strategy=DownloadStrategy(home=str(home)),
        request_strategy=RequestStrategy(
            concurrent=args.per_host, worker_concurrent=args.worker, timeout=30
        ),
    )
    state = {"done": 0, "failed": 0}
    stop = threading.Event()
    started = time.monotonic()
    me = os.getpid()

    worker_hwm: dict[int, int] = {}

    def sample() -> None:
        while not stop.wait(args.interval):
            pids = tree_pids(me)
            workers = [rss_bytes(p) for p in pids if p != me]
            for p in pids:
                if p != me:
                    worker_hwm[p] = max(worker_hwm.get(p, 0), _hwm(p))
            line = {
                "t": round(time.monotonic() - started, 3),
                "done": state["done"],
                "rss_coordinator": rss_bytes(me),
                "rss_workers": workers,
            }
            print(json.dumps(line), flush=True)

    threading.Thread(target=sample, daemon=True).start()
    urls = (f"http://{HOSTS[i % len(HOSTS)]}:{port}/z/{i}" for i in range(n))
    for bundle in shardload.each(urls, download=download, processes=args.processes):
        state["done"] += 1
        if bundle.ok and bundle.file_path:
            with contextlib.suppress(OSError):
                os.unlink(bundle.file_path)
        else:
            state["failed"] += 1
    elapsed = time.monotonic() - started
    stop.set()
    final = {
        "final": True,
        "urls": n,
        "done": state["done"],
        "failed": state["failed"],
        "elapsed_s": elapsed,
        # Exact peaks (VmHWM): this process, and the largest child (a worker or the
        # multiprocessing resource tracker), as last seen before it exited.
        "maxrss_coordinator": _hwm("self"),
        "maxrss_worker": max(worker_hwm.values(), default=0),
    }
    print(json.dumps(final), flush=True)


def _measure(args: argparse.Namespace, size: int, timeout: float) -> dict[str, Any]:
    argv = [
        sys.executable,
        "-m",
        "bench.memory",
        "--child",
        str(size),
        "--port",
        str(args.port),
        "--processes",
        str(args.processes),
        "--per-host",
        str(args.per_host),
        "--worker",
        str(args.worker),
        "--interval",
        str(args.interval),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    series: list[dict[str, Any]] = []
    final: dict[str, Any] = {}
    process = subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    # The whole group: killing the child alone leaves its workers holding stdout open.
    killer = threading.Timer(timeout, kill_group, args=(process,))
    killer.start()
    peak_total = 0
    try:
        assert process.stdout is not None
        for line in process.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # not one of the child's records (a library warning, say)
            if record.get("final"):
                final = record
                continue
            total = record["rss_coordinator"] + sum(record["rss_workers"])
            peak_total = max(peak_total, total)
            series.append(
                {
                    "t": record["t"],
                    "done": record["done"],
                    "rss_total": total,
                    "rss_coordinator": record["rss_coordinator"],
                    "rss_workers_max": max(record["rss_workers"], default=0),
                }
            )
            if len(series) % max(1, int(30 / args.interval)) == 0:
                print(
                    f"[memory] {size:,}: {record['done']:,} done at {record['t']:.0f} s, "
                    f"tree RSS {total / MIB:.0f} MiB",
                    flush=True,
                )
    finally:
        killer.cancel()
        kill_group(process)  # nothing of a finished run is left; an interrupted one is stopped
        process.wait()
    if not final:
        return {"urls": size, "error": f"did not finish (exit {process.returncode})"}
    return {
        **final,
        "urls_per_s": final["done"] / final["elapsed_s"],
        "peak_tree_rss": peak_total,
        "series": _thin(series, 400),
    }


def _thin(series: list[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    if len(series) <= keep:
        return series
    step = len(series) / keep
    return [series[int(i * step)] for i in range(keep)] + [series[-1]]


def _write(results: dict[str, Any], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "memory.json").write_text(json.dumps(results, indent=1) + "\n")
    runs = sorted(results["runs"].values(), key=lambda r: r["urls"])
    lines = [
        "# Memory scale: peak RSS against input size",
        "",
        f"`shardload.each()` over a generator of N URLs, processes={results['processes']}, "
        f"concurrent={results['per_host']}/host, worker_concurrent={results['worker']}, against "
        "nginx answering `return 204;` on 8 loopback hosts; each empty file is removed as its "
        "bundle arrives. Peak tree RSS: the largest sum over the coordinator process and its "
        f"workers, sampled every {results['interval']} s. Coordinator / worker peaks: exact "
        "high-water marks (VmHWM from /proc) of the coordinator process and of the largest "
        "worker.",
        "",
        "A size not run this time keeps its row from the run that measured it (the commit "
        "column says which).",
        "",
        "| URLs | time | URLs/s | peak tree RSS MiB | coordinator peak MiB "
        "| largest worker peak MiB | failed | shardload |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        commit = r.get("commit") or "earlier"
        if "error" in r:
            lines.append(f"| {r['urls']:,} | {r['error']} | | | | | | {commit} |")
            continue
        lines.append(
            f"| {r['urls']:,} | {r['elapsed_s']:,.0f} s | {r['urls_per_s']:,.0f} "
            f"| {r['peak_tree_rss'] / MIB:,.0f} | {r['maxrss_coordinator'] / MIB:,.0f} "
            f"| {r['maxrss_worker'] / MIB:,.0f} | {r['failed']:,} | {commit} |"
        )
    lines += ["", *[f"- {n}" for n in results.get("notes", [])]]
    (folder / "memory.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        series = r.get("series") or []
        if not series:
            continue
        xs = [s["done"] / r["urls"] * 100 for s in series]
        ax.plot(xs, [s["rss_total"] / MIB for s in series], label=f"{r['urls']:,} URLs (tree)")
    ax.set_xlabel("% of the input done")
    ax.set_ylabel("RSS, coordinator + workers (MiB)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("shardload memory against input size (generator input)", fontsize=10)
    fig.tight_layout()
    fig.savefig(folder / "memory.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--per-host", type=int, default=16)
    parser.add_argument("--worker", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--max-minutes", type=float, default=15.0, help="skip longer sizes")
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    compile_bytecode()
    if args.child is not None:
        _child(args)
        return
    path = args.results / "memory.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results.update(
        {
            "processes": args.processes,
            "per_host": args.per_host,
            "worker": args.worker,
            "interval": args.interval,
            "machine": machine(),
        }
    )
    results.setdefault("runs", {})
    results["notes"] = []
    SCRATCH.mkdir(parents=True, exist_ok=True)
    nginx = Nginx(SCRATCH / "nginx", SCRATCH / "www", args.port)
    (SCRATCH / "www").mkdir(parents=True, exist_ok=True)
    nginx.start()
    rate: float | None = None
    try:
        for size in sorted(args.sizes):
            if rate:
                estimate = size / rate / 60
                print(f"[memory] {size:,} URLs: about {estimate:.1f} min at {rate:,.0f}/s")
                if estimate > args.max_minutes:
                    note = (
                        f"{size:,} URLs skipped: about {estimate:.0f} min at {rate:,.0f} URLs/s, "
                        f"over --max-minutes {args.max_minutes:g}"
                    )
                    results["notes"].append(note)
                    print(f"[memory] {note}", flush=True)
                    continue
            timeout = max(120.0, 3 * size / rate) if rate else 3600.0
            run = _measure(args, size, timeout)
            run["commit"] = results["machine"].get("shardload_commit")
            results["runs"][str(size)] = run
            if "error" not in run:
                rate = run["urls_per_s"]
                print(
                    f"[memory] {size:,} URLs in {run['elapsed_s']:.0f} s ({rate:,.0f}/s): "
                    f"peak tree RSS {run['peak_tree_rss'] / MIB:.0f} MiB, coordinator "
                    f"{run['maxrss_coordinator'] / MIB:.0f} MiB, worker "
                    f"{run['maxrss_worker'] / MIB:.0f} MiB",
                    flush=True,
                )
            _write(results, args.results)
    finally:
        nginx.stop()
    _write(results, args.results)


if __name__ == "__main__":
    main()
