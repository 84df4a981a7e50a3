from edgerec.v1 import manifest_pb2 as _manifest_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckUpdateRequest(_message.Message):
    __slots__ = ("model", "current_version", "current_sha256", "current_recipe", "runtimes", "codecs", "recipes", "target_version", "device_id", "max_payload_bytes", "nonce", "channel", "labels", "app_version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CURRENT_SHA256_FIELD_NUMBER: _ClassVar[int]
    CURRENT_RECIPE_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    RECIPES_FIELD_NUMBER: _ClassVar[int]
    TARGET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    current_version: int
    current_sha256: str
    current_recipe: str
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    codecs: _containers.RepeatedScalarFieldContainer[str]
    recipes: _containers.RepeatedScalarFieldContainer[str]
    target_version: int
    device_id: str
    max_payload_bytes: int
    nonce: bytes
    channel: str
    labels: _containers.ScalarMap[str, str]
    app_version: str
    def __init__(self, model: _Optional[str] = ..., current_version: _Optional[int] = ..., current_sha256: _Optional[str] = ..., current_recipe: _Optional[str] = ..., runtimes: _Optional[_Iterable[str]] = ..., codecs: _Optional[_Iterable[str]] = ..., recipes: _Optional[_Iterable[str]] = ..., target_version: _Optional[int] = ..., device_id: _Optional[str] = ..., max_payload_bytes: _Optional[int] = ..., nonce: _Optional[bytes] = ..., channel: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., app_version: _Optional[str] = ...) -> None: ...

class Payload(_message.Message):
    __slots__ = ("path", "codec", "payload_id", "size", "sha256", "base_path", "base_sha256", "target_sha256", "target_size", "urls")
    PATH_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BASE_PATH_FIELD_NUMBER: _ClassVar[int]
    BASE_SHA256_FIELD_NUMBER: _ClassVar[int]
    TARGET_SHA256_FIELD_NUMBER: _ClassVar[int]
    TARGET_SIZE_FIELD_NUMBER: _ClassVar[int]
    URLS_FIELD_NUMBER: _ClassVar[int]
    path: str
    codec: str
    payload_id: str
    size: int
    sha256: str
    base_path: str
    base_sha256: str
    target_sha256: str
    target_size: int
    urls: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, path: _Optional[str] = ..., codec: _Optional[str] = ..., payload_id: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., base_path: _Optional[str] = ..., base_sha256: _Optional[str] = ..., target_sha256: _Optional[str] = ..., target_size: _Optional[int] = ..., urls: _Optional[_Iterable[str]] = ...) -> None: ...

class CheckUpdateResponse(_message.Message):
    __slots__ = ("update_available", "manifest", "recipe", "payloads", "full_bytes", "payload_bytes", "freshness")
    UPDATE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PAYLOADS_FIELD_NUMBER: _ClassVar[int]
    FULL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    update_available: bool
    manifest: _manifest_pb2.SignedManifest
    recipe: str
    payloads: _containers.RepeatedCompositeFieldContainer[Payload]
    full_bytes: int
    payload_bytes: int
    freshness: SignedFreshness
    def __init__(self, update_available: _Optional[bool] = ..., manifest: _Optional[_Union[_manifest_pb2.SignedManifest, _Mapping]] = ..., recipe: _Optional[str] = ..., payloads: _Optional[_Iterable[_Union[Payload, _Mapping]]] = ..., full_bytes: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., freshness: _Optional[_Union[SignedFreshness, _Mapping]] = ...) -> None: ...

class Freshness(_message.Message):
    __slots__ = ("model", "latest_version", "target_version", "device_id", "nonce", "issued_at", "expires_at", "requested_version", "channel", "labels", "app_version")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_VERSION_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
    model: str
    latest_version: int
    target_version: int
    device_id: str
    nonce: bytes
    issued_at: str
    expires_at: str
    requested_version: int
    channel: str
    labels: _containers.ScalarMap[str, str]
    app_version: str
    def __init__(self, model: _Optional[str] = ..., latest_version: _Optional[int] = ..., target_version: _Optional[int] = ..., device_id: _Optional[str] = ..., nonce: _Optional[bytes] = ..., issued_at: _Optional[str] = ..., expires_at: _Optional[str] = ..., requested_version: _Optional[int] = ..., channel: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., app_version: _Optional[str] = ...) -> None: ...

class SignedFreshness(_message.Message):
    __slots__ = ("freshness", "signatures")
    FRESHNESS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    freshness: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[_manifest_pb2.Signature]
    def __init__(self, freshness: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[_manifest_pb2.Signature, _Mapping]]] = ...) -> None: ...

class FetchPayloadRequest(_message.Message):
    __slots__ = ("model", "payload_id", "offset", "max_chunk_bytes", "device_id", "max_bytes_per_second")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    model: str
    payload_id: str
    offset: int
    max_chunk_bytes: int
    device_id: str
    max_bytes_per_second: int
    def __init__(self, model: _Optional[str] = ..., payload_id: _Optional[str] = ..., offset: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., device_id: _Optional[str] = ..., max_bytes_per_second: _Optional[int] = ...) -> None: ...

class PayloadChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "crc32")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    crc32: int
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...
