"""Runs one vector through the SDK's public functions and returns what happened, for the generator's
self-check and ``tests/test_vectors.py``.

A result is ``{"error": <class name>}`` when the SDK raised an :class:`~edgerec.errors.EdgerecError`,
otherwise a kind-specific dict shaped like the vector's ``expect``. Any other exception propagates:
it is a defect whatever the bytes.
"""

from __future__ import annotations

import hashlib
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from edgerec.codecs import apply_patch
from edgerec.device.plan import check_plan
from edgerec.device.storage import InstalledVersion, copy_verified
from edgerec.errors import EdgerecError, ManifestError
from edgerec.manifest import SignedManifest, find_artifact, parse_manifest
from edgerec.tools.vectors.keys import vector_key
from edgerec.trust import TrustedKeys, UpdateVerifier, parse_rfc3339, verify_freshness
from edgerec.v1 import update_pb2

Json = dict[str, Any]


def run_vector(root: Path, vector: Json, *, files: dict[str, bytes] | None = None) -> Json:
    """The outcome of ``vector`` on the files under ``root``; ``files`` replaces some of them by name."""

    def read(name: str) -> bytes:
        return files[name] if files is not None and name in files else (root / name).read_bytes()

    runner = _RUNNERS[vector["kind"]]
    try:
        return runner(vector, read)
    except EdgerecError as exc:
        return {"error": type(exc).__name__}


def _payload(vector: Json, read: Any) -> Json:
    params, inputs = vector["params"], vector["inputs"]
    with tempfile.TemporaryDirectory(prefix="edgerec-vector-") as tmp:
        folder = Path(tmp)
        base = None
        if inputs.get("base") is not None:
            base = folder / "base"
            base.write_bytes(read(inputs["base"]))
        out = folder / "out"
        if params["codec"] == "copy":
            assert base is not None
            copy_verified(base, out, params["target_size"], params["target_sha256"])
        else:
            payload = folder / "payload"
            payload.write_bytes(read(inputs["payload"]))
            apply_patch(
                base,
                payload,
                out,
                codec=params["codec"],
                target_size=params["target_size"],
                target_sha256=params["target_sha256"],
            )
        data = out.read_bytes()
    return {"output_sha256": hashlib.sha256(data).hexdigest(), "output_size": len(data)}


def trusted_keys(params: Json) -> TrustedKeys:
    """The TrustedKeys a vector's parameters name."""
    keys = [vector_key(name).private.public_key() for name in params["trusted_keys"]]
    return TrustedKeys.from_public_keys(keys, threshold=params.get("threshold", 1))


def _now(params: Json) -> datetime:
    return parse_rfc3339(params["now"])


def _manifest(vector: Json, read: Any) -> Json:
    params = vector["params"]
    signed = SignedManifest.FromString(read(vector["inputs"]["signed_manifest"]))
    verifier = UpdateVerifier(params["model"], trusted_keys(params))
    manifest = verifier.verify(signed, activated_version=params["activated_version"], now=_now(params))
    return {"model": manifest.model, "version": manifest.version}


def _freshness(vector: Json, read: Any) -> Json:
    params = vector["params"]
    signed = update_pb2.SignedFreshness.FromString(read(vector["inputs"]["signed_freshness"]))
    statement = verify_freshness(
        signed,
        model=params["model"],
        device_id=params["device_id"],
        nonce=bytes.fromhex(params["nonce_hex"]),
        trusted=trusted_keys(params),
        now=_now(params),
        max_clock_skew=timedelta(seconds=params["max_clock_skew_s"]),
    )
    return {"target_version": statement.target_version, "latest_version": statement.latest_version}


def _answer(vector: Json, read: Any) -> Json:
    params, inputs = vector["params"], vector["inputs"]
    request = update_pb2.CheckUpdateRequest.FromString(read(inputs["request"]))
    response = update_pb2.CheckUpdateResponse.FromString(read(inputs["response"]))
    if params["trusted_keys"]:
        verifier = UpdateVerifier(request.model, trusted_keys(params))
    else:
        verifier = UpdateVerifier.insecure(request.model)
    answer = verifier.verify_answer(
        request,
        response,
        highest_activated=params["highest_activated"],
        now=_now(params),
        reinstallable=params.get("reinstallable"),
    )
    if answer.manifest is None:
        return {"update_available": False}
    assert answer.artifact is not None
    return {"update_available": True, "version": answer.manifest.version, "recipe": answer.artifact.recipe}


def _plan(vector: Json, read: Any) -> Json:
    params, inputs = vector["params"], vector["inputs"]
    response = update_pb2.CheckUpdateResponse.FromString(read(inputs["response"]))
    offered = parse_manifest(response.manifest)
    artifact = find_artifact(offered, response.recipe)
    if artifact is None:  # what verify_answer refuses before a plan is looked at
        raise ManifestError(f"manifest has no {response.recipe!r} artifact")
    current = None
    if inputs.get("current_manifest") is not None:
        manifest = parse_manifest(SignedManifest.FromString(read(inputs["current_manifest"])))
        current_artifact = find_artifact(manifest, params["current_recipe"])
        assert current_artifact is not None
        current = InstalledVersion(manifest.version, params["current_recipe"], manifest, current_artifact, Path("."))
    plan = check_plan(response.payloads, artifact, current, params["offered_codecs"])
    return {"entries": [{"path": p.path, "codec": p.codec} for p in plan]}


_RUNNERS = {"payload": _payload, "manifest": _manifest, "freshness": _freshness, "answer": _answer, "plan": _plan}
KINDS = tuple(_RUNNERS)
