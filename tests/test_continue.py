"""A body cut mid-way is continued by the next attempt (``continue_partial``): the retry asks
for the rest with Range and If-Range, and the file is whole, its sha256 the whole body's.

Against a raw server that cuts the first answer and answers the retry as each case needs.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time

import pytest

import shardload
from shardload import AioDownload, DownloadStrategy, RequestStrategy
from shardload.worker import files

from .raw_server import RawServer, read_request

BODY = bytes(range(256)) * 1200  # 307,200 bytes
CUT = 100_000
ETAG = b'"v1"'


class Checked(RequestStrategy):
    """An overridden assert_response keeps the engine's requests on aiohttp."""

    def assert_response(self, response: object) -> None:
        super().assert_response(response)


class OneFile(DownloadStrategy):
    """Every run writes the same file, whatever port its server got."""

    def get_file_path(self, bundle: object) -> str:
        return os.path.join(self.home, "big.bin")


def download(home: str, client: str = "lean", **options: object) -> AioDownload:
    options.setdefault("max_attempts", 3)
    strategy = Checked if client == "aiohttp" else RequestStrategy
    return AioDownload(
        download_strategy=OneFile(home=home),
        request_strategy=strategy(**options),  # type: ignore[arg-type]
    )


class Script:
    """Answers the n-th request with ``answers[n](head)``; keeps every request head."""

    def __init__(self, *answers: object) -> None:
        self.answers = answers
        self.heads: list[bytes] = []
        self._lock = threading.Lock()

    def __call__(self, conn: object, index: int) -> None:
        while (head := read_request(conn)) is not None:  # type: ignore[arg-type]
            with self._lock:
                n = len(self.heads)
                self.heads.append(head)
            answer = self.answers[min(n, len(self.answers) - 1)]
            data, close = answer(head)  # type: ignore[operator]
            conn.sendall(data)  # type: ignore[attr-defined]
            if close:
                # aiohttp drops what it had not handed on when the connection ends (its
                # reader raises first): let the client take what was sent before the cut.
                time.sleep(0.2)
                return

    def offsets(self) -> list[int | None]:
        """Where each request asked its body to start (None: the whole body)."""
        found = [self.header(n, b"Range") for n in range(len(self.heads))]
        return [None if r is None else int(r.strip(b"bytes=-")) for r in found]

    def header(self, n: int, name: bytes) -> bytes | None:
        match = re.search(rb"(?im)^" + name + rb":\s*(.*?)\r$", self.heads[n])
        return match.group(1) if match else None


def cut(body: bytes = BODY, at: int = CUT, validators: bytes = b"ETag: " + ETAG + b"\r\n"):
    def answer(head: bytes) -> tuple[bytes, bool]:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nAccept-Ranges: bytes\r\n%s\r\n"
            % (len(body), validators)
            + body[:at],
            True,
        )

    return answer


def whole(body: bytes = BODY, etag: bytes = ETAG):
    def answer(head: bytes) -> tuple[bytes, bool]:
        return (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nETag: %s\r\n\r\n" % (len(body), etag) + body,
            False,
        )

    return answer


def rest(body: bytes = BODY, upto: int | None = None, content_range: bytes | None = None):
    """A 206 with the range the request asked for (cut at ``upto`` if given)."""

    def answer(head: bytes) -> tuple[bytes, bool]:
        first = int(re.search(rb"Range: bytes=(\d+)-", head).group(1))  # type: ignore[union-attr]
        part = body[first:]
        stated = content_range or b"bytes %d-%d/%d" % (first, len(body) - 1, len(body))
        head_out = (
            b"HTTP/1.1 206 Partial Content\r\nContent-Length: %d\r\nContent-Range: %s\r\n"
            b"ETag: %s\r\n\r\n" % (len(part), stated, ETAG)
        )
        if upto is not None:
            return head_out + part[: upto - first], True
        return head_out + part, False

    return answer


def chunked_rest(body: bytes = BODY, upto: int = 200_000):
    """A 206 for the range asked, chunked (no Content-Length), whose chunks end at ``upto``."""

    def answer(head: bytes) -> tuple[bytes, bool]:
        first = int(re.search(rb"Range: bytes=(\d+)-", head).group(1))  # type: ignore[union-attr]
        part = body[first:upto]
        return (
            b"HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Range: bytes %d-%d/%d\r\n\r\n%x\r\n%s\r\n0\r\n\r\n"
            % (first, len(body) - 1, len(body), len(part), part),
            False,
        )

    return answer


def status(code: int):
    def answer(head: bytes) -> tuple[bytes, bool]:
        return b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % code, False

    return answer


def run(
    script: Script, home: str, client: str = "lean", processes: int = 1, **options: object
) -> shardload.Bundle:
    with RawServer(script) as server:
        (bundle,) = shardload.swarm(
            [f"{server.url}/big.bin"],
            download=download(home, client, **options),
            processes=processes,
        )
    return bundle


def assert_whole(bundle: shardload.Bundle, body: bytes = BODY) -> None:
    assert bundle.state == "written", bundle.error_message
    with open(bundle.file_path, "rb") as f:
        assert f.read() == body
    assert bundle.bytes == len(body)
    assert bundle.sha256 == hashlib.sha256(body).hexdigest()


def no_temporary_files(home: str) -> bool:
    folder = os.path.join(home, ".shardload-tmp")
    return not os.path.isdir(folder) or os.listdir(folder) == []


def test_a_retry_asks_for_the_rest_of_a_cut_body(home, client):
    script = Script(cut(), rest())
    bundle = run(script, home, client)
    assert_whole(bundle)
    assert bundle.attempts == 2
    assert script.header(0, b"Range") is None
    assert script.header(1, b"Range") == b"bytes=%d-" % CUT
    assert script.header(1, b"If-Range") == ETAG
    assert no_temporary_files(home)


def test_a_worker_process_continues_a_cut_body(home):
    script = Script(cut(), rest())
    assert_whole(run(script, home, processes=2))
    assert script.offsets() == [None, CUT]
    assert no_temporary_files(home)


def test_a_body_cut_twice_goes_on_from_where_each_cut_it(home, client):
    script = Script(cut(), rest(upto=200_000), rest())
    bundle = run(script, home, client)
    assert_whole(bundle)
    offsets = script.offsets()
    if client == "lean":
        assert offsets == [None, 100_000, 200_000]
    else:  # aiohttp may drop the last bytes before a cut (see Script): not past them
        assert offsets[0] is None and 0 < offsets[1] <= 100_000 < offsets[2] <= 200_000
    # The ETag of the first answer still names the body.
    assert script.header(2, b"If-Range") == ETAG


def test_a_continuation_without_a_length_is_held_to_the_whole_length(home, client):
    """A chunked 206 that ends short of the length its Content-Range names is no whole body:
    it is kept, and the next attempt goes on from where it ended."""
    script = Script(cut(), chunked_rest(), rest())
    bundle = run(script, home, client)
    assert_whole(bundle)
    assert script.offsets() == [None, CUT, 200_000]


def test_a_large_body_written_as_it_arrives_is_continued(home, monkeypatch):
    """Hashed and written in the connection's callback (a worker where every core runs
    one): what it wrote before the cut is what the retry continues."""
    monkeypatch.setattr(files, "_hash_as_read", True)
    body = os.urandom(3 << 20)
    script = Script(cut(body, at=(2 << 20) + 12345), rest(body))
    bundle = run(script, home)
    assert_whole(bundle, body)
    assert script.header(1, b"Range") == b"bytes=%d-" % ((2 << 20) + 12345)


def test_a_server_that_ignores_the_range_sends_the_whole_body_again(home, client):
    bundle = run(Script(cut(), whole()), home, client)
    assert_whole(bundle)


def test_a_resource_changed_since_the_cut_comes_whole(home, client):
    """If-Range did not match: the server sends the new version whole, which replaces the
    bytes kept (a mix of two versions is never written)."""
    new = BODY[::-1] + b"more"
    bundle = run(Script(cut(), whole(new, b'"v2"')), home, client)
    assert_whole(bundle, new)


@pytest.mark.parametrize(
    "answer",
    [
        rest(content_range=b"bytes 0-307199/307200"),  # not where the kept bytes end
        rest(content_range=b"bytes 100000-307199/400000"),  # another whole length
        status(416),
    ],
    ids=["wrong-start", "wrong-total", "416"],
)
def test_an_answer_that_does_not_continue_the_body_starts_it_over(home, client, answer):
    script = Script(cut(), answer, whole())
    bundle = run(script, home, client)
    assert_whole(bundle)
    assert bundle.attempts == 3
    assert script.header(2, b"Range") is None  # the third asks for the whole body
    assert no_temporary_files(home)


@pytest.mark.parametrize(
    "validators",
    [b"", b'ETag: W/"weak"\r\n', b"Last-Modified: Mon, 23 Nov 2026 10:00:00 GMT\r\n"],
    ids=["none", "weak-etag", "date-without-Date"],
)
def test_without_a_strong_validator_the_retry_asks_for_the_whole_body(home, validators):
    script = Script(cut(validators=validators), whole())
    bundle = run(script, home)
    assert_whole(bundle)
    assert script.header(1, b"Range") is None


def test_a_strong_last_modified_goes_as_if_range(home):
    modified = b"Mon, 23 Nov 2026 10:00:00 GMT"
    validators = b"Last-Modified: %s\r\nDate: Tue, 24 Nov 2026 10:00:00 GMT\r\n" % modified
    script = Script(cut(validators=validators), rest())
    assert_whole(run(script, home))
    assert script.header(1, b"If-Range") == modified


def test_continue_partial_off_asks_for_the_whole_body(home):
    script = Script(cut(), whole())
    assert_whole(run(script, home, continue_partial=False))
    assert script.header(1, b"Range") is None


def test_a_callers_own_range_header_is_left_alone(home):
    script = Script(cut(), whole())
    run(script, home, headers={"Range": "bytes=0-"})
    assert script.header(1, b"Range") == b"bytes=0-"
    assert script.header(1, b"If-Range") is None


def test_the_bytes_kept_are_removed_when_the_download_fails(home, client):
    bundle = run(Script(cut(), status(500)), home, client, max_attempts=2)
    assert bundle.state == "failed"
    assert no_temporary_files(home)
    assert not os.path.exists(os.path.join(home, "big.bin"))  # no copy at all


def test_an_earlier_good_copy_stays_when_the_continued_download_fails(home):
    first = run(Script(whole()), home)
    assert_whole(first)
    failed = run(Script(cut(), rest(upto=200_000), status(503)), home, max_attempts=3)
    assert failed.state == "failed"
    assert_whole(first)  # still the whole earlier copy
