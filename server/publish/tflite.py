"""TFLite artifacts through litert-torch (the optional ``edgerec[tflite]`` extra).

litert-torch converts a PyTorch module to ``.tflite`` without TensorFlow, but only for a
fixed batch size (a dynamic batch and resizing both fail, see the field notes), so a
recipe is published as one file per declared batch size (``model_b<N>.tflite``) and the
manifest lists them in ``Artifact.fixed_batches``; the device pads a request to the next
size (:class:`edgerec.runtimes.litert.LiteRTBatchRunner`). Every file carries the whole
model, so each declared size adds a copy of the weights to the download.

Recipes: ``tflite_fp32`` (as converted) and ``tflite_wi8``: ai-edge-quantizer's
``weight_only_wi8_afp32`` (int8 weights, float32 activations; its dynamic recipe gave wrong
answers on the old tflite-runtime). int64 inputs become int32 (``enable_x64`` off): the
runner narrows ids when no value changes.

litert-torch, ai-edge-quantizer and torch are imported only when a TFLite recipe is built.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

import numpy as np

from edgerec.errors import PublishError

__all__ = [
    "DEFAULT_BATCH_SIZES",
    "TFLITE_RECIPES",
    "export_tflite",
    "file_name",
    "tflite_missing",
]

logger = logging.getLogger(__name__)

TFLITE_RECIPES: Final = {"tflite_fp32": None, "tflite_wi8": "weight_only_wi8_afp32"}
"""Recipe name -> ai-edge-quantizer recipe (None: float32 as converted)."""
DEFAULT_BATCH_SIZES: Final = (1, 256)
_PACKAGES: Final = ("litert_torch", "ai_edge_quantizer", "ai_edge_litert", "torch")
_INSTALL_HINT: Final = "TFLite recipes need the tflite extra: pip install 'edgerec[tflite]'"


def tflite_missing() -> str | None:
    """Why TFLite artifacts cannot be built here (None when they can), without importing anything."""
    missing = [name for name in _PACKAGES if importlib.util.find_spec(name) is None]
    return f"{_INSTALL_HINT} (missing: {', '.join(missing)})" if missing else None


def file_name(batch_size: int) -> str:
    return f"model_b{batch_size}.tflite"


def export_tflite(
    source: Path,
    folder: Path,
    recipe: str,
    batch_sizes: Sequence[int],
    sample: Mapping[str, np.ndarray],
) -> dict[int, Path]:
    """Convert the ``.pt2`` program ``source`` once per batch size into ``folder``; quantize per ``recipe``.

    ``sample`` holds one or more rows of every model input, in the model's argument order
    (rows are repeated up to each batch size; values only trace shapes). Returns batch size
    -> file. Raises :class:`PublishError` when the extra is missing, the source is not a
    ``.pt2`` program, or conversion fails.
    """
    if recipe not in TFLITE_RECIPES:
        raise PublishError(f"unknown TFLite recipe {recipe!r}; choose from {sorted(TFLITE_RECIPES)}")
    missing = tflite_missing()
    if missing:
        raise PublishError(missing)
    if source.suffix.lower() != ".pt2":
        raise PublishError(f"TFLite recipes need a .pt2 torch.export program, not {source.name!r}")
    sizes = sorted(set(batch_sizes))
    if not sizes or sizes[0] < 1:
        raise PublishError(f"TFLite batch sizes must be positive, got {list(batch_sizes)}")
    import torch

    try:
        module = torch.export.load(str(source)).module()
    except Exception as exc:  # torch raises RuntimeError, KeyError, zipfile errors...
        raise PublishError(f"cannot read torch.export program {source}: {exc}") from exc
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[int, Path] = {}
    for size in sizes:
        started = time.perf_counter()
        args = tuple(torch.from_numpy(_rows(array, size)) for array in sample.values())
        path = folder / file_name(size)
        _convert(module, args, path)
        quantizer_recipe = TFLITE_RECIPES[recipe]
        if quantizer_recipe is not None:
            _quantize(path, quantizer_recipe)
        files[size] = path
        logger.info(
            "%s: batch %d exported in %.1f s (%d B)", recipe, size, time.perf_counter() - started, path.stat().st_size
        )
    return files


def _rows(array: np.ndarray, rows: int) -> np.ndarray:
    array = np.asarray(array)
    repeats = -(-rows // max(len(array), 1))
    return np.ascontiguousarray(np.concatenate([array] * repeats)[:rows])


def _convert(module: object, args: tuple[object, ...], path: Path) -> None:
    import litert_torch  # type: ignore[import-untyped, import-not-found]

    quiet = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            litert_torch.convert(module, args).export(str(path))
    except Exception as exc:  # the converter raises many types
        raise PublishError(f"litert-torch could not convert the model at batch {len(args[0])}: {exc}") from exc  # type: ignore[arg-type]


def _quantize(path: Path, recipe_name: str) -> None:
    from ai_edge_quantizer import quantizer, recipe  # type: ignore[import-untyped, import-not-found]

    quiet = io.StringIO()  # the quantizer prints a size report to stdout
    try:
        with contextlib.redirect_stdout(quiet):
            quantize = quantizer.Quantizer(str(path))
            quantize.load_quantization_recipe(getattr(recipe, recipe_name)())
            quantize.quantize().export_model(str(path), overwrite=True)
    except Exception as exc:
        raise PublishError(f"ai-edge-quantizer {recipe_name} failed on {path.name}: {exc}") from exc
