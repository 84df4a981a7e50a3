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
    __slots__ = ("device_id", "model", "active_version", "recipe", "predictions_by_source", "fallbacks_by_reason", "errors", "server_failures", "latency", "sync", "rollbacks", "created_unix_s", "rejected_requests", "held_back_version", "outcomes", "install_failures", "channel", "labels", "runtimes", "app_version")
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
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
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
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    INSTALL_FAILURES_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RUNTIMES_FIELD_NUMBER: _ClassVar[int]
    APP_VERSION_FIELD_NUMBER: _ClassVar[int]
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
    outcomes: _containers.RepeatedCompositeFieldContainer[VersionOutcomes]
    install_failures: _containers.RepeatedCompositeFieldContainer[InstallFailure]
    channel: str
    labels: _containers.ScalarMap[str, str]
    runtimes: _containers.RepeatedScalarFieldContainer[str]
    app_version: str
    def __init__(self, device_id: _Optional[str] = ..., model: _Optional[str] = ..., active_version: _Optional[int] = ..., recipe: _Optional[str] = ..., predictions_by_source: _Optional[_Mapping[str, int]] = ..., fallbacks_by_reason: _Optional[_Mapping[str, int]] = ..., errors: _Optional[int] = ..., server_failures: _Optional[int] = ..., latency: _Optional[_Union[LatencyPercentiles, _Mapping]] = ..., sync: _Optional[_Union[SyncOutcomes, _Mapping]] = ..., rollbacks: _Optional[_Iterable[_Union[Rollback, _Mapping]]] = ..., created_unix_s: _Optional[float] = ..., rejected_requests: _Optional[int] = ..., held_back_version: _Optional[int] = ..., outcomes: _Optional[_Iterable[_Union[VersionOutcomes, _Mapping]]] = ..., install_failures: _Optional[_Iterable[_Union[InstallFailure, _Mapping]]] = ..., channel: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., runtimes: _Optional[_Iterable[str]] = ..., app_version: _Optional[str] = ...) -> None: ...

class VersionOutcomes(_message.Message):
    __slots__ = ("version", "predictions", "local_errors", "fallbacks", "latency", "impressions", "clicks", "score_sum", "active_since_unix_s")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ERRORS_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    IMPRESSIONS_FIELD_NUMBER: _ClassVar[int]
    CLICKS_FIELD_NUMBER: _ClassVar[int]
    SCORE_SUM_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_SINCE_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    version: int
    predictions: int
    local_errors: int
    fallbacks: int
    latency: LatencyPercentiles
    impressions: int
    clicks: int
    score_sum: float
    active_since_unix_s: float
    def __init__(self, version: _Optional[int] = ..., predictions: _Optional[int] = ..., local_errors: _Optional[int] = ..., fallbacks: _Optional[int] = ..., latency: _Optional[_Union[LatencyPercentiles, _Mapping]] = ..., impressions: _Optional[int] = ..., clicks: _Optional[int] = ..., score_sum: _Optional[float] = ..., active_since_unix_s: _Optional[float] = ...) -> None: ...

class InstallFailure(_message.Message):
    __slots__ = ("version", "error", "unix_s")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    UNIX_S_FIELD_NUMBER: _ClassVar[int]
    version: int
    error: str
    unix_s: float
    def __init__(self, version: _Optional[int] = ..., error: _Optional[str] = ..., unix_s: _Optional[float] = ...) -> None: ...

class StatusAck(_message.Message):
    __slots__ = ("received_unix_s",)
    RECEIVED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    received_unix_s: float
    def __init__(self, received_unix_s: _Optional[float] = ...) -> None: ...
