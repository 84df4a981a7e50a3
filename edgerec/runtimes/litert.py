"""LiteRT (ai-edge-litert, formerly TFLite): runs ``.tflite`` models through their signature.

Models converted from PyTorch have a fixed batch (field notes: neither a dynamic batch
nor resizing works), so :class:`LiteRTRunner` cuts a request into chunks of the model's
batch, pads the last chunk by repeating its last row and slices the padding off the
outputs. Integer inputs are narrowed to the model's type when no value changes
(int64 ids feed an int32 model). ``ai_edge_litert`` is imported when a runner is made:
the package is the optional ``edgerec[tflite]`` extra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgerec.errors import ModelRuntimeError
from edgerec.runtimes.base import TerminateFlag, flat_scores

__all__ = ["LiteRTBatchRunner", "LiteRTRunner", "litert_missing"]

_INSTALL_HINT = "LiteRT is not installed: pip install 'edgerec[tflite]' (the ai-edge-litert package)"


def litert_missing() -> str | None:
    """Why LiteRT cannot run here (None when ``ai_edge_litert`` is importable), without importing it."""
    import importlib.util

    return None if importlib.util.find_spec("ai_edge_litert") is not None else _INSTALL_HINT


@dataclass(frozen=True)
class _Input:
    name: str  # the signature's name
    shape: tuple[int, ...]  # -1 where the model is dynamic
    dtype: np.dtype[Any]


class LiteRTRunner:
    """A LiteRT interpreter on one signature of a ``.tflite`` model, loaded once.

    ``input_names`` / ``output_names`` rename the signature's inputs and outputs, in the
    signature's order, to the names callers use (default: the signature's own). Raises
    :class:`ModelRuntimeError` when LiteRT is missing or the model cannot be loaded.
    """

    runtime = "litert"

    def __init__(
        self,
        model_path: Path,
        *,
        threads: int = 1,
        signature_key: str | None = None,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
    ) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-untyped, import-not-found]
        except ImportError as exc:
            raise ModelRuntimeError(_INSTALL_HINT) from exc
        try:
            interpreter = Interpreter(model_path=str(model_path), num_threads=threads)
            signatures = interpreter.get_signature_list()
            if not signatures:
                raise ModelRuntimeError(f"{model_path} has no SignatureDef; export it with a signature")
            key = signature_key or next(iter(signatures))
            if key not in signatures or (signature_key is None and len(signatures) > 1):
                raise ModelRuntimeError(f"choose one of the signatures {sorted(signatures)} of {model_path}")
            self._runner = interpreter.get_signature_runner(key)
            inputs = self._runner.get_input_details()
            outputs = self._runner.get_output_details()
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelRuntimeError(f"LiteRT cannot load {model_path}: {exc}") from exc
        self._interpreter = interpreter  # the signature runner needs it alive
        input_order, output_order = signatures[key]["inputs"], signatures[key]["outputs"]
        specs = [_spec(name, inputs[name]) for name in input_order]
        self._inputs = dict(zip(_names(input_names, input_order, "input"), specs, strict=True))
        self._outputs = dict(zip(_names(output_names, output_order, "output"), output_order, strict=True))
        self.output_names: list[str] = list(self._outputs)
        # The model's fixed batch (requests are chunked and padded to it), or None if dynamic.
        batches = {spec.shape[0] for spec in specs if spec.shape}
        self.batch: int | None = batches.pop() if len(batches) == 1 else None
        if self.batch is not None and self.batch < 1:
            self.batch = None
        self._empty = {
            name: np.zeros((0, *outputs[signature]["shape"][1:]), dtype=outputs[signature]["dtype"])
            for name, signature in self._outputs.items()
        }

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        arrays = self._converted(inputs)
        rows = len(next(iter(arrays.values()))) if arrays else 0
        if rows == 0:
            return {name: empty.copy() for name, empty in self._empty.items()}
        step = self.batch or rows
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self._outputs}
        for begin in range(0, rows, step):
            chunk = {name: _padded(array[begin : begin + step], step) for name, array in arrays.items()}
            try:
                result = self._runner(**chunk)
            except (ValueError, RuntimeError) as exc:
                raise ModelRuntimeError(f"LiteRT failed to run: {exc}") from exc
            kept = min(step, rows - begin)
            for name, signature in self._outputs.items():
                # The runner's arrays may alias interpreter memory that the next call reuses: copy.
                parts[name].append(np.array(result[signature][:kept], copy=True))
        return {name: arrays_[0] if len(arrays_) == 1 else np.concatenate(arrays_) for name, arrays_ in parts.items()}

    def _converted(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs under the signature's names and dtypes; ModelRuntimeError if they do not fit."""
        if set(inputs) != set(self._inputs):
            raise ModelRuntimeError(f"LiteRT model inputs are {sorted(self._inputs)}, got {sorted(inputs)}")
        converted: dict[str, np.ndarray] = {}
        rows: set[int] = set()
        for name, spec in self._inputs.items():
            array = np.asarray(inputs[name])
            fixed = spec.shape[1:]
            if array.ndim != len(spec.shape) or any(
                s >= 0 and s != d for s, d in zip(fixed, array.shape[1:], strict=True)
            ):
                raise ModelRuntimeError(f"input {name!r} has shape {list(array.shape)}, the model takes {spec.shape}")
            converted[spec.name] = _cast(name, array, spec.dtype)
            rows.add(array.shape[0] if array.ndim else 1)
        if len(rows) > 1:
            raise ModelRuntimeError(f"inputs disagree on the number of rows: {sorted(rows)}")
        return converted


def _names(wanted: Sequence[str] | None, signature: Sequence[str], what: str) -> list[str]:
    if wanted is None:
        return list(signature)
    if len(wanted) != len(signature):
        raise ModelRuntimeError(f"{len(wanted)} {what} names given, the signature has {len(signature)}: {signature}")
    return list(wanted)


def _spec(name: str, details: Mapping[str, Any]) -> _Input:
    shape = details.get("shape_signature")
    if shape is None or len(shape) == 0:
        shape = details["shape"]
    return _Input(name=name, shape=tuple(int(d) for d in shape), dtype=np.dtype(details["dtype"]))


def _cast(name: str, array: np.ndarray, dtype: np.dtype[Any]) -> np.ndarray:
    """``array`` as ``dtype`` when that changes no value (int64 -> int32 ids, float64 -> float32 is refused)."""
    if array.dtype == dtype:
        return np.ascontiguousarray(array)
    if array.dtype.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.size == 0 or (array.min() >= info.min and array.max() <= info.max):
            return np.ascontiguousarray(array, dtype=dtype)
        raise ModelRuntimeError(f"input {name!r} holds values outside {dtype.name}, the model's type")
    raise ModelRuntimeError(f"input {name!r} has dtype {array.dtype.name}, the model takes {dtype.name}")


def _padded(chunk: np.ndarray, rows: int) -> np.ndarray:
    """``chunk`` with its last row repeated up to ``rows`` rows (a valid row for any model)."""
    missing = rows - len(chunk)
    if missing <= 0:
        return chunk
    return np.concatenate([chunk, np.repeat(chunk[-1:], missing, axis=0)])


class LiteRTBatchRunner:
    """Several fixed-batch exports of one model: each request runs on the smallest batch that holds it.

    ``models`` maps a batch size to its ``.tflite`` file (as the manifest's
    ``fixed_batches`` declare). A request of ``n`` rows runs on the smallest size ``>= n``
    (padded); a request above the largest size is split into chunks of the largest. Every
    interpreter is loaded at construction. Raises :class:`ModelRuntimeError` as
    :class:`LiteRTRunner` does, or when a file's batch is not the declared one.
    """

    runtime = "litert"

    def __init__(
        self,
        models: Mapping[int, Path],
        *,
        threads: int = 1,
        input_names: Sequence[str] | None = None,
        output_names: Sequence[str] | None = None,
    ) -> None:
        if not models:
            raise ModelRuntimeError("no LiteRT model files given")
        self._runners: dict[int, LiteRTRunner] = {}
        for size in sorted(models):
            runner = LiteRTRunner(models[size], threads=threads, input_names=input_names, output_names=output_names)
            if runner.batch != size:
                raise ModelRuntimeError(f"{models[size]} runs batch {runner.batch}, declared as batch {size}")
            self._runners[size] = runner
        self.paths = {size: Path(models[size]) for size in sorted(models)}
        self.batch_sizes: list[int] = list(self._runners)
        self.output_names: list[str] = next(iter(self._runners.values())).output_names

    def runner_for(self, rows: int) -> LiteRTRunner:
        """The runner a request of ``rows`` rows goes to."""
        size = next((s for s in self.batch_sizes if s >= rows), self.batch_sizes[-1])
        return self._runners[size]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = max((len(np.asarray(a)) if np.ndim(a) else 1 for a in inputs.values()), default=0)
        return self.runner_for(rows).run(inputs)

    def score(self, feeds: dict[str, np.ndarray], run_options: Any = None) -> np.ndarray:
        """The first output as flat float32 scores (padded to / split by the fixed batches as :meth:`run`).

        ``run_options`` is accepted for the common interface and ignored: LiteRT cannot stop a running
        call. Raises :class:`ModelRuntimeError` when the run fails, :class:`NonFiniteScoresError` on NaN or inf.
        """
        return flat_scores(self.run(feeds)[self.output_names[0]])

    def run_options(self) -> Any:
        """Options for :meth:`score`; ``terminate`` is recorded but cannot stop a LiteRT call."""
        return TerminateFlag()

    def describe(self) -> dict[str, str]:
        """What runs: runtime and the model file per batch size."""
        return {
            "runtime": self.runtime,
            "model": ", ".join(f"batch {size}: {path}" for size, path in self.paths.items()),
        }
