"""The per-host side-car of a manifest (``manifest.hosts.json``): each host's counts, latency and
failures for the run, written whole or not at all, never through a symlink at its name."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import stat
from typing import Any


def hosts_path(manifest: str) -> str:
    """The per-host side-car: ``out/manifest.jsonl`` -> ``out/manifest.hosts.json``."""
    root, ext = os.path.splitext(manifest)
    return (root if ext == ".jsonl" else manifest) + ".hosts.json"


def write_host_stats(manifest: str, stats: Any) -> str | None:
    """Write this run's per-host statistics next to the manifest; returns the path written.
    A run with no host to count (a ``--resume`` with nothing left) writes empty statistics:
    an earlier run's would read as this one's."""
    if stats is None:
        return None
    if manifest.startswith(("/dev/std", "/dev/fd/", "/proc/")):
        return None  # `--manifest /dev/stdout > f`: stat sees f, but /dev is not its folder
    with contextlib.suppress(OSError):
        if not stat.S_ISREG(os.stat(manifest).st_mode):
            return None  # no side-car beside a pipe or a device
    path = hosts_path(manifest)
    records = [stats.hosts[host].to_record() for host in sorted(stats.hosts)]
    text = json.dumps({"total": stats.total.to_record(), "hosts": records}, indent=1)
    # Written beside it and renamed over it: a symlink planted at its name is replaced, not
    # followed out of the folder, and a crash leaves the old file or the new, never half.
    # A short name: the side-car's own may be as long as the file system allows.
    temp = os.path.join(os.path.dirname(path), f".shardload-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except OSError:
        return None
    try:
        with contextlib.suppress(FileNotFoundError):
            before = os.lstat(path)
            if stat.S_ISREG(before.st_mode):
                os.fchmod(fd, stat.S_IMODE(before.st_mode))  # a 0600 side-car stays so
        with open(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(temp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        return None
    return path
