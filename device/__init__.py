"""The device SDK: sync model updates, predict locally, fall back to the server.

Imports without torch: only numpy, grpcio, protobuf, zstandard, bsdiff4 and onnxruntime.
"""

from edgerec.device.client import EdgeClient
from edgerec.device.local_model import Prediction
from edgerec.device.sync import SyncResult

__all__ = ["EdgeClient", "Prediction", "SyncResult"]
