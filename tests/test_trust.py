"""Attacks on the update channel, each a short in-memory test of edgerec.trust; key files; the keys CLI.

Every attack a hostile or broken server could mount on a manifest (forged, replayed,
expired, mixed up, oversized, signed by the wrong keys) must end in its own typed error.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import stat
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from edgerec.artifacts import DEFAULT_RECIPES
from edgerec.cli.keys import keys
from edgerec.errors import (
    EdgerecError,
    ExpiredError,
    FreshnessError,
    ManifestError,
    RecipeNotAllowedError,
    RollbackError,
    SignatureError,
    SigningKeyError,
    StaleAnswerError,
    TrustError,
    UnknownKeyError,
    WrongModelError,
)
from edgerec.manifest import (
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    ArtifactFile,
    Manifest,
    SignedManifest,
    make_artifact,
    sign_nothing,
)
from edgerec.signing import (
    add_signature,
    freshness_message,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    sign_freshness,
    sign_manifest,
)
from edgerec.trust import (
    MAX_CLOCK_SKEW,
    MAX_FRESHNESS_BYTES,
    Freshness,
    SignedFreshness,
    TrustedKeys,
    UpdateVerifier,
    VerifiedAnswer,
    parse_rfc3339,
    verify_freshness,
    verify_manifest,
)
from edgerec.v1 import manifest_pb2
from edgerec.v1.update_pb2 import CheckUpdateRequest, CheckUpdateResponse

OLD = Ed25519PrivateKey.generate()
NEW = Ed25519PrivateKey.generate()
STRANGER = Ed25519PrivateKey.generate()
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ACTIVATED = 2


def _manifest(*, model: str = "ctr", version: int = 3, expires_at: str = "") -> Manifest:
    files = [ArtifactFile(path="int8/model.onnx", size=10, sha256="a" * 64)]
    return Manifest(
        format_version=FORMAT_VERSION,
        model=model,
        version=version,
        created_at="2026-06-01T00:00:00Z",
        expires_at=expires_at,
        artifacts=[make_artifact("int8", "onnxruntime", "int8/model.onnx", files)],
    )


def _signed(manifest: Manifest, *signers: Ed25519PrivateKey) -> SignedManifest:
    signed = sign_manifest(manifest, signers[0])
    for signer in signers[1:]:
        signed = add_signature(signed, signer)
    return signed


def _sign_bytes(data: bytes, *signers: Ed25519PrivateKey) -> SignedManifest:
    """Signs any bytes, well-formed manifest or not: a trusted but careless (or compromised) signer."""
    signatures = [manifest_pb2.Signature(key_id=key_id(k.public_key()), signature=k.sign(data)) for k in signers]
    return SignedManifest(manifest=data, signatures=signatures)


def _trusting(*signers: Ed25519PrivateKey, threshold: int = 1) -> TrustedKeys:
    return TrustedKeys.from_public_keys([k.public_key() for k in signers], threshold=threshold)


def _verify(
    signed: SignedManifest,
    trusted: TrustedKeys | None = None,
    *,
    model: str = "ctr",
    activated: int = ACTIVATED,
    now: datetime = NOW,
    max_bytes: int = MAX_MANIFEST_BYTES,
) -> Manifest:
    return verify_manifest(
        signed,
        model=model,
        trusted=_trusting(OLD) if trusted is None else trusted,
        activated_version=activated,
        now=now,
        max_bytes=max_bytes,
    )


def _flip(data: bytes, position: int, mask: int = 0x01) -> bytes:
    mutated = bytearray(data)
    mutated[position % len(mutated)] ^= mask
    return bytes(mutated)


# --- the happy path --------------------------------------------------------------------


def test_a_signed_manifest_verifies_to_exactly_the_signed_bytes() -> None:
    signed = _signed(_manifest(), OLD)
    manifest = _verify(signed)
    assert manifest == _manifest()
    assert manifest.SerializeToString(deterministic=True) == signed.manifest


def test_the_verifier_object_and_the_function_agree() -> None:
    signed = _signed(_manifest(), OLD)
    verifier = UpdateVerifier("ctr", _trusting(OLD))
    assert verifier.verify(signed, activated_version=ACTIVATED, now=NOW) == _verify(signed)


# --- forged and misplaced signatures ---------------------------------------------------


@pytest.mark.parametrize("position", [0, 17, 31, 32, 63])
def test_a_signature_with_a_flipped_bit_is_rejected(position: int) -> None:
    signed = _signed(_manifest(), OLD)
    signed.signatures[0].signature = _flip(signed.signatures[0].signature, position)
    with pytest.raises(SignatureError, match="invalid signature"):
        _verify(signed)


@pytest.mark.parametrize("signature", [b"", b"\x00" * 64, b"\x00" * 63, b"\xff" * 65])
def test_a_malformed_signature_by_a_trusted_key_is_rejected(signature: bytes) -> None:
    signed = _signed(_manifest(), OLD)
    signed.signatures[0].signature = signature
    with pytest.raises(SignatureError):
        _verify(signed)


def test_manifest_bytes_changed_after_signing_are_rejected() -> None:
    signed = _signed(_manifest(), OLD)
    signed.manifest = _flip(signed.manifest, 5)
    with pytest.raises(SignatureError):
        _verify(signed)


def test_a_valid_signature_over_different_bytes_is_rejected() -> None:
    # A genuine signature of version 4, replayed onto (otherwise well-formed) version 5 bytes.
    genuine = _signed(_manifest(version=4), OLD)
    forged = SignedManifest(manifest=sign_nothing(_manifest(version=5)).manifest, signatures=genuine.signatures)
    with pytest.raises(SignatureError):
        _verify(forged)


def test_a_signature_claiming_a_trusted_key_id_but_made_by_another_key_is_rejected() -> None:
    signed = _signed(_manifest(), STRANGER)
    signed.signatures[0].key_id = key_id(OLD.public_key())
    with pytest.raises(SignatureError):
        _verify(signed)


def test_a_signature_by_an_unknown_key_is_rejected_and_named() -> None:
    with pytest.raises(UnknownKeyError, match=key_id(STRANGER.public_key())[:16]):
        _verify(_signed(_manifest(), STRANGER))


def test_signatures_by_unknown_keys_beside_a_trusted_one_are_ignored() -> None:
    signed = _signed(_manifest(), STRANGER, OLD)
    signed.signatures.append(manifest_pb2.Signature(key_id="not-a-key", signature=b"junk"))
    assert _verify(signed) == _manifest()


def test_an_unsigned_manifest_is_rejected() -> None:
    with pytest.raises(SignatureError, match="unsigned"):
        _verify(sign_nothing(_manifest()))


def test_threshold_two_with_one_signature_is_rejected() -> None:
    with pytest.raises(SignatureError, match="1 valid signature"):
        _verify(_signed(_manifest(), OLD), _trusting(OLD, NEW, threshold=2))


def test_threshold_two_with_two_distinct_trusted_signatures_is_accepted() -> None:
    assert _verify(_signed(_manifest(), OLD, NEW), _trusting(OLD, NEW, threshold=2)) == _manifest()


def test_threshold_two_cannot_be_met_by_one_key_signing_twice() -> None:
    signed = _signed(_manifest(), OLD)
    signed.signatures.append(signed.signatures[0])
    with pytest.raises(SignatureError, match="more than one signature"):
        _verify(signed, _trusting(OLD, NEW, threshold=2))


def test_threshold_two_is_not_met_by_a_trusted_key_and_a_stranger() -> None:
    with pytest.raises(SignatureError, match="2 required"):
        _verify(_signed(_manifest(), OLD, STRANGER), _trusting(OLD, NEW, threshold=2))


# --- key rotation ----------------------------------------------------------------------


def test_rotation_a_device_trusting_the_old_key_accepts_old_signed() -> None:
    assert _verify(_signed(_manifest(), OLD), _trusting(OLD)) == _manifest()


def test_rotation_a_device_trusting_the_old_key_rejects_new_signed() -> None:
    with pytest.raises(UnknownKeyError):
        _verify(_signed(_manifest(), NEW), _trusting(OLD))


def test_rotation_adding_the_new_key_to_the_trusted_set_accepts_new_signed() -> None:
    assert _verify(_signed(_manifest(), NEW), _trusting(OLD, NEW)) == _manifest()


@pytest.mark.parametrize("device_keys", [(OLD,), (NEW,), (OLD, NEW)], ids=["old", "new", "both"])
def test_rotation_a_co_signed_manifest_is_accepted_by_devices_trusting_either_key(
    device_keys: tuple[Ed25519PrivateKey, ...],
) -> None:
    assert _verify(_signed(_manifest(), OLD, NEW), _trusting(*device_keys)) == _manifest()


def test_rotation_after_the_old_key_is_dropped_old_signed_is_rejected() -> None:
    with pytest.raises(UnknownKeyError):
        _verify(_signed(_manifest(), OLD), _trusting(NEW))


def test_co_signing_keeps_the_bytes_and_replaces_a_signature_by_the_same_key() -> None:
    signed = _signed(_manifest(), OLD)
    co_signed = add_signature(add_signature(signed, NEW), NEW)
    assert co_signed.manifest == signed.manifest
    assert [s.key_id for s in co_signed.signatures] == [key_id(OLD.public_key()), key_id(NEW.public_key())]
    assert len(signed.signatures) == 1  # the input is not modified


def test_co_signing_refuses_bytes_that_are_not_a_manifest() -> None:
    with pytest.raises(ManifestError):
        add_signature(SignedManifest(manifest=b"\xff\xff"), NEW)


# --- replay, mix-up and freshness ------------------------------------------------------


@pytest.mark.parametrize("activated", [3, 7])
def test_a_replayed_equal_or_older_version_is_rejected_naming_both_versions(activated: int) -> None:
    with pytest.raises(RollbackError) as caught:
        _verify(_signed(_manifest(version=3), OLD), activated=activated)
    assert "version 3" in str(caught.value)
    assert f"activated version {activated}" in str(caught.value)


def test_the_first_version_is_accepted_by_a_device_with_none_activated() -> None:
    assert _verify(_signed(_manifest(version=1), OLD), activated=0).version == 1


def test_a_manifest_of_another_model_is_rejected() -> None:
    with pytest.raises(WrongModelError, match="'news'"):
        _verify(_signed(_manifest(model="news"), OLD))


def test_an_expired_manifest_is_rejected() -> None:
    signed = sign_manifest(_manifest(), OLD, expires_in=timedelta(hours=1), now=NOW - timedelta(hours=2))
    with pytest.raises(ExpiredError):
        _verify(signed)


def test_a_manifest_is_expired_at_its_expiry_instant_and_valid_just_before() -> None:
    signed = sign_manifest(_manifest(), OLD, expires_in=timedelta(days=7), now=NOW)
    expires_at = NOW + timedelta(days=7)
    assert _verify(signed, now=expires_at - timedelta(microseconds=1)).expires_at
    with pytest.raises(ExpiredError):
        _verify(signed, now=expires_at)


def test_an_empty_expires_at_never_expires() -> None:
    assert _verify(_signed(_manifest(), OLD), now=datetime(9999, 1, 1, tzinfo=UTC)) == _manifest()


@pytest.mark.parametrize("expires_at", ["tomorrow", "2026-13-01T00:00:00Z", "2027-01-01T00:00:00", "2027-01-01"])
def test_an_unparseable_expires_at_is_a_manifest_error(expires_at: str) -> None:
    with pytest.raises(ManifestError, match="RFC 3339"):
        _verify(_signed(_manifest(expires_at=expires_at), OLD))


@pytest.mark.parametrize(
    "text",
    ["2026-06-01T14:00:00+02:00", "2026-06-01t12:00:00z", "2026-06-01T12:00:00.000000000Z", "2026-06-01T12:00:00Z"],
)
def test_rfc3339_forms_parse_to_the_same_instant(text: str) -> None:
    assert parse_rfc3339(text) == NOW


# --- bounds and order ------------------------------------------------------------------


def test_an_oversized_manifest_is_rejected_before_its_signatures_are_read() -> None:
    big = _manifest()
    big.annotations["padding"] = "x" * MAX_MANIFEST_BYTES
    with pytest.raises(ManifestError, match="exceeds"):
        _verify(sign_nothing(big))  # unsigned, yet the size is what is reported


def test_the_bound_covers_the_signatures_too() -> None:
    signed = _signed(_manifest(), OLD)
    limit = signed.ByteSize()
    assert _verify(signed, max_bytes=limit) == _manifest()
    signed.signatures.append(manifest_pb2.Signature(key_id="junk", signature=b"s" * 64))
    with pytest.raises(ManifestError, match="exceeds"):
        _verify(signed, max_bytes=limit)


def test_signatures_are_checked_before_the_bytes_are_parsed() -> None:
    signed = _sign_bytes(b"\xff\xff not a manifest", STRANGER)
    with pytest.raises(UnknownKeyError):
        _verify(signed)
    with pytest.raises(ManifestError, match="do not parse"):
        _verify(_sign_bytes(signed.manifest, OLD))


def test_a_trusted_signer_cannot_make_a_malformed_manifest_acceptable() -> None:
    malformed = _manifest()
    malformed.artifacts[0].digest = "0" * 64
    with pytest.raises(ManifestError, match="digest"):
        _verify(_sign_bytes(malformed.SerializeToString(deterministic=True), OLD))


def test_checks_run_in_the_documented_order() -> None:
    # Every later rule is broken too; the earliest one is reported.
    stale_foreign_expired = _manifest(model="news", version=1, expires_at="2000-01-01T00:00:00Z")
    signed = _signed(stale_foreign_expired, OLD)
    forged = SignedManifest()
    forged.CopyFrom(signed)
    forged.signatures[0].signature = _flip(forged.signatures[0].signature, 0)
    with pytest.raises(ManifestError, match="exceeds"):
        _verify(forged, max_bytes=10)
    with pytest.raises(SignatureError):
        _verify(forged)
    with pytest.raises(WrongModelError):
        _verify(signed)
    with pytest.raises(RollbackError):
        _verify(signed, model="news")
    with pytest.raises(ExpiredError):
        _verify(signed, model="news", activated=0)


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone"):
        _verify(_signed(_manifest(), OLD), now=NOW.replace(tzinfo=None))


# --- the trusted set -------------------------------------------------------------------


def test_trusted_keys_compute_ids_from_the_keys_and_copy_the_mapping() -> None:
    keys = {key_id(OLD.public_key()): OLD.public_key()}
    trusted = TrustedKeys(keys)
    keys[key_id(NEW.public_key())] = NEW.public_key()
    assert list(trusted.keys) == [key_id(OLD.public_key())]
    assert key_id(OLD.public_key())[:8] in repr(trusted)


def test_trusted_keys_refuse_a_key_listed_under_another_id() -> None:
    with pytest.raises(SigningKeyError, match="has the id"):
        TrustedKeys({key_id(OLD.public_key()): NEW.public_key()})


def test_trusted_keys_refuse_a_key_of_another_type() -> None:
    with pytest.raises(SigningKeyError, match="not an Ed25519"):
        TrustedKeys({"x": ed448.Ed448PrivateKey.generate().public_key()})  # type: ignore[dict-item]


@pytest.mark.parametrize("threshold", [0, 3])
def test_trusted_keys_refuse_an_unreachable_threshold(threshold: int) -> None:
    with pytest.raises(ValueError, match="threshold"):
        _trusting(OLD, NEW, threshold=threshold)


def test_the_same_key_twice_counts_once() -> None:
    with pytest.raises(ValueError, match="threshold"):
        _trusting(OLD, OLD, threshold=2)


# --- signing ---------------------------------------------------------------------------


def test_signing_sets_expires_at_on_a_copy() -> None:
    manifest = _manifest()
    signed = sign_manifest(manifest, OLD, expires_in=timedelta(days=1), now=NOW)
    assert manifest.expires_at == ""
    assert _verify(signed).expires_at == "2026-06-02T12:00:00.000000Z"


def test_signing_is_deterministic() -> None:
    assert sign_manifest(_manifest(), OLD) == sign_manifest(_manifest(), OLD)


def test_signing_refuses_a_malformed_manifest() -> None:
    with pytest.raises(ManifestError):
        sign_manifest(_manifest(model="../x"), OLD)


@pytest.mark.parametrize("expires_in", [timedelta(0), timedelta(seconds=-1)])
def test_signing_refuses_a_non_positive_lifetime(expires_in: timedelta) -> None:
    with pytest.raises(ValueError, match="positive"):
        sign_manifest(_manifest(), OLD, expires_in=expires_in)


def test_signing_with_a_key_of_another_type_is_a_signing_key_error() -> None:
    with pytest.raises(SigningKeyError):
        sign_manifest(_manifest(), ed448.Ed448PrivateKey.generate())  # type: ignore[arg-type]


def test_key_id_is_the_sha256_of_the_raw_public_key() -> None:
    raw = OLD.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert key_id(OLD.public_key()) == hashlib.sha256(raw).hexdigest()


# --- hypothesis: whatever the bytes, only typed errors -------------------------------------

_TRUSTED_IDS = [key_id(OLD.public_key()), key_id(NEW.public_key())]
_signatures = st.lists(
    st.builds(
        manifest_pb2.Signature,
        key_id=st.one_of(st.sampled_from(_TRUSTED_IDS), st.text(max_size=70)),
        signature=st.binary(max_size=80),
    ),
    max_size=4,
)


@given(st.binary(max_size=1024), _signatures, st.integers(0, 2**64 - 1), st.sampled_from([1, 2]))
def test_arbitrary_signed_manifest_fields_give_only_typed_errors(
    data: bytes, signatures: list[manifest_pb2.Signature], activated: int, threshold: int
) -> None:
    signed = SignedManifest(manifest=data, signatures=signatures)
    with pytest.raises((TrustError, ManifestError)):
        _verify(signed, _trusting(OLD, NEW, threshold=threshold), activated=activated)


@given(st.binary(max_size=1024), st.integers(0, 10), st.sampled_from(["ctr", "news"]))
def test_arbitrary_bytes_signed_by_a_trusted_key_give_a_checked_manifest_or_a_typed_error(
    data: bytes, activated: int, model: str
) -> None:
    try:
        manifest = _verify(_sign_bytes(data, OLD), activated=activated, model=model)
    except (TrustError, ManifestError):
        return
    assert manifest.model == model and manifest.version > activated and manifest.artifacts


_CO_SIGNED = add_signature(add_signature(_signed(_manifest(expires_at="2030-01-01T00:00:00Z"), OLD), STRANGER), NEW)
_CO_SIGNED_WIRE = _CO_SIGNED.SerializeToString()


@given(st.integers(0, len(_CO_SIGNED_WIRE) - 1), st.integers(1, 255), st.booleans())
def test_a_mutated_signed_manifest_is_rejected_with_a_typed_error_or_is_the_original(
    position: int, mask: int, truncate: bool
) -> None:
    wire = _CO_SIGNED_WIRE[:position] if truncate else _flip(_CO_SIGNED_WIRE, position, mask)
    signed = SignedManifest()
    try:
        signed.ParseFromString(wire)
    except DecodeError:
        return  # the transport's parser refuses it before the verifier sees it
    try:
        manifest = _verify(signed, _trusting(OLD, NEW, threshold=2))
    except (TrustError, ManifestError):
        return
    assert manifest.SerializeToString(deterministic=True) == _CO_SIGNED.manifest


@given(st.text(max_size=40))
def test_arbitrary_expires_at_gives_an_aware_time_or_a_manifest_error(text: str) -> None:
    try:
        when = parse_rfc3339(text)
    except ManifestError:
        return
    assert when.tzinfo is not None


# --- key files -------------------------------------------------------------------------


def test_key_files_round_trip(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "signing.pem", tmp_path / "signing.pub"
    kid = generate_keypair(private_path, public_path)
    private_key, public_key = load_private_key(private_path), load_public_key(public_path)
    assert key_id(public_key) == key_id(private_key.public_key()) == kid
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert b"PRIVATE" not in public_path.read_bytes()
    assert _verify(sign_manifest(_manifest(), private_key), TrustedKeys.from_public_keys([public_key])) == _manifest()


@pytest.mark.parametrize("existing", ["private", "public"])
def test_generating_refuses_to_overwrite_either_file(tmp_path: Path, existing: str) -> None:
    paths = {"private": tmp_path / "k.pem", "public": tmp_path / "k.pub"}
    paths[existing].write_bytes(b"precious")
    with pytest.raises(SigningKeyError, match="overwrite"):
        generate_keypair(paths["private"], paths["public"])
    assert paths[existing].read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir()] == [paths[existing].name]


def test_generating_refuses_the_same_path_twice(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="differ"):
        generate_keypair(tmp_path / "k", tmp_path / "k")
    assert not (tmp_path / "k").exists()


_OtherPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed448.Ed448PrivateKey
_AnyPublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed448.Ed448PublicKey | Ed25519PublicKey


def _pem_private(key: _OtherPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_public(key: _AnyPublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


_OTHER_PRIVATE_KEYS: dict[str, _OtherPrivateKey] = {
    "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": ec.generate_private_key(ec.SECP256R1()),
    "ed448": ed448.Ed448PrivateKey.generate(),
}


@pytest.mark.parametrize("kind", sorted(_OTHER_PRIVATE_KEYS))
def test_keys_of_another_type_are_signing_key_errors(tmp_path: Path, kind: str) -> None:
    other = _OTHER_PRIVATE_KEYS[kind]
    (tmp_path / "private.pem").write_bytes(_pem_private(other))
    (tmp_path / "public.pem").write_bytes(_pem_public(other.public_key()))
    with pytest.raises(SigningKeyError, match="not an Ed25519"):
        load_private_key(tmp_path / "private.pem")
    with pytest.raises(SigningKeyError, match="not an Ed25519"):
        load_public_key(tmp_path / "public.pem")


def _encrypted_pem() -> bytes:
    return OLD.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )


@pytest.mark.parametrize(
    ("content", "loader"),
    [
        (b"garbage", load_private_key),
        (b"garbage", load_public_key),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", load_private_key),
        (_pem_public(OLD.public_key()), load_private_key),
        (_pem_private(ed448.Ed448PrivateKey.generate()), load_public_key),
        (_encrypted_pem(), load_private_key),
        (b"-" * 70_000, load_public_key),
    ],
    ids=["garbage-private", "garbage-public", "bad-der", "public-as-private", "private-as-public", "encrypted", "huge"],
)
def test_unusable_key_files_are_signing_key_errors(
    tmp_path: Path, content: bytes, loader: Callable[[Path], object]
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content)
    with pytest.raises(SigningKeyError):
        loader(path)


@pytest.mark.parametrize("loader", [load_private_key, load_public_key])
def test_missing_or_unreadable_key_files_are_signing_key_errors(
    tmp_path: Path, loader: Callable[[Path], object]
) -> None:
    for path in (tmp_path / "missing.pem", tmp_path):
        with pytest.raises(SigningKeyError, match="cannot read"):
            loader(path)


def _pem_of(der: bytes, label: bytes) -> bytes:
    return b"-----BEGIN " + label + b"-----\n" + base64.encodebytes(der) + b"-----END " + label + b"-----\n"


@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(_pem_of, st.binary(max_size=120), st.sampled_from([b"PRIVATE KEY", b"PUBLIC KEY"])),
    )
)
def test_arbitrary_key_file_bytes_give_a_key_or_a_signing_key_error(
    tmp_path_factory: pytest.TempPathFactory, content: bytes
) -> None:
    path = tmp_path_factory.mktemp("keyfuzz") / "key.pem"
    path.write_bytes(content)
    for loader in (load_private_key, load_public_key):
        with contextlib.suppress(SigningKeyError):
            loader(path)


@given(st.integers(0, 200), st.integers(1, 255))
def test_a_mutated_public_key_file_gives_an_ed25519_key_or_a_signing_key_error(
    tmp_path_factory: pytest.TempPathFactory, position: int, mask: int
) -> None:
    path = tmp_path_factory.mktemp("keyflip") / "key.pub"
    path.write_bytes(_flip(_pem_public(OLD.public_key()), position, mask))
    with contextlib.suppress(SigningKeyError):
        assert isinstance(load_public_key(path), Ed25519PublicKey)


# --- the keys command group ------------------------------------------------------------


def test_cli_generate_prints_the_key_id(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "k.pem", tmp_path / "k.pub"
    result = CliRunner().invoke(keys, ["generate", "--private", str(private_path), "--public", str(public_path)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == key_id(load_public_key(public_path))


def test_cli_generate_json_and_id_agree(tmp_path: Path) -> None:
    private_path, public_path = tmp_path / "k.pem", tmp_path / "k.pub"
    runner = CliRunner()
    made = runner.invoke(keys, ["generate", "--private", str(private_path), "--public", str(public_path), "--json"])
    assert made.exit_code == 0, made.output
    entry = json.loads(made.output)
    assert entry == {"key_id": entry["key_id"], "private": str(private_path), "public": str(public_path)}
    shown = runner.invoke(keys, ["id", str(public_path)])
    assert shown.exit_code == 0 and shown.output.strip() == entry["key_id"]
    shown_json = runner.invoke(keys, ["id", str(public_path), "--json"])
    assert json.loads(shown_json.output)["key_id"] == entry["key_id"]


def test_cli_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_bytes(b"precious")
    result = CliRunner().invoke(
        keys, ["generate", "--private", str(tmp_path / "k.pem"), "--public", str(tmp_path / "k.pub")]
    )
    assert result.exit_code != 0
    assert isinstance(result.exception, SigningKeyError)
    assert (tmp_path / "k.pem").read_bytes() == b"precious"


def test_cli_id_of_a_key_of_another_type_is_a_typed_error(tmp_path: Path) -> None:
    (tmp_path / "rsa.pub").write_bytes(_pem_public(_OTHER_PRIVATE_KEYS["rsa"].public_key()))
    result = CliRunner().invoke(keys, ["id", str(tmp_path / "rsa.pub")])
    assert isinstance(result.exception, SigningKeyError)
    assert isinstance(result.exception, EdgerecError)


# --- freshness statements (verify_freshness) ----------------------------------------------

DEVICE = "kiosk-1"
NONCE = b"\x07" * 16
TTL = timedelta(minutes=5)


def _statement(
    *,
    model: str = "ctr",
    latest: int = 3,
    target: int = 3,
    requested: int = 0,
    device_id: str = DEVICE,
    nonce: bytes = NONCE,
    issued: datetime = NOW,
    expires: datetime | None = None,
    channel: str = "",
    labels: dict[str, str] | None = None,
) -> Freshness:
    return Freshness(
        model=model,
        latest_version=latest,
        target_version=target,
        requested_version=requested,
        channel=channel,
        labels=labels or {},
        device_id=device_id,
        nonce=nonce,
        issued_at=issued.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        expires_at=(expires or issued + TTL).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    )


def _signed_statement(statement: Freshness, *signers: Ed25519PrivateKey) -> SignedFreshness:
    signed = sign_freshness(statement, signers[0])
    for signer in signers[1:]:
        message = freshness_message(signed.freshness)
        signed.signatures.append(
            manifest_pb2.Signature(key_id=key_id(signer.public_key()), signature=signer.sign(message))
        )
    return signed


def _fresh(
    signed: SignedFreshness | None,
    trusted: TrustedKeys | None = None,
    *,
    device_id: str = DEVICE,
    nonce: bytes = NONCE,
    now: datetime = NOW,
) -> Freshness:
    return verify_freshness(
        signed,
        model="ctr",
        device_id=device_id,
        nonce=nonce,
        trusted=_trusting(OLD) if trusted is None else trusted,
        now=now,
    )


def test_a_signed_statement_verifies_to_exactly_the_signed_bytes() -> None:
    signed = _signed_statement(_statement(), OLD)
    assert _fresh(signed).SerializeToString(deterministic=True) == signed.freshness
    assert signed.freshness == _statement().SerializeToString(deterministic=True)


def test_a_missing_statement_is_a_freshness_error() -> None:
    with pytest.raises(FreshnessError, match="no signed freshness statement"):
        _fresh(None)


@pytest.mark.parametrize(
    ("signers", "trusted", "expected"),
    [
        ((), (OLD,), SignatureError),
        ((STRANGER,), (OLD,), UnknownKeyError),
        ((OLD,), (OLD, NEW), SignatureError),  # threshold 2 below
        ((OLD, NEW), (OLD, NEW), None),
    ],
    ids=["unsigned", "untrusted", "below-threshold", "threshold-met"],
)
def test_statement_signatures_follow_the_manifest_rules(
    signers: tuple[Ed25519PrivateKey, ...], trusted: tuple[Ed25519PrivateKey, ...], expected: type[Exception] | None
) -> None:
    statement = _statement()
    if signers:
        signed = _signed_statement(statement, *signers)
    else:
        signed = SignedFreshness(freshness=statement.SerializeToString(deterministic=True))
    keys_ = _trusting(*trusted, threshold=len(trusted))
    if expected is None:
        assert _fresh(signed, keys_).target_version == 3
        return
    with pytest.raises(expected, match="freshness statement"):
        _fresh(signed, keys_)


@pytest.mark.parametrize("position", [0, 9, 40])
def test_a_statement_changed_after_signing_is_rejected(position: int) -> None:
    signed = _signed_statement(_statement(), OLD)
    signed.freshness = _flip(signed.freshness, position)
    with pytest.raises(SignatureError, match="invalid signature"):
        _fresh(signed)


def test_freshness_and_manifest_signatures_cannot_stand_in_for_each_other() -> None:
    """The freshness domain prefix: a signature over bare bytes is no statement's, and the reverse."""
    statement_bytes = _statement().SerializeToString(deterministic=True)
    as_manifest = _sign_bytes(statement_bytes, OLD)  # how a manifest's bytes are signed
    with pytest.raises(SignatureError):
        _fresh(SignedFreshness(freshness=statement_bytes, signatures=as_manifest.signatures))
    manifest_bytes = _manifest().SerializeToString(deterministic=True)
    as_statement = sign_freshness(Freshness.FromString(b""), OLD)  # any statement signature by the trusted key
    as_statement.signatures[0].signature = OLD.sign(freshness_message(manifest_bytes))
    with pytest.raises(SignatureError):
        _verify(SignedManifest(manifest=manifest_bytes, signatures=as_statement.signatures))


@pytest.mark.parametrize(
    ("statement", "match"),
    [
        (_statement(model="news"), "for model 'news'"),
        (_statement(device_id="kiosk-2"), "for device 'kiosk-2'"),
        (_statement(nonce=b"\x08" * 16), "nonce differs"),
        (_statement(nonce=b""), "nonce differs"),
    ],
    ids=["other-model", "other-device", "other-nonce", "no-nonce"],
)
def test_a_statement_for_another_model_device_or_check_is_rejected(statement: Freshness, match: str) -> None:
    with pytest.raises(FreshnessError, match=match):
        _fresh(_signed_statement(statement, OLD))


def test_a_device_that_sent_no_nonce_accepts_a_statement_without_one() -> None:
    assert _fresh(_signed_statement(_statement(nonce=b""), OLD), nonce=b"").nonce == b""


def test_a_statement_expires_at_its_expiry_instant_and_is_valid_just_before() -> None:
    signed = _signed_statement(_statement(), OLD)
    assert _fresh(signed, now=NOW + TTL - timedelta(microseconds=1))
    with pytest.raises(FreshnessError, match="expired at"):
        _fresh(signed, now=NOW + TTL)


def test_a_statement_from_the_future_is_accepted_within_the_clock_skew_only() -> None:
    assert _fresh(_signed_statement(_statement(issued=NOW + MAX_CLOCK_SKEW), OLD))
    with pytest.raises(FreshnessError, match="is the clock right"):
        _fresh(_signed_statement(_statement(issued=NOW + MAX_CLOCK_SKEW + timedelta(seconds=1)), OLD))


def test_a_statement_expiring_before_it_is_issued_is_rejected() -> None:
    with pytest.raises(FreshnessError, match="before it is issued"):
        _fresh(_signed_statement(_statement(issued=NOW, expires=NOW - timedelta(seconds=1)), OLD))


@pytest.mark.parametrize("field", ["issued_at", "expires_at"])
def test_a_statement_with_a_malformed_time_is_a_freshness_error(field: str) -> None:
    statement = _statement()
    setattr(statement, field, "soon")
    with pytest.raises(FreshnessError, match=field):
        _fresh(_signed_statement(statement, OLD))


def test_an_oversized_statement_is_rejected_before_its_signatures_are_read() -> None:
    signed = _signed_statement(_statement(device_id="d" * MAX_FRESHNESS_BYTES), OLD)
    signed.signatures[0].signature = b"not even a signature"
    with pytest.raises(FreshnessError, match="exceeds"):
        _fresh(signed)


def test_statement_bytes_that_do_not_parse_are_a_freshness_error() -> None:
    data = b"\xff\xff\xff"
    signed = SignedFreshness(
        freshness=data,
        signatures=[
            manifest_pb2.Signature(key_id=key_id(OLD.public_key()), signature=OLD.sign(freshness_message(data)))
        ],
    )
    with pytest.raises(FreshnessError, match="does not parse"):
        _fresh(signed)


@given(st.binary(max_size=512), _signatures, st.binary(max_size=64))
def test_arbitrary_statement_fields_give_only_typed_errors(
    data: bytes, signatures: list[manifest_pb2.Signature], nonce: bytes
) -> None:
    with pytest.raises(TrustError):
        _fresh(SignedFreshness(freshness=data, signatures=signatures), _trusting(OLD, NEW), nonce=nonce)


@given(st.binary(max_size=512), st.binary(max_size=32))
def test_arbitrary_bytes_signed_by_a_trusted_key_give_a_matching_statement_or_a_typed_error(
    data: bytes, nonce: bytes
) -> None:
    signed = SignedFreshness(
        freshness=data,
        signatures=[
            manifest_pb2.Signature(key_id=key_id(OLD.public_key()), signature=OLD.sign(freshness_message(data)))
        ],
    )
    try:
        statement = _fresh(signed, nonce=nonce)
    except TrustError:
        return
    assert (statement.model, statement.device_id, statement.nonce) == ("ctr", DEVICE, nonce)
    issued_at, expires_at = parse_rfc3339(statement.issued_at), parse_rfc3339(statement.expires_at)
    assert issued_at <= NOW + MAX_CLOCK_SKEW and expires_at > NOW and expires_at > issued_at


# --- whole answers (UpdateVerifier.verify_answer) --------------------------------------------


def _two_recipe_manifest(version: int = 3, model: str = "ctr") -> Manifest:
    manifest = _manifest(version=version, model=model)
    files = [ArtifactFile(path="fp32/model.onnx", size=20, sha256="b" * 64)]
    manifest.artifacts.append(make_artifact("fp32", "onnxruntime", "fp32/model.onnx", files))
    return manifest


def _request(
    *,
    current: int = 2,
    target: int = 0,
    recipes: tuple[str, ...] = ("int8", "fp32"),
    runtimes: tuple[str, ...] = ("onnxruntime",),
) -> CheckUpdateRequest:
    return CheckUpdateRequest(
        model="ctr",
        current_version=current,
        recipes=list(recipes),
        runtimes=list(runtimes),
        target_version=target,
        device_id=DEVICE,
        nonce=NONCE,
    )


def _response(
    *,
    update: bool = True,
    version: int = 3,
    recipe: str = "int8",
    statement: Freshness | None = None,
    manifest: Manifest | None = None,
    signer: Ed25519PrivateKey | None = OLD,
) -> CheckUpdateResponse:
    manifest = _two_recipe_manifest(version) if manifest is None else manifest
    signed = _signed(manifest, signer) if signer is not None else sign_nothing(manifest)
    response = CheckUpdateResponse(update_available=update, manifest=signed, recipe=recipe)
    if statement is not None:
        response.freshness.CopyFrom(_signed_statement(statement, OLD))
    return response


def _answer(
    request: CheckUpdateRequest, response: CheckUpdateResponse, *, insecure: bool = False, highest: int = 2
) -> VerifiedAnswer:
    verifier = UpdateVerifier.insecure("ctr") if insecure else UpdateVerifier("ctr", _trusting(OLD))
    return verifier.verify_answer(request, response, highest_activated=highest, now=NOW)


def test_an_update_agreeing_with_its_statement_is_accepted() -> None:
    answer = _answer(_request(), _response(statement=_statement()))
    assert answer.manifest is not None and answer.manifest.version == 3
    assert answer.artifact is not None and answer.artifact.recipe == "int8"
    assert answer.freshness is not None and answer.freshness.latest_version == 3


def test_no_update_agreeing_with_its_statement_is_accepted() -> None:
    answer = _answer(_request(current=3), _response(update=False, statement=_statement()), highest=3)
    assert (answer.manifest, answer.artifact) == (None, None)
    assert answer.freshness is not None and answer.freshness.target_version == 3


def test_a_verifying_device_refuses_an_answer_without_a_statement() -> None:
    with pytest.raises(FreshnessError):
        _answer(_request(), _response())


def test_no_update_while_the_statement_names_a_newer_version_is_a_withheld_version() -> None:
    with pytest.raises(StaleAnswerError, match="withholds version 3"):
        _answer(_request(current=2), _response(update=False, statement=_statement()))


@pytest.mark.parametrize("insecure", [False, True])
def test_no_update_for_a_device_that_runs_nothing_is_refused(insecure: bool) -> None:
    statement = _statement() if not insecure else None
    with pytest.raises(StaleAnswerError, match="runs no version"):
        _answer(_request(current=0), _response(update=False, statement=statement), insecure=insecure)


def test_an_update_to_another_version_than_the_statement_names_is_refused() -> None:
    """A signed version 4 (a partial one built for another base, say) in an answer whose statement says 3."""
    with pytest.raises(StaleAnswerError, match="offers ctr version 4"):
        _answer(_request(), _response(version=4, statement=_statement(latest=3, target=3)))


@pytest.mark.parametrize(
    ("target", "statement", "match"),
    [
        (3, _statement(latest=3, target=2, requested=3), "asked for version 3"),
        (3, _statement(latest=3, target=2, requested=2), "request was rewritten"),
        (0, _statement(latest=3, target=2, requested=2), "request was rewritten"),
        (0, _statement(latest=3, target=2, channel="frozen"), "another channel"),
        (0, _statement(latest=3, target=2, labels={"region": "xx"}), "another channel, labels"),
    ],
    ids=["given-version", "given-version-rewritten", "policy-rewritten", "channel", "labels"],
)
def test_a_statement_answering_another_request_is_refused(target: int, statement: Freshness, match: str) -> None:
    with pytest.raises(StaleAnswerError, match=match):
        _answer(_request(current=2, target=target), _response(update=False, statement=statement))


def test_the_release_policy_may_keep_a_device_below_the_latest_version() -> None:
    """A rollout offers version 3 to some devices only: the others are told to stay on 2, signed."""
    answer = _answer(_request(current=2), _response(update=False, statement=_statement(latest=3, target=2)), highest=2)
    assert answer.freshness is not None and (answer.freshness.target_version, answer.freshness.latest_version) == (2, 3)


def test_a_partial_version_above_the_latest_full_one_answers_a_request_for_the_latest() -> None:
    answer = _answer(_request(), _response(version=4, statement=_statement(latest=3, target=4)))
    assert answer.manifest is not None and answer.manifest.version == 4


@pytest.mark.parametrize("insecure", [False, True])
@pytest.mark.parametrize(
    ("recipes", "runtimes", "recipe", "match"),
    [
        (("int8",), ("onnxruntime",), "fp32", r"recipe 'fp32'; this device allows only \['int8'\]"),
        (("int4", "fp32"), ("onnxruntime",), "int8", "allows only"),
        (("int8",), ("litert",), "int8", "runs on 'onnxruntime'"),
    ],
    ids=["recipe", "default-not-implied", "runtime"],
)
def test_an_artifact_the_device_did_not_ask_for_is_refused(
    insecure: bool, recipes: tuple[str, ...], runtimes: tuple[str, ...], recipe: str, match: str
) -> None:
    request = _request(recipes=recipes, runtimes=runtimes)
    response = _response(recipe=recipe, statement=None if insecure else _statement())
    with pytest.raises(RecipeNotAllowedError, match=match):
        _answer(request, response, insecure=insecure)


def test_an_empty_recipe_list_allows_the_protocol_default() -> None:
    answer = _answer(_request(recipes=(), runtimes=()), _response(recipe="fp32", statement=_statement()))
    assert answer.artifact is not None and answer.artifact.recipe == "fp32" and "fp32" in DEFAULT_RECIPES


def test_an_allowed_recipe_the_manifest_lacks_is_a_manifest_error() -> None:
    response = _response(manifest=_manifest(), recipe="fp32", statement=_statement())
    with pytest.raises(ManifestError, match="no 'fp32' artifact"):
        _answer(_request(recipes=("fp32",)), response)


def test_a_damaged_device_may_reinstall_the_version_it_trusted_but_nothing_older() -> None:
    """Asking as a device that runs nothing (its copy is damaged) lowers the floor by one, no more."""
    same = _response(version=3, statement=_statement())
    assert _answer(_request(current=0), same, highest=3).manifest is not None
    with pytest.raises(RollbackError):
        _answer(_request(current=3), same, highest=3)
    with pytest.raises(RollbackError):
        _answer(_request(current=0), _response(version=2, statement=_statement(latest=2, target=2)), highest=3)


def test_the_insecure_verifier_checks_everything_but_signatures_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="edgerec.trust"):
        answer = _answer(_request(), _response(signer=None), insecure=True)
    assert answer.manifest is not None and answer.freshness is None
    assert any("WITHOUT checking signatures" in r.getMessage() for r in caplog.records)
    with pytest.raises(WrongModelError):
        _answer(_request(), _response(signer=None, manifest=_two_recipe_manifest(model="news")), insecure=True)
    with pytest.raises(RollbackError):
        _answer(_request(), _response(signer=None, version=2), insecure=True)
    with pytest.raises(ManifestError):
        bad = _response(signer=None)
        bad.manifest.manifest = b"\xff"
        _answer(_request(), bad, insecure=True)


def test_verification_names_the_mode_and_insecure_needs_its_own_constructor() -> None:
    assert UpdateVerifier("ctr", _trusting(OLD)).verification == "ed25519"
    assert UpdateVerifier.insecure("ctr").verification == "off"
    with pytest.raises(TypeError, match="insecure"):
        UpdateVerifier("ctr", None)  # type: ignore[arg-type]


def test_an_answer_to_a_request_for_another_model_is_a_programming_error() -> None:
    request = _request()
    request.model = "news"
    with pytest.raises(ValueError, match="request is for model 'news'"):
        _answer(request, _response(statement=_statement()))


def test_only_the_reinstallable_version_passes_the_floor() -> None:
    """A device that ran version 3 and rolled back to 2 (floor 3) may be offered 3 again, and nothing older."""
    verifier = UpdateVerifier("ctr", _trusting(OLD))
    offer_3 = _response(version=3, statement=_statement(latest=3, target=3))
    with pytest.raises(RollbackError):
        verifier.verify_answer(_request(current=2), offer_3, highest_activated=3, now=NOW)
    answer = verifier.verify_answer(_request(current=2), offer_3, highest_activated=3, now=NOW, reinstallable=3)
    assert answer.manifest is not None and answer.manifest.version == 3
    offer_2 = _response(version=2, statement=_statement(latest=3, target=2, requested=2))
    with pytest.raises(RollbackError):
        verifier.verify_answer(_request(current=1, target=2), offer_2, highest_activated=3, now=NOW, reinstallable=3)
