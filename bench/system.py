"""Machine facts, Debian packages, bytecode, and measuring a process tree (CPU time, peak RSS)."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")
_REPO = Path(__file__).resolve().parent.parent


def compile_bytecode() -> None:
    """Compile shardload's and the bench's modules to bytecode, as pip does when it installs a
    wheel. An editable install is never compiled ahead, and where PYTHONDONTWRITEBYTECODE is
    set (it is on the machine of the committed results) every process compiled shardload's
    ~35 modules from source at each start: ~25 ms of CPU per process and ~60 ms of a
    processes=2 run's wall time, which no installed copy pays, nor any peer here (aiohttp and
    the rest are installed compiled)."""
    import compileall  # noqa: PLC0415  (only here)

    done = [compileall.compile_dir(_REPO / folder, quiet=2) for folder in ("shardload", "bench")]
    if not all(done):  # a read-only checkout: measured, but paying the compile at every start
        print("[bench] could not compile every module to bytecode (read-only checkout?)")


def kill_group(process: subprocess.Popen[Any]) -> None:
    """SIGKILL a process started with ``start_new_session=True`` and everything it started.

    Killing the top process alone leaves its workers running: they keep loading the server
    during the next runs and hold the stdout pipe open, so reading it never ends.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def group_left(process: subprocess.Popen[Any], grace: float = 2.0) -> bool:
    """After the top process exited: True if something of its group still ran after ``grace``
    seconds (then it is killed). Python's resource tracker needs a moment to see its pipe close.
    Zombies do not count: an orphan that exited waits for init to reap it, and this machine's
    init reaps about once a second.
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _running_in_group(process.pid):
            return False
        time.sleep(0.05)
    kill_group(process)
    return True


def ensure_packages(packages: list[str]) -> None:
    """``apt-get install`` the given Debian packages (root only); raises when it cannot."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"missing {' '.join(packages)}: install them (apt-get, as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"[bench] apt-get install {' '.join(packages)}", flush=True)
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def ensure_tools(tools: dict[str, str]) -> dict[str, str | None]:
    """``{binary: package}``: install what is missing; returns each binary's path (or None)."""
    missing = [pkg for binary, pkg in tools.items() if shutil.which(binary) is None]
    if missing:
        try:
            ensure_packages(sorted(set(missing)))
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            print(f"[bench] could not install {missing}: {exc}", flush=True)
    return {binary: shutil.which(binary) for binary in tools}


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    debian = "unknown"
    if Path("/etc/debian_version").exists():
        debian = Path("/etc/debian_version").read_text().strip()
    versions: dict[str, str] = {}
    import aiohttp  # noqa: PLC0415

    versions["aiohttp"] = aiohttp.__version__
    try:
        import uvloop  # noqa: PLC0415

        versions["uvloop"] = str(getattr(uvloop, "__version__", "?"))
    except ImportError:
        versions["uvloop"] = "missing"
    commit = _first_line(["git", "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "shardload"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "os": f"Debian {debian}",
        "python": sys.version.split()[0],
        "nginx": _first_line(["nginx", "-v"]),
        "wrk": _first_line(["wrk", "-v"]),
        "curl": _first_line(["curl", "--version"]),
        "aria2c": _first_line(["aria2c", "--version"]),
        "wget2": _first_line(["wget2", "--version"]),
        **versions,
        "shardload_commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "output": "/dev/shm (tmpfs)",
    }


def busy_seconds() -> float:
    """CPU time all cores spent busy since boot (user, nice, system, irq, softirq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait: float = 10.0, threshold: float = 0.15, window: float = 0.25) -> float:
    """Wait (at most ``max_wait`` s) until other programs use under ``threshold`` cores.

    The machine may be shared (tests of other sessions): a run started while something else
    burns a core measures that too. Returns the seconds waited.
    """
    started = time.monotonic()
    while True:
        before = busy_seconds()
        time.sleep(window)
        if (busy_seconds() - before) / window < threshold:
            break
        if time.monotonic() - started > max_wait:
            break
    return time.monotonic() - started


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def _running_in_group(pgid: int) -> bool:
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def tree_pids(root: int) -> list[int]:
    pids, stack = [], [root]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack += _children(pid)
    return pids


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


@dataclass
class TreeSampler:
    """Samples the summed RSS of a process tree every ``interval`` seconds, in a thread."""

    root: int
    interval: float = 0.05
    peak: int = 0
    peak_processes: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TreeSampler:
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")
        self._thread.start()
        return self

    def sample(self) -> int:
        pids = tree_pids(self.root)
        total = sum(rss_bytes(pid) for pid in pids)
        if total > self.peak:
            self.peak = total
        self.peak_processes = max(self.peak_processes, len(pids))
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.peak
