"""This process's open-file limit, which the worker's connections and the executor's pipes
must fit in."""

from __future__ import annotations


def open_file_limit() -> int | None:
    """The soft ``RLIMIT_NOFILE``; None when unlimited, or where there is none (not POSIX)."""
    try:
        import resource  # noqa: PLC0415  (POSIX only)
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft
