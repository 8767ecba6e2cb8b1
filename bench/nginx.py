"""A private nginx for the bench: its own config, pid file and document root, stopped by PID.

One ``server`` block listens on 8 loopback addresses (127.0.0.2-127.0.0.9, one port), so a
client sees 8 distinct hosts. Keep-alive is on (and effectively unlimited per connection),
the access log is off, files are sent with ``sendfile`` from a tmpfs document root.

Locations:
- ``/small/<i>.bin`` (1 KiB), ``/medium/<i>.bin`` (100 KiB), ``/large/<i>.bin`` (64 MiB): static,
  generated files (hard links to one generated file per class, so they cost one copy of memory);
- ``/slow/<i>.bin``: 1 KiB after a delay (``echo_sleep`` of the Debian echo module, which
  ``nginx-light`` ships; it suspends only that request, never an nginx worker);
- ``/fail404/...`` and ``/fail503/...``: ``return 404;`` / ``return 503;``;
- ``/z/...``: ``return 204;`` (the memory-scale run: a request that costs the server nothing).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from .system import ensure_packages

HOSTS = tuple(f"127.0.0.{i}" for i in range(2, 10))
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
SIZES = {"small": 1024, "medium": 100 * 1024, "large": 64 * 1024 * 1024}
SLOW_SIZE = 1024


def ensure_nginx() -> str:
    """The nginx binary; installs nginx-light (which has the echo module) when missing."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        ensure_packages(["nginx-light"])
    if not ECHO_MODULE.exists():
        ensure_packages(["libnginx-mod-http-echo"])
    return shutil.which("nginx") or "/usr/sbin/nginx"


def generate_files(root: Path, counts: dict[str, int]) -> None:
    """``root/<class>/<i>.bin`` for i < count: hard links to one generated file per class."""
    for name, count in counts.items():
        size = SIZES[name]
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        base = root / f".{name}.base"
        if not base.exists() or base.stat().st_size != size:
            with open(base, "wb") as f:
                block = os.urandom(min(size, 1 << 20))
                left = size
                while left:
                    f.write(block[:left])
                    left -= min(left, len(block))
        for i in range(count):
            target = directory / f"{i}.bin"
            if not target.exists():
                os.link(base, target)


def _config(prefix: Path, root: Path, port: int, workers: int, slow_delay: float) -> str:
    # Open files per worker: cached file descriptors plus connections must fit the hard limit.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = hard if hard != resource.RLIM_INFINITY else 65536
    nofile = min(nofile, 65536)
    cache = max(1000, min(20000, nofile // 2 - 2000))
    listens = "\n".join(f"        listen {host}:{port} backlog=4096;" for host in HOSTS)
    return f"""
load_module {ECHO_MODULE};
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
worker_rlimit_nofile {nofile};
events {{
    worker_connections {max(1024, nofile // 2 - 100)};
    multi_accept on;
}}
http {{
    access_log off;
    sendfile on;
    sendfile_max_chunk 2m;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
    open_file_cache max={cache} inactive=300s;
    open_file_cache_valid 300s;
    server_tokens off;
    etag off;
    types {{ }}
    default_type application/octet-stream;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
{listens}
        root {root};
        location /fail404/ {{ return 404; }}
        location /fail503/ {{ return 503; }}
        location /z/ {{ return 204; }}
        location /slow/ {{
            echo_sleep {slow_delay};
            echo_duplicate {SLOW_SIZE} "x";
        }}
    }}
}}
"""


def _port_free(port: int) -> bool:
    for host in HOSTS:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


class Nginx:
    """Start with ``start()``, stop with ``stop()`` (SIGQUIT, then SIGKILL, by PID)."""

    def __init__(
        self,
        prefix: Path,
        root: Path,
        port: int = 8089,
        workers: int | None = None,
        slow_delay: float = 0.2,
    ) -> None:
        self.prefix = prefix
        self.root = root
        self.port = port
        self.workers = workers or os.cpu_count() or 1
        self.slow_delay = slow_delay
        self.binary = ensure_nginx()
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, host: str, path: str) -> str:
        return f"http://{host}:{self.port}{path}"

    def start(self) -> None:
        if not _port_free(self.port):
            raise RuntimeError(f"port {self.port} is taken on 127.0.0.2-9; pass --port")
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(_config(self.prefix, self.root, self.port, self.workers, self.slow_delay))
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.prefix), "-c", str(conf), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited: see {self.prefix}/error.log")
            if self._answers():
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("nginx did not start within 10 s")

    def _answers(self) -> bool:
        for host in HOSTS:
            try:
                with socket.create_connection((host, self.port), timeout=0.2):
                    pass
            except OSError:
                return False
        return True

    def pids(self) -> list[int]:
        """The master and worker PIDs (for the server's CPU time)."""
        if self.process is None:
            return []
        master = self.process.pid
        out = [master]
        try:
            children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
            out += [int(pid) for pid in children]
        except OSError:
            pass
        return out

    def cpu_seconds(self) -> float:
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / ticks

    def stop(self) -> None:
        pids = self.pids()  # nginx workers do not die with a killed master: kill each
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> Nginx:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
