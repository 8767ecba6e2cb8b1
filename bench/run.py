"""``python -m bench.run``: the whole throughput bench (``make bench``).

1. installs what is missing (nginx-light, wrk, curl, aria2, wget2 from apt; aiodownload 0.2.5 in
   a Python 3.8 venv under bench/out/ when a Python 3.8 exists);
2. generates the files and starts a private nginx on 127.0.0.2-9 (tmpfs document root);
3. measures the wrk ceiling for 1 KiB, 100 KiB and 64 MiB bodies;
4. runs every workload: each contender in turn (the order rotates every round), ``--runs`` rounds,
   output to tmpfs, cleaned before each run, every file checked after each run;
5. the scaling run: shardload with processes = 1, 2, 4, ... up to the core count (and one
   oversubscribed step), on the small-files workload;
6. writes results.json, summary.md, machine.json and the charts into ``--results``.

``--quick`` is a smoke run (smaller workloads, one round, ~2 minutes). The memory-scale run is
``python -m bench.memory`` (``make bench`` runs both).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from . import ceiling, report
from .contenders import BENCH_DIR, Contender, select, setup_aiodownload, shardload
from .measure import Run, clean, run_once
from .nginx import Nginx, generate_files
from .system import compile_bytecode, ensure_tools, machine
from .workloads import WORKLOADS, build, file_counts

SCRATCH = Path("/dev/shm/shardload-bench")
TOOLS = {"wrk": "wrk", "curl": "curl", "aria2c": "aria2", "wget2": "wget2"}


def parse(argv: list[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 1
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, 1 round")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument(
        "--contenders",
        nargs="+",
        help="names, e.g. shardload-p1 shardload-p2 shardload-nohash-p2 shardload-host64-p2 "
        "aiohttp-p1 aiohttp-p2 curl aria2 wget2 aiodownload (default: all available)",
    )
    parser.add_argument("--runs", type=int, help="rounds per workload (default 5; --quick: 1)")
    parser.add_argument("--per-host", type=int, default=16, help="shardload's concurrent=")
    parser.add_argument("--port", type=int, default=8089)
    parser.add_argument("--slow-delay", type=float, default=0.2, help="seconds, slow host")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--no-aiodownload", action="store_true")
    parser.add_argument("--scaling", type=int, nargs="+", help="process counts for scaling")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run, at most")
    parser.add_argument(
        "--results",
        type=Path,
        help="where results go (default bench/results/, or bench/out/quick/ with --quick)",
    )
    args = parser.parse_args(argv)
    if args.runs is None:
        args.runs = 1 if args.quick else 5
    if args.results is None:
        args.results = BENCH_DIR / ("out/quick" if args.quick else "results")
    if args.scaling is None:
        steps, p = [], 1
        while p <= cores:
            steps.append(p)
            p *= 2
        if steps[-1] != cores:
            steps.append(cores)
        steps.append(steps[-1] * 2)  # one oversubscribed step, to show where it stops
        args.scaling = steps
    return args


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.results: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "quick": args.quick,
            "runs_per_workload": args.runs,
            "per_host": args.per_host,
            "slow_delay_s": args.slow_delay,
            "ceilings": {},
            "contenders": {},
            "workloads": {},
            "runs": [],
            "scaling": [],
            "notes": [],
        }
        self.work = SCRATCH / "work"
        self.out_root = SCRATCH / "out"

    def save(self) -> None:
        self.args.results.mkdir(parents=True, exist_ok=True)
        path = self.args.results / "results.json"
        path.write_text(json.dumps(self.results, indent=1, default=str) + "\n")

    def contenders(self) -> list[Contender]:
        python = None
        wanted = self.args.contenders
        if not self.args.no_aiodownload and (wanted is None or "aiodownload" in wanted):
            python, note = setup_aiodownload(BENCH_DIR / "out" / "aiodownload-venv")
            self.results["notes"].append(f"aiodownload: {note}")
            log(f"aiodownload: {note}")
        chosen = select(wanted, os.cpu_count() or 1, self.args.per_host, python)
        for contender in chosen:
            self.results["contenders"][contender.name] = contender.note
        return chosen

    def run(self) -> None:
        args = self.args
        tools = ensure_tools(TOOLS)
        missing = [name for name, path in tools.items() if path is None]
        if missing:
            self.results["notes"].append(f"not installed, skipped: {', '.join(missing)}")
        self.results["machine"] = machine()
        contenders = self.contenders()
        log(f"contenders: {', '.join(c.name for c in contenders)}")
        counts = file_counts(args.quick)
        clean(self.work)
        log(f"generating files {counts} in {SCRATCH / 'www'}")
        generate_files(SCRATCH / "www", counts)
        nginx = Nginx(SCRATCH / "nginx", SCRATCH / "www", args.port, slow_delay=args.slow_delay)
        nginx.start()
        self.results["server"] = {
            "nginx_workers": nginx.workers,
            "hosts": "127.0.0.2-127.0.0.9",
            "port": args.port,
        }
        try:
            if not args.no_ceiling and tools.get("wrk"):
                seconds = 2.0 if args.quick else 4.0
                ceilings = ceiling.measure_all(
                    nginx, counts, self.work, seconds, threads=os.cpu_count() or 1
                )
                for size_class, c in ceilings.items():
                    log(
                        f"wrk ceiling {size_class}: {c.requests_per_s:,.0f} req/s, "
                        f"{c.mb_per_s:,.0f} MB/s ({c.errors} errors)"
                    )
                    self.results["ceilings"][size_class] = c.record()
            for name in args.workloads:
                self.workload(nginx, name, contenders)
            if not args.no_scaling:
                self.scaling(nginx)
        finally:
            nginx.stop()
            clean(self.out_root)
        self.results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        self.save()
        (args.results / "machine.json").write_text(
            json.dumps(self.results["machine"], indent=1) + "\n"
        )
        report.write(self.results, args.results)
        log(f"results in {args.results}")

    def _rounds(self, nginx: Nginx, name: str, contenders: list[Contender], tag: str) -> list[Run]:
        args = self.args
        workload = build(name, args.port, args.quick, args.slow_delay)
        prepared = {}
        for contender in contenders:
            out = self.out_root / contender.name
            prepared[contender.name] = (contender.prepare(workload, out, self.work, args.port), out)
        runs = []
        for round_ in range(args.runs):
            shift = round_ % len(contenders)
            order = contenders[shift:] + contenders[:shift]
            for contender in order:
                spec, out = prepared[contender.name]
                errors = self.work / f"{tag}-{contender.name}-{round_}.stderr"
                run = run_once(
                    workload,
                    contender,
                    spec.argv,
                    spec.env,
                    out,
                    nginx,
                    round_,
                    args.timeout,
                    errors,
                    quiet_wait=3.0 if args.quick else 10.0,
                )
                clean(out)
                status = "ok" if run.valid else f"INVALID: {run.invalid_reason}"
                log(
                    f"{tag:9} {contender.name:13} round {round_ + 1}: {run.wall_s:6.2f} s "
                    f"{run.files_per_s:8,.0f} files/s {run.mb_per_s:7,.0f} MB/s "
                    f"rss {run.peak_rss_bytes / 2**20:5.0f} MiB {status}"
                )
                if not run.valid:
                    tail = errors.read_text(errors="replace")[-600:] if errors.exists() else ""
                    if tail.strip():
                        log(f"  stderr: {tail.strip()}")
                runs.append(run)
        return runs

    def workload(self, nginx: Nginx, name: str, contenders: list[Contender]) -> None:
        workload = build(name, self.args.port, self.args.quick, self.args.slow_delay)
        self.results["workloads"][name] = {
            "description": workload.description,
            "urls": len(workload.items),
            "expected_files": workload.expected_files,
            "expected_bytes": workload.expected_bytes,
            "size_class": workload.size_class,
            "groups": {
                group: sum(1 for i in workload.items if i.group == group)
                for group in workload.groups
            },
        }
        log(f"workload {name}: {workload.description}")
        for run in self._rounds(nginx, name, contenders, name):
            self.results["runs"].append(run.record())
        self.save()

    def scaling(self, nginx: Nginx) -> None:
        steps = self.args.scaling
        log(f"scaling: shardload processes = {steps} on the small workload")
        contenders = [shardload(p, self.args.per_host) for p in steps]
        for run in self._rounds(nginx, "small", contenders, "scaling"):
            record = run.record()
            record["processes"] = int(run.contender.rsplit("p", 1)[1])
            self.results["scaling"].append(record)
        self.save()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    started = time.monotonic()
    compile_bytecode()
    Bench(args).run()
    log(f"done in {time.monotonic() - started:,.0f} s")


if __name__ == "__main__":
    main()
