"""A man-in-the-middle holding no trusted key: what it can make a device do by rewriting what nobody signed.

The device talks to a real server that signs with its key, through ``MitmProxy``, which rewrites the
server's answers on the way back as an attacker on the network path could: it fabricates a model, offers
a recipe the device did not allow, says "no update", replays or re-signs freshness statements, relays a
statement the server made for another device or for a rewritten request. Every attack must end in its
precise typed error (``edgerec.errors``) with nothing installed, unless the device's owner opted out of
verification explicitly (``insecure=True``), which every sync then says.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from mitm import MitmProxy
from servertools import registry_server, update_server

from edgerec.codecs import make_patch
from edgerec.device import EdgeClient
from edgerec.device.storage import ModelStore
from edgerec.device.transport import RetryPolicy, ServerConnection, TransportConfig
from edgerec.errors import (
    EdgerecError,
    FreshnessError,
    NoTrustedKeysError,
    RecipeNotAllowedError,
    RollbackError,
    SignatureError,
    StaleAnswerError,
    UnknownKeyError,
)
from edgerec.hashing import sha256_file
from edgerec.manifest import ArtifactFile, Manifest, make_artifact, parse_manifest, sign_nothing
from edgerec.registry import Registry
from edgerec.runtimes import OnnxRunner
from edgerec.server.freshness import DEFAULT_FRESHNESS_TTL, FreshnessSigner
from edgerec.server.payloads import PayloadStore
from edgerec.server.planner import UpdatePlanner
from edgerec.server.signer import ManifestSigner
from edgerec.server.update_service import ModelUpdateService
from edgerec.signing import generate_keypair, key_id, load_private_key, sign_freshness
from edgerec.v1 import update_pb2

pytestmark = pytest.mark.torch

MODEL = "ctr"
FAST = TransportConfig(check_timeout_s=5, retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.02, backoff_max_s=0.1))
# The model the attacker makes up: the highest version there is, the same score for every input.
FABRICATED_VERSION = 2**64 - 1
FABRICATED_SCORE = 0.999


@dataclass(frozen=True)
class Keys:
    server_pem: Path  # the honest server's key, which devices trust
    server_pub: Path
    attacker: Ed25519PrivateKey  # a key nobody trusts


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    folder = tmp_path_factory.mktemp("hostile-keys")
    generate_keypair(folder / "server.pem", folder / "server.pub")
    return Keys(folder / "server.pem", folder / "server.pub", Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def upstream(published_registry: Registry, keys: Keys) -> Iterator[str]:
    """The honest server, signing manifests and freshness statements."""
    with registry_server(published_registry, signing_key=keys.server_pem) as address:
        yield address


@pytest.fixture
def mitm(upstream: str) -> Iterator[MitmProxy]:
    with MitmProxy(upstream) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def at_v1(upstream: str, keys: Keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A device data folder that installed version 1 from the honest server (copied for each test)."""
    data_dir = tmp_path_factory.mktemp("hostile-v1")
    with _client(upstream, data_dir, keys) as client:
        assert client.sync(target_version=1).version == 1
    return data_dir


def _client(address: str, data_dir: Path, keys: Keys, **settings: Any) -> EdgeClient:
    return EdgeClient(address, MODEL, data_dir, trusted_keys=[keys.server_pub], transport=FAST, **settings)


def _device(template: Path, tmp_path: Path) -> Path:
    data_dir = tmp_path / "device"
    shutil.copytree(template, data_dir)
    return data_dir


def _ask(address: str, request: update_pb2.CheckUpdateRequest) -> update_pb2.CheckUpdateResponse:
    """What the server answers ``request`` (an attacker may ask it anything a device may)."""
    connection = ServerConnection(address, FAST)
    try:
        return connection.check_update(request)
    finally:
        connection.close()


def _downloads(mitm: MitmProxy) -> int:
    return sum(isinstance(r, update_pb2.FetchPayloadRequest) for r in mitm.requests)


def _assert_untouched(client: EdgeClient, version: int | None) -> None:
    assert client.active_version == version
    assert not list(client.store.staging_dir.iterdir()), "staging left behind"


# --- 1. an unsigned fabricated model ---------------------------------------------------------


def _constant_model(path: Path, genuine: Manifest) -> Path:
    """An ONNX model with the genuine inputs whose first output is FABRICATED_SCORE for every row."""
    import onnx
    from onnx import TensorProto, helper

    def dims(shape: list[int]) -> list[int | str]:
        return [d if d >= 0 else "batch" for d in shape]

    inputs = [
        helper.make_tensor_value_info(
            spec.name, helper.np_dtype_to_tensor_dtype(np.dtype(spec.dtype)), dims(list(spec.shape))
        )
        for spec in genuine.inputs
    ]
    score = genuine.outputs[0].name
    nodes = [
        helper.make_node("Shape", [genuine.inputs[0].name], ["rows"], start=0, end=1),
        helper.make_node(
            "ConstantOfShape",
            ["rows"],
            [score],
            value=helper.make_tensor("score_v", TensorProto.FLOAT, [1], [FABRICATED_SCORE]),
        ),
    ]
    output = helper.make_tensor_value_info(score, TensorProto.FLOAT, ["batch"])
    graph = helper.make_graph(nodes, "fabricated", inputs, [output])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


class Fabricate:
    """Replaces every offered update by an unsigned manifest of a model of the attacker's, served by the proxy.

    The server's freshness statement passes through untouched (the attacker cannot sign another).
    """

    def __init__(self, mitm: MitmProxy, work: Path) -> None:
        self.mitm = mitm
        self.work = work
        work.mkdir(parents=True, exist_ok=True)

    def __call__(
        self, request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
    ) -> update_pb2.CheckUpdateResponse:
        genuine = parse_manifest(response.manifest)
        model_file = _constant_model(self.work / "model.onnx", genuine)
        payload = self.work / "model.full"
        make_patch("full", None, model_file, payload)
        payload_id = self.mitm.serve_payload(payload.read_bytes())
        path, size, sha256 = "int8/model.onnx", model_file.stat().st_size, sha256_file(model_file)
        fake = Manifest()
        fake.CopyFrom(genuine)
        fake.version, fake.expires_at = FABRICATED_VERSION, ""
        del fake.outputs[1:], fake.golden[:], fake.artifacts[:]
        fake.annotations.clear()
        fake.artifacts.append(
            make_artifact("int8", "onnxruntime", path, [ArtifactFile(path=path, size=size, sha256=sha256)])
        )
        plan = update_pb2.Payload(
            path=path,
            codec="full",
            payload_id=payload_id,
            size=payload.stat().st_size,
            sha256=payload_id,
            target_sha256=sha256,
            target_size=size,
        )
        forged = update_pb2.CheckUpdateResponse(
            update_available=True,
            manifest=sign_nothing(fake),
            recipe="int8",
            payloads=[plan],
            full_bytes=size,
            payload_bytes=plan.size,
        )
        if response.HasField("freshness"):
            forged.freshness.CopyFrom(response.freshness)
        return forged


def test_an_unsigned_fabricated_model_is_refused_by_default_and_the_genuine_update_still_installs(
    mitm: MitmProxy, keys: Keys, at_v1: Path, tmp_path: Path
) -> None:
    mitm.on_check = Fabricate(mitm, tmp_path / "attacker")
    with _client(mitm.address, _device(at_v1, tmp_path), keys) as client:
        with pytest.raises(SignatureError, match="manifest is unsigned"):
            client.sync()
        _assert_untouched(client, 1)
        assert _downloads(mitm) == 0, "nothing is fetched for a refused answer"
        mitm.on_check = None
        result = client.sync()
    assert (result.version, result.updated, result.verification, result.latest_version) == (2, True, "ed25519", 2)


@pytest.mark.parametrize("trusted_keys", [None, []], ids=["none", "empty"])
def test_without_keys_sync_refuses_before_any_network_call(
    mitm: MitmProxy, tmp_path: Path, trusted_keys: list[Path] | None
) -> None:
    mitm.on_check = Fabricate(mitm, tmp_path / "attacker")
    with EdgeClient(mitm.address, MODEL, tmp_path / "device", trusted_keys=trusted_keys, transport=FAST) as client:
        with pytest.raises(NoTrustedKeysError, match=r"trusted_keys=.*insecure=True"):
            client.sync()
        assert client.runtime_info()["verification"] == "unconfigured"
        assert client.status_report().sync.failed == 1
        _assert_untouched(client, None)
    assert mitm.requests == []


def test_keys_and_the_opt_out_together_are_refused(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both"):
        EdgeClient(None, MODEL, tmp_path, trusted_keys=[keys.server_pub], insecure=True)


def test_the_insecure_opt_in_installs_the_fabricated_model_and_says_so_on_every_sync(
    mitm: MitmProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture, request_inputs: dict[str, np.ndarray]
) -> None:
    """What the opt-out means: the attacker's model runs, and the genuine update is then refused as a rollback."""
    mitm.on_check = Fabricate(mitm, tmp_path / "attacker")
    with (
        caplog.at_level(logging.WARNING, logger="edgerec"),
        EdgeClient(mitm.address, MODEL, tmp_path / "device", insecure=True, transport=FAST) as client,
    ):
        result = client.sync()
        assert (result.version, result.verification, result.latest_version) == (FABRICATED_VERSION, "off", None)
        info = client.runtime_info()
        assert (info["version"], info["verification"]) == (str(FABRICATED_VERSION), "off")
        installed = client.store.current()
        assert installed is not None
        runner = OnnxRunner(installed.entrypoint, threads=1)
        scores = np.asarray(runner.run(request_inputs)[runner.output_names[0]])
        assert np.allclose(scores, FABRICATED_SCORE)
        mitm.on_check = None
        with pytest.raises(RollbackError):
            client.sync()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "verification OFF" in r.getMessage()]
    assert len(warnings) == 2, "each sync warns"


# --- 2. a recipe the device did not allow ------------------------------------------------------


@pytest.mark.parametrize("trust", ["keys", "insecure"])
def test_a_recipe_the_device_did_not_allow_is_refused(
    mitm: MitmProxy, upstream: str, keys: Keys, tmp_path: Path, trust: str
) -> None:
    """The attacker swaps in the server's own fp32 plan (the manifest lists fp32) for an int8-only device."""

    def offer_fp32(
        request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
    ) -> update_pb2.CheckUpdateResponse:
        asked = update_pb2.CheckUpdateRequest()
        asked.CopyFrom(request)
        del asked.recipes[:]
        asked.recipes.append("fp32")
        fp32 = _ask(upstream, asked)
        response.recipe = fp32.recipe
        del response.payloads[:]
        response.payloads.extend(fp32.payloads)
        response.full_bytes, response.payload_bytes = fp32.full_bytes, fp32.payload_bytes
        return response

    mitm.on_check = offer_fp32
    settings: dict[str, Any] = {"trusted_keys": [keys.server_pub]} if trust == "keys" else {"insecure": True}
    with EdgeClient(
        mitm.address,
        MODEL,
        tmp_path / "device",
        recipes=("int8",),
        transport=FAST,
        **settings,  # type: ignore[arg-type]
    ) as client:
        with pytest.raises(RecipeNotAllowedError, match=r"recipe 'fp32'.*\['int8'\]"):
            client.sync()
        _assert_untouched(client, None)
    assert _downloads(mitm) == 0


# --- 3. "no update" and "this is the latest" ------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "expected"), [("kept", StaleAnswerError), ("dropped", FreshnessError)], ids=["kept", "dropped"]
)
def test_a_forged_no_update_is_refused(
    mitm: MitmProxy, keys: Keys, at_v1: Path, tmp_path: Path, statement: str, expected: type[EdgerecError]
) -> None:
    def no_update(
        request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
    ) -> update_pb2.CheckUpdateResponse:
        response.update_available = False
        del response.payloads[:]
        response.payload_bytes = 0
        if statement == "dropped":
            response.ClearField("freshness")
        return response

    mitm.on_check = no_update
    with _client(mitm.address, _device(at_v1, tmp_path), keys) as client:
        with pytest.raises(EdgerecError) as info:
            client.sync()
        assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
        _assert_untouched(client, 1)
    if statement == "kept":
        assert "withholds version 2" in str(info.value)


@pytest.mark.parametrize("recorded_nonce", [os.urandom(16), b""], ids=["another-nonce", "no-nonce"])
def test_a_recorded_statement_is_refused_as_a_replay(
    mitm: MitmProxy, upstream: str, keys: Keys, at_v1: Path, tmp_path: Path, recorded_nonce: bytes
) -> None:
    """Recorded earlier: the honest answer "no update, run version 1" for this very device, to another check."""
    running = ModelStore(at_v1, MODEL).current()
    assert running is not None
    recorded = _ask(
        upstream,
        update_pb2.CheckUpdateRequest(
            model=MODEL,
            current_version=1,
            current_sha256=running.artifact.digest,
            current_recipe=running.recipe,
            runtimes=["onnxruntime"],
            recipes=["int8", "fp32"],
            target_version=1,
            device_id="kiosk-1",
            nonce=recorded_nonce,
        ),
    )
    assert not recorded.update_available and recorded.freshness.signatures
    mitm.on_check = lambda request, response: recorded
    with _client(mitm.address, _device(at_v1, tmp_path), keys, device_id="kiosk-1") as client:
        with pytest.raises(FreshnessError, match="nonce differs"):
            client.sync()
        _assert_untouched(client, 1)


class ShiftedFreshness(FreshnessSigner):
    """Signs with the trusted key, but as if at another time: backdated (expired) or from the future."""

    def __init__(self, private_key: Ed25519PrivateKey, shift: timedelta) -> None:
        super().__init__(private_key)
        self.shift = shift

    def sign(
        self,
        request: update_pb2.CheckUpdateRequest,
        *,
        latest_version: int,
        target_version: int,
        now: datetime | None = None,
    ) -> update_pb2.SignedFreshness:
        shifted = datetime.now(UTC) + self.shift
        return super().sign(request, latest_version=latest_version, target_version=target_version, now=shifted)


@pytest.mark.parametrize(
    ("shift", "match"),
    [(-2 * DEFAULT_FRESHNESS_TTL, "expired at"), (timedelta(hours=1), "is the clock right")],
    ids=["expired", "from-the-future"],
)
def test_a_statement_out_of_its_time_is_refused(
    published_registry: Registry, keys: Keys, at_v1: Path, tmp_path: Path, shift: timedelta, match: str
) -> None:
    """What a device that sends no nonce relies on: a statement stops counting at its expiry."""
    key = load_private_key(keys.server_pem)
    planner = UpdatePlanner(
        published_registry, PayloadStore(published_registry), ManifestSigner(key), ShiftedFreshness(key, shift)
    )
    with (
        update_server(ModelUpdateService(published_registry, planner)) as server,
        MitmProxy(server) as mitm,
        _client(mitm.address, _device(at_v1, tmp_path), keys) as client,
    ):
        with pytest.raises(FreshnessError, match=match):
            client.sync()
        _assert_untouched(client, 1)


@pytest.mark.parametrize(("claimed", "expected"), [("own", UnknownKeyError), ("trusted", SignatureError)])
def test_a_statement_signed_by_an_untrusted_key_is_refused(
    mitm: MitmProxy, keys: Keys, at_v1: Path, tmp_path: Path, claimed: str, expected: type[EdgerecError]
) -> None:
    """The attacker signs "run version 1, the latest is 1" with its own key (named as its own or as the trusted one)."""
    trusted_id = key_id(load_private_key(keys.server_pem).public_key())

    def resign(
        request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
    ) -> update_pb2.CheckUpdateResponse:
        statement = update_pb2.Freshness.FromString(response.freshness.freshness)
        statement.latest_version = statement.target_version = 1
        forged = sign_freshness(statement, keys.attacker)
        if claimed == "trusted":
            forged.signatures[0].key_id = trusted_id
        response.freshness.CopyFrom(forged)
        response.update_available = False
        del response.payloads[:]
        return response

    mitm.on_check = resign
    with _client(mitm.address, _device(at_v1, tmp_path), keys) as client:
        with pytest.raises(EdgerecError) as info:
            client.sync()
        assert type(info.value) is expected, f"{type(info.value).__name__}: {info.value}"
        assert "freshness statement" in str(info.value)
        _assert_untouched(client, 1)


def _relay_answer_to(upstream: str, **rewrite: object) -> tuple[list[update_pb2.CheckUpdateResponse], object]:
    """A hook that asks the server the device's own request with ``rewrite`` applied and relays that answer."""
    relayed: list[update_pb2.CheckUpdateResponse] = []

    def relay(
        request: update_pb2.CheckUpdateRequest, response: update_pb2.CheckUpdateResponse
    ) -> update_pb2.CheckUpdateResponse:
        asked = update_pb2.CheckUpdateRequest()
        asked.CopyFrom(request)
        for name, value in rewrite.items():
            setattr(asked, name, value)
        relayed.append(_ask(upstream, asked))
        return relayed[-1]

    return relayed, relay


def test_a_statement_made_for_another_device_is_refused(
    mitm: MitmProxy, upstream: str, keys: Keys, at_v1: Path, tmp_path: Path
) -> None:
    """The attacker asks the server, with this device's nonce, as another device that is current at version 1."""
    relayed, relay = _relay_answer_to(upstream, device_id="kiosk-2", target_version=1)
    mitm.on_check = relay  # type: ignore[assignment]
    with _client(mitm.address, _device(at_v1, tmp_path), keys, device_id="kiosk-1") as client:
        with pytest.raises(FreshnessError, match="for device 'kiosk-2'"):
            client.sync()
        _assert_untouched(client, 1)
    assert relayed and not relayed[0].update_available, "the server itself answered 'no update' to kiosk-2"


@pytest.mark.parametrize(
    "rewrite",
    [{"target_version": 1}, {"channel": "frozen"}, {"app_version": "0.0.1"}],
    ids=["target-version", "channel", "app-version"],
)
def test_a_rewritten_request_cannot_make_the_server_sign_a_freeze(
    rewrite: dict[str, object], mitm: MitmProxy, upstream: str, keys: Keys, at_v1: Path, tmp_path: Path
) -> None:
    """The attacker asks the server with the device's own id and nonce, but for version 1 (the one the
    device runs) or as another channel or app version (another offer of the release policy)."""
    relayed, relay = _relay_answer_to(upstream, **rewrite)
    mitm.on_check = relay  # type: ignore[assignment]
    with _client(mitm.address, _device(at_v1, tmp_path), keys, device_id="kiosk-1") as client:
        with pytest.raises(StaleAnswerError, match="rewritten on the way"):
            client.sync()
        _assert_untouched(client, 1)
    assert relayed


# --- the CLI -----------------------------------------------------------------------------------


def _edgerec(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgerec", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_cli_sync_without_keys_exits_nonzero_with_one_line(mitm: MitmProxy, tmp_path: Path) -> None:
    result = _edgerec("sync", "--server", mitm.address, "--model", MODEL, "--data-dir", tmp_path, "--json")
    assert result.returncode == 1 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: NoTrustedKeysError")
    assert "--trusted-key" in lines[0] and "--insecure-skip-verify" in lines[0]
    assert mitm.requests == []


def test_cli_sync_insecure_says_so_in_its_json_and_on_stderr(upstream: str, tmp_path: Path) -> None:
    device = ("--server", upstream, "--model", MODEL, "--data-dir", tmp_path)
    result = _edgerec("sync", *device, "--insecure-skip-verify", "--json")
    assert result.returncode == 0, result.stderr
    synced = json.loads(result.stdout)
    assert (synced["version"], synced["verification"], synced["latest_version"]) == (2, "off", None)
    assert "verification OFF" in result.stderr
    both = _edgerec("sync", *device, "--insecure-skip-verify", "--trusted-key", __file__)
    assert both.returncode == 2 and "exclude each other" in both.stderr
