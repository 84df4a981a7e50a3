"""The device SDK installs, imports and predicts in an environment with only the `device` extra."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgerec.registry import Registry

pytestmark = pytest.mark.torch  # the server side of the test publishes with torch

DEVICE_SCRIPT = """
import importlib.util, json, sys
import numpy as np
from edgerec.device import EdgeClient

server, data_dir, request = sys.argv[1:4]
with EdgeClient(server=server, model="ctr", data_dir=data_dir, insecure=True) as client:
    synced = client.sync()
    with np.load(request) as npz:
        prediction = client.predict({name: npz[name] for name in npz.files})
print(json.dumps({
    "version": synced.version,
    "source": prediction.source,
    "scores": prediction.scores.tolist(),
    "torch_imported": "torch" in sys.modules,
    "onnx_imported": "onnx" in sys.modules,
    "torch_installed": importlib.util.find_spec("torch") is not None,
}))
"""


def test_device_sdk_runs_without_torch(
    served: tuple[Registry, str], tmp_path: Path, request_inputs: dict[str, np.ndarray]
) -> None:
    python = os.environ.get("EDGEREC_DEVICE_PYTHON", "")
    if not python or not Path(python).exists():
        pytest.skip("set EDGEREC_DEVICE_PYTHON to a venv with only edgerec[device] (`make test` does)")
    _, address = served
    request = tmp_path / "request.npz"
    np.savez(request, **request_inputs)  # type: ignore[arg-type]  # numpy stubs reject **arrays
    run = subprocess.run(
        [python, "-c", DEVICE_SCRIPT, address, str(tmp_path / "device"), str(request)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["torch_installed"] is False, "the device environment must not have torch"
    assert result["torch_imported"] is False and result["onnx_imported"] is False
    assert result["version"] == 2 and result["source"] == "local"
    assert len(result["scores"]) == len(request_inputs["sparse_ids"])
