"""The predict path's fallback policy: every reason reaches the server and is counted; breakers; hedging; defaults.

Real onnxruntime and a real gRPC server on loopback, with small hand-built ONNX models.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from onnxtools import linear_model
from servertools import registry_server

from edgerec.device import EdgeClient
from edgerec.device.policy import (
    FOLD_EVERY,
    BreakerState,
    CircuitBreaker,
    FallbackPolicy,
    FallbackReason,
    PredictCounters,
    Source,
)
from edgerec.errors import NoModelAvailableError
from edgerec.registry import Registry

SAFE = {"x": np.full((2, 4), 1.0, dtype=np.float32)}
NAN = {"x": np.full((2, 4), 10.0, dtype=np.float32)}  # sqrt(5 - 10) in the "fragile" model
ODD = {"x": np.full((3, 4), 1.0, dtype=np.float32)}  # the "fragile" model only runs even batches
# For tests about what happens rather than how fast: deadlines a loaded test machine always meets
# (a cold server loads the model on the first Predict). The defaults' timing is the benchmark's job.
RELAXED = FallbackPolicy(deadline_s=2.0, local_deadline_s=1.0, hedge_after_s=0.5)


def state(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state now (a call, so the type checker does not narrow it between steps)."""
    return breaker.state


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_fails_fast_half_opens_and_closes() -> None:
    clock = Clock()
    breaker = CircuitBreaker("local", threshold=2, cooldown_s=5.0, clock=clock)
    breaker.record_failure()
    assert breaker.allow() and state(breaker) is BreakerState.CLOSED
    breaker.record_failure()
    assert state(breaker) is BreakerState.OPEN and not breaker.allow()
    clock.now = 5.0
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow() and not breaker.allow(), "half-open lets exactly one probe through"
    breaker.record_failure()  # the probe failed: open for another cooldown
    assert state(breaker) is BreakerState.OPEN and breaker.times_opened == 2
    clock.now = 10.0
    assert breaker.allow()
    breaker.record_success()
    assert state(breaker) is BreakerState.CLOSED and breaker.allow()


def _model(path: Path, *, fragile: bool, scale: float = 1.0) -> Path:
    """score = sigmoid(f(5 - x) @ (scale * w)); fragile: f is Sqrt (NaN above 5) and odd batches fail in a Reshape."""
    return linear_model(path, [scale * w for w in (0.1, 0.2, 0.3, 0.4)], sqrt=fragile, odd_batches_fail=fragile)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("onnx")
    from edgerec.server.publish import PublishOptions, publish

    folder = tmp_path_factory.mktemp("policy")
    registry = Registry(folder / "registry")
    publish(_model(folder / "safe.onnx", fragile=False), "safe", registry, PublishOptions(no_gate=True))
    publish(_model(folder / "fragile.onnx", fragile=True), "fragile", registry, PublishOptions(no_gate=True))
    publish(_model(folder / "versioned1.onnx", fragile=False), "versioned", registry, PublishOptions(no_gate=True))
    publish(
        _model(folder / "versioned2.onnx", fragile=False, scale=-1.0),
        "versioned",
        registry,
        PublishOptions(no_gate=True),
    )
    with registry_server(registry) as address:
        yield address


def _client(
    server: str, model: str, folder: Path, policy: FallbackPolicy | None = None, sync: bool = True
) -> EdgeClient:
    client = EdgeClient(server=server, model=model, data_dir=folder, policy=policy or RELAXED, insecure=True)
    if sync:
        client.sync()
    return client


def test_counters_lose_no_answer_across_threads() -> None:
    counters = PredictCounters(latency_window=100)
    per_thread = 3 * FOLD_EVERY + 7  # several folds by writers, and answers still pending at the end

    def answer(source: Source) -> None:
        for i in range(per_thread):
            counters.count(source, FallbackReason.HEDGED if i % 2 else None, i * 1e-6)

    threads = [threading.Thread(target=answer, args=(source,)) for source in (Source.LOCAL, Source.SERVER) * 3]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counters.by_source == {"local": 3 * per_thread, "server": 3 * per_thread}
    assert counters.by_reason == {"hedged": 6 * (per_thread // 2)}
    assert counters.latency_count == 100 and 0 <= counters.latency_percentiles()[0.5] < per_thread * 1e-6


def test_no_local_model_and_load_failure_go_to_the_server(server: str, tmp_path: Path) -> None:
    with _client(server, "safe", tmp_path, sync=False) as client:
        answer = client.predict(SAFE)
        assert (answer.source, answer.fallback) == ("server", "no_local_model") and answer.version == 1
        client.sync()
        assert client.predict(SAFE).source == "local"
        current = client.store.current()
        assert current is not None
        current.entrypoint.write_bytes(b"not a model")
        client.reload()
        damaged = client.predict(NAN)
        assert (damaged.source, damaged.fallback) == ("server", "load_failed")
        assert client.counters.by_reason == {"no_local_model": 1, "load_failed": 1}
        assert client.counters.by_source == {"server": 2, "local": 1}


def test_non_finite_and_runtime_errors_go_to_the_server_and_open_the_local_breaker(server: str, tmp_path: Path) -> None:
    policy = dataclasses.replace(RELAXED, local_failure_threshold=2, local_cooldown_s=0.2, default_score=0.5)
    with _client(server, "fragile", tmp_path, policy) as client:
        nan = client.predict(NAN)
        assert (nan.source, nan.fallback) == ("server", "non_finite")  # the server runs the same model
        assert not np.all(np.isfinite(nan.scores)) and len(client.cache) == 0, "NaN is never cached"
        odd = client.predict(ODD)  # fails locally and on the server: the default score answers
        assert (odd.source, odd.fallback, odd.scores.tolist()) == ("default", "local_error", [0.5, 0.5, 0.5])
        assert state(client.local_breaker) is BreakerState.OPEN
        skipped = client.predict(SAFE)
        assert (skipped.source, skipped.fallback) == ("server", "local_breaker_open")
        time.sleep(0.25)  # half-open: this request goes to the server, the golden cases run on the pool
        during = client.predict({"x": SAFE["x"] + 0.5})
        assert (during.source, during.fallback) == ("server", "local_breaker_open")
        _wait_for(lambda: state(client.local_breaker) is BreakerState.CLOSED)
        assert client.predict({"x": SAFE["x"] + 0.5}).source == "local"
        assert client.counters.by_reason == {"non_finite": 1, "local_error": 1, "local_breaker_open": 2}
        assert client.counters.server_failures == 1


def test_without_a_default_score_both_failing_is_a_typed_error(server: str, tmp_path: Path) -> None:
    with _client(server, "fragile", tmp_path) as client, pytest.raises(NoModelAvailableError, match="local_error"):
        client.predict(ODD)


def _wait_for(condition: Callable[[], bool], timeout_s: float = 60.0) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < give_up, "condition not reached in time"
        time.sleep(0.01)


def _occupy(client: EdgeClient) -> threading.Event:
    """Keep the client's single local worker busy (a device doing something else) until the event is set."""
    release = threading.Event()
    client.predictor.local_pool.submit(release.wait, 5.0)
    return release


def test_local_deadline_goes_to_the_server(server: str, tmp_path: Path) -> None:
    policy = FallbackPolicy(
        deadline_s=2.0, local_deadline_s=0.005, hedge_after_s=None, local_workers=1, inline_fraction=0
    )
    with _client(server, "safe", tmp_path, policy) as client:
        release = _occupy(client)
        try:
            answer = client.predict(SAFE)
        finally:
            release.set()
        assert (answer.source, answer.fallback) == ("server", "local_deadline")
        assert client.counters.by_reason == {"local_deadline": 1}
        assert client.counters.cancelled == 1, "the late local run is dropped from the queue"


def test_hedging_returns_the_first_good_answer(server: str, tmp_path: Path) -> None:
    policy = FallbackPolicy(
        deadline_s=1.0, local_deadline_s=1.0, hedge_after_s=0.002, local_workers=1, inline_fraction=0
    )
    with _client(server, "safe", tmp_path, policy) as client:
        release = _occupy(client)
        try:
            hedged = client.predict(SAFE)
        finally:
            release.set()
        assert (hedged.source, hedged.fallback) == ("server", "hedged")
        assert client.counters.cancelled == 1, "the losing local run is cancelled"
        quick = client.predict({"x": SAFE["x"] + 1})  # local answers well before the hedge: no server call
        assert quick.source == "local" and quick.fallback is None
        np.testing.assert_allclose(client.predict(SAFE).scores, hedged.scores, atol=1e-6)
        assert client.counters.cancelled == 1 and client.counters.server_failures == 0


def test_a_failed_hedge_does_not_win_the_local_answer_does(server: str, tmp_path: Path) -> None:
    _client(server, "safe", tmp_path).close()  # install version 1
    with socket.socket() as probe:  # the hedge goes to a port nobody listens on: it fails at once
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    policy = FallbackPolicy(
        deadline_s=5.0, local_deadline_s=5.0, hedge_after_s=0.001, local_workers=1, inline_fraction=0
    )
    with EdgeClient(server=dead, model="safe", data_dir=tmp_path, policy=policy) as client:
        release = _occupy(client)
        threading.Timer(0.1, release.set).start()  # the device frees up after the hedge has failed
        answer = client.predict(SAFE)
        assert (answer.source, answer.fallback) == ("local", None)
        assert client.counters.server_failures == 1 and client.counters.cancelled == 0


def test_a_fast_model_runs_inline_and_a_slow_one_goes_through_the_pool(server: str, tmp_path: Path) -> None:
    relaxed = FallbackPolicy(deadline_s=1.0, local_deadline_s=1.0, hedge_after_s=0.5)  # inline below 125 ms
    with _client(server, "safe", tmp_path, relaxed) as client:
        for i in range(5):
            assert client.predict({"x": SAFE["x"] + i}).source == "local"
        assert client.counters.pooled == 0, "a fast model never leaves the caller's thread"
    # An inline limit of 0.5 ns: the first run (nothing measured yet) is inline, then the model counts as slow.
    strict = FallbackPolicy(deadline_s=1.0, local_deadline_s=1.0, hedge_after_s=0.5, inline_fraction=1e-9)
    with _client(server, "safe", tmp_path, strict) as client:
        assert client.predict(SAFE).source == "local" and client.counters.pooled == 0
        again = client.predict({"x": SAFE["x"] + 1})
        assert (again.source, again.fallback) == ("local", None) and client.counters.pooled == 1


def test_a_server_that_is_down_fails_fast_within_the_deadline(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    policy = FallbackPolicy(server_failure_threshold=2, server_cooldown_s=60)
    with EdgeClient(server=dead, model="safe", data_dir=tmp_path, policy=policy) as client:
        for _ in range(2):
            with pytest.raises(NoModelAvailableError, match="server failed"):
                client.predict(SAFE)
        started = time.perf_counter()
        with pytest.raises(NoModelAvailableError, match="circuit breaker is open"):
            client.predict(SAFE)
        assert time.perf_counter() - started < policy.deadline_s
        assert client.counters.server_failures == 2
    with EdgeClient(server=dead, model="safe", data_dir=tmp_path, policy=FallbackPolicy(default_score=0.0)) as client:
        started = time.perf_counter()
        answer = client.predict(SAFE)
        assert answer.source == "default" and time.perf_counter() - started < 0.25


# --- the server's side: concurrent fallback requests share one runtime call ---------------------------


def test_a_local_error_goes_to_a_server_that_answers(server: str, tmp_path: Path) -> None:
    """The device's "fragile" fails on odd batches; a second server publishes a sound model under that name."""
    from edgerec.server.app import ServerConfig, start_server
    from edgerec.server.publish import PublishOptions, publish

    _client(server, "fragile", tmp_path / "device").close()
    registry = Registry(tmp_path / "sound")
    publish(_model(tmp_path / "sound.onnx", fragile=False), "fragile", registry, PublishOptions(no_gate=True))
    sound = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0"))
    try:
        with _client(f"127.0.0.1:{sound.port}", "fragile", tmp_path / "device", sync=False) as client:
            answer = client.predict(ODD)
            assert (answer.source, answer.fallback, answer.version) == ("server", "local_error", 1)
            assert answer.scores.shape == (3,) and np.all(np.isfinite(answer.scores))
            assert client.counters.by_reason == {"local_error": 1} and client.counters.by_source == {"server": 1}
    finally:
        sound.stop(grace=0)


def test_the_server_breaker_opens_fails_fast_half_opens_and_closes_when_the_server_returns(
    server: str, tmp_path: Path
) -> None:
    from edgerec.server.app import ServerConfig, start_server

    registry_root = _registry_root(tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = dataclasses.replace(RELAXED, server_failure_threshold=2, server_cooldown_s=0.2)
    with EdgeClient(server=f"127.0.0.1:{port}", model="safe", data_dir=tmp_path / "device", policy=policy) as client:
        for _ in range(2):
            with pytest.raises(NoModelAvailableError, match="server failed"):
                client.predict(SAFE)
        assert state(client.server_breaker) is BreakerState.OPEN
        with pytest.raises(NoModelAvailableError, match="circuit breaker is open"):
            client.predict(SAFE)  # fails fast: no call goes out
        assert client.counters.server_failures == 2
        revived = start_server(ServerConfig(registry=registry_root, listen=f"127.0.0.1:{port}"))
        try:
            answer = None
            waited = time.monotonic()
            while answer is None and time.monotonic() - waited < 30:  # gRPC reconnects after its own backoff
                time.sleep(policy.server_cooldown_s)
                assert state(client.server_breaker) is BreakerState.HALF_OPEN
                try:
                    answer = client.predict(SAFE)  # the one probe half-open lets through
                except NoModelAvailableError:
                    assert state(client.server_breaker) is BreakerState.OPEN, "a failed probe opens it again"
            assert answer is not None and answer.source == "server"
            assert state(client.server_breaker) is BreakerState.CLOSED
            assert client.predict({"x": SAFE["x"] + 1}).source == "server"
            assert client.server_breaker.times_opened >= 1
        finally:
            revived.stop(grace=0)


def _registry_root(tmp_path: Path) -> Path:
    """A registry with "safe" version 1, for a server started inside a test."""
    from edgerec.server.publish import PublishOptions, publish

    registry = Registry(tmp_path / "revived-registry")
    publish(_model(tmp_path / "revived.onnx", fragile=False), "safe", registry, PublishOptions(no_gate=True))
    return registry.root


def test_the_cache_never_answers_with_a_previous_version(server: str, tmp_path: Path) -> None:
    """Version 2 of "versioned" flips the weights' sign, so every answer tells which version made it."""
    from edgerec.device.active_model import STATE_CHECK_INTERVAL_S

    with _client(server, "versioned", tmp_path, sync=False) as client:
        client.sync(target_version=1)
        first = client.predict(SAFE)
        assert (first.source, first.version) == ("local", 1) and client.predict(SAFE).source == "cache"
        client.sync()  # version 2, in this process
        second = client.predict(SAFE)
        assert (second.source, second.version) == ("local", 2)
        assert not np.allclose(second.scores, first.scores)
        assert client.predict(SAFE).source == "cache" and client.predict(SAFE).version == 2

        # Another process rolls the device back to version 1: answers switch within the state-check interval,
        # and the cache (which held only version 2's answers) never serves version 2 for version 1.
        other = EdgeClient(server=server, model="versioned", data_dir=tmp_path, policy=RELAXED)
        other.store.rollback()
        other.close()
        time.sleep(STATE_CHECK_INTERVAL_S)
        back = client.predict(SAFE)
        assert (back.source, back.version) == ("local", 1)
        np.testing.assert_allclose(back.scores, first.scores, atol=1e-6)

    with _client(server, "versioned", tmp_path / "remote", sync=False) as remote:  # server answers carry a version
        answer = remote.predict(SAFE)
        assert (answer.source, answer.version) == ("server", 2)
        remote.sync(target_version=1)
        again = remote.predict(SAFE)
        assert (again.source, again.version) == ("local", 1), "version 2's server answer is not served for version 1"


def test_row_caching_runs_the_model_on_new_rows_only(server: str, tmp_path: Path) -> None:
    rows = np.arange(24, dtype=np.float32).reshape(6, 4) / 10
    with (
        EdgeClient(
            server=server, model="safe", data_dir=tmp_path / "rows", policy=RELAXED, cache_rows=True, insecure=True
        ) as client,
        EdgeClient(
            server=server, model="safe", data_dir=tmp_path / "plain", policy=RELAXED, cache_entries=0, insecure=True
        ) as plain,
    ):
        client.sync()
        plain.sync()
        first = client.predict({"x": rows[:4]})
        assert (first.source, first.cached_rows) == ("local", 0)
        mixed = client.predict({"x": rows[[5, 1, 4, 0]]})  # rows 1 and 0 were answered before
        assert (mixed.source, mixed.cached_rows) == ("local", 2)
        np.testing.assert_allclose(mixed.scores, plain.predict({"x": rows[[5, 1, 4, 0]]}).scores, rtol=1e-6)
        again = client.predict({"x": rows[[4, 3]]})
        assert (again.source, again.cached_rows) == ("cache", 2)
        alone = client.predict({"x": rows[2:3]})  # a row cached from a batch answers that row sent alone
        assert alone.source == "cache" and alone.scores.tolist() == first.scores[2:3].tolist()


def test_row_caching_never_mixes_versions(server: str, tmp_path: Path) -> None:
    x = np.full((3, 4), 1.0, dtype=np.float32)
    with EdgeClient(
        server=server, model="versioned", data_dir=tmp_path, policy=RELAXED, cache_rows=True, insecure=True
    ) as client:
        client.sync(target_version=1)
        old = client.predict({"x": x[:2]})
        client.sync()
        new = client.predict({"x": x})
        assert (new.source, new.version, new.cached_rows) == ("local", 2, 0)
        assert not np.allclose(new.scores[:2], old.scores), "version 2 scores differently"
