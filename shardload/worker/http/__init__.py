"""A lean HTTP/1.1 client for the engine's own GET requests (asyncio protocols + httptools).

Why: aiohttp's request path costs ~110-130 us of CPU per request on the bench machine, about
half of what a small file costs end to end; a GET with a streamed body needs far less. The
engine uses this client when it owns the whole request (no caller ``client`` session, and the
strategies' ``on_success``/``assert_response`` are shardload's own); an override gets aiohttp's
response object, as in aiodownload. ``LeanResponse`` offers the subset shardload itself reads:
``status``, ``reason``, ``headers``, ``url``, ``content_length`` and ``content.read`` /
``content.iter_chunked``.

Invariants:
- a connection returns to the pool only after its response was read to the end and the server
  allows keep-alive; anything else is closed, so a pooled connection never holds stale bytes;
- open connections (busy + idle) never exceed ``limit``: a new connection first evicts the
  least recently used idle one, so the engine's descriptor budget (one socket and one temporary
  file per request in flight) holds;
- a body is complete only when the parser says so (Content-Length reached, last chunk seen) or,
  for a response with neither length nor chunking, when the server closes the connection;
  a connection lost earlier is ``truncated`` (or ``reset`` before any response byte);
- a request never waits more than ``read_timeout`` seconds without a byte arriving (a paused
  reader does not count: the pause is ours), nor ``connect_timeout`` seconds to connect;
- a request that finds its reused connection closed before a byte of the answer is sent once
  more on a fresh connection (GET is idempotent; servers close idle connections at any time);
- decompression (gzip, deflate) yields at most ``_DECODE_STEP`` bytes per step, so a
  compression bomb cannot allocate more than that before the caller's size cap sees it.
Every failure is raised as ``DownloadFailed`` with its error kind (connection errors through
``failures.connect_error``), so the engine handles both clients alike.

Modules: ``client`` (the pool and requests), ``connection`` (one socket and the parser's
callbacks), ``response`` (the body stream and its decoding). Underscored members are shared
between these modules only.
"""

from .client import ORIGIN_ONLY, REDIRECT_STATUSES, LeanClient, request_target
from .connection import no_status
from .response import LeanResponse

__all__ = [
    "ORIGIN_ONLY",
    "REDIRECT_STATUSES",
    "LeanClient",
    "LeanResponse",
    "no_status",
    "request_target",
]
