"""Large bodies written in the connection's callback as they arrive (``inline_writer``, used
where bodies are hashed as read): the same file, digest and failures as the loop's writes,
including a body that starts in the loop's buffer, a writer that stops after a slow write, a
disk that refuses a write, and a body too slow."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

import shardload
from shardload import RequestStrategy
from shardload.errors import DownloadFailed, ErrorKind
from shardload.worker import files, inline_writer

from .conftest import files_under, make_download, temp_files
from .raw_server import RawServer, read_request
from .test_reliability import run_script

BODY = bytes(range(256)) * 12_000  # 3,072,000 bytes: over the 1 MiB of an inline write


@pytest.fixture
def written(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Bodies hashed as read (as in a worker on a busy machine); the size of every piece the
    inline writer took, so a test sees that the path it checks ran."""
    monkeypatch.setattr(files, "_hash_as_read", True)
    monkeypatch.setattr(inline_writer, "_slow_until", 0.0)  # no slow write seen yet
    monkeypatch.setattr(inline_writer, "_behind", 0.0)
    sizes: list[int] = []

    class Recording(inline_writer.InlineWriter):
        def __call__(self, data: bytes | memoryview) -> bool:
            took = super().__call__(data)
            if took:
                sizes.append(len(data))
            return took

    monkeypatch.setattr(files, "InlineWriter", Recording)
    return sizes


def _paced(pieces: list[bytes], pause: float = 0.03):
    def handler(conn, index):
        if read_request(conn) is None:
            return
        for piece in pieces:
            conn.sendall(piece)
            time.sleep(pause)
        conn.close()

    return handler


HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY)
# The head and a first part in the loop's buffer before the writer starts, the rest after.
IN_PIECES = [HEAD + BODY[:200_000], BODY[200_000:1_500_000], BODY[1_500_000:]]


def test_a_large_body_is_written_as_it_arrives(home, written):
    with RawServer(_paced(IN_PIECES)) as server:
        (b,) = shardload.swarm([f"{server.url}/big"], download=make_download(home))
    assert b.state == "written" and b.bytes == len(BODY)
    assert b.sha256 == hashlib.sha256(BODY).hexdigest()
    assert open(b.file_path, "rb").read() == BODY
    assert sum(written) == len(BODY)  # every byte went through the writer, none twice
    assert temp_files(home) == []


def test_after_a_slow_write_bodies_go_through_the_loop_for_a_while(home, written, monkeypatch):
    """Slow writes send the rest of their body, and every body for SLOW_PAUSE seconds, to
    the loop and its thread: each body deciding alone, many bodies starting together on a
    slow disk each stalled the event loop once."""
    monkeypatch.setattr(inline_writer, "SLOW_BUDGET", -1.0)  # every write counts as slow
    for run in range(3):
        if run == 2:
            monkeypatch.setattr(inline_writer, "_slow_until", 0.0)  # the pause is over
        with RawServer(_paced(IN_PIECES)) as server:
            (b,) = shardload.swarm([f"{server.url}/big{run}"], download=make_download(home))
        assert b.state == "written" and b.bytes == len(BODY)
        assert b.sha256 == hashlib.sha256(BODY).hexdigest()
        assert open(b.file_path, "rb").read() == BODY
        # One piece, then the loop; the next body not at all; after the pause, one piece.
        assert len(written) == [1, 1, 2][run] and 0 < written[-1] < len(BODY)


def test_aiohttp_bodies_take_the_loops_path(srv, home, written):
    (b,) = shardload.swarm(
        [srv.base_urls[0] + "/bytes/3000000"], download=make_download(home, client="aiohttp")
    )
    assert b.state == "written" and b.bytes == 3_000_000 and written == []


def test_a_body_cut_short_leaves_no_file(srv, home, written):
    (b,) = shardload.swarm([srv.base_urls[0] + "/truncate/3000000"], download=make_download(home))
    assert b.state == "failed" and b.error_kind == ErrorKind.TRUNCATED
    assert sum(written) == 1_500_000  # written as it came, then removed
    assert files_under(home) == set() and temp_files(home) == []


def test_a_body_too_slow_fails_as_a_timeout(home, written):
    drip = [HEAD + BODY[:1_200_000]] + [BODY[i : i + 10] for i in range(1_200_000, 1_200_200, 10)]
    strategy = RequestStrategy(low_speed_limit=100_000, low_speed_time=0.3)
    with RawServer(_paced(drip, pause=0.1)) as server:
        (b,) = shardload.swarm([f"{server.url}/drip"], download=make_download(home, strategy))
    assert b.state == "failed" and b.error_kind == ErrorKind.TIMEOUT
    assert "slower than" in (b.error_message or "")
    assert written  # the guard ran in the writer
    assert files_under(home) == set() and temp_files(home) == []


def test_a_disk_that_refuses_a_write_fails_the_bundle(srv, home):
    """A write over RLIMIT_FSIZE (EFBIG, as ENOSPC would) in the connection's callback is a
    failed bundle of kind disk, raised in the download's task; the other downloads go on."""
    result = run_script(
        """
        import json, resource, sys
        import shardload
        from shardload import AioDownload, DownloadStrategy
        from shardload.worker import files, inline_writer
        base, home = sys.argv[1], sys.argv[2]
        files.hash_as_read(True)
        took = []
        class Recording(inline_writer.InlineWriter):
            def __call__(self, data):
                ok = super().__call__(data)
                took.append(ok)
                return ok
        files.InlineWriter = Recording
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))
        urls = [f"{base}/bytes/3000000", f"{base}/bytes/1000"]
        d = AioDownload(download_strategy=DownloadStrategy(home=home))
        bundles = shardload.swarm(urls, download=d, processes=1)
        print(json.dumps({"bundles": [[b.state, b.error_kind] for b in bundles],
                          "took": took.count(True), "declined": took.count(False)}))
        """,
        srv.base_urls[0],
        home,
    )
    assert result["bundles"] == [["failed", ErrorKind.DISK], ["written", None]]
    assert result["took"] > 0 and result["declined"] >= 1
    assert len(files_under(home)) == 1 and temp_files(home) == []


def test_the_writer_keeps_a_failure_for_its_caller(tmp_path):
    """Unit: a failed write is never raised into the connection's callback; the writer
    declines from then on and hands the failure over."""
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    writer = inline_writer.InlineWriter(-1, hashlib.sha256(), None, None)
    assert writer(b"abc") is False  # EBADF: kept, declined
    assert writer(b"def") is False
    with pytest.raises(OSError):
        writer.handover()
    writer = inline_writer.InlineWriter(fd, hashlib.sha256(), 4, None)
    assert writer(b"abc") is True and writer(b"de") is False
    with pytest.raises(DownloadFailed, match="exceeds max 4"):
        writer.handover()
    os.close(fd)
    assert writer.size == 3 and (tmp_path / "f").read_bytes() == b"abc"


KIB256 = 256 * 1024
FAST, SPIKE = 0.00005, 0.003  # a page-cache write; one preempted on a busy machine


@pytest.mark.parametrize(
    ("writes", "slow_after"),
    [
        ([(FAST, KIB256)] * 1000, None),  # a healthy disk never counts as slow
        ([(FAST, KIB256)] * 20 + [(SPIKE, KIB256)] + [(FAST, KIB256)] * 20, None),
        ([(SPIKE, KIB256)] * 5, None),  # a few spikes in a row: still inside the budget
        ([(SPIKE, 100)] * 8, 7),  # spikes on tiny writes run up the debt
        ([(0.006, KIB256)] * 10, 5),  # a network home at 6 ms a write: after ~25 ms
        ([(0.3, KIB256)], 1),  # a throttled disk: at once
    ],
    ids=["healthy", "one-spike", "spikes", "tiny-spikes", "6ms", "throttled"],
)
def test_when_the_writes_count_as_slow(writes, slow_after):
    behind, after = 0.0, None
    for n, (seconds, size) in enumerate(writes, 1):
        behind = inline_writer.behind_after(behind, seconds, size)
        if behind > inline_writer.SLOW_BUDGET:
            after = n
            break
    assert after == slow_after
