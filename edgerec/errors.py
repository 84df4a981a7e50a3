"""Every error edgerec raises on purpose, in one hierarchy.

Catch :class:`EdgerecError` for "edgerec refused or failed", or a precise subclass
to act on one cause. Each error maps to one gRPC status code (see ``edgerec.grpc_status``).
"""

from __future__ import annotations


class EdgerecError(Exception):
    """Base class of every error edgerec raises on purpose."""


# --- what was asked for does not exist ---------------------------------------------


class NotFoundError(EdgerecError):
    """A model, version, artifact or payload that is not there."""


class ModelNotFoundError(NotFoundError):
    """No model of that name is published."""


class VersionNotFoundError(NotFoundError):
    """The model exists but not that version (or not that recipe of it)."""


class NoArtifactError(VersionNotFoundError):
    """The version offers no artifact of an accepted recipe on an available runtime (``edgerec.artifacts``)."""


class PayloadNotFoundError(NotFoundError):
    """No payload with that id."""


class UnknownBaseVersionError(EdgerecError):
    """The device's current version or digest is not one the server can diff from."""


# --- bytes that are not what they claim to be ----------------------------------------


class IntegrityError(EdgerecError):
    """Bytes whose size or sha256 differs from what a manifest or header promised."""


class PatchError(EdgerecError):
    """A patch that cannot be read or applied: corrupt, truncated or of an unknown format."""


class WrongBaseError(PatchError):
    """A patch applied to a different file than the one it was made from."""


class ManifestError(EdgerecError):
    """A manifest that cannot be parsed or breaks the format's rules."""


# --- requests ------------------------------------------------------------------------


class InvalidInputError(EdgerecError):
    """Tensors that do not match the model's signature (names, dtypes, ranks, sizes)."""


class ResourceLimitError(EdgerecError):
    """A request over one of the server's limits (rows per request, work in flight): smaller or later may pass."""


class StreamLimitError(ResourceLimitError):
    """Opening one more payload stream would break a per-device or server-wide limit (``edgerec.server.limits``)."""


class PublishError(EdgerecError):
    """Publishing refused a model (unreadable source, unsupported graph, failed gate)."""


# --- settings ------------------------------------------------------------------------


class ConfigError(EdgerecError, ValueError):
    """A setting out of its bounds, refused when the configuration is built (before anything starts)."""


# --- the device ----------------------------------------------------------------------


class TransportError(EdgerecError):
    """The server could not be reached or the transfer failed after retries."""


class ModelRuntimeError(EdgerecError):
    """A local model that cannot be loaded or run (missing, damaged, runtime failure)."""


class NonFiniteScoresError(ModelRuntimeError):
    """A model returned NaN or inf scores."""


class DiskFullError(EdgerecError):
    """The device ran out of disk space while staging an update; the active model is untouched."""


class DataDirError(EdgerecError):
    """A device data dir the SDK will not manage: one of its folders is a symbolic link or not a folder."""


class SyncBusyError(EdgerecError):
    """Another sync (thread or process) holds the data dir's sync lock; try again once it is done."""


class HealthCheckError(EdgerecError):
    """A staged model that loads but does not reproduce its manifest's golden outputs."""


class PayloadBudgetError(EdgerecError):
    """The cheapest update the server offers costs more than the device's payload budget."""


class NoModelAvailableError(EdgerecError):
    """Neither a local model nor the server could answer a prediction."""


# --- updates that fail verification (edgerec.trust) and signing keys (edgerec.signing) ---


class TrustError(EdgerecError):
    """The update failed verification: it must not be installed."""


class SignatureError(TrustError):
    """Missing or invalid signatures by trusted keys, or fewer valid ones than the threshold."""


class UnknownKeyError(TrustError):
    """The manifest is signed, but by none of the keys the device trusts."""


class WrongModelError(TrustError):
    """A correctly signed manifest of another model than the one asked for."""


class RollbackError(TrustError):
    """A manifest whose version is not newer than the activated one: a replay or a rollback."""


class ExpiredError(TrustError):
    """A manifest past its expires_at."""


class NoTrustedKeysError(TrustError):
    """A sync asked of a device that trusts no key and did not opt out of verification explicitly."""


class RecipeNotAllowedError(TrustError):
    """An answer offering an artifact of a recipe (or runtime) the device did not ask for."""


class FreshnessError(TrustError):
    """A missing, malformed, expired or mismatched (other model, device or nonce) freshness statement."""


class StaleAnswerError(FreshnessError):
    """An answer that disagrees with its signed freshness statement: a version is being withheld or swapped."""


class SigningKeyError(EdgerecError):
    """A key file that cannot be read, holds no Ed25519 key, or would be overwritten."""


# --- who may talk to the server (edgerec.server.security) ------------------------------


class AuthenticationError(EdgerecError):
    """The server refused the call's credentials: no bearer token, or an unknown or revoked one."""


class PermissionDeniedError(AuthenticationError):
    """Valid credentials that do not cover the call: a request naming another device than its token's."""


# --- publishing's accuracy gate (edgerec.server.publish.gate) ----------------------------


class AccuracyGateError(PublishError):
    """A quantized artifact scored too far below the fp32 model on the publisher's validation data."""


# --- the registry's store (edgerec.registry) ---------------------------------------------


class RegistryConflictError(EdgerecError):
    """A conditional write lost: the document changed since it was read, or a version number stayed taken."""


class VersionConflictError(RegistryConflictError):
    """A publish named a version number that is not the next free one (another publisher took it first)."""


class ReleasePolicyError(EdgerecError):
    """A release policy document that cannot be read (garbled, hostile, another model's) or a change it refuses."""


class TargetingError(InvalidInputError):
    """A ``--where`` expression that does not parse or breaks its bounds (``edgerec.server.release.targeting``)."""


class RegistryUnavailableError(EdgerecError):
    """The registry's store could not be reached or refused the request (network, credentials, bucket)."""
