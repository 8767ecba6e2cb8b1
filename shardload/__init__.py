"""shardload: download large lists of URLs to disk, fast and politely, on every core.

The successor of aiodownload, with the same public API: ``import shardload as aiodownload``.

The names below are loaded on first use (PEP 562). Every worker process imports this package
on its way to ``shardload.worker``; importing the coordinator, the executors and the run
machinery there too would cost each worker ~20 ms of its start for code it never runs.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import aeach, aone, aswarm, each, one, swarm
    from .bundle import CACHED, FAILED, PENDING, SKIPPED, WRITTEN, AioDownloadBundle, Bundle
    from .errors import ConfigurationError, ErrorKind, ShardloadError, is_transient
    from .plan import RunOptions
    from .run import Run
    from .strategy import BackOff, DownloadStrategy, Lenient, Outcome, RequestStrategy
    from .worker.engine import AioDownload

__version__ = "0.1.0"

_SOURCES = {
    ".api": ("aeach", "aone", "aswarm", "each", "one", "swarm"),
    ".bundle": (
        "CACHED",
        "FAILED",
        "PENDING",
        "SKIPPED",
        "WRITTEN",
        "AioDownloadBundle",
        "Bundle",
    ),
    ".errors": ("ConfigurationError", "ErrorKind", "ShardloadError", "is_transient"),
    ".plan": ("RunOptions",),
    ".run": ("Run",),
    ".strategy": ("BackOff", "DownloadStrategy", "Lenient", "Outcome", "RequestStrategy"),
    ".worker.engine": ("AioDownload",),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "CACHED",
    "FAILED",
    "PENDING",
    "SKIPPED",
    "WRITTEN",
    "AioDownload",
    "AioDownloadBundle",
    "BackOff",
    "Bundle",
    "ConfigurationError",
    "DownloadStrategy",
    "ErrorKind",
    "Lenient",
    "Outcome",
    "RequestStrategy",
    "Run",
    "RunOptions",
    "ShardloadError",
    "aeach",
    "aone",
    "aswarm",
    "each",
    "is_transient",
    "one",
    "swarm",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        # A submodule not imported yet (``shardload.strategy.Lenient``): aiodownload imported
        # all of its own at once, so such a path worked there after a bare import.
        if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
            return importlib.import_module(f".{name}", __name__)
        raise AttributeError(f"module 'shardload' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
