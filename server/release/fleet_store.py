"""The fleet records of every replica, shared through the registry.

:class:`RegistryFleet` is both ends: the :class:`FleetObserver` a server hands its answered
CheckUpdates and accepted status reports to (kept in memory, bounded in devices and bytes, cheap
enough for the request path), and the :class:`FleetSource` gates and the fleet view read. Each
replica writes its records as one document per (model, replica) every ``flush_every_s`` and when it
stops; :meth:`RegistryFleet.devices` merges the documents of every replica (field by field: what a
CheckUpdate says from the newest CheckUpdate, what a report says from the newest report) with this
replica's unflushed records. A document that does not parse is logged and skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from edgerec.attributes import channel_or_default, validate_app_version, validate_labels
from edgerec.errors import EdgerecError, InvalidInputError, RegistryConflictError
from edgerec.registry import ModelRegistry
from edgerec.registry.base import MAX_DOCUMENT_BYTES
from edgerec.server.release.fleet_doc import (
    MAX_INSTALL_FAILURES,
    MAX_NAME_CHARS,
    MAX_REPLICAS,
    MAX_ROLLBACKS,
    MAX_RUNTIMES,
    MAX_VERSIONS,
    REPLICA_ID,
    decode_index,
    decode_replica_doc,
    encode_index,
    encode_replica_doc,
    index_key,
    replica_key,
)
from edgerec.server.release.records import DeviceRecord, VersionRecord
from edgerec.server.throttled_log import ThrottledLog
from edgerec.tokens import DEVICE_ID_PATTERN
from edgerec.v1 import telemetry_pb2, update_pb2

__all__ = ["DEFAULT_FLUSH_EVERY_S", "RegistryFleet", "default_replica_id", "merge_records"]

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)

DEFAULT_FLUSH_EVERY_S = 10.0
DEFAULT_MAX_DEVICES = 50_000
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_CACHE_S = 2.0
# A replica that has not announced itself for this long is no longer read (its records are stale).
DEFAULT_REPLICA_TTL_S = 7 * 24 * 3600.0
# A replica announces itself in the index at most this often (a CAS write on a shared document).
ANNOUNCE_EVERY_S = 600.0
# Devices merged from all replicas' documents of one model, at most.
MAX_MERGED_DEVICES = 500_000
# Bytes a kept record costs beside its strings and lists (objects, dict entry, ordering).
RECORD_OVERHEAD = 600
CAS_TRIES = 8


def default_replica_id() -> str:
    """A replica id unique to this process: host name, pid and a random part."""
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname().lower())[:32].strip("-.")
    return f"{host or 'host'}-{os.getpid()}-{secrets.token_hex(3)}"


def _cost(record: DeviceRecord) -> int:
    return (
        RECORD_OVERHEAD
        + len(record.device_id)
        + len(record.model)
        + len(record.app_version)
        + sum(len(k) + len(v) + 64 for k, v in record.labels.items())
        + sum(len(r) + 56 for r in record.runtimes)
        + sum(len(e) + 80 for _, e in record.install_failures)
        + 40 * len(record.rollbacks_from)
        + 200 * len(record.versions)
    )


def _finite(value: float) -> float:
    return value if math.isfinite(value) and value >= 0 else 0.0


def merge_records(a: DeviceRecord, b: DeviceRecord) -> DeviceRecord:
    """One device's two records (from two replicas) as one: each group of fields from the newer event.

    CheckUpdate fields come from the newer CheckUpdate, report fields from the newer report, the
    attributes from whichever gave them last; first seen is the earlier. When both offered the same
    version, it was offered since the earlier of their times.
    """
    check = a if a.last_check_unix_s >= b.last_check_unix_s else b
    other_check = b if check is a else a
    report = a if a.last_report_unix_s >= b.last_report_unix_s else b
    attrs = a if a.attributes_unix_s >= b.attributes_unix_s else b
    offered_since = check.offered_since_unix_s
    if other_check.offered_version == check.offered_version and other_check.offered_since_unix_s > 0:
        offered_since = min(offered_since, other_check.offered_since_unix_s) or other_check.offered_since_unix_s
    seen = [t for t in (a.first_seen_unix_s, b.first_seen_unix_s) if t > 0]
    return dataclasses.replace(
        check,
        channel=attrs.channel,
        labels=attrs.labels,
        runtimes=attrs.runtimes,
        app_version=attrs.app_version,
        attributes_unix_s=attrs.attributes_unix_s,
        offered_since_unix_s=offered_since,
        first_seen_unix_s=min(seen) if seen else 0.0,
        last_report_unix_s=report.last_report_unix_s,
        active_version=report.active_version,
        held_back_version=report.held_back_version,
        install_failures=report.install_failures,
        rollbacks_from=report.rollbacks_from,
        versions=report.versions,
    )


class RegistryFleet:
    """Fleet records of this replica (``replica_id``), flushed to ``registry``, merged with every replica's.

    Safe to share between threads. Holds at most ``max_devices`` (device, model) records and about
    ``max_bytes`` bytes of them (the least recently seen go first). Call :meth:`start` to flush every
    ``flush_every_s`` in the background and :meth:`stop` for a final flush.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        replica_id: str | None = None,
        flush_every_s: float = DEFAULT_FLUSH_EVERY_S,
        max_devices: int = DEFAULT_MAX_DEVICES,
        max_bytes: int = DEFAULT_MAX_BYTES,
        cache_s: float = DEFAULT_CACHE_S,
        replica_ttl_s: float = DEFAULT_REPLICA_TTL_S,
    ) -> None:
        replica_id = default_replica_id() if replica_id is None else replica_id
        if not REPLICA_ID.match(replica_id):
            raise ValueError(f"replica_id must match {REPLICA_ID.pattern}, got {replica_id[:80]!r}")
        if not flush_every_s > 0 or max_devices < 1 or max_bytes < RECORD_OVERHEAD or cache_s < 0:
            raise ValueError(
                f"need flush_every_s > 0, max_devices >= 1, max_bytes >= {RECORD_OVERHEAD} and cache_s >= 0, "
                f"got {flush_every_s}, {max_devices}, {max_bytes}, {cache_s}"
            )
        if not replica_ttl_s > 0:
            raise ValueError(f"replica_ttl_s must be > 0, got {replica_ttl_s}")
        self.registry = registry
        self.replica_id = replica_id
        self.flush_every_s = flush_every_s
        self.max_devices = max_devices
        self.max_bytes = max_bytes
        self.cache_s = cache_s
        self.replica_ttl_s = replica_ttl_s
        self._lock = threading.Lock()
        # (model, device_id) -> (record, its cost), least recently seen first.
        self._records: OrderedDict[tuple[str, str], tuple[DeviceRecord, int]] = OrderedDict()
        self._bytes = 0
        self._dirty: set[str] = set()
        self._flush_lock = threading.Lock()
        self._etags: dict[str, str] = {}
        self._announced: dict[str, float] = {}
        # model -> (change stamp, monotonic time read, merged records of every replica's documents).
        self._cache: dict[str, tuple[str, float, dict[str, DeviceRecord]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.evicted = 0
        self.flushes = 0
        self.flush_failures = 0
        self.skipped_documents = 0

    # --- FleetObserver ----------------------------------------------------------------

    def checked(self, request: update_pb2.CheckUpdateRequest, offered_version: int, now_unix_s: float) -> None:
        """Record an answered CheckUpdate (a request without a usable device id or attributes is ignored)."""
        if not DEVICE_ID_PATTERN.fullmatch(request.device_id) or not request.model:
            return
        try:
            channel = channel_or_default(request.channel)
            labels = validate_labels(request.labels)
            app_version = validate_app_version(request.app_version)
        except InvalidInputError as exc:
            _throttled.info("fleet: ignoring the CheckUpdate of %s: %s", request.device_id, exc)
            return
        runtimes = tuple(r[:MAX_NAME_CHARS] for r in request.runtimes[:MAX_RUNTIMES])
        key = (request.model, request.device_id)
        with self._lock:
            old = self._peek(key)
            base = old or DeviceRecord(request.device_id, request.model, first_seen_unix_s=now_unix_s)
            same_offer = old is not None and old.offered_version == offered_version and old.offered_since_unix_s > 0
            record = dataclasses.replace(
                base,
                channel=channel,
                labels=labels,
                runtimes=runtimes,
                app_version=app_version,
                attributes_unix_s=now_unix_s,
                current_version=request.current_version,
                offered_version=offered_version,
                offered_since_unix_s=base.offered_since_unix_s if same_offer else now_unix_s,
                last_check_unix_s=now_unix_s,
            )
            self._put(key, record)

    def reported(self, report: telemetry_pb2.StatusReport, now_unix_s: float) -> None:
        """Record an accepted status report (one without a usable device id or attributes is ignored)."""
        if not DEVICE_ID_PATTERN.fullmatch(report.device_id) or not report.model:
            return
        gives_attributes = bool(report.channel or report.labels or report.app_version or report.runtimes)
        try:
            channel = channel_or_default(report.channel)
            labels = validate_labels(report.labels)
            app_version = validate_app_version(report.app_version)
        except InvalidInputError as exc:
            _throttled.info("fleet: ignoring the status report of %s: %s", report.device_id, exc)
            return
        versions = tuple(
            VersionRecord(
                version=o.version,
                predictions=o.predictions,
                local_errors=o.local_errors,
                fallbacks=o.fallbacks,
                p99_s=_finite(o.latency.p99_s),
                impressions=o.impressions,
                clicks=min(o.clicks, o.impressions),
                score_sum=min(_finite(o.score_sum), float(o.impressions)),
                active_since_unix_s=_finite(o.active_since_unix_s),
            )
            for o in report.outcomes[:MAX_VERSIONS]
        )
        failures = tuple((f.version, f.error[:MAX_NAME_CHARS]) for f in report.install_failures[:MAX_INSTALL_FAILURES])
        rollbacks = tuple(dict.fromkeys(r.from_version for r in report.rollbacks))[-MAX_ROLLBACKS:]
        key = (report.model, report.device_id)
        with self._lock:
            old = self._peek(key)
            record = dataclasses.replace(
                old or DeviceRecord(report.device_id, report.model, first_seen_unix_s=now_unix_s),
                last_report_unix_s=now_unix_s,
                active_version=report.active_version,
                held_back_version=report.held_back_version,
                install_failures=failures,
                rollbacks_from=rollbacks,
                versions=versions,
            )
            if gives_attributes:
                record = dataclasses.replace(
                    record,
                    channel=channel,
                    labels=labels,
                    runtimes=tuple(r[:MAX_NAME_CHARS] for r in report.runtimes[:MAX_RUNTIMES]),
                    app_version=app_version,
                    attributes_unix_s=now_unix_s,
                )
            self._put(key, record)

    def _peek(self, key: tuple[str, str]) -> DeviceRecord | None:
        entry = self._records.get(key)
        return entry[0] if entry is not None else None

    def _put(self, key: tuple[str, str], record: DeviceRecord) -> None:
        """Keep ``record`` as the newest of its device (the lock held), evicting the least recently seen."""
        old = self._records.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        cost = _cost(record)
        self._records[key] = (record, cost)
        self._bytes += cost
        self._dirty.add(key[0])
        while len(self._records) > self.max_devices or self._bytes > self.max_bytes:
            (model, _), (_, freed) = self._records.popitem(last=False)
            self._bytes -= freed
            self._dirty.add(model)
            self.evicted += 1

    # --- FleetSource ------------------------------------------------------------------

    def devices(self, model: str) -> Sequence[DeviceRecord]:
        """Every known device of ``model``: every replica's flushed records merged with this one's own."""
        merged = dict(self._flushed(model))
        with self._lock:
            own = [record for (m, _), (record, _) in self._records.items() if m == model]
        for record in own:
            seen = merged.get(record.device_id)
            merged[record.device_id] = record if seen is None else merge_records(seen, record)
        return sorted(merged.values(), key=lambda r: r.device_id)

    def local_devices(self) -> int:
        """Records this replica holds in memory (all models)."""
        with self._lock:
            return len(self._records)

    def _flushed(self, model: str) -> dict[str, DeviceRecord]:
        """Every replica's documents of ``model``, merged; cached while the registry's stamp stays and
        for at most ``cache_s``."""
        try:
            stamp = self.registry.change_stamp()
        except EdgerecError as exc:
            _throttled.warning("fleet: cannot read the registry's change stamp: %s", exc)
            stamp = ""
        cached = self._cache.get(model)
        now = time.monotonic()
        if cached is not None and stamp and cached[0] == stamp and now - cached[1] < self.cache_s:
            return cached[2]
        merged = self._read_all(model)
        self._cache[model] = (stamp, now, merged)
        return merged

    def _read_all(self, model: str) -> dict[str, DeviceRecord]:
        merged: dict[str, DeviceRecord] = {}
        try:
            replicas = self._index(model)[0]
        except (EdgerecError, ValueError) as exc:
            _throttled.warning("fleet: skipping the replica index of %s: %s", model, exc)
            self.skipped_documents += 1
            return merged
        cutoff = time.time() - self.replica_ttl_s
        for replica, announced in sorted(replicas.items()):
            if announced < cutoff and replica != self.replica_id:
                continue
            key = replica_key(model, replica)
            try:
                doc = self.registry.get_document(key)
                if doc is None:
                    continue
                _, records = decode_replica_doc(doc.data, model, MAX_MERGED_DEVICES)
            except (EdgerecError, ValueError) as exc:
                _throttled.warning("fleet: skipping the document %s: %s", key, exc)
                self.skipped_documents += 1
                continue
            for record in records:
                seen = merged.get(record.device_id)
                if seen is None and len(merged) >= MAX_MERGED_DEVICES:
                    _throttled.warning("fleet: %s has more than %d devices; ignoring the rest", model, len(merged))
                    break
                merged[record.device_id] = record if seen is None else merge_records(seen, record)
        return merged

    def _index(self, model: str) -> tuple[dict[str, float], str | None]:
        doc = self.registry.get_document(index_key(model))
        if doc is None:
            return {}, None
        return decode_index(doc.data), doc.etag

    # --- flushing ---------------------------------------------------------------------

    def flush(self) -> int:
        """Write this replica's records of every model that changed since the last flush; return how
        many documents were written. A failed write is logged and tried again at the next flush."""
        with self._flush_lock:
            with self._lock:
                models, self._dirty = self._dirty, set()
            written = 0
            for model in sorted(models):
                try:
                    self._write(model)
                    written += 1
                except (EdgerecError, ValueError, OSError) as exc:
                    self.flush_failures += 1
                    with self._lock:
                        self._dirty.add(model)
                    _throttled.warning("fleet: cannot write the records of %s: %s", model, exc)
            self.flushes += 1
            return written

    def _write(self, model: str) -> None:
        now = time.time()
        with self._lock:
            records = [record for (m, _), (record, _) in self._records.items() if m == model]
        data = self._encode_within_bound(model, now, records)
        key = replica_key(model, self.replica_id)
        for _ in range(CAS_TRIES):
            etag = self._etags.get(model)
            if etag is None:
                current = self.registry.get_document(key)
                etag = current.etag if current is not None else None
            try:
                self._etags[model] = self.registry.put_document(key, data, if_match=etag)
                break
            except RegistryConflictError:
                # Only this replica writes its document: a conflict is a stale tag or a lost answer.
                self._etags.pop(model, None)
        else:
            raise RegistryConflictError(f"could not write {key} after {CAS_TRIES} tries")
        self._cache.pop(model, None)
        if now - self._announced.get(model, -math.inf) >= ANNOUNCE_EVERY_S:
            self._announce(model, now)

    def _encode_within_bound(self, model: str, now: float, records: list[DeviceRecord]) -> bytes:
        """The document of ``records``, without the least recently seen ones when it would not fit."""
        keep = len(records)
        while True:
            data = encode_replica_doc(model, self.replica_id, now, records[len(records) - keep :])
            if len(data) <= MAX_DOCUMENT_BYTES:
                if keep < len(records):
                    _throttled.warning(
                        "fleet: %s's document holds the %d most recently seen of %d devices (size bound)",
                        model,
                        keep,
                        len(records),
                    )
                return data
            keep = keep * MAX_DOCUMENT_BYTES * 9 // (len(data) * 10)

    def _announce(self, model: str, now: float) -> None:
        """Name this replica in ``model``'s index (compare-and-swap; stale replicas are dropped)."""
        for _ in range(CAS_TRIES):
            try:
                replicas, etag = self._index(model)
            except ValueError as exc:
                log.warning("fleet: replacing the malformed replica index of %s: %s", model, exc)
                doc = self.registry.get_document(index_key(model))
                replicas, etag = {}, doc.etag if doc is not None else None
            replicas[self.replica_id] = now
            cutoff = now - self.replica_ttl_s
            kept = sorted(((t, r) for r, t in replicas.items() if t >= cutoff), reverse=True)[:MAX_REPLICAS]
            try:
                self.registry.put_document(index_key(model), encode_index({r: t for t, r in kept}), if_match=etag)
            except RegistryConflictError:
                continue
            self._announced[model] = now
            return
        raise RegistryConflictError(f"could not name replica {self.replica_id} in the index of {model}")

    # --- lifetime ---------------------------------------------------------------------

    def start(self) -> RegistryFleet:
        """Flush every ``flush_every_s`` on a daemon thread until :meth:`stop` (idempotent)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="edgerec-fleet-flush", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the background flushes and flush what is left (waits at most ``timeout_s`` for the thread)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_every_s):
            try:
                self.flush()
            except Exception:  # a bug here must not end the flushes silently
                log.exception("fleet: flush failed")
