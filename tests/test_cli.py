"""The ``edgerec`` command, run as a user runs it: a real process against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgerec.registry import Registry
from edgerec.signing import generate_keypair

pytestmark = pytest.mark.torch


def edgerec(*args: str | Path, expect_ok: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "edgerec", *map(str, args)], capture_output=True, text=True, timeout=300
    )
    if expect_ok:
        assert result.returncode == 0, result.stderr
    return result


def test_registry_ls_json(served: tuple[Registry, str]) -> None:
    registry, _ = served
    entries = json.loads(edgerec("registry", "ls", "--registry", registry.root, "--model", "ctr", "--json").stdout)
    assert [e["version"] for e in entries] == [1, 2]
    for entry in entries:
        assert entry["model"] == "ctr" and entry["partial_of"] is None
        assert {a["recipe"] for a in entry["artifacts"]} == {f["recipe"] for f in entry["files"]} == {"fp32", "int8"}
        assert all(len(a["digest"]) == 64 and a["bytes"] > 0 for a in entry["artifacts"])
        for f in entry["files"]:
            path = registry.root / f["path"]
            assert path.stat().st_size == f["size"]


def test_registry_show_json_keeps_sizes_and_versions_numbers(served: tuple[Registry, str]) -> None:
    registry, _ = served
    shown = json.loads(edgerec("registry", "show", "--registry", registry.root, "--model", "ctr", "--json").stdout)
    manifest = shown["manifest"]
    assert manifest["version"] == shown["version"] == 2
    sizes = [f["size"] for a in manifest["artifacts"] for f in a["files"]]
    assert sizes and all(isinstance(size, int) and size > 0 for size in sizes)


def test_sync_and_predict_json(
    served: tuple[Registry, str], tmp_path: Path, request_inputs: dict[str, np.ndarray]
) -> None:
    _, address = served
    data_dir = tmp_path / "device"
    synced = json.loads(
        edgerec(
            *("sync", "--server", address, "--model", "ctr", "--data-dir", data_dir, "--rate", "50mbit"),
            *("--insecure-skip-verify", "--json"),
        ).stdout
    )
    assert synced["version"] == 2 and synced["previous_version"] is None
    assert synced["codec"] == "full" and 0 < synced["payload_bytes"] and synced["full_bytes"] > 0

    request = tmp_path / "request.npz"
    np.savez(request, **request_inputs)  # type: ignore[arg-type]  # numpy stubs reject **arrays
    predicted = json.loads(
        edgerec(
            "predict", "--data-dir", data_dir, "--model", "ctr", "--server", address, "--input", request, "--json"
        ).stdout
    )
    assert predicted["source"] == "local" and predicted["version"] == 2
    assert len(predicted["scores"]) == len(request_inputs["sparse_ids"])
    assert all(0.0 <= s <= 1.0 for s in predicted["scores"])


def test_failure_is_one_line_and_nonzero(served: tuple[Registry, str], tmp_path: Path) -> None:
    _, address = served
    generate_keypair(tmp_path / "server.pem", tmp_path / "server.pub")
    result = edgerec(
        *("sync", "--server", address, "--model", "missing", "--data-dir", tmp_path, "--json"),
        *("--trusted-key", tmp_path / "server.pub"),
        expect_ok=False,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "ModelNotFoundError" in lines[0], result.stderr


def test_publish_an_onnx_file(served: tuple[Registry, str], tmp_path: Path) -> None:
    """An ONNX file with external data is a valid source, as a .pt2 program is."""
    registry, _ = served
    source = registry.file_path("ctr", 2, "fp32/model.onnx")
    target = tmp_path / "registry"
    out = json.loads(
        edgerec("publish", source, "--name", "from-onnx", "--registry", target, "--no-gate", "--json").stdout
    )
    assert out["model"] == "from-onnx" and out["version"] == 1
    published = Registry(target).files("from-onnx", 1)
    original = {f.path: f.sha256 for f in registry.files("ctr", 2)}
    assert {f.path: f.sha256 for f in published} == original, "re-publishing our own ONNX should be byte-stable"
