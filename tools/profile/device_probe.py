"""The device side of one profile run, in its own process: sync one version with one codec, then predict.

    python -m edgerec.tools.profile.device_probe --server HOST:PORT --model ctr --data-dir DIR \\
        --version 2 --codec tensor

The data directory must already hold the base version. Prints one JSON object on stdout:
phase times, bytes, and this process's CPU seconds and peak RSS over the update.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgerec.device import Observer, SyncEvent, SyncPhase, TransportConfig
from edgerec.device.artifacts import open_artifact
from edgerec.device.health import neutral_inputs
from edgerec.device.storage import ModelStore
from edgerec.device.sync import FileProgress, Syncer
from edgerec.device.transport import PayloadTransport, ServerConnection
from edgerec.signing import load_public_key
from edgerec.trust import TrustedKeys, UpdateVerifier
from edgerec.v1 import update_pb2

log = logging.getLogger(__name__)


class TimedChannel:
    """The device's update channel, timing its update checks and measuring their answers (a wrapper, no subclass)."""

    def __init__(self, connection: ServerConnection) -> None:
        self.connection = connection
        self.device_id = connection.device_id
        self.config = connection.config
        self.check_s = 0.0
        self.check_response_bytes = 0

    def check_update(self, request: update_pb2.CheckUpdateRequest) -> update_pb2.CheckUpdateResponse:
        started = time.perf_counter()
        try:
            response = self.connection.check_update(request)
        finally:
            self.check_s += time.perf_counter() - started
        self.check_response_bytes = response.ByteSize()
        return response

    def payload_transports(self) -> Sequence[PayloadTransport]:
        return self.connection.payload_transports()


class DownloadTimer(Observer):
    """Times each payload's download, from its DOWNLOAD phase to its DOWNLOADED phase."""

    def __init__(self) -> None:
        self.downloads: list[dict[str, Any]] = []
        self._started: dict[str, tuple[float, str]] = {}

    def on_sync(self, event: SyncEvent) -> None:
        if event.phase is SyncPhase.DOWNLOAD:
            self._started[event.path] = (time.perf_counter(), event.detail)
        elif event.phase is SyncPhase.DOWNLOADED and event.path in self._started:
            began, codec = self._started.pop(event.path)
            self.downloads.append(
                {"path": event.path, "codec": codec, "bytes": event.total, "seconds": time.perf_counter() - began}
            )


def first_prediction(store: ModelStore, version: int) -> np.ndarray:
    """What a device does on its first predict after a switch: verify the files, load, run once.

    Loaded by the SDK's artifact loader (the runtime the artifact names), but called here rather
    than through ``EdgeClient.predict``, whose deadline policy would send a first call slower than
    its local deadline (loading included) to the server instead.
    """
    installed = store.current()
    if installed is None or installed.version != version:
        raise RuntimeError(f"after the sync the device runs {installed and installed.version}, not {version}")
    store.verify(installed)
    loaded = open_artifact(installed.manifest, installed.artifact, installed.directory, threads=1, warm_up=False)
    outputs = loaded.run(neutral_inputs(installed.manifest))
    scores = np.asarray(outputs[loaded.output_names[0]], dtype=np.float32)
    if not np.all(np.isfinite(scores)):
        raise RuntimeError(f"version {version} predicts non-finite scores")
    return scores


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def probe(
    server: str,
    model: str,
    data_dir: Path,
    version: int,
    codec: str,
    *,
    recipe: str = "int8",
    chunk_bytes: int = 64 * 1024,
    timeout_s: float = 600.0,
    trusted_key: Path,
    progress: FileProgress | None = None,
) -> dict[str, Any]:
    """Update ``data_dir`` to ``version`` offering only ``codec``, predict once; return the measurements."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    config = TransportConfig(max_chunk_bytes=chunk_bytes, check_timeout_s=timeout_s, download_deadline_s=timeout_s)
    verifier = UpdateVerifier(model, TrustedKeys.from_public_keys([load_public_key(trusted_key)]))
    connection = ServerConnection(server, config)
    channel, timer = TimedChannel(connection), DownloadTimer()
    syncer = Syncer(
        ModelStore(data_dir, model), channel, codecs=(codec,), recipes=(recipe,), verifier=verifier, observer=timer
    )
    try:
        result = syncer.sync(version, progress)
    finally:
        syncer.close()
        connection.close()
    synced = time.perf_counter()
    first_prediction(ModelStore(data_dir, model), version)
    predicted = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_SELF)
    transfer_s = sum(float(d["seconds"]) for d in timer.downloads)
    sync_s = synced - started
    return {
        "version": result.version,
        "previous_version": result.previous_version,
        "codec_used": result.codec,
        "payload_bytes": result.payload_bytes,
        "full_bytes": result.full_bytes,
        "payloads": result.payloads,
        "fell_back_to_full": result.fell_back_to_full,
        "check_s": channel.check_s,
        "check_response_bytes": channel.check_response_bytes,
        "transfer_s": transfer_s,
        "downloads": timer.downloads,
        "apply_s": max(0.0, sync_s - channel.check_s - transfer_s),
        "sync_s": sync_s,
        "first_predict_s": predicted - synced,
        "cpu_s": _cpu(after) - _cpu(before),
        "baseline_rss_bytes": before.ru_maxrss * 1024,
        "peak_rss_bytes": after.ru_maxrss * 1024,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True, type=Path)
    parser.add_argument("--version", required=True, type=int)
    parser.add_argument("--codec", required=True)
    parser.add_argument("--recipe", default="int8")
    parser.add_argument("--chunk-bytes", type=int, default=64 * 1024)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--trusted-key", type=Path, required=True, help="public key (PEM) the server's answers must be signed by"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    try:
        measured = probe(
            args.server,
            args.model,
            args.data_dir,
            args.version,
            args.codec,
            recipe=args.recipe,
            chunk_bytes=args.chunk_bytes,
            timeout_s=args.timeout,
            trusted_key=args.trusted_key,
        )
    except Exception as exc:  # the parent reads the reason from stdout
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
