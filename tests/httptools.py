"""A payload URL server for tests: honest (HTTP Range like an object store) or hostile, on loopback.

It plays the places a plan's URLs may point to when they misbehave: a bucket that serves wrong
bytes, one whose links expired, one that dies mid-payload, one that ignores ranges, one that
redirects elsewhere. Real sockets, real HTTP (``http.server``); the payloads it serves are the
registry's own bytes unless a behaviour says otherwise.

    with PayloadHttpServer(payloads) as server:
        server.behaviour = "wrong-bytes"
        url = server.url(payload_id)
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BEHAVIOURS = ("honest", "wrong-bytes", "expired", "die-after", "stall-after", "ignore-range", "redirect", "not-found")
_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class PayloadHttpServer:
    """Serves ``payloads`` (payload id -> bytes) at ``/<id>``; ``behaviour`` decides how (see BEHAVIOURS).

    ``die_after`` (for "die-after" and "stall-after"): bytes of an answer sent before the server
    closes the connection and stops listening, as a bucket that goes away mid-download, or goes
    silent without closing it until :meth:`stop`. ``requests`` records each request's (path, Range header).
    """

    def __init__(self, payloads: Mapping[str, bytes], behaviour: str = "honest", die_after: int = 0) -> None:
        self.payloads = dict(payloads)
        self.behaviour = behaviour
        self.die_after = die_after
        self.requests: list[tuple[str, str]] = []
        self.died = threading.Event()
        self.released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-http", daemon=True)

    def __enter__(self) -> PayloadHttpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, payload_id: str) -> str:
        # A query like a presigned link's: the device must never log it.
        return f"http://127.0.0.1:{self.port}/{payload_id}?X-Signature=secret-{payload_id[:8]}"

    def stop(self) -> None:
        """Stop listening: later connections are refused (and stalled answers end)."""
        self.released.set()
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def _die(self) -> None:
        self.died.set()
        threading.Thread(target=self.stop, daemon=True).start()


def _handler(owner: PayloadHttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            payload_id = self.path.split("?", 1)[0].lstrip("/")
            header = self.headers.get("Range", "")
            owner.requests.append((payload_id, header))
            data = owner.payloads.get(payload_id)
            behaviour = owner.behaviour
            if data is None or behaviour == "not-found":
                self._send(404, b"no such key")
                return
            if behaviour == "expired":
                self._send(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
                return
            if behaviour == "redirect":
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if behaviour == "wrong-bytes":
                data = os.urandom(len(data))  # the right size, other bytes
            match = _RANGE.fullmatch(header)
            if match is None or behaviour == "ignore-range":
                self._send(200, data)
                return
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            body = data[start : end + 1]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if behaviour in ("die-after", "stall-after"):
                self.wfile.write(body[: owner.die_after])
                self.wfile.flush()
                self.close_connection = True
                if behaviour == "stall-after":
                    owner.released.wait(60)
                else:
                    owner._die()
                return
            self.wfile.write(body)

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler
