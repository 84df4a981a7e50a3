"""The conformance vectors in tests/vectors: the Python SDK passes every one, they are what the
generator makes today, and damaging them gives a typed edgerec error or the exact expected output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgerec import errors
from edgerec.manifest import SignedManifest
from edgerec.tools.vectors import generate, load_index, run_vector
from edgerec.tools.vectors.generate import error_parents
from edgerec.tools.vectors.run import KINDS
from edgerec.v1 import update_pb2

VECTORS = Path(__file__).parent / "vectors"
INDEX = load_index(VECTORS)
BY_ID = {vector["id"]: vector for vector in INDEX["vectors"]}


def _expected(vector: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in vector["expect"].items() if k != "output"}


@pytest.mark.parametrize("vid", sorted(BY_ID))
def test_the_sdk_passes_the_vector(vid: str) -> None:
    vector = BY_ID[vid]
    assert run_vector(VECTORS, vector) == _expected(vector)


def test_the_index_is_consistent() -> None:
    for name, entry in INDEX["files"].items():
        data = (VECTORS / name).read_bytes()
        assert len(data) == entry["size"], name
    for vector in INDEX["vectors"]:
        assert vector["kind"] in KINDS
        error = vector["expect"].get("error")
        assert error is None or isinstance(getattr(errors, error, None), type), vector["id"]
        output = vector["expect"].get("output")
        if output is not None:
            assert INDEX["files"][output]["sha256"] == vector["expect"]["output_sha256"]
    # Classes added to edgerec.errors later need no new vectors; the ones listed must still be right.
    current = error_parents()
    assert {name: current.get(name) for name in INDEX["errors"]} == INDEX["errors"]
    listed = {name for name in INDEX["files"]} | {"index.json", "README.md"}
    on_disk = {p.relative_to(VECTORS).as_posix() for p in VECTORS.rglob("*") if p.is_file()}
    assert on_disk == listed
    assert sum(entry["size"] for entry in INDEX["files"].values()) < 2_000_000


def test_every_codec_and_error_class_of_the_device_is_covered() -> None:
    from edgerec.codecs import CODEC_NAMES

    payloads = [v for v in INDEX["vectors"] if v["kind"] == "payload"]
    assert {v["params"]["codec"] for v in payloads if "error" not in v["expect"]} >= {*CODEC_NAMES, "copy"}
    raised = {v["expect"].get("error") for v in INDEX["vectors"]}
    assert raised >= {"PatchError", "WrongBaseError", "IntegrityError"}


@pytest.mark.torch
def test_the_checked_in_vectors_are_what_the_generator_makes(tmp_path: Path) -> None:
    """Stale vectors fail here: regenerate with ``make vectors``.

    Encoders' bytes may change with library versions (role "payload"), so those files are compared
    by what they decode to (the generator checks every vector's outcome) and everything else byte
    for byte.
    """
    pytest.importorskip("torch")
    fresh = generate(tmp_path / "vectors")
    checked_in = load_index(VECTORS)

    def semantic(document: dict[str, Any]) -> str:
        files = {
            name: entry if entry["role"] != "payload" else {"role": "payload"}
            for name, entry in document["files"].items()
        }
        return json.dumps({**document, "files": files, "errors": None}, sort_keys=True)

    assert semantic(fresh) == semantic(checked_in)


# --- damage: a typed error or the exact output, never anything else -----------------------------

VALID_CONTAINERS = sorted(
    vid
    for vid, v in BY_ID.items()
    if v["kind"] == "payload" and v["inputs"].get("payload") and "error" not in v["expect"]
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(vid=st.sampled_from(VALID_CONTAINERS), data=st.data())
def test_a_damaged_container_gives_a_typed_error_or_the_exact_output(vid: str, data: st.DataObject) -> None:
    vector = BY_ID[vid]
    name = vector["inputs"]["payload"]
    container = bytearray((VECTORS / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        position = data.draw(st.integers(0, len(container) * 8 - 1), label="bit")
        container[position // 8] ^= 1 << (position % 8)
    result = run_vector(VECTORS, vector, files={name: bytes(container)})
    assert result == _expected(vector) or set(result) == {"error"}


MESSAGES = {"manifest": "signed_manifest", "freshness": "signed_freshness", "answer": "response", "plan": "response"}
SIGNED_MESSAGES = sorted(
    vid for vid, v in BY_ID.items() if v["kind"] in MESSAGES and (v["kind"] != "answer" or v["params"]["trusted_keys"])
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(vid=st.sampled_from(SIGNED_MESSAGES), data=st.data())
def test_a_damaged_message_gives_a_typed_error_or_the_same_answer(vid: str, data: st.DataObject) -> None:
    """Bit flips in a signed manifest, a freshness statement, an answer or a plan: never another exception;
    and from a valid vector never another success (a flip that passes must not change what is installed).
    A broken vector may pass after a flip that repairs it (a bad signature's key id becomes unknown)."""
    vector = BY_ID[vid]
    name = vector["inputs"][MESSAGES[vector["kind"]]]
    message = bytearray((VECTORS / name).read_bytes())
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        position = data.draw(st.integers(0, len(message) * 8 - 1), label="bit")
        message[position // 8] ^= 1 << (position % 8)
    outer = update_pb2.CheckUpdateResponse if MESSAGES[vector["kind"]] == "response" else None
    try:
        (outer or {"manifest": SignedManifest, "freshness": update_pb2.SignedFreshness}[vector["kind"]]).FromString(
            bytes(message)
        )
    except DecodeError:
        return  # not a message at all: the gRPC layer refuses it before any edgerec rule runs
    result = run_vector(VECTORS, vector, files={name: bytes(message)})
    assert result == _expected(vector) or set(result) == {"error"} or "error" in vector["expect"]
