"""The device's optimized-model cache keeps only what its installed versions need.

A real server on loopback, real onnxruntime, the small hand-built models of test_policy.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from onnxtools import constant_model
from servertools import registry_server
from test_policy import RELAXED, SAFE, _model

from edgerec.device import EdgeClient
from edgerec.device.ort_cache import ORT_CACHE_DIR, ORT_STAGING_STALE_S, prune_ort_cache
from edgerec.registry import Registry
from edgerec.runtimes import OnnxRunner

pytest.importorskip("onnx")

STALE = "0" * 32  # an entry no installed version names (another onnxruntime release made it)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """ "ctr" with versions 1, 2, 3 (different weights, so different digests) and "other" with one version."""
    from edgerec.server.publish import publish

    folder = tmp_path_factory.mktemp("ort-cache")
    registry = Registry(folder / "registry")
    for version in (1, 2, 3):
        publish(_model(folder / f"ctr{version}.onnx", fragile=False, scale=float(version)), "ctr", registry)
    publish(_model(folder / "other.onnx", fragile=False, scale=-1.0), "other", registry)
    with registry_server(registry) as address:
        yield address


def _entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir()}


def _loaded_entry(client: EdgeClient) -> str:
    """The cache entry the client's loaded model came from."""
    assert client.predict(SAFE).source == "local"
    info = client.runtime_info()
    assert info["optimized_cache"] != "off", info
    return Path(info["optimized_cache"]).parent.name


def test_only_the_current_and_previous_versions_of_every_model_keep_their_optimized_model(
    server: str, tmp_path: Path
) -> None:
    cache = tmp_path / ORT_CACHE_DIR
    with (
        EdgeClient(server, "ctr", tmp_path, policy=RELAXED, cache_entries=0, insecure=True) as ctr,
        EdgeClient(server, "other", tmp_path, policy=RELAXED, cache_entries=0, insecure=True) as other,
    ):
        other.sync()
        kept_other = _loaded_entry(other)
        ctr.sync(target_version=1)
        v1 = _loaded_entry(ctr)
        ctr.sync(target_version=2)
        v2 = _loaded_entry(ctr)
        assert _entries(cache) == {kept_other, v1, v2}, "versions 1 and 2 are both held"

        # Leftovers: an entry of another onnxruntime release, a writer's fresh staging folder, a dead one's.
        (cache / STALE).mkdir()
        (cache / STALE / "model.onnx").write_bytes(b"old")
        (cache / ".optimizing-fresh").mkdir()
        (cache / ".optimizing-dead").mkdir()
        long_ago = time.time() - 2 * ORT_STAGING_STALE_S
        os.utime(cache / ".optimizing-dead", (long_ago, long_ago))

        ctr.sync()  # version 3: version 1 leaves the store, so its optimized model goes too, right after the sync
        assert ctr.active_version == 3
        assert _entries(cache) == {kept_other, v2, ".optimizing-fresh"}
        v3 = _loaded_entry(ctr)
        assert _entries(cache) == {kept_other, v2, v3, ".optimizing-fresh"}

        # A rollback to 2 leaves the store with version 2 alone: the next load drops version 3's entry.
        ctr.store.rollback()
        ctr.reload()
        assert _loaded_entry(ctr) == v2
        assert _entries(cache) == {kept_other, v2, ".optimizing-fresh"}
        assert other.predict(SAFE).source == "local", "the other model still runs from its entry"
        assert _loaded_entry(other) == kept_other


def test_nothing_is_pruned_when_a_models_state_is_unreadable(server: str, tmp_path: Path) -> None:
    with EdgeClient(server, "ctr", tmp_path, policy=RELAXED, cache_entries=0, insecure=True) as ctr:
        ctr.sync(target_version=1)
        entry = _loaded_entry(ctr)
    cache = tmp_path / ORT_CACHE_DIR
    (cache / STALE).mkdir()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "state.json").write_text('{"current": 7}')  # a version whose folder cannot be read
    assert prune_ort_cache(tmp_path, cache) == []
    assert _entries(cache) == {entry, STALE}
    (broken / "state.json").unlink()
    assert prune_ort_cache(tmp_path, cache) == [STALE]
    assert prune_ort_cache(tmp_path, tmp_path / "missing") == []


def test_a_replaced_optimized_model_never_answers(
    server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with EdgeClient(server, "other", tmp_path, policy=RELAXED, cache_entries=0, insecure=True) as client:
        client.sync()
        entry = tmp_path / ORT_CACHE_DIR / _loaded_entry(client)
        genuine = client.predict(SAFE).scores
    # The attacker's file: a valid model of the same signature that scores 0.999 whatever it is asked.
    planted = constant_model(tmp_path / "planted.onnx", 0.999)
    assert np.allclose(OnnxRunner(planted).score(SAFE), 0.999)
    shutil.copyfile(planted, entry / "model.onnx")
    with (
        caplog.at_level(logging.WARNING, logger="edgerec.runtimes.onnx"),
        EdgeClient(server, "other", tmp_path, policy=RELAXED, cache_entries=0) as restarted,
    ):
        answer = restarted.predict(SAFE)
        assert restarted.runtime_info()["optimized_cache"] == str(entry / "model.onnx"), "rebuilt, then used"
    assert "model.onnx differs from its digest record" in caplog.text
    assert answer.source == "local" and np.array_equal(answer.scores, genuine)
    assert not np.allclose(genuine, 0.999)
