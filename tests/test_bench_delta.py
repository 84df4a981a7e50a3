"""The delta benchmark's --quick path: every codec and peer measured, verified and reported."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.torch
pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from edgerec.codecs import CODEC_NAMES  # noqa: E402
from edgerec.tools.bench.delta import (  # noqa: E402
    EDGEREC_PREFIX,
    PAIRS,
    SPARSE_IDEAL,
    discover_methods,
    main,
    parse_args,
    run_measured,
    zipf_rows,
)


@pytest.fixture(scope="module")
def quick_rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str]]:
    out = tmp_path_factory.mktemp("bench-delta")
    assert main(["--quick", "--out", str(out)]) == 0
    report = out / "delta.md"
    assert "## Targets" in report.read_text()
    measured_table = report.read_text().split("## All measurements")[1]
    report.unlink()
    assert main(["--quick", "--out", str(out), "--report-only"]) == 0  # re-rendered from delta.csv alone
    assert report.read_text().split("## All measurements")[1] == measured_table
    with open(out / "delta.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_every_codec_round_trips_on_every_pair(quick_rows: list[dict[str, str]]) -> None:
    for codec in CODEC_NAMES:
        for pair in PAIRS:
            [row] = [r for r in quick_rows if r["method"] == EDGEREC_PREFIX + codec and r["pair"] == pair]
            assert row["status"] == "ok", row
            assert row["verified"] == "yes", row
            assert int(row["payload_bytes"]) > 0
            assert int(row["apply_rss_bytes"]) > 0
            assert float(row["diff_s"]) >= 0 and float(row["apply_s"]) >= 0


def test_every_peer_has_a_row_and_nothing_failed(quick_rows: list[dict[str, str]]) -> None:
    names = {m.name: m for m in discover_methods()}
    for pair in PAIRS:
        by_method = {r["method"]: r for r in quick_rows if r["pair"] == pair}
        assert set(by_method) == {*names, SPARSE_IDEAL}
        for name, row in by_method.items():
            if name == SPARSE_IDEAL:
                assert int(row["payload_bytes"]) > 0
            elif names[name].available:  # a 1 MB model is under every size limit
                assert (row["status"], row["verified"]) == ("ok", "yes"), row
                assert int(row["payload_bytes"]) > 0
            else:
                assert row["status"] == "not installed"


def test_apply_rss_is_the_child_s_own() -> None:
    """The benchmark process holds torch (hundreds of MB): a bare interpreter must not inherit that peak."""
    measured = run_measured([sys.executable, "-c", "pass"], timeout=60, timed_inside=False)
    assert measured.ok
    assert 0 < measured.peak_rss < 64 << 20


def test_timeout_is_reported() -> None:
    measured = run_measured([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5, timed_inside=False)
    assert measured.timed_out and not measured.ok


def test_zipf_rows_are_distinct_and_favour_popular_ids() -> None:
    popularity = 1.0 / np.arange(1, 1001, dtype=np.float64) ** 1.2
    popularity /= popularity.sum()
    rows = zipf_rows(popularity, 50, np.random.default_rng(0))
    assert len(set(rows.tolist())) == 50
    assert np.all(np.diff(rows) > 0)
    assert np.isin(np.arange(3), rows).all()  # the three most popular ids hold a third of the mass
    assert len(zipf_rows(popularity, 1000, np.random.default_rng(0))) == 1000


def test_explicit_flags_override_quick() -> None:
    settings, report_only = parse_args(["--quick", "--changed", "1,20", "--sizes", "3MB"])
    assert not report_only
    assert settings.changed == (1.0, 20.0) and settings.sizes == (3_000_000,)
    assert settings.out == Path("bench-out/delta-quick")
