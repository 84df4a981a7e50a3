"""The Inference gRPC service: fallback predictions from published artifacts."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import grpc
import numpy as np

from edgerec import grpc_status, tensors
from edgerec.errors import EdgerecError, InvalidInputError, ModelRuntimeError
from edgerec.manifest import Manifest, find_artifact
from edgerec.registry import Registry
from edgerec.runtimes import OnnxRunner
from edgerec.server.batching import MicroBatcher
from edgerec.server.planner import DEFAULT_RECIPES
from edgerec.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

# Called after every Predict with (model, outcome: "ok" or the error's class name, seconds).
PredictObserver = Callable[[str, str, float], None]
# How long a request's resolved (model, version, recipe) is reused while the registry's index is unchanged
# on disk; a publish changes the index, so a new version is served from the next request on (see INDEX_CHECK_S).
RESOLVE_TTL_S = 1.0
# The registry's SQLite index: its files change (mtime, size) with every write, never with a read (an
# empty WAL file comes and goes with connections).
_INDEX_FILES = ("index.sqlite", "index.sqlite-wal")
# How long one look at the index files stands for every request: a publish is served from the first
# request that starts this long after it committed. Two os.stat per request cost more than the look
# itself: each releases the GIL, a thread switch when dozens of RPC threads wait for it.
INDEX_CHECK_S = 0.002


class LoadedModel:
    """A runner with the signature it must be fed."""

    def __init__(self, manifest: Manifest, recipe: str, runner: OnnxRunner) -> None:
        self.version = manifest.version
        self.recipe = recipe
        self.runner = runner
        self.input_specs = [(s.name, s.dtype, list(s.shape)) for s in manifest.inputs]
        self.first_output = runner.output_names[0]


class InferenceService(inference_pb2_grpc.InferenceServicer):
    """Runs the version a device asks for when the registry has it, else the latest."""

    def __init__(
        self,
        registry: Registry,
        *,
        max_loaded: int = 4,
        threads: int = 1,
        batcher: MicroBatcher | None = None,
        observer: PredictObserver | None = None,
        batch_observer: Callable[[int, int], None] | None = None,
    ) -> None:
        self.registry = registry
        # Concurrent requests for one (model, version, recipe) share a runtime call; None: each runs alone.
        self.batcher = batcher
        self.observer = observer
        # Without a batcher: called after each runtime call with (1, rows) (the batcher has its own observer).
        self.batch_observer = batch_observer
        self.max_loaded = max_loaded
        self.threads = threads
        self._loaded: OrderedDict[tuple[str, int, str], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        # (model, asked version, asked recipe) -> (index stamp, monotonic time, model): a Predict costs
        # four SQLite transactions and a manifest parse without it, 20x the runtime call of a small model.
        self.resolve_ttl_s = RESOLVE_TTL_S
        self._index_files = [registry.root / name for name in _INDEX_FILES]
        self._resolved: dict[tuple[str, int, str], tuple[tuple[tuple[int, int] | None, ...], float, LoadedModel]] = {}
        self.index_check_s = INDEX_CHECK_S
        # (monotonic time of the look, stamp): one tuple, so threads swap it without a lock.
        self._stamp: tuple[float, tuple[tuple[int, int] | None, ...]] = (-float("inf"), ())

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        started = time.perf_counter()
        try:
            loaded = self._model_for(request)
            arrays = {name: tensors.from_proto(t, name=name) for name, t in request.inputs.items()}
            checked = tensors.check_inputs(arrays, loaded.input_specs)
            if self.batcher is not None:
                key = (request.model, loaded.version, loaded.recipe)
                outputs = self.batcher.run(key, checked, loaded.runner.run)
            else:
                outputs = loaded.runner.run(checked)
                if self.batch_observer is not None:
                    rows = min((a.shape[0] for a in checked.values() if a.ndim), default=1)
                    self.batch_observer(1, rows)
        except EdgerecError as exc:
            log.info("Predict %s refused: %s", request.model, exc)
            if self.observer is not None:
                self.observer(request.model, type(exc).__name__, time.perf_counter() - started)
            grpc_status.abort(context, exc)
            raise AssertionError("unreachable") from exc
        if self.observer is not None:
            self.observer(request.model, "ok", time.perf_counter() - started)
        response = inference_pb2.PredictResponse(
            version=loaded.version,
            recipe=loaded.recipe,
            scores=np.asarray(outputs[loaded.first_output], dtype=np.float32).ravel().tolist(),
        )
        for name, value in outputs.items():
            tensors.fill_proto(response.outputs[name], np.asarray(value))
        return response

    def _model_for(self, request: inference_pb2.PredictRequest) -> LoadedModel:
        """The loaded model for a request; the registry is asked again when its index changed or after a TTL."""
        asked = (request.model, request.version, request.recipe)
        now = time.monotonic()
        stamp = self._index_stamp(now)
        with self._lock:
            known = self._resolved.get(asked)
            if known is not None and known[0] == stamp:
                key = (request.model, known[2].version, known[2].recipe)
                if self._loaded.get(key) is known[2]:  # still loaded (max_loaded may have evicted it)
                    self._loaded.move_to_end(key)
                    if now - known[1] < self.resolve_ttl_s:
                        return known[2]
                    # Past the TTL with the index unchanged: this request asks the registry again while
                    # the others keep the answer (else every request in flight would queue on SQLite).
                    self._resolved[asked] = (stamp, now, known[2])
        loaded = self._resolve(request)
        with self._lock:
            if len(self._resolved) >= 4 * self.max_loaded and asked not in self._resolved:
                self._resolved.clear()  # bounded: requests may name any version or recipe
            self._resolved[asked] = (stamp, now, loaded)
        return loaded

    def _index_stamp(self, now: float) -> tuple[tuple[int, int] | None, ...]:
        """(mtime, size) of the index files, looked at again when the last look is index_check_s old."""
        looked, stamp = self._stamp
        if now - looked < self.index_check_s:
            return stamp
        stamp = self._stat_index()
        if now > self._stamp[0]:  # a slower thread's older look must not replace a newer one
            self._stamp = (now, stamp)
        return stamp

    def _stat_index(self) -> tuple[tuple[int, int] | None, ...]:
        stamps: list[tuple[int, int] | None] = []
        for path in self._index_files:
            try:
                st = os.stat(path)
            except OSError:
                stamps.append(None)
            else:  # SQLite creates an empty WAL file whenever a connection opens: only a written one counts
                stamps.append((st.st_mtime_ns, st.st_size) if st.st_size else None)
        return tuple(stamps)

    def _resolve(self, request: inference_pb2.PredictRequest) -> LoadedModel:
        versions = self.registry.versions(request.model)
        version = request.version if request.version in versions else 0
        version = self.registry.resolve_version(request.model, version)
        _, manifest = self.registry.load_manifest(request.model, version)
        recipes = [request.recipe] if request.recipe else list(DEFAULT_RECIPES)
        for recipe in recipes:
            artifact = find_artifact(manifest, recipe)
            if artifact is not None:
                break
        else:
            raise InvalidInputError(f"{request.model} version {version} has no artifact with recipe {recipes}")
        key = (request.model, version, artifact.recipe)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        path = self.registry.file_path(request.model, version, artifact.entrypoint)
        try:
            loaded = LoadedModel(manifest, artifact.recipe, OnnxRunner(path, threads=self.threads))
        except ModelRuntimeError:
            log.exception("cannot load %s", path)
            raise
        with self._lock:
            self._loaded[key] = loaded
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        return loaded
