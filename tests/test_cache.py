"""The device's prediction cache: LRU, TTL, byte bound, version invalidation, non-finite refusal, threads."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgerec.device.cache import CacheKey, PredictionCache, request_key, row_keys, signature_key


class Clock:
    """A settable clock for TTL tests."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _key(version: int, value: float) -> CacheKey:
    return request_key(version, {"x": np.full(4, value, dtype=np.float32)})


def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache = PredictionCache(8, ttl_s=10.0, clock=clock)
    cache.put(_key(1, 0), np.array([0.5], np.float32))
    clock.now = 9.9
    assert cache.get(_key(1, 0)) is not None
    clock.now = 10.0
    assert cache.get(_key(1, 0)) is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.expirations, stats.entries, stats.bytes) == (1, 1, 1, 0, 0)


def test_byte_bound_evicts_least_recently_used() -> None:
    cache = PredictionCache(100, max_bytes=3 * 400)  # three 100-float32 answers
    for i in range(3):
        cache.put(_key(1, i), np.full(100, i, np.float32))
    assert cache.get(_key(1, 0)) is not None  # 0 is now the most recently used
    cache.put(_key(1, 3), np.full(100, 3, np.float32))
    assert cache.get(_key(1, 1)) is None and cache.get(_key(1, 0)) is not None
    assert cache.stats().bytes <= 1200 and cache.stats().evictions == 1
    assert not cache.put(_key(1, 9), np.zeros(1000, np.float32)), "an answer larger than the bound is refused"


def test_non_finite_scores_are_never_cached() -> None:
    cache = PredictionCache(8)
    for bad in (np.nan, np.inf, -np.inf):
        assert not cache.put(_key(1, 0), np.array([0.1, bad], np.float32))
        assert cache.get(_key(1, 0)) is None
    assert cache.stats().refused_non_finite == 3


def test_a_version_change_drops_every_answer_of_the_previous_version() -> None:
    cache = PredictionCache(8)
    cache.observe_version(1)
    cache.put(_key(1, 0), np.array([0.5], np.float32))
    cache.observe_version(2)
    assert len(cache) == 0
    assert not cache.put(_key(1, 0), np.array([0.5], np.float32)), "a late answer of version 1 is refused"
    cache.observe_version(1)  # a rollback to 1 must not resurrect anything either
    assert cache.get(_key(1, 0)) is None


def test_concurrent_use_keeps_the_bounds() -> None:
    cache = PredictionCache(50, max_bytes=50 * 40)
    cache.observe_version(1)

    def worker(seed: int) -> None:
        for i in range(500):
            key = _key(1, (seed * 1000 + i) % 120)
            if cache.get(key) is None:
                cache.put(key, np.full(10, i, np.float32))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert stats.entries <= 50 and stats.bytes == stats.entries * 40
    assert stats.hits + stats.misses == 2000


_DTYPES: list[np.dtype[Any]] = [np.dtype(np.float32), np.dtype(np.int64), np.dtype(">f4")]
_SMALL_ARRAYS: st.SearchStrategy[np.ndarray] = hnp.arrays(
    st.sampled_from(_DTYPES), hnp.array_shapes(min_dims=1, max_dims=2, max_side=40)
)


def _same_request(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[n].dtype.str == b[n].dtype.str and a[n].shape == b[n].shape and a[n].tobytes() == b[n].tobytes() for n in a
    )


@given(
    st.dictionaries(st.sampled_from("xyz"), _SMALL_ARRAYS, min_size=1, max_size=3),
    st.dictionaries(st.sampled_from("xyz"), _SMALL_ARRAYS, min_size=1, max_size=3),
)
def test_request_keys_are_equal_exactly_for_equal_requests(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert (request_key(1, a) == request_key(1, b)) == _same_request(a, b)
    assert request_key(1, a) == request_key(1, {n: np.asfortranarray(v) for n, v in a.items()}), "strides matter not"
    assert request_key(1, a) != request_key(2, a)


@given(st.integers(1, 40), st.integers(1, 40), st.data())
def test_signature_keys_tell_batches_and_values_apart(rows_a: int, rows_b: int, data: st.DataObject) -> None:
    def request(rows: int) -> dict[str, np.ndarray]:
        return {
            "dense": data.draw(hnp.arrays(np.float32, (rows, 3), elements=st.floats(-2, 2, width=32))),
            "ids": data.draw(hnp.arrays(np.int64, (rows, 2), elements=st.integers(0, 5))),
        }

    a, b = request(rows_a), request(rows_b)
    same = rows_a == rows_b and _same_request(a, b)
    assert (signature_key(1, rows_a, a) == signature_key(1, rows_b, b)) == same
    assert signature_key(1, rows_a, a) != request_key(1, a), "the two kinds of key never collide"


@given(st.integers(1, 12), st.booleans(), st.data())
def test_a_rows_key_is_the_key_of_that_row_sent_alone(rows: int, wide: bool, data: st.DataObject) -> None:
    width = 200 if wide else 3  # wide rows are keyed by their digest
    checked = {
        "dense": data.draw(hnp.arrays(np.float32, (rows, width), elements=st.floats(-2, 2, width=32))),
        "context": data.draw(hnp.arrays(np.int64, (2,), elements=st.integers(0, 9))),  # no batch dimension
        "ids": data.draw(hnp.arrays(np.int64, (rows, 2), elements=st.integers(0, 5))),
    }
    keys = row_keys(7, checked, [True, False, True], rows)
    for i, key in enumerate(keys):
        alone = {name: a if name == "context" else a[i : i + 1] for name, a in checked.items()}
        assert key == signature_key(7, 1, alone)


def test_put_rows_keeps_finite_rows_and_refuses_the_others() -> None:
    cache = PredictionCache(8)
    keys = [_key(1, i) for i in range(3)]
    scores = np.array([[0.1, 0.2], [np.nan, 0.3], [0.4, 0.5]], dtype=np.float32)
    assert cache.put_rows(keys, scores.ravel()) == 2
    found = cache.get_many(keys)
    assert found[1] is None and cache.stats().refused_non_finite == 1
    assert np.array_equal(np.stack([f for f in found if f is not None]), scores[[0, 2]])
    assert cache.put_rows(keys[:2], np.zeros(3, np.float32)) == 0, "scores that do not split evenly are refused"
