"""The ``shardload`` command: batch downloads with a manifest, resume, progress and a summary."""

from __future__ import annotations

import sys


def run() -> int:
    """The console entry point: ``main()``, with a Ctrl-C that comes before ``main`` handles
    signals itself (while the imports load, or a long manifest is read for ``--resume``) ending
    as exit 130 with one line, not a traceback."""
    try:
        from shardload.cli.main import main  # noqa: PLC0415  (inside the guard on purpose)

        return main()
    except KeyboardInterrupt:
        print("shardload: interrupted", file=sys.stderr)
        return 130
