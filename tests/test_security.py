"""Who may talk to the server: TLS, per-device bearer tokens, stream and bandwidth limits, on real loopback servers.

The certificates are made here: a throwaway CA and a server certificate for 127.0.0.1 and localhost.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from edgerec import tensors
from edgerec.device import EdgeClient
from edgerec.device.storage import ModelStore
from edgerec.device.sync import Syncer
from edgerec.device.transport import RetryPolicy, ServerConnection, TransportConfig
from edgerec.device.transport.channel import make_channel
from edgerec.errors import AuthenticationError, PermissionDeniedError, StreamLimitError, TransportError
from edgerec.hashing import sha256_file
from edgerec.registry import Registry
from edgerec.server.app import RunningServer, ServerConfig, start_server
from edgerec.server.limits import StreamLimiter, StreamLimits
from edgerec.server.progress import ProgressRules
from edgerec.server.security import add_device_token, revoke_device_token
from edgerec.trust import UpdateVerifier
from edgerec.v1 import inference_pb2, inference_pb2_grpc, update_pb2, update_pb2_grpc

pytestmark = pytest.mark.torch

MODEL = "ctr"
RATE = 100_000  # bytes per second per device on the limited server
FAST = TransportConfig(
    check_timeout_s=5, predict_timeout_s=5, retry=RetryPolicy(max_attempts=2, backoff_initial_s=0.05)
)
# A wrong kind of connection fails like a dropped one (UNAVAILABLE) and is retried; the deadline bounds it.
ONE_TRY_WORTH = TransportConfig(check_timeout_s=3, download_deadline_s=3)
DEVICES = (
    *("syncer", "predictor", "revocable", "streamer", "neighbour", "downloader", "big-sender", "a", "b", "cli"),
    *("honest", "impersonator", "cut-off", "hog", "latecomer"),
)


# --- certificates and tokens ---------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA devices trust
    cert: Path  # the server's chain, signed by ca
    key: Path
    other_ca: Path  # a CA that signed nothing the server has


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("edgerec test server"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = _make_ca("edgerec test CA")
    server_key, server_cert = _make_server_cert(ca_key, ca_cert)
    _, other_cert = _make_ca("some other CA")
    paths = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key", folder / "other-ca.pem")
    paths.ca.write_bytes(_pem(ca_cert))
    paths.cert.write_bytes(_pem(server_cert))
    paths.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    paths.other_ca.write_bytes(_pem(other_cert))
    return paths


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The token file and each device's plaintext token."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.json"
    return path, {device: add_device_token(path, device) for device in DEVICES}


def _start(registry: Registry, pki: Pki, tokens_file: Path, **limits: float | int | None) -> RunningServer:
    config = ServerConfig(
        registry=registry.root,
        listen="127.0.0.1:0",
        tls_cert=pki.cert,
        tls_key=pki.key,
        tokens_file=tokens_file,
        max_receive_bytes=64 * 1024,
        **limits,  # type: ignore[arg-type]
    )
    return start_server(config)


@pytest.fixture(scope="module")
def secure(published_registry: Registry, pki: Pki, tokens: tuple[Path, dict[str, str]]) -> Iterator[str]:
    """TLS and tokens, no bandwidth cap; requests over 64 KiB are refused."""
    server = _start(published_registry, pki, tokens[0])
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(grace=0)


@pytest.fixture(scope="module")
def limited(published_registry: Registry, pki: Pki, tokens: tuple[Path, dict[str, str]]) -> Iterator[str]:
    """TLS and tokens, one payload stream per device at RATE bytes/s."""
    server = _start(published_registry, pki, tokens[0], max_streams_per_device=1, per_device_rate=RATE)
    try:
        yield f"127.0.0.1:{server.port}"
    finally:
        server.stop(grace=0)


@pytest.fixture(scope="module")
def big_payload(secure: str, pki: Pki, tokens: tuple[Path, dict[str, str]]) -> update_pb2.Payload:
    """The largest payload a fresh device may fetch (about 180 kB)."""
    connection = ServerConnection(secure, FAST, tls_ca=pki.ca, token=tokens[1]["syncer"])
    try:
        plans = [connection.check_update(_fresh_request(recipe)) for recipe in ("int8", "fp32")]
    finally:
        connection.close()
    payload = max((p for plan in plans for p in plan.payloads), key=lambda p: p.size)
    assert payload.size >= 150_000, "the rate tests need a payload of at least 150 kB"
    return payload


def _fresh_request(recipe: str = "int8") -> update_pb2.CheckUpdateRequest:
    return update_pb2.CheckUpdateRequest(model=MODEL, recipes=[recipe], codecs=["full"], runtimes=["onnxruntime"])


def _connect(address: str, pki: Pki, token: str | None, config: TransportConfig = FAST) -> ServerConnection:
    return ServerConnection(address, config, tls_ca=pki.ca, token=token)


def _stream(
    address: str, pki: Pki, token: str, payload: update_pb2.Payload, rate: int = 0
) -> tuple[grpc.Channel, Iterator[object]]:
    """A raw FetchPayload stream in small chunks (at ``rate`` bytes/s, 0: unpaced), and its channel."""
    channel = make_channel(address, tls_ca=pki.ca, token=token)
    stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
    request = update_pb2.FetchPayloadRequest(
        model=MODEL, payload_id=payload.payload_id, max_chunk_bytes=4096, max_bytes_per_second=rate
    )
    stream: Iterator[object] = stub.FetchPayload(request, timeout=20)
    return channel, stream


# --- who may call ----------------------------------------------------------------------


def test_device_with_a_valid_token_syncs_and_predicts(
    secure: str, pki: Pki, tokens: tuple[Path, dict[str, str]], tmp_path: Path, request_inputs: dict[str, np.ndarray]
) -> None:
    connection = _connect(secure, pki, tokens[1]["syncer"])
    try:
        result = Syncer(
            ModelStore(tmp_path, MODEL), connection, device_id="syncer", verifier=UpdateVerifier.insecure(MODEL)
        ).sync()
        assert (result.version, result.updated) == (2, True)
        response = connection.predict(MODEL, request_inputs)
        assert response.version == 2 and len(response.scores) == len(next(iter(request_inputs.values())))
    finally:
        connection.close()


@pytest.mark.parametrize(
    "token",
    [None, "ghost.c2VjcmV0", "predictor.not-its-secret", "predictor", "no-dot-at-all"],
    ids=["missing", "unknown-device", "wrong-secret", "device-id-only", "malformed"],
)
def test_calls_without_a_valid_token_are_unauthenticated(
    secure: str,
    pki: Pki,
    token: str | None,
    big_payload: update_pb2.Payload,
    tmp_path: Path,
    request_inputs: dict[str, np.ndarray],
) -> None:
    connection = _connect(secure, pki, token)
    try:
        with pytest.raises(AuthenticationError, match="UNAUTHENTICATED"):
            connection.check_update(_fresh_request())
        with pytest.raises(AuthenticationError):
            connection.predict(MODEL, request_inputs)
        started = time.monotonic()
        with pytest.raises(AuthenticationError):  # not retried: no amount of retrying fixes a token
            connection.download(MODEL, big_payload, tmp_path / "p.part")
        assert time.monotonic() - started < 1.0
    finally:
        connection.close()


def test_a_non_bearer_authorization_is_unauthenticated(secure: str, pki: Pki) -> None:
    with make_channel(secure, tls_ca=pki.ca, token=None) as channel:
        stub = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.RpcError) as info:
            stub.CheckUpdate(_fresh_request(), metadata=(("authorization", "Basic dXNlcjpwdw=="),), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "Bearer" in (info.value.details() or "")


def test_health_and_reflection_need_no_token(secure: str, pki: Pki) -> None:
    with make_channel(secure, tls_ca=pki.ca, token=None) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for answer in answers for s in answer.list_services_response.service}
    assert "edgerec.v1.ModelUpdate" in names


def test_revoked_and_new_tokens_take_effect_without_a_restart(
    secure: str, pki: Pki, tokens: tuple[Path, dict[str, str]]
) -> None:
    path, issued = tokens
    old = _connect(secure, pki, issued["revocable"])
    try:
        assert old.check_update(_fresh_request()).update_available
        assert revoke_device_token(path, "revocable")
        with pytest.raises(AuthenticationError, match="unknown or revoked"):
            old.check_update(_fresh_request())
        rotated = _connect(secure, pki, add_device_token(path, "revocable"))
        newcomer = _connect(secure, pki, add_device_token(path, "newcomer"))
        try:
            assert rotated.check_update(_fresh_request()).update_available
            assert newcomer.check_update(_fresh_request()).update_available
            with pytest.raises(AuthenticationError):  # the old token stays dead
                old.check_update(_fresh_request())
        finally:
            rotated.close()
            newcomer.close()
    finally:
        old.close()


def test_a_request_naming_another_device_is_permission_denied(
    secure: str,
    pki: Pki,
    tokens: tuple[Path, dict[str, str]],
    big_payload: update_pb2.Payload,
    request_inputs: dict[str, np.ndarray],
) -> None:
    """A valid token speaks for its own device only: device_id in any request must be the token's (or empty)."""
    token = tokens[1]["impersonator"]
    check = _fresh_request()
    fetch = update_pb2.FetchPayloadRequest(model=MODEL, payload_id=big_payload.payload_id, max_chunk_bytes=4096)
    predict = inference_pb2.PredictRequest(
        model=MODEL, inputs={name: tensors.to_proto(a) for name, a in request_inputs.items()}
    )
    with make_channel(secure, tls_ca=pki.ca, token=token) as channel:
        update = update_pb2_grpc.ModelUpdateStub(channel)  # type: ignore[no-untyped-call]
        inference = inference_pb2_grpc.InferenceStub(channel)  # type: ignore[no-untyped-call]
        calls: list[Callable[[], object]] = [
            lambda: update.CheckUpdate(check, timeout=5),
            lambda: next(iter(update.FetchPayload(fetch, timeout=5))),
            lambda: inference.Predict(predict, timeout=5),
        ]
        requests: list[update_pb2.CheckUpdateRequest | update_pb2.FetchPayloadRequest | inference_pb2.PredictRequest]
        requests = [check, fetch, predict]
        for request, call in zip(requests, calls, strict=True):
            request.device_id = "impersonator"  # its own id: served
            call()
            request.device_id = ""  # no id: the token names the device
            call()
            request.device_id = "honest"  # another device's id: refused
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, type(request).__name__
            assert "impersonator" in (info.value.details() or "")


def test_a_device_claiming_another_id_gets_a_typed_error_and_installs_nothing(
    secure: str, pki: Pki, tokens: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    token = tokens[1]["impersonator"]
    with EdgeClient(
        server=secure, model=MODEL, data_dir=tmp_path, tls_ca=pki.ca, token=token, device_id="honest", insecure=True
    ) as client:
        with pytest.raises(PermissionDeniedError, match="PERMISSION_DENIED"):
            client.sync()
        assert client.active_version is None
    # The device SDK names the token's device on every call it makes by itself.
    connection = _connect(secure, pki, tokens[1]["impersonator"])
    try:
        assert connection.device_id == "impersonator"
        assert connection.check_update(_fresh_request()).update_available
    finally:
        connection.close()


def test_revoking_a_token_ends_its_open_payload_stream(
    limited: str, pki: Pki, tokens: tuple[Path, dict[str, str]], big_payload: update_pb2.Payload, tmp_path: Path
) -> None:
    """A stream authenticated before the revocation does not run to its end: it stops with UNAUTHENTICATED."""
    path, issued = tokens
    connection = _connect(limited, pki, issued["cut-off"])
    revoked_at: list[float] = []
    received: list[int] = []

    def revoke_after_the_first_bytes(done: int, total: int) -> None:
        received.append(done)
        if not revoked_at:
            assert revoke_device_token(path, "cut-off")
            revoked_at.append(time.monotonic())

    try:
        with pytest.raises(AuthenticationError, match="revoked during the stream"):
            connection.download(MODEL, big_payload, tmp_path / "big.part", revoke_after_the_first_bytes)
        ended = time.monotonic()
    finally:
        connection.close()
    assert revoked_at, "no byte arrived before the revocation"
    # At RATE B/s the whole payload takes ~1.8 s; the stream must end within a recheck or two.
    assert ended - revoked_at[0] < 1.0, f"the stream ran on for {ended - revoked_at[0]:.2f} s after the revocation"
    assert max(received) < big_payload.size
    assert (tmp_path / "big.part").stat().st_size < big_payload.size


def test_token_file_holds_only_hashes(tokens: tuple[Path, dict[str, str]]) -> None:
    path, issued = tokens
    text = path.read_text()
    assert not any(token.split(".", 1)[1] in text for token in issued.values())
    assert path.stat().st_mode & 0o077 == 0, "the token file must be readable by its owner only"
    with pytest.raises(ValueError, match="device id"):
        add_device_token(path, "bad id with spaces")


# --- the wrong kind of connection fails fast, typed --------------------------------------


def _check_fails_fast_with_transport_error(connection: ServerConnection) -> None:
    """CheckUpdate on a connection of the wrong kind: exactly TransportError, within the retry budget."""
    started = time.monotonic()
    try:
        with pytest.raises(TransportError) as info:
            connection.check_update(_fresh_request())
    finally:
        connection.close()
    assert type(info.value) is TransportError and time.monotonic() - started < 3.5


def test_plain_text_client_to_tls_server_is_a_transport_error(secure: str, pki: Pki) -> None:
    _check_fails_fast_with_transport_error(ServerConnection(secure, ONE_TRY_WORTH))


def test_untrusted_server_certificate_is_a_transport_error(
    secure: str, pki: Pki, tokens: tuple[Path, dict[str, str]]
) -> None:
    token = tokens[1]["predictor"]
    _check_fails_fast_with_transport_error(ServerConnection(secure, ONE_TRY_WORTH, tls_ca=pki.other_ca, token=token))


def test_tls_client_to_plain_text_server_is_a_transport_error(
    served: tuple[Registry, str], pki: Pki, tokens: tuple[Path, dict[str, str]]
) -> None:
    token = tokens[1]["predictor"]
    _check_fails_fast_with_transport_error(ServerConnection(served[1], ONE_TRY_WORTH, tls_ca=pki.ca, token=token))


# --- limits ----------------------------------------------------------------------------


def test_oversized_predict_is_refused_and_the_server_carries_on(
    secure: str, pki: Pki, tokens: tuple[Path, dict[str, str]], request_inputs: dict[str, np.ndarray]
) -> None:
    connection = _connect(secure, pki, tokens[1]["big-sender"])
    try:
        huge = {name: np.repeat(a, 10_000, axis=0) for name, a in request_inputs.items()}  # ~1.6 MB > 64 KiB
        with pytest.raises(TransportError, match="RESOURCE_EXHAUSTED"):
            connection.predict(MODEL, huge)
        assert connection.predict(MODEL, request_inputs).version == 2
    finally:
        connection.close()


def test_more_streams_than_allowed_are_resource_exhausted(
    limited: str, pki: Pki, tokens: tuple[Path, dict[str, str]], big_payload: update_pb2.Payload
) -> None:
    issued = tokens[1]
    first_channel, first = _stream(limited, pki, issued["streamer"], big_payload)
    neighbour_channel, neighbour = _stream(limited, pki, issued["neighbour"], big_payload)
    try:
        next(first)  # the server now holds the streamer's one slot
        second_channel, second = _stream(limited, pki, issued["streamer"], big_payload)
        with second_channel, pytest.raises(grpc.RpcError) as info:
            next(second)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit 1" in (info.value.details() or "")
        next(neighbour)  # the limit is per device
        first.cancel()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while True:  # the slot comes back once the server sees the cancellation
            again_channel, again = _stream(limited, pki, issued["streamer"], big_payload)
            with again_channel:
                try:
                    next(again)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                    time.sleep(0.05)
    finally:
        first_channel.close()
        neighbour_channel.close()


def test_a_device_holding_every_slot_yields_one_to_a_device_that_has_none(
    published_registry: Registry,
    pki: Pki,
    tokens: tuple[Path, dict[str, str]],
    big_payload: update_pb2.Payload,
    tmp_path: Path,
) -> None:
    """One device takes both slots with streams at the slowest pace (minutes each); another still downloads."""
    issued = tokens[1]
    server = _start(published_registry, pki, tokens[0], max_streams=2, max_streams_per_device=2)
    address = f"127.0.0.1:{server.port}"
    hogs = []
    try:
        for _ in range(2):  # one after the other, so the second is the newest
            hogs.append(_stream(address, pki, issued["hog"], big_payload, rate=1))
            next(hogs[-1][1])
        latecomer = _connect(address, pki, issued["latecomer"], TransportConfig(download_deadline_s=30))
        try:
            finished = latecomer.download(MODEL, big_payload, tmp_path / "latecomer.part")
        finally:
            latecomer.close()
        assert sha256_file(finished) == big_payload.sha256
        with pytest.raises(grpc.RpcError) as info:
            for _ in hogs[1][1]:  # what gRPC buffered, then the status
                pass
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the server is full and device latecomer had no stream" in (info.value.details() or "")
    finally:
        for channel, _ in hogs:
            channel.close()
        server.stop(grace=0)


def test_per_device_rate_caps_a_transfer_without_holding_up_other_calls(
    limited: str,
    pki: Pki,
    tokens: tuple[Path, dict[str, str]],
    big_payload: update_pb2.Payload,
    tmp_path: Path,
    request_inputs: dict[str, np.ndarray],
) -> None:
    connection = _connect(limited, pki, tokens[1]["downloader"])
    connection.predict(MODEL, request_inputs)  # the server has the model loaded before the stream starts
    done: list[tuple[Path, float]] = []
    started = time.monotonic()

    def download() -> None:
        finished = connection.download(MODEL, big_payload, tmp_path / "big.part")
        done.append((finished, time.monotonic() - started))

    worker = threading.Thread(target=download)
    worker.start()
    try:
        answered: list[float] = []  # when each Predict answered, from ``started``
        while worker.is_alive() and len(answered) < 5:  # the same device, while its stream is being paced
            connection.predict(MODEL, request_inputs)
            answered.append(time.monotonic() - started)
            time.sleep(0.1)
    finally:
        worker.join(timeout=120)
        connection.close()
    assert done, "the download did not finish"
    finished, elapsed = done[0]
    assert sha256_file(finished) == big_payload.sha256
    assert elapsed >= 1.5, f"{big_payload.size} bytes at {RATE} B/s took only {elapsed:.2f} s"
    assert big_payload.size / elapsed <= RATE * 1.2
    # Not held up: Predict answered while the paced stream was still running (an order, not a time).
    assert answered and answered[0] < elapsed, f"predict waited behind the paced stream: {answered}, {elapsed:.2f} s"


def test_global_rate_caps_all_devices_together(
    published_registry: Registry,
    pki: Pki,
    tokens: tuple[Path, dict[str, str]],
    big_payload: update_pb2.Payload,
    tmp_path: Path,
) -> None:
    global_rate = 2 * big_payload.size / 1.6  # two payloads in about 1.6 s
    server = _start(published_registry, pki, tokens[0], global_rate=global_rate)
    address = f"127.0.0.1:{server.port}"
    connections = [_connect(address, pki, tokens[1][device]) for device in ("a", "b")]
    try:
        started = time.monotonic()
        workers = [
            threading.Thread(target=c.download, args=(MODEL, big_payload, tmp_path / f"{i}.part"))
            for i, c in enumerate(connections)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        elapsed = time.monotonic() - started
    finally:
        for c in connections:
            c.close()
        server.stop(grace=0)
    assert all((tmp_path / f"{i}.payload").exists() for i in range(2))
    assert 2 * big_payload.size / elapsed <= global_rate * 1.25, f"two downloads took only {elapsed:.2f} s"


def test_stream_limiter_counts_per_device_and_in_total() -> None:
    limiter = StreamLimiter(StreamLimits(max_streams_per_device=2, max_streams=3))
    a1, a2 = limiter.open("a"), limiter.open("a")
    with pytest.raises(StreamLimitError, match="device a"):
        limiter.open("a")
    b1 = limiter.open("b")
    with pytest.raises(StreamLimitError, match="the server"):
        limiter.open("b")  # b holds a stream already, so it takes none of a's
    a1.close()
    a1.close()  # closing twice frees one place, not two
    assert limiter.open_streams("a") == 1 and limiter.open_streams() == 2
    c1 = limiter.open("c")
    with pytest.raises(StreamLimitError):
        limiter.open("a")
    a2.close()
    assert limiter.open_streams("a") == 0
    b1.close()
    c1.close()
    assert limiter.open_streams() == 0
    assert StreamLimits(per_device_rate=200_000).chunk_limit(1 << 20) == 200_000 // 8
    assert StreamLimits(global_rate=1000).chunk_limit(1 << 20) == 16 * 1024
    assert StreamLimits().chunk_limit(1 << 20) == ProgressRules().chunk_limit()  # one the progress rules can watch


def test_config_rejects_out_of_bounds_values(tmp_path: Path, pki: Pki) -> None:
    for bad in (
        {"tls_cert": pki.cert},
        {"max_streams_per_device": 0},
        {"workers": 16, "max_streams": 16},
        {"per_device_rate": 0.0},
        {"global_rate": -1.0},
        {"max_receive_bytes": 1024},
    ):
        with pytest.raises(ValueError):
            ServerConfig(registry=tmp_path, **bad)  # type: ignore[arg-type]


# --- the command line --------------------------------------------------------------------


def test_serve_command_takes_tls_tokens_and_limits(
    published_registry: Registry, pki: Pki, tokens: tuple[Path, dict[str, str]]
) -> None:
    args = [
        *("serve", "--registry", published_registry.root, "--listen", "127.0.0.1:0"),
        *("--tls-cert", pki.cert, "--tls-key", pki.key, "--tokens-file", tokens[0]),
        *(
            "--max-streams-per-device",
            "2",
            "--max-streams",
            "4",
            "--per-device-rate",
            "2mbit",
            "--global-rate",
            "1MB/s",
        ),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "edgerec", *map(str, args)], stderr=subprocess.PIPE, text=True, bufsize=1
    )
    watchdog = threading.Timer(60, process.kill)
    watchdog.start()
    try:
        assert process.stderr is not None
        port = None
        for line in process.stderr:
            match = re.search(r"serving .* on 127\.0\.0\.1:(\d+)", line)
            if match:
                port = int(match.group(1))
                break
        assert port, "edgerec serve did not report its port"
        connection = _connect(f"127.0.0.1:{port}", pki, tokens[1]["cli"])
        try:
            assert connection.check_update(_fresh_request()).update_available
        finally:
            connection.close()
        anonymous = _connect(f"127.0.0.1:{port}", pki, None)
        try:
            with pytest.raises(AuthenticationError):
                anonymous.check_update(_fresh_request())
        finally:
            anonymous.close()
    finally:
        watchdog.cancel()
        process.terminate()
        process.wait(timeout=10)
