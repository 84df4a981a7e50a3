"""How a device talks to the outside: update checks, payload bytes, fallback predictions.

====================  ===============================================================================
``config.py``         :class:`TransportConfig`: every limit and timeout, with defaults
``retry.py``          :class:`RetryPolicy`: tries, backoff, jitter and deadline as one value
``base.py``           the seams: :class:`PayloadTransport` (payload bytes from one place), :class:`FetchJob`,
                      :class:`UpdateChannel` (update checks), the errors a source raises
``part.py``           the ``.part`` file a payload is received into, resumable
``fetcher.py``        :class:`PayloadFetcher`: added transports, then the plan's URLs, then the servers
``grpc.py``           :class:`ServerConnection` (one server), :class:`ServerPool` (failover between several)
``http.py``           :class:`HttpTransport`: one payload URL with HTTP Range resume (urllib3)
``channel.py``        opening a gRPC channel: TLS with a pinned CA, a per-device token
====================  ===============================================================================
"""

from edgerec.device.transport.base import (
    FetchJob,
    PayloadTransport,
    ProgressCallback,
    SourceUnavailableError,
    UpdateChannel,
    UrlExpiredError,
)
from edgerec.device.transport.config import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_DEADLINE_ALLOWANCE_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MIN_RATE_BYTES_PER_S,
    DEFAULT_READ_PACE_BYTES_PER_S,
    DEFAULT_RECEIVE_WINDOW_BYTES,
    TransportConfig,
)
from edgerec.device.transport.fetcher import Download, PayloadFetcher
from edgerec.device.transport.grpc import ServerConnection, ServerPool
from edgerec.device.transport.http import HttpClient, HttpTransport
from edgerec.device.transport.retry import RetryPolicy

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_DEADLINE_ALLOWANCE_S",
    "DEFAULT_IDLE_TIMEOUT_S",
    "DEFAULT_MIN_RATE_BYTES_PER_S",
    "DEFAULT_READ_PACE_BYTES_PER_S",
    "DEFAULT_RECEIVE_WINDOW_BYTES",
    "Download",
    "FetchJob",
    "HttpClient",
    "HttpTransport",
    "PayloadFetcher",
    "PayloadTransport",
    "ProgressCallback",
    "RetryPolicy",
    "ServerConnection",
    "ServerPool",
    "SourceUnavailableError",
    "TransportConfig",
    "UpdateChannel",
    "UrlExpiredError",
]
