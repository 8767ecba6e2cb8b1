"""SIGINT, SIGTERM and SIGHUP (``STOP_SIGNALS``) for the batch command: a first signal stops
the run cleanly, a third exits.

Only the CLI installs these (DESIGN rule 8: a library function never installs signal handlers).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from shardload.cli.summary import EXIT_INTERRUPTED
from shardload.stop_signals import STOP_SIGNALS


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` in the main thread, once (a
    signal the process was told to ignore, as ``nohup`` does for SIGHUP, stays ignored).

    Inside ``critical()`` (manifest writes, shutdown) the interrupt waits for the section to end.
    After the first, signals are only noted, so the clean stop runs to completion; a third one
    exits at once.
    """

    def __init__(self) -> None:
        self.received: int | None = None
        self._count = 0
        self._armed = True
        self._depth = 0
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if sig == signal.SIGINT or signal.getsignal(sig) is not signal.SIG_IGN:
                    self._old[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def disarm(self) -> None:
        self._armed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = signum
        self._count += 1
        if self._count >= 3:
            os.write(2, b"shardload: interrupted again, exiting now\n")
            os._exit(EXIT_INTERRUPTED)
        if self._armed and not self._depth:
            self._armed = False
            raise KeyboardInterrupt

    @contextmanager
    def critical(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if not self._depth and self._armed and self.received is not None:
                self._armed = False
                raise KeyboardInterrupt
