"""Shared test configuration.

Hypothesis profiles: "ci" (default, keeps the suite fast) and "thorough" (many more
examples); pick one with ``HYPOTHESIS_PROFILE=thorough pytest``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from servertools import registry_server

from edgerec.reference.data import ClickGenerator, ReferenceConfig
from edgerec.registry import Registry, copy_registry

settings.register_profile("ci", max_examples=25, deadline=timedelta(seconds=5), print_blob=True)
settings.register_profile("thorough", max_examples=2000, deadline=timedelta(seconds=30), print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# --- a published registry and a real server on loopback, shared by the end-to-end tests ---

MODEL = "ctr"


@pytest.fixture(scope="session")
def reference_generator() -> ClickGenerator:
    return ClickGenerator(ReferenceConfig.tiny(), seed=3)


@pytest.fixture(scope="session")
def model_pair(tmp_path_factory: pytest.TempPathFactory, reference_generator: ClickGenerator) -> tuple[Path, Path]:
    """Two torch.export programs: v1, and v2 trained one more (small) day on top of it."""
    pytest.importorskip("torch")
    from edgerec.reference.train import build_and_train, export_program

    folder = tmp_path_factory.mktemp("models")
    config = reference_generator.config
    sample = reference_generator.day(99, 4)
    v1 = build_and_train(config, reference_generator, day=0, num_samples=20_000, epochs=1)
    v2 = build_and_train(config, reference_generator, day=1, num_samples=1_000, base_state=v1.state_dict(), epochs=1)
    return export_program(v1, folder / "v1.pt2", sample), export_program(v2, folder / "v2.pt2", sample)


@pytest.fixture(scope="session")
def published_registry(tmp_path_factory: pytest.TempPathFactory, model_pair: tuple[Path, Path]) -> Registry:
    from edgerec.server.publish import PublishOptions, publish

    registry = Registry(tmp_path_factory.mktemp("registry"))
    for source in model_pair:
        publish(source, MODEL, registry, PublishOptions(no_gate=True))
    return registry


def _serve(registry: Registry) -> Iterator[tuple[Registry, str]]:
    with registry_server(registry) as address:
        yield registry, address


@pytest.fixture(scope="session")
def served(published_registry: Registry) -> Iterator[tuple[Registry, str]]:
    """A server on loopback over the shared registry (tests must not modify it)."""
    yield from _serve(published_registry)


@pytest.fixture
def served_copy(published_registry: Registry, tmp_path: Path) -> Iterator[tuple[Registry, str]]:
    """A server over a private copy of the registry, for tests that tamper with it."""
    copy = tmp_path / "registry-copy"
    copy_registry(published_registry.root, copy)
    yield from _serve(Registry(copy))


@pytest.fixture(scope="session")
def request_inputs(reference_generator: ClickGenerator) -> dict[str, np.ndarray]:
    return reference_generator.day(5, 4).inputs()
