"""The device's parts on real files: store (activate, rollback, prune, damage), cache, rate parsing."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from edgerec.device.cache import PredictionCache, request_key
from edgerec.device.storage import ModelStore
from edgerec.errors import IntegrityError, ManifestError
from edgerec.manifest import FORMAT_VERSION, ArtifactFile, Manifest, make_artifact, sign_nothing
from edgerec.ratelimit import TokenBucket
from edgerec.units import parse_rate, parse_size


def _stage(store: ModelStore, version: int, content: bytes) -> tuple[Manifest, Path]:
    staged = store.begin_staging(version)
    (staged / "int8").mkdir()
    (staged / "int8" / "model.onnx").write_bytes(content)
    files = [ArtifactFile(path="int8/model.onnx", size=len(content), sha256=hashlib.sha256(content).hexdigest())]
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        model="ctr",
        version=version,
        created_at="2026-01-01T00:00:00Z",
        artifacts=[make_artifact("int8", "onnxruntime", "int8/model.onnx", files)],
    )
    return manifest, staged


def _install(store: ModelStore, version: int, content: bytes) -> None:
    manifest, staged = _stage(store, version, content)
    store.activate(sign_nothing(manifest), manifest, "int8", staged)


def test_activate_keeps_current_and_previous_and_prunes_older(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "ctr")
    assert store.current() is None
    for version in (1, 2, 3):
        _install(store, version, f"model {version}".encode())
    current, previous = store.current(), store.previous()
    assert current is not None and previous is not None
    assert (current.version, previous.version) == (3, 2)
    assert sorted(p.name for p in store.versions_dir.iterdir()) == ["2", "3"]
    assert current.entrypoint.read_bytes() == b"model 3"
    assert json.loads((store.root / "state.json").read_text()) == {"current": 3, "previous": 2, "highest": 3}
    store.rollback()
    assert store.highest_activated() == 3, "a rollback must not let version 3 be replayed"


def test_activate_refuses_staged_files_that_do_not_match(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "ctr")
    _install(store, 1, b"good")
    manifest, staged = _stage(store, 2, b"new")
    (staged / "int8" / "model.onnx").write_bytes(b"tampered")
    with pytest.raises(IntegrityError):
        store.activate(sign_nothing(manifest), manifest, "int8", staged)
    current = store.current()
    assert current is not None and current.version == 1 and current.entrypoint.read_bytes() == b"good"


def test_rollback_returns_to_the_previous_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "ctr")
    _install(store, 1, b"one")
    with pytest.raises(ManifestError):
        store.rollback()
    _install(store, 2, b"two")
    assert store.rollback().version == 1
    current = store.current()
    assert current is not None and current.version == 1 and store.previous() is None


def test_verify_notices_damage_and_stale_staging_is_cleaned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "ctr")
    _install(store, 1, b"intact bytes")
    current = store.current()
    assert current is not None
    store.verify(current)
    current.entrypoint.write_bytes(b"intact bytez")
    with pytest.raises(IntegrityError, match="sha256"):
        store.verify(current)
    current.entrypoint.write_bytes(b"short")
    with pytest.raises(IntegrityError, match="bytes"):
        store.verify(current)
    _stage(store, 2, b"half-done")
    store.clean_stale()
    assert not any(store.staging_dir.iterdir())


def test_model_names_cannot_escape_the_data_dir(tmp_path: Path) -> None:
    with pytest.raises(ManifestError):
        ModelStore(tmp_path, "../evil")


def test_cache_keys_by_version_and_exact_tensors() -> None:
    cache = PredictionCache(max_entries=2)
    a = {"x": np.arange(4, dtype=np.float32)}
    same_values_other_dtype = {"x": np.arange(4, dtype=np.float64)}
    cache.put(request_key(1, a), np.array([0.5], np.float32))
    assert cache.get(request_key(2, a)) is None, "an answer of version 1 must not serve version 2"
    assert cache.get(request_key(1, same_values_other_dtype)) is None
    hit = cache.get(request_key(1, a))
    assert hit is not None and hit[0] == np.float32(0.5) and not hit.flags.writeable
    cache.put(request_key(1, {"x": np.zeros(1)}), np.array([0.1]))
    cache.put(request_key(1, {"x": np.ones(1)}), np.array([0.2]))
    assert cache.get(request_key(1, a)) is None, "least recently used entry should be evicted"
    assert (cache.hits, cache.misses) == (1, 3)


@pytest.mark.parametrize(
    ("text", "bytes_per_s"),
    [("2mbit", 250_000), ("512kbit", 64_000), ("1MB/s", 1_000_000), ("64kB", 64_000), ("8000bit", 1000)],
)
def test_parse_rate(text: str, bytes_per_s: float) -> None:
    assert parse_rate(text) == pytest.approx(bytes_per_s)


def test_parse_size_and_bad_units() -> None:
    assert parse_size("200KB") == 200_000 and parse_size("4MiB") == 4 * 2**20 and parse_size("17") == 17
    for bad in ("fast", "-1mbit", "0kbit", "100000", "2m"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_token_bucket_paces_to_the_rate() -> None:
    bucket = TokenBucket(rate=200_000, burst=10_000)
    started = time.monotonic()
    for _ in range(10):
        bucket.consume(10_000)  # 100 kB at 200 kB/s, after a 10 kB burst: >= 0.45 s
    assert time.monotonic() - started >= 0.4
