"""The predict benchmark's --quick path: every scenario measured, targets listed, CSV and markdown agree.

No timing thresholds here: the targets are the benchmark's to judge (``make bench-predict``).
"""

from __future__ import annotations

import csv

import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edgerec.tools.bench.predict import COLUMNS, CONCURRENCY, FAILING_CONCURRENCY, FLOOR_SCENARIO, main  # noqa: E402


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, str]], str]:
    out = tmp_path_factory.mktemp("bench-predict")
    assert main(["--quick", "--iters", "60", "--seconds", "0.1", "--out", str(out)]) == 0
    with open(out / "predict.csv", newline="") as f:
        return list(csv.DictReader(f)), (out / "predict.md").read_text()


def test_every_scenario_is_measured(quick: tuple[list[dict[str, str]], str]) -> None:
    rows, _ = quick
    assert rows and list(rows[0]) == COLUMNS
    scenarios = {(r["scenario"], int(r["clients"]), r["batching"]) for r in rows}
    single = {
        "bare onnxruntime run",
        "EdgeClient.predict, local (cache off)",
        "EdgeClient.predict, cache hit",
        "EdgeClient.predict, no local model: server fallback",
        "server round trip (Inference.Predict)",
    }
    expected = {(name, 1, "") for name in single}
    expected |= {("server Predict", n, batching) for n in CONCURRENCY for batching in ("on", "off")}
    for label in ("", ", server down (refusing connections)", ", server down (accepting, never answering)"):
        name = "failing local model -> server" if not label else f"failing local model{label}"
        expected |= {(name, n, "") for n in FAILING_CONCURRENCY}
    expected |= {("floor: a call that only raises", n, "") for n in FAILING_CONCURRENCY}
    expected |= {(FLOOR_SCENARIO, n, "-") for n in CONCURRENCY}
    assert scenarios == expected
    for r in rows:
        assert int(r["calls"]) > 0, r
        assert 0 < float(r["p50"]) <= float(r["p99"]) <= float(r["max"]), r
    by_name = {r["scenario"]: r for r in rows if r["clients"] == "1"}
    assert by_name["EdgeClient.predict, cache hit"]["sources"].startswith("cache=")
    assert "server=" in by_name["EdgeClient.predict, no local model: server fallback"]["sources"]
    assert "load_failed=" in by_name["failing local model -> server"]["note"]
    down = by_name["failing local model, server down (refusing connections)"]
    assert down["errors"] == down["calls"], "a failing model with the server down is a typed error every time"
    for r in rows:
        if r["scenario"] in ("server Predict", FLOOR_SCENARIO):
            assert float(r["throughput_per_s"]) > 0 and r["errors"] == "0", r


def test_report_lists_every_target(quick: tuple[list[dict[str, str]], str]) -> None:
    _, report = quick
    targets = report.split("## Targets")[1].split("## Measurements")[0]
    names = ["cache hit p50", "policy layer overhead", "server fallback p99", "micro-batching"]
    names += [f"server down, {n} caller(s)" for n in FAILING_CONCURRENCY]
    for name in names:
        line = next((line for line in targets.splitlines() if name in line), None)
        assert line is not None, name
        assert line.rstrip().endswith(("| met |", "| NOT met |")), line
    assert report.count("| server Predict |") == 2 * len(CONCURRENCY)
