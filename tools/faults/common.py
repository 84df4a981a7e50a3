"""What every fault scenario shares: the registry and server under test, the checks of an installed
model, and the summary table."""

from __future__ import annotations

import contextlib
import filecmp
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgerec.device import EdgeClient, RetryPolicy
from edgerec.device.storage import ModelStore
from edgerec.errors import EdgerecError
from edgerec.hashing import sha256_file
from edgerec.registry import Registry

PACKAGE: Final = "edgerec.tools.faults"
log = logging.getLogger(__name__)

MODEL: Final = "ctr"
# Fast retries for the runs (the SDK's defaults wait longer between tries).
QUICK_RETRY: Final = RetryPolicy(backoff_initial_s=0.05)


def build_registry(root: Path, *, size: str = "small", seed: int = 3, samples: int = 20_000) -> Registry:
    """Train, export and publish two versions of the reference model (v2: one more small day on v1)."""
    from edgerec.reference.data import ClickGenerator, ReferenceConfig
    from edgerec.reference.train import build_and_train, export_program
    from edgerec.server.publish import PublishOptions, publish

    config = ReferenceConfig.from_name(size)
    generator = ClickGenerator(config, seed=seed)
    registry = Registry(root)
    sample = generator.day(99, 4)
    v1 = build_and_train(config, generator, day=0, num_samples=samples, epochs=1)
    v2 = build_and_train(config, generator, day=1, num_samples=max(samples // 20, 256), base_state=v1.state_dict())
    for name, model in (("v1", v1), ("v2", v2)):
        publish(
            export_program(model, root / "sources" / f"{name}.pt2", sample),
            MODEL,
            registry,
            PublishOptions(no_gate=True),
        )
    log.info("built a %s registry with versions %s in %s", size, registry.versions(MODEL), root)
    return registry


def open_registry(path: Path | None, workdir: Path, *, size: str = "small") -> Registry:
    """The registry at ``path`` if it holds two versions of the model, else one built there (or in ``workdir``)."""
    root = path if path is not None else workdir / "registry"
    if (root / "index.sqlite").exists():
        registry = Registry(root)
        with contextlib.suppress(EdgerecError):
            if len(registry.versions(MODEL, include_partial=False)) >= 2:
                return registry
        raise ValueError(f"{root} is a registry without two versions of {MODEL!r}")
    return build_registry(root, size=size)


def versions_under_test(registry: Registry) -> tuple[int, int]:
    """(old, new): the two latest full versions of the model."""
    versions = registry.versions(MODEL, include_partial=False)
    if len(versions) < 2:
        raise ValueError(f"the registry needs two versions of {MODEL!r}, has {versions}")
    return versions[-2], versions[-1]


@contextlib.contextmanager
def serving(registry: Registry, **settings: Any) -> Iterator[str]:
    """The real server (``edgerec serve``) over ``registry`` on a free loopback port, with ServerConfig
    ``settings``; yields its address."""
    from edgerec.server.app import ServerConfig, start_server

    server = start_server(ServerConfig(registry=registry.root, listen="127.0.0.1:0", **settings))
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(grace=0)


@contextlib.contextmanager
def serving_update_service(service: Any) -> Iterator[str]:
    """A gRPC server on loopback serving only ``service`` (a ModelUpdateService, often a misbehaving
    subclass); yields its address."""
    from concurrent import futures

    import grpc

    from edgerec.v1 import update_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="update-rpc"))
    update_pb2_grpc.add_ModelUpdateServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=0).wait()


# --- checks shared by every scenario ---------------------------------------------------------


def installed_problems(store: ModelStore, registry: Registry, expected: int | None) -> list[str]:
    """Why the active version is not ``expected`` with every file intact and identical to the registry."""
    try:
        current = store.current()
    except EdgerecError as exc:
        return [f"the active version is unreadable: {exc}"]
    version = current.version if current is not None else None
    if version != expected:
        return [f"active version is {version}, expected {expected}"]
    if current is None:
        return []
    problems = []
    published = {f.path: f for f in registry.files(MODEL, current.version) if f.recipe == current.recipe}
    if set(published) != {f.path for f in current.artifact.files}:
        problems.append(f"version {version} ({current.recipe}) lists other files than the registry")
    for f in current.artifact.files:
        local = current.file(f.path)
        if not local.is_file():
            problems.append(f"{f.path} is missing")
            continue
        if sha256_file(local) != f.sha256:
            problems.append(f"{f.path} does not match the active manifest's sha256")
        source = registry.file_path(MODEL, current.version, f.path)
        if f.path in published and not filecmp.cmp(local, source, shallow=False):
            problems.append(f"{f.path} differs from the registry's file")
    return problems


def leftover_files(store: ModelStore) -> list[str]:
    """Files a finished sync should not leave: staging folders and downloads."""
    return sorted(
        str(p.relative_to(store.root)) for folder in (store.staging_dir, store.downloads_dir) for p in folder.iterdir()
    )


def zero_inputs(specs: Sequence[tuple[str, str, Sequence[int]]], batch: int = 2) -> dict[str, np.ndarray]:
    """Zeros for every (name, dtype, shape) input, dynamic dimensions set to ``batch``."""
    return {name: np.zeros([d if d >= 0 else batch for d in shape], dtype=dtype) for name, dtype, shape in specs}


def input_specs(registry: Registry, version: int) -> list[tuple[str, str, list[int]]]:
    _, manifest = registry.load_manifest(MODEL, version)
    return [(spec.name, str(np.dtype(spec.dtype)), list(spec.shape)) for spec in manifest.inputs]


LOCAL_SOURCES: Final = ("local", "cache")  # a cache entry is keyed by version and comes from a verified model


def predict_offline(
    client: EdgeClient, specs: Sequence[tuple[str, str, Sequence[int]]], attempts: int = 3
) -> tuple[Any, str | None]:
    """(prediction, None) or (None, "ErrorType: message") from a client without a server.

    A local answer later than the client's deadline (a loaded machine, the first run of a
    session) is cached when it arrives, so the call is retried a few times before giving up.
    """
    error = None
    for attempt in range(attempts):
        try:
            prediction = client.predict(zero_inputs(specs))
        except EdgerecError as exc:
            error = f"{type(exc).__name__}: {exc}"
            if "deadline" not in str(exc) or attempt == attempts - 1:
                return None, error
            time.sleep(0.2)
            continue
        if str(prediction.source) in LOCAL_SOURCES or attempt == attempts - 1:
            return prediction, None
        time.sleep(0.2)
    return None, error


def local_prediction_problems(
    data_dir: Path, specs: Sequence[tuple[str, str, Sequence[int]]], version: int
) -> list[str]:
    """Why an offline client on ``data_dir`` cannot predict locally with ``version``."""
    with EdgeClient(server=None, model=MODEL, data_dir=data_dir) as client:
        prediction, error = predict_offline(client, specs)
    if prediction is None:
        return [f"no local prediction: {error}"]
    if str(prediction.source) not in LOCAL_SOURCES or prediction.version != version:
        return [f"prediction came from {prediction.source} version {prediction.version}, expected local {version}"]
    if not np.all(np.isfinite(prediction.scores)):
        return ["local prediction is not finite"]
    return []


def ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


# --- scenario summaries --------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """One row of the final table."""

    scenario: str
    runs: int
    survived: int
    failures: list[str]
    details: str
    seconds: float
    skipped: str | None = None


def format_summary(rows: Sequence[Summary]) -> str:
    """A plain-text table of the scenarios, then every failure."""
    header = ("scenario", "runs", "survived", "failed", "seconds", "details")
    table = [header] + [
        (
            r.scenario,
            str(r.runs),
            str(r.survived),
            str(len(r.failures)),
            f"{r.seconds:.1f}",
            f"SKIPPED: {r.skipped}" if r.skipped else r.details,
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = []
    for row in table:
        cells = [
            cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]))
    lines.insert(1, "-" * max(len(line) for line in lines))
    for r in rows:
        lines.extend(f"FAIL {r.scenario}: {failure}" for failure in r.failures)
    return "\n".join(lines)
