"""Flow control: caps, round-robin between lanes, exactly-once (pure, tables and properties)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from shardload.flow import FlowControl


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
