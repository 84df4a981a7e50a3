"""The Inference gRPC service: fallback predictions from published artifacts."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent import futures

import grpc
import numpy as np

from edgerec import grpc_status, tensors
from edgerec.artifacts import DEFAULT_RUNTIMES, choose_artifact
from edgerec.errors import (
    EdgerecError,
    ManifestError,
    ModelNotFoundError,
    ModelRuntimeError,
    ResourceLimitError,
)
from edgerec.manifest import Artifact, Manifest, validate_model_name
from edgerec.registry import ModelRegistry
from edgerec.registry.folder import version_folder
from edgerec.runtimes import OnnxRunner
from edgerec.server.admission import RowBudget
from edgerec.server.batching import MicroBatcher
from edgerec.v1 import inference_pb2, inference_pb2_grpc

log = logging.getLogger(__name__)

# Called after every Predict with (model, outcome: "ok" or the error's class name, seconds).
PredictObserver = Callable[[str, str, float], None]
# How long a request's resolved (model, version, recipe) is reused while the registry's change stamp stays;
# a publish moves the stamp, so a new version is served from the next look at it on (see STAMP_CHECK_S).
RESOLVE_TTL_S = 1.0
# How long one look at the registry's change stamp stands for every request: a publish is served from
# the first request that starts this long after it committed. A look is a registry read (a SQLite
# transaction, or a HEAD request to a bucket): once per interval, by one request thread at a time.
STAMP_CHECK_S = 0.05
# Rows one request may carry by default; all requests being decoded and run at once: four times as many.
DEFAULT_MAX_ROWS = 4096
# The model label of a Predict for no published model: metrics never carry a name the caller chose.
UNKNOWN_MODEL = "other"
# How long a request waits for the load of its model already under way (a load takes seconds at most).
LOAD_WAIT_S = 120.0

ModelKey = tuple[str, int, str]


class LoadedModel:
    """A runner with the signature it must be fed."""

    def __init__(self, manifest: Manifest, recipe: str, runner: OnnxRunner) -> None:
        self.version = manifest.version
        self.recipe = recipe
        self.runner = runner
        self.input_specs = [(s.name, s.dtype, list(s.shape)) for s in manifest.inputs]
        self.first_output = runner.output_names[0]
        # True once a run on neutral inputs succeeded (see warm_up).
        self.warmed = False

    def warm_up(self) -> None:
        """One run on neutral inputs (zeros, batch 1): onnxruntime's first run allocates and prepares."""
        inputs = {name: np.zeros([d if d >= 0 else 1 for d in shape], dtype) for name, dtype, shape in self.input_specs}
        try:
            self.runner.run(inputs)
        except ModelRuntimeError as exc:  # loaded all the same: zeros are not the model's health check
            log.warning("warm-up run of %s failed: %s", self.runner.model_path, exc)
        else:
            self.warmed = True


class InferenceService(inference_pb2_grpc.InferenceServicer):
    """Runs the version a device asks for when the registry has it, else the latest.

    :meth:`warm` loads and runs once what requests naming only a model get; after a publish, requests
    for the latest version keep the loaded previous one while the new one warms up in the background.
    A request carries at most ``max_rows`` rows; all requests in flight together at most
    ``max_rows_in_flight`` (default four requests' worth); beyond either: RESOURCE_EXHAUSTED.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        max_loaded: int = 4,
        threads: int = 1,
        batcher: MicroBatcher | None = None,
        observer: PredictObserver | None = None,
        batch_observer: Callable[[int, int], None] | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        max_rows_in_flight: int | None = None,
    ) -> None:
        self.registry = registry
        # Concurrent requests for one (model, version, recipe) share a runtime call; None: each runs alone.
        self.batcher = batcher
        self.observer = observer
        # Without a batcher: called after each runtime call with (1, rows) (the batcher has its own observer).
        self.batch_observer = batch_observer
        self.max_loaded = max_loaded
        self.threads = threads
        self.max_rows = max_rows
        self.admission = RowBudget(max_rows_in_flight if max_rows_in_flight is not None else 4 * max_rows)
        self._loaded: OrderedDict[ModelKey, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        # Loads under way, so that requests for a model being loaded wait for that load instead of starting one.
        self._loading: dict[ModelKey, futures.Future[LoadedModel]] = {}
        # New versions warm up here, one at a time, while requests keep the previous one.
        self._warmer = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgerec-warm")
        self._warming: dict[ModelKey, futures.Future[None]] = {}
        self._loads = 0  # models loaded so far: a stand-in found across a load is not kept
        # (model, asked version, asked recipe) -> (change stamp, monotonic time, model): without it a Predict
        # asks the registry several times and parses a manifest, far more than a small model's runtime call.
        self.resolve_ttl_s = RESOLVE_TTL_S
        self._resolved: dict[ModelKey, tuple[str, float, LoadedModel]] = {}
        self.stamp_check_s = STAMP_CHECK_S
        # (monotonic time of the look, stamp): one tuple, so threads swap it without a lock.
        self._stamp: tuple[float, str] = (-float("inf"), "")
        self._looking = threading.Lock()  # held by the one thread asking the registry for its stamp

    def Predict(
        self, request: inference_pb2.PredictRequest, context: grpc.ServicerContext
    ) -> inference_pb2.PredictResponse:
        started = time.perf_counter()
        model = UNKNOWN_MODEL
        try:
            loaded = self._model_for(request.model, request.version, request.recipe)
            model = request.model  # published: a name metrics may carry
            with self.admission.admit(self._rows_of(request)):
                response = self._predict(request, loaded)
        except EdgerecError as exc:
            log.info("Predict %s refused: %s", model, exc)
            self._observe(model, type(exc).__name__, started)
            grpc_status.abort(context, exc)
        except Exception:  # a bug, not the caller's doing: logged here, no details to the caller
            log.exception("Predict %s failed", model)
            self._observe(model, "InternalError", started)
            context.abort(grpc.StatusCode.INTERNAL, "the server failed to predict; its log has the details")
        self._observe(model, "ok", started)
        return response

    def warm(self, models: Iterable[str] | None = None) -> list[ModelKey]:
        """Load and run once what a request naming only the model gets, for ``models`` (default: every
        published one, at most ``max_loaded``); returns the (model, version, recipe) now loaded.

        A model that cannot be loaded is logged and skipped: its requests will fail as they would anyway.
        """
        names = list(models) if models is not None else self.registry.models()
        if len(names) > self.max_loaded:
            log.warning("%d models published, %d kept loaded: warming %s", len(names), self.max_loaded, names[:4])
            names = names[: self.max_loaded]
        warmed: list[ModelKey] = []
        for name in names:
            try:
                loaded = self._model_for(name, 0, "")
            except EdgerecError as exc:
                log.warning("cannot warm %s: %s", name, exc)
                continue
            warmed.append((name, loaded.version, loaded.recipe))
        return warmed

    def loaded_models(self) -> dict[ModelKey, LoadedModel]:
        """Every loaded model by (model, version, recipe), least recently used first."""
        with self._lock:
            return dict(self._loaded)

    def wait_for_warm_ups(self, timeout_s: float) -> bool:
        """Wait until the background warm-ups started so far have ended; False if some still run after ``timeout_s``."""
        with self._lock:
            pending = list(self._warming.values())
        _, not_done = futures.wait(pending, timeout=timeout_s)
        return not not_done

    def close(self) -> None:
        """Stop warming up (warm-ups not started are dropped); loaded models keep serving."""
        self._warmer.shutdown(wait=False, cancel_futures=True)

    def _observe(self, model: str, outcome: str, started: float) -> None:
        if self.observer is not None:
            self.observer(model, outcome, time.perf_counter() - started)

    def _rows_of(self, request: inference_pb2.PredictRequest) -> int:
        """The request's rows, from the shapes it declares (nothing is decoded yet); refused past max_rows."""
        rows = max((tensors.leading_dimension(t) for t in request.inputs.values()), default=1)
        if rows > self.max_rows:
            raise ResourceLimitError(f"{rows} rows in one request; the server takes at most {self.max_rows}")
        return max(rows, 1)

    def _predict(self, request: inference_pb2.PredictRequest, loaded: LoadedModel) -> inference_pb2.PredictResponse:
        tensors.check_input_names(request.inputs, loaded.input_specs)
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
        response = inference_pb2.PredictResponse(
            version=loaded.version,
            recipe=loaded.recipe,
            scores=np.asarray(outputs[loaded.first_output], dtype=np.float32).ravel().tolist(),
        )
        for name, value in outputs.items():
            tensors.fill_proto(response.outputs[name], np.asarray(value))
        return response

    def _model_for(self, model: str, version: int, recipe: str) -> LoadedModel:
        """The loaded model for a request; the registry is asked again when its stamp moved or after a TTL."""
        asked = (model, version, recipe)
        now = time.monotonic()
        stamp = self._change_stamp(now)
        with self._lock:
            known = self._resolved.get(asked)
            if known is not None and known[0] == stamp:
                key = (model, known[2].version, known[2].recipe)
                if self._loaded.get(key) is known[2]:  # still loaded (max_loaded may have evicted it)
                    self._loaded.move_to_end(key)
                    if now - known[1] < self.resolve_ttl_s:
                        return known[2]
                    # Past the TTL with the stamp unchanged: this request asks the registry again while
                    # the others keep the answer (else every request in flight would queue on SQLite).
                    self._resolved[asked] = (stamp, now, known[2])
            loads = self._loads
        loaded, stand_in = self._resolve(model, version, recipe)
        with self._lock:
            # A stand-in found before a load that may have replaced it is not kept (it would answer for the TTL).
            if not stand_in or self._loads == loads:
                if len(self._resolved) >= 4 * self.max_loaded and asked not in self._resolved:
                    self._resolved.clear()  # bounded: requests may name any version or recipe
                self._resolved[asked] = (stamp, now, loaded)
        return loaded

    def _change_stamp(self, now: float) -> str:
        """The registry's change stamp, asked again when the last look is stamp_check_s old.

        While one thread asks, the others keep the last stamp; a failed look keeps it too (a publish is
        then noticed at a later look, and resolutions still expire after resolve_ttl_s).
        """
        looked, stamp = self._stamp
        if now - looked < self.stamp_check_s or not self._looking.acquire(blocking=False):
            return stamp
        try:
            stamp = self.registry.change_stamp()
        except EdgerecError as exc:
            log.warning("cannot read the registry's change stamp (%s); keeping the last one", exc)
            return stamp
        finally:
            self._looking.release()
        if now > self._stamp[0]:  # a slower thread's older look must not replace a newer one
            self._stamp = (now, stamp)
        return stamp

    def _resolve(self, model: str, version: int, recipe: str) -> tuple[LoadedModel, bool]:
        """The model for a request, and whether it is a stand-in (the previous version, while the new one warms)."""
        try:
            validate_model_name(model)
        except ManifestError:  # no such name can be published; the caller's string is not echoed in full
            raise ModelNotFoundError(f"no model named {model[:64]!r} is published") from None
        versions = self.registry.versions(model)
        latest_asked = version not in versions
        version = self.registry.resolve_version(model, 0 if latest_asked else version)
        _, manifest = self.registry.load_manifest(model, version)
        # The recipe asked for, else a device's default preference; this service runs onnxruntime only.
        artifact = choose_artifact(manifest, [recipe] if recipe else [], DEFAULT_RUNTIMES)
        key = (model, version, artifact.recipe)
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                self._loaded.move_to_end(key)
                return loaded, False
            stand_in = self._previous_loaded(key) if latest_asked else None
        if stand_in is not None and self._warm_in_background(key, manifest, artifact):
            return stand_in, True  # the new latest version warms up; until then the previous one answers
        return self._load(key, manifest, artifact), False

    def _previous_loaded(self, key: ModelKey) -> LoadedModel | None:
        """The newest loaded older version of ``key``'s model and recipe (caller holds the lock)."""
        model, version, recipe = key
        older = [k for k in self._loaded if k[0] == model and k[2] == recipe and k[1] < version]
        return self._loaded[max(older)] if older else None

    def _warm_in_background(self, key: ModelKey, manifest: Manifest, artifact: Artifact) -> bool:
        """Load ``key`` on the warm-up thread unless already under way; False once the service is closed."""
        with self._lock:
            if key in self._warming:
                return True
            try:
                self._warming[key] = self._warmer.submit(self._warm_up, key, manifest, artifact)
            except RuntimeError:  # closed
                return False
        log.info("warming %s version %d (%s) before it answers", *key)
        return True

    def _warm_up(self, key: ModelKey, manifest: Manifest, artifact: Artifact) -> None:
        try:
            self._load(key, manifest, artifact)
        except EdgerecError as exc:  # requests keep the previous version; the next resolution tries again
            log.warning("cannot warm %s version %d (%s): %s", *key, exc)
        finally:
            with self._lock:
                self._warming.pop(key, None)

    def _load(self, key: ModelKey, manifest: Manifest, artifact: Artifact) -> LoadedModel:
        """Load and warm ``key`` once; a request asking for it meanwhile waits for that load, no other."""
        with self._lock:
            loaded = self._loaded.get(key)
            if loaded is not None:
                return loaded
            pending = self._loading.get(key)
            loading = pending is None
            if pending is None:
                pending = self._loading[key] = futures.Future()
        if not loading:
            try:
                return pending.result(timeout=LOAD_WAIT_S)
            except futures.TimeoutError as exc:
                raise ModelRuntimeError(f"{key[0]} version {key[1]} is still loading after {LOAD_WAIT_S} s") from exc
        try:
            folder = version_folder(self.registry, key[0], key[1], [f.path for f in artifact.files])
            path = folder / artifact.entrypoint
            loaded = LoadedModel(manifest, artifact.recipe, OnnxRunner(path, threads=self.threads))
            loaded.warm_up()
        except BaseException as exc:
            log.exception("cannot load %s version %d (%s)", key[0], key[1], artifact.recipe)
            with self._lock:
                del self._loading[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            del self._loading[key]
            self._loaded[key] = loaded
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            self._resolved.clear()  # a resolution may name the stand-in this model replaces
            self._loads += 1
        pending.set_result(loaded)
        return loaded
