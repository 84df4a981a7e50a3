"""The end-to-end demo: train, publish, serve, sync over a slow link, predict, survive a broken model.

Uses only public API, as a user would: the reference model and data, ``publish``,
the gRPC server, and ``EdgeClient``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgerec.device import EdgeClient, Prediction, SyncResult, TransportConfig
from edgerec.evaluation import roc_auc
from edgerec.reference.data import ClickGenerator, ReferenceConfig
from edgerec.registry import Registry
from edgerec.units import parse_rate

if TYPE_CHECKING:
    from edgerec.reference.model import DLRM

log = logging.getLogger(__name__)

MODEL = "ctr"


@dataclass
class DemoReport:
    """What the demo measured."""

    config: str
    rate: str
    syncs: list[SyncResult] = field(default_factory=list)
    predictions: list[dict[str, object]] = field(default_factory=list)
    local_auc: float = 0.0
    oracle_auc: float = 0.0
    changed_rows_fraction: float = 0.0
    signing_key_id: str = ""
    gate_auc_drop: float = 0.0


def run_demo(
    workdir: Path,
    *,
    size: str = "small",
    rate: str = "2mbit",
    seed: int = 0,
    on_step: Callable[[str], None] = lambda _: None,
) -> DemoReport:
    """Run the whole path once in ``workdir`` (emptied first) and return the measurements."""
    from edgerec.reference.train import build_and_train, export_program
    from edgerec.server.app import ServerConfig, start_server
    from edgerec.server.publish import PublishOptions, publish
    from edgerec.signing import generate_keypair

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    config = ReferenceConfig.from_name(size)
    generator = ClickGenerator(config, seed=seed)
    registry = Registry(workdir / "registry")
    report = DemoReport(config=size, rate=rate)
    samples = 200_000 if size == "small" else 400_000

    held_out = generator.day(3, 20_000)
    # The publisher's validation data: the accuracy gate and the golden cases use it.
    options = PublishOptions(validation={**held_out.inputs(), "labels": held_out.labels})
    on_step("training v1 on day 0")
    v1 = build_and_train(config, generator, day=0, num_samples=samples, seed=seed)
    sample = generator.day(99, 4)
    on_step("publishing v1")
    publish(export_program(v1, workdir / "models" / "v1.pt2", sample), MODEL, registry, options)

    keys = workdir / "keys"
    keys.mkdir()
    report.signing_key_id = generate_keypair(keys / "server.pem", keys / "server.pub")
    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0", signing_key=keys / "server.pem"))
    address = f"127.0.0.1:{server.port}"
    try:
        with EdgeClient(
            address,
            MODEL,
            workdir / "device",
            transport=TransportConfig(rate_bytes_per_s=parse_rate(rate)),
            trusted_keys=[keys / "server.pub"],
        ) as device:
            on_step(f"device syncs v1 over a {rate} link")
            report.syncs.append(device.sync())

            on_step("training v2: an incremental day on top of v1")
            v2 = build_and_train(
                config, generator, day=1, num_samples=samples // 10, base_state=v1.state_dict(), seed=seed
            )
            report.changed_rows_fraction = _changed_rows(v1, v2)
            on_step("publishing v2 (deltas from v1 are made now)")
            published = publish(export_program(v2, workdir / "models" / "v2.pt2", sample), MODEL, registry, options)
            report.gate_auc_drop = float(published.annotations.get("edgerec.gate.int8.auc_drop", "nan"))
            on_step(f"device syncs v2 over a {rate} link")
            report.syncs.append(device.sync())

            validation = generator.day(2, 20_000)
            batch = device.predict(validation.inputs())
            report.local_auc = roc_auc(validation.labels, batch.scores)
            report.oracle_auc = roc_auc(validation.labels, validation.true_prob)

            request = {name: array[:4] for name, array in validation.inputs().items()}
            on_step("predicting: local, then the same request again (cache)")
            report.predictions.append(_describe("first request", device.predict(request)))
            report.predictions.append(_describe("same request", device.predict(request)))

            on_step("breaking the local model file; the device falls back to the server")
            _damage(device)
            device.reload()
            other = {name: array[4:8] for name, array in validation.inputs().items()}
            report.predictions.append(_describe("new request, local model broken", device.predict(other)))
    finally:
        server.stop()
    return report


def _describe(label: str, prediction: Prediction) -> dict[str, object]:
    return {
        "request": label,
        "source": prediction.source,
        "version": prediction.version,
        "latency_ms": round(prediction.latency_s * 1e3, 3),
        "scores": [round(float(s), 4) for s in prediction.scores],
        "fallback_reason": prediction.fallback_reason,
    }


def _damage(device: EdgeClient) -> None:
    """Flip bytes in the middle of the active model's largest file, as a bad flash sector would."""
    current = device.store.current()
    assert current is not None
    largest = max(current.artifact.files, key=lambda f: f.size)
    with current.file(largest.path).open("r+b") as f:
        f.seek(largest.size // 2)
        chunk = f.read(64)
        f.seek(largest.size // 2)
        f.write(bytes(b ^ 0xFF for b in chunk))


def _changed_rows(v1: DLRM, v2: DLRM) -> float:
    """Fraction of embedding rows whose values differ between two versions."""
    changed = total = 0
    for a, b in zip(v1.embedding_tables(), v2.embedding_tables(), strict=True):
        rows = (a != b).any(dim=1)
        changed += int(rows.sum())
        total += rows.numel()
    return changed / total if total else 0.0


def sync_rows(report: DemoReport) -> list[tuple[str, ...]]:
    """One row per sync: versions, codec, bytes shipped against the full artifact, time."""
    return [
        (
            f"{sync.previous_version or '-'} -> {sync.version}",
            sync.recipe,
            sync.codec,
            f"{sync.payload_bytes:,}",
            f"{sync.full_bytes:,}",
            f"{sync.payload_bytes / sync.full_bytes:.1%}" if sync.full_bytes else "-",
            f"{sync.seconds:.2f}",
        )
        for sync in report.syncs
    ]


def prediction_rows(report: DemoReport) -> list[tuple[str, ...]]:
    """One row per prediction: which request, where the answer came from, version, latency."""
    return [
        (str(p["request"]), str(p["source"]), str(p["version"]), f"{p['latency_ms']:.3f}") for p in report.predictions
    ]


def summary_rows(report: DemoReport) -> list[tuple[str, str]]:
    """Facts about the run as (what, value) rows."""
    return [
        ("embedding rows changed v1 -> v2", f"{report.changed_rows_fraction:.1%}"),
        ("manifests and freshness statements signed by key", report.signing_key_id[:16]),
        ("device verified its updates with", ", ".join(sorted({sync.verification for sync in report.syncs}))),
        ("int8 AUC drop against fp32 at publish (gate: <= 0.001)", f"{report.gate_auc_drop:.5f}"),
        ("AUC of the local model (20k validation rows)", f"{report.local_auc:.4f}"),
        ("AUC of the true click probability", f"{report.oracle_auc:.4f}"),
    ]
