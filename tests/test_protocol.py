"""The committed gRPC code matches protos/, and the protocol reads as documented."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

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


def test_vendored_health_proto_matches_the_installed_service(tmp_path: Path) -> None:
    """protos/grpc/health/v1/health.proto defines exactly what grpcio-health-checking serves."""
    from grpc_health.v1 import health_pb2
    from grpc_tools import protoc

    from edgerec.tools.gen_protos import PROTO_ROOT, proto_files

    vendored_path = Path("grpc") / "health" / "v1" / "health.proto"
    assert vendored_path not in proto_files(), "no code is generated for the vendored health proto"
    out = tmp_path / "health.pb"
    assert protoc.main(["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"--descriptor_set_out={out}", str(vendored_path)]) == 0
    vendored = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file[0]
    installed = descriptor_pb2.FileDescriptorProto()
    health_pb2.DESCRIPTOR.CopyToProto(installed)
    vendored.ClearField("name")
    installed.ClearField("name")
    for message in _messages(vendored.message_type):  # protoc adds json_name, derived from each field's name
        for field in message.field:
            field.ClearField("json_name")
    assert vendored == installed, f"vendored:\n{vendored}\ninstalled:\n{installed}"


def _messages(messages: Iterable[descriptor_pb2.DescriptorProto]) -> Iterator[descriptor_pb2.DescriptorProto]:
    for message in messages:
        yield message
        yield from _messages(message.nested_type)
