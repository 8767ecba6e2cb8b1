"""Repeats of one request: followers while it is pending, a kept answer after (pure)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shardload.bundle import Bundle, Result
from shardload.repeats import Repeats, Request

from .conftest import written_result


def result(seq: int) -> Result:
    return written_result(seq, "p", size=10)


A: Request = ("http://h/a", None)
B: Request = ("http://h/b", None)
A_ELSEWHERE: Request = ("http://h/a", "elsewhere")


def test_a_repeat_of_a_pending_request_follows_its_leader():
    repeats = Repeats(window=10)
    first, second, third = Bundle(A[0]), Bundle(A[0]), Bundle(A[0])
    assert not repeats.follow(A, first)
    repeats.lead(A, 1)
    assert repeats.follow(A, second)
    assert repeats.follow(A, third)
    assert not repeats.follow(A_ELSEWHERE, Bundle(A[0]))  # another preset path: another request
    assert repeats.following == 2
    assert repeats.answer(A) is None  # pending: nothing to share yet
    assert repeats.settle(A, 1, result(1)) == [second, third]
    assert repeats.following == 0
    assert not repeats.follow(A, Bundle(A[0]))  # answered: no longer pending
    assert repeats.answer(A) == result(1)


def test_a_leader_that_fails_without_a_result_keeps_no_answer():
    repeats = Repeats(window=10)
    repeats.lead(A, 1)
    follower = Bundle(A[0])
    repeats.follow(A, follower)
    assert repeats.settle(A, 1, None) == [follower]
    assert repeats.answer(A) is None


def test_answers_are_kept_for_the_last_window_requests_asked():
    repeats = Repeats(window=2)
    c: Request = ("http://h/c", None)
    for seq, request in enumerate([A, B]):
        repeats.lead(request, seq)
        repeats.settle(request, seq, result(seq))
    assert repeats.answer(A) is not None  # asked again: now the most recent
    repeats.lead(c, 2)
    repeats.settle(c, 2, result(2))
    assert repeats.answer(B) is None  # the least recently asked went
    assert repeats.answer(A) == result(0)
    assert repeats.answer(c) == result(2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=60))
def test_every_follower_is_settled_exactly_once(steps: list[tuple[str, bool]]):
    """Bundles come for three URLs; a step may also answer the oldest pending request. Every
    bundle that followed comes back once, from its own request's leader."""
    repeats = Repeats(window=1)
    pending: dict[Request, int] = {}
    following: dict[Request, list[Bundle]] = {}
    returned: list[Bundle] = []
    for seq, (name, answer_one) in enumerate(steps):
        request: Request = (f"http://h/{name}", None)
        bundle = Bundle(request[0])
        if repeats.follow(request, bundle):
            following[request].append(bundle)
        else:
            repeats.lead(request, seq)
            pending[request] = seq
            following[request] = []
        if answer_one and pending:
            done, leader = next(iter(pending.items()))
            del pending[done]
            back = repeats.settle(done, leader, result(leader))
            assert back == following.pop(done)
            returned.extend(back)
    assert repeats.following == sum(len(v) for v in following.values())
    assert len({id(b) for b in returned}) == len(returned)
