"""Payload vectors: a container of every codec for the reference model's update, ``copy`` entries, the
crafted ``tensor`` bodies, and malformed containers with the error class a device must raise.

A payload vector's parameters are what a device knows from its checked plan and the signed
manifest (the plan's codec, the signed target size and sha256); applying the payload to the base
must give exactly the expected output, or raise exactly the expected error.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import zstandard

from edgerec.codecs import CODEC_NAMES, make_patch
from edgerec.codecs.container import HEADER_SIZE
from edgerec.tools.vectors import tensor_ops
from edgerec.tools.vectors.containers import TARGET_SIZE_OFFSET, flip_bit, patch_bytes, reseal, seal
from edgerec.tools.vectors.frames import raw_frame
from edgerec.tools.vectors.index import IndexWriter, Json
from edgerec.tools.vectors.models import Version

DATA = "model.onnx.data"
GRAPH = "model.onnx"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _vector(
    vid: str,
    description: str,
    *,
    payload: str | None,
    base: str | None,
    codec: str,
    target: bytes,
    error: str | None = None,
    output: str | None = None,
) -> Json:
    expect: Json = {"error": error} if error else {"output_sha256": _sha(target), "output_size": len(target)}
    if output is not None and not error:
        expect["output"] = output
    return {
        "id": vid,
        "kind": "payload",
        "description": description,
        "inputs": {"payload": payload, "base": base},
        "params": {"codec": codec, "target_size": len(target), "target_sha256": _sha(target)},
        "expect": expect,
    }


def model_files(index: IndexWriter, v1: Version, v2: Version) -> None:
    """Record both versions' files under ``models/v1`` and ``models/v2``."""
    for number, version in ((1, v1), (2, v2)):
        for name, data in version.items():
            index.add_file(f"models/v{number}/{name}", data, role="model")


def codec_vectors(index: IndexWriter, v1: Version, v2: Version) -> dict[str, bytes]:
    """A payload of every codec from v1 to v2 of each file; returns the model.onnx.data containers by codec."""
    made: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="edgerec-vectors-") as tmp:
        old, new = Path(tmp) / "v1", Path(tmp) / "v2"
        for folder, version in ((old, v1), (new, v2)):
            folder.mkdir()
            for name, data in version.items():
                (folder / name).write_bytes(data)
        for name in (DATA, GRAPH):
            for codec in CODEC_NAMES:
                if name == GRAPH and codec != "full":
                    continue  # the graph does not change between the versions: a copy (below)
                out = Path(tmp) / f"{codec}-{name}.erpatch"
                make_patch(codec, None if codec == "full" else old / name, new / name, out)
                payload = index.add_file(f"payloads/{codec}/{name}.erpatch", out.read_bytes(), role="payload")
                if name == DATA:
                    made[codec] = out.read_bytes()
                index.add_vector(
                    _vector(
                        f"payload/{codec}/{name}",
                        f"the {codec} payload of {name} from version 1 to version 2 of the reference model",
                        payload=payload,
                        base=None if codec == "full" else f"models/v1/{name}",
                        codec=codec,
                        target=v2[name],
                        output=f"models/v2/{name}",
                    )
                )
    index.add_vector(
        _vector(
            f"payload/copy/{GRAPH}",
            "a copy entry: the file is unchanged, the device copies its base and checks size and sha256",
            payload=None,
            base=f"models/v1/{GRAPH}",
            codec="copy",
            target=v2[GRAPH],
            output=f"models/v2/{GRAPH}",
        )
    )
    index.add_vector(
        _vector(
            f"payload/copy/{DATA}-changed",
            "a copy entry whose base does not have the target's sha256",
            payload=None,
            base=f"models/v1/{DATA}",
            codec="copy",
            target=v2[DATA],
            error="IntegrityError",
        )
    )
    empty = Path(tempfile.mkdtemp(prefix="edgerec-vectors-"))
    try:
        (empty / "empty").write_bytes(b"")
        make_patch("full", None, empty / "empty", empty / "out")
        payload = index.add_file("payloads/full/empty.erpatch", (empty / "out").read_bytes(), role="payload")
    finally:
        for child in empty.iterdir():
            child.unlink()
        empty.rmdir()
    index.add_vector(
        _vector(
            "payload/full/empty",
            "a full payload of an empty file",
            payload=payload,
            base=None,
            codec="full",
            target=b"",
        )
    )
    return made


def crafted_tensor_vectors(index: IndexWriter) -> None:
    """The hand-built tensor bodies of :mod:`.tensor_ops`, on their own base file."""
    base = tensor_ops.tensor_base()
    base_name = index.add_file("tensor/base.bin", base, role="crafted")
    for crafted in tensor_ops.crafted_vectors(base):
        payload = index.add_file(f"tensor/{crafted.name}.erpatch", crafted.container, role="crafted")
        index.add_vector(
            _vector(
                f"tensor/{crafted.name}",
                crafted.description,
                payload=payload,
                base=base_name,
                codec="tensor",
                target=crafted.target,
                error=crafted.error,
            )
        )


def malformed_vectors(index: IndexWriter, v1: Version, v2: Version, made: dict[str, bytes]) -> None:
    """Containers broken in one field each, with the error class a device must raise."""
    full, tensor = made["full"], made["tensor"]
    old, new = v1[DATA], v2[DATA]
    base = f"models/v1/{DATA}"

    def add(
        name: str,
        description: str,
        container: bytes | None,
        *,
        error: str,
        codec: str = "full",
        with_base: bool = False,
        target: bytes = new,
        base_name: str | None = None,
    ) -> None:
        payload = index.add_file(f"malformed/{name}.erpatch", container, role="payload") if container else None
        chosen = base_name if base_name is not None else (base if with_base else None)
        index.add_vector(
            _vector(
                f"malformed/{name}", description, payload=payload, base=chosen, codec=codec, target=target, error=error
            )
        )

    add("bad-magic", "magic XRPATCH\\0", patch_bytes(full, 0, b"X"), error="PatchError")
    add("format-version-2", "format version 2 (CRC correct)", reseal(full, version=2), error="PatchError")
    add(
        "header-crc",
        "one bit of the target size flipped, CRC not updated",
        flip_bit(full, TARGET_SIZE_OFFSET),
        error="PatchError",
    )
    add("unknown-codec-id", "codec id 9 (CRC correct)", reseal(full, codec=9), error="PatchError")
    add("reserved-byte", "reserved byte 1 (CRC correct)", reseal(full, reserved=1), error="PatchError")
    add("shorter-than-header", "a file of 50 bytes", full[:50], error="PatchError")
    add("truncated-body", "the last 40 bytes cut off", full[:-40], error="PatchError")
    add("extra-bytes", "one byte after the trailer", full + b"\x00", error="PatchError")
    add(
        "trailer-mismatch",
        "one body bit flipped: the body's sha256 differs from the trailer",
        flip_bit(full, HEADER_SIZE + 20),
        error="PatchError",
    )
    add(
        "target-size-over-limit",
        "target size 2**63, above the 64 GiB reader maximum (CRC correct)",
        reseal(full, target_size=1 << 63),
        error="PatchError",
    )
    small = b"0123456789"
    add(
        "body-over-bound",
        "a full body of 200 bytes for a 10-byte target (the bound is 73)",
        seal(
            codec="full",
            base_sha256=bytes(32),
            target_sha256=hashlib.sha256(small).digest(),
            target_size=10,
            body=raw_frame(small) + bytes(200 - len(raw_frame(small))),
        ),
        error="PatchError",
        target=small,
    )
    add(
        "codec-not-planned",
        "a tensor payload where the plan says bsdiff4",
        tensor,
        error="PatchError",
        codec="bsdiff4",
        with_base=True,
    )
    add(
        "target-sha-not-signed",
        "an honest full payload of version 2, the signed sha256 is version 1's",
        full,
        error="IntegrityError",
        target=old,
    )
    add(
        "target-size-not-signed",
        "an honest full payload, the signed size is one byte more",
        full,
        error="IntegrityError",
        target=new + b"\x00",
    )
    add(
        "decodes-to-other-bytes",
        "a well-formed full payload whose body decodes to version 1 while its header promises version 2",
        reseal(full, body=zstandard.ZstdCompressor(level=3).compress(old)),
        error="IntegrityError",
    )
    corrupt = bytearray(zstandard.ZstdCompressor(level=3, write_checksum=True).compress(new))
    corrupt[len(corrupt) // 2] ^= 0xFF
    add(
        "zstd-corrupt",
        "a full body with a damaged zstd block (trailer correct)",
        reseal(full, body=bytes(corrupt)),
        error="PatchError",
    )
    add(
        "zstd-short",
        "a full body decoding to one byte less than the target",
        reseal(full, body=raw_frame(new[:-1])),
        error="PatchError",
    )
    add(
        "zstd-long",
        "a full body decoding to one byte more than the target",
        reseal(full, body=raw_frame(new + b"!")),
        error="PatchError",
    )
    add(
        "full-window-too-big",
        "a full frame declaring a 2**28-byte window (the limit is 2**27)",
        reseal(full, body=raw_frame(new, window_log=28)),
        error="PatchError",
    )
    add(
        "full-with-base",
        "a full payload naming a base sha256",
        reseal(full, base_sha256=hashlib.sha256(old).digest()),
        error="PatchError",
    )
    add(
        "delta-without-base",
        "a tensor payload whose base sha256 is all zero",
        reseal(tensor, base_sha256=bytes(32)),
        error="PatchError",
        codec="tensor",
        with_base=True,
    )
    for codec in ("bsdiff4", "zstd-patch-from", "tensor"):
        add(
            f"wrong-base-{codec}",
            f"a {codec} payload applied to version 2's file instead of version 1's",
            made[codec],
            error="WrongBaseError",
            codec=codec,
            base_name=f"models/v2/{DATA}",
        )
        add(
            f"no-base-{codec}",
            f"a {codec} payload applied with no base file",
            made[codec],
            error="WrongBaseError",
            codec=codec,
        )
    bsdiff = made["bsdiff4"]
    add(
        "bsdiff4-bad-magic",
        "bsdiff4 body magic BSDIFF41 (trailer correct)",
        reseal(bsdiff, body=patch_bytes(bsdiff[HEADER_SIZE:-32], 7, b"1")),
        error="PatchError",
        codec="bsdiff4",
        with_base=True,
    )
    negative = (5).to_bytes(8, "little")[:7] + b"\x80"
    add(
        "bsdiff4-negative-length",
        "bsdiff4 control block length -5 (sign-magnitude)",
        reseal(bsdiff, body=patch_bytes(bsdiff[HEADER_SIZE:-32], 8, negative)),
        error="PatchError",
        codec="bsdiff4",
        with_base=True,
    )
    add(
        "bsdiff4-new-size",
        "bsdiff4 header's new size differs from the container's target size",
        reseal(bsdiff, body=patch_bytes(bsdiff[HEADER_SIZE:-32], 24, (len(new) + 1).to_bytes(8, "little"))),
        error="PatchError",
        codec="bsdiff4",
        with_base=True,
    )
    add(
        "patch-from-window-too-big",
        "a zstd-patch-from frame declaring a 2**27-byte window for a 32 KB base + target (the limit is 2**15)",
        reseal(made["zstd-patch-from"], body=raw_frame(new, window_log=27)),
        error="PatchError",
        codec="zstd-patch-from",
        with_base=True,
    )
    add(
        "patch-from-dict-id",
        "a zstd-patch-from frame naming dictionary 7",
        reseal(made["zstd-patch-from"], body=raw_frame(new, dict_id=7)),
        error="PatchError",
        codec="zstd-patch-from",
        with_base=True,
    )
    add(
        "tensor-body-magic",
        "a tensor body with magic ERT2 (trailer correct)",
        reseal(tensor, body=patch_bytes(tensor[HEADER_SIZE:-32], 3, b"2")),
        error="PatchError",
        codec="tensor",
        with_base=True,
    )
