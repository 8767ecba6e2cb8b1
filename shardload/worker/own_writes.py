"""An overridden ``on_success`` that writes the file itself, as aiodownload's did.

Invariants (DESIGN rule 6, for code we do not control):
- while the override runs, ``bundle.file_path`` names a fresh temporary file in home's
  ``.shardload-tmp`` (``temp_files``), so what it writes never stands at the final path
  before it returns: a body cut short, or an override that raises mid-write, leaves the final
  path (and an earlier good copy there) as it was, and ``skip_cached`` can trust what it finds;
- when it returns, what it wrote there is moved to the final path like any body
  (``files.commit``); nothing written (an override that uploads elsewhere) moves nothing;
  when it raises, its temporary file is removed;
- ``super().on_success()`` inside it writes straight to the final path, as without the
  override, and a path the override sets on the bundle itself is its own and kept.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from typing import TYPE_CHECKING

from ..bundle import Bundle
from ..errors import DownloadFailed, ErrorKind
from .files import commit, held_path
from .temp_files import reserve_temp

if TYPE_CHECKING:
    from ..strategy import DownloadStrategy, Response


async def run_on_success(strategy: DownloadStrategy, response: Response, bundle: Bundle) -> None:
    """``strategy.on_success(response, bundle)``, an override's, with the final path held."""
    final = bundle.file_path
    if final is None:
        await strategy.on_success(response, bundle)
        return
    tmp = reserve_temp(strategy.home)
    bundle.file_path = tmp
    token = held_path.set((tmp, final))
    try:
        await strategy.on_success(response, bundle)
    except BaseException:
        _remove(tmp)
        if bundle.file_path == tmp:
            bundle.file_path = final
        raise
    finally:
        held_path.reset(token)
    if bundle.file_path != tmp:  # super().on_success() wrote it, or the override chose a path
        _remove(tmp)
        return
    bundle.file_path = final
    try:
        mode = os.lstat(tmp).st_mode
    except FileNotFoundError:
        return  # it wrote nothing here
    if not stat.S_ISREG(mode):
        _remove(tmp)
        raise DownloadFailed(ErrorKind.STRATEGY, "on_success left no regular file at its path")
    try:
        bundle.file_path = commit(tmp, final, strategy.home)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def measure_written(bundle: Bundle, with_hash: bool) -> None:
    """Fill in ``bytes`` (and ``sha256``) from the file at ``bundle.file_path``, for an
    overridden ``on_success`` that wrote it itself. Runs in a thread: the file may be large."""
    path = bundle.file_path
    if path is None or not os.path.isfile(path):
        return
    with open(path, "rb") as f:
        bundle.bytes = os.fstat(f.fileno()).st_size
        if with_hash:
            bundle.sha256 = hashlib.file_digest(f, "sha256").hexdigest()
