from edgerec.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AccuracyGate(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCURACY_GATE_UNSPECIFIED: _ClassVar[AccuracyGate]
    ACCURACY_GATE_REFERENCE: _ClassVar[AccuracyGate]
    ACCURACY_GATE_PASSED: _ClassVar[AccuracyGate]
    ACCURACY_GATE_SKIPPED: _ClassVar[AccuracyGate]
ACCURACY_GATE_UNSPECIFIED: AccuracyGate
ACCURACY_GATE_REFERENCE: AccuracyGate
ACCURACY_GATE_PASSED: AccuracyGate
ACCURACY_GATE_SKIPPED: AccuracyGate

class ArtifactFile(_message.Message):
    __slots__ = ("path", "size", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("recipe", "runtime", "entrypoint", "files", "digest", "fixed_batches", "accuracy_gate")
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    FIXED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_GATE_FIELD_NUMBER: _ClassVar[int]
    recipe: str
    runtime: str
    entrypoint: str
    files: _containers.RepeatedCompositeFieldContainer[ArtifactFile]
    digest: str
    fixed_batches: _containers.RepeatedCompositeFieldContainer[FixedBatchFile]
    accuracy_gate: AccuracyGate
    def __init__(self, recipe: _Optional[str] = ..., runtime: _Optional[str] = ..., entrypoint: _Optional[str] = ..., files: _Optional[_Iterable[_Union[ArtifactFile, _Mapping]]] = ..., digest: _Optional[str] = ..., fixed_batches: _Optional[_Iterable[_Union[FixedBatchFile, _Mapping]]] = ..., accuracy_gate: _Optional[_Union[AccuracyGate, str]] = ...) -> None: ...

class FixedBatchFile(_message.Message):
    __slots__ = ("batch_size", "path")
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    batch_size: int
    path: str
    def __init__(self, batch_size: _Optional[int] = ..., path: _Optional[str] = ...) -> None: ...

class Manifest(_message.Message):
    __slots__ = ("format_version", "model", "version", "created_at", "inputs", "outputs", "artifacts", "expires_at", "annotations", "golden")
    class AnnotationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ANNOTATIONS_FIELD_NUMBER: _ClassVar[int]
    GOLDEN_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    model: str
    version: int
    created_at: str
    inputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.TensorSpec]
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    expires_at: str
    annotations: _containers.ScalarMap[str, str]
    golden: _containers.RepeatedCompositeFieldContainer[GoldenCase]
    def __init__(self, format_version: _Optional[int] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., created_at: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_tensor_pb2.TensorSpec, _Mapping]]] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., expires_at: _Optional[str] = ..., annotations: _Optional[_Mapping[str, str]] = ..., golden: _Optional[_Iterable[_Union[GoldenCase, _Mapping]]] = ...) -> None: ...

class GoldenCase(_message.Message):
    __slots__ = ("recipe", "inputs", "outputs", "tolerance")
    class InputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    class OutputsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    RECIPE_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    recipe: str
    inputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    outputs: _containers.MessageMap[str, _tensor_pb2.Tensor]
    tolerance: float
    def __init__(self, recipe: _Optional[str] = ..., inputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., outputs: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., tolerance: _Optional[float] = ...) -> None: ...

class Signature(_message.Message):
    __slots__ = ("key_id", "signature")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    signature: bytes
    def __init__(self, key_id: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class SignedManifest(_message.Message):
    __slots__ = ("manifest", "signatures")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    manifest: bytes
    signatures: _containers.RepeatedCompositeFieldContainer[Signature]
    def __init__(self, manifest: _Optional[bytes] = ..., signatures: _Optional[_Iterable[_Union[Signature, _Mapping]]] = ...) -> None: ...
