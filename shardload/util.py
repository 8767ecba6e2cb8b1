"""aiodownload's ``util`` helpers, for code written against it: under
``import shardload as aiodownload``, ``aiodownload.util.clean_filename`` keeps working.

``default_url_transform`` is shardload's own mapping (host, then the URL's path segments, as
``DownloadStrategy.get_file_path`` uses it): it stays under the download home for every URL,
where aiodownload's escaped it on ``/../`` and gave ``a?b=1`` and ``a_b_1`` one file.
"""

from __future__ import annotations

import os
import string
import unicodedata

from .errors import DownloadFailed
from .paths import url_to_relpath
from .urls import split_url

_REPLACED = {"&": "-", ",": ".", ";": "-", "=": "_"}
_KEPT = frozenset(f"-_.() {string.ascii_letters}{string.digits}")


def clean_filename(filename: str) -> str:
    """``filename`` with ``& , ; =`` replaced by ``- . - _``, accents dropped (``é`` -> ``e``)
    and every character but ASCII letters, digits and ``-_.() `` removed, as aiodownload did.
    Not a safe path on its own: ``..`` stays ``..``."""
    replaced = "".join(_REPLACED.get(char, char) for char in filename)
    decomposed = unicodedata.normalize("NFKD", replaced)
    return "".join(c for c in decomposed if c in _KEPT and not unicodedata.combining(c))


def make_dirs(file_path: str) -> None:
    """Create the directories above ``file_path`` (those that exist already are fine)."""
    directory = os.path.dirname(file_path)
    if directory:
        os.makedirs(directory, exist_ok=True)


def default_url_transform(url: str) -> str:
    """The path of ``url``'s file relative to the download home, ``/``-joined
    (``https://httpbin.org/links/0`` -> ``httpbin.org/links/0``). Raises ``ValueError`` for a
    URL that has no file (not http(s), no host)."""
    try:
        return url_to_relpath(split_url(url))
    except DownloadFailed as exc:
        raise ValueError(exc.message) from None
