"""The device's parts on real files: store (activate, rollback, prune, damage), cache, rate parsing."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerec.device.cache import PredictionCache, request_key
from edgerec.device.storage import ModelStore, StoreState
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
    assert json.loads((store.root / "state.json").read_text()) == {
        "current": 3,
        "previous": 2,
        "highest": 3,
        "held_back": None,
        "released": None,
    }
    assert json.loads((store.root / "floor.json").read_text()) == {"highest": 3, "held_back": None, "released": None}
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


def _three_versions(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path, "ctr")
    for version in (1, 2, 3):
        _install(store, version, f"model {version}".encode())
    return store


def _active(store: ModelStore) -> tuple[int | None, int | None]:
    current, previous = store.current(), store.previous()
    return (current.version if current else None, previous.version if previous else None)


@pytest.mark.parametrize("damage", [b'{"current": 3, "prev', b"", b"\x00" * 64, b'{"current": "3"}', b"[1, 2]"])
def test_a_damaged_state_is_rebuilt_from_the_versions_that_verify(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: bytes
) -> None:
    store = _three_versions(tmp_path)
    (store.root / "state.json").write_bytes(damage)
    with caplog.at_level(logging.WARNING, logger="edgerec.device.storage"):
        assert _active(ModelStore(tmp_path, "ctr")) == (3, 2)
    assert "state.json is unreadable" in caplog.text and "rebuilt it" in caplog.text
    assert json.loads((store.root / "state.json").read_text())["current"] == 3, "the rebuilt state is written back"
    assert store.highest_activated() == 3


def test_a_rebuilt_state_skips_damaged_versions_and_the_held_back_one(tmp_path: Path) -> None:
    store = _three_versions(tmp_path)
    store.rollback()  # from 3 to 2: 3 is held back
    (store.root / "state.json").unlink()
    assert _active(store) == (2, None) and store.held_back() == 3 and store.highest_activated() == 3
    _install(store, 4, b"model 4")
    _install(store, 5, b"model 5")
    (store.versions_dir / "5" / "int8" / "model.onnx").write_bytes(b"model 6")
    (store.root / "state.json").write_bytes(b"{")
    assert _active(store) == (4, None), "version 5's files no longer verify"
    assert store.highest_activated() == 5, "but it was activated: the floor stays"


@pytest.mark.parametrize("lost", [["state.json"], ["floor.json"], ["state.json", "floor.json"]])
def test_losing_a_state_file_keeps_the_anti_rollback_floor(tmp_path: Path, lost: list[str]) -> None:
    store = _three_versions(tmp_path)
    store.rollback()
    for name in lost:
        (store.root / name).unlink()
    assert store.highest_activated() == 3, "the installed manifests keep it when both files are lost"
    both = len(lost) == 2
    # With both files gone nothing tells which version failed: the newest intact one runs again.
    assert (store.held_back(), _active(store)[0]) == ((None, 3) if both else (3, 2))


def test_an_older_copy_of_state_json_does_not_lower_the_floor(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, "ctr")
    _install(store, 1, b"one")
    old = (store.root / "state.json").read_bytes()
    _install(store, 2, b"two")
    (store.root / "state.json").write_bytes(old)
    assert store.highest_activated() == 2


def test_a_rollback_holds_the_version_back_until_cleared_or_a_newer_one_comes(tmp_path: Path) -> None:
    store = _three_versions(tmp_path)
    assert store.held_back() is None and store.clear_rollback() is None
    store.rollback()
    assert (store.held_back(), store.reinstallable()) == (3, 3)
    assert store.clear_rollback() == 3
    assert (store.held_back(), store.reinstallable(), store.highest_activated()) == (None, 3, 3)
    _install(store, 3, b"model 3")
    assert (store.held_back(), store.reinstallable(), _active(store)) == (None, None, (3, 2))
    store.rollback()
    _install(store, 4, b"model 4")
    assert (store.held_back(), store.reinstallable(), _active(store)) == (None, None, (4, 2))


@given(st.binary(max_size=5000) | st.text(max_size=200).map(str.encode))
def test_any_state_bytes_parse_or_raise_value_error(raw: bytes) -> None:
    try:
        state = StoreState.parse(raw)
    except ValueError:
        return
    assert all(v is None or (type(v) is int and v > 0) for v in (state.current, state.previous, state.held_back))


def test_deeply_nested_state_bytes_are_damage() -> None:
    with pytest.raises(ValueError):
        StoreState.parse(b"[" * 4000)


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
