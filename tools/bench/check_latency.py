"""CheckUpdate latency while the server builds deltas (the fleet benchmark's ``deltas`` run).

Devices on old versions ask for the latest at once; their deltas do not exist yet (publishing
pre-builds them only from the version before), so the server queues them on its background pool
and answers with full payloads. Meanwhile probes call CheckUpdate without pause, from a fresh device
and from the old versions, each on a connection of its own, until every old version's plan offers a
delta: their latencies are what any device sees while the deltas are built.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgerec.artifacts import DEFAULT_RECIPES, choose_artifact
from edgerec.registry import ModelRegistry
from edgerec.tools.bench.report import Target

log = logging.getLogger(__name__)

ALL_CODECS: tuple[str, ...] = ("full", "bsdiff4", "zstd-patch-from", "tensor")
PROBES = 4  # threads calling CheckUpdate back to back
MAX_BUILD_S = 600.0


@dataclass
class CheckLatency:
    """Latencies of the CheckUpdate calls answered while deltas were being built."""

    old_versions: list[int]
    latest: int
    build_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    deltas_offered: bool = False

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, object]:
        return {
            "old_versions": self.old_versions,
            "latest": self.latest,
            "build_s": round(self.build_s, 3),
            "checks": len(self.latencies_ms),
            "errors": self.errors,
            "deltas_offered": self.deltas_offered,
            "p50_ms": round(statistics.median(self.latencies_ms), 3) if self.latencies_ms else None,
            "p99_ms": round(self.percentile(0.99), 3) if self.latencies_ms else None,
            "max_ms": round(max(self.latencies_ms), 3) if self.latencies_ms else None,
        }


def measure(address: str, registry: ModelRegistry, model: str, old_versions: Sequence[int]) -> CheckLatency:
    """Ask for the latest from each of ``old_versions``, then probe CheckUpdate until each plan holds a delta."""
    import grpc

    from edgerec.v1 import update_pb2, update_pb2_grpc

    latest = registry.resolve_version(model)
    requests = [update_pb2.CheckUpdateRequest(model=model, codecs=ALL_CODECS, recipes=DEFAULT_RECIPES)]
    for version in old_versions:
        _, manifest = registry.load_manifest(model, version)
        artifact = choose_artifact(manifest, DEFAULT_RECIPES)
        requests.append(
            update_pb2.CheckUpdateRequest(
                model=model,
                current_version=version,
                current_recipe=artifact.recipe,
                current_sha256=artifact.digest,
                codecs=ALL_CODECS,
                recipes=DEFAULT_RECIPES,
            )
        )
    result = CheckLatency(list(old_versions), latest)
    done = threading.Event()
    lock = threading.Lock()

    def call(request: update_pb2.CheckUpdateRequest) -> update_pb2.CheckUpdateResponse | None:
        with grpc.insecure_channel(address) as channel:
            stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
            started = time.perf_counter()
            try:
                response: update_pb2.CheckUpdateResponse = stub.CheckUpdate(request, timeout=30)
            except grpc.RpcError as exc:
                log.warning("CheckUpdate failed: %s", exc)
                with lock:
                    result.errors += 1
                return None
            with lock:
                result.latencies_ms.append(1000 * (time.perf_counter() - started))
            return response

    def probe(index: int) -> None:
        while not done.is_set():
            call(requests[index % len(requests)])

    def has_delta(response: update_pb2.CheckUpdateResponse | None) -> bool:
        return response is not None and any(p.codec not in ("full", "copy") for p in response.payloads)

    started = time.monotonic()
    first = [call(request) for request in requests[1:]]  # queues every old version's deltas
    if any(has_delta(response) for response in first):
        log.warning("some deltas existed before the run: the latencies include no build")
    probes = [threading.Thread(target=probe, args=(i,), daemon=True) for i in range(PROBES)]
    for thread in probes:
        thread.start()
    waiting = list(requests[1:])
    while waiting and time.monotonic() - started < MAX_BUILD_S:
        time.sleep(0.5)
        waiting = [request for request in waiting if not has_delta(call(request))]
    result.build_s = time.monotonic() - started
    result.deltas_offered = not waiting
    done.set()
    for thread in probes:
        thread.join(60)
    return result


def publish_days(program_dir: Path, registry: ModelRegistry, model: str, size: str, days: int, samples: int) -> None:
    """Publish ``days`` more versions of the reference model, each retrained on one more day of clicks."""
    from edgerec.reference.data import ClickGenerator, ReferenceConfig
    from edgerec.reference.train import build_and_train, export_program
    from edgerec.server.publish import PublishOptions, publish

    config = ReferenceConfig.from_name(size)
    generator = ClickGenerator(config, seed=0)
    held_out = generator.day(3, 5_000)
    validation = {**held_out.inputs(), "labels": held_out.labels}
    state = None
    for day in range(1, days + 1):
        model_today = build_and_train(config, generator, day=day, num_samples=samples, base_state=state)
        state = model_today.state_dict()
        program = export_program(model_today, program_dir / f"day-{day}.pt2", generator.day(99, 4))
        publish(program, model, registry, PublishOptions(validation=validation, no_gate=True))
        log.info("published day %d of %s", day, model)


MAX_P99_MS = 50.0


def targets(result: CheckLatency) -> list[Target]:
    """The fleet issue's target for CheckUpdate while deltas are built."""
    s = result.summary()
    return [
        Target(
            "CheckUpdate p99 while deltas are built",
            f"{s['p99_ms']} ms over {s['checks']} checks in {s['build_s']} s "
            f"(p50 {s['p50_ms']} ms, max {s['max_ms']} ms)",
            f"<= {MAX_P99_MS:g} ms",
            result.latencies_ms != [] and result.percentile(0.99) <= MAX_P99_MS,
        ),
        Target(
            "every old version is offered a delta once built, no check failed",
            f"deltas offered: {'yes' if result.deltas_offered else 'no'}; {result.errors} failed checks",
            "yes; 0",
            result.deltas_offered and result.errors == 0,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import json
    import tempfile

    from edgerec.registry import Registry
    from edgerec.tools.bench.fleet import MODEL_NAME, build
    from edgerec.tools.bench.report import loadavg, machine_context, targets_table
    from edgerec.tools.bench.servers import serve

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small", "large"])
    parser.add_argument("--days", type=int, default=3, help="versions published after the first (>= 2)")
    parser.add_argument("--train-samples", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=Path("bench-out/fleet"))
    args = parser.parse_args(argv)
    if args.days < 2:
        parser.error("--days must be at least 2: the old versions are all but the last two")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("edgerec").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="bench-check-latency-") as tmp:
        work = Path(tmp)
        built = build(args.size, args.train_samples, work)
        registry = Registry(built.registry)
        publish_days(work, registry, MODEL_NAME, args.size, args.days, args.train_samples)
        old = registry.versions(MODEL_NAME)[:-2]  # the one before the latest has its deltas from publishing
        with serve(built.registry, built.private_key, work / "serve.log") as (address, pid):
            log.info("devices on versions %s ask for the latest of edgerec serve (pid %d)", old, pid)
            result = measure(address, registry, MODEL_NAME, old)
    checks = targets(result)
    context = machine_context(load_before) | {"settings": f"reference model {args.size}, {PROBES} probes"}
    lines = ["# CheckUpdate while deltas are built", "", *(f"- {k}: {v}" for k, v in context.items())]
    lines += ["", *targets_table(checks), "", (__doc__ or "").split("\n\n", 1)[1].strip(), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "check_latency.md").write_text("\n".join(lines))
    data = {"context": context, "targets": [asdict(t) for t in checks], "result": result.summary()}
    (args.out / "check_latency.json").write_text(json.dumps(data, indent=2) + "\n")
    log.info("%s", "\n".join(lines))
    return 0 if all(t.met for t in checks) else 1


if __name__ == "__main__":
    import sys

    sys.exit(main())
