"""The expiring memo the planner and the payload links share."""

from __future__ import annotations

import pytest

from edgerec.server.memo import ExpiringMemo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_value_is_made_once_while_fresh_and_again_after() -> None:
    clock, made = Clock(), []

    def make() -> int:
        made.append(1)
        return len(made)

    memo: ExpiringMemo[str, int] = ExpiringMemo(2.0, 10, clock)
    assert [memo.get("a", make) for _ in range(3)] == [1, 1, 1]
    clock.now += 1.9
    assert memo.get("a", make) == 1
    clock.now += 0.1
    assert memo.get("a", make) == 2 and len(made) == 2


def test_the_least_recently_used_go_beyond_the_bound() -> None:
    memo: ExpiringMemo[str, str] = ExpiringMemo(60.0, 2, Clock())
    memo.get("a", lambda: "a1")
    memo.get("b", lambda: "b1")
    memo.get("a", lambda: "a2")  # a is used again: b is now the oldest
    memo.get("c", lambda: "c1")
    assert memo.get("a", lambda: "a3") == "a1"
    assert memo.get("b", lambda: "b2") == "b2"


def test_a_failed_make_keeps_nothing() -> None:
    memo: ExpiringMemo[str, int] = ExpiringMemo(60.0, 2, Clock())

    def fail() -> int:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        memo.get("a", fail)
    assert memo.get("a", lambda: 7) == 7


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError):
        ExpiringMemo(-1.0, 1)
    with pytest.raises(ValueError):
        ExpiringMemo(1.0, 0)
