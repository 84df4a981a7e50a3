"""Revert: the way back from a bad version that never breaks a device's anti-rollback floor.

A device never installs a version at or below one it activated, so going back means going forward:
``revert(registry, model, to=V)`` publishes V's exact bytes as a new version N (devices on V get a copy
of files they hold; devices on a bad version get a delta), halts every rollout of a version above V,
points every channel that named V or a bad version at N, and records the revert so every device that
runs a bad version is offered N (``decide.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgerec.errors import ReleasePolicyError
from edgerec.manifest import PARTIAL_BASE, PARTIAL_OF, Manifest, SignedManifest, now_rfc3339, sign_nothing
from edgerec.registry import ModelRegistry
from edgerec.server.release.policy import MAX_REVERTS, ReleasePolicy, Revert, update_policy
from edgerec.server.release.rollouts import halt

log = logging.getLogger(__name__)

__all__ = ["REVERTED_FROM", "RevertResult", "revert"]

REVERTED_FROM = "edgerec.reverted_from"
"""Manifest annotation of a reverting version: the version whose bytes it carries."""
MAX_DELTA_BASES = 4


@dataclass(frozen=True)
class RevertResult:
    """What a revert did: the new version, the bytes it carries, the bad versions, the rollouts halted."""

    model: str
    version: int
    to_version: int
    bad_versions: tuple[int, ...]
    halted: tuple[str, ...]
    payloads: int

    def as_json(self) -> dict[str, object]:
        return {
            "model": self.model,
            "version": self.version,
            "to_version": self.to_version,
            "bad_versions": list(self.bad_versions),
            "halted_rollouts": list(self.halted),
            "payloads": self.payloads,
        }


def revert(registry: ModelRegistry, model: str, to: int, *, now: float | None = None) -> RevertResult:
    """Publish version ``to``'s bytes as the next version and offer it to everyone who ran a newer one."""
    moment = time.time() if now is None else now
    published = registry.versions(model)
    if to not in published:
        raise ReleasePolicyError(f"{model} has no version {to} to revert to (published: {published[-10:]})")
    _, source = registry.load_manifest(model, to)
    if PARTIAL_OF in source.annotations:
        raise ReleasePolicyError(f"{model} version {to} is a partial version; revert to a full one")
    bad = tuple(v for v in published if v > to)
    if not bad:
        raise ReleasePolicyError(f"{model} has no version newer than {to}: nothing to revert")
    manifest = _republish(registry, model, to, source)
    payloads = _payloads(registry, manifest, bad)
    halted: list[str] = []

    def change(policy: ReleasePolicy) -> ReleasePolicy:
        halted.clear()
        for rollout in policy.rollouts:
            if rollout.active and rollout.version in bad:
                policy = halt(policy, rollout.id, moment, f"reverted to version {to} as {manifest.version}")
                halted.append(rollout.id)
        channels = {
            name: manifest.version if version == to or version in bad else version
            for name, version in policy.channels.items()
        }
        record = Revert(manifest.version, to, bad[-64:], moment)
        return dataclasses.replace(policy, channels=channels, reverts=(*policy.reverts, record)[-MAX_REVERTS:])

    update_policy(registry, model, change)
    log.info("reverted %s to version %d's bytes as version %d (bad: %s)", model, to, manifest.version, list(bad))
    return RevertResult(model, manifest.version, to, bad, tuple(halted), payloads)


def _republish(registry: ModelRegistry, model: str, to: int, source: Manifest) -> Manifest:
    with tempfile.TemporaryDirectory(prefix="revert-", dir=registry.scratch_dir()) as tmp:
        staged = Path(tmp) / "version"
        for f in registry.files(model, to):
            target = staged / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(registry.local_file(model, to, f.path), target)

        def numbered(version: int) -> SignedManifest:
            manifest = Manifest()
            manifest.CopyFrom(source)
            manifest.version = version
            manifest.created_at = now_rfc3339()
            manifest.expires_at = ""
            for key in (PARTIAL_OF, PARTIAL_BASE):
                manifest.annotations.pop(key, None)
            manifest.annotations[REVERTED_FROM] = str(to)
            return sign_nothing(manifest)

        return registry.add_version(model, staged, numbered)


def _payloads(registry: ModelRegistry, manifest: Manifest, bad: tuple[int, ...]) -> int:
    """The new version's full payloads and deltas from the newest bad versions, made now."""
    from edgerec.server.publish.pipeline import PublishOptions, prepare_payloads

    return prepare_payloads(registry, manifest, PublishOptions(delta_bases=bad[-MAX_DELTA_BASES:]))
