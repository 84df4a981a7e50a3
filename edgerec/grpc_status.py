"""One mapping between edgerec's typed errors and gRPC status codes, used by both ends.

The server also names the precise error class in the trailing metadata key
``edgerec-error``, so a client can raise ModelNotFoundError rather than a bare
NotFoundError; clients that do not know the key still get a meaningful status code.
Status details echo what callers sent (a model name, a device id), so :func:`abort` bounds
them (:func:`bounded_details`): gRPC carries them in a header, and a client refuses headers
above its metadata limit (8 KiB by default) before it reads the status.
"""

from __future__ import annotations

from typing import NoReturn

import grpc

from edgerec import errors

ERROR_METADATA_KEY = "edgerec-error"
# Longest status details, in UTF-8 bytes: gRPC percent-encodes bytes outside printable ASCII, so
# the header is at most three times this, well inside a client's 8 KiB metadata limit.
MAX_DETAILS_BYTES = 1024

RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    }
)
"""Status codes after which a device tries a call again (a download from where it stopped)."""

_CODE_BY_ERROR: list[tuple[type[errors.EdgerecError], grpc.StatusCode]] = [
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.UnknownBaseVersionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.InvalidInputError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ResourceLimitError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ManifestError, grpc.StatusCode.INTERNAL),
    (errors.IntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.PatchError, grpc.StatusCode.DATA_LOSS),
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.AuthenticationError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.RegistryConflictError, grpc.StatusCode.ABORTED),
    (errors.RegistryUnavailableError, grpc.StatusCode.UNAVAILABLE),
    # The server cannot read its release policy: the device keeps what it runs and asks again later.
    (errors.ReleasePolicyError, grpc.StatusCode.UNAVAILABLE),
]

_ERROR_BY_CODE: dict[grpc.StatusCode, type[errors.EdgerecError]] = {
    grpc.StatusCode.NOT_FOUND: errors.NotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.UnknownBaseVersionError,
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidInputError,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidInputError,
    grpc.StatusCode.DATA_LOSS: errors.IntegrityError,
    grpc.StatusCode.UNAUTHENTICATED: errors.AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDeniedError,
}


def status_for(error: errors.EdgerecError) -> grpc.StatusCode:
    """The status code a server answers with for ``error``."""
    for error_type, code in _CODE_BY_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def abort(context: grpc.ServicerContext, error: errors.EdgerecError) -> NoReturn:
    """End the call with the status for ``error``, naming its class in the trailing metadata (raises, as
    ``context.abort`` does)."""
    context.set_trailing_metadata(((ERROR_METADATA_KEY, type(error).__name__),))
    context.abort(status_for(error), bounded_details(str(error)))


def bounded_details(text: str, max_bytes: int = MAX_DETAILS_BYTES) -> str:
    """``text`` cut to ``max_bytes`` UTF-8 bytes, its end replaced by "…" and the original length when cut."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= max_bytes:
        return text
    suffix = f"… ({len(text)} characters in all)"
    head = encoded[: max(0, max_bytes - len(suffix.encode()))].decode("utf-8", "ignore")
    return head + suffix


def error_from_rpc(exc: grpc.RpcError, what: str) -> errors.EdgerecError:
    """The typed error a client raises for a failed call (``what`` names the call)."""
    if not isinstance(exc, grpc.Call):
        return errors.TransportError(f"{what}: {exc}")
    code = exc.code()
    error_type = _ERROR_BY_CODE.get(code, errors.TransportError)
    named = dict(exc.trailing_metadata() or ()).get(ERROR_METADATA_KEY)
    precise = getattr(errors, str(named), None) if named else None
    if isinstance(precise, type) and issubclass(precise, error_type):
        error_type = precise
    return error_type(f"{what}: {code.name}: {exc.details()}")
