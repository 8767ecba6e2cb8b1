"""Where shard workers run: in the coordinator's loop, in worker processes (later: a cluster).

Every executor runs the same ``ShardWorker``; only the transport of jobs and results differs.
"""

from .base import Executor, ExecutorSink

__all__ = ["Executor", "ExecutorSink"]
