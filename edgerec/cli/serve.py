"""``edgerec serve``: run the model-push gRPC server."""

from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

import click


@click.command()
@click.option("--registry", "registry_dir", required=True, type=click.Path(path_type=Path), help="Registry folder.")
@click.option("--listen", default="127.0.0.1:50051", show_default=True, help="HOST:PORT to listen on.")
@click.option("--workers", default=16, show_default=True, help="RPC worker threads.")
@click.option(
    "--signing-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Ed25519 private key (PEM, from `edgerec keys generate`) to sign manifests with.",
)
@click.option("--manifest-ttl-hours", default=168, show_default=True, help="How long a signed manifest stays valid.")
def serve(registry_dir: Path, listen: str, workers: int, signing_key: Path | None, manifest_ttl_hours: int) -> None:
    """Serve updates and fallback inference from a registry until interrupted."""
    from edgerec.server.app import ServerConfig, start_server

    config = ServerConfig(
        registry=registry_dir,
        listen=listen,
        workers=workers,
        signing_key=signing_key,
        manifest_ttl=timedelta(hours=manifest_ttl_hours),
    )
    running = start_server(config)
    click.echo(f"serving {registry_dir} on {listen.rsplit(':', 1)[0]}:{running.port}", err=True)
    signal.signal(signal.SIGTERM, lambda *_: running.stop())
    try:
        running.wait()
    except KeyboardInterrupt:
        running.stop()
