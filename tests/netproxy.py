"""A real TCP proxy on loopback that can cut a connection after a number of bytes.

Stands between a device and the server to drop the link mid-download, as a flaky
mobile network does.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class CuttingProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; ``cut_after(n)`` drops the next connection after n bytes down."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut_at: list[int] = []
        self._lock = threading.Lock()
        self.cuts = 0
        self.bytes_down = 0
        self._closed = False
        threading.Thread(target=self._accept_loop, daemon=True).start()

    def cut_after(self, *byte_counts: int) -> None:
        """Each new connection takes the next count and is closed once that many bytes went down."""
        with self._lock:
            self._cut_at.extend(byte_counts)

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                limit = self._cut_at.pop(0) if self._cut_at else None
            state = {"down": 0}

            def close_both(c: socket.socket = client, u: socket.socket = upstream) -> None:
                for s in (c, u):
                    with contextlib.suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                    s.close()

            threading.Thread(
                target=self._pump, args=(client, upstream, False, None, close_both, state), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, True, limit, close_both, state), daemon=True
            ).start()

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        downstream: bool,
        limit: int | None,
        close_both: Callable[[], None],
        state: dict[str, int],
    ) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if downstream and limit is not None and len(data) >= limit - state["down"]:
                    dst.sendall(data[: max(limit - state["down"], 0)])
                    with self._lock:
                        self.cuts += 1
                        self.bytes_down += max(limit - state["down"], 0)
                    break
                if downstream:
                    state["down"] += len(data)
                    with self._lock:
                        self.bytes_down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        close_both()
