"""Hostile callers of the server: what they send is bounded, refused with the right status, and never
turns into server state or metric labels of their choosing.

A real server on loopback, called over a real gRPC channel with raw stubs (a hostile client does not use
the SDK); real onnxruntime on small hand-built models; limits configured small so that the attacks stay cheap.
"""

from __future__ import annotations

import contextlib
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_policy import ODD, SAFE, _model

from edgerec import tensors
from edgerec.errors import InvalidInputError, ModelRuntimeError
from edgerec.grpc_status import ERROR_METADATA_KEY
from edgerec.registry import Registry
from edgerec.runtimes.onnx import run_error
from edgerec.v1 import inference_pb2, inference_pb2_grpc, telemetry_pb2, telemetry_pb2_grpc, tensor_pb2

if TYPE_CHECKING:
    from edgerec.server.app import RunningServer

pytest.importorskip("onnx")
pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

TABLE_ROWS = 40


def embedding_model(path: Path, *, index_scale: int = 1) -> Path:
    """score = sigmoid(sum(table[ids[:, 0] * index_scale] + table[ids[:, 1] * index_scale])) for int64 ids of
    shape [batch, 2], as the reference model looks its ids up. With ``index_scale`` > 1 the model computes
    indices outside its table from ids inside it: a fault of the model, not of the caller."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.linspace(-1, 1, TABLE_ROWS * 4, dtype=np.float32).reshape(TABLE_ROWS, 4)

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name + "_v"))

    nodes = [
        const("zero", np.array(0, np.int64)),
        const("one", np.array(1, np.int64)),
        const("scale", np.array(index_scale, np.int64)),
        const("axes", np.array([1], np.int64)),
        helper.make_node("Mul", ["ids", "scale"], ["scaled"]),
        helper.make_node("Gather", ["scaled", "zero"], ["first"], axis=1),
        helper.make_node("Gather", ["scaled", "one"], ["second"], axis=1),
        helper.make_node("Gather", ["table", "first"], ["e1"]),
        helper.make_node("Gather", ["table", "second"], ["e2"]),
        helper.make_node("Add", ["e1", "e2"], ["h"]),
        helper.make_node("ReduceSum", ["h", "axes"], ["logit"], keepdims=0),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(table, "table")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    from edgerec.server.publish import PublishOptions, publish

    folder = tmp_path_factory.mktemp("hostile")
    registry = Registry(folder / "registry")
    publish(_model(folder / "safe.onnx", fragile=False), "safe", registry, PublishOptions(no_gate=True))
    publish(_model(folder / "fragile.onnx", fragile=True), "fragile", registry, PublishOptions(no_gate=True))
    publish(embedding_model(folder / "emb.onnx"), "emb", registry, PublishOptions(no_gate=True))
    publish(
        embedding_model(folder / "doubling.onnx", index_scale=2), "doubling", registry, PublishOptions(no_gate=True)
    )
    return registry


@contextlib.contextmanager
def serving(registry: Registry, **settings: Any) -> Iterator[RunningServer]:
    from edgerec.server.app import ServerConfig, start_server

    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0", **settings))
    try:
        yield server
    finally:
        server.stop(grace=0)


@contextlib.contextmanager
def channel_to(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


def predict_request(model: str, **inputs: np.ndarray | tensor_pb2.Tensor) -> inference_pb2.PredictRequest:
    request = inference_pb2.PredictRequest(model=model)
    for name, value in inputs.items():
        request.inputs[name].CopyFrom(value if isinstance(value, tensor_pb2.Tensor) else tensors.to_proto(value))
    return request


def call(channel: grpc.Channel, request: inference_pb2.PredictRequest) -> tuple[grpc.StatusCode, str, str]:
    """(status, details, the typed error the server named) of one Predict; generous deadline: never the answer."""
    stub = inference_pb2_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
    try:
        stub.Predict(request, timeout=60)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        named = dict(exc.trailing_metadata() or ()).get(ERROR_METADATA_KEY, "")
        return exc.code(), exc.details() or "", str(named)
    return grpc.StatusCode.OK, "", ""


def report(channel: grpc.Channel, status_report: telemetry_pb2.StatusReport) -> grpc.StatusCode:
    stub = telemetry_pb2_grpc.TelemetryStub(channel)  # type: ignore[no-untyped-call]
    try:
        stub.ReportStatus(status_report, timeout=30)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        return exc.code()
    return grpc.StatusCode.OK


# --- Predict: rows, memory in flight, malformed tensors, ids outside the tables --------------------------


def test_a_request_over_the_row_limit_is_refused_from_its_declared_shape_before_decoding(registry: Registry) -> None:
    with serving(registry, max_predict_rows=8) as server, channel_to(server) as channel:
        assert call(channel, predict_request("safe", x=np.ones((8, 4), np.float32)))[0] == grpc.StatusCode.OK
        # Shapes without data: decoding them would answer INVALID_ARGUMENT (length mismatch); the row
        # limit answers first, from the shape alone.
        for rows in (9, 2**40):
            lying = tensor_pb2.Tensor(dtype="float32", shape=[rows, 4])
            code, details, named = call(channel, predict_request("safe", x=lying))
            assert (code, named) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "ResourceLimitError"), details
            assert "at most 8" in details
        assert server.inference is not None and server.inference.admission.in_flight == 0


def test_rows_in_flight_are_bounded_and_a_request_that_does_not_fit_is_refused_not_queued(registry: Registry) -> None:
    with serving(registry, max_predict_rows=8, max_predict_rows_in_flight=8) as server, channel_to(server) as channel:
        assert server.inference is not None
        budget = server.inference.admission
        with budget.admit(5):  # rows held by a request still running
            code, details, _ = call(channel, predict_request("safe", x=np.ones((4, 4), np.float32)))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "busy" in details, "refused at once, not queued"
            assert call(channel, predict_request("safe", x=np.ones((3, 4), np.float32)))[0] == grpc.StatusCode.OK
        assert call(channel, predict_request("safe", x=np.ones((8, 4), np.float32)))[0] == grpc.StatusCode.OK
        assert budget.in_flight == 0 and budget.refused == 1

        # Many at once: each is answered or refused, none waits for room, and every row is given back,
        # also by the requests that failed (malformed, or refused by the model).
        refused_before = budget.refused
        requests = [predict_request("safe", x=np.ones((8, 4), np.float32)) for _ in range(6)]
        requests += [predict_request("safe", x=np.ones((8, 5), np.float32)), predict_request("fragile", x=ODD["x"])]
        codes: list[grpc.StatusCode] = []
        start = threading.Barrier(len(requests))

        def send(request: inference_pb2.PredictRequest) -> None:
            start.wait()
            codes.append(call(channel, request)[0])

        threads = [threading.Thread(target=send, args=(r,)) for r in requests]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(codes) == len(requests)
        allowed = {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert set(codes) <= allowed | {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL}, codes
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == budget.refused - refused_before
        assert budget.in_flight == 0


HOSTILE_TENSORS = {
    "empty batch of huge rows": tensor_pb2.Tensor(dtype="float32", shape=[0, 2**40, 2**40]),
    "huge rows after a zero": tensor_pb2.Tensor(dtype="float32", shape=[2, 0, 2**62]),
    "negative dimension": tensor_pb2.Tensor(dtype="float32", shape=[-1, 4]),
    "data shorter than the shape": tensor_pb2.Tensor(dtype="float32", shape=[2, 4], data=b"\0" * 31),
    "unknown dtype": tensor_pb2.Tensor(dtype="object", shape=[2, 4], data=b"\0" * 32),
    "rank beyond the limit": tensor_pb2.Tensor(dtype="float32", shape=[1] * 9, data=b"\0" * 4),
    "wrong rank for the model": tensor_pb2.Tensor(dtype="float32", shape=[1, 1, 4], data=b"\0" * 16),
}


def test_malformed_tensors_are_invalid_argument_never_unknown(registry: Registry) -> None:
    with serving(registry) as server, channel_to(server) as channel:
        for what, tensor in HOSTILE_TENSORS.items():
            code, details, named = call(channel, predict_request("safe", x=tensor))
            assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, "InvalidInputError"), (what, code, details)
            assert "Traceback" not in details and "Exception calling application" not in details
        crowd = predict_request("safe", x=SAFE["x"])
        for i in range(1000):
            crowd.inputs[f"extra-{i}-" + "n" * 200].CopyFrom(tensors.to_proto(np.zeros(1, np.float32)))
        code, details, _ = call(channel, crowd)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details) < 2000, "the error names a few, cut short"
        code, details, _ = call(channel, predict_request("x" * 100_000, x=SAFE["x"]))
        assert code == grpc.StatusCode.NOT_FOUND and len(details) < 200


DIMENSIONS = st.one_of(st.just(0), st.integers(0, 4), st.integers(-(2**63), 2**63 - 1), st.just(2**40))


@given(st.lists(DIMENSIONS, max_size=9), st.binary(max_size=64))
def test_any_declared_shape_decodes_exactly_or_is_invalid_input(shape: list[int], data: bytes) -> None:
    tensor = tensor_pb2.Tensor(dtype="float32", shape=shape, data=data)
    try:
        array = tensors.from_proto(tensor)
    except InvalidInputError:
        return
    assert list(array.shape) == list(tensor.shape) and array.tobytes() == data


def test_ids_outside_an_embedding_table_are_the_callers_mistake_and_model_faults_stay_internal(
    registry: Registry,
) -> None:
    with serving(registry) as server, channel_to(server) as channel:
        good = np.array([[0, 1], [TABLE_ROWS - 1, 5]], np.int64)
        assert call(channel, predict_request("emb", ids=good))[0] == grpc.StatusCode.OK
        for bad in (TABLE_ROWS, 5000, -TABLE_ROWS - 1):
            ids = np.array([[0, 1], [3, bad]], np.int64)
            code, details, named = call(channel, predict_request("emb", ids=ids))
            assert (code, named) == (grpc.StatusCode.INVALID_ARGUMENT, "InvalidInputError"), details
            assert f"id {bad}" in details and "'ids'" in details
        # The model itself looks up 2 * 25 = 50, past its 40 rows: the caller sent valid ids.
        code, _, _ = call(channel, predict_request("doubling", ids=np.array([[25, 3]], np.int64)))
        assert code == grpc.StatusCode.INTERNAL
        code, _, named = call(channel, predict_request("fragile", x=ODD["x"]))  # fails on odd batches
        assert (code, named) == (grpc.StatusCode.INTERNAL, "ModelRuntimeError")


def test_a_runtime_failure_is_the_callers_only_when_the_request_carries_the_bad_id() -> None:
    failure = RuntimeError(
        "onnxruntime failed to run: [ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned "
        "while running Gather node. Name:'g' Status Message: indices element out of data bounds, idx=50 must be "
        "within the inclusive range [-40,39]"
    )
    assert isinstance(run_error(failure, {"ids": np.array([[25, 3]], np.int64)}), ModelRuntimeError)
    assert isinstance(run_error(failure, {"x": np.array([[50.0]], np.float32)}), ModelRuntimeError), "not an id"
    mistake = run_error(failure, {"x": np.zeros(2, np.float32), "ids": np.array([[50, 3]], np.int64)})
    assert isinstance(mistake, InvalidInputError) and "'ids'" in str(mistake) and "[-40, 39]" in str(mistake)
    assert isinstance(run_error(RuntimeError("Reshape failed"), {"ids": np.array([50], np.int64)}), ModelRuntimeError)


# --- Telemetry: reports bounded, published models only, labels from known sets ---------------------------


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text: str = response.read().decode()
    return text


def test_hostile_status_reports_stay_bounded_and_never_become_metric_labels(registry: Registry) -> None:
    from edgerec.server.telemetry_service import REASONS, SOURCES

    limits = {"max_telemetry_devices": 50, "max_telemetry_report_bytes": 4096, "max_telemetry_bytes": 64 * 1024}
    with serving(registry, metrics_port=0, **limits) as server, channel_to(server) as channel:
        telemetry = server.telemetry
        assert telemetry is not None and server.metrics_port is not None
        for i in range(120):
            hostile = telemetry_pb2.StatusReport(
                device_id=f"attacker-{i:04d}-" + "d" * 500, model="safe", active_version=10**9 + i, recipe="r" * 200
            )
            hostile.predictions_by_source.update({f"src-{i}-{j}": 1 for j in range(20)} | {"server": 1})
            hostile.fallbacks_by_reason.update({f"why-{i}-{j}": 1 for j in range(20)} | {"hedged": 2})
            hostile.sync.last_error = "e" * 800
            assert hostile.ByteSize() <= 4096
            assert report(channel, hostile) == grpc.StatusCode.OK
        huge = telemetry_pb2.StatusReport(device_id="big", model="safe", recipe="r" * 5000)
        assert report(channel, huge) == grpc.StatusCode.RESOURCE_EXHAUSTED, "refused unparsed"
        unpublished = telemetry_pb2.StatusReport(device_id="d", model="nowhere-" + "m" * 100)
        assert report(channel, unpublished) == grpc.StatusCode.NOT_FOUND
        assert call(channel, predict_request("nowhere", x=SAFE["x"]))[0] == grpc.StatusCode.NOT_FOUND
        assert telemetry.received == 120 and telemetry.latest("big", "safe") is None
        assert len(telemetry) <= 50 and telemetry.kept_bytes <= 64 * 1024, (len(telemetry), telemetry.kept_bytes)
        assert telemetry.evicted >= 120 - 50
        text = _scrape(server.metrics_port)

    labels: dict[str, set[str]] = {}
    series = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series += 1
            for name, value in sample.labels.items():
                labels.setdefault(name, set()).add(value)
    published = set(registry.models())
    assert labels["model"] <= published | {"other"}, labels["model"]
    assert labels["version"] <= {"0", "1", "other"}, labels["version"]
    assert labels["reason"] <= REASONS | {"other"} and labels["source"] <= SOURCES | {"other"}
    assert not any(word in text for word in ("attacker", "src-", "why-", "nowhere")), "no caller string is a label"
    assert series < 400, f"{series} series: bounded by the server's own sets, not by what callers sent"
    assert f'edgerec_devices{{model="safe",version="other"}} {float(len(telemetry))}' in text
