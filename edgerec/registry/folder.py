"""A local folder holding a version's files under their manifest paths, whichever backend holds them.

Runtimes such as onnxruntime open an entrypoint and find its other files (external weights)
beside it by relative path, so a model needs its files laid out as the manifest names them.
The local registry already keeps them so; for another backend the verified cached copies are
linked (or copied) into a folder under the registry's scratch room.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from edgerec.manifest import validate_model_name
from edgerec.registry.base import ModelRegistry

__all__ = ["version_folder"]


def version_folder(registry: ModelRegistry, model: str, version: int, paths: Iterable[str]) -> Path:
    """A folder where each of ``paths`` (files of the version) is found at ``folder / path``."""
    wanted = sorted(set(paths))
    local = {path: registry.local_file(model, version, path) for path in wanted}
    common = {_root_of(file, path) for path, file in local.items()}
    if len(common) == 1 and None not in common:
        folder = common.pop()
        assert folder is not None
        return folder
    folder = registry.scratch_dir() / "versions" / validate_model_name(model) / str(version)
    for path, file in local.items():
        placed = folder / path  # paths come from a manifest the registry checked: relative, no '..'
        if placed.exists() and placed.stat().st_size == file.stat().st_size:
            continue
        placed.parent.mkdir(parents=True, exist_ok=True)
        partial = placed.with_name(f".{placed.name}.{uuid.uuid4().hex}")
        try:
            os.link(file, partial)
        except OSError:
            shutil.copyfile(file, partial)
        os.replace(partial, placed)
    return folder


def _root_of(file: Path, path: str) -> Path | None:
    """The folder ``file`` sits in as ``path`` (so ``folder / path == file``), or None."""
    parts = Path(path).parts
    if file.parts[-len(parts) :] != parts:
        return None
    return Path(*file.parts[: -len(parts)])
