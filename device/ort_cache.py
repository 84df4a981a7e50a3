"""The device's cache of onnxruntime-optimized models, and pruning it to what installed versions need."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from edgerec.device.storage import FLOOR_FILE, STATE_FILE, ModelStore
from edgerec.errors import EdgerecError

log = logging.getLogger(__name__)

# Folder under the data dir holding onnxruntime's optimized models, one per artifact digest (model names
# start alphanumeric, so it never collides with a model's folder).
ORT_CACHE_DIR = ".ort-cache"
# A half-written optimized model (onnxruntime's staging folder) older than this belongs to a writer that died.
ORT_STAGING_STALE_S = 3600.0


def prune_ort_cache(data_dir: Path, cache_dir: Path) -> list[str]:
    """Remove the optimized models in ``cache_dir`` that no installed version needs; returns the names removed.

    Every model under ``data_dir`` shares the cache, so the entries kept are those of each model's current
    and previous version (the versions its store holds) for this onnxruntime; an entry of a pruned version
    or of another onnxruntime release goes, and so does a staging folder a writer left over
    ``ORT_STAGING_STALE_S`` ago. When some model's state cannot be read nothing is removed (it may need
    an entry). An entry removed under another process is rebuilt by its next load.
    """
    if not cache_dir.is_dir():
        return []
    try:
        import onnxruntime as ort

        from edgerec.runtimes.onnx import cache_entry_name
    except ImportError:
        return []
    keep: set[str] = set()
    for folder in data_dir.iterdir():
        if folder.name.startswith(".") or not any((folder / name).is_file() for name in (STATE_FILE, FLOOR_FILE)):
            continue  # not a model's folder (a model that lost state.json still has floor.json)
        try:
            store = ModelStore(data_dir, folder.name)
            held = [store.current(), store.previous()]
        except (EdgerecError, OSError) as exc:
            log.warning("optimized-model cache not pruned: cannot tell what %s holds: %s", folder, exc)
            return []
        keep.update(cache_entry_name(v.artifact.digest, ort.__version__) for v in held if v is not None)
    removed: list[str] = []
    stale_before = time.time() - ORT_STAGING_STALE_S
    for entry in cache_dir.iterdir():
        try:
            if entry.name in keep or (entry.name.startswith(".") and entry.stat().st_mtime > stale_before):
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # another process pruned it first
            continue
        except OSError as exc:
            log.warning("cannot remove optimized model %s: %s", entry, exc)
            continue
        removed.append(entry.name)
    if removed:
        log.info("optimized-model cache: removed %d entries no installed version needs", len(removed))
    return removed
