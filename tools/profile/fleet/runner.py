"""Runs a fleet: N simulated devices as asyncio tasks of one process, started over a ramp.

First one probe device asks for the plan (a wrong address, model or key fails here, before
any device starts, and the plan gives the link-limited ideal). Then every device starts at its
place on the ramp with a connection of its own (or one of a few shared ones), syncs once and
ends finished or failed; the server, when its pid is given, is sampled throughout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack

import grpc.aio

from edgerec.signing import load_public_key
from edgerec.tools.profile.fleet.device import DeviceResult, SimulatedDevice, check_plan, check_update_request
from edgerec.tools.profile.fleet.report import FleetReport
from edgerec.tools.profile.fleet.sampler import OwnUsage, ProcessSampler
from edgerec.tools.profile.fleet.settings import FleetSettings
from edgerec.tools.profile.fleet.source import (
    GrpcPayloadSource,
    HttpPayloadSource,
    PayloadSource,
    Servers,
    call_error,
)
from edgerec.trust import TrustedKeys, UpdateVerifier
from edgerec.v1 import update_pb2, update_pb2_grpc

log = logging.getLogger(__name__)

# (devices done, devices in all, what the fleet looks like now)
ProgressHook = Callable[[int, int, str], None]

CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Channels to one address share one connection unless each keeps its own subchannel pool: a
    # device of its own needs a connection of its own, as a real one has.
    ("grpc.use_local_subchannel_pool", 1),
)


def run_fleet(settings: FleetSettings, progress: ProgressHook | None = None, *, label: str = "") -> FleetReport:
    """Run the fleet of ``settings`` to its end (every device finished or failed) and report."""
    return asyncio.run(FleetRun(settings, progress).run(label))


class FleetRun:
    """One run of a fleet; use :func:`run_fleet`."""

    def __init__(self, settings: FleetSettings, progress: ProgressHook | None = None) -> None:
        self.settings = settings
        self.progress = progress
        keys = [load_public_key(path) for path in settings.trusted_keys]
        self.verifier = UpdateVerifier(settings.model, TrustedKeys.from_public_keys(keys)) if keys else None
        if self.verifier is None:
            log.warning("no trusted keys: the simulated devices do not check manifest signatures")
        self._done = 0
        self._failed = 0
        # HTTP reads block (urllib3): every device may wait on one at once.
        self._http_pool = ThreadPoolExecutor(settings.devices, "fleet-http") if settings.http else None

    async def run(self, label: str = "") -> FleetReport:
        try:
            return await self._run(label)
        finally:
            if self._http_pool is not None:
                self._http_pool.shutdown(wait=False, cancel_futures=True)

    async def _run(self, label: str) -> FleetReport:
        s = self.settings
        sampler = ProcessSampler(s.server_pid, s.sample_interval_s) if s.server_pid is not None else None
        if sampler is not None:
            sampler.check()
        async with AsyncExitStack() as stack:
            shared = [_channel(s.server) for _ in range(s.channels)]
            for channel in shared:
                stack.push_async_callback(channel.close, None)
            plan_bytes = await self._probe(shared[0] if shared else None)
            deadline_s = s.device_deadline_s(plan_bytes)
            log.info(
                "%d devices, plan of %d payload bytes, %.1f s per device at the link rate, deadline %.0f s",
                s.devices,
                plan_bytes,
                plan_bytes / s.rate_bytes_per_s,
                deadline_s,
            )
            epoch = time.monotonic()
            if sampler is not None:
                sampler.start(epoch)
            own = OwnUsage.now()
            self._report_progress()
            tasks = [
                asyncio.create_task(self._device(i, shared[i % len(shared)] if shared else None, epoch, deadline_s))
                for i in range(s.devices)
            ]
            results = list(await asyncio.gather(*tasks))
            elapsed = time.monotonic() - epoch
            server = await sampler.stop() if sampler is not None else None
            own_end = OwnUsage.now()
        return FleetReport(
            settings=s,
            plan_bytes=plan_bytes,
            device_deadline_s=deadline_s,
            results=results,
            elapsed_s=elapsed,
            sim_cpu_s=own_end.cpu_s - own.cpu_s,
            sim_peak_rss_bytes=own_end.peak_rss_bytes,
            server=server,
            label=label,
        )

    async def _probe(self, shared: grpc.aio.Channel | None) -> int:
        """The plan's payload bytes, from one CheckUpdate checked as a device checks it."""
        s = self.settings
        channel = shared or _channel(s.server)
        try:
            stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
            request = check_update_request(s.model, s.recipes, f"{s.device_prefix}-probe")
            try:
                response: update_pb2.CheckUpdateResponse = await stub.CheckUpdate(
                    request, timeout=s.retry.check_timeout_s
                )
            except grpc.aio.AioRpcError as exc:
                raise call_error(exc, f"CheckUpdate {s.model} at {s.server}") from exc
            check_plan(response, s.model, self.verifier)
            return int(response.payload_bytes)
        finally:
            if shared is None:
                await channel.close(None)

    async def _device(
        self, index: int, shared: grpc.aio.Channel | None, epoch: float, deadline_s: float
    ) -> DeviceResult:
        s = self.settings
        await asyncio.sleep(max(0.0, epoch + s.start_offset_s(index) - time.monotonic()))
        device_id = s.device_id(index)
        channels = [shared] if shared is not None else [_channel(target) for target in s.servers_of(index)]
        http: HttpPayloadSource | None = None
        try:
            servers = Servers(channels)
            sources: list[PayloadSource] = []
            if self._http_pool is not None:
                http = HttpPayloadSource(self._http_pool, s.chunk_bytes())
                sources.append(http)
            sources.append(GrpcPayloadSource(servers, device_id, s.chunk_bytes()))
            device = SimulatedDevice(
                device_id,
                servers,
                sources,
                model=s.model,
                recipes=s.recipes,
                rate_bytes_per_s=s.rate_bytes_per_s,
                chunk_bytes=s.chunk_bytes(),
                retry=s.retry,
                verifier=self.verifier,
                rng=random.Random(f"{s.seed}-{index}"),
            )
            result = await device.run(epoch, deadline_s)
        finally:
            if http is not None:
                http.close()
            if shared is None:
                for channel in channels:
                    await channel.close(None)
        self._done += 1
        self._failed += not result.finished
        if not result.finished:
            log.debug("%s failed: %s", device_id, result.detail)
        self._report_progress()
        return result

    def _report_progress(self) -> None:
        if self.progress is not None:
            self.progress(self._done, self.settings.devices, f"{self._failed} failed" if self._failed else "devices")


def _channel(target: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(target, options=list(CHANNEL_OPTIONS))
