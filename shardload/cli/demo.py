"""``python -m shardload.cli.demo`` (``make demo``): the command on a local multi-host server.

Starts the test server on 127.0.0.2-127.0.0.5 (no internet needed), writes a few thousand URLs
(mostly small files, some 404s, some 500s, some 502s that fail once, a few bad lines) to
``demo-out/urls.txt``, runs ``shardload`` on them, then reruns it with ``--retry-transient`` to
show that only the transient failures are tried again. Bounded in time: after ``LIMIT_S`` the
run is interrupted like a Ctrl-C, and the server is always stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

from shardload.cli.main import main
from shardload.cli.summary import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from shardload.testing.server import LocalServer

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"]
# 500 and 502, not 503: a 429/503 makes shardload pause the whole host (politeness), which
# would turn a demo about failures into a demo about waiting.
LIMIT_S = 120.0
OUT = Path("demo-out")


def usable_hosts() -> list[str]:
    """The demo hosts, or 127.0.0.1 alone where only it exists (macOS by default)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOSTS[1], 0))
    except OSError:
        return ["127.0.0.1"]
    return HOSTS


def demo_lines(base_urls: list[str], count: int = 3000, seed: int = 7) -> list[str]:
    """The demo's input lines: deterministic for a given server."""
    rng = random.Random(seed)
    lines = ["# shardload demo input: one URL per line, or a JSON object per line"]
    for i in range(count):
        base = base_urls[i % len(base_urls)]
        roll = rng.random()
        if roll < 0.03:
            lines.append(f"{base}/status/404?n={i}")
        elif roll < 0.05:
            lines.append(f"{base}/status/500?n={i}")
        elif roll < 0.09:
            lines.append(f"{base}/flaky/demo-{i}/1/502")
        elif roll < 0.095:
            lines.append(f"{base}/slow/300/demo-{i}")
        elif roll < 0.10:
            info = {"id": i, "note": "JSON line with an explicit path"}
            path = f"named/file-{i}.bin"
            lines.append(
                json.dumps({"url": f"{base}/bytes/1024?name=n{i}", "path": path, "info": info})
            )
        else:
            lines.append(f"{base}/bytes/{rng.randint(1000, 8000)}?name=d{i}")
    lines += ["{this line is not JSON", '{"info": "no url field"}', "ftp://example.invalid/x"]
    return lines


def _watchdog(limit: float, done: threading.Event) -> None:
    if not done.wait(limit):
        print(f"\ndemo: time limit ({limit:.0f} s) reached, interrupting", file=sys.stderr)
        os.kill(os.getpid(), signal.SIGINT)


def run_demo(out: Path = OUT, limit: float = LIMIT_S, count: int = 3000) -> int:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    urls, files, manifest = out / "urls.txt", out / "files", out / "manifest.jsonl"
    hosts = usable_hosts()
    done = threading.Event()
    threading.Thread(target=_watchdog, args=(limit, done), daemon=True).start()
    processes = str(min(4, os.cpu_count() or 1))
    common = [str(urls), "-o", str(files), "--manifest", str(manifest), "-p", processes]
    common += ["--progress-interval", "1"]
    try:
        with LocalServer(hosts=hosts) as srv:
            lines = demo_lines(srv.base_urls, count)
            urls.write_text("\n".join(lines) + "\n")
            print(f"demo: local server on {', '.join(srv.base_urls)}", flush=True)
            print(f"demo: {len(lines) - 1} input lines in {urls}", flush=True)
            print(f"\ndemo: $ shardload {' '.join(common)} --attempts 1\n", flush=True)
            first = main([*common, "--attempts", "1"])
            if first not in (EXIT_OK, EXIT_FAILED):
                return first
            print(f"\ndemo: $ shardload {' '.join(common)} --retry-transient\n", flush=True)
            print(
                "demo: (only the 500s and the flaky 502s run again; 404s and bad lines do not)",
                flush=True,
            )
            second = main([*common, "--retry-transient"])
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    finally:
        done.set()
    print(f"\ndemo: files in {files}/, manifest in {manifest} (one JSON record per URL)")
    print(f'demo: failures: grep \'"state":"failed"\' {manifest}')
    print("demo: your own list: shardload my-urls.txt -o downloads/ --resume")
    return EXIT_INTERRUPTED if second == EXIT_INTERRUPTED else EXIT_OK


if __name__ == "__main__":
    raise SystemExit(run_demo())
