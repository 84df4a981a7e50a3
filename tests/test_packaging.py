"""Packaging: every package folder is listed in pyproject.toml, and the mapping works."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"server": "edgerec.server", "device": "edgerec.device", "tools": "edgerec.tools"}


def _package_name(folder: Path) -> str:
    rel = folder.relative_to(ROOT).parts
    return ".".join([MAPPED.get(rel[0], rel[0]), *rel[1:]])


def test_every_package_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        _package_name(init.parent)
        for top in ("edgerec", "server", "device", "tools")
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert found == listed, f"missing from pyproject: {found - listed}; listed but absent: {listed - found}"


def test_mapped_packages_import_from_their_folders() -> None:
    import edgerec.device
    import edgerec.server
    import edgerec.tools

    assert Path(edgerec.server.__file__).parent == ROOT / "server"
    assert Path(edgerec.device.__file__).parent == ROOT / "device"
    assert Path(edgerec.tools.__file__).parent == ROOT / "tools"
