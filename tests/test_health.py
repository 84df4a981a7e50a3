"""Health checks and rollback, on small hand-built ONNX models (any model, not just the reference one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnxtools import linear_model
from servertools import registry_server

from edgerec.device import EdgeClient
from edgerec.device.policy import FallbackPolicy
from edgerec.errors import HealthCheckError
from edgerec.manifest import SignedManifest
from edgerec.registry import Registry

pytestmark = pytest.mark.torch  # the publishing side needs the server extra (onnx)


@pytest.fixture
def linear_server(tmp_path: Path) -> Iterator[tuple[Registry, str, Path]]:
    from edgerec.server.publish import PublishOptions, publish

    registry = Registry(tmp_path / "registry")
    publish(
        linear_model(tmp_path / "v1.onnx", [0.1, 0.2, 0.3, 0.4], sqrt=False),
        "linear",
        registry,
        PublishOptions(no_gate=True),
    )
    with registry_server(registry) as address:
        yield registry, address, tmp_path


# Deadlines no loaded machine comes near: the test is about what answers, not how fast.
PATIENT = FallbackPolicy(deadline_s=30.0, local_deadline_s=15.0, hedge_after_s=None)


def test_repeated_local_failures_roll_back_to_the_previous_version(linear_server: tuple[Registry, str, Path]) -> None:
    from edgerec.server.publish import PublishOptions, publish

    registry, address, folder = linear_server
    safe = {"x": np.full((2, 4), 10.0, dtype=np.float32)}
    with EdgeClient(
        server=address,
        model="linear",
        data_dir=folder / "device",
        insecure=True,  # rolls back after 3 faults
        policy=PATIENT,
    ) as client:
        client.sync()
        assert client.predict(safe).source == "local"
        # v2 passes its golden cases (standard normal inputs stay below 5) but gives NaN on real traffic.
        publish(
            linear_model(folder / "v2.onnx", [0.4, 0.3, 0.2, 0.1], sqrt=True),
            "linear",
            registry,
            PublishOptions(no_gate=True),
        )
        assert client.sync().version == 2
        for i in range(3):
            answer = client.predict({"x": safe["x"] + i})
            assert answer.source == "server" and answer.fallback_reason and "non-finite" in answer.fallback_reason
        assert client.rollbacks == [(2, 1)] and client.active_version == 1
        recovered = client.predict(safe)
        assert recovered.source == "local" and recovered.version == 1 and np.all(np.isfinite(recovered.scores))


def test_a_version_failing_its_golden_cases_is_never_activated(linear_server: tuple[Registry, str, Path]) -> None:
    from edgerec.server.publish import PublishOptions, publish

    registry, address, folder = linear_server
    with EdgeClient(server=address, model="linear", data_dir=folder / "device", insecure=True) as client:
        client.sync()
        before = {p: p.read_bytes() for p in client.store.versions_dir.rglob("*") if p.is_file()}
        publish(
            linear_model(folder / "v2.onnx", [1.0, 1.0, 1.0, 1.0], sqrt=False),
            "linear",
            registry,
            PublishOptions(no_gate=True),
        )
        # Corrupt the expected outputs (as a miscompiled artifact would disagree with them).
        manifest_file = registry.version_dir("linear", 2) / "manifest.pb"
        signed = SignedManifest.FromString(manifest_file.read_bytes())
        _, manifest = registry.load_manifest("linear", 2)
        for case in manifest.golden:
            expected = np.frombuffer(case.outputs["score"].data, dtype=np.float32) + np.float32(0.25)
            case.outputs["score"].data = expected.astype(np.float32).tobytes()
        signed.manifest = manifest.SerializeToString(deterministic=True)
        manifest_file.write_bytes(signed.SerializeToString())

        with pytest.raises(HealthCheckError, match="golden output 'score'"):
            client.sync()
        assert client.active_version == 1
        after = {p: p.read_bytes() for p in client.store.versions_dir.rglob("*") if p.is_file()}
        assert after == before and not any(client.store.staging_dir.iterdir())
        assert client.predict({"x": np.zeros((1, 4), np.float32)}).source == "local"
