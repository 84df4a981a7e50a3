"""A fleet: several `edgerec serve` replicas sharing one registry in a real S3 store (SeaweedFS on loopback).

No shared disk, no coordinator: each replica keeps only a cache, a publish through the CLI shows on every
replica, payload bytes come from the bucket over HTTP (presigned URLs in the plan) or through FetchPayload,
a delta one replica makes is stored once and reused by the others, and killing a replica costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from onnxtools import embedding_model
from seaweed import ACCESS_KEY, SECRET_KEY, SeaweedS3, race_two_hosts, seaweed_s3

from edgerec import tensors
from edgerec.errors import ConfigError
from edgerec.registry import LocalRegistry, open_registry
from edgerec.server.app import ServerConfig
from edgerec.server.payload_urls import KeyedBlobs, PayloadUrls
from edgerec.server.payloads import PayloadStore
from edgerec.server.planner import UpdatePlanner
from edgerec.trust import MAX_PAYLOAD_URL_BYTES, MAX_PAYLOAD_URLS
from edgerec.v1 import inference_pb2, inference_pb2_grpc, update_pb2, update_pb2_grpc

BUCKET = "edgerec-fleet"
MODEL = "ctr"
ROWS = 20_000  # an 80 KB table: a weights-only change makes a delta far smaller than the file
DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    pytest.importorskip("boto3")
    with seaweed_s3(tmp_path_factory.mktemp("seaweed")) as server:
        server.make_bucket(BUCKET)
        yield server


@pytest.fixture
def s3_env(seaweed: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials and endpoint the standard AWS ways, for this process and the ones it starts."""
    settings = {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_ENDPOINT_URL": seaweed.endpoint,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return {**os.environ, **settings}


def _s3_url() -> str:
    return f"s3://{BUCKET}/fleet-{uuid.uuid4().hex[:12]}"


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def edgerec(*args: str | Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "edgerec", *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    return result


class Replica:
    """An `edgerec -v serve` process on a free loopback port, its log in a file."""

    def __init__(self, url: str, folder: Path, env: dict[str, str]) -> None:
        folder.mkdir(parents=True)
        self.log = folder / "serve.log"
        args = ["-v", "serve", "--registry", url, "--listen", "127.0.0.1:0", "--registry-cache", str(folder / "cache")]
        with self.log.open("w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "edgerec", *args], stderr=log, env=env)
        self.port = 0
        wait_for(self._started, f"replica in {folder} to listen")
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = update_pb2_grpc.ModelUpdateStub(self.channel)  # type: ignore[no-untyped-call]

    def _started(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"replica exited early:\n{self.log.read_text()}")
        match = re.search(r"serving .* on 127\.0\.0\.1:(\d+)", self.log.read_text())
        if match:
            self.port = int(match.group(1))
        return bool(match)

    def check(self, **fields: Any) -> update_pb2.CheckUpdateResponse:
        answer: update_pb2.CheckUpdateResponse = self.stub.CheckUpdate(
            update_pb2.CheckUpdateRequest(model=MODEL, recipes=["fp32"], **fields), timeout=DEADLINE_S
        )
        return answer

    def fetch(self, payload_id: str) -> bytes:
        chunks = self.stub.FetchPayload(
            update_pb2.FetchPayloadRequest(model=MODEL, payload_id=payload_id), timeout=DEADLINE_S
        )
        return b"".join(chunk.data for chunk in chunks)

    def predict(self) -> inference_pb2.PredictResponse:
        stub = inference_pb2_grpc.InferenceStub(self.channel)  # type: ignore[no-untyped-call]
        inputs: dict[str, np.ndarray] = {"x": np.full((2, 4), 5.0, np.float32), "ids": np.array([0, 3], np.int64)}
        request = inference_pb2.PredictRequest(model=MODEL, inputs={k: tensors.to_proto(v) for k, v in inputs.items()})
        answer: inference_pb2.PredictResponse = stub.Predict(request, timeout=DEADLINE_S)
        return answer

    def made(self, codec: str) -> int:
        """How many ``codec`` payloads this replica made itself (its log says so for each)."""
        return len(re.findall(rf"made {codec} payload", self.log.read_text()))

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=DEADLINE_S)

    def stop(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)


@contextmanager
def replicas(url: str, folder: Path, env: dict[str, str], count: int) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for i in range(count):
            started.append(Replica(url, folder / f"replica-{i}", env))
        yield started
    finally:
        for replica in started:
            replica.stop()


def _without_urls(answer: update_pb2.CheckUpdateResponse) -> bytes:
    """The answer with its URLs left out (each replica presigns its own, at its own second)."""
    copy = update_pb2.CheckUpdateResponse()
    copy.CopyFrom(answer)
    for payload in copy.payloads:
        del payload.urls[:]
    return copy.SerializeToString(deterministic=True)


def test_replicas_share_one_registry_in_a_bucket(s3_env: dict[str, str], tmp_path: Path) -> None:
    url = _s3_url()
    publish = ("publish", "--name", MODEL, "--registry", url, "--recipe", "fp32", "--no-gate", "--json")
    v1 = embedding_model(tmp_path / "v1.onnx", [0.1, 0.2, 0.3, 0.4], ROWS)
    assert json.loads(edgerec(*publish, v1, env=s3_env).stdout)["version"] == 1
    with replicas(url, tmp_path, s3_env, 2) as (a, b):
        # Both answer a new device alike, and list HTTP sources for every payload.
        first = a.check()
        assert first.update_available and _without_urls(first) == _without_urls(b.check())
        for payload in first.payloads:
            assert 1 <= len(payload.urls) <= MAX_PAYLOAD_URLS
            assert all(len(u.encode()) <= MAX_PAYLOAD_URL_BYTES for u in payload.urls)
            with urllib.request.urlopen(payload.urls[0], timeout=DEADLINE_S) as response:
                over_http = response.read()
            through_a, through_b = a.fetch(payload.payload_id), b.fetch(payload.payload_id)
            assert over_http == through_a == through_b
            assert hashlib.sha256(through_a).hexdigest() == payload.sha256 and len(through_a) == payload.size
        # Fallback inference runs the model from each replica's cache (its external weights beside it).
        for replica in (a, b):
            answer = replica.predict()
            # x = 5 zeroes the dense part: score = sigmoid(table[id]), table[i] = 0.01 i.
            assert answer.version == 1 and np.allclose(answer.scores, 1 / (1 + np.exp([-0.0, -0.03])), atol=1e-6)

        # A publish through the CLI shows on both replicas.
        stamp = open_registry(url).change_stamp()
        v2 = embedding_model(tmp_path / "v2.onnx", [0.4, 0.3, 0.2, 0.1], ROWS)
        assert json.loads(edgerec(*publish, v2, env=s3_env).stdout)["version"] == 2
        published = time.monotonic()
        assert open_registry(url).change_stamp() != stamp
        wait_for(lambda: _parse(a.check()).version == 2 and _parse(b.check()).version == 2, "both to offer version 2")
        print(f"version 2 offered by both replicas {time.monotonic() - published:.2f} s after the publish returned")

        # A delta no publish made (a downgrade) is made by the first replica asked, and reused by the other.
        on_v2 = a.check()
        recipe = next(x for x in _parse(on_v2).artifacts if x.recipe == "fp32")
        downgrade = {
            "current_version": 2,
            "current_recipe": "fp32",
            "current_sha256": recipe.digest,
            "target_version": 1,
            "codecs": ["bsdiff4"],
        }
        # The first ask is answered at once with full files and queues the delta in the background.
        wait_for(
            lambda: any(p.codec == "bsdiff4" for p in a.check(**downgrade).payloads), "replica A to make the delta"
        )
        from_a = a.check(**downgrade)
        from_b = b.check(**downgrade)
        (delta,) = [p for p in from_a.payloads if p.codec == "bsdiff4"]  # the other file is the same: "copy"
        assert _without_urls(from_a) == _without_urls(from_b)
        assert a.made("bsdiff4") + b.made("bsdiff4") == 1
        assert delta.size < delta.target_size
        assert a.fetch(delta.payload_id) == b.fetch(delta.payload_id)

        # kill -9 of one replica leaves the other serving everything.
        a.kill()
        assert _without_urls(b.check(**downgrade)) == _without_urls(from_a)
        assert hashlib.sha256(b.fetch(delta.payload_id)).hexdigest() == delta.sha256
        assert b.check().manifest == on_v2.manifest
        wait_for(lambda: b.predict().version == 2, "Predict to answer with version 2 (it warms up in the background)")


def _parse(answer: update_pb2.CheckUpdateResponse) -> Any:
    from edgerec.manifest import parse_manifest

    return parse_manifest(answer.manifest)


# --- publishing from several hosts at once ---------------------------------------------------


def _publish_from_host(url: str, folder: str, count: int, ready: Any, go: Any, results: Any) -> None:
    """One publishing host: ``count`` publishes through the real pipeline, one after another."""
    from edgerec.server.publish import PublishOptions, publish

    registry = open_registry(url, cache_dir=Path(folder) / "cache")
    sources = [
        embedding_model(Path(folder) / f"m{i}.onnx", [0.1 * (i + 1), 0.2, os.getpid() % 97 / 100, 0.4], 64)
        for i in range(count)
    ]
    ready.wait(timeout=DEADLINE_S)
    go.wait(timeout=DEADLINE_S)
    published = []
    for source in sources:
        manifest = publish(source, MODEL, registry, PublishOptions(recipes=("fp32",), no_gate=True))
        published.append((manifest.version, manifest.artifacts[0].digest))
    results.put(published)


def _hosts_race(tmp_path: Path, *, per_host: int) -> None:
    url = _s3_url()
    for h in range(2):
        (tmp_path / f"host{h}").mkdir()
    published = race_two_hosts(_publish_from_host, lambda h: (url, str(tmp_path / f"host{h}"), per_host), timeout_s=600)
    total = 2 * per_host
    assert sorted(v for v, _ in published) == list(range(1, total + 1))  # each number once, none lost
    registry = open_registry(url, cache_dir=tmp_path / "check")
    assert registry.versions(MODEL) == list(range(1, total + 1))
    for version, digest in published:  # each number holds what the publish told it had
        _, manifest = registry.load_manifest(MODEL, version)
        assert manifest.artifacts[0].digest == digest


def test_two_hosts_publishing_at_once_get_distinct_versions(s3_env: dict[str, str], tmp_path: Path) -> None:
    _hosts_race(tmp_path, per_host=3)


@pytest.mark.slow
def test_a_hundred_publishes_from_two_hosts(s3_env: dict[str, str], tmp_path: Path) -> None:
    _hosts_race(tmp_path, per_host=50)


# --- where payload URLs come from -------------------------------------------------------------


def test_plans_list_base_urls_then_a_presigned_one(s3_env: dict[str, str], tmp_path: Path) -> None:
    registry = open_registry(_s3_url(), cache_dir=tmp_path / "cache")
    from edgerec.server.publish import PublishOptions, publish

    publish(
        embedding_model(tmp_path / "m.onnx", [0.1, 0.2, 0.3, 0.4], 64),
        MODEL,
        registry,
        PublishOptions(recipes=("fp32",), no_gate=True),
    )
    bases = ("https://cdn.example/edgerec/", "http://mirror.example")
    urls = PayloadUrls(registry, ttl_s=60, base_urls=bases)
    planner = UpdatePlanner(registry, PayloadStore(registry), urls=urls)
    payload = planner.plan(update_pb2.CheckUpdateRequest(model=MODEL, recipes=["fp32"])).payloads[0]
    assert isinstance(registry, KeyedBlobs)
    key = registry.blob_key(payload.payload_id)
    assert list(payload.urls[:2]) == [f"https://cdn.example/edgerec/{key}", f"http://mirror.example/{key}"]
    assert "X-Amz-Expires=60" in payload.urls[2] and len(payload.urls) == 3
    with urllib.request.urlopen(payload.urls[2], timeout=DEADLINE_S) as response:
        assert hashlib.sha256(response.read()).hexdigest() == payload.sha256
    four = PayloadUrls(registry, base_urls=[f"https://cdn{i}.example" for i in range(4)])
    assert len(four.urls(MODEL, payload.payload_id)) == MAX_PAYLOAD_URLS  # the presigned one does not fit
    long = PayloadUrls(registry, base_urls=["https://cdn.example/" + "a" * (MAX_PAYLOAD_URL_BYTES // 2 - 30)])
    assert all(len(u.encode()) <= MAX_PAYLOAD_URL_BYTES for u in long.urls(MODEL, payload.payload_id))


class CountingLinks(LocalRegistry):
    """A folder registry that "presigns" numbered links, so a test sees each signing."""

    signed = 0

    def payload_url(self, model: str, payload_id: str, expires_s: int) -> str | None:
        self.signed += 1
        return f"https://bucket.example/{payload_id}?expires={expires_s}&n={self.signed}"


def test_a_presigned_link_is_reused_for_a_tenth_of_its_life_then_signed_anew(tmp_path: Path) -> None:
    registry = CountingLinks(tmp_path / "registry")
    urls = PayloadUrls(registry, ttl_s=600)  # reused for 60 s
    first = urls.urls(MODEL, "a" * 64)
    assert [urls.urls(MODEL, "a" * 64) for _ in range(50)] == [first] * 50 and registry.signed == 1
    assert urls.urls(MODEL, "b" * 64) != first and registry.signed == 2  # another payload, a link of its own
    short = PayloadUrls(registry, ttl_s=1)  # reused for 0.1 s
    first = short.urls(MODEL, "a" * 64)
    wait_for(lambda: short.urls(MODEL, "a" * 64) != first, "a fresh link")
    assert registry.signed >= 4 and "expires=1&" in short.urls(MODEL, "a" * 64)[0]


def test_a_local_registry_plans_no_urls(tmp_path: Path) -> None:
    registry = LocalRegistry(tmp_path / "registry")
    from edgerec.server.publish import PublishOptions, publish

    publish(
        embedding_model(tmp_path / "m.onnx", [0.1, 0.2, 0.3, 0.4], 64),
        MODEL,
        registry,
        PublishOptions(recipes=("fp32",), no_gate=True),
    )
    config = ServerConfig(registry=registry.root, payload_base_urls=("https://cdn.example",))
    assert config.payload_urls(config.open_registry()) is None
    planner = UpdatePlanner(registry, PayloadStore(registry), urls=config.payload_urls(registry))
    plan = planner.plan(update_pb2.CheckUpdateRequest(model=MODEL, recipes=["fp32"]))
    assert len(plan.payloads) == 2 and all(list(p.urls) == [] for p in plan.payloads)


@pytest.mark.parametrize(
    "bad",
    [
        {"payload_base_urls": ("ftp://cdn.example",)},
        {"payload_base_urls": ("https://cdn.example/a b",)},
        {"payload_base_urls": tuple(f"https://cdn{i}.example" for i in range(MAX_PAYLOAD_URLS + 1))},
        {"payload_base_urls": ("https://cdn.example/" + "a" * MAX_PAYLOAD_URL_BYTES,)},
        {"payload_url_ttl_s": 0},
        {"payload_url_ttl_s": 8 * 24 * 3600},
        {"registry": ""},
    ],
)
def test_server_config_refuses_unusable_url_settings(bad: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        ServerConfig(**{"registry": tmp_path, **bad})


def test_an_unreachable_bucket_is_one_clear_line(tmp_path: Path) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y", "AWS_MAX_ATTEMPTS": "1"}
    for command in (("registry", "ls"), ("serve", "--listen", "127.0.0.1:0")):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgerec",
                *command,
                "--registry",
                "s3://nowhere/x",
                "--s3-endpoint",
                "http://127.0.0.1:9",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "s3://nowhere/x is unreachable" in lines[0], result.stderr
