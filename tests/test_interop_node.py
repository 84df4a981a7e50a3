"""A second implementation: the Node.js device client in tests/interop/node, written from
docs/protocol.md, docs/formats.md and protos/ alone, against a real server on loopback.

It syncs v1 (full payloads) then a daily-retrain v2 with the ``tensor`` codec, ending
byte-identical to the registry's files; resumes a cut download; refuses what a man in the middle
rewrites; predicts through the server with the Python SDK's scores; and runs every conformance
vector. Skipped, with the reason, where ``node`` or ``npm`` is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from httptools import PayloadHttpServer
from mitm import MitmProxy
from servertools import registry_server

from edgerec.codecs import make_patch
from edgerec.device import EdgeClient
from edgerec.errors import EdgerecError
from edgerec.registry import Registry
from edgerec.signing import generate_keypair
from edgerec.v1 import update_pb2

pytestmark = pytest.mark.torch

NODE_DIR = Path(__file__).parent / "interop" / "node"
VECTORS = Path(__file__).parent / "vectors"
MODEL = "ctr"
NPM_CI_TIMEOUT_S = 300
NODE_TIMEOUT_S = 120
# A daily retrain: this share of each embedding table's rows moved, and every dense weight a little.
CHANGED_ROW_SHARE = 0.01


@pytest.fixture(scope="session")
def node_client() -> Path:
    """The client's folder with its locked dependencies installed (``npm ci``, once per session)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the Node.js interop client (not found on PATH)")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=NPM_CI_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return NODE_DIR


def run_node(folder: Path, *args: str | Path, timeout: float = NODE_TIMEOUT_S) -> dict[str, Any]:
    """Run the client's CLI; its one JSON answer (``ok`` false carries the refusal's error class)."""
    done = subprocess.run(
        ["node", str(folder / "cli.js"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"no answer from the Node client (exit {done.returncode}):\n{done.stderr}"
    answer: dict[str, Any] = json.loads(lines[-1])
    answer["stderr"] = done.stderr
    assert (done.returncode == 0) == answer["ok"], answer
    return answer


# --- a registry with v1 and a daily retrain of it ----------------------------------------------


def _daily_retrain(v1_onnx: Path, out: Path, seed: int = 11) -> Path:
    """v2 as a day of training leaves v1: 1% of each embedding table's rows moved, dense weights nudged."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(v1_onnx))  # external data, if any, is read from beside it
    rng = np.random.default_rng(seed)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype != np.float32 or array.size < 2:
            continue
        changed = array.copy()
        if array.ndim == 2 and array.shape[0] >= 100:  # an embedding table: the rows seen today
            rows = rng.choice(array.shape[0], max(1, int(array.shape[0] * CHANGED_ROW_SHARE)), replace=False)
            changed[rows] += rng.normal(0, 0.01, (len(rows), array.shape[1])).astype(np.float32)
        else:  # dense layers: every weight moves a little
            changed += rng.normal(0, 1e-3, array.shape).astype(np.float32)
        init.CopyFrom(numpy_helper.from_array(changed, init.name))
    onnx.save_model(model, str(out))
    return out


@dataclass(frozen=True)
class Interop:
    registry: Registry
    key_pem: Path
    key_pub: Path


@pytest.fixture(scope="module")
def interop(tmp_path_factory: pytest.TempPathFactory, model_pair: tuple[Path, Path]) -> Interop:
    from edgerec.server.publish import PublishOptions, publish

    folder = tmp_path_factory.mktemp("interop-node")
    generate_keypair(folder / "server.pem", folder / "server.pub")
    registry = Registry(folder / "registry")
    options = PublishOptions(recipes=("fp32",), no_gate=True, delta_codecs=("tensor",))
    publish(model_pair[0], MODEL, registry, options)
    v1_entry = folder / "registry" / "models" / MODEL / "1" / "fp32" / "model.onnx"
    _daily_retrain(v1_entry, folder / "v2.onnx")
    publish(folder / "v2.onnx", MODEL, registry, options)
    return Interop(registry, folder / "server.pem", folder / "server.pub")


@pytest.fixture
def server(interop: Interop) -> Iterator[str]:
    with registry_server(interop.registry, signing_key=interop.key_pem) as address:
        yield address


def _sync(folder: Path, address: str, data_dir: Path, key: Path, *extra: str | Path) -> dict[str, Any]:
    return run_node(
        folder, "sync", "--server", address, "--model", MODEL, "--data-dir", data_dir, "--trusted-key", key, *extra
    )


def _registry_files(interop: Interop, version: int) -> dict[str, bytes]:
    root = interop.registry.root / "models" / MODEL / str(version)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _installed(answer: dict[str, Any]) -> dict[str, bytes]:
    root = Path(answer["dir"])
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _full_payload_bytes(address: str, version: int) -> int:
    from edgerec.device.transport import ServerConnection

    connection = ServerConnection(address)
    try:
        request = update_pb2.CheckUpdateRequest(
            model=MODEL, target_version=version, recipes=["fp32"], codecs=["full"], nonce=os.urandom(16)
        )
        return sum(p.size for p in connection.check_update(request).payloads)
    finally:
        connection.close()


# --- the tests ---------------------------------------------------------------------------------


def test_health(node_client: Path, server: str) -> None:
    answer = run_node(node_client, "health", "--server", server)
    assert set(answer["status"].values()) == {"SERVING"}, answer


def test_syncs_v1_full_then_v2_tensor_byte_identical(
    node_client: Path, server: str, interop: Interop, tmp_path: Path
) -> None:
    v1 = _sync(node_client, server, tmp_path, interop.key_pub, "--target-version", "1", "--codecs", "full,tensor")
    assert v1["version"] == "1" and {f["codec"] for f in v1["files"]} == {"full"}, v1
    assert _installed(v1) == _artifact(interop, 1)

    v2 = _sync(node_client, server, tmp_path, interop.key_pub, "--codecs", "full,tensor")
    assert v2["version"] == "2", v2
    assert _installed(v2) == _artifact(interop, 2)
    delta = sum(f["payload_bytes"] for f in v2["files"])
    full = _full_payload_bytes(server, 2)
    print(f"v2: full payloads {full} B, tensor delta {delta} B ({delta / full:.1%})")
    assert "tensor" in {f["codec"] for f in v2["files"]}, v2
    assert delta * 10 <= full, (delta, full)

    again = _sync(node_client, server, tmp_path, interop.key_pub)
    assert again == {**again, "updated": False, "version": "2"}


def _artifact(interop: Interop, version: int) -> dict[str, bytes]:
    """The registry's fp32 artifact of ``version``, by the manifest's file paths."""
    files = _registry_files(interop, version)
    return {path: data for path, data in files.items() if path.startswith("fp32/")}


def test_resumes_a_cut_download(node_client: Path, server: str, interop: Interop, tmp_path: Path) -> None:
    with MitmProxy(server) as mitm:
        cut = _sync(
            node_client,
            mitm.address,
            tmp_path,
            interop.key_pub,
            "--codecs",
            "full",
            "--stop-after-bytes",
            "4096",
            "--chunk-bytes",
            "1024",
        )
        assert cut["error"] == "InterruptedError", cut
        done = _sync(node_client, mitm.address, tmp_path, interop.key_pub, "--codecs", "full", "--chunk-bytes", "1024")
        offsets = [r.offset for r in mitm.requests if isinstance(r, update_pb2.FetchPayloadRequest)]
    assert done["version"] == "2" and _installed(done) == _artifact(interop, 2), done
    assert 4096 in offsets, offsets  # the second run asked from the bytes the first one kept


Rewrite = Callable[[update_pb2.CheckUpdateRequest, update_pb2.CheckUpdateResponse], update_pb2.CheckUpdateResponse]


def _with_urls(interop: Interop, http: PayloadHttpServer) -> Rewrite:
    """A plan rewrite listing ``http`` as every payload's URL (the registry's own bytes behind it)."""

    def rewrite(req: Any, resp: update_pb2.CheckUpdateResponse) -> update_pb2.CheckUpdateResponse:
        for p in resp.payloads:
            if p.codec != "copy":
                http.payloads[p.payload_id] = interop.registry.payload_path(MODEL, p.payload_id).read_bytes()
                p.urls.append(http.url(p.payload_id))
        return resp

    return rewrite


def test_downloads_plan_urls_with_range_resume(
    node_client: Path, server: str, interop: Interop, tmp_path: Path
) -> None:
    with MitmProxy(server) as mitm, PayloadHttpServer({}) as http:
        mitm.on_check = _with_urls(interop, http)
        cut = _sync(
            node_client, mitm.address, tmp_path, interop.key_pub, "--codecs", "full", "--stop-after-bytes", "1000"
        )
        assert cut["error"] == "InterruptedError", cut
        done = _sync(node_client, mitm.address, tmp_path, interop.key_pub, "--codecs", "full")
        fetched = [r for r in mitm.requests if isinstance(r, update_pb2.FetchPayloadRequest)]
    assert done["version"] == "2" and _installed(done) == _artifact(interop, 2), done
    assert not fetched  # every byte came over HTTP
    assert "bytes=1000-" in [header for _, header in http.requests], http.requests


def test_falls_back_to_fetch_payload_when_a_url_dies(
    node_client: Path, server: str, interop: Interop, tmp_path: Path
) -> None:
    """A download cut at 1000 bytes resumes over HTTP, the bucket dies 1000 bytes later, FetchPayload finishes."""
    with MitmProxy(server) as mitm, PayloadHttpServer({}) as http:
        mitm.on_check = _with_urls(interop, http)
        v1 = ("--codecs", "full", "--target-version", "1")
        cut = _sync(node_client, mitm.address, tmp_path, interop.key_pub, *v1, "--stop-after-bytes", "1000")
        assert cut["error"] == "InterruptedError", cut
        http.behaviour, http.die_after = "die-after", 1000
        done = _sync(node_client, mitm.address, tmp_path, interop.key_pub, *v1)
        offsets = [r.offset for r in mitm.requests if isinstance(r, update_pb2.FetchPayloadRequest)]
    assert done["version"] == "1" and _installed(done) == _artifact(interop, 1), done
    assert "bytes=1000-" in [header for _, header in http.requests], http.requests
    assert 2000 in offsets, offsets  # FetchPayload went on from the bytes the dead bucket had sent


def _entry(response: update_pb2.CheckUpdateResponse, codec: str | None = None) -> update_pb2.Payload:
    return next(p for p in response.payloads if codec is None or p.codec == codec)


def _tamper_target(req: Any, resp: update_pb2.CheckUpdateResponse) -> update_pb2.CheckUpdateResponse:
    _entry(resp).target_sha256 = "0" * 64
    return resp


def _unoffered_codec(req: Any, resp: update_pb2.CheckUpdateResponse) -> update_pb2.CheckUpdateResponse:
    _entry(resp, "tensor").codec = "bsdiff4"
    return resp


def _withhold(req: Any, resp: update_pb2.CheckUpdateResponse) -> update_pb2.CheckUpdateResponse:
    resp.update_available = False
    del resp.payloads[:]
    return resp


def _drop_freshness(req: Any, resp: update_pb2.CheckUpdateResponse) -> update_pb2.CheckUpdateResponse:
    resp.ClearField("freshness")
    return resp


def _flip_manifest_byte(req: Any, resp: update_pb2.CheckUpdateResponse) -> update_pb2.CheckUpdateResponse:
    data = bytearray(resp.manifest.manifest)
    data[len(data) // 2] ^= 1
    resp.manifest.manifest = bytes(data)
    return resp


def _huge_size(req: Any, resp: update_pb2.CheckUpdateResponse) -> update_pb2.CheckUpdateResponse:
    _entry(resp, "tensor").size = 10**12
    return resp


def _foreign_recipe(req: Any, resp: update_pb2.CheckUpdateResponse) -> update_pb2.CheckUpdateResponse:
    resp.recipe = "int8"
    return resp


@pytest.mark.parametrize(
    ("rewrite", "error"),
    [
        (_tamper_target, "ManifestError"),
        (_unoffered_codec, "ManifestError"),
        (_huge_size, "ManifestError"),
        (_foreign_recipe, "RecipeNotAllowedError"),
        (_withhold, "StaleAnswerError"),
        (_drop_freshness, "FreshnessError"),
        (_flip_manifest_byte, "SignatureError"),
    ],
    ids=lambda x: getattr(x, "__name__", x),
)
def test_refuses_rewritten_answers(
    node_client: Path, server: str, interop: Interop, tmp_path: Path, rewrite: Rewrite, error: str
) -> None:
    v1 = _sync(node_client, server, tmp_path / "node", interop.key_pub, "--target-version", "1")
    before = _installed(v1)
    with _python_device(server, tmp_path / "python", interop) as device:
        device.sync(target_version=1)
    with MitmProxy(server) as mitm:
        mitm.on_check = rewrite
        refused = _sync(node_client, mitm.address, tmp_path / "node", interop.key_pub, "--codecs", "full,tensor")
        fetched = [r for r in mitm.requests if isinstance(r, update_pb2.FetchPayloadRequest)]
        with _python_device(mitm.address, tmp_path / "python", interop) as device, pytest.raises(EdgerecError) as py:
            device.sync()
    assert refused["error"] == error, refused
    assert type(py.value).__name__ == error  # the Python SDK refuses the same answer with the same class
    assert not fetched  # refused before any download
    assert _installed(v1) == before


def _python_device(address: str, data_dir: Path, interop: Interop) -> EdgeClient:
    """The Python SDK's device, offering what the Node client offers."""
    return EdgeClient(
        address, MODEL, data_dir, trusted_keys=[interop.key_pub], recipes=("fp32",), codecs=("full", "tensor")
    )


def test_refuses_hostile_payload_bytes(node_client: Path, server: str, interop: Interop, tmp_path: Path) -> None:
    """A payload the server never made (a valid container of another file), and chunks with a bad CRC."""
    v1 = _sync(node_client, server, tmp_path, interop.key_pub, "--target-version", "1")
    before = _installed(v1)
    other = tmp_path / "other.bin"
    other.write_bytes(b"not the model" * 100)
    make_patch("full", None, other, tmp_path / "other.erp")
    fake = (tmp_path / "other.erp").read_bytes()
    with MitmProxy(server) as mitm:
        fake_id = mitm.serve_payload(fake)

        def swap(req: Any, resp: update_pb2.CheckUpdateResponse) -> update_pb2.CheckUpdateResponse:
            for p in resp.payloads:
                if p.codec != "copy":
                    p.codec, p.payload_id, p.sha256, p.size = "full", fake_id, fake_id, len(fake)
                    p.base_path = p.base_sha256 = ""
            return resp

        mitm.on_check = swap
        refused = _sync(node_client, mitm.address, tmp_path, interop.key_pub, "--codecs", "full")
        assert refused["error"] == "IntegrityError", refused

        def bad_crc(
            req: update_pb2.FetchPayloadRequest, chunks: Iterator[update_pb2.PayloadChunk]
        ) -> Iterator[update_pb2.PayloadChunk]:
            for chunk in chunks:
                chunk.crc32 ^= 1
                yield chunk

        mitm.on_check = None
        mitm.on_fetch = bad_crc
        refused = _sync(node_client, mitm.address, tmp_path, interop.key_pub, "--codecs", "full,tensor")
        assert refused["error"] == "IntegrityError", refused
    assert _installed(v1) == before


def test_predict_scores_equal_the_python_sdk(
    node_client: Path, server: str, request_inputs: dict[str, np.ndarray], tmp_path: Path
) -> None:
    from edgerec.device.transport import ServerConnection

    spec = {
        name: {"dtype": str(a.dtype), "shape": list(a.shape), "values": a.ravel().tolist()}
        for name, a in request_inputs.items()
    }
    (tmp_path / "inputs.json").write_text(json.dumps(spec))
    answer = run_node(
        node_client, "predict", "--server", server, "--model", MODEL, "--inputs", tmp_path / "inputs.json"
    )
    connection = ServerConnection(server)
    try:
        expected = connection.predict(MODEL, request_inputs)
    finally:
        connection.close()
    assert answer["version"] == str(expected.version)
    assert answer["scores"] == list(expected.scores)
    assert np.all(np.isfinite(answer["scores"])) and len(answer["scores"]) == len(expected.scores) > 0


def test_conformance_vectors(node_client: Path) -> None:
    if not (VECTORS / "index.json").is_file():
        pytest.skip("no conformance vectors yet (tests/vectors/index.json is missing)")
    answer = run_node(node_client, "vectors", "--dir", VECTORS, timeout=300)
    failed = [v for v in answer["results"] if not v["passed"]]
    assert answer["results"] and not failed, json.dumps(failed, indent=1)[:4000]
