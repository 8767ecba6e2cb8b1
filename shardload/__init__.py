"""shardload: download large lists of URLs to disk, fast and politely, on every core.

The successor of aiodownload, with the same public API: ``import shardload as aiodownload``.
"""

from .api import aeach, aone, aswarm, each, one, swarm
from .bundle import CACHED, FAILED, PENDING, WRITTEN, AioDownloadBundle, Bundle
from .errors import ConfigurationError, ErrorKind, ShardloadError, is_transient
from .plan import RunOptions
from .run import Run
from .strategy import BackOff, DownloadStrategy, Lenient, Outcome, RequestStrategy
from .worker.engine import AioDownload

__version__ = "0.1.0"

__all__ = [
    "CACHED",
    "FAILED",
    "PENDING",
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
