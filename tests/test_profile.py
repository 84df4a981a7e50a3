"""``edgerec profile update``: shaped links, one device process per codec and link, reports.

A small hand-made model pair (an embedding table, 5% of its rows changed) is published
into a temporary registry; links are chosen so the full int8 payload takes about 1.3 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgerec.registry import Registry
from edgerec.tools.links.emulation import (
    NETNS_PREFIX,
    ShapedLink,
    cleanup_leftovers,
    list_namespaces,
    netns_unavailable_reason,
)
from edgerec.tools.links.profiles import PRESETS, LinkProfile, load_links_file, parse_duration, parse_link
from edgerec.tools.profile.runner import Profiler, ProfileReport, ProfileSettings

pytestmark = pytest.mark.torch  # publishing needs the server extra (onnx)

MODEL = "emb"
ROWS, DIM = 5000, 16
# ~85 kB of int8 payload: ~1.3 s at 512 kbit/s
LINK = parse_link("rate=512kbit,rtt=40ms,name=test")
REQUIRED = ("codec", "link", "method", "payload_bytes", "prep_s", "transfer_s", "apply_s", "cpu_s", "peak_rss_bytes")


def embedding_model(path: Path, table: np.ndarray) -> Path:
    """score = sigmoid((table[ids] + x) @ w): one Gather over a table, which publishing quantizes per row."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.linspace(-1, 1, DIM, dtype=np.float32).reshape(DIM, 1)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Add", ["emb", "x"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["m"]),
        helper.make_node("Constant", [], ["flat"], value=helper.make_tensor("flat_v", TensorProto.INT64, [1], [-1])),
        helper.make_node("Reshape", ["m", "flat"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "emb",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", DIM]),
        ],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(weight, "w")],
    )
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("profile-models")
    rng = np.random.default_rng(0)
    v1 = rng.normal(size=(ROWS, DIM)).astype(np.float32)
    v2 = v1.copy()
    touched = rng.choice(ROWS, ROWS // 20, replace=False)
    v2[touched] += rng.normal(scale=0.1, size=(len(touched), DIM)).astype(np.float32)
    return embedding_model(folder / "v1.onnx", v1), embedding_model(folder / "v2.onnx", v2)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, model_files: tuple[Path, Path]) -> Registry:
    from edgerec.server.publish import PublishOptions, publish

    registry = Registry(tmp_path_factory.mktemp("profile-registry"))
    for source in model_files:
        publish(source, MODEL, registry, PublishOptions(no_gate=True))
    return registry


def _settings(registry: Registry, *links: LinkProfile, method: str, **overrides: object) -> ProfileSettings:
    options: dict[str, object] = {"codecs": ("full", "tensor"), "chunk_bytes": 16 * 1024} | overrides
    return ProfileSettings(
        registry=registry.root,
        model=MODEL,
        from_version=1,
        to_version=2,
        links=links,
        method=method,
        **options,  # type: ignore[arg-type]
    )


def _check_agreement(report: ProfileReport) -> None:
    """Shaped transfers of at least half a second agree with payload / rate + RTTs within 10%."""
    checked = 0
    for row in report.rows:
        if row.measured and not row.drop_every_bytes and (row.expected_transfer_s or 0) >= 0.5:
            assert row.transfer_ratio is not None
            assert abs(row.transfer_ratio - 1) <= 0.10, (row.link, row.codec, row.transfer_s, row.expected_transfer_s)
            checked += 1
    assert checked, "no transfer long enough to check"


def _own_namespaces() -> list[str]:
    return [name for name in list_namespaces() if name.startswith(f"{NETNS_PREFIX}{os.getpid()}-")]


# --- link profiles ------------------------------------------------------------------


def test_link_presets_specs_and_files(tmp_path: Path) -> None:
    assert PRESETS["3g"].rate_bytes_per_s == 250_000 and PRESETS["3g"].rtt_s == pytest.approx(0.1)
    assert PRESETS["2g"].rate_bytes_per_s == 8_000 and PRESETS["satellite"].rtt_s == pytest.approx(0.6)
    custom = parse_link("rate=512kbit,rtt=200ms,loss=1%,drop_every=1MB")
    assert (custom.rate_bytes_per_s, custom.rtt_s, custom.loss, custom.drop_every_bytes) == (64_000, 0.2, 0.01, 10**6)
    lossy = parse_link("3g,loss=2%")
    assert (lossy.rate_bytes_per_s, lossy.loss) == (250_000, 0.02) and lossy.rtt_s == pytest.approx(0.1)
    assert lossy.effective_rate_bytes_per_s < 0.6 * lossy.rate_bytes_per_s  # loss caps one TCP flow (Mathis)
    assert parse_duration("60s") == 60 and parse_duration("1.5m") == 90 and parse_duration("300ms") == 0.3
    links_file = tmp_path / "links.toml"
    links_file.write_text('[rural]\nrate = "512kbit"\nrtt = "200ms"\nloss = "1%"\ndrop_every = "1MB"\n')
    known = load_links_file(links_file)
    assert parse_link("rural", known) == LinkProfile("rural", 64_000, 0.2, 0.01, 10**6)
    with pytest.raises(ValueError, match="unknown link"):
        parse_link("5g")
    with pytest.raises(ValueError, match="needs rate and rtt"):
        parse_link("rate=1mbit")


# --- the token-bucket path (any machine) -----------------------------------------------


def test_token_bucket_profile_measures_every_codec_and_link(registry: Registry, tmp_path: Path) -> None:
    from edgerec.tools.profile import report as out

    drops = parse_link("rate=512kbit,rtt=40ms,drop_every=48KB,name=drops")
    slow = parse_link("rate=64kbit,rtt=100ms,name=slow")  # full would take ~10 s: estimated
    settings = _settings(registry, LINK, drops, slow, method="tokenbucket", max_transfer_s=5.0, window_s=1.0)
    report = Profiler(settings).run()

    assert report.method == "tokenbucket"
    assert [(r.link, r.codec) for r in report.rows] == [
        (link, codec) for link in ("test", "drops", "slow") for codec in ("full", "tensor")
    ]
    rows = {(r.link, r.codec): r for r in report.rows}
    assert all(r.measured for r in report.rows if r != rows["slow", "full"]), [r.note for r in report.rows]
    full, tensor = rows["test", "full"], rows["test", "tensor"]
    assert full.codec_used == "full" and tensor.codec_used == "tensor"
    assert tensor.payload_bytes < full.payload_bytes / 5
    assert full.prep_s > 0 and tensor.prep_s > 0
    _check_agreement(report)

    # Cuts cost bytes (the partial chunk in flight) and time; the device still finishes.
    cut = rows["drops", "full"]
    assert cut.cuts and cut.cuts >= 1 and cut.extra_bytes and cut.extra_bytes > 1000
    assert cut.transfer_s and full.transfer_s and cut.transfer_s > full.transfer_s
    assert cut.extra_s is not None and cut.extra_s > 0

    # A transfer beyond --max-transfer is estimated with the device numbers of a measured run.
    estimated = rows["slow", "full"]
    assert not estimated.measured and estimated.transfer_s == estimated.expected_transfer_s
    assert estimated.apply_s == full.apply_s and estimated.time_to_update_s and estimated.time_to_update_s > 5

    # One recommendation per link; on the slow link nothing fits 1 s: a budget, or why not.
    assert [rec.link for rec in report.recommendations] == ["test", "drops", "slow"]
    assert sum(r.recommended for r in report.rows) == 3
    slow_rec = report.recommendations[2]
    assert slow_rec.codec == "tensor" and not slow_rec.fits_window
    assert ("--budget" in slow_rec.advice) if slow_rec.budget_bytes else ("no update fits" in slow_rec.advice)

    out.write_json(report.rows, tmp_path / "rows.json")
    out.write_csv(report.rows, tmp_path / "rows.csv")
    loaded = json.loads((tmp_path / "rows.json").read_text())
    assert isinstance(loaded, list) and len(loaded) == 6
    for row in loaded:
        assert set(REQUIRED) <= set(row)
    measured = [row for row in loaded if row["measured"]]
    assert all(row["cpu_s"] > 0 and row["peak_rss_bytes"] > 10 * 2**20 for row in measured)
    assert (tmp_path / "rows.csv").read_text().splitlines()[0].startswith("link,codec,")
    plots = out.write_plots(report, tmp_path / "plots")
    assert [p.name for p in plots] == ["time_to_update.png", "payload_bytes.png", "time_breakdown.png"]
    assert all(p.stat().st_size > 10_000 for p in plots)


def test_cli_publishes_old_and_new_and_writes_json(model_files: tuple[Path, Path], tmp_path: Path) -> None:
    from edgerec.cli.profile import profile

    old, new = model_files
    out = tmp_path / "rows.json"
    args = ["--old", str(old), "--new", str(new), "--link", "wifi", "--codec", "tensor", "--method", "tokenbucket"]
    result = CliRunner().invoke(profile, ["update", *args, "--json", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "recommendation per link" in result.output
    rows = json.loads(out.read_text())
    assert [(r["link"], r["codec"], r["method"], r["measured"]) for r in rows] == [
        ("wifi", "tensor", "tokenbucket", True)
    ]


# --- the namespace + tbf path (root, ip and tc) ------------------------------------------


@pytest.fixture
def netns() -> None:
    """Skip unless this machine can build a shaped namespace (root, ip, tc, tbf)."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(f"namespace shaping unavailable: {reason}")


@pytest.mark.usefixtures("netns")
def test_netns_profile_agrees_with_the_link_model(registry: Registry) -> None:
    report = Profiler(_settings(registry, LINK, method="netns")).run()
    assert report.method == "netns" and all(r.method == "netns" and r.measured for r in report.rows)
    _check_agreement(report)
    assert _own_namespaces() == []


@pytest.mark.usefixtures("netns")
def test_namespaces_are_removed_on_error_and_leftovers_cleaned() -> None:
    with pytest.raises(RuntimeError), ShapedLink(LINK, 9, "netns") as link:
        assert link.namespace in list_namespaces()
        raise RuntimeError("boom")
    assert _own_namespaces() == []

    # A namespace left by a profile process that died is removed by the next run.
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = f"{NETNS_PREFIX}{int(child.stdout)}-0"
    subprocess.run(["ip", "netns", "add", dead], check=True)
    try:
        assert dead in cleanup_leftovers()
    finally:
        subprocess.run(["ip", "netns", "delete", dead], capture_output=True)
    assert dead not in list_namespaces()
