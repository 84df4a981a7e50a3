"""The skeleton of a threaded TCP proxy: listen, connect each client upstream, count, tear everything down.

:class:`~edgerec.tools.links.cutting.LinkProxy` (counts and cuts, for fault runs) and
:class:`~edgerec.tools.links.shaping.ShapingProxy` (latency, loss, pacing, for the profiler)
differ only in what a connection does with its two sockets; this class does the rest, and
keeps the one set of counters (:class:`LinkCounters`) both report.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Generic, Protocol, Self, TypeVar

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class LinkCounters:
    """What crossed a proxy since it started: connections, TCP payload bytes each way, cuts, emulated losses."""

    connections: int = 0
    bytes_down: int = 0
    bytes_up: int = 0
    cuts: int = 0
    lost_segments: int = 0
    retransmitted_bytes: int = 0

    def __sub__(self, other: LinkCounters) -> LinkCounters:
        return LinkCounters(
            self.connections - other.connections,
            self.bytes_down - other.bytes_down,
            self.bytes_up - other.bytes_up,
            self.cuts - other.cuts,
            self.lost_segments - other.lost_segments,
            self.retransmitted_bytes - other.retransmitted_bytes,
        )


class ProxiedConnection(Protocol):
    """What the proxy needs of one connection."""

    @property
    def threads(self) -> list[threading.Thread]: ...

    def start(self) -> None: ...

    def close(self) -> None:
        """Close both sockets (idempotent); the connection's threads then end."""


ConnectionT = TypeVar("ConnectionT", bound=ProxiedConnection)


class TcpProxy(ABC, Generic[ConnectionT]):
    """Listens on ``listen_host`` (optionally bound to one interface) and forwards each client to ``upstream``."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        listen_host: str = "127.0.0.1",
        bind_device: str | None = None,
        name: str = "proxy",
    ) -> None:
        self.upstream = upstream
        self.name = name
        self._lock = threading.Lock()
        self._live: set[ConnectionT] = set()
        self._threads: list[threading.Thread] = []
        self._closed = threading.Event()
        self._counters = LinkCounters()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if bind_device is not None:  # accept only what arrives on that interface
                self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bind_device.encode())
            self._listener.bind((listen_host, 0))
            self._listener.listen(64)
        except OSError:
            self._listener.close()
            raise
        self.host = listen_host
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True, name=f"{name}-accept")

    def _start_accepting(self) -> None:
        """Subclasses call this at the end of ``__init__``, once their own state exists."""
        self._acceptor.start()

    @property
    def address(self) -> str:
        """``host:port`` for a gRPC target."""
        return f"{self.host}:{self.port}"

    def stats(self) -> LinkCounters:
        """The counters so far (one consistent snapshot)."""
        with self._lock:
            return self._counters

    def _count(self, downstream: bool, n: int) -> None:
        """``n`` bytes went to the client (``downstream``) or to the upstream server."""
        with self._lock:
            c = self._counters
            if downstream:
                self._counters = replace(c, bytes_down=c.bytes_down + n)
            else:
                self._counters = replace(c, bytes_up=c.bytes_up + n)

    def _count_cut(self) -> None:
        with self._lock:
            self._counters = replace(self._counters, cuts=self._counters.cuts + 1)

    def _count_loss(self, segments: int, n: int) -> None:
        with self._lock:
            c = self._counters
            self._counters = replace(
                c, lost_segments=c.lost_segments + segments, retransmitted_bytes=c.retransmitted_bytes + n
            )

    @abstractmethod
    def _open(self, client: socket.socket, upstream: socket.socket) -> ConnectionT:
        """A new connection between ``client`` and ``upstream`` (called with the proxy's lock held).

        ``self._counters.connections`` is the new connection's index until this returns.
        """

    def _forget(self, connection: ConnectionT) -> None:
        """A connection calls this once it closed."""
        with self._lock:
            self._live.discard(connection)

    def close(self) -> None:
        """Stop accepting, close every connection and wait for every thread to end."""
        if self._closed.is_set():
            return
        self._closed.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes a blocked accept() on Linux
        self._listener.close()
        if self._acceptor.is_alive():
            self._acceptor.join(JOIN_TIMEOUT_S)
        with self._lock:
            live = list(self._live)
            threads = list(self._threads)
        for connection in live:
            connection.close()
        for thread in threads:
            thread.join(JOIN_TIMEOUT_S)
        stuck = [t.name for t in (self._acceptor, *threads) if t.is_alive()]
        if stuck:
            log.warning("%s threads still running after close: %s", self.name, stuck)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                if self._closed.is_set():
                    return
                time.sleep(0.01)  # e.g. EMFILE: back off rather than spin
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
                upstream.settimeout(None)
            except OSError as exc:
                log.warning("%s cannot reach %s:%d: %s", self.name, *self.upstream, exc)
                client.close()
                continue
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._closed.is_set():
                    client.close()
                    upstream.close()
                    return
                connection = self._open(client, upstream)
                self._counters = replace(self._counters, connections=self._counters.connections + 1)
                self._live.add(connection)
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.extend(connection.threads)
            connection.start()
