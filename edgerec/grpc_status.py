"""One mapping between edgerec's typed errors and gRPC status codes, used by both ends."""

from __future__ import annotations

import grpc

from edgerec import errors

_CODE_BY_ERROR: list[tuple[type[errors.EdgerecError], grpc.StatusCode]] = [
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.UnknownBaseVersionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ManifestError, grpc.StatusCode.INTERNAL),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.PatchError, grpc.StatusCode.DATA_LOSS),
]

_ERROR_BY_CODE: dict[grpc.StatusCode, type[errors.EdgerecError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.UnknownBaseVersionError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInputError,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidInputError,
    grpc.StatusCode.DATA_LOSS: errors.IntegrityError,
}


def status_for(error: errors.EdgerecError) -> grpc.StatusCode:
    """The status code a server answers with for ``error``."""
    for error_type, code in _CODE_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def error_from_rpc(exc: grpc.RpcError, what: str) -> errors.EdgerecError:
    """The typed error a client raises for a failed call (``what`` names the call)."""
    code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
    error_type = _ERROR_BY_CODE.get(code, errors.TransportError)
    return error_type(f"{what}: {code.name}: {details}")
