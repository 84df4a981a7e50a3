"""``edgerec serve``: run the model-push gRPC server."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

import click

from edgerec.cli.registry_option import open_cli_registry, registry_options
from edgerec.units import parse_rate

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@registry_options
@click.option(
    "--registry-cache",
    "registry_cache_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="An s3:// registry's local cache of verified files (only a cache).  [default: ~/.cache/edgerec/registry]",
)
@click.option(
    "--payload-url-ttl",
    "payload_url_ttl_s",
    type=click.IntRange(1, 7 * 24 * 3600),
    default=900,
    show_default=True,
    help="Seconds the presigned payload URLs in each plan stay valid (an s3:// registry).",
)
@click.option(
    "--payload-base-url",
    "payload_base_urls",
    multiple=True,
    help="A public bucket or CDN in front of the s3:// registry's bucket: plans also list <URL>/<object key> "
    "(repeatable, at most 4).",
)
@click.option("--listen", default="127.0.0.1:50051", show_default=True, help="HOST:PORT to listen on.")
@click.option(
    "--workers",
    default=1100,
    show_default=True,
    help="RPC worker threads; each open payload stream holds one.",
)
@click.option(
    "--signing-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Ed25519 private key (PEM, from `edgerec keys generate`) to sign manifests with.",
)
@click.option("--manifest-ttl-hours", default=168, show_default=True, help="How long a signed manifest stays valid.")
@click.option("--tls-cert", type=_FILE, default=None, help="PEM certificate chain; with --tls-key, serve TLS only.")
@click.option("--tls-key", type=_FILE, default=None, help="PEM private key of --tls-cert.")
@click.option(
    "--tokens-file",
    type=_FILE,
    default=None,
    help="JSON of device id -> token sha256; calls need 'authorization: Bearer <token>'. Re-read when it changes.",
)
@click.option(
    "--max-streams-per-device", default=4, show_default=True, help="Payload streams one device may hold open (>= 1)."
)
@click.option(
    "--max-streams",
    type=int,
    default=None,
    help="Payload streams of all devices.  [default: workers - min(64, workers / 2)]",
)
@click.option("--per-device-rate", default=None, help="Payload bandwidth per device, e.g. '2mbit' or '250kB/s'.")
@click.option("--global-rate", default=None, help="Payload bandwidth of the whole server, e.g. '100mbit'.")
@click.option(
    "--min-stream-rate",
    default=None,
    help="Least a payload stream must move to keep its slot, e.g. '32kbit' (also the slowest pace a device "
    "may ask for).  [default: 4KiB/s]",
)
@click.option(
    "--stream-idle-timeout",
    "stream_idle_timeout_s",
    type=float,
    default=None,
    help="Seconds a payload stream may wait on a client that does not read.  [default: 30]",
)
@click.option(
    "--batch-wait-ms",
    default=2.0,
    show_default=True,
    help="Predict micro-batching: how long a request waits for others to share its runtime call (0: off).",
)
@click.option(
    "--max-predict-rows",
    type=click.IntRange(min=1),
    default=4096,
    show_default=True,
    help="Rows one Predict request may carry; more: RESOURCE_EXHAUSTED.",
)
@click.option(
    "--max-predict-rows-in-flight",
    type=click.IntRange(min=1),
    default=None,
    help="Rows of all Predict requests run at once; beyond: RESOURCE_EXHAUSTED.  [default: 4 x --max-predict-rows]",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (HOST as in --listen; 0: any free port).",
)
@click.option(
    "--fleet-replica-id",
    default=None,
    help="This replica's name in the registry's fleet records ([a-z0-9][a-z0-9._-]*).  [default: host-pid-random]",
)
@click.option(
    "--fleet-flush-every",
    "fleet_flush_every_s",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds between writes of this replica's fleet records to the registry.",
)
@click.option(
    "--rollout-tick",
    "rollout_tick_s",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Seconds between checks of the rollouts' gates by this replica (0: this replica checks none).",
)
@click.option(
    "--policy-refresh",
    "policy_refresh_s",
    type=click.FloatRange(0, 3600),
    default=2.0,
    show_default=True,
    help="Seconds a replica keeps a model's release policy before reading it again.",
)
def serve(
    registry_spec: str,
    s3_endpoint: str | None,
    registry_cache_dir: Path | None,
    payload_url_ttl_s: int,
    payload_base_urls: tuple[str, ...],
    listen: str,
    workers: int,
    signing_key: Path | None,
    manifest_ttl_hours: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tokens_file: Path | None,
    max_streams_per_device: int,
    max_streams: int | None,
    per_device_rate: str | None,
    global_rate: str | None,
    min_stream_rate: str | None,
    stream_idle_timeout_s: float | None,
    batch_wait_ms: float,
    max_predict_rows: int,
    max_predict_rows_in_flight: int | None,
    metrics_port: int | None,
    fleet_replica_id: str | None,
    fleet_flush_every_s: float,
    rollout_tick_s: float,
    policy_refresh_s: float,
) -> None:
    """Serve updates and fallback inference from a registry until interrupted."""
    from edgerec.server.app import ServerConfig, start_server
    from edgerec.server.progress import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MIN_RATE

    try:
        config = ServerConfig(
            registry=registry_spec if registry_spec.startswith("s3://") else Path(registry_spec),
            s3_endpoint=s3_endpoint,
            registry_cache_dir=registry_cache_dir,
            payload_url_ttl_s=payload_url_ttl_s,
            payload_base_urls=payload_base_urls,
            listen=listen,
            workers=workers,
            signing_key=signing_key,
            manifest_ttl=timedelta(hours=manifest_ttl_hours),
            tls_cert=tls_cert,
            tls_key=tls_key,
            tokens_file=tokens_file,
            max_streams_per_device=max_streams_per_device,
            max_streams=max_streams,
            per_device_rate=parse_rate(per_device_rate) if per_device_rate else None,
            global_rate=parse_rate(global_rate) if global_rate else None,
            batch_wait_s=batch_wait_ms / 1e3,
            max_predict_rows=max_predict_rows,
            max_predict_rows_in_flight=max_predict_rows_in_flight,
            metrics_port=metrics_port,
            metrics_host=listen.rsplit(":", 1)[0].strip("[]") or "127.0.0.1",
            min_stream_rate=parse_rate(min_stream_rate) if min_stream_rate else DEFAULT_MIN_RATE,
            stream_idle_timeout_s=DEFAULT_IDLE_TIMEOUT_S if stream_idle_timeout_s is None else stream_idle_timeout_s,
            fleet_replica_id=fleet_replica_id,
            fleet_flush_every_s=fleet_flush_every_s,
            rollout_tick_s=rollout_tick_s or None,
            policy_refresh_s=policy_refresh_s,
        )
    except ValueError as exc:  # ConfigError, or a rate that does not parse: one line, before anything starts
        raise click.ClickException(str(exc)) from exc
    open_cli_registry(registry_spec, s3_endpoint)  # an unreachable bucket: one clear line, nothing started
    running = start_server(config)
    click.echo(f"serving {registry_spec} on {listen.rsplit(':', 1)[0]}:{running.port}", err=True)
    if running.metrics_port is not None:
        click.echo(f"metrics on http://{config.metrics_host}:{running.metrics_port}/metrics", err=True)
        click.echo(f"rollouts on http://{config.metrics_host}:{running.metrics_port}/rollouts", err=True)
    signal.signal(signal.SIGTERM, lambda *_: running.stop())
    try:
        running.wait()
    except KeyboardInterrupt:
        running.stop()
