"""Which failures roll a device back and what happens after (the held-back version, clearing it), and
a device whose state files are damaged or lost.

Real onnxruntime, a real server on loopback that signs its manifests, and devices that trust its key.
Model "emb" scores sigmoid(f(5 - x) @ w + table[ids]) with a 10-row table: an id outside it is the
request's mistake. Version 1 is sound; version 2 has f = Sqrt, so any x above 5 gives NaN: a model fault.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnxtools import embedding_model
from servertools import registry_server
from test_policy import RELAXED, state

from edgerec.device import EdgeClient
from edgerec.device.policy import BreakerState, FallbackPolicy
from edgerec.errors import InvalidInputError, RollbackError
from edgerec.registry import Registry
from edgerec.signing import generate_keypair

pytest.importorskip("onnx")

MODEL = "emb"
ROWS = 10
WEIGHTS = (0.1, 0.2, 0.3, 0.4)
GOOD: dict[str, np.ndarray] = {"x": np.full((2, 4), 1.0, dtype=np.float32), "ids": np.array([0, 9], dtype=np.int64)}
OUT_OF_RANGE: dict[str, np.ndarray] = {"x": GOOD["x"], "ids": np.array([3, ROWS], dtype=np.int64)}
FAULT: dict[str, np.ndarray] = {
    "x": np.full((2, 4), 10.0, dtype=np.float32),
    "ids": GOOD["ids"],
}  # NaN in version 2 only


@dataclasses.dataclass(frozen=True)
class Served:
    registry: Registry
    address: str
    public_key: Path
    folder: Path

    def client(self, data_dir: Path, policy: FallbackPolicy = RELAXED) -> EdgeClient:
        return EdgeClient(self.address, MODEL, data_dir, policy=policy, trusted_keys=[self.public_key], cache_entries=0)

    def publish(self, name: str, *, sqrt: bool, scale: float = 1.0) -> None:
        from edgerec.server.publish import PublishOptions, publish

        model = embedding_model(self.folder / f"{name}.onnx", [scale * w for w in WEIGHTS], ROWS, sqrt=sqrt)
        publish(model, MODEL, self.registry, PublishOptions(no_gate=True))


@pytest.fixture
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A fresh registry with versions 1 (sound) and 2 (faulty for x > 5), served with a signing key."""
    folder = tmp_path_factory.mktemp("rollback-hold")
    generate_keypair(folder / "server.pem", folder / "server.pub")
    registry = Registry(folder / "registry")
    with registry_server(registry, signing_key=folder / "server.pem") as address:
        served = Served(registry, address, folder / "server.pub", folder)
        served.publish("v1", sqrt=False)
        served.publish("v2", sqrt=True)
        yield served


def _on_version_2(client: EdgeClient) -> EdgeClient:
    client.sync(target_version=1)
    client.sync()
    assert client.active_version == 2 and client.predict(GOOD).source == "local"
    return client


def _breakers_closed(client: EdgeClient) -> bool:
    return state(client.local_breaker) is BreakerState.CLOSED and state(client.server_breaker) is BreakerState.CLOSED


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "pool"])
def test_out_of_range_ids_are_the_callers_mistake_and_count_against_nothing(
    served: Served, tmp_path: Path, inline: bool
) -> None:
    policy = RELAXED if inline else dataclasses.replace(RELAXED, inline_fraction=0.0)
    with _on_version_2(served.client(tmp_path / "device", policy)) as client:
        for _ in range(3 * RELAXED.local_failure_threshold):
            with pytest.raises(InvalidInputError, match="outside the model's table"):
                client.predict(OUT_OF_RANGE)
        assert client.rollbacks == [] and client.active_version == 2 and _breakers_closed(client)
        assert client.counters.rejected == 9 and client.counters.server_failures == 0
        assert client.counters.by_source == {"local": 1}, "nothing went to the server"
        assert client.predict(GOOD).source == "local"
        report = client.status_report()
        assert (report.rejected_requests, report.held_back_version, len(report.rollbacks)) == (9, 0, 0)

    # Without a local model the server answers: it refuses the ids as INVALID_ARGUMENT, its breaker stays closed.
    with served.client(tmp_path / "fresh") as fresh:
        for _ in range(3 * RELAXED.server_failure_threshold):
            with pytest.raises(InvalidInputError):
                fresh.predict(OUT_OF_RANGE)
        assert _breakers_closed(fresh) and fresh.counters.server_failures == 0 and fresh.counters.rejected == 9
        assert fresh.predict(GOOD).source == "server"


def test_a_model_fault_rolls_back_and_sync_holds_the_version_back_until_cleared(served: Served, tmp_path: Path) -> None:
    data_dir = tmp_path / "device"
    with _on_version_2(served.client(data_dir)) as client:
        for _ in range(client.policy.local_failure_threshold):
            answer = client.predict(FAULT)
            assert (answer.source, answer.fallback) == ("server", "non_finite")
        assert client.rollbacks == [(2, 1)] and client.active_version == 1 and client.held_back_version == 2
        assert client.predict(FAULT).source == "local", "version 1 answers"

        held = client.sync()  # the server still offers version 2: no error, the device says why it keeps 1
        assert (held.updated, held.version, held.held_back_version) == (False, 1, 2)
        assert held.held_back_reason is not None and "rolled back from it" in held.held_back_reason
        report = client.status_report()
        assert report.held_back_version == 2 and report.active_version == 1
        assert (report.sync.held_back, report.sync.failed, report.sync.up_to_date) == (1, 0, 0)
        assert [(r.from_version, r.to_version) for r in report.rollbacks] == [(2, 1)]

    # A restarted device remembers the hold; the operator clears it from the command line.
    with served.client(data_dir) as restarted:
        assert restarted.sync().held_back_version == 2 and restarted.active_version == 1
    cleared = _edgerec("device", "clear-rollback", "--data-dir", data_dir, "--model", MODEL, "--json")
    assert json.loads(cleared) == {"model": MODEL, "released_version": 2, "active_version": 1}
    again = _edgerec("device", "clear-rollback", "--data-dir", data_dir, "--model", MODEL)
    assert "no version is held back" in again

    with served.client(data_dir) as client:
        reinstalled = client.sync()
        assert (reinstalled.updated, reinstalled.version, reinstalled.held_back_version) == (True, 2, None)
        assert client.held_back_version is None and client.status_report().held_back_version == 0
        with pytest.raises(RollbackError):
            client.sync(target_version=1)  # releasing version 2 let nothing older back in
        assert client.active_version == 2


def test_a_newer_version_is_installed_and_ends_the_hold(served: Served, tmp_path: Path) -> None:
    with _on_version_2(served.client(tmp_path / "device")) as client:
        for _ in range(client.policy.local_failure_threshold):
            client.predict(FAULT)
        assert client.active_version == 1 and client.held_back_version == 2
        served.publish("v3", sqrt=False, scale=-1.0)
        result = client.sync()
        assert (result.updated, result.version, result.held_back_version) == (True, 3, None)
        assert client.held_back_version is None and client.predict(FAULT).source == "local"


@pytest.mark.parametrize("lost", [["state.json"], ["floor.json"], ["state.json", "floor.json"]])
def test_a_lost_state_file_does_not_let_an_older_signed_version_back_in(
    served: Served, tmp_path: Path, lost: list[str]
) -> None:
    with _on_version_2(served.client(tmp_path)) as client:
        for name in lost:
            (client.store.root / name).unlink()
        with pytest.raises(RollbackError):
            client.sync(target_version=1)
        assert client.active_version == 2 and client.predict(GOOD).source == "local"


def test_a_truncated_state_is_rebuilt_and_sync_works(served: Served, tmp_path: Path) -> None:
    with _on_version_2(served.client(tmp_path)) as client:
        state_file = client.store.root / "state.json"
        state_file.write_bytes(state_file.read_bytes()[:9])
        client.reload()
        assert client.predict(GOOD).source == "local" and client.active_version == 2
        assert client.sync().version == 2
        served.publish("v3", sqrt=False, scale=-1.0)
        assert client.sync().version == 3 and client.store.previous() is not None
        with pytest.raises(RollbackError):
            client.sync(target_version=2)


def _edgerec(*args: str | Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "edgerec", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout
