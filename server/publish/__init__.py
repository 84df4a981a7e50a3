"""Publishing: export, quantize, describe and register a model version (imports torch lazily)."""

from edgerec.server.publish.pipeline import PublishOptions, publish
from edgerec.server.publish.steps import PublishObserver, PublishStep

__all__ = ["PublishObserver", "PublishOptions", "PublishStep", "publish"]
