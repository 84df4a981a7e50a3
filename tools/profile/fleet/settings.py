"""What a fleet run simulates: how many devices, how fast their links are, how they retry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgerec.artifacts import DEFAULT_RECIPES
from edgerec.device.transport import TransportConfig

_SDK = TransportConfig()
# A device's deadline when none is given: this many times its link-limited download time, at least the floor.
DEFAULT_DEADLINE_FACTOR = 10.0
DEFAULT_DEADLINE_FLOOR_S = 60.0


@dataclass(frozen=True)
class RetryPolicy:
    """How a simulated device retries a failed call: the device SDK's backoff, and a bound on attempts.

    ``max_attempts`` counts consecutive failed attempts that brought no new bytes; a device that reaches
    it gives up (as a device whose sync fails would, until its next sync). The SDK's own bound is lower
    (``TransportConfig.retry.max_attempts``): a real device's app calls sync again later, which a simulated
    device, living for one sync, models by trying longer.
    """

    max_attempts: int = 30
    backoff_initial_s: float = _SDK.retry.backoff_initial_s
    backoff_max_s: float = _SDK.retry.backoff_max_s
    check_timeout_s: float = _SDK.check_timeout_s

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")
        if self.check_timeout_s <= 0:
            raise ValueError(f"check_timeout_s must be > 0, got {self.check_timeout_s}")

    def backoff_s(self, failures: int, jitter: float) -> float:
        """Seconds to wait after ``failures`` failures in a row; ``jitter`` in [0, 1) spreads retries out."""
        return min(self.backoff_max_s, self.backoff_initial_s * 2.0**failures) * (0.5 + 0.5 * jitter)


@dataclass(frozen=True)
class FleetSettings:
    """A fleet run: ``devices`` fresh devices of ``model`` against ``server``, each on a link of ``rate``.

    ``also`` lists more servers (replicas): device ``i`` tries them all, starting at ``i`` modulo their
    number, and fails over to the next when its server is gone. With ``http`` a device fetches each
    payload from the plan's URLs first (Range GETs), then from its servers.
    Devices start one after another over ``ramp_s`` seconds. Each has ``deadline_s`` seconds from its start
    to finish (None: :data:`DEFAULT_DEADLINE_FACTOR` times its link-limited download time, at least
    :data:`DEFAULT_DEADLINE_FLOOR_S`). ``channels`` = 0 gives every device its own connection, as real
    devices have; a positive number shares that many among them. ``trusted_keys`` (Ed25519 public PEM
    files) make every device check the manifest's signatures. ``server_pid``, when given, is sampled
    for CPU time and RSS.
    """

    server: str
    model: str
    devices: int
    rate_bytes_per_s: float
    ramp_s: float = 10.0
    deadline_s: float | None = None
    channels: int = 0
    trusted_keys: tuple[Path, ...] = ()
    server_pid: int | None = None
    also: tuple[str, ...] = ()
    http: bool = False
    recipes: tuple[str, ...] = DEFAULT_RECIPES
    retry: RetryPolicy = RetryPolicy()
    device_prefix: str = "sim"
    sample_interval_s: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError(f"devices must be >= 1, got {self.devices}")
        if self.rate_bytes_per_s <= 0:
            raise ValueError(f"rate must be > 0 bytes/s, got {self.rate_bytes_per_s}")
        if self.ramp_s < 0:
            raise ValueError(f"ramp must be >= 0 s, got {self.ramp_s}")
        if self.deadline_s is not None and self.deadline_s <= 0:
            raise ValueError(f"deadline must be > 0 s, got {self.deadline_s}")
        if self.channels < 0:
            raise ValueError(f"channels must be >= 0 (0: one per device), got {self.channels}")
        if self.sample_interval_s <= 0:
            raise ValueError(f"sample_interval_s must be > 0, got {self.sample_interval_s}")
        if not self.recipes:
            raise ValueError("give at least one recipe")

    def chunk_bytes(self) -> int:
        """The chunk size a device asks for: the SDK's rule for a device with this link rate."""
        return TransportConfig(rate_bytes_per_s=self.rate_bytes_per_s).chunk_limit()

    def start_offset_s(self, index: int) -> float:
        """When device ``index`` (0-based) starts, in seconds after the first."""
        return self.ramp_s * index / self.devices

    def device_deadline_s(self, payload_bytes: int) -> float:
        if self.deadline_s is not None:
            return self.deadline_s
        return max(DEFAULT_DEADLINE_FLOOR_S, DEFAULT_DEADLINE_FACTOR * payload_bytes / self.rate_bytes_per_s)

    def servers_of(self, index: int) -> list[str]:
        """The servers device ``index`` tries, in order: all of them, starting at its turn."""
        every = [self.server, *self.also]
        first = index % len(every)
        return every[first:] + every[:first]

    def device_id(self, index: int) -> str:
        return f"{self.device_prefix}-{index:05d}"
