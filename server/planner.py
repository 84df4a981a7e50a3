"""Plans an update: which artifact a device gets and the smallest payload for each of its files.

With a signing key, each answer's manifest is signed (``ManifestSigner``) and the answer carries a
signed freshness statement naming the version it tells the device to run (``FreshnessSigner``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from edgerec.artifacts import DEFAULT_RECIPES, DEFAULT_RUNTIMES, choose_artifact
from edgerec.errors import UnknownBaseVersionError, VersionNotFoundError
from edgerec.manifest import PARTIAL_OF, Artifact, ArtifactFile, find_artifact
from edgerec.registry import ModelRegistry, PayloadRecord
from edgerec.server.delta_worker import DeltaJob, DeltaWorker
from edgerec.server.freshness import FreshnessSigner, check_nonce
from edgerec.server.memo import ExpiringMemo
from edgerec.server.payload_urls import PayloadUrls
from edgerec.server.payloads import DELTA_CODECS, FULL, PayloadStore, version_file
from edgerec.server.release.decide import decide, device_of_request
from edgerec.server.release.policy_cache import PolicyCache
from edgerec.server.release.records import FleetObserver
from edgerec.server.signer import ManifestSigner
from edgerec.v1 import update_pb2

log = logging.getLogger(__name__)

PLAN_KEEP_S = 1.0
MAX_KEPT_PLANS = 1024
# A device names a few short recipes, runtimes and codecs; longer offers are planned but not kept,
# so what a caller sends never sizes the memo.
MAX_KEPT_OFFER_CHARS = 256

__all__ = ["DEFAULT_RECIPES", "DEFAULT_RUNTIMES", "Base", "UpdatePlanner", "choose_artifact"]


@dataclass(frozen=True)
class Base:
    """What the device runs now."""

    version: int
    artifact: Artifact
    # For a partial version: the full version it approximates (its manifest's edgerec.partial_of).
    partial_of: int | None = None


class UpdatePlanner:
    """Answers CheckUpdate from the registry with the smallest payloads that exist.

    With ``deltas`` a missing delta is queued there and the answer offers the best payload that exists
    now (never waiting); without, the delta is made in place and the request waits (tools and tests).
    ``observer`` is told of every answered request and the version the answer has the device run.
    ``policies`` hold each model's release policy (``edgerec.server.release``): a device that asks for
    no particular version is offered the one its policy decides; without, the latest.

    Devices that ask alike (the same target, base and offers) share one plan for ``PLAN_KEEP_S``: a
    fleet checking in at once is planned once per kind of device. A delta this server's worker builds
    shows up at once; one another replica builds, at most that much later. Each answer still gets its
    own freshness statement.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        payloads: PayloadStore,
        signer: ManifestSigner | None = None,
        freshness: FreshnessSigner | None = None,
        urls: PayloadUrls | None = None,
        *,
        deltas: DeltaWorker | None = None,
        observer: FleetObserver | None = None,
        policies: PolicyCache | None = None,
    ) -> None:
        self.registry = registry
        self.policies = policies
        self.observer = observer
        self.payloads = payloads
        self.signer = signer
        self.freshness = freshness
        self.urls = urls
        self.deltas = deltas
        self._plans: ExpiringMemo[tuple[object, ...], update_pb2.CheckUpdateResponse] = ExpiringMemo(
            PLAN_KEEP_S, MAX_KEPT_PLANS
        )

    def plan(self, request: update_pb2.CheckUpdateRequest) -> update_pb2.CheckUpdateResponse:
        check_nonce(request)
        # Read before the plan's target: a version published in between makes the target newer, never older.
        latest_version = self.registry.resolve_version(request.model)
        version, response = self._choose(request)
        if self.freshness is not None:
            # The version the device should run after this answer: the one offered, or the one it runs.
            statement = self.freshness.sign(request, latest_version=latest_version, target_version=version)
            response.freshness.CopyFrom(statement)
        if self.observer is not None:
            self._observe(request, version)
        return response

    def _observe(self, request: update_pb2.CheckUpdateRequest, version: int) -> None:
        try:
            self.observer.checked(request, version, time.time())  # type: ignore[union-attr]
        except Exception:  # the fleet records must never cost a device its answer
            log.exception("fleet observer failed on a CheckUpdate of %s", request.model)

    def _choose(self, request: update_pb2.CheckUpdateRequest) -> tuple[int, update_pb2.CheckUpdateResponse]:
        """The version this device should run and the plan to it (the version it runs when current)."""
        target_version = self._target(request)
        base = self._base(request)
        budget = request.max_payload_bytes
        if base is not None and request.target_version == 0 and target_version < base.version:
            # The device runs a partial version newer than the latest full one: the full version it
            # approximates when that fits its budget (the device accepts it: its partial's signed
            # manifest names it), else nothing newer yet.
            if base.partial_of == target_version:
                toward_full = self._plan_to(request, target_version, base)
                if not budget or toward_full.payload_bytes <= budget:
                    return target_version, toward_full
            target_version = base.version
        response = self._plan_to(request, target_version, base)
        if budget and base is not None and response.payload_bytes > budget and request.target_version == 0:
            for partial in self.registry.partial_versions(request.model, base.version, target_version):
                candidate = self._plan_to(request, partial, base)
                if candidate.payload_bytes <= budget:
                    log.info("offering partial version %d: the full plan exceeds the device's budget", partial)
                    return partial, candidate
        return target_version, response

    def _target(self, request: update_pb2.CheckUpdateRequest) -> int:
        """The version asked for, else the one the model's release policy offers this device."""
        if request.target_version != 0 or self.policies is None:
            return self.registry.resolve_version(request.model, request.target_version)
        latest = self.registry.resolve_version(request.model)
        policy = self.policies.get(request.model)
        if policy is None:
            return latest
        decision = decide(policy, device_of_request(request), self.registry.versions(request.model), latest)
        log.debug(
            "release policy of %s: %s gets %d (%s)", request.model, request.device_id, decision.version, decision.rule
        )
        return decision.version

    def _plan_to(
        self, request: update_pb2.CheckUpdateRequest, target_version: int, base: Base | None
    ) -> update_pb2.CheckUpdateResponse:
        """The plan from ``base`` to ``target_version`` for what the device offers (a copy of the kept one)."""
        offers = (tuple(request.recipes), tuple(request.runtimes), frozenset(request.codecs))
        if sum(len(name) for names in offers for name in names) > MAX_KEPT_OFFER_CHARS:
            return self._make_plan(request, target_version, base)  # kept plans are not the place for odd offers
        key = (
            request.model,
            target_version,
            (base.version, base.artifact.digest) if base is not None else None,
            offers,
            self.deltas.finished if self.deltas is not None else 0,
        )
        response = update_pb2.CheckUpdateResponse()
        response.CopyFrom(self._plans.get(key, lambda: self._make_plan(request, target_version, base)))
        return response

    def _make_plan(
        self, request: update_pb2.CheckUpdateRequest, target_version: int, base: Base | None
    ) -> update_pb2.CheckUpdateResponse:
        signed, manifest = self.registry.load_manifest(request.model, target_version)
        if self.signer is not None:
            signed = self.signer.sign(manifest)
        artifact = choose_artifact(manifest, list(request.recipes), list(request.runtimes))
        response = update_pb2.CheckUpdateResponse(
            manifest=signed, recipe=artifact.recipe, full_bytes=sum(f.size for f in artifact.files)
        )
        if base is not None and base.version == target_version and base.artifact.digest == artifact.digest:
            response.update_available = False
            return response
        response.update_available = True
        codecs = set(request.codecs) & set(DELTA_CODECS)
        for target_file in artifact.files:
            response.payloads.append(self._plan_file(request.model, target_version, target_file, base, codecs))
        response.payload_bytes = sum(p.size for p in response.payloads)
        log.info(
            "plan %s %s -> %d (%s): %d payload bytes for %d full bytes",
            request.model,
            base.version if base else "none",
            target_version,
            artifact.recipe,
            response.payload_bytes,
            response.full_bytes,
        )
        return response

    def _base(self, request: update_pb2.CheckUpdateRequest) -> Base | None:
        if request.current_version == 0:
            return None
        try:
            _, manifest = self.registry.load_manifest(request.model, request.current_version)
        except VersionNotFoundError as exc:
            raise UnknownBaseVersionError(
                f"{request.model} version {request.current_version} is not in the registry; ask for full files"
            ) from exc
        artifact = find_artifact(manifest, request.current_recipe)
        if artifact is None or artifact.digest != request.current_sha256:
            raise UnknownBaseVersionError(
                f"{request.model} version {request.current_version} recipe {request.current_recipe!r} with digest "
                f"{request.current_sha256[:16]!r} does not match the registry; ask for full files"
            )
        partial_of = manifest.annotations.get(PARTIAL_OF, "")
        return Base(request.current_version, artifact, int(partial_of) if partial_of.isdigit() else None)

    def _plan_file(
        self, model: str, version: int, target_file: ArtifactFile, base: Base | None, codecs: set[str]
    ) -> update_pb2.Payload:
        plan = update_pb2.Payload(path=target_file.path, target_sha256=target_file.sha256, target_size=target_file.size)
        if base is not None:
            same = next((f for f in base.artifact.files if f.sha256 == target_file.sha256), None)
            if same is not None:
                plan.codec, plan.base_path, plan.base_sha256 = "copy", same.path, same.sha256
                return plan
        target_path = version_file(self.registry, model, version, target_file.path)
        best = self.payloads.ensure(model, FULL, target_path, target_file.sha256)
        best_base = None
        base_file = next((f for f in base.artifact.files if f.path == target_file.path), None) if base else None
        if base is not None and base_file is not None:
            base_path = version_file(self.registry, model, base.version, base_file.path)
            for codec in sorted(codecs):
                if not self.payloads.can_make(codec, base_file.size, target_file.size):
                    continue
                candidate = self._delta(
                    DeltaJob(model, codec, target_path, target_file.sha256, base_path, base_file.sha256)
                )
                if candidate is not None and candidate.size < best.size:
                    best, best_base = candidate, base_file
        plan.codec, plan.payload_id, plan.size, plan.sha256 = (
            best.codec,
            best.payload_id,
            best.size,
            best.payload_id,
        )
        if best_base is not None:
            plan.base_path, plan.base_sha256 = best_base.path, best_base.sha256
        if self.urls is not None:
            plan.urls.extend(self.urls.urls(model, best.payload_id))
        return plan

    def _delta(self, job: DeltaJob) -> PayloadRecord | None:
        """The delta ``job`` describes if it exists; if not, queued for later (None) or made now (no worker)."""
        if self.deltas is None:
            return self.payloads.ensure(job.model, job.codec, job.target, job.target_sha256, job.base, job.base_sha256)
        found = self.payloads.find(*job.key)
        if found is None:
            self.deltas.submit(job)
        return found
