"""One simulated fresh device: CheckUpdate, verify the plan, download every payload over its own paced link.

It does what a real device does on the wire and checks what a real device checks before applying
(the manifest's signatures when it trusts keys, the plan against the manifest, every chunk, every
payload's length and sha256), but applies nothing and writes nothing: it counts bytes, so that a
thousand of them fit in one process beside the server they measure.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import grpc.aio

from edgerec.device.plan import check_plan as check_payload_plan
from edgerec.errors import EdgerecError, IntegrityError, ManifestError, TransportError, WrongModelError
from edgerec.manifest import Manifest, find_artifact, parse_manifest
from edgerec.tools.profile.fleet.settings import RetryPolicy
from edgerec.tools.profile.fleet.source import CallError, PayloadSource, Servers, call_error
from edgerec.trust import UpdateVerifier
from edgerec.v1 import update_pb2

ENDED_EARLY = "ENDED_EARLY"  # a stream that closed cleanly before the payload's last byte


class GaveUpError(TransportError):
    """A device stopped retrying: its deadline passed, or too many attempts in a row brought nothing."""

    def __init__(self, message: str, reason: str, last_code: str) -> None:
        super().__init__(message)
        self.reason = reason  # "deadline" or "attempts"
        self.last_code = last_code


def failure_key(exc: EdgerecError) -> str:
    """A short, bounded name for why a device failed, to count devices by."""
    if isinstance(exc, GaveUpError):
        return f"{exc.reason} (last: {exc.last_code})"
    if isinstance(exc, CallError):
        return exc.code
    return type(exc).__name__


class AsyncTokenBucket:
    """The device's own link: ``rate`` bytes per second on average, bursts of up to ``burst`` bytes."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = time.monotonic()

    async def take(self, amount: int) -> None:
        """Wait until ``amount`` bytes may pass (one consumer: the device's download)."""
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= amount
        if self._tokens < 0:
            await asyncio.sleep(-self._tokens / self.rate)


@dataclass
class DeviceResult:
    """What one device did. Times are seconds since the fleet started; ``error`` is empty when it finished."""

    device_id: str
    start_s: float
    end_s: float = 0.0
    finished: bool = False
    error: str = ""
    detail: str = ""
    plan_bytes: int = 0
    bytes_by_source: Counter[str] = field(default_factory=Counter)
    calls: int = 0
    retries: int = 0
    errors_by_code: Counter[str] = field(default_factory=Counter)
    failovers: int = 0  # calls that moved to the device's next server

    @property
    def redundant_bytes(self) -> int:
        """Payload bytes received more than once (a finished device's received bytes beyond its plan)."""
        return max(0, sum(self.bytes_by_source.values()) - self.plan_bytes) if self.finished else 0

    @property
    def seconds(self) -> float:
        return self.end_s - self.start_s


def check_update_request(model: str, recipes: tuple[str, ...], device_id: str) -> update_pb2.CheckUpdateRequest:
    """What a fresh device asks: no current version, full files only, the runtimes every device has."""
    return update_pb2.CheckUpdateRequest(
        model=model,
        current_version=0,
        runtimes=["onnxruntime"],
        codecs=["full"],
        recipes=list(recipes),
        device_id=device_id,
    )


def check_plan(response: update_pb2.CheckUpdateResponse, model: str, verifier: UpdateVerifier | None) -> Manifest:
    """The offered manifest (signature-checked when ``verifier`` is given) after checking the plan against it.

    A fresh device has no base and offers only full files: the plan must pass the device's own checks
    (:func:`edgerec.device.plan.check_plan`) for that, and its total must be the sum of its payloads.
    """
    if not response.update_available:
        raise ManifestError(f"the server offers a fresh device no version of {model!r}")
    if verifier is not None:
        manifest = verifier.verify(response.manifest, activated_version=0, now=datetime.now(UTC))
    else:
        manifest = parse_manifest(response.manifest)
        if manifest.model != model:
            raise WrongModelError(f"server sent a manifest for {manifest.model!r}, not {model!r}")
    artifact = find_artifact(manifest, response.recipe)
    if artifact is None:
        raise ManifestError(f"manifest has no {response.recipe!r} artifact")
    check_payload_plan(response.payloads, artifact, None, ("full",))
    if response.payload_bytes != sum(p.size for p in response.payloads):
        raise ManifestError("plan's payload_bytes is not the sum of its payload sizes")
    return manifest


class SimulatedDevice:
    """One device's sync, without applying: its calls go to ``servers``, its bytes come from ``sources``.

    Sources are tried in order (the plan's URLs, then the servers): one that fails for good (not a
    transient error) is dropped for the next, as the SDK drops a failed URL; the last one retries.
    """

    def __init__(
        self,
        device_id: str,
        servers: Servers,
        sources: Sequence[PayloadSource],
        *,
        model: str,
        recipes: tuple[str, ...],
        rate_bytes_per_s: float,
        chunk_bytes: int,
        retry: RetryPolicy,
        verifier: UpdateVerifier | None,
        rng: random.Random,
    ) -> None:
        self.device_id = device_id
        self.model = model
        self.recipes = recipes
        self.rate = rate_bytes_per_s
        self.retry = retry
        self.verifier = verifier
        if not sources:
            raise ValueError("a device needs at least one payload source")
        self._servers = servers
        self._sources = list(sources)
        # The SDK's guard bucket: a few chunks of jitter pass, so it never slows a stream the server paces.
        self._link = AsyncTokenBucket(rate_bytes_per_s, burst=4 * chunk_bytes)
        self._rng = rng
        self.result = DeviceResult(device_id, start_s=0.0)
        self._deadline = 0.0
        self._failures = 0
        self._last_code = ""

    async def run(self, epoch: float, deadline_s: float) -> DeviceResult:
        """Sync once; ``epoch`` is the fleet's start (time.monotonic), ``deadline_s`` counts from now."""
        now = time.monotonic()
        self._deadline = now + deadline_s
        self.result.start_s = now - epoch
        try:
            response = await self._check()
            check_plan(response, self.model, self.verifier)
            self.result.plan_bytes = response.payload_bytes
            for payload in response.payloads:
                await self._download(payload)
            self.result.finished = True
        except EdgerecError as exc:
            self.result.error = failure_key(exc)
            self.result.detail = str(exc)
        self.result.failovers = self._servers.failovers
        self.result.end_s = time.monotonic() - epoch
        return self.result

    async def _check(self) -> update_pb2.CheckUpdateResponse:
        request = check_update_request(self.model, self.recipes, self.device_id)
        while True:
            timeout = min(self.retry.check_timeout_s, self._remaining())
            self.result.calls += 1
            try:
                response: update_pb2.CheckUpdateResponse = await self._servers.stub.CheckUpdate(
                    request, timeout=timeout
                )
                return response
            except grpc.aio.AioRpcError as exc:
                error = call_error(exc, f"CheckUpdate {self.model}")
                self._servers.failed(error.code)
            await self._after_failure(error.code, error, progressed=False)

    async def _download(self, payload: update_pb2.Payload) -> None:
        """Fetch ``payload`` whole, resuming from the bytes received after each failure; check its sha256."""
        digest = hashlib.sha256()
        received = 0
        sources = list(self._sources)  # a source that fails for good is dropped for this payload
        while received < payload.size:
            before = received
            self.result.calls += 1
            code = ENDED_EARLY
            failure: EdgerecError | None = None
            source = sources[0]
            try:
                chunks = source.read(self.model, payload, received, self.rate, self._remaining())
                async with contextlib.aclosing(chunks):
                    async for data in chunks:
                        await self._link.take(len(data))
                        digest.update(data)
                        received += len(data)
                        self.result.bytes_by_source[source.name] += len(data)
            except CallError as exc:
                if not exc.transient and len(sources) > 1:
                    self.result.errors_by_code[exc.code] += 1
                    sources.pop(0)
                    continue
                code, failure = exc.code, exc
            except IntegrityError:
                self.result.errors_by_code[IntegrityError.__name__] += 1
                raise
            if received < payload.size:
                await self._after_failure(code, failure, progressed=received > before)
        if digest.hexdigest() != payload.sha256:
            self.result.errors_by_code[IntegrityError.__name__] += 1
            raise IntegrityError(
                f"payload for {payload.path} has sha256 {digest.hexdigest()[:16]}…, plan says {payload.sha256[:16]}…"
            )

    async def _after_failure(self, code: str, error: EdgerecError | None, *, progressed: bool) -> None:
        """Count the failure, then raise (a refusal, too many attempts, the deadline) or wait to retry."""
        self.result.errors_by_code[code] += 1
        self._last_code = code
        if isinstance(error, CallError) and not error.transient:
            raise error
        self._failures = 0 if progressed else self._failures + 1
        if self._failures >= self.retry.max_attempts:
            raise GaveUpError(f"{self._failures} attempts in a row brought nothing; last: {code}", "attempts", code)
        delay = self.retry.backoff_s(self._failures, self._rng.random())
        if time.monotonic() + delay >= self._deadline:
            raise GaveUpError(f"deadline passed after {self.result.calls} calls; last: {code}", "deadline", code)
        self.result.retries += 1
        await asyncio.sleep(delay)

    def _remaining(self) -> float:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise GaveUpError("deadline passed", "deadline", self._last_code or "none")
        return remaining
