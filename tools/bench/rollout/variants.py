"""The model versions of the rollout simulation, built from the reference DLRM (deterministic, no downloads).

- ``v2``: trained on day 0 of the reference data; what the fleet runs before the rollout.
- ``good``: ``v2`` trained one more (smaller) day: the ordinary daily update.
- ``worse``: ``good`` with seeded noise on its embedding tables, its scale searched until the AUC on
  held-out data is ``auc_drop`` (2 points by default) below ``good``'s: it installs and runs
  everywhere, it just recommends worse.
- ``bad``: ``good``'s exact function, with its first dense layer scaled down into subnormal floats
  and the next layer scaled up to match (ReLU commutes with a positive scale). In IEEE arithmetic it
  scores as ``good`` does; on hardware that flushes subnormals to zero (32-bit ARM NEON, many DSPs and
  NPUs; see :mod:`.hardware`) the first layer reads as zeros and the golden cases fail.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

from edgerec.evaluation import roc_auc
from edgerec.reference.data import ClickBatch, ClickGenerator, ReferenceConfig

if TYPE_CHECKING:
    from edgerec.reference.model import DLRM

__all__ = ["SCENARIOS", "Scenario", "Variants", "build_variants", "subnormal_scale"]

log = logging.getLogger(__name__)

Scenario = Literal["bad", "worse", "good"]
SCENARIOS: Final[tuple[Scenario, ...]] = ("bad", "worse", "good")

# Days of the reference data each role draws from (never the same day twice).
_TRAIN_DAY: Final = 0
_UPDATE_DAY: Final = 1
_EVAL_DAY: Final = 7
_SAMPLE_DAY: Final = 99

# 2**-126 is the smallest normal float32: weights and activations times this are subnormal.
_SUBNORMAL_EXPONENT: Final = 126


def subnormal_scale() -> float:
    """The factor that moves the ``bad`` variant's first dense layer into subnormal floats."""
    return float(2.0**-_SUBNORMAL_EXPONENT)


@dataclass(frozen=True)
class Variants:
    """The exported programs (``.pt2``) of ``v2`` and of each v3, and their AUC on held-out data."""

    v2: Path
    v3: dict[Scenario, Path]
    auc: dict[str, float]
    oracle_auc: float
    noise_std: float


def build_variants(
    folder: Path,
    config: ReferenceConfig,
    generator: ClickGenerator,
    *,
    train_samples: int,
    eval_samples: int = 50_000,
    auc_drop: float = 0.02,
    seed: int = 0,
) -> Variants:
    """Train, derive and export every version into ``folder``; the same arguments give the same bytes' function."""
    import torch

    from edgerec.reference.train import build_and_train, export_program, predict

    folder.mkdir(parents=True, exist_ok=True)
    held_out = generator.day(_EVAL_DAY, eval_samples)
    sample = generator.day(_SAMPLE_DAY, 4)
    v2 = build_and_train(config, generator, day=_TRAIN_DAY, num_samples=train_samples, seed=seed)
    good = build_and_train(
        config,
        generator,
        day=_UPDATE_DAY,
        num_samples=max(train_samples // 10, 1),
        base_state=v2.state_dict(),
        seed=seed,
    )
    auc = {"v2": _auc(v2, held_out), "good": _auc(good, held_out)}
    noise_std = _noise_for_drop(good, held_out, auc["good"] - auc_drop, seed)
    worse = _with_noise(good, noise_std, seed)
    auc["worse"] = _auc(worse, held_out)
    bad = _subnormal_copy(good)
    with torch.inference_mode():
        drift = float(np.max(np.abs(predict(bad, held_out) - predict(good, held_out))))
    if drift > 1e-4:
        raise RuntimeError(f"the subnormal variant drifted {drift:.3g} from the good one in IEEE arithmetic")
    auc["bad"] = _auc(bad, held_out)
    paths = {
        name: export_program(model, folder / f"v3-{name}.pt2", sample)
        for name, model in (("bad", bad), ("worse", worse), ("good", good))
    }
    log.info("variants: AUC %s, noise std %.4f", {k: round(v, 4) for k, v in auc.items()}, noise_std)
    return Variants(
        v2=export_program(v2, folder / "v2.pt2", sample),
        v3={name: paths[name] for name in SCENARIOS},
        auc=auc,
        oracle_auc=roc_auc(held_out.labels, held_out.true_prob),
        noise_std=noise_std,
    )


def _auc(model: DLRM, batch: ClickBatch) -> float:
    from edgerec.reference.train import predict

    return roc_auc(batch.labels, predict(model, batch))


def _with_noise(model: DLRM, std: float, seed: int) -> DLRM:
    """A copy of ``model`` with N(0, std) added to every embedding value (a seeded draw)."""
    import copy

    import torch

    noisy = copy.deepcopy(model)
    rng = np.random.default_rng([seed, 31])
    with torch.no_grad():
        for table in noisy.embedding_tables():
            noise = rng.standard_normal(tuple(table.shape)).astype(np.float32) * np.float32(std)
            table.add_(torch.from_numpy(noise))
    return noisy


def _noise_for_drop(model: DLRM, batch: ClickBatch, target_auc: float, seed: int) -> float:
    """The embedding noise std whose AUC on ``batch`` is ``target_auc`` (bisection on a log scale)."""
    low, high = 1e-4, 10.0
    for _ in range(24):
        middle = float(np.sqrt(low * high))
        if _auc(_with_noise(model, middle, seed), batch) > target_auc:
            low = middle
        else:
            high = middle
        if high / low < 1.01:
            break
    return float(np.sqrt(low * high))


def _subnormal_copy(model: DLRM) -> DLRM:
    """``model``'s function with its first bottom layer in subnormal floats (see the module doc)."""
    import copy

    import torch
    from torch import nn

    bad = copy.deepcopy(model)
    linears = [m for m in bad.bottom if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ValueError("the subnormal variant needs a bottom MLP of at least two layers")
    first, second = linears[0], linears[1]
    with torch.no_grad():
        first.weight.mul_(2.0**-_SUBNORMAL_EXPONENT)
        first.bias.mul_(2.0**-_SUBNORMAL_EXPONENT)
        second.weight.mul_(2.0**_SUBNORMAL_EXPONENT)
    return bad
