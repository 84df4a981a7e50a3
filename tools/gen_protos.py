"""Regenerate the committed gRPC code in edgerec/v1 from protos/edgerec/v1.

Run ``python -m edgerec.tools.gen_protos`` after editing a .proto file;
tests/test_protocol.py fails while the committed code is stale.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_PACKAGE = Path("edgerec") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    """The .proto sources, relative to ``protos/``."""
    return sorted(p.relative_to(PROTO_ROOT) for p in (PROTO_ROOT / PROTO_PACKAGE).glob("*.proto"))


def generate(out_root: Path) -> list[Path]:
    """Run protoc into ``out_root``; return the generated files relative to it."""
    from grpc_tools import protoc

    out_root.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in proto_files()],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(
        p.relative_to(out_root) for p in (out_root / PROTO_PACKAGE).iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for rel in generate(Path(tmp)):
            shutil.copyfile(Path(tmp) / rel, REPO_ROOT / rel)
            print(rel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
