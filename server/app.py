"""Builds and runs the model-push gRPC server: updates, fallback inference, health, reflection."""

from __future__ import annotations

import logging
from concurrent import futures
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from edgerec.errors import ConfigError
from edgerec.registry import LocalRegistry, ModelRegistry, open_registry
from edgerec.server.auth import TokenTable
from edgerec.server.batching import MicroBatcher
from edgerec.server.delta_worker import DEFAULT_DELTA_WORKERS, DEFAULT_MAX_PENDING_DELTAS, DeltaWorker
from edgerec.server.freshness import DEFAULT_FRESHNESS_TTL, FreshnessSigner
from edgerec.server.inference_service import DEFAULT_MAX_ROWS, InferenceService
from edgerec.server.limits import StreamLimiter, StreamLimits
from edgerec.server.message_limits import MessageSizeLimits
from edgerec.server.metrics_http import MetricsHttpServer, ServerMetrics
from edgerec.server.payload_urls import DEFAULT_URL_TTL_S, PayloadUrls, check_base_urls
from edgerec.server.payloads import DEFAULT_GENERIC_DIFF_MAX_BYTES, PayloadStore
from edgerec.server.planner import UpdatePlanner
from edgerec.server.progress import (
    DEFAULT_GRACE_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MIN_RATE,
    DEFAULT_WINDOW_S,
    ProgressRules,
)
from edgerec.server.release.controller import RolloutController
from edgerec.server.release.fleet_doc import REPLICA_ID
from edgerec.server.release.fleet_store import DEFAULT_FLUSH_EVERY_S, RegistryFleet, default_replica_id
from edgerec.server.release.page import RolloutCollector, render_rollouts
from edgerec.server.release.policy_cache import DEFAULT_POLICY_REFRESH_S, PolicyCache
from edgerec.server.request_guard import MalformedRequestGuard
from edgerec.server.security import SecurityInterceptor
from edgerec.server.signer import DEFAULT_TTL, ManifestSigner
from edgerec.server.telemetry_service import DEFAULT_MAX_BYTES as DEFAULT_MAX_TELEMETRY_BYTES
from edgerec.server.telemetry_service import DEFAULT_MAX_REPORT_BYTES, TelemetryService
from edgerec.server.update_service import ModelUpdateService
from edgerec.signing import load_private_key
from edgerec.v1 import inference_pb2, inference_pb2_grpc, telemetry_pb2, telemetry_pb2_grpc, update_pb2, update_pb2_grpc

log = logging.getLogger(__name__)

REPORT_STATUS = f"/{telemetry_pb2.DESCRIPTOR.services_by_name['Telemetry'].full_name}/ReportStatus"
SERVICE_NAMES = (
    update_pb2.DESCRIPTOR.services_by_name["ModelUpdate"].full_name,
    inference_pb2.DESCRIPTOR.services_by_name["Inference"].full_name,
    telemetry_pb2.DESCRIPTOR.services_by_name["Telemetry"].full_name,
)


# Enough threads for a thousand paced payload streams at once plus the reserve below; an idle thread
# costs little memory (its stack is mostly untouched).
DEFAULT_WORKERS = 1100
# RPC threads kept from payload streams for CheckUpdate, Predict and telemetry.
RESERVED_WORKERS = 64
DEFAULT_ROLLOUT_TICK_S = 10.0


@dataclass(frozen=True)
class ServerConfig:
    """Server settings, with their defaults. The bounds beside each field are checked at construction
    (ConfigError, a ValueError)."""

    # A folder (the embedded default) or s3://BUCKET/PREFIX, shared by replicas (edgerec.registry.open_registry).
    registry: Path | str
    listen: str = "127.0.0.1:50051"
    # --- an S3 registry: its endpoint (None: AWS_ENDPOINT_URL, else AWS) and this replica's local cache
    # of verified files (None: ~/.cache/edgerec/registry); only a cache, safe to lose ---
    s3_endpoint: str | None = None
    registry_cache_dir: Path | None = None
    # Lifetime of the presigned payload URLs in each plan, 1 s..7 days (an S3 registry only).
    payload_url_ttl_s: int = DEFAULT_URL_TTL_S
    # Plain http(s) URLs of a public bucket or a CDN in front of one: each plan also lists
    # <base>/<object key> for each payload (at most 4; an S3 registry only).
    payload_base_urls: tuple[str, ...] = ()
    # RPC threads, >= 2. The synchronous gRPC server ties one to each open payload stream for its whole
    # life, so this bounds the streams served at once (see max_streams); idle threads cost little.
    workers: int = DEFAULT_WORKERS
    # Largest request message (grpc.max_receive_message_length), >= 64 KiB; larger ones get RESOURCE_EXHAUSTED.
    # Predict requests carry tensors; a 1 MiB chunk plus framing fits in the default 4 MiB.
    max_receive_bytes: int = 16 * 1024 * 1024
    generic_diff_max_bytes: int = DEFAULT_GENERIC_DIFF_MAX_BYTES
    # A delta missing at CheckUpdate is made in the background (edgerec.server.delta_worker) by this
    # many threads, >= 1, with at most max_pending_deltas (>= 1) queued or running; the answer offers
    # the best payload that exists meanwhile.
    delta_workers: int = DEFAULT_DELTA_WORKERS
    max_pending_deltas: int = DEFAULT_MAX_PENDING_DELTAS
    # Ed25519 private key (PEM) to sign manifests and freshness statements with; None serves them unsigned
    # (devices then refuse them unless they opted out of verification).
    signing_key: Path | None = None
    manifest_ttl: timedelta = DEFAULT_TTL
    # Lifetime, > 0, of the signed freshness statement in each CheckUpdate answer (with a signing key):
    # how long a recorded "no update" or "this is the latest" can be shown to a device that sent no nonce.
    # A verifying device's clock must be within about this much of the server's.
    freshness_ttl: timedelta = DEFAULT_FRESHNESS_TTL
    # --- who may talk to the server, and how much (edgerec.server.security) ---
    # PEM certificate chain and private key: both set serves TLS only; both None serves plain text.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # JSON of device id -> sha256 of its bearer token (edgerec.server.auth); None lets every caller in.
    tokens_file: Path | None = None
    # FetchPayload streams one device may hold open, >= 1 (without tokens a device is an IP address with
    # the device id it claims); None: no limit.
    max_streams_per_device: int | None = 4
    # FetchPayload streams of all devices together, 1..workers-1; None: all the workers but a reserve
    # (half of them, at most RESERVED_WORKERS), so that CheckUpdate and Predict always find a free
    # thread however slowly capped streams flow.
    max_streams: int | None = None
    # Payload bytes per second, > 0, for each device and for the whole server; None: unlimited.
    per_device_rate: float | None = None
    global_rate: float | None = None
    # What a payload stream must do to keep its slot (edgerec.server.progress): move min_stream_rate
    # bytes/s (> 0; also the slowest pace a device may ask for) over each window of stream_rate_window_s
    # (> 0) seconds spent waiting on its client, never wait stream_idle_timeout_s (> 0) on one chunk, and
    # end within its remaining bytes / min_stream_rate plus stream_grace_s (>= 0) seconds.
    min_stream_rate: float = DEFAULT_MIN_RATE
    stream_rate_window_s: float = DEFAULT_WINDOW_S
    stream_idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    stream_grace_s: float = DEFAULT_GRACE_S
    # --- Predict micro-batching (edgerec.server.batching): wait bound in seconds (0: off) and rows per batch ---
    batch_wait_s: float = 0.002
    max_batch: int = 256
    # --- observability (edgerec.server.metrics_http, edgerec.server.telemetry_service) ---
    # Port of the Prometheus /metrics HTTP endpoint (0: any free port); None: not served.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # Devices whose latest status report is kept, >= 1; the least recently reporting go first.
    max_telemetry_devices: int = 10_000
    # Bytes of one status report, >= 1 KiB (larger ones get RESOURCE_EXHAUSTED unparsed), and of all the
    # reports kept, >= max_telemetry_report_bytes (the least recently reporting devices go first).
    max_telemetry_report_bytes: int = DEFAULT_MAX_REPORT_BYTES
    max_telemetry_bytes: int = DEFAULT_MAX_TELEMETRY_BYTES
    # --- Predict limits (edgerec.server.inference_service); beyond them: RESOURCE_EXHAUSTED ---
    # Rows one request may carry, >= 1, and rows of all requests decoded and run at once, >= max_predict_rows
    # (None: four requests' worth).
    max_predict_rows: int = DEFAULT_MAX_ROWS
    max_predict_rows_in_flight: int | None = None
    # --- fleet records (edgerec.server.release.fleet_store), shared with the other replicas ---
    # This replica's name in the registry ([a-z0-9][a-z0-9._-]*, at most 64 characters); None: made from
    # the host name, the pid and a random part. Its records are written every fleet_flush_every_s (> 0).
    fleet_replica_id: str | None = None
    fleet_flush_every_s: float = DEFAULT_FLUSH_EVERY_S
    # --- release policy (edgerec.server.release): how long, 0..3600 s, a replica keeps a model's policy
    # before reading it again, and how often, > 0 s, its rollout controller checks the gates and moves
    # the waves (None: this replica runs no controller; another replica's, or tick() calls, do) ---
    policy_refresh_s: float = DEFAULT_POLICY_REFRESH_S
    rollout_tick_s: float | None = DEFAULT_ROLLOUT_TICK_S

    def __post_init__(self) -> None:
        if not str(self.registry).strip():
            raise ConfigError("registry must be a folder or s3://BUCKET/PREFIX, got an empty string")
        if not 1 <= self.payload_url_ttl_s <= 7 * 24 * 3600:
            raise ConfigError(f"payload_url_ttl_s must be in 1..604800 (7 days), got {self.payload_url_ttl_s}")
        check_base_urls(self.payload_base_urls)
        if self.manifest_ttl <= timedelta(0):
            raise ConfigError(f"manifest_ttl must be positive, got {self.manifest_ttl}")
        if self.delta_workers < 1 or self.max_pending_deltas < 1:
            raise ConfigError(
                f"need delta_workers >= 1 and max_pending_deltas >= 1, got {self.delta_workers}, "
                f"{self.max_pending_deltas}"
            )
        if self.generic_diff_max_bytes < 0:
            raise ConfigError(f"generic_diff_max_bytes must be >= 0, got {self.generic_diff_max_bytes}")
        if not self.listen.strip():
            raise ConfigError("listen must be HOST:PORT, got an empty string")
        if self.workers < 2:
            raise ConfigError(f"workers must be >= 2, got {self.workers}")
        if self.max_receive_bytes < 64 * 1024:
            raise ConfigError(f"max_receive_bytes must be >= 64 KiB, got {self.max_receive_bytes}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together: set both or neither")
        if self.max_streams_per_device is not None and self.max_streams_per_device < 1:
            raise ConfigError(f"max_streams_per_device must be >= 1 or None, got {self.max_streams_per_device}")
        if self.max_streams is not None and not 1 <= self.max_streams < self.workers:
            raise ConfigError(f"max_streams must be in 1..{self.workers - 1} (workers - 1), got {self.max_streams}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be in 0..65535 or None, got {self.metrics_port}")
        if self.batch_wait_s < 0 or self.max_batch < 1:
            raise ConfigError(f"need batch_wait_s >= 0 and max_batch >= 1, got {self.batch_wait_s}, {self.max_batch}")
        if self.max_telemetry_devices < 1:
            raise ConfigError(f"max_telemetry_devices must be >= 1, got {self.max_telemetry_devices}")
        if not 1024 <= self.max_telemetry_report_bytes <= self.max_telemetry_bytes:
            raise ConfigError(
                "need 1024 <= max_telemetry_report_bytes <= max_telemetry_bytes, "
                f"got {self.max_telemetry_report_bytes}, {self.max_telemetry_bytes}"
            )
        if self.max_predict_rows < 1:
            raise ConfigError(f"max_predict_rows must be >= 1, got {self.max_predict_rows}")
        if self.max_predict_rows_in_flight is not None and self.max_predict_rows_in_flight < self.max_predict_rows:
            raise ConfigError(
                f"max_predict_rows_in_flight must be >= max_predict_rows ({self.max_predict_rows}) or None, "
                f"got {self.max_predict_rows_in_flight}"
            )
        for name in ("per_device_rate", "global_rate"):
            rate = getattr(self, name)
            if rate is not None and not rate > 0:
                raise ConfigError(f"{name} must be > 0 bytes/s or None, got {rate}")
        for name in ("min_stream_rate", "stream_rate_window_s", "stream_idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not self.stream_grace_s >= 0:
            raise ConfigError(f"stream_grace_s must be >= 0, got {self.stream_grace_s}")
        if self.freshness_ttl <= timedelta(0):
            raise ConfigError(f"freshness_ttl must be > 0, got {self.freshness_ttl}")
        if self.fleet_replica_id is not None and not REPLICA_ID.match(self.fleet_replica_id):
            raise ConfigError(f"fleet_replica_id must match {REPLICA_ID.pattern}, got {self.fleet_replica_id[:80]!r}")
        if not 0 <= self.policy_refresh_s <= 3600:
            raise ConfigError(f"policy_refresh_s must be in 0..3600, got {self.policy_refresh_s}")
        if self.rollout_tick_s is not None and not 0 < self.rollout_tick_s <= 24 * 3600:
            raise ConfigError(f"rollout_tick_s must be in (0, 86400] or None, got {self.rollout_tick_s}")
        if not 0 < self.fleet_flush_every_s <= 24 * 3600:
            raise ConfigError(f"fleet_flush_every_s must be in (0, 86400], got {self.fleet_flush_every_s}")

    def progress_rules(self) -> ProgressRules:
        """The progress a payload stream must make to keep its slot."""
        return ProgressRules(
            self.min_stream_rate, self.stream_rate_window_s, self.stream_idle_timeout_s, self.stream_grace_s
        )

    def stream_limits(self) -> StreamLimits:
        """The FetchPayload limits, with max_streams' default filled in."""
        return StreamLimits(
            max_streams_per_device=self.max_streams_per_device,
            max_streams=self.max_streams if self.max_streams is not None else default_max_streams(self.workers),
            per_device_rate=self.per_device_rate,
            global_rate=self.global_rate,
            progress=self.progress_rules(),
        )

    def open_registry(self) -> ModelRegistry:
        """The registry this server reads (a local folder, or a shared bucket)."""
        return open_registry(self.registry, s3_endpoint=self.s3_endpoint, cache_dir=self.registry_cache_dir)

    def payload_urls(self, registry: ModelRegistry) -> PayloadUrls | None:
        """What lists HTTP sources in plans; None for a local folder (its devices use FetchPayload)."""
        if isinstance(registry, LocalRegistry):
            return None
        return PayloadUrls(registry, ttl_s=self.payload_url_ttl_s, base_urls=self.payload_base_urls)


def default_max_streams(workers: int) -> int:
    """The payload streams ``workers`` threads serve at once, keeping a reserve for the other calls."""
    return max(1, workers - min(RESERVED_WORKERS, workers // 2))


class RunningServer:
    """A started server; ``port`` is the bound port (useful with port 0), ``metrics_port`` the /metrics one.

    ``payload_streams`` hands out the FetchPayload slots (``open_streams()`` counts those taken);
    ``fleet`` holds the fleet records this replica observes and reads every replica's;
    ``rollouts`` moves the staged rollouts by their gates (``rollouts.tick()`` for one check now).
    """

    def __init__(
        self,
        server: grpc.Server,
        port: int,
        health_servicer: health.HealthServicer,
        *,
        metrics: ServerMetrics | None = None,
        telemetry: TelemetryService | None = None,
        inference: InferenceService | None = None,
        metrics_http: MetricsHttpServer | None = None,
        payload_streams: StreamLimiter | None = None,
        deltas: DeltaWorker | None = None,
        fleet: RegistryFleet | None = None,
        rollouts: RolloutController | None = None,
    ) -> None:
        self.server = server
        self.fleet = fleet
        self.rollouts = rollouts
        self.deltas = deltas
        self.payload_streams = payload_streams
        self.port = port
        self.health = health_servicer
        self.metrics = metrics
        self.telemetry = telemetry
        self.inference = inference
        self._metrics_http = metrics_http
        self.metrics_port = metrics_http.port if metrics_http is not None else None

    def stop(self, grace: float = 1.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.deltas is not None:
            self.deltas.close()
        if self.inference is not None:
            self.inference.close()
        if self._metrics_http is not None:
            self._metrics_http.stop()
        if self.rollouts is not None:
            self.rollouts.stop()
        if self.fleet is not None:
            self.fleet.stop()

    def wait(self) -> None:
        self.server.wait_for_termination()


def start_server(config: ServerConfig, *, fleet: RegistryFleet | None = None) -> RunningServer:
    """Start serving ``config.registry`` on ``config.listen`` and return at once.

    ``fleet`` receives what devices ask and report (None: a :class:`RegistryFleet` on the server's
    registry); the server starts it and stops it (a final flush) when it stops.
    """
    registry = config.open_registry()
    if fleet is None:
        fleet = RegistryFleet(
            registry,
            replica_id=config.fleet_replica_id or default_replica_id(),
            flush_every_s=config.fleet_flush_every_s,
        )
    payloads = PayloadStore(registry, generic_diff_max_bytes=config.generic_diff_max_bytes)
    deltas = DeltaWorker(payloads, workers=config.delta_workers, max_pending=config.max_pending_deltas)
    signing_key = load_private_key(config.signing_key) if config.signing_key else None
    signer = ManifestSigner(signing_key, config.manifest_ttl) if signing_key else None
    freshness = FreshnessSigner(signing_key, config.freshness_ttl) if signing_key else None
    if signing_key is None:
        log.warning(
            "no signing key: manifests and answers are served unsigned; devices refuse them unless they "
            "opted out of verification (insecure)"
        )
    open_services = (health.SERVICE_NAME, reflection.SERVICE_NAME)
    tokens = TokenTable(config.tokens_file) if config.tokens_file else None
    if tokens is None:
        log.warning("no tokens file: any caller may fetch models and predict")
    elif config.tls_cert is None:
        log.warning("device tokens without TLS: they cross the network in plain text")
    payload_streams = StreamLimiter(config.stream_limits())
    interceptor = SecurityInterceptor(tokens, payload_streams, open_services)
    telemetry = TelemetryService(
        registry,
        config.max_telemetry_devices,
        max_report_bytes=config.max_telemetry_report_bytes,
        max_bytes=config.max_telemetry_bytes,
        observer=fleet,
    )
    metrics = ServerMetrics(telemetry, registry)
    metrics.registry.register(RolloutCollector(registry))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="edgerec-rpc"),
        # Innermost, the size bounds: the security interceptor still answers an unauthenticated caller first.
        interceptors=[
            MalformedRequestGuard(),
            interceptor,
            metrics.interceptor(),
            MessageSizeLimits({REPORT_STATUS: telemetry.max_report_bytes}),
        ],
        options=[
            ("grpc.max_receive_message_length", config.max_receive_bytes),
            # Probing sizes only what the server receives (small requests); each new connection's
            # probe pings are pure cost on a control plane that a fleet connects to once per check.
            ("grpc.http2.bdp_probe", 0),
        ],
    )
    update_pb2_grpc.add_ModelUpdateServicer_to_server(  # type: ignore[no-untyped-call]
        ModelUpdateService(
            registry,
            UpdatePlanner(
                registry,
                payloads,
                signer,
                freshness,
                config.payload_urls(registry),
                deltas=deltas,
                observer=fleet,
                policies=PolicyCache(registry, config.policy_refresh_s),
            ),
            min_stream_rate=config.min_stream_rate,
        ),
        server,
    )
    batcher = (
        MicroBatcher(config.batch_wait_s, config.max_batch, observer=metrics.observe_batch)
        if config.batch_wait_s > 0
        else None
    )
    inference = InferenceService(
        registry,
        batcher=batcher,
        observer=metrics.observe_predict,
        batch_observer=metrics.observe_batch,
        max_rows=config.max_predict_rows,
        max_rows_in_flight=config.max_predict_rows_in_flight,
    )
    # The first Predict after a start must not pay for loading its model.
    inference.warm()
    inference_pb2_grpc.add_InferenceServicer_to_server(inference, server)  # type: ignore[no-untyped-call]
    telemetry_pb2_grpc.add_TelemetryServicer_to_server(telemetry, server)  # type: ignore[no-untyped-call]
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*SERVICE_NAMES, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((*SERVICE_NAMES, *open_services), server)
    port = _bind(server, config)
    metrics_http = (
        MetricsHttpServer(
            metrics.registry,
            config.metrics_host,
            config.metrics_port,
            pages={"/rollouts": lambda: render_rollouts(registry, fleet)},
        )
        if config.metrics_port is not None
        else None
    )
    server.start()
    fleet.start()
    # Every replica may run a controller: each move is a compare-and-swap on the policy, so one wins.
    rollouts = RolloutController(registry, fleet, tick_s=config.rollout_tick_s or DEFAULT_ROLLOUT_TICK_S)
    if config.rollout_tick_s is not None:
        rollouts.start()
    log.info(
        "serving registry %s on port %d (%s, %s)",
        registry.location,
        port,
        "TLS" if config.tls_cert else "plain text",
        f"{len(tokens)} device tokens" if tokens is not None else "no tokens",
    )
    return RunningServer(
        server,
        port,
        health_servicer,
        metrics=metrics,
        telemetry=telemetry,
        inference=inference,
        metrics_http=metrics_http,
        payload_streams=payload_streams,
        deltas=deltas,
        fleet=fleet,
        rollouts=rollouts,
    )


def _bind(server: grpc.Server, config: ServerConfig) -> int:
    """Listen on ``config.listen``, over TLS when a certificate is configured; return the port."""
    try:
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = grpc.ssl_server_credentials([(config.tls_key.read_bytes(), config.tls_cert.read_bytes())])
            port = server.add_secure_port(config.listen, credentials)
        else:
            port = server.add_insecure_port(config.listen)
    except RuntimeError:  # gRPC's "failed to bind"
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {config.listen}: address in use or not available")
    return port
