"""A real TCP proxy on loopback that counts bytes and can cut connections, as a flaky link does.

Stands between a device and the server::

    with LinkProxy("127.0.0.1", server_port, cut_after=[40_000]) as proxy:
        client = EdgeClient(server=proxy.address, ...)
        client.sync()  # the first connection is cut after 40_000 bytes down; the device resumes
        print(proxy.stats())

Each new connection takes the next count from the ``cut_after`` queue (also fed by
:meth:`LinkProxy.cut_after`); once the queue is empty, ``drop_every_bytes`` (if set) cuts
every connection after that many bytes down. A cut forwards exactly the bytes up to the
limit, then closes both sides. Bytes are counted both ways, in total (:meth:`LinkProxy.stats`)
and per connection (:attr:`LinkProxy.records`).

The profiler's :class:`~edgerec.tools.links.shaping.ShapingProxy` cuts too, but at the point of
delivery behind an emulated link; this one cuts at full loopback speed, for fault runs.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from edgerec.tools.links.proxy import TcpProxy

_BUFFER = 64 * 1024


@dataclass
class ConnectionRecord:
    """One proxied connection: its cut limit, bytes each way, and whether it was cut."""

    index: int
    limit: int | None
    opened_at: float
    bytes_up: int = 0
    bytes_down: int = 0
    cut: bool = False
    closed_at: float | None = None


class _Connection:
    """A client socket, its upstream socket and the two threads pumping between them."""

    def __init__(
        self, proxy: LinkProxy, client: socket.socket, upstream: socket.socket, record: ConnectionRecord
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.record = record
        self._lock = threading.Lock()
        self._closed = False
        self._directions_done = 0
        self.threads = [
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True, name="linkproxy-up"),
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True, name="linkproxy-down"),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def close(self) -> None:
        """Close both sockets at once (idempotent); the pumps then end."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.proxy._forget(self)

    def _direction_finished(self) -> None:
        with self._lock:
            self._directions_done += 1
            both = self._directions_done == 2
        if both:
            self.close()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        limit = self.record.limit if downstream else None
        sent = 0
        try:
            while True:
                data = src.recv(_BUFFER)
                if not data:  # orderly end of this direction: pass it on, keep the other one open
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)
                    self._direction_finished()
                    return
                if limit is not None and sent + len(data) >= limit:
                    data = data[: limit - sent]
                    if data:
                        dst.sendall(data)
                        self.proxy._count_record(self.record, len(data), downstream)
                    self.proxy._count_record_cut(self.record)
                    break
                dst.sendall(data)
                sent += len(data)
                self.proxy._count_record(self.record, len(data), downstream)
        except OSError:
            pass
        self.close()


class LinkProxy(TcpProxy[_Connection]):
    """Forwards ``127.0.0.1:<port>`` to ``upstream_host:upstream_port``, counting and cutting as told."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        cut_after: Iterable[int] = (),
        drop_every_bytes: int | None = None,
        listen_host: str = "127.0.0.1",
    ) -> None:
        if drop_every_bytes is not None and drop_every_bytes < 1:
            raise ValueError(f"drop_every_bytes must be >= 1, got {drop_every_bytes}")
        super().__init__((upstream_host, upstream_port), listen_host=listen_host, name="linkproxy")
        self.drop_every_bytes = drop_every_bytes
        self._cuts: deque[int] = deque()
        self.records: list[ConnectionRecord] = []
        self.cut_after(*cut_after)
        self._start_accepting()

    # --- control ------------------------------------------------------------------

    def cut_after(self, *byte_counts: int) -> None:
        """Queue cuts: each new connection takes the next count and is closed once that many bytes went down."""
        if any(count < 0 for count in byte_counts):
            raise ValueError(f"cut counts must be >= 0, got {byte_counts}")
        with self._lock:
            self._cuts.extend(byte_counts)

    # --- counters -----------------------------------------------------------------

    @property
    def cuts(self) -> int:
        return self.stats().cuts

    @property
    def bytes_down(self) -> int:
        return self.stats().bytes_down

    @property
    def connections(self) -> int:
        return self.stats().connections

    # --- internals ----------------------------------------------------------------

    def _open(self, client: socket.socket, upstream: socket.socket) -> _Connection:
        limit = self._cuts.popleft() if self._cuts else self.drop_every_bytes
        record = ConnectionRecord(index=self._counters.connections, limit=limit, opened_at=time.monotonic())
        self.records.append(record)
        return _Connection(self, client, upstream, record)

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            connection.record.closed_at = time.monotonic()
        super()._forget(connection)

    def _count_record(self, record: ConnectionRecord, n: int, downstream: bool) -> None:
        with self._lock:
            if downstream:
                record.bytes_down += n
            else:
                record.bytes_up += n
        self._count(downstream, n)

    def _count_record_cut(self, record: ConnectionRecord) -> None:
        with self._lock:
            if record.cut or record.closed_at is not None:
                return
            record.cut = True
        self._count_cut()
