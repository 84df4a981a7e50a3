from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LatencyPercentiles(_message.Message):
    __slots__ = ("p50_s", "p90_s", "p99_s", "count")
    P50_S_FIELD_NUMBER: _ClassVar[int]
    P90_S_FIELD_NUMBER: _ClassVar[int]
    P99_S_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    p50_s: float
    p90_s: float
    p99_s: float
    count: int
    def __init__(self, p50_s: _Optional[float] = ..., p90_s: _Optional[float] = ..., p99_s: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class SyncOutcomes(_message.Message):
    __slots__ = ("updated", "up_to_date", "failed", "last_error", "last_attempt_unix_s", "held_back")
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    UP_TO_DATE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ATTEMPT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    HELD_BACK_FIELD_NUMBER: _ClassVar[int]
    updated: int
    up_to_date: int
    failed: int
    last_error: str
    last_attempt_unix_s: float
    held_back: int
    def __init__(self, updated: _Optional[int] = ..., up_to_date: _Optional[int] = ..., failed: _Optional[int] = ..., last_error: _Optional[str] = ..., last_attempt_unix_s: _Optional[float] = ..., held_back: _Optional[int] = ...) -> None: ...

class Rollback(_message.Message):
    __slots__ = ("from_version", "to_version")
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    from_version: int
    to_version: int
    def __init__(self, from_version: _Optional[int] = ..., to_version: _Optional[int] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("device_id", "model", "active_version", "recipe", "predictions_by_source", "fallbacks_by_reason", "errors", "server_failures", "latency", "sync", "rollbacks", "created_unix_s", "rejected_requests", "held_back_version")
    class PredictionsBySourceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class FallbacksByReasonEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_BY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_BY_REASON_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    SERVER_FAILURES_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    SYNC_FIELD_NUMBER: _ClassVar[int]
    ROLLBACKS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    REJECTED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    HELD_BACK_VERSION_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    model: str
    active_version: int
    recipe: str
    predictions_by_source: _containers.ScalarMap[str, int]
    fallbacks_by_reason: _containers.ScalarMap[str, int]
    errors: int
    server_failures: int
    latency: LatencyPercentiles
    sync: SyncOutcomes
    rollbacks: _containers.RepeatedCompositeFieldContainer[Rollback]
    created_unix_s: float
    rejected_requests: int
    held_back_version: int
    def __init__(self, device_id: _Optional[str] = ..., model: _Optional[str] = ..., active_version: _Optional[int] = ..., recipe: _Optional[str] = ..., predictions_by_source: _Optional[_Mapping[str, int]] = ..., fallbacks_by_reason: _Optional[_Mapping[str, int]] = ..., errors: _Optional[int] = ..., server_failures: _Optional[int] = ..., latency: _Optional[_Union[LatencyPercentiles, _Mapping]] = ..., sync: _Optional[_Union[SyncOutcomes, _Mapping]] = ..., rollbacks: _Optional[_Iterable[_Union[Rollback, _Mapping]]] = ..., created_unix_s: _Optional[float] = ..., rejected_requests: _Optional[int] = ..., held_back_version: _Optional[int] = ...) -> None: ...

class StatusAck(_message.Message):
    __slots__ = ("received_unix_s",)
    RECEIVED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    received_unix_s: float
    def __init__(self, received_unix_s: _Optional[float] = ...) -> None: ...
