"""EdgeClient: the device SDK's one object. Sync updates, predict locally, fall back to the server."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgerec import tensors
from edgerec.device.cache import PredictionCache, request_key
from edgerec.device.storage import InstalledVersion, ModelStore
from edgerec.device.sync import FileProgress, Syncer, SyncResult
from edgerec.device.transport import ServerConnection, TransportConfig
from edgerec.errors import AuthenticationError, EdgerecError, InvalidInputError, NoModelAvailableError
from edgerec.runtimes import OnnxRunner
from edgerec.signing import load_public_key
from edgerec.trust import TrustedKeys, UpdateVerifier
from edgerec.units import parse_rate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """Scores for a request and where they came from."""

    scores: np.ndarray
    source: str  # "local", "cache" or "server"
    version: int
    latency_s: float
    fallback_reason: str | None = None


class _LocalModel:
    """The active version, loaded and verified."""

    def __init__(self, installed: InstalledVersion, threads: int) -> None:
        self.installed = installed
        self.runner = OnnxRunner(installed.entrypoint, threads=threads)
        self.input_specs = [(s.name, s.dtype, list(s.shape)) for s in installed.manifest.inputs]


class EdgeClient:
    """A device's handle on one model.

    >>> client = EdgeClient(server="127.0.0.1:50051", model="ctr", data_dir="/var/lib/edgerec")
    >>> client.sync()
    >>> client.predict({"dense_features": dense, "sparse_ids": ids}).scores
    """

    def __init__(
        self,
        server: str | None,
        model: str,
        data_dir: Path | str,
        *,
        rate: str | float | None = None,
        cache_entries: int = 1024,
        recipes: tuple[str, ...] = ("int8", "fp32"),
        threads: int = 1,
        device_id: str = "",
        max_payload_bytes: int = 0,
        max_local_failures: int = 3,
        trusted_keys: Sequence[Path | str] | TrustedKeys | None = None,
        tls_ca: Path | str | None = None,
        token: str | None = None,
        transport: TransportConfig | None = None,
    ) -> None:
        self.model = model
        self.store = ModelStore(data_dir, model)
        self.recipes = recipes
        self.threads = threads
        # A token is "<device_id>.<secret>": the id in front names the device when none is given.
        self.device_id = device_id or (token.rpartition(".")[0] if token else "")
        self.max_payload_bytes = max_payload_bytes
        self.max_local_failures = max_local_failures
        self._consecutive_failures = 0
        # (from version, to version) of every rollback this client made, oldest first.
        self.rollbacks: list[tuple[int, int]] = []
        self.verifier = UpdateVerifier(model, _trusted(trusted_keys)) if trusted_keys is not None else None
        config = transport or TransportConfig()
        if rate is not None:
            rate_bytes = parse_rate(rate) if isinstance(rate, str) else float(rate)
            config = dataclasses.replace(config, rate_bytes_per_s=rate_bytes)
        self._connection = (
            ServerConnection(server, config, tls_ca=Path(tls_ca) if tls_ca else None, token=token) if server else None
        )
        self.cache = PredictionCache(cache_entries)
        self._local: _LocalModel | None = None
        self._local_failure: str | None = None
        self._state_stamp: tuple[int, int] | None = None
        self._last_server_version = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()

    def __enter__(self) -> EdgeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- updates ----------------------------------------------------------------

    def sync(self, target_version: int = 0, progress: FileProgress | None = None) -> SyncResult:
        """Install the server's latest (or ``target_version``) if newer; the old version is kept."""
        if self._connection is None:
            raise NoModelAvailableError("no server configured; cannot sync")
        syncer = Syncer(
            self.store,
            self._connection,
            recipes=self.recipes,
            device_id=self.device_id,
            max_payload_bytes=self.max_payload_bytes,
            verifier=self.verifier,
        )
        result = syncer.sync(target_version, progress)
        if result.updated:
            self.reload()
            self.cache.clear()
        return result

    @property
    def active_version(self) -> int | None:
        current = self.store.current()
        return current.version if current else None

    # --- predictions ------------------------------------------------------------

    def predict(self, inputs: Mapping[str, np.ndarray]) -> Prediction:
        """Scores from the cache, the local model, or (when that is unusable) the server."""
        started = time.perf_counter()
        local, reason = self._local_model()
        if local is not None:
            arrays = tensors.check_inputs(inputs, local.input_specs)
            key = request_key(local.installed.version, arrays)
            cached = self.cache.get(key)
            if cached is not None:
                return Prediction(cached, "cache", key[0], time.perf_counter() - started)
            try:
                outputs = local.runner.run(arrays)
                scores = np.asarray(outputs[local.runner.output_names[0]], dtype=np.float32).ravel()
                if not np.all(np.isfinite(scores)):
                    raise EdgerecError("local model returned non-finite scores")
                self.cache.put(key, scores)
                self._consecutive_failures = 0
                return Prediction(scores, "local", key[0], time.perf_counter() - started)
            except EdgerecError as exc:
                reason = f"local inference failed: {exc}"
                log.warning("%s; falling back to the server", reason)
                self._count_local_failure(local.installed.version)
        return self._predict_on_server(inputs, local, reason or "no local model", started)

    def _count_local_failure(self, version: int) -> None:
        """After ``max_local_failures`` failures in a row, roll back to the previous version."""
        self._consecutive_failures += 1
        if self._consecutive_failures < self.max_local_failures or self.store.previous() is None:
            return
        restored = self.store.rollback()
        self._consecutive_failures = 0
        self.rollbacks.append((version, restored.version))
        log.error(
            "%s version %d failed %d predictions in a row: rolled back to version %d",
            self.model,
            version,
            self.max_local_failures,
            restored.version,
        )
        self.reload()

    def _predict_on_server(
        self, inputs: Mapping[str, np.ndarray], local: _LocalModel | None, reason: str, started: float
    ) -> Prediction:
        if self._connection is None:
            raise NoModelAvailableError(f"cannot predict: {reason}, and no server is configured")
        arrays = {name: np.asarray(a) for name, a in inputs.items()}
        wanted = local.installed.version if local else (self.active_version or 0)
        key = request_key(wanted or self._last_server_version, arrays)
        cached = self.cache.get(key) if key[0] else None
        if cached is not None:
            return Prediction(cached, "cache", key[0], time.perf_counter() - started, reason)
        try:
            response = self._connection.predict(self.model, arrays, version=wanted)
        except (InvalidInputError, AuthenticationError):
            raise
        except EdgerecError as exc:
            raise NoModelAvailableError(f"cannot predict: {reason}; server failed too: {exc}") from exc
        scores = np.asarray(response.scores, dtype=np.float32)
        self._last_server_version = response.version
        if np.all(np.isfinite(scores)):
            self.cache.put(request_key(response.version, arrays), scores)
        return Prediction(scores, "server", response.version, time.perf_counter() - started, reason)

    def _local_model(self) -> tuple[_LocalModel | None, str | None]:
        """The loaded active version, loading and verifying it on first use; else why not.

        The store's state file is only re-read when it changed on disk (another process may sync).
        """
        with self._lock:
            stamp = self.store.state_stamp()
            if stamp == self._state_stamp and (self._local is not None or self._local_failure is not None):
                return self._local, self._local_failure
            self._state_stamp = stamp
            self._local, self._local_failure = None, None
            try:
                installed = self.store.current()
                if installed is None:
                    self._local_failure = "no local model installed"
                    return None, self._local_failure
                self.store.verify(installed)
                self._local = _LocalModel(installed, self.threads)
                log.info("loaded %s version %d (%s)", self.model, installed.version, installed.recipe)
                return self._local, None
            except EdgerecError as exc:
                self._local_failure = f"local model unusable: {exc}"
                log.warning("%s", self._local_failure)
                return None, self._local_failure

    def reload(self) -> None:
        """Forget the loaded model so the next predict loads and verifies it again."""
        with self._lock:
            self._local, self._local_failure, self._state_stamp = None, None, None


def _trusted(keys: Sequence[Path | str] | TrustedKeys) -> TrustedKeys:
    """Trusted keys from public key files (or as given)."""
    if isinstance(keys, TrustedKeys):
        return keys
    return TrustedKeys.from_public_keys([load_public_key(Path(path)) for path in keys])
