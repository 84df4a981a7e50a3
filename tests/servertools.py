"""Helpers for tests that serve on loopback: the real server over a registry (``registry_server``), or a
hand-made, often misbehaving, ModelUpdate service (``update_server``). The fault runner uses the same."""

from edgerec.tools.faults.common import serving as registry_server
from edgerec.tools.faults.common import serving_update_service as update_server

__all__ = ["registry_server", "update_server"]
