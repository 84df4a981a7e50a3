"""A userspace TCP proxy that adds what the kernel here cannot: latency, segment loss, and pacing.

``netem`` is missing from this kernel, so delay and loss come from this proxy. Each direction
of a connection is a small link model: bytes read from one side are timestamped, serialised
at ``rate`` through a bottleneck queue (when pacing), and delivered ``rtt / 2`` later; a new
connection carries data only one RTT after it was accepted (the TCP handshake). A lost
segment (``loss``, per 1448-byte segment) costs a retransmission (its bytes again) and holds
back everything after it for one RTT, as in-order delivery does; congestion-window back-off
is not modelled here (:mod:`.emulation` paces a lossy link at the Mathis bound instead). With
``drop_every_bytes`` each connection is cut once that many bytes reached the device (the
device then resumes on a new connection).

Cuts are made here, at the point of delivery, rather than by
:class:`edgerec.tools.links.cutting.LinkProxy` on the server side of this proxy: there, bytes count
as sent once they sit in a socket buffer in front of the emulated link, so a cut would land
seconds of link time before the device got them, and its reset would discard the bytes in flight.
"""

from __future__ import annotations

import contextlib
import random
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

from edgerec.tools.links.profiles import TCP_MSS
from edgerec.tools.links.proxy import TcpProxy

MSS = TCP_MSS
_UNPACED_READ = 64 * 1024


@dataclass(frozen=True)
class Impairments:
    """What the proxy does to every connection."""

    rtt_s: float = 0.0
    # Pace each direction to this many bytes/s; None forwards as fast as the next hop accepts
    # (a tbf qdisc then sets the rate) and only uses ``nominal_rate`` to price retransmissions.
    rate_bytes_per_s: float | None = None
    nominal_rate_bytes_per_s: float | None = None
    loss: float = 0.0
    drop_every_bytes: int | None = None  # cut each connection once this many bytes reached the device
    buffer_s: float = 0.05  # bottleneck queue, in seconds at the rate, beyond the bytes in flight
    seed: int = 0

    @property
    def cost_rate(self) -> float | None:
        return self.rate_bytes_per_s or self.nominal_rate_bytes_per_s


class _Direction:
    """One way of one connection: a reader filling a bounded queue, a writer delivering on schedule."""

    def __init__(self, link: _Link, src: socket.socket, dst: socket.socket, downstream: bool, start_at: float) -> None:
        imp = link.proxy.impairments
        self.link = link
        self.src = src
        self.dst = dst
        self.downstream = downstream
        self.delay = imp.rtt_s / 2
        self.rtt = imp.rtt_s
        self.rate = imp.rate_bytes_per_s
        self.cost_rate = imp.cost_rate
        self.loss = imp.loss
        self.rng = random.Random(imp.seed * 7919 + link.index * 2 + int(downstream))
        self.read_size = max(MSS, min(_UNPACED_READ, int(self.rate * 0.005))) if self.rate else _UNPACED_READ
        rate = self.cost_rate or 0.0
        self.limit = max(_UNPACED_READ, int(rate * (self.delay + imp.buffer_s))) if rate else 4 * 1024 * 1024
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.cond = threading.Condition()
        self.link_free = start_at  # when the bottleneck can next start sending
        self.hol_until = 0.0  # nothing is delivered before a lost segment's retransmission
        name = "down" if downstream else "up"
        self.threads = [
            threading.Thread(target=self._read, daemon=True, name=f"shaper-{name}-read"),
            threading.Thread(target=self._write, daemon=True, name=f"shaper-{name}-write"),
        ]

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def _push(self, item: bytes | None) -> None:
        with self.cond:
            self.queue.append((time.monotonic(), item))
            self.queued += len(item or b"")
            self.cond.notify_all()

    def _read(self) -> None:
        try:
            while not self.link.closed.is_set():
                with self.cond:
                    while self.queued >= self.limit and not self.link.closed.is_set():
                        self.cond.wait(0.2)
                if self.link.closed.is_set():
                    return
                data = self.src.recv(self.read_size)
                self._push(data)
                if not data:
                    return
        except OSError:
            self._push(None)

    def _pop(self) -> tuple[float, bytes | None] | None:
        """The next queued item, or None once the connection is closed."""
        with self.cond:
            while not self.queue and not self.link.closed.is_set():
                self.cond.wait(0.2)
            if self.link.closed.is_set():
                return None
            item = self.queue.popleft()
            self.queued -= len(item[1] or b"")
            self.cond.notify_all()
            return item

    def _write(self) -> None:
        while (item := self._pop()) is not None:
            arrival, data = item
            if data is None:  # the source failed: drop the connection
                self.link.close()
                return
            if not data:  # orderly end of this direction: pass it on
                with contextlib.suppress(OSError):
                    self.dst.shutdown(socket.SHUT_WR)
                self.link.direction_done()
                return
            if self.link.is_cut:  # what the device sends after a cut goes nowhere
                continue
            wait = self._schedule(arrival, len(data)) - time.monotonic()
            if wait > 0 and self.link.closed.wait(wait):
                return
            cut_now = False
            if self.downstream and self.link.cut_after is not None:
                room = self.link.cut_after - self.link.delivered_down
                data, cut_now = data[:room], len(data) >= room
            try:
                if data:
                    self.dst.sendall(data)
            except OSError:
                if not self.link.is_cut:
                    self.link.close()
                    return
                continue
            self.link.proxy._count(self.downstream, len(data))
            if self.downstream:
                self.link.delivered_down += len(data)
            if cut_now:
                self.link.cut()
                return

    def _schedule(self, arrival: float, size: int) -> float:
        """When ``size`` bytes that reached the proxy at ``arrival`` reach the other side."""
        start = max(self.link_free, arrival)
        lost = self._lose(size)
        if self.rate:
            done = start + (size + lost) / self.rate
            self.link_free = done
        else:
            done = start + (lost / self.cost_rate if lost and self.cost_rate else 0.0)
            self.link_free = start
        deliver = done + self.delay
        if lost:
            self.hol_until = max(self.hol_until, deliver + self.rtt)
        return max(deliver, self.hol_until)

    def _lose(self, size: int) -> int:
        """Bytes of the segments of this chunk that the emulated link loses (and TCP sends again)."""
        if not self.loss:
            return 0
        lost = segments = 0
        for offset in range(0, size, MSS):
            if self.rng.random() < self.loss:
                lost += min(MSS, size - offset)
                segments += 1
        if segments:
            self.link.proxy._count_loss(segments, lost)
        return lost


class _Link:
    """A proxied connection: the client socket, the upstream socket, and both directions."""

    def __init__(self, proxy: ShapingProxy, index: int, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.index = index
        self.client = client
        self.upstream = upstream
        self.closed = threading.Event()
        self._lock = threading.Lock()
        self._done = 0
        self.cut_after = proxy.impairments.drop_every_bytes
        self.delivered_down = 0
        self.is_cut = False
        accepted = time.monotonic()
        rtt = proxy.impairments.rtt_s
        self.directions = [
            _Direction(self, client, upstream, downstream=False, start_at=accepted + rtt),
            _Direction(self, upstream, client, downstream=True, start_at=accepted),
        ]

    @property
    def threads(self) -> list[threading.Thread]:
        return [t for d in self.directions for t in d.threads]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def direction_done(self) -> None:
        with self._lock:
            self._done += 1
            both = self._done == 2
        if both:
            self.close()

    def cut(self) -> None:
        """Drop the link after the bytes delivered so far, as a radio that loses its carrier does.

        The device gets an orderly end of stream after exactly ``cut_after`` bytes; the server
        side is closed at once; whatever the device still sends is read and discarded until it
        closes its end (closing a socket with unread data would reset it and lose bytes in flight).
        """
        with self._lock:
            if self.is_cut or self.closed.is_set():
                return
            self.is_cut = True
        self.proxy._count_cut()
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            self.upstream.shutdown(socket.SHUT_RDWR)
        self.direction_done()

    def close(self) -> None:
        """Close both sockets (idempotent); every thread of the connection then ends."""
        with self._lock:
            if self.closed.is_set():
                return
            self.closed.set()
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for direction in self.directions:
            direction.wake()
        self.proxy._forget(self)


class ShapingProxy(TcpProxy["_Link"]):
    """Listens on ``listen_host`` (optionally bound to one interface) and forwards to ``upstream``.

    >>> with ShapingProxy(("127.0.0.1", 50051), Impairments(rtt_s=0.1, rate_bytes_per_s=250_000)) as proxy:
    ...     client = EdgeClient(server=proxy.address, ...)
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        impairments: Impairments,
        *,
        listen_host: str = "127.0.0.1",
        bind_device: str | None = None,
    ) -> None:
        super().__init__(upstream, listen_host=listen_host, bind_device=bind_device, name="shaping proxy")
        self.impairments = impairments
        self._start_accepting()

    def _open(self, client: socket.socket, upstream: socket.socket) -> _Link:
        return _Link(self, self._counters.connections, client, upstream)
