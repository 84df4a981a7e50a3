"""``edgerec publish`` and the accuracy gate: no quantized artifact is published unchecked by accident.

Every recipe but fp32 is compared with fp32 on labelled validation data, or published without the
gate only when the publisher says so (``--no-gate``); the manifest records which. Run through the
real command (click's runner, in process) on a small hand-built ONNX model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from onnxtools import linear_model

from edgerec.cli.main import cli
from edgerec.manifest import AccuracyGate
from edgerec.registry import Registry

pytestmark = pytest.mark.torch  # publishing needs the server extra (onnx)

MODEL = "linear"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return linear_model(tmp_path / "model.onnx", [0.1, -0.2, 0.3, -0.4])


def _publish(registry: Path, *args: str | Path) -> Result:
    return CliRunner().invoke(cli, ["publish", *map(str, args), "--registry", str(registry)])


def _one_line_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_a_quantized_recipe_without_validation_data_is_refused_before_anything_is_published(
    source: Path, tmp_path: Path
) -> None:
    registry = tmp_path / "registry"
    for recipes in ("fp32,int8", "int4"):
        error = _one_line_error(_publish(registry, source, "--name", MODEL, "--recipe", recipes))
        assert "PublishError" in error and "accuracy gate" in error
        assert "--validation" in error and "--no-gate" in error
    assert Registry(registry).versions(MODEL) == []


def test_no_gate_publishes_unchecked_and_the_manifest_says_so(source: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    result = _publish(registry, source, "--name", MODEL, "--no-gate", "--json")
    assert result.exit_code == 0, result.output
    gates = {a["recipe"]: a["gate"] for a in json.loads(result.output)["artifacts"]}
    assert gates == {"fp32": "reference", "int8": "skipped"}
    _, manifest = Registry(registry).load_manifest(MODEL, 1)
    recorded = {a.recipe: a.accuracy_gate for a in manifest.artifacts}
    assert recorded == {"fp32": AccuracyGate.ACCURACY_GATE_REFERENCE, "int8": AccuracyGate.ACCURACY_GATE_SKIPPED}
    assert manifest.annotations["edgerec.gate.int8.status"].startswith("skipped")


def test_with_validation_data_the_gate_runs_and_the_manifest_records_its_metrics(source: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2_000, 4)).astype(np.float32)
    labels = (rng.random(2_000) < 1 / (1 + np.exp(-(np.abs(5 - x) @ [0.1, -0.2, 0.3, -0.4])))).astype(np.float32)
    validation = tmp_path / "validation.npz"
    np.savez(validation, x=x, labels=labels)
    registry = tmp_path / "registry"
    result = _publish(registry, source, "--name", MODEL, "--validation", validation, "--json")
    assert result.exit_code == 0, result.output
    artifacts = json.loads(result.output)["artifacts"]
    assert {a["recipe"]: a["gate"] for a in artifacts} == {"fp32": "reference", "int8": "passed"}
    drops = {a["recipe"]: a["auc_drop"] for a in artifacts}
    assert drops["fp32"] is None and isinstance(drops["int8"], float) and drops["int8"] <= 0.001
    _, manifest = Registry(registry).load_manifest(MODEL, 1)
    assert [a.accuracy_gate for a in manifest.artifacts if a.recipe == "int8"] == [AccuracyGate.ACCURACY_GATE_PASSED]
    assert manifest.annotations["edgerec.gate.int8.rows"] == "2000"
    assert float(manifest.annotations["edgerec.gate.int8.auc_drop"]) <= 0.001


def test_fp32_alone_needs_no_gate(source: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    result = _publish(registry, source, "--name", MODEL, "--recipe", "fp32", "--json")
    assert result.exit_code == 0, result.output
    assert [a["gate"] for a in json.loads(result.output)["artifacts"]] == ["reference"]


def test_a_name_ending_in_a_newline_is_refused(source: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    for name in ("cli\n", "cli\r\n", "\ncli", "c li", "x" * 129):
        error = _one_line_error(_publish(registry, source, "--name", name, "--no-gate"))
        assert "invalid model name" in error
    assert not (registry / "models").exists() or not any((registry / "models").iterdir())


# --- progress and summary ---------------------------------------------------------------


def test_publish_reports_each_step_to_its_observer_as_it_starts_and_ends(source: Path, tmp_path: Path) -> None:
    from edgerec.server.publish import PublishOptions, PublishStep, publish

    steps: list[PublishStep] = []
    manifest = publish(
        source, MODEL, Registry(tmp_path / "registry"), PublishOptions(no_gate=True), observer=steps.append
    )
    started = [s.label() for s in steps if not s.finished]
    ended = [s.label() for s in steps if s.finished]
    expected = ["export fp32", "quantize int8", "gate int8", "golden", "register", "payloads"]
    assert started == ended == expected, steps
    for label in expected:  # each step starts before it ends, and no step overlaps another
        assert (
            steps.index(next(s for s in steps if s.label() == label and s.finished))
            == steps.index(next(s for s in steps if s.label() == label)) + 1
        )
    done = {s.label(): s for s in steps if s.finished}
    assert all(s.seconds is not None and s.seconds >= 0 for s in done.values())
    assert done["gate int8"].detail.startswith("skipped")
    assert done["register"].detail == f"{MODEL} version {manifest.version}"


def test_the_command_shows_steps_on_stderr_and_a_summary_and_json_alone_with_json(source: Path, tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    shown = _publish(registry, source, "--name", MODEL, "--no-gate")
    assert shown.exit_code == 0, shown.output
    for step in ("export fp32", "quantize int8", "gate int8: skipped", "golden", "register", "payloads"):
        assert step in shown.stderr, shown.stderr
    assert f"{MODEL} version 1" in shown.stdout and "published in" in shown.stdout
    assert "int8" in shown.stdout and "skipped" in shown.stdout and "reference" in shown.stdout

    quiet = _publish(registry, source, "--name", MODEL, "--no-gate", "--json")
    assert quiet.exit_code == 0 and quiet.stderr == "", quiet.stderr
    out = json.loads(quiet.stdout)
    assert out["version"] == 2 and isinstance(out["seconds"], float)
    assert {a["recipe"]: a["auc_drop"] for a in out["artifacts"]} == {"fp32": None, "int8": None}
