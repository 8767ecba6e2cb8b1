"""The signals that stop a whole process group: a terminal's Ctrl-C, a `kill`, `timeout` or a
service manager's stop, and the terminal going away. The CLI stops its run cleanly on them;
worker processes ignore them and stop when their coordinator says so."""

from __future__ import annotations

import signal

STOP_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    *([signal.SIGHUP] if hasattr(signal, "SIGHUP") else []),
)
