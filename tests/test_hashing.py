"""The sha256 of a body, computed either in the writer thread or as the body is read
(``files.hash_as_read``, on in worker processes when every core runs a worker): both give the
digest of the bytes stored, for every way a body can arrive, on both HTTP clients."""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import time

import pytest

import shardload
from shardload import AioDownload, DownloadStrategy
from shardload.executors import starting
from shardload.executors.processes import ProcessExecutor
from shardload.testing.server import body_for
from shardload.worker import files

from .conftest import files_under, make_download, temp_files
from .raw_server import RawServer, read_request


@pytest.fixture(params=["writer", "as_read"])
def hashing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    # processes=1 runs the worker in this process, so the setting applies to it.
    monkeypatch.setattr(files, "_hash_as_read", request.param == "as_read")
    return str(request.param)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("size", [0, 1000, 70000, 3 << 20])  # inline write, thread write
def test_digest_of_a_body_with_a_length(srv, home, client, hashing, size):
    (b,) = shardload.swarm(
        [srv.base_urls[0] + f"/bytes/{size}"], download=make_download(home, client=client)
    )
    assert b.state == "written" and b.bytes == size
    assert b.sha256 == _sha(body_for(size))
    assert open(b.file_path, "rb").read() == body_for(size)


def test_digest_of_a_gzip_body_is_of_the_bytes_stored(srv, home, client, hashing):
    (b,) = shardload.swarm(
        [srv.base_urls[0] + "/gzip/3000000"], download=make_download(home, client=client)
    )
    assert b.state == "written" and b.bytes == 3000000
    assert b.sha256 == _sha(bytes(3000000))


def _paced(pieces: list[bytes]):
    """A handler that sends the pieces of one answer with pauses between them, so that some
    arrive before the body is read and some after."""

    def handler(conn, index):
        if read_request(conn) is None:
            return
        for piece in pieces:
            conn.sendall(piece)
            time.sleep(0.03)
        conn.close()

    return handler


BODY = bytes(range(256)) * 2000  # 512,000 bytes


@pytest.mark.parametrize(
    "pieces",
    [
        # Content-Length: headers with the first part, the rest later, in several reads.
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY[:100_000],
            BODY[100_000:300_000],
            BODY[300_000:],
        ],
        # Chunked: through the parser, chunk by chunk.
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"%x\r\n%s\r\n" % (200_000, BODY[:200_000]),
            b"%x\r\n%s\r\n" % (312_000, BODY[200_000:]),
            b"0\r\n\r\n",
        ],
        # Gzip in pieces: hashed after decoding, never as sent.
        [
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
            % len(gzip.compress(BODY)),
            gzip.compress(BODY),
        ],
    ],
    ids=["length", "chunked", "gzip"],
)
def test_digest_of_a_body_arriving_in_pieces(home, client, hashing, pieces):
    with RawServer(_paced(pieces)) as server:
        (b,) = shardload.swarm([f"{server.url}/paced"], download=make_download(home, client=client))
    assert b.state == "written" and b.bytes == len(BODY)
    assert b.sha256 == _sha(BODY)
    assert open(b.file_path, "rb").read() == BODY


def test_a_failed_body_leaves_no_file_when_hashed_as_read(srv, home, client, hashing):
    (b,) = shardload.swarm(
        [srv.base_urls[0] + "/truncate/200000"], download=make_download(home, client=client)
    )
    assert b.state == "failed" and b.sha256 is None
    assert b.error_kind == "truncated"
    assert files_under(home) == set() and temp_files(home) == []


@pytest.mark.parametrize(
    ("workers", "cores", "busy"),
    [(1, 2, False), (2, 2, True), (3, 2, True), (4, 16, False), (16, 16, True)],
)
def test_workers_hash_as_read_when_every_core_runs_one(monkeypatch, workers, cores, busy):
    monkeypatch.setattr(starting.os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert starting.every_core_busy(workers) is busy
    executor = ProcessExecutor({"download_strategy": None}, shards=workers, home="/tmp")
    assert pickle.loads(executor._config)["hash_as_read"] is busy


class NamedByHashing(DownloadStrategy):
    """Names each file after where the worker that wrote it hashes bodies."""

    def get_file_path(self, bundle):
        return os.path.join(self.home, f"{files._hash_as_read}-{os.path.basename(bundle.url)}")


def modes(srv, home, **options) -> set[str]:
    """Where the workers of a run of 8 URLs hashed bodies: {"True"} (as read), {"False"}."""
    urls = [f"{srv.base_urls[i % 4]}/bytes/{100 + i}" for i in range(8)]
    download = AioDownload(download_strategy=NamedByHashing(home=home))
    bundles = shardload.swarm(urls, download=download, **options)
    assert all(b.sha256 == _sha(open(b.file_path, "rb").read()) for b in bundles)
    return {os.path.basename(b.file_path).split("-")[0] for b in bundles}


def test_worker_processes_that_fill_the_cores_hash_as_read(srv, home):
    """Two workers limited to one core (an affinity mask the workers inherit) hash as read;
    the worker in the caller's process keeps hashing in its writer thread."""
    assert modes(srv, home) == {"False"}
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everything)})
    try:
        assert modes(srv, home, processes=2) == {"True"}
    finally:
        os.sched_setaffinity(0, everything)
