"""Publishing: export, quantize, describe and register a model version (imports torch lazily)."""

from edgerec.server.publish.pipeline import PublishOptions, publish

__all__ = ["PublishOptions", "publish"]
