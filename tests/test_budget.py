"""Budgeted partial updates: a real version of the most-changed rows that fits a device's payload budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgerec.device import EdgeClient
from edgerec.errors import PayloadBudgetError, PublishError, RollbackError
from edgerec.reference.data import ClickGenerator
from edgerec.registry import Registry

pytestmark = pytest.mark.torch


def _tables(registry: Registry, version: int) -> dict[str, np.ndarray]:
    from edgerec.server.publish.export import load_onnx
    from edgerec.server.publish.quantize import find_embedding_tables

    model = load_onnx(registry.file_path("ctr", version, "fp32/model.onnx"))
    tables = set(find_embedding_tables(model))
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in tables}


def test_partial_version_fits_the_budget_and_takes_the_largest_changes(
    served_copy: tuple[Registry, str], tmp_path: Path, reference_generator: ClickGenerator
) -> None:
    from edgerec.server.publish.budget import publish_partial

    registry, address = served_copy
    with EdgeClient(server=address, model="ctr", data_dir=tmp_path / "rich", insecure=True) as rich:
        rich.sync(target_version=1)
        full_delta = rich.sync().payload_bytes
    budget = full_delta // 2
    validation = reference_generator.day(7, 5_000)
    result = publish_partial(
        registry, "ctr", 1, budget, validation={**validation.inputs(), "labels": validation.labels}
    )
    partial = result.manifest
    assert partial.version == 3 and registry.latest_version("ctr") == 2, "a partial version is never 'latest'"
    assert partial.annotations["edgerec.partial_of"] == "2" and partial.annotations["edgerec.partial_base"] == "1"
    assert 0 < result.rows_taken < result.rows_changed and result.payload_bytes <= budget
    assert (
        abs(float(partial.annotations["edgerec.partial_auc"]) - float(partial.annotations["edgerec.full_auc"])) < 0.05
    )

    # Every row of the partial version is the base's or the target's, and the taken ones changed the most.
    v1, v2, v3 = _tables(registry, 1), _tables(registry, 2), _tables(registry, 3)
    taken_changes, left_changes = [], []
    for name in v2:
        change = np.linalg.norm(v2[name] - v1[name], axis=1)
        from_target = np.all(v3[name] == v2[name], axis=1)
        assert np.all(from_target | np.all(v3[name] == v1[name], axis=1))
        taken_changes += list(change[from_target & (change > 0)])
        left_changes += list(change[~from_target])
    assert len(taken_changes) == result.rows_taken
    assert min(taken_changes) >= max(left_changes)

    with EdgeClient(server=address, model="ctr", data_dir=tmp_path / "poor", insecure=True) as first_install:
        first_install.sync(target_version=1)
    with EdgeClient(
        server=address, model="ctr", data_dir=tmp_path / "poor", max_payload_bytes=budget, insecure=True
    ) as poor:
        quick = poor.sync()
        assert quick.version == 3 and quick.payload_bytes <= budget
        assert poor.predict(validation.inputs()).version == 3
        again = poor.sync()  # within its budget, nothing newer than the partial version until the next full one
        assert not again.updated and again.version == 3

    # Without the budget, the device moves on to the full version its partial one approximates, though
    # that version's number is lower: the partial's signed manifest names it (edgerec.partial_of).
    with EdgeClient(server=address, model="ctr", data_dir=tmp_path / "poor", insecure=True) as unbudgeted:
        full = unbudgeted.sync()
        assert (full.updated, full.version, full.previous_version) == (True, 2, 3)
        assert full.payload_bytes < full.full_bytes, "a delta from the partial version"
        assert unbudgeted.predict(validation.inputs()).version == 2
        assert not unbudgeted.sync().updated
        with pytest.raises(RollbackError):
            unbudgeted.sync(target_version=1)  # the floor stays: only the approximated version passed it

    with EdgeClient(server=address, model="ctr", data_dir=tmp_path / "other", insecure=True) as unlimited:
        unlimited.sync(target_version=1)
        assert unlimited.sync().version == 2, "devices without a budget get the full version"

    with EdgeClient(
        server=address, model="ctr", data_dir=tmp_path / "tiny", max_payload_bytes=100, insecure=True
    ) as tiny:
        with pytest.raises(PayloadBudgetError):
            tiny.sync()
        assert tiny.active_version is None and not any(tiny.store.downloads_dir.iterdir())


def test_a_budget_below_the_dense_update_is_refused(served_copy: tuple[Registry, str]) -> None:
    from edgerec.server.publish.budget import publish_partial

    registry, _ = served_copy
    with pytest.raises(PublishError, match="budget"):
        publish_partial(registry, "ctr", 1, 10, no_gate=True)
    assert registry.versions("ctr") == [1, 2]
