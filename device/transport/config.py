"""TransportConfig: every limit and timeout of the device's calls to its servers and payload URLs, with defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgerec.device.transport.retry import RetryPolicy

# HTTP/2 flow control: gRPC reads ahead of the app up to the stream's receive window, and a cut
# connection loses whatever was in flight or buffered. On a real link full speed needs about one
# bandwidth-delay product in flight, which gRPC's BDP probing (its default) tracks: a fixed small
# window would cap a stream near window / RTT. The window only
# fills with unread bytes when the app reads slower than the network delivers, i.e. a device with
# its own bandwidth cap; that cap is sent to the server, which paces the stream (see
# FetchPayloadRequest.max_bytes_per_second), so the app reads as fast as bytes arrive. Hence the
# window is left to gRPC by default (None); a fixed one stays available (receive_window_bytes).
# A device whose own code is slower than its link (on loopback, or a busy CPU on a fast LAN) is such a
# slow reader too: unpaced, a cut costs what gRPC buffered. So without a cap of its own the device
# still asks for read_pace_bytes_per_s (just above the fastest link preset, "wifi"). The drop runs
# behind these choices are in docs/performance.md.
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
    """Limits and timeouts of the device's calls: update checks, payload downloads (gRPC and HTTP), Predict."""

    check_timeout_s: float = 30.0
    """One CheckUpdate call's timeout (retries come on top, see ``retry``)."""
    predict_timeout_s: float = 2.0
    """A server Predict's timeout when the caller gives none (predict passes what is left of its deadline)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    """How update checks and downloads retry: tries in a row without progress, backoff and jitter."""
    # A cut also loses the chunk partly received, so larger chunks lose more per cut; smaller ones cost
    # framing and CPU per byte. The default balances the two (the drop runs: docs/performance.md).
    max_chunk_bytes: int = DEFAULT_CHUNK_BYTES
    """Largest chunk asked of the server (and read at once from an HTTP answer), at most 1 MiB."""
    rate_bytes_per_s: float | None = None
    """The device's own bandwidth cap (None: none). Sent with each FetchPayload so the server paces the
    stream; a local token bucket holds every source to it (the only pacing an HTTP download gets)."""
    read_pace_bytes_per_s: float | None = DEFAULT_READ_PACE_BYTES_PER_S
    """The fastest the device asks the server to send when it has no cap of its own (None: unpaced). Where
    the network is faster than the device's own code, an unpaced server fills gRPC's window with bytes
    the device has not read, and a cut loses them. Raise it (or None) for devices on fast LANs."""
    download_deadline_s: float | None = None
    """A payload not complete after this long fails with TransportError; None (the default): derived from
    the payload's size, see :meth:`download_deadline`. A fixed one also bounds an update check with its
    retries. Either way a source that trickles bytes forever or stalls cannot hold a sync."""
    min_rate_bytes_per_s: float = DEFAULT_MIN_RATE_BYTES_PER_S
    """The derived deadline: ``deadline_allowance_s`` + payload size / ``min_rate_bytes_per_s``."""
    deadline_allowance_s: float = DEFAULT_DEADLINE_ALLOWANCE_S
    """Fixed time every download gets on top of size / min rate: connecting, and a few retries' backoff."""
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    """A stream or HTTP answer silent this long is cancelled and resumed; it counts as an attempt."""
    http_connect_timeout_s: float = 10.0
    """Time to connect to a payload URL's host (TLS included) before the next source is tried."""
    receive_window_bytes: int | None = DEFAULT_RECEIVE_WINDOW_BYTES
    """A fixed HTTP/2 receive window (grpc.http2.lookahead_bytes, with BDP probing off), >= 1 KiB: what
    gRPC buffers ahead of the app, hence the most a cut can waste besides the chunk in flight. It also
    caps a stream near window / round-trip time. None (the default):
    gRPC's window, grown by BDP probing to what the link needs in flight."""

    def __post_init__(self) -> None:
        if self.receive_window_bytes is not None and self.receive_window_bytes < 1024:
            raise ValueError(f"receive_window_bytes must be >= 1024 or None, got {self.receive_window_bytes}")
        if not 0 < self.max_chunk_bytes <= 1024 * 1024:
            raise ValueError(f"max_chunk_bytes must be in (0, 1 MiB], got {self.max_chunk_bytes}")
        if self.rate_bytes_per_s is not None and self.rate_bytes_per_s <= 0:
            raise ValueError(f"rate_bytes_per_s must be > 0 or None, got {self.rate_bytes_per_s}")
        for name in (
            "check_timeout_s",
            "predict_timeout_s",
            "min_rate_bytes_per_s",
            "idle_timeout_s",
            "http_connect_timeout_s",
        ):
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
