"""Server micro-batching: concurrent Predict requests for one model run as one batch.

The first request of a group waits up to ``max_wait_s`` for others with the same key and the same
non-batch shapes and dtypes (less when every request in flight for the group has joined), concatenates
them along axis 0, runs once and hands each caller its rows.
Requests that cannot be batched (scalars, batch larger than ``max_batch``) run alone.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
RunFn = Callable[[Mapping[str, np.ndarray]], Arrays]


@dataclass
class _Request:
    inputs: Mapping[str, np.ndarray]
    rows: int
    done: threading.Event = field(default_factory=threading.Event)
    outputs: Arrays | None = None
    error: BaseException | None = None


@dataclass
class _Batch:
    requests: list[_Request] = field(default_factory=list)
    rows: int = 0
    full: threading.Event = field(default_factory=threading.Event)


class MicroBatcher:
    """Groups concurrent calls by (key, shapes); ``run`` blocks until this caller's rows are ready."""

    def __init__(
        self, max_wait_s: float = 0.002, max_batch: int = 256, observer: Callable[[int, int], None] | None = None
    ) -> None:
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        # Called after every runtime call with (requests it answered, rows it ran), e.g. for metrics.
        self.observer = observer
        self._open: dict[Hashable, _Batch] = {}
        self._inflight: dict[Hashable, int] = {}
        self._lock = threading.Lock()
        self.batches = 0
        self.batched_requests = 0

    def run(self, key: Hashable, inputs: Mapping[str, np.ndarray], run: RunFn) -> Arrays:
        rows = _batch_rows(inputs)
        if rows is None or rows > self.max_batch or self.max_wait_s <= 0:
            outputs = run(inputs)
            self._observe(1, rows or 1)
            return outputs
        group = (key, tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items())))
        request = _Request(inputs, rows)
        try:  # _run_grouped counts the request in flight first thing
            return self._run_grouped(group, request, run)
        finally:
            with self._lock:
                left = self._inflight[group] - 1
                if left:
                    self._inflight[group] = left
                    waiting = self._open.get(group)
                    if waiting is not None and len(waiting.requests) == left:
                        waiting.full.set()  # everyone still in flight has joined the open batch: no one to wait for
                else:
                    del self._inflight[group]

    def in_flight(self) -> int:
        """Requests inside :meth:`run` that may share a runtime call (running, or waiting for others)."""
        with self._lock:
            return sum(self._inflight.values())

    def _run_grouped(self, group: Hashable, request: _Request, run: RunFn) -> Arrays:
        rows = request.rows
        with self._lock:
            inflight = self._inflight[group] = self._inflight.get(group, 0) + 1
            alone = inflight == 1 and group not in self._open
            batch = self._open.get(group)
            leader = batch is None or batch.rows + rows > self.max_batch
            if leader:
                if batch is not None:
                    batch.full.set()  # the old batch goes now; this request starts the next one
                batch = self._open[group] = _Batch()
            assert batch is not None
            batch.requests.append(request)
            batch.rows += rows
            if batch.rows >= self.max_batch:
                batch.full.set()
                del self._open[group]
            elif len(batch.requests) == inflight:
                # Every request in flight for the group is in this batch: whoever sent them waits for
                # this answer before sending more, so waiting longer only adds latency.
                batch.full.set()
        if not leader:
            request.done.wait()
            if request.error is not None:
                raise request.error
            assert request.outputs is not None
            return request.outputs
        if not alone:  # nobody else is in flight for this group: no one to wait for
            batch.full.wait(self.max_wait_s)
        if self._open.get(group) is batch:  # unlocked peek: a batch once closed or replaced never reopens
            with self._lock:
                if self._open.get(group) is batch:
                    del self._open[group]
        self._execute(batch.requests, run)
        if request.error is not None:
            raise request.error
        assert request.outputs is not None
        return request.outputs

    def _execute(self, requests: list[_Request], run: RunFn) -> None:
        """One runtime call for all; on a failure or unsplittable outputs each request runs alone."""
        if len(requests) > 1:
            total = sum(r.rows for r in requests)
            try:
                merged = {name: np.concatenate([r.inputs[name] for r in requests]) for name in requests[0].inputs}
                outputs = run(merged)
                if all(np.ndim(v) >= 1 and np.shape(v)[0] == total for v in outputs.values()):
                    start = 0
                    for r in requests:
                        r.outputs = {name: value[start : start + r.rows] for name, value in outputs.items()}
                        start += r.rows
                        r.done.set()
                    with self._lock:
                        self.batches += 1
                        self.batched_requests += len(requests)
                    self._observe(len(requests), total)
                    return
            except Exception as exc:  # one bad request must not fail the others: retry alone below
                log.debug("batch of %d failed (%s); running each request alone", len(requests), exc)
        for r in requests:
            try:
                r.outputs = run(r.inputs)
                self._observe(1, r.rows)
            except BaseException as exc:
                r.error = exc
            finally:
                r.done.set()

    def _observe(self, requests: int, rows: int) -> None:
        if self.observer is not None:
            try:
                self.observer(requests, rows)
            except Exception:  # metrics must never fail a prediction
                log.exception("batch observer failed")


def _batch_rows(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The shared leading dimension of every input, or None when there is none."""
    rows = {a.shape[0] if a.ndim else None for a in inputs.values()}
    if len(rows) != 1:
        return None
    only = rows.pop()
    return only if only else None
