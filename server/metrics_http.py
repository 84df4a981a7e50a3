"""Prometheus metrics of one server, served as ``/metrics`` over HTTP on a port of their own.

Each server has its own ``CollectorRegistry`` (never the process-global one), so several servers
can run in one process (tests, benchmarks). What is measured:

- ``edgerec_update_checks_total{outcome}``: CheckUpdate calls (``update``, ``current``, ``error``);
- ``edgerec_planned_payload_bytes_total{codec}``: bytes of the payloads plans offered, by codec;
- ``edgerec_payload_transfers_total{codec,outcome}``: FetchPayload streams (``complete``,
  ``interrupted`` by the device, ``refused`` by the server);
- ``edgerec_payload_bytes_total{codec}``: payload bytes streamed, by codec;
- ``edgerec_predict_latency_seconds{model,outcome}``: server Predict latency (histogram);
- ``edgerec_predict_batch_rows`` and ``edgerec_predict_batch_requests``: rows and requests per
  runtime call of server Predict (micro-batching merges concurrent requests; histograms);
- from the devices' latest status reports (``Telemetry.ReportStatus``):
  ``edgerec_devices{model,version}``, ``edgerec_device_fallbacks{model,reason}``,
  ``edgerec_device_predictions{model,source}``, ``edgerec_device_syncs{model,outcome}`` and
  ``edgerec_device_rollbacks{model}`` (gauges: sums of the devices' counts since their clients started),
  and ``edgerec_status_reports_total``.

Label values come only from sets the server knows, never from a caller's free text: models and versions
from the registry (a version no longer published is ``other``), reasons and sources from the device SDK's
names (the telemetry service folds any other into ``other``), outcomes and codecs from the server's code.
Device ids are never labels.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any, TypeAlias
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edgerec.errors import EdgerecError
from edgerec.registry import ModelRegistry
from edgerec.server.telemetry_service import OTHER, TelemetryService
from edgerec.v1 import update_pb2

log = logging.getLogger(__name__)

_UPDATE_SERVICE = update_pb2.DESCRIPTOR.services_by_name["ModelUpdate"].full_name
CHECK_UPDATE = f"/{_UPDATE_SERVICE}/CheckUpdate"
FETCH_PAYLOAD = f"/{_UPDATE_SERVICE}/FetchPayload"

# Seconds, spanning loopback Predict latency (``docs/performance.md``) up past a device's default deadline.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    _ServerInterceptor = grpc.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.ServerInterceptor


class ServerMetrics:
    """The server's metrics in a registry of their own; the services and the batcher feed them."""

    def __init__(self, telemetry: TelemetryService | None = None, registry: ModelRegistry | None = None) -> None:
        self.registry = CollectorRegistry()
        self._models = registry
        self.update_checks = Counter(
            "edgerec_update_checks", "CheckUpdate calls by outcome.", ["outcome"], registry=self.registry
        )
        self.planned_bytes = Counter(
            "edgerec_planned_payload_bytes", "Payload bytes offered in update plans, by codec.", ["codec"],
            registry=self.registry,
        )  # fmt: skip
        self.transfers = Counter(
            "edgerec_payload_transfers", "FetchPayload streams by codec and outcome.", ["codec", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.payload_bytes = Counter(
            "edgerec_payload_bytes", "Payload bytes streamed by FetchPayload, by codec.", ["codec"],
            registry=self.registry,
        )  # fmt: skip
        self.predict_latency = Histogram(
            "edgerec_predict_latency_seconds", "Server Predict latency by model and outcome.", ["model", "outcome"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            "edgerec_predict_batch_rows", "Rows per runtime call of server Predict.", buckets=BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.batch_requests = Histogram(
            "edgerec_predict_batch_requests", "Predict requests merged into one runtime call.", buckets=BATCH_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        if telemetry is not None:
            self.registry.register(DeviceCollector(telemetry))
        self._codecs: OrderedDict[str, str] = OrderedDict()
        self._codecs_lock = threading.Lock()

    def observe_predict(self, model: str, outcome: str, seconds: float) -> None:
        """InferenceService's observer: one Predict call."""
        self.predict_latency.labels(model, outcome).observe(seconds)

    def observe_batch(self, requests: int, rows: int) -> None:
        """One runtime call of server Predict: how many requests it answered and how many rows it ran."""
        self.batch_requests.observe(requests)
        self.batch_rows.observe(rows)

    def interceptor(self) -> MetricsInterceptor:
        return MetricsInterceptor(self)

    def codec_of(self, model: str, payload_id: str) -> str:
        """The codec of a stored payload (remembered for the last 1024 payloads), or "unknown"."""
        with self._codecs_lock:
            if payload_id in self._codecs:
                return self._codecs[payload_id]
        codec = "unknown"
        if self._models is not None:
            try:
                codec = self._models.payload(model, payload_id).codec
            except EdgerecError:
                return codec
        with self._codecs_lock:
            self._codecs[payload_id] = codec
            while len(self._codecs) > 1024:
                self._codecs.popitem(last=False)
        return codec


class MetricsInterceptor(_ServerInterceptor):
    """Counts CheckUpdate outcomes and planned bytes, and FetchPayload streams and bytes, by codec."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Handler | None], details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = continuation(details)
        if handler is None:
            return None
        if details.method == CHECK_UPDATE and handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._checked(handler.unary_unary), handler.request_deserializer, handler.response_serializer
            )
        if details.method == FETCH_PAYLOAD and handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._streamed(handler.unary_stream), handler.request_deserializer, handler.response_serializer
            )
        return handler

    def _checked(self, behavior: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[..., Any]:
        metrics = self.metrics

        def check(request: update_pb2.CheckUpdateRequest, context: grpc.ServicerContext) -> Any:
            try:
                response = behavior(request, context)
            except BaseException:
                metrics.update_checks.labels("error").inc()
                raise
            if response.update_available:
                metrics.update_checks.labels("update").inc()
                for payload in response.payloads:
                    metrics.planned_bytes.labels(payload.codec).inc(payload.size)
            else:
                metrics.update_checks.labels("current").inc()
            return response

        return check

    def _streamed(self, behavior: Callable[[Any, grpc.ServicerContext], Iterator[Any]]) -> Callable[..., Any]:
        metrics = self.metrics

        def stream(request: update_pb2.FetchPayloadRequest, context: grpc.ServicerContext) -> Iterator[Any]:
            codec = metrics.codec_of(request.model, request.payload_id)
            sent = metrics.payload_bytes.labels(codec)
            outcome = "interrupted"
            position, total = request.offset, -1
            try:
                for chunk in behavior(request, context):
                    sent.inc(len(chunk.data))
                    position, total = chunk.offset + len(chunk.data), chunk.total_size
                    yield chunk
                if total < 0 or position >= total:  # nothing left to send also counts as complete
                    outcome = "complete"
            except Exception:
                outcome = "refused"
                raise
            finally:  # GeneratorExit (the device went away) leaves "interrupted"
                metrics.transfers.labels(codec, outcome).inc()

        return stream


class DeviceCollector(Collector):
    """Gauges computed at scrape time from the devices' latest status reports."""

    def __init__(self, telemetry: TelemetryService) -> None:
        self.telemetry = telemetry

    def describe(self) -> list[Metric]:
        return []  # computed at scrape time: nothing to check for clashes up front

    def collect(self) -> Iterator[Metric]:
        published = self.telemetry.published_models()
        versions = {model: set(self.telemetry.registry.versions(model)) for model in published}
        devices = GaugeMetricFamily(
            "edgerec_devices",
            "Devices by model and active version (0: none installed; other: not published).",
            labels=["model", "version"],
        )
        fallbacks = GaugeMetricFamily(
            "edgerec_device_fallbacks", "Fallbacks the devices reported, by reason.", labels=["model", "reason"]
        )
        predictions = GaugeMetricFamily(
            "edgerec_device_predictions", "Answers the devices reported, by source.", labels=["model", "source"]
        )
        syncs = GaugeMetricFamily(
            "edgerec_device_syncs", "Sync outcomes the devices reported.", labels=["model", "outcome"]
        )
        rollbacks = GaugeMetricFamily("edgerec_device_rollbacks", "Rollbacks the devices reported.", labels=["model"])
        by_version: Tally[tuple[str, str]] = Tally()
        by_reason: Tally[tuple[str, str]] = Tally()
        by_source: Tally[tuple[str, str]] = Tally()
        by_sync: Tally[tuple[str, str]] = Tally()
        by_rollback: Tally[str] = Tally()
        for r in self.telemetry.each_report():
            if r.model not in published:  # removed from the registry since it reported
                continue
            known = r.active_version == 0 or r.active_version in versions[r.model]
            by_version[(r.model, str(r.active_version) if known else OTHER)] += 1
            for reason, n in r.fallbacks_by_reason.items():
                by_reason[(r.model, reason)] += n
            for source, n in r.predictions_by_source.items():
                by_source[(r.model, source)] += n
            for outcome, n in (
                ("updated", r.sync.updated),
                ("up_to_date", r.sync.up_to_date),
                ("failed", r.sync.failed),
            ):
                by_sync[(r.model, outcome)] += n
            by_rollback[r.model] += len(r.rollbacks)
        for family, tally in (
            (devices, by_version),
            (fallbacks, by_reason),
            (predictions, by_source),
            (syncs, by_sync),
        ):
            for labels, value in sorted(tally.items()):
                family.add_metric(list(labels), value)
        for model, value in sorted(by_rollback.items()):
            rollbacks.add_metric([model], value)
        received = CounterMetricFamily("edgerec_status_reports", "Status reports received.")
        received.add_metric([], self.telemetry.received)
        yield from (devices, fallbacks, predictions, syncs, rollbacks, received)


class MetricsHttpServer:
    """``/metrics`` of ``registry`` over HTTP on ``host:port`` (port 0: any free port), on a daemon thread.

    ``pages`` adds read-only HTML pages by path (each a function making the page's bytes per request;
    they are served with a Content-Security-Policy that allows no script and no outside resource).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        pages: Mapping[str, Callable[[], bytes]] | None = None,
    ) -> None:
        app = _with_pages(make_wsgi_app(registry), dict(pages or {}))
        self._httpd = make_server(host, port, app, _ThreadingServer, handler_class=_QuietHandler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="edgerec-metrics", daemon=True)
        self._thread.start()
        self.host = host
        self.port: int = self._httpd.server_port
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


PAGE_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not logged (scrapes come every few seconds)."""


def _with_pages(metrics_app: Any, pages: dict[str, Callable[[], bytes]]) -> Any:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        page = pages.get(environ.get("PATH_INFO", ""))
        if page is None:
            return metrics_app(environ, start_response)
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Length", "0")])
            return [b""]
        try:
            body = page()
        except Exception:  # a page that fails must not take /metrics down with it
            log.exception("page %s failed", environ.get("PATH_INFO"))
            start_response("500 Internal Server Error", [("Content-Type", "text/plain"), ("Content-Length", "6")])
            return [b"failed"]
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("Content-Security-Policy", PAGE_SECURITY_POLICY),
                ("X-Content-Type-Options", "nosniff"),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body] if environ.get("REQUEST_METHOD") == "GET" else [b""]

    return app
