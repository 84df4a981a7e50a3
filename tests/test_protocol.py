"""The committed gRPC code matches protos/, and the protocol reads as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerec.tools.gen_protos import REPO_ROOT, generate

pytest.importorskip("grpc_tools")


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    generated = generate(tmp_path)
    assert generated, "protoc generated nothing"
    committed = sorted(p.relative_to(REPO_ROOT) for p in (REPO_ROOT / "edgerec" / "v1").glob("*_pb2*.py*"))
    assert committed == generated, "generated files differ from the committed set: run `make protos`"
    stale = [str(rel) for rel in generated if (tmp_path / rel).read_bytes() != (REPO_ROOT / rel).read_bytes()]
    assert not stale, f"stale generated code (run `make protos`): {stale}"


def test_every_message_field_is_documented() -> None:
    """A client in any language is written from protos/ alone, so every field carries a comment."""
    undocumented: list[str] = []
    for proto in sorted((REPO_ROOT / "protos").rglob("*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            stripped = line.strip()
            is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("option", "syntax"))
            if is_field and "//" not in stripped and not lines[i - 1].strip().startswith("//"):
                undocumented.append(f"{proto.name}:{i + 1}: {stripped}")
    assert not undocumented, "undocumented fields:\n" + "\n".join(undocumented)
