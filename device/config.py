"""EdgeConfig: everything an :class:`~edgerec.device.client.EdgeClient` needs, in one frozen, checked value.

Made once (``EdgeConfig(...)``, or :meth:`EdgeConfig.build` from the flat keywords
``EdgeClient(server, model, data_dir, ...)`` takes); a wrong value is a ValueError when it is
made, not a surprise at the first sync. The groups:

==================  =====================================================================================
``servers``         where the model-push server(s) are: one address, several (fail over in order), or none
``trust``           :class:`TrustConfig`: the keys updates must be signed by, or the explicit insecure opt-out
``transport``       :class:`~edgerec.device.transport.TransportConfig`: timeouts, retries, rate cap, deadlines
``fallback``        :class:`~edgerec.device.policy.FallbackPolicy`: the predict path's deadlines and breakers
``cache``           :class:`CacheConfig`: the prediction cache's bounds
the rest            the model, the data folder, recipes and codecs offered, threads, device id, budget, TLS
==================  =====================================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from edgerec.attributes import validate_app_version, validate_channel, validate_labels
from edgerec.codecs import CODEC_NAMES
from edgerec.device.policy import FallbackPolicy
from edgerec.device.transport.config import TransportConfig
from edgerec.errors import EdgerecError
from edgerec.manifest import validate_model_name
from edgerec.signing import load_public_key
from edgerec.tokens import DEVICE_ID_PATTERN, check_token_text
from edgerec.trust import TrustedKeys, UpdateVerifier

UNCONFIGURED = "unconfigured"
"""``EdgeClient.verification`` when sync has neither trusted keys nor the insecure opt-out (it refuses)."""


@dataclass(frozen=True)
class TrustConfig:
    """How sync verifies updates: by trusted keys (the default way), or not at all when asked explicitly.

    ``trusted_keys`` are public key files (PEM) or a ready :class:`~edgerec.trust.TrustedKeys`; a
    manifest and every answer's freshness statement must be signed by them. ``insecure=True``
    verifies no signature (tests only: anyone on the path can install a model of their own). With
    neither, sync refuses (NoTrustedKeysError) before any network call.
    """

    trusted_keys: tuple[Path, ...] | TrustedKeys = ()
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.insecure and self.trusted_keys:
            raise ValueError("pass trusted_keys or insecure=True, not both")

    def verifier(self, model: str) -> UpdateVerifier | None:
        """The verifier sync uses for ``model``: by the trusted keys, insecure only when asked; None when neither."""
        if self.insecure:
            return UpdateVerifier.insecure(model)
        if isinstance(self.trusted_keys, TrustedKeys):
            return UpdateVerifier(model, self.trusted_keys)
        if not self.trusted_keys:
            return None
        return UpdateVerifier(model, TrustedKeys.from_public_keys([load_public_key(p) for p in self.trusted_keys]))


@dataclass(frozen=True)
class CacheConfig:
    """The prediction cache: an LRU keyed by model version and request bytes (see :mod:`edgerec.device.cache`)."""

    entries: int = 1024
    """Most answers kept; 0 turns the cache off."""
    ttl_s: float | None = 300.0
    """An answer older than this is a miss (None: never expires)."""
    max_bytes: int = 4 * 1024 * 1024
    """Most bytes of scores kept (each key adds at most 512 bytes of request data)."""
    rows: bool = False
    """Cache each row of a batch too, so a batch repeating some rows runs the model on the others only.
    Keying, looking up and storing a row has a cost of its own (docs/performance.md): worth it for models
    that cost more than that per row."""

    def __post_init__(self) -> None:
        if self.entries < 0 or self.max_bytes < 0:
            raise ValueError("cache entries and max_bytes must be >= 0")
        if self.ttl_s is not None and self.ttl_s <= 0:
            raise ValueError(f"cache ttl_s must be > 0 or None, got {self.ttl_s}")


@dataclass(frozen=True)
class EdgeConfig:
    """A device's configuration of one model; every field checked when made."""

    model: str
    """The model's name, as published."""
    data_dir: Path
    """The device's data folder: installed versions, downloads, the device id (private to this user)."""
    servers: tuple[str, ...] = ()
    """HOST:PORT of each model-push server, tried in order (a DNS name with several addresses works as one
    entry: gRPC tries them in turn). Empty: offline (predict locally; sync and status reports refuse)."""
    trust: TrustConfig = field(default_factory=TrustConfig)
    """The keys updates must be signed by, or the explicit insecure opt-out; with neither, sync refuses."""
    transport: TransportConfig = field(default_factory=TransportConfig)
    """Timeouts, retries, the bandwidth cap and download deadlines of every call to the servers and URLs."""
    fallback: FallbackPolicy = field(default_factory=FallbackPolicy)
    """The predict path's knobs; also: after ``local_failure_threshold`` model faults in a row, roll back."""
    cache: CacheConfig = field(default_factory=CacheConfig)
    """The prediction cache's bounds."""
    recipes: tuple[str, ...] = ("int8", "fp32")
    """Recipes this device allows, most preferred first; the server offers the first one the version has."""
    codecs: tuple[str, ...] = CODEC_NAMES
    """Payload codecs this device offers the server (a plan using another one is refused)."""
    threads: int = 1
    """Threads the local runtime may use for one prediction."""
    optimized_model_cache: bool = True
    """Keep onnxruntime's optimized model per artifact in ``<data_dir>/.ort-cache`` (faster loads)."""
    device_id: str = ""
    """This device's id in requests and status reports. Empty: the id in front of ``token``
    ("<device_id>.<secret>"), else a random id made once and kept in ``<data_dir>/device-id``."""
    max_payload_bytes: int = 0
    """Budget: most payload bytes one update may cost (the server may offer a partial version); 0: none."""
    tls_ca: Path | None = None
    """CA certificate (PEM) the servers' certificates must chain to; None with a token: the system's CAs."""
    token: str | None = None
    """This device's bearer token ("<device_id>.<secret>"), sent over TLS on every call."""
    channel: str = ""
    """The release channel this device follows (``stable``, ``canary``, ...); empty: ``stable``."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Free-form attributes rollouts and pins may target (``{"region": "eu"}``; at most 32)."""
    app_version: str = ""
    """The host app's version, which rollouts may target."""

    def __post_init__(self) -> None:
        try:
            validate_model_name(self.model)
        except EdgerecError as exc:
            raise ValueError(str(exc)) from None
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        for server in self.servers:
            if not server or not all("!" <= c <= "~" for c in server):
                raise ValueError(f"a server address is HOST:PORT without spaces, got {server[:80]!r}")
        if not self.recipes or not all(self.recipes):
            raise ValueError("recipes needs at least one recipe name")
        unknown = [c for c in self.codecs if c not in CODEC_NAMES]
        if not self.codecs or unknown:
            raise ValueError(f"codecs must be some of {', '.join(CODEC_NAMES)}, got {list(self.codecs)}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.max_payload_bytes < 0:
            raise ValueError(f"max_payload_bytes must be >= 0, got {self.max_payload_bytes}")
        if self.device_id and not DEVICE_ID_PATTERN.fullmatch(self.device_id):
            raise ValueError(f"device_id must match {DEVICE_ID_PATTERN.pattern}, got {self.device_id[:80]!r}")
        if self.token is not None:
            check_token_text(self.token)
        try:
            validate_channel(self.channel)
            object.__setattr__(self, "labels", MappingProxyType(validate_labels(self.labels)))
            validate_app_version(self.app_version)
        except EdgerecError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def build(
        cls,
        server: str | Sequence[str] | None,
        model: str,
        data_dir: Path | str,
        *,
        trusted_keys: Sequence[Path | str] | TrustedKeys | None = None,
        insecure: bool = False,
        transport: TransportConfig | None = None,
        policy: FallbackPolicy | None = None,
        cache_entries: int = 1024,
        cache_ttl_s: float | None = 300.0,
        cache_max_bytes: int = 4 * 1024 * 1024,
        cache_rows: bool = False,
        recipes: Sequence[str] = ("int8", "fp32"),
        codecs: Sequence[str] = CODEC_NAMES,
        threads: int = 1,
        optimized_model_cache: bool = True,
        device_id: str = "",
        max_payload_bytes: int = 0,
        tls_ca: Path | str | None = None,
        token: str | None = None,
        channel: str = "",
        labels: Mapping[str, str] | None = None,
        app_version: str = "",
    ) -> EdgeConfig:
        """The config for the flat keywords ``EdgeClient(server, model, data_dir, ...)`` takes.

        ``server`` is one address, a list of them, or None (offline); ``policy`` is the
        :class:`FallbackPolicy`; the ``cache_*`` keywords make the :class:`CacheConfig`.
        """
        servers = (server,) if isinstance(server, str) else tuple(server or ())
        keys = trusted_keys if isinstance(trusted_keys, TrustedKeys) else tuple(Path(p) for p in trusted_keys or ())
        return cls(
            model=model,
            data_dir=Path(data_dir),
            servers=servers,
            trust=TrustConfig(keys, insecure),
            transport=transport or TransportConfig(),
            fallback=policy or FallbackPolicy(),
            cache=CacheConfig(cache_entries, cache_ttl_s, cache_max_bytes, cache_rows),
            recipes=tuple(recipes),
            codecs=tuple(codecs),
            threads=threads,
            optimized_model_cache=optimized_model_cache,
            device_id=device_id,
            max_payload_bytes=max_payload_bytes,
            tls_ca=Path(tls_ca) if tls_ca else None,
            token=token,
            channel=channel,
            labels=dict(labels or {}),
            app_version=app_version,
        )

    def replace(self, **changes: object) -> EdgeConfig:
        """This config with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
