"""What a careless or hostile caller sends: bad settings, names with a trailing newline, 100,000-character
names, and bytes that are no request at all. Real server on loopback, real command line."""

from __future__ import annotations

import logging
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from click.testing import CliRunner
from onnxtools import linear_model
from servertools import registry_server

from edgerec.cli.main import cli
from edgerec.errors import ConfigError, ManifestError
from edgerec.grpc_status import MAX_DETAILS_BYTES, bounded_details
from edgerec.manifest import validate_model_name
from edgerec.registry import Registry
from edgerec.server.app import ServerConfig
from edgerec.server.throttled_log import DEFAULT_BURST, DEFAULT_PER_SECOND, ThrottledLog
from edgerec.trust import parse_rfc3339
from edgerec.v1 import inference_pb2, inference_pb2_grpc, update_pb2, update_pb2_grpc

pytestmark = pytest.mark.torch  # publishing the model served needs the server extra (onnx)

MODEL = "linear"
LONG_NAME = "m" * 100_000


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from edgerec.server.publish import PublishOptions, publish

    folder = tmp_path_factory.mktemp("hostile")
    registry = Registry(folder / "registry")
    publish(
        linear_model(folder / "model.onnx", [0.1, 0.2, 0.3, 0.4]), MODEL, registry, PublishOptions(recipes=("fp32",))
    )
    with registry_server(registry) as address:
        yield address


# --- settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"manifest_ttl": timedelta(0)},
        {"manifest_ttl": timedelta(hours=-1)},
        {"workers": 0},
        {"generic_diff_max_bytes": -1},
        {"listen": " "},
        {"max_streams": 0},
        {"max_streams_per_device": -1},
        {"per_device_rate": float("nan")},
        {"global_rate": -5.0},
        {"min_stream_rate": 0.0},
        {"stream_rate_window_s": 0.0},
        {"stream_idle_timeout_s": -1.0},
        {"stream_grace_s": -0.5},
        {"max_telemetry_devices": 0},
    ],
    ids=lambda bad: next(iter(bad)),
)
def test_server_config_refuses_bad_values_with_a_typed_error(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        ServerConfig(registry=tmp_path, **bad)


def test_serve_with_a_zero_manifest_ttl_exits_with_one_line_and_serves_nothing(tmp_path: Path) -> None:
    """It used to start, then fail every CheckUpdate with UNKNOWN."""
    command = ["serve", "--registry", str(tmp_path), "--listen", "127.0.0.1:0", "--manifest-ttl-hours", "0"]
    result = subprocess.run(
        [sys.executable, "-m", "edgerec", *command],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "manifest_ttl must be positive" in lines[0], result.stderr


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--workers", "0", "workers must be >= 2"),
        ("--max-streams-per-device", "0", "max_streams_per_device must be >= 1"),
        ("--min-stream-rate", "0kbit", "must be positive"),
        ("--stream-idle-timeout", "0", "stream_idle_timeout_s must be > 0"),
        ("--per-device-rate", "fast", "cannot read rate"),
    ],
)
def test_serve_refuses_bad_settings_on_one_line(tmp_path: Path, option: str, value: str, message: str) -> None:
    result = CliRunner().invoke(cli, ["serve", "--registry", str(tmp_path), "--listen", "127.0.0.1:0", option, value])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.output


# --- names ------------------------------------------------------------------------------


def test_names_and_times_must_match_whole_not_up_to_a_final_newline() -> None:
    for name in ("cli\n", "ctr\n", "a" * 128 + "\n"):
        with pytest.raises(ManifestError):
            validate_model_name(name)
    assert validate_model_name("a" * 128) == "a" * 128
    with pytest.raises(ManifestError):
        parse_rfc3339("2030-01-01T00:00:00Z\n")
    assert parse_rfc3339("2030-01-01T00:00:00Z").year == 2030


def test_status_details_are_bounded_and_say_how_long_they_were() -> None:
    assert bounded_details("short") == "short"
    long = bounded_details("é" * 100_000)
    assert len(long.encode()) <= MAX_DETAILS_BYTES and long.endswith("(100000 characters in all)")


def test_a_100000_character_model_name_gets_a_short_typed_refusal(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The name used to come back whole in the status, past the client's metadata limit."""
    with caplog.at_level(logging.INFO, logger="edgerec"), grpc.insecure_channel(address) as channel:
        updates = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        inference = inference_pb2_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        calls: list[Callable[[], object]] = [
            lambda: updates.CheckUpdate(update_pb2.CheckUpdateRequest(model=LONG_NAME), timeout=30),
            lambda: list(
                updates.FetchPayload(update_pb2.FetchPayloadRequest(model=LONG_NAME, payload_id="0" * 64), timeout=30)
            ),
            lambda: inference.Predict(inference_pb2.PredictRequest(model=LONG_NAME), timeout=30),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), info.value
            details = info.value.details() or ""
            assert len(details.encode()) <= MAX_DETAILS_BYTES and "mmmm" in details
    ours = [r for r in caplog.records if r.name.startswith("edgerec.server.update_service")]
    assert ours and all(len(r.getMessage()) < 1000 for r in ours)


# --- bytes that are no request ------------------------------------------------------------

METHODS = (
    "/edgerec.v1.ModelUpdate/CheckUpdate",
    "/edgerec.v1.Inference/Predict",
    "/edgerec.v1.Telemetry/ReportStatus",
    "/grpc.health.v1.Health/Check",
)


def _junk(rng: random.Random) -> bytes:
    # 0x07 is field 0 with wire type 7: no protobuf message starts like that, whatever follows.
    return b"\x07" + rng.randbytes(rng.randint(0, 64))


def test_malformed_requests_are_refused_with_one_throttled_line_each_and_no_traceback(
    address: str, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(7)
    codes: set[grpc.StatusCode] = set()
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="edgerec"), grpc.insecure_channel(address) as channel:
        for i in range(500):
            try:
                if i % 50 == 0:
                    fetch = channel.unary_stream("/edgerec.v1.ModelUpdate/FetchPayload", None, None)
                    list(fetch(_junk(rng), timeout=30))
                elif i % 50 == 1:
                    reflection = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
                    list(channel.stream_stream(reflection, None, None)(iter([_junk(rng)]), timeout=30))
                else:
                    channel.unary_unary(METHODS[i % len(METHODS)], None, None)(_junk(rng), timeout=30)
            except grpc.RpcError as exc:
                codes.add(exc.code())
                assert "not a valid" in (exc.details() or "")
    elapsed = time.monotonic() - started
    assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
    assert "Traceback" not in caplog.text and not any(r.exc_info for r in caplog.records)
    refusals = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert 1 <= len(refusals) <= DEFAULT_BURST + DEFAULT_PER_SECOND * elapsed + 1, f"{len(refusals)} in {elapsed:.1f}s"
    assert len(caplog.records) <= len(refusals) + 5  # and nothing else speaks up for them


def test_the_throttled_log_passes_a_burst_then_counts_what_it_drops(caplog: pytest.LogCaptureFixture) -> None:
    throttled = ThrottledLog(logging.getLogger("edgerec.test.throttled"), per_second=1e-9, burst=3)
    with caplog.at_level(logging.INFO, logger="edgerec.test.throttled"):
        for i in range(100):
            throttled.info("refused request %d", i)
    assert [r.getMessage() for r in caplog.records] == [f"refused request {i}" for i in range(3)]
