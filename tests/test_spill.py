"""Jobs parked on disk: FIFO per lane, exactly once, nothing lost on a failed write."""

from __future__ import annotations

import errno
import os
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardload.spill import Spill


def test_each_lane_comes_back_in_order_across_blocks_and_the_unwritten_tail(tmp_path):
    spill: Spill[str] = Spill(str(tmp_path), block=4)
    for i in range(10):
        spill.put("a", (i, f"http://a/{i}", None, None))
        spill.put("b", (100 + i, f"http://b/{i}", "b/path", {"line": i}))
    assert spill.count == 20 and "a" in spill and "c" not in spill
    assert [r[0] for r in spill.take("a", 3)] == [0, 1, 2]
    assert [r[0] for r in spill.take("a", 100)] == list(range(3, 10))
    assert "a" not in spill
    b = spill.take("b", 100)
    assert b[9] == (109, "http://b/9", "b/path", {"line": 9})
    assert spill.count == 0 and list(spill.lanes()) == []
    spill.close()


def test_the_file_is_emptied_when_nothing_waits_and_has_no_name(tmp_path):
    spill: Spill[str] = Spill(str(tmp_path), block=2)
    for i in range(1000):
        spill.put("a", (i, "x" * 100))
    file = spill._file
    assert file is not None and os.fstat(file.fileno()).st_size > 0
    assert os.listdir(tmp_path) == []  # anonymous: nothing left behind, however the run ends
    spill.take("a", 999)
    assert os.fstat(file.fileno()).st_size > 0  # one record still waits
    spill.take("a", 1)
    assert os.fstat(file.fileno()).st_size == 0
    spill.close()


def test_many_small_lanes_are_written_once_the_buffers_hold_too_much(tmp_path):
    spill: Spill[int] = Spill(str(tmp_path), block=512, max_buffered=100)
    for lane in range(300):
        spill.put(lane, (lane,))
    assert spill._buffered <= 100
    assert sorted(r[0] for lane in range(300) for r in spill.take(lane, 5)) == list(range(300))
    spill.close()


def test_a_failed_write_keeps_the_records_in_memory(tmp_path, monkeypatch):
    spill: Spill[str] = Spill(str(tmp_path), block=2)
    spill.put("a", (0,))
    spill.put("a", (1,))  # written
    real = os.pwrite

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    spill.put("a", (2,))
    spill.put("a", (3,))  # the write fails
    assert spill.broken is not None and "No space left" in spill.broken
    monkeypatch.setattr(os, "pwrite", real)
    assert [r[0] for r in spill.take("a", 10)] == [0, 1, 2, 3]
    spill.close()


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from("abc"), st.booleans(), st.integers(1, 7)), max_size=120),
    block=st.integers(1, 5),
    max_buffered=st.integers(1, 12),
)
def test_every_record_comes_back_once_in_its_lanes_order(ops, block, max_buffered):
    spill: Spill[str] = Spill(block=block, max_buffered=max_buffered)
    model: dict[str, deque[tuple[int]]] = {lane: deque() for lane in "abc"}
    n = 0
    try:
        for lane, put, count in ops:
            if put:
                for _ in range(count):
                    spill.put(lane, (n,))
                    model[lane].append((n,))
                    n += 1
            else:
                want = [model[lane].popleft() for _ in range(min(count, len(model[lane])))]
                assert spill.take(lane, count) == want
            assert spill.count == sum(len(q) for q in model.values())
            assert {lane for lane in "abc" if lane in spill} == {
                lane for lane, q in model.items() if q
            }
        for lane in "abc":
            assert spill.take(lane, n + 1) == list(model[lane])
    finally:
        spill.close()


@pytest.mark.parametrize("lanes", [1, 50])
def test_reading_back_many_blocks(tmp_path, lanes):
    spill: Spill[int] = Spill(str(tmp_path), block=64)
    for i in range(20_000):
        spill.put(i % lanes, (i, f"http://h{i % lanes}/{i}"))
    seen = [r[0] for lane in range(lanes) for r in spill.take(lane, 20_000)]
    assert sorted(seen) == list(range(20_000))
    spill.close()


class Deep:
    """Pickles as a recursion too deep for pickle (a JSON info nested ~600 levels does)."""

    def __reduce__(self) -> tuple[object, ...]:
        raise RecursionError("maximum recursion depth exceeded while pickling")


def test_a_record_that_does_not_pickle_breaks_the_spill_not_the_run(tmp_path):
    spill: Spill[str] = Spill(str(tmp_path), block=2)
    spill.put("a", (0, None))
    spill.put("a", (1, Deep()))  # its block fails
    assert spill.broken is not None and "RecursionError" in spill.broken
    assert [r[0] for r in spill.take("a", 10)] == [0, 1]


def test_a_lane_that_never_drains_does_not_keep_every_block_that_passed(tmp_path, monkeypatch):
    monkeypatch.setattr("shardload.spill._COMPACT_FROM", 10_000)
    spill: Spill[str] = Spill(str(tmp_path), block=8)
    for i in range(8):
        spill.put("stuck", (i, os.urandom(50).hex()))
    for i in range(20_000):
        spill.put("busy", (i, os.urandom(50).hex()))  # random: compresses to its own size
        if i % 8 == 7:
            spill.take("busy", 8)
    file = spill._file
    assert file is not None
    assert os.fstat(file.fileno()).st_size < 20_000  # not the ~2 MB that passed through
    assert [r[0] for r in spill.take("stuck", 100)] == list(range(8))
    spill.close()
