"""The ``shardload`` command: batch downloads with a manifest, resume, progress and a summary."""

from __future__ import annotations

import signal
import sys
from types import FrameType

from shardload.stop_signals import STOP_SIGNALS


def run() -> int:
    """The console entry point: ``main()``, with a Ctrl-C, SIGTERM or SIGHUP that comes
    before ``main`` handles signals itself (while the imports load, or a long manifest is read for
    ``--resume``) ending as exit 130 with one line, not a traceback or a death by signal. A
    signal set ignored (SIGHUP under ``nohup``) stays ignored."""
    try:
        for sig in STOP_SIGNALS[1:]:
            if signal.getsignal(sig) is signal.SIG_DFL:  # not when told to ignore it (nohup)
                signal.signal(sig, _interrupt)
        from shardload.cli.main import main  # noqa: PLC0415  (inside the guard on purpose)

        return main()
    except KeyboardInterrupt:
        print("shardload: interrupted", file=sys.stderr)
        return 130


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
