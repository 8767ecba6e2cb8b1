"""One timed run of one contender on one workload, and the check of what it wrote.

Wall time is measured around the whole command (interpreter start, worker spawn and teardown
included: what a user waits for). CPU time is the command's own rusage, which includes every
descendant it waited for (worker processes, threads). Peak RSS is the largest sum of RSS over the
command's process tree, sampled every 50 ms. The server's CPU time is read from /proc.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .contenders import REPO, Contender
from .nginx import SIZES, SLOW_SIZE, Nginx
from .system import TreeSampler, busy_seconds, group_left, kill_group, wait_quiet
from .workloads import Workload


@dataclass
class Verify:
    expected: int = 0
    found: int = 0
    missing: int = 0
    wrong_size: int = 0
    wrong_content: int = 0
    error_files: int = 0  # files left for URLs that failed (should be 0)
    bytes: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.wrong_size == 0 and self.wrong_content == 0


@functools.lru_cache(maxsize=8)
def _reference(root: Path, kind: str) -> bytes | None:
    """What every served file of a path class holds: the generated file its URL links to, or
    the slow host's run of ``x``; None for paths that serve no body."""
    if kind in SIZES:
        return (root / f".{kind}.base").read_bytes()
    if kind == "slow":
        return b"x" * SLOW_SIZE
    return None


def exit_ok(contender: Contender, workload: Workload, code: int) -> bool:
    """A clean exit, or the tool's own "some URLs failed" where some are meant to fail."""
    failing = workload.expected_files < len(workload.items)
    return code == 0 or (failing and code in contender.failure_exits)


@dataclass
class Run:
    workload: str
    contender: str
    round: int
    wall_s: float
    returncode: int
    cpu_user_s: float
    cpu_sys_s: float
    peak_rss_bytes: int
    peak_processes: int
    server_cpu_s: float
    # CPU used by anything else on the machine during the run (noise; should be near 0).
    foreign_cpu_s: float
    waited_quiet_s: float
    files: int
    bytes: int
    verify: Verify
    groups: dict[str, float]
    client: dict[str, Any]
    valid: bool
    invalid_reason: str = ""

    @property
    def files_per_s(self) -> float:
        return self.files / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / self.wall_s / 1e6 if self.wall_s > 0 else 0.0

    def record(self) -> dict[str, Any]:
        out = asdict(self)
        out["files_per_s"] = self.files_per_s
        out["mb_per_s"] = self.mb_per_s
        out["verify"]["ok"] = self.verify.ok
        return out


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)


def verify(
    workload: Workload, contender: Contender, out: Path, port: int, started: float, root: Path
) -> tuple[Verify, dict[str, float]]:
    """Check every expected file, its size and its bytes (against the file the server sent,
    under ``root``); time each group by its files' ctimes.

    ctime, not mtime: wget2 copies the server's Last-Modified into mtime; a file's ctime is
    the moment it was last written or renamed into place, i.e. when its download completed.
    """
    result = Verify()
    # Per group, and over all files ("all"): (first, last) completion, seconds after the start.
    spans: dict[str, tuple[float, float]] = {}
    for item in workload.items:
        path = out / contender.layout(item, port)
        try:
            info = os.stat(path)
        except OSError:
            info = None
        if item.size is None:
            if info is not None:
                result.error_files += 1
            continue
        result.expected += 1
        if info is None:
            result.missing += 1
            if len(result.examples) < 3:
                result.examples.append(f"missing {path}")
            continue
        if info.st_size != item.size:
            result.wrong_size += 1
            if len(result.examples) < 3:
                result.examples.append(f"{path}: {info.st_size} bytes, not {item.size}")
            continue
        reference = _reference(root, item.path.split("/")[1])
        if reference is not None and path.read_bytes() != reference:
            result.wrong_content += 1
            if len(result.examples) < 3:
                result.examples.append(f"{path}: not the bytes the server sent")
            continue
        result.found += 1
        result.bytes += info.st_size
        at = info.st_ctime_ns / 1e9 - started
        for group in ("all", item.group) if item.group in workload.groups else ("all",):
            first, last = spans.get(group, (at, at))
            spans[group] = (min(first, at), max(last, at))
    groups = {f"{g}_first": span[0] for g, span in spans.items()}
    groups.update({f"{g}_last": span[1] for g, span in spans.items()})
    return result, groups


def run_once(
    workload: Workload,
    contender: Contender,
    argv: list[str],
    env: dict[str, str] | None,
    out: Path,
    nginx: Nginx,
    round_: int,
    timeout: float,
    log: Path,
    quiet_wait: float = 10.0,
) -> Run:
    clean(out)
    waited = wait_quiet(quiet_wait)
    full_env = dict(os.environ)
    # The repository first; keep a caller's PYTHONPATH after it (e.g. a what-if patch).
    full_env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO), os.environ.get("PYTHONPATH")])
    )
    if env:
        full_env.update(env)
    server_before = nginx.cpu_seconds()
    busy_before = busy_seconds()
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "wb") as errors:
        started_epoch = time.time()
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            cwd=REPO,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=errors,
            start_new_session=True,  # so a timeout or an interrupt can kill the whole tree
        )
        sampler = TreeSampler(process.pid).start()
        timed_out = left = False
        try:
            stdout, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(process)
            stdout, _ = process.communicate(timeout=30)
        except BaseException:
            kill_group(process)
            raise
        wall = time.perf_counter() - started
        peak = sampler.stop()
        if not timed_out:
            left = group_left(process)
    # communicate() reaped the child: its rusage (and its reaped descendants') is now counted
    # in RUSAGE_CHILDREN of this process, which runs nothing else meanwhile.
    usage_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu = nginx.cpu_seconds() - server_before
    busy = busy_seconds() - busy_before
    client: dict[str, Any] = {}
    for line in stdout.decode(errors="replace").splitlines()[::-1]:
        if line.startswith("{"):
            try:
                client = json.loads(line)
            except json.JSONDecodeError:
                continue
            break
    if timed_out:
        client["timed_out"] = True
    if left:
        client["left_processes"] = True
    checked, groups = verify(workload, contender, out, nginx.port, started_epoch, nginx.root)
    reasons = list(checked.examples)  # a failed check always leaves an example
    if timed_out:
        reasons.append("timed out")
    if left:
        reasons.append("processes of the run outlived it")
    if not exit_ok(contender, workload, process.returncode):
        reasons.append(f"exit {process.returncode}")
    return Run(
        workload=workload.name,
        contender=contender.name,
        round=round_,
        wall_s=wall,
        returncode=process.returncode,
        cpu_user_s=usage_after.ru_utime - usage_before.ru_utime,
        cpu_sys_s=usage_after.ru_stime - usage_before.ru_stime,
        peak_rss_bytes=peak,
        peak_processes=sampler.peak_processes,
        server_cpu_s=server_cpu,
        waited_quiet_s=waited,
        foreign_cpu_s=max(
            0.0,
            busy
            - server_cpu
            - (usage_after.ru_utime - usage_before.ru_utime)
            - (usage_after.ru_stime - usage_before.ru_stime),
        ),
        files=checked.found,
        bytes=checked.bytes,
        verify=checked,
        groups=groups,
        client=client,
        valid=not reasons,
        invalid_reason="; ".join(reasons),
    )
