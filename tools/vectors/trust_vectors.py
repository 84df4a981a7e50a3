"""Trust vectors: signed manifests, signed freshness statements and whole CheckUpdate answers, valid and
broken one rule at a time, each with the result or error class a device must give
(``docs/protocol.md`` section 6). Times are fixed: statements are issued at :data:`ISSUED` and every
vector is verified at its ``now`` parameter (:data:`NOW` unless it says otherwise).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from edgerec.manifest import ArtifactFile, Manifest, SignedManifest, TensorSpec, make_artifact, rfc3339
from edgerec.server.freshness import freshness_statement
from edgerec.signing import FRESHNESS_DOMAIN
from edgerec.tools.vectors.index import IndexWriter, Json
from edgerec.tools.vectors.keys import VectorKey, vector_key
from edgerec.tools.vectors.models import FILES, Version
from edgerec.v1 import manifest_pb2, update_pb2

MODEL = "ctr"
DEVICE = "kiosk-7"
NONCE = bytes(range(16))
ISSUED = datetime(2026, 1, 1, tzinfo=UTC)
NOW = ISSUED + timedelta(minutes=1)
FRESHNESS_TTL = timedelta(minutes=5)
MANIFEST_EXPIRES = "2026-01-08T00:00:00.000000Z"
CLOCK_SKEW_S = 300
TRUSTED = ("root-a", "root-b")
CODECS = ("full", "bsdiff4", "zstd-patch-from", "tensor")


def _key(name: str) -> VectorKey:
    return vector_key(name)


def sign_bytes(data: bytes, *names: str, domain: bytes = b"") -> list[manifest_pb2.Signature]:
    """One signature per key name over ``domain + data``."""
    return [manifest_pb2.Signature(key_id=_key(n).key_id, signature=_key(n).private.sign(domain + data)) for n in names]


def manifest(version: int, files: Version, *, model: str = MODEL, expires_at: str = MANIFEST_EXPIRES) -> Manifest:
    """The reference model's manifest of ``version`` with an ``fp32`` onnxruntime artifact of ``files``
    and a ``tflite_fp32`` LiteRT one (a file that exists only in the manifest)."""
    entries = [ArtifactFile(path=n, size=len(files[n]), sha256=hashlib.sha256(files[n]).hexdigest()) for n in FILES]
    tflite = [ArtifactFile(path="model.tflite", size=1000, sha256=hashlib.sha256(b"tflite %d" % version).hexdigest())]
    return Manifest(
        format_version=1,
        model=model,
        version=version,
        created_at="2026-01-01T00:00:00.000000Z",
        inputs=[
            TensorSpec(name="dense_features", dtype="float32", shape=[-1, 4]),
            TensorSpec(name="sparse_ids", dtype="int64", shape=[-1, 2]),
        ],
        outputs=[TensorSpec(name="score", dtype="float32", shape=[-1])],
        artifacts=[
            make_artifact("fp32", "onnxruntime", "model.onnx", entries),
            make_artifact("tflite_fp32", "litert", "model.tflite", tflite),
        ],
        expires_at=expires_at,
    )


def signed(m: Manifest | bytes, *names: str) -> SignedManifest:
    data = m if isinstance(m, bytes) else m.SerializeToString(deterministic=True)
    return SignedManifest(manifest=data, signatures=sign_bytes(data, *names))


def statement(
    *,
    target: int,
    latest: int | None = None,
    issued: datetime = ISSUED,
    ttl: timedelta = FRESHNESS_TTL,
    request: update_pb2.CheckUpdateRequest | None = None,
    **fields: object,
) -> update_pb2.Freshness:
    """A statement answering ``request`` (the base request by default), as the server makes it."""
    req = request if request is not None else base_request()
    out = freshness_statement(
        req, latest_version=target if latest is None else latest, target_version=target, issued=issued, ttl=ttl
    )
    for name, value in fields.items():
        if name == "labels":
            out.ClearField("labels")
            out.labels.update(value)  # type: ignore[call-overload]
        else:
            setattr(out, name, value)
    return out


def signed_statement(
    s: update_pb2.Freshness | bytes, *names: str, domain: bytes = FRESHNESS_DOMAIN
) -> update_pb2.SignedFreshness:
    data = s if isinstance(s, bytes) else s.SerializeToString(deterministic=True)
    return update_pb2.SignedFreshness(freshness=data, signatures=sign_bytes(data, *names, domain=domain))


def base_request(**fields: object) -> update_pb2.CheckUpdateRequest:
    """What a device running version 1 (fp32) sends, asking the release policy (target 0)."""
    request = update_pb2.CheckUpdateRequest(
        model=MODEL,
        current_version=1,
        current_recipe="fp32",
        runtimes=["onnxruntime"],
        codecs=list(CODECS),
        recipes=["fp32"],
        device_id=DEVICE,
        nonce=NONCE,
    )
    for name, value in fields.items():
        if name == "labels":
            request.labels.update(value)  # type: ignore[call-overload]
        elif isinstance(value, list):
            del getattr(request, name)[:]
            getattr(request, name).extend(value)
        else:
            setattr(request, name, value)
    return request


@dataclass
class Scene:
    """The reference model's two versions, their manifests, and the honest plan from 1 to 2."""

    v1: Version
    v2: Version
    # codec -> (sha256, size) of model.onnx.data's payload; "full/model.onnx": the graph's full payload
    payload_ids: dict[str, tuple[str, int]]

    def manifest(self, version: int, **kw: object) -> Manifest:
        files = self.v1 if version == 1 else self.v2
        return manifest(version, files, **kw)  # type: ignore[arg-type]

    def plan(self, codec: str = "tensor") -> list[update_pb2.Payload]:
        m1, m2 = self.manifest(1), self.manifest(2)
        old = {f.path: f for f in m1.artifacts[0].files}
        out = []
        for f in m2.artifacts[0].files:
            entry = update_pb2.Payload(path=f.path, target_sha256=f.sha256, target_size=f.size)
            if old[f.path].sha256 == f.sha256:
                entry.codec, entry.base_path, entry.base_sha256 = "copy", f.path, f.sha256
            else:
                sha, size = self.payload_ids[codec]
                entry.codec, entry.payload_id, entry.sha256, entry.size = codec, sha, sha, size
                if codec != "full":
                    entry.base_path, entry.base_sha256 = f.path, old[f.path].sha256
            out.append(entry)
        return out

    def response(
        self,
        request: update_pb2.CheckUpdateRequest | None = None,
        *,
        version: int = 2,
        target: int | None = None,
        signed_manifest: SignedManifest | None = None,
        fresh: update_pb2.SignedFreshness | None = None,
        with_freshness: bool = True,
        recipe: str = "fp32",
    ) -> update_pb2.CheckUpdateResponse:
        req = request if request is not None else base_request()
        sm = signed_manifest if signed_manifest is not None else signed(self.manifest(version), "root-a")
        response = update_pb2.CheckUpdateResponse(update_available=True, manifest=sm, recipe=recipe)
        if version == 2 and req.current_version == 1:
            response.payloads.extend(self.plan())
        response.full_bytes = sum(len(b) for b in (self.v2 if version == 2 else self.v1).values())
        response.payload_bytes = sum(p.size for p in response.payloads)
        if with_freshness:
            statement_target = version if target is None else target
            response.freshness.CopyFrom(
                fresh
                if fresh is not None
                else signed_statement(statement(target=statement_target, request=req), "root-a")
            )
        return response


def _params(trusted: Sequence[str] = TRUSTED, threshold: int = 1, now: datetime = NOW) -> Json:
    return {"trusted_keys": list(trusted), "threshold": threshold, "now": rfc3339(now)}


def manifest_vectors(index: IndexWriter, scene: Scene) -> None:
    def add(
        name: str,
        description: str,
        sm: SignedManifest,
        expect: Json,
        *,
        activated: int = 1,
        trusted: Sequence[str] = TRUSTED,
        threshold: int = 1,
        now: datetime = NOW,
    ) -> None:
        path = index.add_file(f"manifests/{name}.pb", sm.SerializeToString(deterministic=True), role="message")
        index.add_vector(
            {
                "id": f"manifest/{name}",
                "kind": "manifest",
                "description": description,
                "inputs": {"signed_manifest": path},
                "params": {"model": MODEL, **_params(trusted, threshold, now), "activated_version": activated},
                "expect": expect,
            }
        )

    ok = {"model": MODEL, "version": 2}
    m2 = scene.manifest(2)
    data = m2.SerializeToString(deterministic=True)
    add("ok", "version 2 signed by root-a, activated version 1", signed(m2, "root-a"), ok)
    add(
        "ok-cosigned-threshold-2",
        "signed by root-a and root-b, threshold 2",
        signed(m2, "root-a", "root-b"),
        ok,
        threshold=2,
    )
    add("ok-stranger-ignored", "signed by stranger (ignored) and root-a", signed(m2, "stranger", "root-a"), ok)
    add("ok-never-expires", "an empty expires_at never expires", signed(scene.manifest(2, expires_at=""), "root-a"), ok)
    add(
        "ok-rfc3339-offset",
        "expires_at with a +01:00 offset and lowercase t (2026-01-01T00:30Z, after now)",
        signed(scene.manifest(2, expires_at="2026-01-01t01:30:00+01:00"), "root-a"),
        ok,
    )
    add(
        "ok-rfc3339-nanoseconds",
        "expires_at with 9 fraction digits and lowercase z",
        signed(scene.manifest(2, expires_at="2026-01-01T00:01:00.123456789z"), "root-a"),
        ok,
    )
    add("ok-first-install", "activated version 0: any version >= 1 passes", signed(m2, "root-a"), ok, activated=0)
    add("unsigned", "no signatures", signed(m2), {"error": "SignatureError"})
    add("unknown-key", "signed by stranger only", signed(m2, "stranger"), {"error": "UnknownKeyError"})
    bad = signed(m2, "root-a")
    bad.signatures[0].signature = bytes([bad.signatures[0].signature[0] ^ 1]) + bad.signatures[0].signature[1:]
    add("bad-signature", "root-a's signature with one bit flipped", bad, {"error": "SignatureError"})
    other = signed(scene.manifest(1), "root-b").signatures[0]
    add(
        "one-bad-one-good",
        "a valid root-a signature and a root-b signature over other bytes",
        SignedManifest(manifest=data, signatures=[*sign_bytes(data, "root-a"), other]),
        {"error": "SignatureError"},
    )
    add(
        "same-key-twice",
        "root-a signs twice",
        SignedManifest(manifest=data, signatures=sign_bytes(data, "root-a", "root-a")),
        {"error": "SignatureError"},
    )
    add(
        "below-threshold",
        "one valid signature, threshold 2",
        signed(m2, "root-a"),
        {"error": "SignatureError"},
        threshold=2,
    )
    borrowed = sign_bytes(data, "stranger")[0]
    borrowed.key_id = _key("root-a").key_id
    add(
        "borrowed-key-id",
        "stranger's signature labelled with root-a's key id",
        SignedManifest(manifest=data, signatures=[borrowed]),
        {"error": "SignatureError"},
    )
    add(
        "freshness-domain",
        "root-a signed the freshness domain prefix + manifest bytes (not a manifest signature)",
        SignedManifest(manifest=data, signatures=sign_bytes(data, "root-a", domain=FRESHNESS_DOMAIN)),
        {"error": "SignatureError"},
    )
    add(
        "not-protobuf",
        "signed bytes that are not a Manifest",
        signed(b"\xff\xff\xff\xff", "root-a"),
        {"error": "ManifestError"},
    )
    broken = scene.manifest(2)
    broken.format_version = 2
    add("format-version-2", "format_version 2", signed(broken, "root-a"), {"error": "ManifestError"})
    broken = scene.manifest(2)
    broken.artifacts[0].digest = "0" * 64
    add("bad-digest", "an artifact digest that is not its files'", signed(broken, "root-a"), {"error": "ManifestError"})
    for label, path in (("dotdot", "../model.onnx"), ("absolute", "/model.onnx"), ("backslash", "a\\b")):
        broken = scene.manifest(2)
        broken.artifacts[0].files[1].path = path
        broken.artifacts[0].digest = make_artifact("x", "y", path, broken.artifacts[0].files).digest
        add(f"unsafe-path-{label}", f"a file path {path!r}", signed(broken, "root-a"), {"error": "ManifestError"})
    broken = scene.manifest(2)
    broken.artifacts[0].files[0].sha256 = broken.artifacts[0].files[0].sha256.upper()
    broken.artifacts[0].digest = make_artifact("x", "y", "", broken.artifacts[0].files).digest
    add("uppercase-sha256", "a file sha256 in uppercase hex", signed(broken, "root-a"), {"error": "ManifestError"})
    broken = scene.manifest(2)
    broken.artifacts[0].entrypoint = "missing.onnx"
    add(
        "entrypoint-not-a-file",
        "an entrypoint that is not one of the files",
        signed(broken, "root-a"),
        {"error": "ManifestError"},
    )
    broken = scene.manifest(2)
    broken.artifacts[1].recipe = "fp32"
    add("recipe-twice", "two artifacts of recipe fp32", signed(broken, "root-a"), {"error": "ManifestError"})
    add(
        "bad-model-name",
        "model name '-ctr'",
        signed(scene.manifest(2, model="-ctr"), "root-a"),
        {"error": "ManifestError"},
    )
    add(
        "wrong-model",
        "a correctly signed manifest of model 'other'",
        signed(scene.manifest(2, model="other"), "root-a"),
        {"error": "WrongModelError"},
    )
    add(
        "rollback-equal",
        "version 2 when version 2 is activated",
        signed(m2, "root-a"),
        {"error": "RollbackError"},
        activated=2,
    )
    add(
        "rollback-older",
        "version 1 when version 2 is activated",
        signed(scene.manifest(1), "root-a"),
        {"error": "RollbackError"},
        activated=2,
    )
    add(
        "expired",
        "expires_at 2025-12-31",
        signed(scene.manifest(2, expires_at="2025-12-31T00:00:00Z"), "root-a"),
        {"error": "ExpiredError"},
    )
    add(
        "expires-now",
        "expires_at equal to now (expired: it must be later than now)",
        signed(scene.manifest(2, expires_at=rfc3339(NOW)), "root-a"),
        {"error": "ExpiredError"},
    )
    for label, text in (("words", "next week"), ("feb-30", "2026-02-30T00:00:00Z"), ("no-zone", "2026-01-08T00:00:00")):
        add(
            f"bad-expires-{label}",
            f"expires_at {text!r}",
            signed(scene.manifest(2, expires_at=text), "root-a"),
            {"error": "ManifestError"},
        )


def freshness_vectors(index: IndexWriter) -> None:
    def add(
        name: str,
        description: str,
        sf: update_pb2.SignedFreshness,
        expect: Json,
        *,
        now: datetime = NOW,
        trusted: Sequence[str] = TRUSTED,
        threshold: int = 1,
    ) -> None:
        path = index.add_file(f"freshness/{name}.pb", sf.SerializeToString(deterministic=True), role="message")
        index.add_vector(
            {
                "id": f"freshness/{name}",
                "kind": "freshness",
                "description": description,
                "inputs": {"signed_freshness": path},
                "params": {
                    "model": MODEL,
                    "device_id": DEVICE,
                    "nonce_hex": NONCE.hex(),
                    **_params(trusted, threshold, now),
                    "max_clock_skew_s": CLOCK_SKEW_S,
                },
                "expect": expect,
            }
        )

    ok = {"target_version": 2, "latest_version": 3}
    good = statement(target=2, latest=3)
    add("ok", "target 2, latest 3, issued a minute before now, signed by root-a", signed_statement(good, "root-a"), ok)
    add(
        "ok-cosigned-threshold-2",
        "signed by root-a and root-b, threshold 2",
        signed_statement(good, "root-a", "root-b"),
        ok,
        threshold=2,
    )
    add(
        "ok-clock-behind",
        "issued 4 minutes after the device's now (within the 5-minute skew)",
        signed_statement(statement(target=2, latest=3, issued=NOW + timedelta(minutes=4)), "root-a"),
        ok,
    )
    add("unsigned", "no signatures", signed_statement(good), {"error": "SignatureError"})
    add("unknown-key", "signed by stranger only", signed_statement(good, "stranger"), {"error": "UnknownKeyError"})
    add(
        "manifest-style-signature",
        "root-a signed the statement's bytes without the domain prefix",
        signed_statement(good, "root-a", domain=b""),
        {"error": "SignatureError"},
    )
    add(
        "below-threshold",
        "one signature, threshold 2",
        signed_statement(good, "root-a"),
        {"error": "SignatureError"},
        threshold=2,
    )
    add(
        "not-protobuf",
        "signed bytes that are not a Freshness",
        signed_statement(b"\xff\xff\xff", "root-a"),
        {"error": "FreshnessError"},
    )
    for label, fields in (
        ("wrong-model", {"model": "other"}),
        ("wrong-device", {"device_id": "kiosk-8"}),
        ("wrong-nonce", {"nonce": bytes(16)}),
        ("no-nonce", {"nonce": b""}),
        ("bad-issued-at", {"issued_at": "yesterday"}),
        ("bad-expires-at", {"expires_at": "2026-01-01 00:05:00Z"}),
    ):
        add(
            label,
            f"a statement with {fields!r}",
            signed_statement(statement(target=2, latest=3, **fields), "root-a"),
            {"error": "FreshnessError"},
        )
    add(
        "expired",
        "expired 4 minutes before now",
        signed_statement(good, "root-a"),
        {"error": "FreshnessError"},
        now=ISSUED + timedelta(minutes=9),
    )
    add(
        "expires-now",
        "expires exactly at now (it must be later)",
        signed_statement(good, "root-a"),
        {"error": "FreshnessError"},
        now=ISSUED + FRESHNESS_TTL,
    )
    add(
        "issued-in-future",
        "issued 6 minutes after the device's now (beyond the 5-minute skew)",
        signed_statement(statement(target=2, latest=3, issued=NOW + timedelta(minutes=6)), "root-a"),
        {"error": "FreshnessError"},
    )
    add(
        "expires-before-issued",
        "expires_at before issued_at",
        signed_statement(statement(target=2, latest=3, expires_at=rfc3339(ISSUED - timedelta(seconds=1))), "root-a"),
        {"error": "FreshnessError"},
    )
    many = signed_statement(good, "root-a")
    many.signatures.extend(sign_bytes(good.SerializeToString(deterministic=True), *(["stranger"] * 200)))
    add("oversize", "more than 16 KiB of signatures", many, {"error": "FreshnessError"})


def answer_vectors(index: IndexWriter, scene: Scene) -> None:
    def add(
        name: str,
        description: str,
        request: update_pb2.CheckUpdateRequest,
        response: update_pb2.CheckUpdateResponse,
        expect: Json,
        *,
        highest: int = 1,
        reinstallable: int | None = None,
        trusted: Sequence[str] = TRUSTED,
    ) -> None:
        req = index.add_file(
            f"answers/{name}.request.pb", request.SerializeToString(deterministic=True), role="message"
        )
        resp = index.add_file(
            f"answers/{name}.response.pb", response.SerializeToString(deterministic=True), role="message"
        )
        index.add_vector(
            {
                "id": f"answer/{name}",
                "kind": "answer",
                "description": description,
                "inputs": {"request": req, "response": resp},
                "params": {**_params(trusted), "highest_activated": highest, "reinstallable": reinstallable},
                "expect": expect,
            }
        )

    update = {"update_available": True, "version": 2, "recipe": "fp32"}
    req = base_request()
    add(
        "ok-update",
        "version 1 -> 2: copy model.onnx, tensor delta of model.onnx.data",
        req,
        scene.response(req),
        update,
    )
    current = base_request(current_version=2)
    add(
        "ok-no-update",
        "the device runs version 2; the statement says 2",
        current,
        _no_update(scene, current, target=2),
        {"update_available": False},
        highest=2,
    )
    add(
        "ok-verification-off",
        "no trusted keys (an explicit opt-out): no freshness needed, signatures unchecked",
        req,
        scene.response(req, with_freshness=False, signed_manifest=signed(scene.manifest(2))),
        update,
        trusted=(),
    )
    tagged = base_request(channel="beta", labels={"region": "eu", "tier": "gold"}, app_version="3.1.0")
    add(
        "ok-channel-labels",
        "channel, labels and app version echoed in the statement",
        tagged,
        scene.response(tagged),
        update,
    )
    pinned_fresh = signed_statement(statement(target=2, latest=3), "root-a")
    add(
        "ok-below-latest",
        "the policy keeps the device at 2 while 3 is the latest",
        req,
        scene.response(req, fresh=pinned_fresh),
        update,
    )
    asked = base_request(target_version=2)
    add("ok-asked-version", "the device asks for version 2", asked, scene.response(asked), update)
    damaged = base_request(current_version=0, current_recipe="")
    add(
        "ok-reinstall-damaged",
        "a device whose copy of 2 is damaged asks as one running nothing: floor 2 - 1",
        damaged,
        scene.response(damaged),
        update,
        highest=2,
    )
    add(
        "ok-reinstallable",
        "version 2, at the floor, is the one version the device may take back",
        req,
        scene.response(req),
        update,
        highest=2,
        reinstallable=2,
    )
    add(
        "no-freshness",
        "a verifying device gets no statement",
        req,
        scene.response(req, with_freshness=False),
        {"error": "FreshnessError"},
    )
    other_nonce = signed_statement(statement(target=2, nonce=bytes(16)), "root-a")
    add(
        "replayed-statement",
        "a statement answering another check (nonce differs)",
        req,
        scene.response(req, fresh=other_nonce),
        {"error": "FreshnessError"},
    )
    add(
        "withheld",
        "'no update' to a device at 1 while the statement says run 2",
        req,
        _no_update(scene, req, target=2),
        {"error": "StaleAnswerError"},
    )
    add(
        "no-update-for-nothing",
        "'no update' to a device that runs nothing",
        damaged,
        _no_update(scene, damaged, target=0),
        {"error": "StaleAnswerError"},
    )
    add(
        "swapped",
        "version 2 offered while the statement says run 3",
        req,
        scene.response(req, target=3),
        {"error": "StaleAnswerError"},
    )
    rewritten = signed_statement(statement(target=1, request=base_request(target_version=1)), "root-a")
    add(
        "request-rewritten",
        "the device asked the policy (0); the statement answers a request for version 1",
        req,
        scene.response(req, version=1, fresh=rewritten),
        {"error": "StaleAnswerError"},
    )
    add(
        "asked-version-not-answered",
        "the device asked for 2; the statement echoes 2 but answers 3",
        asked,
        scene.response(asked, fresh=signed_statement(statement(target=3, request=asked), "root-a")),
        {"error": "StaleAnswerError"},
    )
    add(
        "channel-rewritten",
        "the device follows beta; the statement answers stable",
        tagged,
        scene.response(tagged, fresh=signed_statement(statement(target=2), "root-a")),
        {"error": "StaleAnswerError"},
    )
    add(
        "labels-rewritten",
        "the statement's labels differ from the request's",
        tagged,
        scene.response(
            tagged,
            fresh=signed_statement(
                statement(target=2, request=tagged, labels={"region": "us", "tier": "gold"}), "root-a"
            ),
        ),
        {"error": "StaleAnswerError"},
    )
    at2 = base_request(current_version=2)
    add(
        "rollback",
        "a device at 2 (highest 2) offered version 1, statement agreeing",
        at2,
        scene.response(at2, version=1, target=1),
        {"error": "RollbackError"},
        highest=2,
    )
    add(
        "replay-same-version",
        "a device at 2 offered version 2 again as an update",
        at2,
        scene.response(at2, version=2),
        {"error": "RollbackError"},
        highest=2,
    )
    add(
        "reinstall-too-old",
        "a device running nothing (highest 3) offered version 1: the floor is 2",
        damaged,
        scene.response(damaged, version=1),
        {"error": "RollbackError"},
        highest=3,
    )
    add(
        "recipe-not-asked",
        "the device asked for fp32; the answer offers tflite_fp32",
        req,
        scene.response(req, recipe="tflite_fp32"),
        {"error": "RecipeNotAllowedError"},
    )
    litert = base_request(recipes=["tflite_fp32", "fp32"])
    add(
        "runtime-not-listed",
        "tflite_fp32 allowed, but its runtime litert is not one the device listed",
        litert,
        scene.response(litert, recipe="tflite_fp32"),
        {"error": "RecipeNotAllowedError"},
    )
    defaults = base_request(recipes=[])
    add(
        "recipe-not-in-manifest",
        "no recipes sent (int8, fp32 by default); the answer offers int8, which the manifest lacks",
        defaults,
        scene.response(defaults, recipe="int8"),
        {"error": "ManifestError"},
    )
    add(
        "manifest-expired",
        "the offered manifest expired",
        req,
        scene.response(req, signed_manifest=signed(scene.manifest(2, expires_at="2025-12-31T00:00:00Z"), "root-a")),
        {"error": "ExpiredError"},
    )
    add(
        "manifest-unknown-key",
        "the offered manifest is signed by stranger only",
        req,
        scene.response(req, signed_manifest=signed(scene.manifest(2), "stranger")),
        {"error": "UnknownKeyError"},
    )
    add(
        "manifest-wrong-model",
        "the offered manifest is model 'other'",
        req,
        scene.response(req, signed_manifest=signed(scene.manifest(2, model="other"), "root-a")),
        {"error": "WrongModelError"},
    )


def _no_update(scene: Scene, request: update_pb2.CheckUpdateRequest, *, target: int) -> update_pb2.CheckUpdateResponse:
    response = update_pb2.CheckUpdateResponse(
        update_available=False, manifest=signed(scene.manifest(max(target, 1)), "root-a"), recipe="fp32"
    )
    response.freshness.CopyFrom(signed_statement(statement(target=target, request=request), "root-a"))
    return response
