"""The device SDK: sync model updates, predict locally, fall back to the server.

Imports without torch: only numpy, grpcio, protobuf, zstandard, bsdiff4, urllib3 and onnxruntime.

Where things live (each a module named for its job):

=====================  ========================================================================
``client.py``          :class:`EdgeClient`, the facade: ``sync()``, ``predict()``, status reports
``config.py``          :class:`EdgeConfig` with :class:`TrustConfig` and :class:`CacheConfig`
``sync.py``            :class:`Syncer`: check, verify, fetch, apply, health-check, switch
``plan.py``            the checks of the unsigned payload plan (ids, sizes, codecs, bases, URLs)
``transport/``         update checks and payload bytes: gRPC, HTTP(S) URLs, retries, failover
``active_model.py``    the installed version predict runs; reload, rollback and its hold
``predictor.py``       local-first predict: cache, breakers, inline or pool, hedging, fallback
``server_scorer.py``   the server's Predict through its breaker
``policy.py``          :class:`FallbackPolicy`, circuit breakers, predict counters
``observer.py``        :class:`Observer`: sync phases and predict outcomes, for tools and apps
``storage.py``         the on-disk store: versions, staging, downloads, the atomic switch
``cache.py``           the prediction cache
``local_model.py``     the loaded model and its quick input check; :class:`Prediction`
``artifacts.py``       choosing and opening an artifact with its runtime
``ort_cache.py``       onnxruntime's optimized-model cache
``telemetry.py``       status reports
=====================  ========================================================================

Trust rules (signatures, freshness, version floor) are shared with the server: :mod:`edgerec.trust`.
"""

from edgerec.device.client import EdgeClient
from edgerec.device.config import CacheConfig, EdgeConfig, TrustConfig
from edgerec.device.local_model import Prediction
from edgerec.device.observer import Observer, SyncEvent, SyncPhase
from edgerec.device.policy import FallbackPolicy, FallbackReason, Source
from edgerec.device.sync import SyncResult
from edgerec.device.transport import FetchJob, PayloadTransport, RetryPolicy, TransportConfig

__all__ = [
    "CacheConfig",
    "EdgeClient",
    "EdgeConfig",
    "FallbackPolicy",
    "FallbackReason",
    "FetchJob",
    "Observer",
    "PayloadTransport",
    "Prediction",
    "RetryPolicy",
    "Source",
    "SyncEvent",
    "SyncPhase",
    "SyncResult",
    "TransportConfig",
    "TrustConfig",
]
