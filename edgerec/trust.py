"""The device's verification of an update answer: every rule in one place, and no I/O.

:class:`UpdateVerifier` takes a CheckUpdate answer exactly as received (the request the device
sent beside it) and returns what the device may install, or raises. It reads no files, opens no
sockets and does not read the clock: the trusted keys, the activated version and the current time
are arguments, so every rule can be tested in memory (``tests/test_trust.py``).

A verifier either checks signatures by a set of :class:`TrustedKeys` (``UpdateVerifier(model,
trusted)``; ``verification`` is "ed25519") or, only when its caller opted out explicitly, checks
none (``UpdateVerifier.insecure(model)``; ``verification`` is "off"): the rules below that do
not need a key (format, model, version floor, expiry, recipe) still apply, freshness is neither
required nor read, and every unsigned install is logged as a warning. There is no third mode: a
device without keys and without the opt-out must not sync at all (``NoTrustedKeysError``, raised
by ``EdgeClient.sync`` before any network call).

Checks of an answer (:meth:`UpdateVerifier.verify_answer`), in this order; the first failure raises:

A. Freshness (:func:`verify_freshness`; skipped when verification is off): the answer carries a
   SignedFreshness (-> FreshnessError) of at most ``MAX_FRESHNESS_BYTES`` (-> FreshnessError),
   signed as manifests are, over ``FRESHNESS_DOMAIN + bytes`` (-> SignatureError / UnknownKeyError,
   rules as in 2. below), whose bytes parse (-> FreshnessError) and name the model, the device id
   and the nonce of the request exactly (-> FreshnessError: another device's or a replayed
   statement), with RFC 3339 times where ``issued_at`` is at most ``max_clock_skew`` ahead of
   ``now``, ``expires_at`` is after ``issued_at`` and ``expires_at`` is after ``now``
   (-> FreshnessError).
   The statement answers what the request asked: it echoes the request's ``target_version``,
   ``channel``, ``labels`` and ``app_version`` exactly, and its ``target_version`` is the requested
   version when one was asked for (-> StaleAnswerError; the request is unsigned, so this is what
   keeps a rewritten request from steering the device to another offer or freezing it). When the
   device asked the release policy (0), the target may be older than ``latest_version``: a rollout
   or pin decides it, and the version floor below still refuses anything older than what it ran.
B. "No update" (``update_available`` false): the device runs a version (the request's
   ``current_version`` is not 0) and, when verifying, it is the statement's ``target_version``
   (-> StaleAnswerError: the answer withholds that version).
C. An update: the manifest passes 1.-6. below with the version floor described there; its
   version is the statement's ``target_version`` when verifying (-> StaleAnswerError); the
   offered ``recipe`` is one the request allowed and its artifact's runtime one the request
   listed (-> RecipeNotAllowedError), and the manifest has that artifact (-> ManifestError).

The version floor: the highest version this device ever activated, or one below it when the
request said the device runs nothing (its copy is damaged: re-installing the version it already
trusted is no rollback). One version at or below it may pass: ``reinstallable``, chosen by the
device from its own verified state: a version it activated and then rolled back from (offered
again, the device verifies it and holds it back; once an operator clears the hold, it installs
it), the active version whose copy is damaged while the device repairs it from the previous one,
or the full version that the partial version it runs approximates (partial versions are numbered
above the full version they approximate).

Checks of a manifest (:meth:`UpdateVerifier.verify`), in this order; the first failure raises:

1. Size: the whole SignedManifest (manifest bytes and signatures) is at most ``max_bytes``,
   before any cryptography or parsing. -> ManifestError
2. Signatures, over the exact ``manifest`` bytes, before those bytes are parsed:

   - signatures by keys outside the trusted set are ignored;
   - every signature by a trusted key must verify -> SignatureError;
   - a trusted key signs at most once (a second signature by it) -> SignatureError;
   - no signatures at all -> SignatureError;
   - signatures, but none by a trusted key -> UnknownKeyError;
   - fewer valid signatures by distinct trusted keys than ``threshold`` -> SignatureError.
3. Parse the signed bytes and check the format's rules (``edgerec.manifest.parse_manifest``). -> ManifestError
4. Model: the manifest names the model the device asked for. -> WrongModelError
5. Version: strictly greater than the activated version, so an older or equal version
   cannot be replayed. -> RollbackError
6. Expiry: an empty ``expires_at`` never expires; otherwise it must be an RFC 3339 time
   (-> ManifestError) later than ``now`` (-> ExpiredError).

Invariants:

- Nothing in the manifest is read before its signatures are verified, and the Manifest
  returned is parsed from exactly the bytes the signatures cover, never a re-serialization.
- A key id is computed from the key itself (:class:`TrustedKeys`), never believed from the
  manifest, so a signature cannot borrow a trusted key's name.
- Work is bounded: one size check, then at most one Ed25519 verification per trusted key.
- Every refusal is a TrustError or a ManifestError; no other exception escapes, whatever the bytes.

Key rotation: the device trusts a set of keys. To rotate, the publisher co-signs with the
old and the new key (``edgerec.signing.add_signature``), devices add the new key to their
set, and once every device trusts it the old key can be dropped from the set and from signing.
A manifest signed only by the new key is accepted by a device whose set contains the new key;
a co-signed one is accepted by devices that trust either key. Freshness statements are signed
by the same keys and need the same threshold, so a server that signs online holds as many
trusted keys as the threshold asks.

Clocks: a freshness statement lives ``ServerConfig.freshness_ttl`` (minutes), so a verifying
device needs a clock within about that much of the server's; a device whose clock is further
off refuses every answer with a FreshnessError that names both times.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from google.protobuf.message import DecodeError

from edgerec import artifacts
from edgerec.errors import (
    ExpiredError,
    FreshnessError,
    ManifestError,
    RecipeNotAllowedError,
    RollbackError,
    SignatureError,
    SigningKeyError,
    StaleAnswerError,
    UnknownKeyError,
    WrongModelError,
)
from edgerec.manifest import MAX_MANIFEST_BYTES, Artifact, Manifest, SignedManifest, find_artifact, parse_manifest
from edgerec.signing import freshness_message, key_id
from edgerec.v1 import manifest_pb2, update_pb2

logger = logging.getLogger(__name__)

# RFC 3339 date-time (section 5.6): full date, 'T', time, optional fraction, 'Z' or an offset.
_RFC3339 = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?([Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)

Freshness = update_pb2.Freshness
SignedFreshness = update_pb2.SignedFreshness

# A statement is a few short fields; the bound leaves room for a handful of co-signatures.
MAX_FRESHNESS_BYTES = 16 * 1024
# How far ahead of the device's clock a statement's issued_at may be (the clocks differ a little).
MAX_CLOCK_SKEW = timedelta(minutes=5)
# Payload.urls (update.proto): how many HTTP sources one payload may list, and how long each may be.
MAX_PAYLOAD_URLS = 4
MAX_PAYLOAD_URL_BYTES = 2048
ED25519 = "ed25519"
OFF = "off"


@dataclass(frozen=True)
class TrustedKeys:
    """The Ed25519 public keys a device trusts, by key id, and how many must sign a manifest."""

    keys: Mapping[str, Ed25519PublicKey] = field(hash=False)
    threshold: int = 1

    def __post_init__(self) -> None:
        for kid, key in self.keys.items():
            if not isinstance(key, Ed25519PublicKey):
                raise SigningKeyError(f"trusted key {kid!r} is a {type(key).__name__}, not an Ed25519 public key")
            if kid != key_id(key):
                raise SigningKeyError(f"trusted key listed as {kid!r} has the id {key_id(key)}")
        if not 1 <= self.threshold <= len(self.keys):
            raise ValueError(
                f"threshold must be between 1 and the number of keys ({len(self.keys)}), got {self.threshold}"
            )
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @classmethod
    def from_public_keys(cls, keys: Iterable[Ed25519PublicKey], *, threshold: int = 1) -> TrustedKeys:
        """Trust ``keys`` (ids computed from the keys; duplicates count once)."""
        return cls({key_id(key): key for key in keys}, threshold)

    def __repr__(self) -> str:
        return f"TrustedKeys(key_ids={sorted(self.keys)!r}, threshold={self.threshold})"


@dataclass(frozen=True)
class VerifiedAnswer:
    """A CheckUpdate answer that passed every rule.

    ``manifest`` and ``artifact`` are what to install (both None: the device is current);
    ``freshness`` is the verified statement (None when verification is off).
    """

    manifest: Manifest | None
    artifact: Artifact | None
    freshness: Freshness | None


class UpdateVerifier:
    """Every rule a device applies to an update answer of one model before installing it. No I/O."""

    def __init__(
        self,
        model: str,
        trusted: TrustedKeys,
        *,
        max_bytes: int = MAX_MANIFEST_BYTES,
        max_clock_skew: timedelta = MAX_CLOCK_SKEW,
    ) -> None:
        if not isinstance(trusted, TrustedKeys):
            raise TypeError(
                f"trusted must be TrustedKeys, got {type(trusted).__name__}; "
                "UpdateVerifier.insecure(model) is the explicit way to check no signatures"
            )
        self._setup(model, trusted, max_bytes, max_clock_skew)

    @classmethod
    def insecure(
        cls, model: str, *, max_bytes: int = MAX_MANIFEST_BYTES, max_clock_skew: timedelta = MAX_CLOCK_SKEW
    ) -> UpdateVerifier:
        """A verifier that checks no signatures and needs no freshness: for an explicit opt-out only."""
        verifier = cls.__new__(cls)
        verifier._setup(model, None, max_bytes, max_clock_skew)
        return verifier

    def _setup(self, model: str, trusted: TrustedKeys | None, max_bytes: int, max_clock_skew: timedelta) -> None:
        self.model = model
        self.trusted = trusted
        self.max_bytes = max_bytes
        self.max_clock_skew = max_clock_skew

    @property
    def verification(self) -> str:
        """``"ed25519"`` when signatures are checked, ``"off"`` for an insecure verifier."""
        return ED25519 if self.trusted is not None else OFF

    def verify_answer(
        self,
        request: update_pb2.CheckUpdateRequest,
        response: update_pb2.CheckUpdateResponse,
        *,
        highest_activated: int,
        now: datetime,
        reinstallable: int | None = None,
    ) -> VerifiedAnswer:
        """What the device may do with ``response``, the answer to ``request``; a TrustError / ManifestError if nothing.

        ``highest_activated`` is the highest version the device ever activated (0: none);
        ``now`` is a timezone-aware current time; ``reinstallable`` is the one version at or below
        the floor that may be offered (see "The version floor" above).
        See the module docstring for the rules.
        """
        if request.model != self.model:
            raise ValueError(f"request is for model {request.model!r}, this verifier for {self.model!r}")
        freshness = None
        if self.trusted is not None:
            signed = response.freshness if response.HasField("freshness") else None
            freshness = verify_freshness(
                signed,
                model=self.model,
                device_id=request.device_id,
                nonce=request.nonce,
                trusted=self.trusted,
                now=now,
                max_clock_skew=self.max_clock_skew,
            )
            _check_target(request, freshness)
        if not response.update_available:
            _check_current(request.current_version, freshness)
            return VerifiedAnswer(None, None, freshness)
        # A device whose copy is damaged asks as one running nothing: re-installing what it trusted is no rollback.
        floor = highest_activated if request.current_version else max(highest_activated - 1, 0)
        relaxed = min(floor, reinstallable - 1) if reinstallable else floor
        manifest = self.verify(response.manifest, activated_version=relaxed, now=now)
        if manifest.version <= floor and manifest.version != reinstallable:
            self._check_version(manifest, floor)  # raises: only the reinstallable version passes the relaxed floor
        if freshness is not None and manifest.version != freshness.target_version:
            raise StaleAnswerError(
                f"server offers {manifest.model} version {manifest.version}, but its signed statement says this "
                f"device should run version {freshness.target_version}: refusing a swapped answer"
            )
        artifact = _check_recipe(manifest, response.recipe, request.recipes, request.runtimes)
        return VerifiedAnswer(manifest, artifact, freshness)

    def verify(self, signed: SignedManifest, *, activated_version: int, now: datetime) -> Manifest:
        """The trusted Manifest in ``signed``, or a TrustError / ManifestError saying why not.

        ``activated_version`` is the version the device runs (0 for none); ``now`` is a
        timezone-aware current time. An insecure verifier skips step 2 (signatures) only.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        self._check_size(signed)
        signers = None
        if self.trusted is not None:
            signers = _check_signatures(signed.manifest, signed.signatures, self.trusted, "manifest")
        manifest = parse_manifest(signed, max_bytes=self.max_bytes)
        self._check_model(manifest)
        self._check_version(manifest, activated_version)
        self._check_expiry(manifest, now)
        if signers is None:
            logger.warning(
                "accepted %s version %d WITHOUT checking signatures (verification is off)",
                manifest.model,
                manifest.version,
            )
        else:
            logger.debug("accepted %s version %d signed by %s", manifest.model, manifest.version, ", ".join(signers))
        return manifest

    def _check_size(self, signed: SignedManifest) -> None:
        size = signed.ByteSize()
        if size > self.max_bytes:
            raise ManifestError(f"signed manifest of {size} bytes exceeds the {self.max_bytes}-byte limit")

    def _check_model(self, manifest: Manifest) -> None:
        if manifest.model != self.model:
            raise WrongModelError(f"manifest is for model {manifest.model!r}, expected {self.model!r}")

    def _check_version(self, manifest: Manifest, activated_version: int) -> None:
        if manifest.version <= activated_version:
            raise RollbackError(
                f"{manifest.model} version {manifest.version} is not newer than the activated version "
                f"{activated_version}: refusing a rollback or replay"
            )

    def _check_expiry(self, manifest: Manifest, now: datetime) -> None:
        if not manifest.expires_at:
            return
        expires_at = parse_rfc3339(manifest.expires_at)
        if expires_at <= now:
            raise ExpiredError(
                f"{manifest.model} version {manifest.version} expired at {manifest.expires_at} (now {now.isoformat()})"
            )


def verify_freshness(
    signed: SignedFreshness | None,
    *,
    model: str,
    device_id: str,
    nonce: bytes,
    trusted: TrustedKeys,
    now: datetime,
    max_clock_skew: timedelta = MAX_CLOCK_SKEW,
) -> Freshness:
    """The Freshness in ``signed`` if trusted keys signed it for this check (``model``, ``device_id``,
    ``nonce`` as the device sent them) and it is current at ``now``; else a TrustError saying why.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if signed is None:
        raise FreshnessError(
            "answer carries no signed freshness statement, so it may be stale or forged "
            "(a server without a signing key sends none)"
        )
    size = signed.ByteSize()
    if size > MAX_FRESHNESS_BYTES:
        raise FreshnessError(f"freshness statement of {size} bytes exceeds the {MAX_FRESHNESS_BYTES}-byte limit")
    _check_signatures(freshness_message(signed.freshness), signed.signatures, trusted, "freshness statement")
    freshness = Freshness()
    try:
        freshness.ParseFromString(signed.freshness)
    except DecodeError as exc:
        raise FreshnessError(f"freshness statement does not parse: {exc}") from exc
    if freshness.model != model:
        raise FreshnessError(f"freshness statement is for model {freshness.model!r}, expected {model!r}")
    if freshness.device_id != device_id:
        raise FreshnessError(f"freshness statement is for device {freshness.device_id[:80]!r}, this is {device_id!r}")
    if freshness.nonce != nonce:
        raise FreshnessError("freshness statement answers another check (its nonce differs): a replay")
    issued_at = _statement_time(freshness.issued_at, "issued_at")
    expires_at = _statement_time(freshness.expires_at, "expires_at")
    if issued_at > now + max_clock_skew:
        raise FreshnessError(
            f"freshness statement issued at {freshness.issued_at}, more than {max_clock_skew} after this "
            f"device's clock ({now.isoformat()}); is the clock right?"
        )
    if expires_at <= issued_at:
        raise FreshnessError(f"freshness statement expires ({freshness.expires_at}) before it is issued")
    if expires_at <= now:
        raise FreshnessError(
            f"freshness statement expired at {freshness.expires_at} (now {now.isoformat()}): "
            "a stale or replayed answer, or this device's clock is wrong"
        )
    return freshness


def verify_manifest(
    signed: SignedManifest,
    *,
    model: str,
    trusted: TrustedKeys,
    activated_version: int,
    now: datetime,
    max_bytes: int = MAX_MANIFEST_BYTES,
) -> Manifest:
    """One-call form of :meth:`UpdateVerifier.verify`."""
    verifier = UpdateVerifier(model, trusted, max_bytes=max_bytes)
    return verifier.verify(signed, activated_version=activated_version, now=now)


def _check_signatures(
    data: bytes, signatures: Sequence[manifest_pb2.Signature], trusted: TrustedKeys, what: str
) -> list[str]:
    """The ids of the trusted keys whose signatures over ``data`` verify (at least the threshold)."""
    if not signatures:
        raise SignatureError(f"{what} is unsigned")
    valid: list[str] = []
    for signature in signatures:
        key = trusted.keys.get(signature.key_id)
        if key is None:
            continue
        if signature.key_id in valid:
            raise SignatureError(f"{what} carries more than one signature by key {signature.key_id}")
        try:
            key.verify(signature.signature, data)
        except InvalidSignature as exc:
            raise SignatureError(f"invalid signature by trusted key {signature.key_id} on the {what}") from exc
        valid.append(signature.key_id)
    if not valid:
        named = sorted({s.key_id for s in signatures})
        raise UnknownKeyError(f"{what} is signed by none of the trusted keys (signed by {_ids(named)})")
    if len(valid) < trusted.threshold:
        raise SignatureError(
            f"{what} has {len(valid)} valid signature(s) by trusted keys, {trusted.threshold} required"
        )
    return valid


def _check_target(request: update_pb2.CheckUpdateRequest, freshness: Freshness) -> None:
    """The statement answers this request: its echoes match what the device sent, and a version asked
    for is the version answered.

    The request travels unsigned: this keeps a rewritten ``target_version``, channel or labels from
    making the server itself sign an offer the device did not ask for (an old version, another cohort's).
    """
    requested = request.target_version
    if freshness.requested_version != requested:
        raise StaleAnswerError(
            f"this device asked for version {requested or 'the policy offers'}, but the signed statement answers a "
            f"request for {freshness.requested_version or 'the policy offer'}: the request was rewritten on the way"
        )
    if (
        freshness.channel != request.channel
        or dict(freshness.labels) != dict(request.labels)
        or freshness.app_version != request.app_version
    ):
        raise StaleAnswerError(
            "the signed statement answers another channel, labels or app version than this device sent: "
            "the request was rewritten on the way"
        )
    if requested and freshness.target_version != requested:
        raise StaleAnswerError(
            f"this device asked for version {requested}, but the signed statement answers version "
            f"{freshness.target_version}: the request was rewritten on the way"
        )


def _check_current(current_version: int, freshness: Freshness | None) -> None:
    """A "no update" answer: the device must run a version, and the one the statement says it should."""
    if current_version == 0:
        raise StaleAnswerError("server says there is no update for a device that runs no version")
    if freshness is not None and freshness.target_version != current_version:
        raise StaleAnswerError(
            f"server says this device is current at version {current_version}, but its signed statement says "
            f"it should run version {freshness.target_version} (latest {freshness.latest_version}): "
            f"the answer withholds version {freshness.target_version}"
        )


def _check_recipe(manifest: Manifest, recipe: str, allowed_recipes: Sequence[str], runtimes: Sequence[str]) -> Artifact:
    """The artifact the answer offers, if its recipe and runtime are ones the request allowed."""
    allowed = list(artifacts.allowed_recipes(allowed_recipes))
    if recipe not in allowed:
        raise RecipeNotAllowedError(f"server offers recipe {recipe[:80]!r}; this device allows only {allowed}")
    artifact = find_artifact(manifest, recipe)
    if artifact is None:
        raise ManifestError(f"manifest has no {recipe!r} artifact")
    usable = list(artifacts.usable_runtimes(runtimes))
    if artifact.runtime not in usable:
        raise RecipeNotAllowedError(
            f"the {recipe!r} artifact runs on {artifact.runtime!r}; this device runs only {usable}"
        )
    return artifact


def _statement_time(text: str, name: str) -> datetime:
    try:
        return parse_rfc3339(text)
    except ManifestError as exc:
        raise FreshnessError(f"freshness statement's {name} is {exc}") from exc


def parse_rfc3339(text: str) -> datetime:
    """A timezone-aware datetime from an RFC 3339 date-time; ManifestError if it is not one."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ManifestError(f"not an RFC 3339 time: {text!r}")
    date, time, fraction, offset = match.groups()
    micros = f".{(fraction or '')[:6]:0<6}"
    zone = "+00:00" if offset in ("Z", "z") else offset
    try:
        return datetime.fromisoformat(f"{date}T{time}{micros}{zone}")
    except ValueError as exc:
        raise ManifestError(f"not an RFC 3339 time: {text!r}: {exc}") from exc


def _ids(key_ids: Sequence[str]) -> str:
    shown = ", ".join(repr(k[:16]) for k in key_ids[:4])
    return shown + (f" and {len(key_ids) - 4} more" if len(key_ids) > 4 else "")
