"""Run.received: bytes counted as they arrive, downloads in progress included (worker.meter)."""

from __future__ import annotations

import threading
import time

import pytest

import shardload
from shardload.bundle import Bundle

from .conftest import make_download
from .raw_server import RawServer, gated

BODY = 3 << 20  # over the 1 MiB a worker that hashes as read writes in the callback
FIRST = 2 << 20  # sent at once; the rest only once the gate opens


@pytest.mark.parametrize("processes", [1, 2])
def test_bytes_of_bodies_still_downloading_are_counted(home: str, client: str, processes: int):
    gate = threading.Event()
    with (
        RawServer(gated(gate, BODY, FIRST), host="127.0.0.1") as a,
        RawServer(gated(gate, BODY, FIRST), host="127.0.0.2") as b,
    ):
        run = shardload.each(
            [f"{a.url}/big", f"{b.url}/big"],
            download=make_download(home, client=client),
            processes=processes,
        )
        assert run.received == 0
        finished: list[Bundle] = []
        consumer = threading.Thread(target=lambda: finished.extend(run))
        consumer.start()
        try:
            deadline = time.monotonic() + 30
            while (run.received or 0) < 2 * FIRST and time.monotonic() < deadline:
                time.sleep(0.01)
            # The servers send no more until the gate opens: exactly what has arrived so far.
            assert run.received == 2 * FIRST
            assert finished == []
        finally:
            gate.set()
            consumer.join(30)
    assert [b.state for b in finished] == ["written", "written"]
    assert [b.bytes for b in finished] == [BODY, BODY]
    assert run.received == 2 * BODY
