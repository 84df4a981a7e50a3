"""``python -m edgerec.tools.vectors --out DIR``: write the conformance vectors and their index."""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from edgerec.tools.vectors.generate import generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m edgerec.tools.vectors", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("tests/vectors"), help="folder to (re)write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    document = generate(args.out)
    kinds = Counter(v["kind"] for v in document["vectors"])
    total = sum(f["size"] for f in document["files"].values())
    print(
        f"{len(document['vectors'])} vectors ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
        f"{len(document['files'])} files, {total} bytes in {args.out}"
    )


if __name__ == "__main__":
    main()
