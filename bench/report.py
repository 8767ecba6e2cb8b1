"""Turn results.json into summary.md (tables, ratios, targets) and PNG charts.

``python -m bench.report [RESULTS_DIR]`` rebuilds them from a saved results.json.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 2**20


@dataclass
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        data = list(values)
        if not data:
            return cls(0.0, 0.0, 0.0)
        return cls(statistics.median(data), min(data), max(data))

    def fmt(self, digits: int = 0) -> str:
        spec = f",.{digits}f"
        if self.low == self.high:
            return format(self.median, spec)
        return f"{self.median:{spec}} ({self.low:{spec}}-{self.high:{spec}})"


@dataclass
class Summary:
    workload: str
    contender: str
    runs: int
    valid: int
    files_per_s: Stat
    mb_per_s: Stat
    cpu_per_1k: float
    peak_rss_mib: float
    server_cpu_s: float
    foreign_cpu_s: float
    groups: dict[str, float]
    problems: list[str]


def summarise(runs: list[dict[str, Any]]) -> dict[tuple[str, str], Summary]:
    keyed: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in runs:
        keyed.setdefault((run["workload"], run["contender"]), []).append(run)
    out = {}
    for key, group in keyed.items():
        valid = [r for r in group if r["valid"]] or group
        problems = sorted(
            {
                r.get("invalid_reason") or "; ".join(r["verify"]["examples"])
                for r in group
                if not r["valid"]
            }
        )
        error_files = max(r["verify"]["error_files"] for r in group)
        if error_files:
            problems.append(f"left {error_files} files for failed URLs")
        cpu = [(r["cpu_user_s"] + r["cpu_sys_s"]) / r["files"] * 1000 for r in valid if r["files"]]
        names = {g for r in valid for g in r["groups"]}
        groups = {
            g: statistics.median(r["groups"][g] for r in valid if g in r["groups"]) for g in names
        }
        out[key] = Summary(
            workload=key[0],
            contender=key[1],
            runs=len(group),
            valid=sum(1 for r in group if r["valid"]),
            files_per_s=Stat.of(r["files_per_s"] for r in valid),
            mb_per_s=Stat.of(r["mb_per_s"] for r in valid),
            cpu_per_1k=statistics.median(cpu) if cpu else 0.0,
            peak_rss_mib=statistics.median(r["peak_rss_bytes"] for r in valid) / MIB,
            server_cpu_s=statistics.median(r["server_cpu_s"] for r in valid),
            foreign_cpu_s=max(r.get("foreign_cpu_s", 0.0) for r in valid),
            groups=groups,
            problems=problems,
        )
    return out


def _ordered(results: dict[str, Any]) -> tuple[list[str], list[str]]:
    workloads = list(results["workloads"])
    contenders = list(results["contenders"])
    return workloads, contenders


def _best_n(contenders: list[str]) -> str | None:
    names = [c for c in contenders if c.startswith("shardload-p") and c != "shardload-p1"]
    return max(names, key=lambda c: int(c.rsplit("p", 1)[1])) if names else None


def _headline_metric(results: dict[str, Any], workload: str) -> str:
    return "mb_per_s" if results["workloads"][workload]["size_class"] != "small" else "files_per_s"


def _value(s: Summary, metric: str) -> float:
    return s.mb_per_s.median if metric == "mb_per_s" else s.files_per_s.median


def _ceiling_ratio(results: dict[str, Any], workload: str, s: Summary) -> str:
    size_class = results["workloads"][workload]["size_class"]
    c = results["ceilings"].get(size_class)
    if not c:
        return "-"
    if size_class == "small":
        return f"{s.files_per_s.median / c['requests_per_s']:.2f}"
    return f"{s.mb_per_s.median / c['mb_per_s']:.2f}"


def table(results: dict[str, Any], summaries: dict[tuple[str, str], Summary]) -> list[str]:
    workloads, contenders = _ordered(results)
    lines = [
        "| workload | contender | files/s median (min-max) | MB/s median (min-max) "
        "| first file s | CPU s / 1k files | peak RSS MiB | x wrk ceiling | nginx CPU s "
        "| other CPU s | valid |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for w in workloads:
        for c in contenders:
            s = summaries.get((w, c))
            if s is None:
                continue
            first = s.groups.get("all_first", 0.0)
            lines.append(
                f"| {w} | {c} | {s.files_per_s.fmt()} | {s.mb_per_s.fmt()} | {first:.2f} "
                f"| {s.cpu_per_1k:.2f} | {s.peak_rss_mib:,.0f} | {_ceiling_ratio(results, w, s)} "
                f"| {s.server_cpu_s:.1f} | {s.foreign_cpu_s:.1f} | {s.valid}/{s.runs} |"
            )
    return lines


def ratio_table(
    results: dict[str, Any], summaries: dict[tuple[str, str], Summary], subject: str
) -> list[str]:
    workloads, contenders = _ordered(results)
    peers = [c for c in contenders if c != subject]
    lines = [
        f"| workload (metric) | {' | '.join(peers)} |",
        "|---|" + "---:|" * len(peers),
    ]
    for w in workloads:
        mine = summaries.get((w, subject))
        if mine is None:
            continue
        metric = _headline_metric(results, w)
        cells = []
        for p in peers:
            other = summaries.get((w, p))
            value = _value(other, metric) if other else 0.0
            if not mine.valid or (other and not other.valid):
                cells.append("invalid")  # no run passed verification: no ratio to give
            else:
                cells.append(f"{_value(mine, metric) / value:.2f}" if value else "-")
        unit = "MB/s" if metric == "mb_per_s" else "files/s"
        lines.append(f"| {w} ({unit}) | {' | '.join(cells)} |")
    return lines


def _steady(s: Summary | None, files: int) -> float:
    """Files/s between the first and the last completed file (process start left out)."""
    if s is None:
        return 0.0
    span = s.groups.get("all_last", 0.0) - s.groups.get("all_first", 0.0)
    return files / span if span > 0 else 0.0


def groups_table(results: dict[str, Any], summaries: dict[tuple[str, str], Summary]) -> list[str]:
    contenders = _ordered(results)[1]
    lines: list[str] = []
    small_files = results["workloads"].get("small", {}).get("expected_files", 0)
    if "slow" in results["workloads"]:
        info = results["workloads"]["slow"]
        fast = info["groups"]["fast"]
        lines += [
            "",
            f"**slow** ({info['description']}): seconds from the start until the last file of "
            "the fast hosts and of the slow host was complete (file ctimes). `fast files/s` "
            "counts the fast hosts' files from the first completed file to their last one; "
            "`vs small` divides it by the same contender's rate on the small workload, measured "
            "the same way (1.00: the slow host costs the fast hosts nothing).",
            "",
            "| contender | fast hosts done s | slow host done s | fast files/s | vs small |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in contenders:
            s = summaries.get(("slow", c))
            if s is None or "fast_last" not in s.groups:
                continue
            span = s.groups["fast_last"] - s.groups.get("all_first", 0.0)
            rate = fast / span if span > 0 else 0.0
            base = _steady(summaries.get(("small", c)), small_files)
            vs = f"{rate / base:.2f}" if base else "-"
            lines.append(
                f"| {c} | {s.groups['fast_last']:.2f} | {s.groups.get('slow_last', 0.0):.2f} "
                f"| {rate:,.0f} | {vs} |"
            )
    if "skewed" in results["workloads"]:
        info = results["workloads"]["skewed"]
        lines += [
            "",
            f"**skewed** ({info['description']}): when the 7 other hosts and the hot host were "
            "done (seconds from the start, file ctimes). A downloader that works through the "
            "list in order finishes both together; one that gives each host its own lane "
            "finishes the small hosts first instead of queueing them behind the hot one.",
            "",
            "| contender | other hosts done s | hot host done s | others / hot |",
            "|---|---:|---:|---:|",
        ]
        for c in contenders:
            s = summaries.get(("skewed", c))
            if s is None or "others_last" not in s.groups:
                continue
            others, hot = s.groups["others_last"], s.groups.get("hot_last", 0.0)
            ratio = f"{others / hot:.2f}" if hot else "-"
            lines.append(f"| {c} | {others:.2f} | {hot:.2f} | {ratio} |")
    return lines


def targets(results: dict[str, Any], summaries: dict[tuple[str, str], Summary]) -> list[str]:
    workloads, contenders = _ordered(results)
    subject = _best_n(contenders)
    if subject is None:
        return []
    n = subject.rsplit("p", 1)[1]
    lines = [
        f"| target (issue 5), shardload processes={n} | measured | met |",
        "|---|---:|:---:|",
    ]

    def get(w: str, c: str) -> Summary | None:
        s = summaries.get((w, c))
        return s if s is not None and s.valid else None  # a target is judged on valid runs

    mine, base = get("small", subject), get("small", "aiohttp-p1")
    if mine and base:
        r = mine.files_per_s.median / base.files_per_s.median
        met = "yes" if r >= 1.5 else "no"
        lines.append(f"| small: >= 1.5x plain aiohttp, 1 process | {r:.2f}x | {met} |")
    for w in workloads:
        other = get(w, f"aiohttp-p{n}")
        for who, label in ((subject, ""), (f"shardload-host64-p{n}", ", 64 per host")):
            mine = get(w, who)
            if mine and other:
                metric = _headline_metric(results, w)
                r = _value(mine, metric) / _value(other, metric)
                lines.append(
                    f"| {w}{label}: ahead of plain aiohttp split over {n} processes | {r:.2f}x "
                    f"| {'yes' if r > 1 else 'no'} |"
                )
    peers = [c for c in contenders if c.split("-")[0] not in ("shardload", "aiohttp")]
    for w in ("medium", "large"):
        rivals = [(s, p) for p in peers if (s := get(w, p)) is not None]
        if not rivals:
            continue
        best, name = max(rivals, key=lambda sp: sp[0].mb_per_s.median)
        for who, label in ((subject, ""), (f"shardload-nohash-p{n}", ", sha256=False")):
            if (mine := get(w, who)) is not None:
                r = mine.mb_per_s.median / best.mb_per_s.median
                met = "yes" if r >= 1 else "no"
                lines.append(
                    f"| {w}{label}: MB/s >= best peer ({name}, {best.mb_per_s.median:,.0f} MB/s)"
                    f" | {mine.mb_per_s.median:,.0f} MB/s = {r:.2f}x | {met} |"
                )
    mine, curl = get("small", subject), get("small", "curl")
    if mine and curl:
        r = mine.files_per_s.median / curl.files_per_s.median
        lines.append(f"| small: gap to curl --parallel (report) | {r:.2f}x of curl | - |")
    return lines


def scaling_lines(results: dict[str, Any]) -> list[str]:
    runs = results.get("scaling") or []
    if not runs:
        return []
    by: dict[int, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["processes"], []).append(r)
    cores = results.get("machine", {}).get("cores")
    lines = [
        "| processes | files/s median (min-max) | CPU s / 1k files | peak RSS MiB | speed-up |",
        "|---:|---:|---:|---:|---:|",
    ]
    first = None
    for p in sorted(by):
        group = [r for r in by[p] if r["valid"]] or by[p]
        rate = Stat.of(r["files_per_s"] for r in group)
        cpu = statistics.median(
            (r["cpu_user_s"] + r["cpu_sys_s"]) / max(1, r["files"]) * 1000 for r in group
        )
        rss = statistics.median(r["peak_rss_bytes"] for r in group) / MIB
        first = first or rate.median
        mark = " (more than the cores)" if cores and p > cores else ""
        lines.append(
            f"| {p}{mark} | {rate.fmt()} | {cpu:.2f} | {rss:,.0f} | {rate.median / first:.2f}x |"
        )
    return lines


def write(results: dict[str, Any], folder: Path) -> None:
    summaries = summarise(results["runs"])
    m = results.get("machine", {})
    contenders = _ordered(results)[1]
    subject = _best_n(contenders)
    lines = [
        "# shardload bench results",
        "",
        f"Measured {results['started']} on {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
        f"{m.get('memory_gib', '?')} GiB, {m.get('os', '?')}, kernel {m.get('kernel', '?')}, "
        f"Python {m.get('python', '?')}, shardload {m.get('shardload_commit', '?')} "
        f"(see machine.json). Server: {m.get('nginx', 'nginx')}, "
        f"{results.get('server', {}).get('nginx_workers', '?')} workers, 8 hosts "
        "(127.0.0.2-9), keep-alive, no access log, tmpfs document root. Output to /dev/shm. "
        f"{results['runs_per_workload']} rounds per workload, contenders alternating (the order "
        "rotates each round); median and (min-max) over rounds. Every run's files were checked "
        "(count, size and bytes).",
        "",
        "Wall time includes process start (interpreter, worker spawn; shardload and the bench "
        "clients compiled to bytecode first, as an installed copy is). CPU s / 1k files is the "
        "client's user+system CPU (all its processes) per 1,000 files; peak RSS is the largest "
        "sum of RSS over the client's process tree (sampled every 50 ms); nginx CPU s is the "
        "server's CPU time during the run (it shares the same cores); first file s is when the "
        "first file was complete (process start, imports, worker spawn); other CPU s is the "
        "most CPU "
        "that anything else on the machine used during one of the runs (noise: each run waits "
        "for a quiet machine first, up to 10 s).",
        "",
        "Also here: `memory.md` (peak RSS against input size, `python -m bench.memory`) and "
        "`profile.md` (where the time goes on small files, and the proposed changes).",
        "",
        "## Contenders",
        "",
    ]
    lines += [f"- `{name}`: {note}" for name, note in results["contenders"].items()]
    lines += ["", "## wrk ceiling (same server, same cores, bodies discarded)", ""]
    lines += ["| body | requests/s | MB/s | connections | errors |", "|---|---:|---:|---:|---:|"]
    for size_class, c in results["ceilings"].items():
        lines.append(
            f"| {size_class} | {c['requests_per_s']:,.0f} | {c['mb_per_s']:,.0f} "
            f"| {c['connections']} | {c['errors']} |"
        )
    lines += ["", "## Workloads", ""]
    lines += [f"- `{name}`: {info['description']}" for name, info in results["workloads"].items()]
    lines += ["", "## Throughput", "", *table(results, summaries)]
    if subject:
        lines += [
            "",
            f"## {subject} relative to each contender (median over median; > 1: shardload faster)",
            "",
            *ratio_table(results, summaries, subject),
            "",
            "## Targets",
            "",
            *targets(results, summaries),
        ]
    lines += groups_table(results, summaries)
    scaling = scaling_lines(results)
    if scaling:
        lines += ["", "## Scaling (small workload, shardload processes=N)", "", *scaling]
    problems = [
        f"- {s.workload} / {s.contender}: {p}" for s in summaries.values() for p in s.problems
    ]
    if problems or results.get("notes"):
        lines += ["", "## Notes", ""]
        lines += [f"- {n}" for n in results.get("notes", [])]
        lines += problems
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    try:
        charts(results, summaries, folder)
    except ImportError:
        print("[bench] matplotlib missing: no charts (pip install -e '.[bench]')", flush=True)


def charts(
    results: dict[str, Any], summaries: dict[tuple[str, str], Summary], folder: Path
) -> None:
    import matplotlib  # noqa: PLC0415  (bench-only dependency)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    workloads, contenders = _ordered(results)
    columns = 3
    rows = (len(workloads) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(15, 4.2 * rows), squeeze=False)
    for index, w in enumerate(workloads):
        ax = axes[index // columns][index % columns]
        metric = _headline_metric(results, w)
        names, values, low, high, colors = [], [], [], [], []
        for c in contenders:
            s = summaries.get((w, c))
            if s is None:
                continue
            stat = s.mb_per_s if metric == "mb_per_s" else s.files_per_s
            names.append(c)
            values.append(stat.median)
            low.append(stat.median - stat.low)
            high.append(stat.high - stat.median)
            colors.append("tab:blue" if c.startswith("shardload") else "tab:gray")
        ax.bar(range(len(names)), values, yerr=[low, high], color=colors, capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=35, ha="right", fontsize=8)
        unit = "MB/s" if metric == "mb_per_s" else "files/s"
        size_class = results["workloads"][w]["size_class"]
        c = results["ceilings"].get(size_class)
        ceiling = ""
        if c:
            value = c["mb_per_s"] if metric == "mb_per_s" else c["requests_per_s"]
            ceiling = f"; wrk ceiling {value:,.0f}"
        ax.set_title(f"{w}: {unit} (median, min-max){ceiling}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    for index in range(len(workloads), rows * columns):
        axes[index // columns][index % columns].axis("off")
    m = results.get("machine", {})
    fig.suptitle(
        f"shardload bench: nginx on 8 loopback hosts, output to tmpfs; "
        f"{m.get('cpu', '')}, {m.get('cores', '?')} cores",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(folder / "throughput.png", dpi=110)
    plt.close(fig)

    scaling = results.get("scaling") or []
    if scaling:
        by: dict[int, list[float]] = {}
        for r in scaling:
            by.setdefault(r["processes"], []).append(r["files_per_s"])
        xs = sorted(by)
        fig, ax = plt.subplots(figsize=(6, 4))
        med = [statistics.median(by[x]) for x in xs]
        ax.errorbar(
            xs,
            med,
            yerr=[
                [m - min(by[x]) for m, x in zip(med, xs, strict=True)],
                [max(by[x]) - m for m, x in zip(med, xs, strict=True)],
            ],
            marker="o",
            capsize=3,
            label="shardload",
        )
        for name, style in (("aiohttp-p1", "s"), (f"aiohttp-p{m.get('cores', 2)}", "^")):
            s = summaries.get(("small", name))
            if s:
                p = int(name.rsplit("p", 1)[1])
                ax.plot([p], [s.files_per_s.median], style, label=f"plain {name}")
        ax.set_xticks(xs)
        ax.set_xlabel("processes")
        ax.set_ylabel("files/s (small, 1 KiB)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"scaling on {m.get('cores', '?')} cores", fontsize=10)
        fig.tight_layout()
        fig.savefig(folder / "scaling.png", dpi=110)
        plt.close(fig)


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results"
    results = json.loads((folder / "results.json").read_text())
    write(results, folder)


if __name__ == "__main__":
    main()
