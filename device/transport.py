"""Talks to the model-push server: update checks, resumable payload downloads, fallback predictions."""

from __future__ import annotations

import errno
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from edgerec import tensors
from edgerec.device.channel import make_channel
from edgerec.errors import IntegrityError, TransportError
from edgerec.fsutil import fsync_dir, make_private_dirs, open_private
from edgerec.grpc_status import ERROR_METADATA_KEY, error_from_rpc
from edgerec.hashing import sha256_file
from edgerec.ratelimit import TokenBucket
from edgerec.tokens import device_id_of
from edgerec.v1 import inference_pb2, inference_pb2_grpc, update_pb2, update_pb2_grpc

log = logging.getLogger(__name__)

# Status codes after which a download is retried from where it stopped.
_RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
}

# HTTP/2 flow control: gRPC reads ahead of the app up to the stream's receive window, and a cut
# connection loses whatever was in flight or buffered. On a real link full speed needs about one
# bandwidth-delay product in flight, which gRPC's BDP probing (its default) tracks: a fixed small
# window would cap a stream near window / RTT (16 KiB: 0.2 Mbit/s at 600 ms). The window only
# fills with unread bytes when the app reads slower than the network delivers, i.e. a device with
# its own bandwidth cap; that cap is sent to the server, which paces the stream (see
# FetchPayloadRequest.max_bytes_per_second), so the app reads as fast as bytes arrive. Hence the
# window is left to gRPC by default (None); a fixed one stays available (receive_window_bytes).
# A device whose own code is slower than its link (on loopback, or a busy CPU on a fast LAN) is such a
# slow reader too: unpaced, a cut cost what gRPC buffered (44 KiB per cut on loopback, 74 of 200 drop
# runs over 5%). So without a cap of its own the device still asks for read_pace_bytes_per_s (12 MiB/s,
# just above the 100 Mbit/s "wifi" preset): 8.5 KiB per cut, 0 of 200 runs over 5% (tools/faults.py).
DEFAULT_RECEIVE_WINDOW_BYTES: int | None = None
DEFAULT_CHUNK_BYTES = 16 * 1024
DEFAULT_READ_PACE_BYTES_PER_S = 12 * 1024 * 1024
# A download slower than this on average is not worth waiting for: a quarter of the slowest link
# profile (2g, 64 kbit/s), so a 2g link that loses half its time to drops and retries still finishes.
DEFAULT_MIN_RATE_BYTES_PER_S = 2 * 1024
# Fixed time every download gets on top of size / min rate: connecting, and a few retries' backoff.
DEFAULT_DEADLINE_ALLOWANCE_S = 60.0
# A stream that brings no byte for this long is cancelled and resumed (a stall without a closed connection).
DEFAULT_IDLE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class TransportConfig:
    """Limits and timeouts of the device's calls."""

    check_timeout_s: float = 30.0
    predict_timeout_s: float = 2.0
    max_attempts: int = 8
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 10.0
    # Largest chunk asked of the server, at most 1 MiB. A cut also loses the chunk partly received, and
    # larger chunks lost more per cut in the drop runs (rate-limited: 4, 8, 15, 28 KiB per cut at 8, 16,
    # 32, 64 KiB); smaller ones cost framing (0.55% of the payload at 8 KiB, 0.37% at 16) and CPU per
    # byte, though 8 KiB chunks still moved ~40 MB/s on loopback. 16 KiB balances the two.
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    # The device's own bandwidth cap, bytes per second (None: none). Sent with each FetchPayload so the
    # server paces the stream; a local token bucket only guards against a server that ignores it.
    rate_bytes_per_s: float | None = None
    # The fastest the device asks the server to send when it has no cap of its own (None: unpaced). Edge
    # links are slower than this; where the network is faster than the device's own code (loopback, a
    # LAN and a busy CPU) an unpaced server fills gRPC's window with bytes the device has not read, and a
    # cut loses them. Raise it (or None) for devices on fast LANs that rarely drop.
    read_pace_bytes_per_s: float | None = DEFAULT_READ_PACE_BYTES_PER_S
    # A payload not complete after this long fails with TransportError; None (the default): the deadline
    # is derived from the payload's size, see download_deadline(). A fixed one also bounds an update check
    # with its retries. Either way a server that trickles bytes forever or stalls cannot hold a sync.
    download_deadline_s: float | None = None
    # The derived deadline: deadline_allowance_s + payload size / min_rate_bytes_per_s.
    min_rate_bytes_per_s: float = DEFAULT_MIN_RATE_BYTES_PER_S
    deadline_allowance_s: float = DEFAULT_DEADLINE_ALLOWANCE_S
    # A stream silent this long is cancelled and resumed; it counts as an attempt without progress.
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    # A fixed HTTP/2 receive window (grpc.http2.lookahead_bytes, with BDP probing off), >= 1 KiB: what
    # gRPC buffers ahead of the app, hence the most a cut can waste besides the chunk in flight. It also
    # caps a stream near window / round-trip time (16 KiB: ~1.3 Mbit/s at 100 ms). None (the default):
    # gRPC's window, grown by BDP probing to what the link needs in flight.
    receive_window_bytes: int | None = DEFAULT_RECEIVE_WINDOW_BYTES

    def __post_init__(self) -> None:
        if self.receive_window_bytes is not None and self.receive_window_bytes < 1024:
            raise ValueError(f"receive_window_bytes must be >= 1024 or None, got {self.receive_window_bytes}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.rate_bytes_per_s is not None and self.rate_bytes_per_s <= 0:
            raise ValueError(f"rate_bytes_per_s must be > 0 or None, got {self.rate_bytes_per_s}")
        for name in ("min_rate_bytes_per_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.deadline_allowance_s < 0:
            raise ValueError(f"deadline_allowance_s must be >= 0, got {self.deadline_allowance_s}")
        if self.download_deadline_s is not None and self.download_deadline_s <= 0:
            raise ValueError(f"download_deadline_s must be > 0 or None, got {self.download_deadline_s}")

    def download_deadline(self, size: int) -> float:
        """Seconds a ``size``-byte payload may take, retries included.

        ``download_deadline_s`` when set; otherwise ``deadline_allowance_s`` plus the time the payload
        takes at ``min_rate_bytes_per_s`` (at half the device's own cap, if that is lower).
        """
        if self.download_deadline_s is not None:
            return self.download_deadline_s
        rate = self.min_rate_bytes_per_s
        if self.rate_bytes_per_s is not None:
            rate = min(rate, self.rate_bytes_per_s / 2)
        return self.deadline_allowance_s + size / rate

    def chunk_limit(self) -> int:
        """The chunk size to ask for: ``max_chunk_bytes``, smaller under a rate cap (pauses near 1/8 s, but
        at least 16 KiB: every message costs the server CPU)."""
        if self.rate_bytes_per_s is None:
            return self.max_chunk_bytes
        return max(min(16384, self.max_chunk_bytes), min(self.max_chunk_bytes, int(self.rate_bytes_per_s / 8)))

    def channel_options(self) -> list[tuple[str, int]]:
        """The gRPC channel arguments these settings ask for."""
        options = [("grpc.max_receive_message_length", 16 * 1024 * 1024)]
        if self.receive_window_bytes is not None:
            options += [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", self.receive_window_bytes)]
        return options


ProgressCallback = Callable[[int, int], None]  # (bytes so far, total bytes)


class ServerConnection:
    """One channel to the server, shared by update and inference calls."""

    def __init__(
        self,
        target: str,
        config: TransportConfig | None = None,
        *,
        tls_ca: Path | None = None,
        token: str | None = None,
    ) -> None:
        self.target = target
        self.config = config or TransportConfig()
        # A token is "<device_id>.<secret>": requests name that device (the server refuses any other).
        self.device_id = device_id_of(token)
        self._channel = make_channel(target, tls_ca=tls_ca, token=token, options=self.config.channel_options())
        self._update = update_pb2_grpc.ModelUpdateStub(self._channel)  # type: ignore[no-untyped-call]
        self._inference = inference_pb2_grpc.InferenceStub(self._channel)  # type: ignore[no-untyped-call]
        self.bytes_received = 0

    def close(self) -> None:
        self._channel.close()

    def check_update(self, request: update_pb2.CheckUpdateRequest) -> update_pb2.CheckUpdateResponse:
        """The server's plan for ``request``; a transient failure (a cut link) is retried like a download.

        Retries back off exponentially with jitter, at most ``max_attempts`` tries within
        ``download_deadline_s``; a deliberate refusal by the server is raised at once as its typed error.
        """
        if not request.device_id and self.device_id:
            named = update_pb2.CheckUpdateRequest()
            named.CopyFrom(request)
            named.device_id = self.device_id
            request = named
        deadline = self._deadline()
        what = f"CheckUpdate {request.model}"
        failures = 0
        while True:
            timeout = self.config.check_timeout_s
            if deadline is not None:
                timeout = min(timeout, max(deadline - time.monotonic(), 0.001))
            try:
                response: update_pb2.CheckUpdateResponse = self._update.CheckUpdate(request, timeout=timeout)
                return response
            except grpc.RpcError as exc:
                failures += 1
                code = exc.code().name if isinstance(exc, grpc.Call) else "unknown"
                if not _transient(exc):
                    raise error_from_rpc(exc, what) from exc
                if failures >= self.config.max_attempts:
                    raise TransportError(f"{what} failed {failures} times; last: {code}") from exc
                delay = self._backoff(failures)
                if deadline is not None and time.monotonic() + delay >= deadline:
                    raise TransportError(
                        f"{what} missed its {self.config.download_deadline_s:.0f} s deadline after {failures} "
                        f"attempts; last: {code}"
                    ) from exc
                log.warning("%s failed (%s); retrying in %.2fs", what, code, delay)
                time.sleep(delay)

    def predict(
        self, model: str, inputs: Mapping[str, np.ndarray], version: int = 0, timeout_s: float | None = None
    ) -> inference_pb2.PredictResponse:
        request = inference_pb2.PredictRequest(
            model=model,
            version=version,
            inputs={name: tensors.to_proto(a) for name, a in inputs.items()},
            device_id=self.device_id,
        )
        timeout = timeout_s or self.config.predict_timeout_s
        call = self._inference.Predict.future(request, timeout=timeout)
        try:
            # Waiting on the future wakes on time; gRPC's own deadline fired up to 8 ms late on a busy CPU.
            response: inference_pb2.PredictResponse = call.result(timeout=timeout)
        except grpc.FutureTimeoutError as exc:
            call.cancel()
            raise TransportError(f"Predict {model}: no answer within {timeout:.3g} s") from exc
        except grpc.RpcError as exc:
            raise error_from_rpc(exc, f"Predict {model}") from exc
        return response

    def download(
        self,
        model: str,
        payload: update_pb2.Payload,
        part_file: Path,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Fetch a payload into ``part_file``, resuming from what it durably holds; return the finished file.

        Each chunk's offset and CRC-32 are checked and written at its offset, nothing past
        ``payload.size`` is read, and the finished file's sha256 must equal ``payload.sha256``;
        a server sending other bytes (another offset or length, more than ``payload.size``)
        raises IntegrityError and the ``.part`` is removed (it cannot be resumed). A ``.part``
        longer than the payload, or a resumed one whose bytes turn out wrong, is stale: it is
        started over, never an error. The whole download, retries included, must end within
        ``config.download_deadline(payload.size)`` (TransportError; the ``.part`` is kept to resume).
        """
        finished = part_file.with_suffix(".payload")
        if _is_file(finished):
            if finished.stat().st_size == payload.size and sha256_file(finished) == payload.sha256:
                return finished
            finished.unlink()
        make_private_dirs(part_file.parent)
        fd = open_private(part_file, os.O_RDWR | os.O_CREAT)
        try:
            # Resume from what is on disk: the length is trusted only once fsync has made it durable.
            os.fsync(fd)
            received = _Received(os.fstat(fd).st_size)
            if received.offset > payload.size:
                log.warning(
                    "%s holds %d bytes, more than the payload's %d: stale, starting over",
                    part_file.name,
                    received.offset,
                    payload.size,
                )
                received.offset = 0
            os.ftruncate(fd, received.offset)
            resumed = received.offset > 0
            while True:
                self._fetch_rest(model, payload, fd, received, progress)
                os.fsync(fd)
                digest = sha256_file(part_file)
                if digest == payload.sha256:
                    break
                if not resumed:
                    raise IntegrityError(
                        f"payload for {payload.path} has sha256 {digest[:16]}…, plan says {payload.sha256[:16]}…"
                    )
                log.warning("resumed download of %s does not hash right: stale .part, starting over", payload.path)
                resumed = False
                received.offset = 0
                os.ftruncate(fd, 0)
        except IntegrityError:
            part_file.unlink(missing_ok=True)  # bytes this stream sent cannot be resumed from
            raise
        except BaseException:
            if os.fstat(fd).st_size == 0:  # nothing to resume: leave no empty file behind
                part_file.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        os.replace(part_file, finished)
        fsync_dir(finished.parent)
        return finished

    def _fetch_rest(
        self,
        model: str,
        payload: update_pb2.Payload,
        fd: int,
        received: _Received,
        progress: ProgressCallback | None,
    ) -> None:
        """Receive ``payload`` from ``received.offset`` to its end into ``fd``, retrying within the deadline."""
        # The server paces the stream at rate_bytes_per_s. This bucket is only a guard against one that does
        # not (an older server): it lets a few chunks of jitter through, so it never slows a paced stream.
        rate = self.config.rate_bytes_per_s
        bucket = TokenBucket(rate, burst=4 * self.config.chunk_limit()) if rate else None
        allowed = self.config.download_deadline(payload.size)
        deadline = time.monotonic() + allowed
        failures = 0
        while received.offset < payload.size:
            offset = received.offset
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TransportError(
                    f"download of {payload.path} missed its {allowed:.0f} s deadline "
                    f"at {offset} of {payload.size} bytes"
                )
            try:
                self._receive(model, payload, fd, received, bucket, progress, remaining)
                reason = "stream ended early"
            except _Idle as exc:
                reason = str(exc)
            except grpc.RpcError as exc:
                if not _transient(exc):
                    raise error_from_rpc(exc, f"FetchPayload {payload.payload_id[:12]}") from exc
                reason = exc.code().name if isinstance(exc, grpc.Call) else "unknown"
            if received.offset == payload.size:
                break
            failures = 0 if received.offset > offset else failures + 1
            if failures >= self.config.max_attempts:
                raise TransportError(
                    f"download of {payload.path} made no progress in {failures} attempts; last: {reason}"
                )
            delay = min(self._backoff(failures), max(deadline - time.monotonic(), 0.0))
            log.warning(
                "download of %s interrupted at %d of %d bytes (%s); resuming in %.2fs",
                payload.path,
                received.offset,
                payload.size,
                reason,
                delay,
            )
            time.sleep(delay)

    def _deadline(self) -> float | None:
        """The monotonic time by which an update check with its retries must be done (None: no deadline)."""
        if self.config.download_deadline_s is None:
            return None
        return time.monotonic() + self.config.download_deadline_s

    def _backoff(self, failures: int) -> float:
        """Seconds to wait before the next try: exponential in ``failures``, capped, with jitter."""
        delay = min(self.config.backoff_max_s, self.config.backoff_initial_s * 2.0**failures)
        return delay * random.uniform(0.5, 1.0)

    def _receive(
        self,
        model: str,
        payload: update_pb2.Payload,
        fd: int,
        received: _Received,
        bucket: TokenBucket | None,
        progress: ProgressCallback | None,
        timeout_s: float,
    ) -> None:
        """One FetchPayload stream from ``received.offset``: each checked chunk is written at its offset."""
        rate = min((r for r in (self.config.rate_bytes_per_s, self.config.read_pace_bytes_per_s) if r), default=0)
        request = update_pb2.FetchPayloadRequest(
            model=model,
            payload_id=payload.payload_id,
            offset=received.offset,
            max_chunk_bytes=self.config.chunk_limit(),
            device_id=self.device_id,
            max_bytes_per_second=max(1, round(rate)) if rate else 0,
        )
        stream = self._update.FetchPayload(request, timeout=timeout_s)
        watch = _IdleWatch(stream.cancel, self.config.idle_timeout_s)
        try:
            for chunk in stream:
                watch.touch()
                offset = received.offset
                # Another payload, or more bytes than the plan's length: refused before a byte is written.
                if chunk.offset != offset or chunk.total_size != payload.size:
                    raise IntegrityError(
                        f"server sent bytes at {chunk.offset} of {chunk.total_size}, "
                        f"expected {offset} of {payload.size}"
                    )
                if len(chunk.data) > payload.size - offset:
                    raise IntegrityError(
                        f"server sent more bytes than the payload's {payload.size} (at offset {offset})"
                    )
                if zlib.crc32(chunk.data) != chunk.crc32:
                    raise IntegrityError(f"chunk at {offset} failed its CRC-32 check")
                if bucket is not None:
                    bucket.consume(len(chunk.data))
                _write_at(fd, chunk.data, offset)
                received.offset = offset + len(chunk.data)
                self.bytes_received += len(chunk.data)
                if progress is not None:
                    progress(received.offset, payload.size)
        except grpc.RpcError:
            if watch.fired:
                raise _Idle(f"no byte for {self.config.idle_timeout_s:g} s") from None
            raise
        finally:
            watch.stop()
            stream.cancel()


@dataclass
class _Received:
    """How many bytes of a payload are written, in order, to its ``.part``: where the next chunk goes."""

    offset: int


class _Idle(Exception):
    """A stream that stayed silent past the idle timeout (cancelled, to be resumed)."""


class _IdleWatch:
    """Cancels a stream that brings no chunk for ``idle_s`` seconds (gRPC's iterator has no read timeout)."""

    def __init__(self, cancel: Callable[[], object], idle_s: float) -> None:
        self._cancel = cancel
        self._idle_s = idle_s
        self._last = time.monotonic()
        self._done = threading.Event()
        self.fired = False
        self._thread = threading.Thread(target=self._run, name="edgerec-idle-watch", daemon=True)
        self._thread.start()

    def touch(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(max(self._last + self._idle_s - time.monotonic(), 0.0)):
            if time.monotonic() - self._last >= self._idle_s:
                self.fired = True
                self._cancel()
                return


def _write_at(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` of ``fd`` (a retry never appends a chunk twice)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]
        offset += written


def _is_file(path: Path) -> bool:
    """Whether ``path`` is a regular file (a link is not: it is never read or written through)."""
    try:
        return path.is_file() and not path.is_symlink()
    except OSError:
        return False


def _transient(exc: grpc.RpcError) -> bool:
    """Whether a failed call may succeed when tried again: a retryable status that is no deliberate refusal.

    A status the server chose (it names an edgerec error in the trailing metadata) stays the same on a retry.
    """
    if not isinstance(exc, grpc.Call):
        return True
    if exc.code() not in _RETRYABLE:
        return False
    return not any(key == ERROR_METADATA_KEY for key, _ in exc.trailing_metadata() or ())
