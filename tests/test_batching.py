"""MicroBatcher: who waits, for how long, and that every caller gets its own rows or its own error."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from edgerec.server.batching import MicroBatcher, RunFn

KEY = ("m", 1, "fp32")
# Far longer than any test may take: a test that waits this long has failed.
LONG_WAIT_S = 5.0


def double(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"y": inputs["x"] * 2}


def test_a_request_alone_runs_at_once() -> None:
    batcher = MicroBatcher(max_wait_s=LONG_WAIT_S)
    started = time.monotonic()
    out = batcher.run(KEY, {"x": np.ones((2, 3), np.float32)}, double)
    assert time.monotonic() - started < 1.0
    np.testing.assert_array_equal(out["y"], np.full((2, 3), 2, np.float32))
    assert batcher._inflight == {} and batcher._open == {}


def test_a_full_batch_goes_without_waiting_and_each_caller_gets_its_rows() -> None:
    batcher = MicroBatcher(max_wait_s=LONG_WAIT_S, max_batch=8)
    calls: list[int] = []
    gate = threading.Event()

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        gate.wait(LONG_WAIT_S)  # the first call holds until the eight behind it have run as one batch
        return double(inputs)

    # One request runs (held at the gate); eight more fill one batch of max_batch rows.
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = batcher.run(KEY, {"x": np.full((1, 3), i, np.float32)}, run)["y"]

    first = threading.Thread(target=call, args=(-1,))
    first.start()
    while not calls:
        time.sleep(0.001)
    started = time.monotonic()
    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    while len(calls) < 2 and time.monotonic() - started < LONG_WAIT_S:  # the full batch runs without waiting
        time.sleep(0.001)
    gate.set()
    for t in [first, *threads]:
        t.join(LONG_WAIT_S)
    assert time.monotonic() - started < 2.0, "a full batch must not wait max_wait_s"
    assert calls == [1, 8]
    for i in range(-1, 8):
        np.testing.assert_array_equal(results[i], np.full((1, 3), 2 * i, np.float32))
    assert batcher.batches == 1 and batcher.batched_requests == 8
    assert batcher._inflight == {} and batcher._open == {}


def test_a_waiting_batch_goes_when_the_other_requests_in_flight_finish() -> None:
    """B waits for more requests while A runs; when A leaves, B's batch holds everyone in flight: it goes."""
    batcher = MicroBatcher(max_wait_s=LONG_WAIT_S)
    gate = threading.Event()
    calls: list[int] = []

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        if len(calls) == 1:
            gate.wait(LONG_WAIT_S)
        return double(inputs)

    a = threading.Thread(target=batcher.run, args=(KEY, {"x": np.ones((1, 3), np.float32)}, run))
    a.start()
    while not calls:
        time.sleep(0.001)
    done: list[float] = []

    def b() -> None:
        batcher.run(KEY, {"x": np.ones((2, 3), np.float32)}, run)
        done.append(time.monotonic())

    b_thread = threading.Thread(target=b)
    b_thread.start()
    while not batcher._open:
        time.sleep(0.001)
    released = time.monotonic()
    gate.set()
    a.join(LONG_WAIT_S)
    b_thread.join(LONG_WAIT_S)
    assert done and done[0] - released < 2.0, "B waited for a request that had already left"
    assert calls == [1, 2]
    assert batcher._inflight == {} and batcher._open == {}


def run_together(batcher: MicroBatcher, requests: Sequence[Mapping[str, np.ndarray]], run: RunFn) -> list[object]:
    """Each request from a thread of its own, all released at once: each caller's outputs, or what it raised."""
    results: list[object] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def call(i: int) -> None:
        start.wait()
        try:
            results[i] = batcher.run(KEY, requests[i], run)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(LONG_WAIT_S)
    return results


def test_a_failing_batch_reruns_each_request_alone_and_only_the_bad_one_fails() -> None:
    batcher = MicroBatcher(max_wait_s=0.5)

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if np.any(inputs["x"] < 0):
            raise ValueError("negative input")
        return double(inputs)

    values = [1.0, -1.0, 3.0, 4.0]
    results = run_together(batcher, [{"x": np.full((1, 2), v, np.float32)} for v in values], run)
    assert isinstance(results[1], ValueError)
    for i in (0, 2, 3):
        result = results[i]
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], np.full((1, 2), 2 * values[i], np.float32))
    assert batcher._inflight == {} and batcher._open == {}


def test_concurrent_requests_to_a_real_model_share_runs_and_get_their_own_rows(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from test_policy import _model

    from edgerec.runtimes import OnnxRunner

    runner = OnnxRunner(_model(tmp_path / "safe.onnx", fragile=False))
    calls: list[int] = []
    batcher = MicroBatcher(max_wait_s=LONG_WAIT_S, max_batch=256)
    rng = np.random.default_rng(0)
    requests = [{"x": rng.standard_normal((1 + i % 3, 4)).astype(np.float32)} for i in range(16)]
    requests.append({"x": np.ones((2, 5), np.float32)})  # other non-batch shape: runs in its own group (and fails)

    held: list[bool] = []

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        if inputs["x"].shape[1] == 4 and not held:
            held.append(True)
            # The first runtime call of the model holds until the other requests are in the batcher (however
            # slowly a busy machine starts their threads): they wait in an open batch, which goes as one
            # when this call ends. Whatever the machine, batching must then happen.
            deadline = time.monotonic() + LONG_WAIT_S
            while batcher.in_flight() < 16 and time.monotonic() < deadline:
                time.sleep(0.001)
        return runner.run(inputs)

    results = run_together(batcher, requests, run)
    for inputs, got in zip(requests[:-1], results, strict=False):
        assert isinstance(got, dict)
        np.testing.assert_allclose(got["score"], runner.run(inputs)["score"], atol=1e-6)
    assert isinstance(results[-1], Exception), "a malformed request fails alone"
    assert batcher.batches >= 1 and len(calls) < len(requests), f"no batching happened: {calls}"
    assert batcher.in_flight() == 0


@pytest.mark.parametrize("inputs", [{"x": np.float32(1.0)}, {"x": np.ones((300, 2), np.float32)}])
def test_unbatchable_requests_run_alone(inputs: dict[str, np.ndarray]) -> None:
    observed: list[tuple[int, int]] = []
    batcher = MicroBatcher(max_wait_s=LONG_WAIT_S, observer=lambda n, rows: observed.append((n, rows)))
    np.testing.assert_array_equal(batcher.run(KEY, inputs, double)["y"], inputs["x"] * 2)
    assert observed == [(1, 300 if np.ndim(inputs["x"]) else 1)]
