"""Flow control: caps, round-robin between lanes, exactly-once (pure, tables and properties)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardload.flow import DrainPace, FlowControl, MemoryBound, Place, place_for


def test_lane_cap_leaves_room_for_other_lanes():
    flow: FlowControl[str] = FlowControl(shards=1, shard_cap=10, lane_cap=2)
    for i in range(100):
        flow.push(0, "slow", f"s{i}")
    flow.push(0, "fast", "f0")
    flow.push(0, "fast", "f1")
    taken = flow.take(0)
    assert sorted(taken) == ["f0", "f1", "s0", "s1"]
    assert flow.waiting == 98


def test_shard_cap_and_round_robin():
    flow: FlowControl[str] = FlowControl(shards=2, shard_cap=3, lane_cap=5)
    for lane in "abc":
        for i in range(3):
            flow.push(0, lane, f"{lane}{i}")
    assert flow.take(0) == ["a0", "b0", "c0"]
    assert flow.take(1) == []
    assert flow.take(0) == []  # shard full
    flow.done(0, "b")
    assert flow.take(0) == ["a1"]
    assert flow.outstanding(0) == 3


def test_done_reopens_a_full_lane():
    flow: FlowControl[int] = FlowControl(shards=1, shard_cap=100, lane_cap=1)
    for i in range(3):
        flow.push(0, "h", i)
    assert flow.take(0) == [0]
    assert flow.take(0) == []
    flow.done(0, "h")
    assert flow.take(0) == [1]


def test_drop_waiting_returns_only_that_shard():
    flow: FlowControl[int] = FlowControl(shards=2, shard_cap=1, lane_cap=1)
    for i in range(4):
        flow.push(i % 2, f"h{i}", i)
    assert sorted(flow.drop_waiting(0)) == [0, 2]
    assert flow.waiting == 2
    assert flow.take(0) == []
    assert flow.take(1) == [1]


@settings(max_examples=300, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from("abcd"), st.booleans()), max_size=200
    ),
    shard_cap=st.integers(1, 6),
    lane_cap=st.integers(1, 4),
)
def test_every_item_taken_exactly_once_within_caps(ops, shard_cap, lane_cap):
    flow: FlowControl[int] = FlowControl(shards=3, shard_cap=shard_cap, lane_cap=lane_cap)
    outstanding: list[tuple[int, str, int]] = []  # (shard, lane, item) sent and not done
    taken: list[int] = []

    def take_all() -> None:
        """Take what each shard may have now, and check both caps hold."""
        for shard in range(3):
            for item in flow.take(shard):
                taken.append(item)
                outstanding.append((shard, ops[item][1], item))
            assert flow.outstanding(shard) <= shard_cap
            lanes = Counter(lane for s, lane, _ in outstanding if s == shard)
            assert all(count <= lane_cap for count in lanes.values())

    def finish_oldest() -> None:
        shard, lane, _ = outstanding.pop(0)
        flow.done(shard, lane)

    for n, (shard, lane, finish) in enumerate(ops):
        flow.push(shard, lane, n)
        if finish and outstanding:
            finish_oldest()
        take_all()
    while outstanding:  # drain: every pushed item comes out exactly once
        finish_oldest()
        take_all()
    assert sorted(taken) == list(range(len(ops)))
    assert flow.waiting == 0


def test_queued_and_ready_say_what_a_lane_and_a_shard_hold():
    flow: FlowControl[str] = FlowControl(shards=2, shard_cap=10, lane_cap=1)
    assert flow.queued(0, "a") == 0 and not flow.ready(0)
    flow.push(0, "a", "a0")
    flow.push(0, "a", "a1")
    assert flow.queued(0, "a") == 2 and flow.ready(0) and not flow.ready(1)
    assert flow.take(0) == ["a0"]
    # a1 waits, but its lane is at its cap: nothing may be sent to shard 0 now.
    assert flow.queued(0, "a") == 1 and not flow.ready(0)


@pytest.mark.parametrize(
    ("finished_at", "now", "waiting", "expected"),
    [
        ([], 1.0, 100, None),  # watched for less than a window: no pace yet
        ([], 2.0, 100, math.inf),  # a whole window and nothing finished: never drains
        ([(1.0, 50)], 2.0, 100, 4.0),  # 50 in 2 s: 100 take 4 s
        ([(0.5, 1000)], 2.0, 20_000, 40.0),
        ([(0.5, 10_000)], 2.0, 20_000, 4.0),
    ],
)
def test_drain_pace(finished_at, now, waiting, expected):
    pace = DrainPace(window=2.0)
    assert pace.seconds_for(waiting, 0.0) is None
    for at, count in finished_at:
        pace.finished += count
        assert pace.seconds_for(waiting, at) is None
    assert pace.seconds_for(waiting, now) == expected


def test_drain_pace_forgets_what_finished_before_its_window():
    pace = DrainPace(window=2.0)
    pace.seconds_for(10, 0.0)
    pace.finished = 10_000  # a fast start
    pace.seconds_for(10, 1.0)
    for t in range(2, 9):
        pace.seconds_for(10, float(t))
    # Nothing finished in the last 2 s: the fast start no longer counts.
    assert pace.seconds_for(10, 9.0) == math.inf


BOUND = MemoryBound(soft=100, hard=200, lane=10)


@pytest.mark.parametrize(
    ("waiting", "queued", "parked", "parkable", "expected"),
    [
        (0, 0, False, True, Place.MEMORY),
        (99, 50, False, True, Place.MEMORY),  # under the soft bound: any lane may grow
        (100, 9, False, True, Place.MEMORY),  # past it: a lane with few waiting still may
        (100, 10, False, True, Place.DISK),  # one with its share parks the rest
        (100, 10, False, False, Place.MEMORY),  # a caller's own object: memory, up to hard
        (0, 0, True, True, Place.DISK),  # a parked lane parks all its new jobs: its order
        (0, 0, True, False, Place.MEMORY),
        (200, 10, False, True, Place.DISK),  # memory full: a lane with its share parks
        (200, 0, True, True, Place.DISK),  # ... and so does a parked one
        (200, 0, False, True, Place.HOLD),  # a new lane opens none on disk: the input waits
        (200, 0, False, False, Place.HOLD),
        (200, 0, True, False, Place.HOLD),
    ],
)
def test_where_a_job_waits(waiting, queued, parked, parkable, expected):
    assert place_for(BOUND, waiting, queued, parked=parked, parkable=parkable) is expected
