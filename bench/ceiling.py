"""The server's ceiling, measured with wrk before any contender runs.

wrk keeps ``connections`` keep-alive connections busy from ``threads`` threads and reads bodies
without writing them anywhere, cycling through the same files the workloads use; what it reaches
is the most this server (sharing these cores with the client) can deliver.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from .nginx import HOSTS, SIZES, Nginx

_SCRIPT = """
local i = 0
request = function()
    i = i + 1
    return wrk.format("GET", "/{name}/" .. (i % {count}) .. ".bin")
end
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        '\\nJSON {{"requests": %d, "bytes": %d, "duration_us": %d, "errors": %d, "status": %d}}\\n',
        summary.requests, summary.bytes, summary.duration,
        e.connect + e.read + e.write + e.timeout, e.status))
end
"""


@dataclass
class Ceiling:
    size_class: str
    requests_per_s: float
    mb_per_s: float
    errors: int
    connections: int
    threads: int
    seconds: float

    def record(self) -> dict[str, float | int | str]:
        return asdict(self)


def measure(
    nginx: Nginx,
    size_class: str,
    count: int,
    work: Path,
    seconds: float,
    threads: int,
    connections: int,
) -> Ceiling:
    script = work / f"wrk-{size_class}.lua"
    script.write_text(_SCRIPT.format(name=size_class, count=max(1, count)))
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "-s",
        str(script),
        nginx.url(HOSTS[0], "/"),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("JSON "))
    data = json.loads(line[5:])
    duration = data["duration_us"] / 1e6
    return Ceiling(
        size_class,
        data["requests"] / duration,
        data["bytes"] / duration / 1e6,
        data["errors"] + data["status"],
        connections,
        threads,
        duration,
    )


def measure_all(
    nginx: Nginx, counts: dict[str, int], work: Path, seconds: float, threads: int
) -> dict[str, Ceiling]:
    # Enough connections to keep nginx busy, as many as the contenders use for small bodies.
    connections = {"small": 64, "medium": 32, "large": 8}
    out = {}
    for size_class in SIZES:
        if counts.get(size_class):
            out[size_class] = measure(
                nginx,
                size_class,
                counts[size_class],
                work,
                seconds,
                threads,
                connections[size_class],
            )
    return out
