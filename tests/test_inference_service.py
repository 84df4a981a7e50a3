"""Server Predict resolves (model, version, recipe) once, not per request, and still sees every publish at once.

A real registry (folder plus SQLite), real onnxruntime, the small hand-built models of test_policy.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, cast

import grpc
import numpy as np
import pytest
from test_policy import SAFE, _model

from edgerec import tensors
from edgerec.registry import Registry
from edgerec.v1 import inference_pb2, inference_pb2_grpc

if TYPE_CHECKING:
    from edgerec.server.app import RunningServer

pytest.importorskip("onnx")


class CountingRegistry(Registry):
    """A real registry that counts how often its index is asked for a model's versions."""

    lookups = 0

    def versions(self, model: str, *, include_partial: bool = True) -> list[int]:
        self.lookups += 1
        return super().versions(model, include_partial=include_partial)


def _request(version: int = 0) -> inference_pb2.PredictRequest:
    inputs = {name: tensors.to_proto(a) for name, a in SAFE.items()}
    return inference_pb2.PredictRequest(model="ctr", version=version, inputs=inputs)


def test_predict_reuses_its_resolution_until_the_registry_changes(tmp_path: Path) -> None:
    from edgerec.server.inference_service import InferenceService
    from edgerec.server.publish import PublishOptions, publish

    registry = CountingRegistry(tmp_path / "registry")
    publish(_model(tmp_path / "v1.onnx", fragile=False), "ctr", registry, PublishOptions(no_gate=True))
    service = InferenceService(registry)
    service.stamp_check_s = 0.0  # every request looks at the stamp: a publish is noticed by the next one
    context = cast(grpc.ServicerContext, None)  # only an error would use it
    first = service.Predict(_request(), context)
    assert first.version == 1
    lookups = registry.lookups
    for _ in range(50):
        assert service.Predict(_request(), context).version == 1
    assert registry.lookups == lookups, "an unchanged registry is not asked again within the TTL"

    publish(_model(tmp_path / "v2.onnx", fragile=False, scale=-1.0), "ctr", registry, PublishOptions(no_gate=True))
    noticed = service.Predict(_request(), context)
    assert noticed.version == 1, "the request that notices a publish does not wait for its load"
    assert service.wait_for_warm_ups(60)
    assert ("ctr", 2, "int8") in service.loaded_models(), "the new version warmed up in the background"
    latest = service.Predict(_request(), context)
    assert latest.version == 2, "once warm, the new version answers"
    assert not np.allclose(latest.scores, first.scores)
    assert service.Predict(_request(version=1), context).version == 1, "the version a device asks for"
    np.testing.assert_allclose(service.Predict(_request(version=1), context).scores, first.scores)

    service.resolve_ttl_s = 0.0  # past the TTL, the registry is asked again even when unchanged
    lookups = registry.lookups
    assert service.Predict(_request(), context).version == 2
    assert registry.lookups > lookups


def test_concurrent_predicts_do_not_each_ask_the_registry(tmp_path: Path) -> None:
    """Reads do not move the registry's change stamp: concurrent predicts share one resolution."""
    from edgerec.server.inference_service import InferenceService
    from edgerec.server.publish import PublishOptions, publish

    registry = CountingRegistry(tmp_path / "registry")
    publish(_model(tmp_path / "v1.onnx", fragile=False), "ctr", registry, PublishOptions(no_gate=True))
    service = InferenceService(registry)
    # No resolution expires during the test, however slowly a busy machine runs it: what is counted
    # is the sharing, not the TTL.
    service.resolve_ttl_s = 3600.0
    context = cast(grpc.ServicerContext, None)
    versions: list[int] = []

    def predict() -> None:
        for _ in range(100):
            versions.append(service.Predict(_request(), context).version)

    threads = [threading.Thread(target=predict) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert versions == [1] * 800
    # A few misses per thread (before the first resolution is stored, and again when the model's first
    # load replaces it), three lookups each: far fewer than the 2,400 of three lookups per request.
    assert registry.lookups <= 8 * 3 * 4, registry.lookups


def test_the_change_stamp_is_looked_at_again_once_the_check_interval_passed(tmp_path: Path) -> None:
    from edgerec.server.inference_service import InferenceService

    registry = Registry(tmp_path / "registry")
    service = InferenceService(registry)
    service.stamp_check_s = 60.0
    first = service._change_stamp(time.monotonic())
    registry.put_document("notes/a-write", b"moves the stamp", if_match=None)
    assert service._change_stamp(time.monotonic()) == first, "within the interval the last look stands"
    assert service._change_stamp(time.monotonic() + 61.0) == registry.change_stamp() != first


def test_a_failed_look_at_the_change_stamp_keeps_the_last_one(tmp_path: Path) -> None:
    from edgerec.errors import RegistryUnavailableError
    from edgerec.server.inference_service import InferenceService

    class FlakyRegistry(Registry):
        down = False

        def change_stamp(self) -> str:
            if self.down:
                raise RegistryUnavailableError("the registry is unreachable")
            return super().change_stamp()

    registry = FlakyRegistry(tmp_path / "registry")
    service = InferenceService(registry)
    service.stamp_check_s = 0.0
    first = service._change_stamp(time.monotonic())
    registry.down = True
    assert service._change_stamp(time.monotonic()) == first, "a failed look is no change and no error"
    registry.down = False
    registry.put_document("notes/a-write", b"moves the stamp", if_match=None)
    assert service._change_stamp(time.monotonic()) != first


def _serve_and_predict(server: RunningServer, request: inference_pb2.PredictRequest) -> inference_pb2.PredictResponse:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        response: inference_pb2.PredictResponse = stub.Predict(request, timeout=60)
    return response


def test_a_started_server_has_loaded_and_run_the_latest_version_of_every_model_before_any_request(
    tmp_path: Path,
) -> None:
    from edgerec.server.app import ServerConfig, start_server
    from edgerec.server.publish import PublishOptions, publish

    registry = Registry(tmp_path / "registry")
    publish(_model(tmp_path / "v1.onnx", fragile=False), "ctr", registry, PublishOptions(no_gate=True))
    publish(_model(tmp_path / "v2.onnx", fragile=False, scale=-1.0), "ctr", registry, PublishOptions(no_gate=True))
    publish(_model(tmp_path / "other.onnx", fragile=False), "other", registry, PublishOptions(no_gate=True))
    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0"))
    try:
        assert server.inference is not None
        loaded = server.inference.loaded_models()
        assert sorted(loaded) == [("ctr", 2, "int8"), ("other", 1, "int8")], "what a model-only request gets"
        assert all(model.warmed for model in loaded.values()), "each ran once already"
        assert _serve_and_predict(server, _request()).version == 2
        assert server.inference.loaded_models().keys() == loaded.keys(), "the first request loaded nothing"
    finally:
        server.stop(grace=0)


def test_a_publish_warms_in_the_background_while_the_previous_version_answers(tmp_path: Path) -> None:
    from edgerec.server.app import ServerConfig, start_server
    from edgerec.server.publish import PublishOptions, publish

    registry = Registry(tmp_path / "registry")
    publish(_model(tmp_path / "v1.onnx", fragile=False), "ctr", registry, PublishOptions(no_gate=True))
    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0"))
    try:
        assert server.inference is not None
        server.inference.stamp_check_s = 0.0  # every request looks: the one after the publish notices it
        assert _serve_and_predict(server, _request()).version == 1
        publish(_model(tmp_path / "v2.onnx", fragile=False, scale=-1.0), "ctr", registry, PublishOptions(no_gate=True))
        assert _serve_and_predict(server, _request()).version == 1, "noticing a publish waits for no load"
        assert server.inference.wait_for_warm_ups(60)
        warmed = server.inference.loaded_models()[("ctr", 2, "int8")]
        assert warmed.warmed, "loaded and run once before its first request"
        assert _serve_and_predict(server, _request()).version == 2
        assert _serve_and_predict(server, _request(version=1)).version == 1, "the version a device asks for"
    finally:
        server.stop(grace=0)
