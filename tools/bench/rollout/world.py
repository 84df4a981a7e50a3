"""The simulation's world: a registry, a signing key, a real ``edgerec serve`` on loopback, and the fleet.

:class:`World` publishes versions through the real publish pipeline, serves them with the real
server (in this process, so a rollout's controller can be driven tick by tick), and runs the
simulated devices (:mod:`.devices`) against it over gRPC.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerec.manifest import Manifest
from edgerec.reference.data import ClickGenerator, ReferenceConfig
from edgerec.registry import Registry
from edgerec.signing import generate_keypair, load_public_key
from edgerec.tools.bench.rollout.clicks import SlateSettings
from edgerec.tools.bench.rollout.devices import Fleet, RoundStats, SimDevice, make_population
from edgerec.tools.bench.rollout.library import VersionLibrary
from edgerec.trust import TrustedKeys, UpdateVerifier

__all__ = ["MODEL", "World", "WorldSettings"]

log = logging.getLogger(__name__)

MODEL = "ctr"
# The publisher's validation data (accuracy gate, golden cases) comes from this day of the reference data.
_VALIDATION_DAY = 3


@dataclass(frozen=True)
class WorldSettings:
    """The fleet and the reference data: size, seeds, what each device shows per round."""

    devices: int = 1000
    size: str = "tiny"
    data_seed: int = 3
    seed: int = 0
    ftz_fraction: float = 0.3
    slates: SlateSettings = field(default_factory=SlateSettings)
    workers: int = 8

    def generator(self) -> ClickGenerator:
        return ClickGenerator(ReferenceConfig.from_name(self.size), seed=self.data_seed)


class World:
    """A registry in ``workdir``, a signing key, the real server over it, and the simulated fleet.

    ``server_settings`` go to ``ServerConfig``. Use as a context manager: it stops the server.
    """

    def __init__(self, workdir: Path, settings: WorldSettings, **server_settings: Any) -> None:
        from edgerec.server.app import ServerConfig, start_server

        self.settings = settings
        self.generator = settings.generator()
        workdir.mkdir(parents=True, exist_ok=True)
        self.registry = Registry(workdir / "registry")
        keys = workdir / "keys"
        keys.mkdir(exist_ok=True)
        generate_keypair(keys / "server.pem", keys / "server.pub")
        self.public_key = keys / "server.pub"
        self.server = start_server(
            ServerConfig(
                registry=self.registry.root, listen="127.0.0.1:0", signing_key=keys / "server.pem", **server_settings
            )
        )
        self.address = f"127.0.0.1:{self.server.port}"
        verifier = UpdateVerifier(MODEL, TrustedKeys.from_public_keys([load_public_key(self.public_key)]))
        self.library = VersionLibrary(lambda version: self.registry.version_dir(MODEL, version))
        self.devices: list[SimDevice] = make_population(
            settings.devices, seed=settings.seed, ftz_fraction=settings.ftz_fraction
        )
        self.fleet = Fleet(
            self.devices,
            model=MODEL,
            address=self.address,
            verifier=verifier,
            library=self.library,
            generator=self.generator,
            slates=settings.slates,
            clock=time.time,
            seed=settings.seed,
            workers=settings.workers,
        )

    def close(self) -> None:
        self.fleet.close()
        self.server.stop(grace=0)

    def __enter__(self) -> World:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(self, source: Path) -> Manifest:
        """Publish ``source`` (a ``.pt2``) as the next version, with the publisher's accuracy gate."""
        from edgerec.server.publish import PublishOptions, publish

        validation = self.generator.day(_VALIDATION_DAY, 20_000)
        options = PublishOptions(validation={**validation.inputs(), "labels": validation.labels})
        return publish(source, MODEL, self.registry, options)

    def run_round(self) -> RoundStats:
        """One check interval of every device."""
        return self.fleet.run_round()

    def versions(self) -> Counter[int]:
        """Devices per active version (0: none installed)."""
        return Counter(device.active_version for device in self.devices)

    def artifact_digests(self, version: int) -> set[str]:
        """The digests of every artifact of ``version`` (what 'that version's bytes' means on a device)."""
        _, manifest = self.registry.load_manifest(MODEL, version)
        return {artifact.digest for artifact in manifest.artifacts}
