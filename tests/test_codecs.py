"""Payload codecs and their container: round trips, and every damaged patch refused cleanly."""

from __future__ import annotations

import hashlib
import io
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from patchtools import body_of, byte_pairs, reseal

from edgerec.codecs import (
    CODEC_NAMES,
    PatchHeader,
    apply_patch,
    get_codec,
    make_patch,
    max_payload_size,
    read_patch_info,
)
from edgerec.codecs.bounds import bz2_compress_bound, zstd_compress_bound
from edgerec.codecs.container import (
    HEADER_SIZE,
    MAGIC,
    TRAILER_SIZE,
    read_header,
    write_container,
)
from edgerec.codecs.full import FullCodec
from edgerec.codecs.tensor import format as tensor_format
from edgerec.codecs.tensor.encode import literal_body
from edgerec.errors import IntegrityError, PatchError, WrongBaseError
from edgerec.hashing import HashingWriter, sha256_file

REFUSED = (PatchError, IntegrityError)
PREVIOUS = b"previous contents of out"


# --- helpers -------------------------------------------------------------------------


@contextmanager
def workdir() -> Iterator[Path]:
    """A fresh directory per hypothesis example (function-scoped fixtures are shared by examples)."""
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def make(codec: str, old: bytes, new: bytes, d: Path) -> bytes:
    """The patch ``codec`` makes from ``old`` to ``new``, as bytes."""
    patch = d / f"{codec}.patch"
    make_patch(codec, write(d / "old.bin", old), write(d / "new.bin", new), patch)
    return patch.read_bytes()


def base_for(codec: str, d: Path) -> Path | None:
    return d / "old.bin" if get_codec(codec).needs_base else None


def assert_refused(codec: str, patch: bytes, d: Path, match: str | None = None) -> None:
    """Applying ``patch`` raises PatchError or IntegrityError and leaves ``out`` and the directory as they were."""
    bad = write(d / "bad.patch", patch)
    out = write(d / "out.bin", PREVIOUS)
    before = sorted(p.name for p in d.iterdir())
    with pytest.raises(REFUSED, match=match):
        apply_patch(base_for(codec, d), bad, out)
    assert out.read_bytes() == PREVIOUS
    assert sorted(p.name for p in d.iterdir()) == before, "a temporary file was left behind"


def rewrite_header(patch: bytes, offset: int, fmt: str, value: int) -> bytes:
    """``patch`` with one header field replaced and the header CRC recomputed."""
    raw = bytearray(patch)
    struct.pack_into(fmt, raw, offset, value)
    struct.pack_into("<I", raw, HEADER_SIZE - 4, zlib.crc32(raw[: HEADER_SIZE - 4]))
    return bytes(raw)


# --- data ----------------------------------------------------------------------------


def tensor_update(rows: int, dim: int, mlp_dim: int, fraction: float, seed: int) -> tuple[bytes, bytes]:
    """An embedding table and an MLP layer, then the same with ``fraction`` of the rows retrained."""
    rng = np.random.default_rng(seed)
    table = (rng.standard_normal((rows, dim)) * 0.01).astype(np.float32)
    mlp = (rng.standard_normal((mlp_dim, mlp_dim)) * 0.05).astype(np.float32)
    new_table = table.copy()
    touched = rng.random(rows) < fraction
    new_table[touched] += (rng.standard_normal((int(touched.sum()), dim)) * 1e-3).astype(np.float32)
    return table.tobytes() + mlp.tobytes(), new_table.tobytes() + mlp.tobytes()


@pytest.fixture(scope="module")
def tensors() -> tuple[bytes, bytes]:
    return tensor_update(rows=8192, dim=64, mlp_dim=256, fraction=0.02, seed=7)  # 2.25 MiB each


@pytest.fixture(scope="module")
def small_patches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[bytes, bytes, bytes]]:
    """Per codec: (old, new, patch) for a 1.3 KB update, the target of the damage tests."""
    old, new = tensor_update(rows=32, dim=8, mlp_dim=8, fraction=0.1, seed=3)
    d = tmp_path_factory.mktemp("small")
    return {codec: (old, new, make(codec, old, new, d)) for codec in CODEC_NAMES}


# --- round trips ---------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_round_trip_float32_tensors(codec: str, tensors: tuple[bytes, bytes], tmp_path: Path) -> None:
    old, new = tensors
    patch = make(codec, old, new, tmp_path)
    out = tmp_path / "out.bin"
    apply_patch(base_for(codec, tmp_path), tmp_path / f"{codec}.patch", out)
    assert out.read_bytes() == new
    info = read_patch_info(tmp_path / f"{codec}.patch")
    assert (info.codec, info.target_size) == (codec, len(new))
    assert info.target_sha256 == hashlib.sha256(new).hexdigest()
    assert info.body_length == len(patch) - HEADER_SIZE - TRAILER_SIZE
    if get_codec(codec).needs_base:
        assert info.base_sha256 == hashlib.sha256(old).hexdigest()
        assert len(patch) < len(new) // 20, "2% of rows changed: the delta should be small"
    else:
        assert info.base_sha256 is None
        assert len(patch) < len(new)


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize(
    ("old", "new"),
    [(b"", b""), (b"", b"x"), (b"x", b""), (b"a", b"b"), (b"same", b"same"), (b"\0" * 1000, b"\0" * 1001)],
)
def test_round_trip_empty_and_tiny(codec: str, old: bytes, new: bytes, tmp_path: Path) -> None:
    make(codec, old, new, tmp_path)
    out = write(tmp_path / "out.bin", PREVIOUS)
    apply_patch(base_for(codec, tmp_path), tmp_path / f"{codec}.patch", out)
    assert out.read_bytes() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["old.bin", "new.bin", "out.bin", f"{codec}.patch"])


def test_full_with_long_distance_matching(tmp_path: Path) -> None:
    # A repeat 6 MiB apart is outside level 9's window; long-distance matching finds it.
    chunk = np.random.default_rng(5).bytes(1 << 20)
    new = write(tmp_path / "new.bin", chunk + bytes(np.random.default_rng(6).bytes(6 << 20)) + chunk)
    plain, long_distance = tmp_path / "plain.patch", tmp_path / "ldm.patch"
    FullCodec().make(None, new, plain)
    FullCodec(long_distance_threshold=0).make(None, new, long_distance)
    assert long_distance.stat().st_size < plain.stat().st_size - (1 << 19)
    out = tmp_path / "out.bin"
    apply_patch(None, long_distance, out)
    assert out.read_bytes() == new.read_bytes()


@given(pair=byte_pairs())
def test_every_codec_round_trips_arbitrary_bytes(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    for codec in CODEC_NAMES:
        with workdir() as d:
            make(codec, old, new, d)
            out = d / "out.bin"
            apply_patch(base_for(codec, d), d / f"{codec}.patch", out)
            assert out.read_bytes() == new


# --- damaged patches -----------------------------------------------------------------


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_truncation_around_header_and_trailer_is_refused(
    codec: str, small_patches: dict[str, tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    old, _, patch = small_patches[codec]
    write(tmp_path / "old.bin", old)
    for cut in {*range(HEADER_SIZE + 8), *range(len(patch) - TRAILER_SIZE - 8, len(patch))}:
        assert_refused(codec, patch[:cut], tmp_path)


@given(data=st.data())
def test_truncation_anywhere_is_refused(
    data: st.DataObject, small_patches: dict[str, tuple[bytes, bytes, bytes]]
) -> None:
    codec = data.draw(st.sampled_from(CODEC_NAMES))
    old, _, patch = small_patches[codec]
    with workdir() as d:
        write(d / "old.bin", old)
        assert_refused(codec, patch[: data.draw(st.integers(0, len(patch) - 1))], d)


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_every_header_and_trailer_byte_flip_is_refused(
    codec: str, small_patches: dict[str, tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    old, _, patch = small_patches[codec]
    write(tmp_path / "old.bin", old)
    for position in [*range(HEADER_SIZE), *range(len(patch) - TRAILER_SIZE, len(patch))]:
        damaged = bytearray(patch)
        damaged[position] ^= 0x01
        assert_refused(codec, bytes(damaged), tmp_path)


@given(data=st.data())
def test_a_flipped_byte_anywhere_is_refused(
    data: st.DataObject, small_patches: dict[str, tuple[bytes, bytes, bytes]]
) -> None:
    codec = data.draw(st.sampled_from(CODEC_NAMES))
    old, _, patch = small_patches[codec]
    position = data.draw(st.integers(0, len(patch) - 1))
    damaged = bytearray(patch)
    damaged[position] ^= data.draw(st.integers(1, 255))
    with workdir() as d:
        write(d / "old.bin", old)
        assert_refused(codec, bytes(damaged), d)


@given(data=st.data())
def test_appended_garbage_is_refused(data: st.DataObject, small_patches: dict[str, tuple[bytes, bytes, bytes]]) -> None:
    codec = data.draw(st.sampled_from(CODEC_NAMES))
    old, _, patch = small_patches[codec]
    with workdir() as d:
        write(d / "old.bin", old)
        assert_refused(codec, patch + data.draw(st.binary(min_size=1, max_size=256)), d)


@given(data=st.data())
def test_a_resealed_damaged_body_is_refused_or_harmless(
    data: st.DataObject, small_patches: dict[str, tuple[bytes, bytes, bytes]]
) -> None:
    """A body damaged behind a valid CRC and trailer reaches the decoders: they must fail cleanly.

    A damage that changes nothing of the output (for instance the zstd frame's own checksum
    cut off) may be accepted, but only if ``out`` is then exactly the target.
    """
    codec = data.draw(st.sampled_from(CODEC_NAMES))
    old, new, patch = small_patches[codec]
    body = bytearray(body_of(patch))
    damage = data.draw(st.sampled_from(["flip", "cut", "append", "splice"]))
    if damage == "flip":
        body[data.draw(st.integers(0, len(body) - 1))] ^= data.draw(st.integers(1, 255))
    elif damage == "cut":
        del body[data.draw(st.integers(0, len(body) - 1)) :]
    elif damage == "append":
        body += data.draw(st.binary(min_size=1, max_size=64))
    else:
        start = data.draw(st.integers(0, len(body)))
        body[start : start + data.draw(st.integers(0, 64))] = data.draw(st.binary(max_size=64))
    with workdir() as d:
        write(d / "old.bin", old)
        bad = write(d / "bad.patch", reseal(patch, bytes(body)))
        out = write(d / "out.bin", PREVIOUS)
        try:
            apply_patch(base_for(codec, d), bad, out)
        except REFUSED:
            assert out.read_bytes() == PREVIOUS
        else:
            assert out.read_bytes() == new
        assert sorted(p.name for p in d.iterdir()) == ["bad.patch", "old.bin", "out.bin"]


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_garbage_body_is_refused(
    codec: str, small_patches: dict[str, tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    old, _, patch = small_patches[codec]
    write(tmp_path / "old.bin", old)
    for body in (b"", b"\0" * 40, np.random.default_rng(1).bytes(500)):
        assert_refused(codec, reseal(patch, body), tmp_path)


# --- bounds --------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_target_size_above_the_callers_maximum_is_refused(
    codec: str, small_patches: dict[str, tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    old, new, patch = small_patches[codec]
    bad = write(tmp_path / "p.patch", patch)
    out = tmp_path / "out.bin"
    with pytest.raises(PatchError, match="exceeds the maximum"):
        apply_patch(base_for(codec, tmp_path), bad, out, max_target_size=len(new) - 1)
    with pytest.raises(PatchError, match="exceeds the maximum"):
        get_codec(codec).apply(write(tmp_path / "old.bin", old), bad, out, max_target_size=len(new) - 1)
    assert not out.exists()


def test_huge_declared_lengths_are_refused_without_allocating(tmp_path: Path) -> None:
    patch = make("full", b"old", b"new", tmp_path)
    huge_body = rewrite_header(patch, 84, "<Q", (1 << 64) - 1)
    huge_target = rewrite_header(patch, 76, "<Q", (1 << 64) - 1)
    assert_refused("full", huge_body, tmp_path, match="truncated")
    assert_refused("full", huge_target, tmp_path, match="exceeds the maximum")


def test_full_body_decompressing_past_its_target_is_refused(tmp_path: Path) -> None:
    # A zstd bomb: 16 MiB of zeros in a few hundred bytes, under a header promising 1 KiB.
    bomb = zstandard.ZstdCompressor().compress(bytes(16 << 20))
    patch = make("full", b"", bytes(1024), tmp_path)
    assert_refused("full", reseal(patch, bomb), tmp_path, match="decompresses past 1024 bytes")


def test_full_body_needing_a_window_beyond_the_device_limit_is_refused(tmp_path: Path) -> None:
    params = zstandard.ZstdCompressionParameters(window_log=28, write_content_size=False)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    body = compressor.compress(b"data") + compressor.flush()
    assert zstandard.get_frame_parameters(body).window_size == 1 << 28
    patch = make("full", b"", b"data", tmp_path)
    assert_refused("full", reseal(patch, body), tmp_path, match="needs a window of")


def test_bsdiff_blocks_larger_than_the_body_are_refused(
    small_patches: dict[str, tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    old, _, patch = small_patches["bsdiff4"]
    write(tmp_path / "old.bin", old)
    body = body_of(patch)
    for control_length, diff_length in ((1 << 62, 0), (0, 1 << 62), (-1, 0), (len(body), len(body))):
        bad = body[:8] + struct.pack("<qq", control_length, diff_length) + body[24:]
        assert_refused("bsdiff4", reseal(patch, bad), tmp_path, match="do not fit")


# --- header --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (8, "<H", 2, "unsupported patch format version 2"),
        (10, "<B", 5, "unknown patch codec id 5"),
        (10, "<B", 0, "unknown patch codec id 0"),
        (11, "<B", 1, "reserved header byte"),
    ],
)
def test_header_fields_are_checked(offset: int, fmt: str, value: int, message: str, tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.patch", rewrite_header(make("full", b"", b"new", tmp_path), offset, fmt, value))
    with pytest.raises(PatchError, match=message):
        read_patch_info(bad)
    assert_refused("full", bad.read_bytes(), tmp_path)


def test_header_errors_name_the_problem(tmp_path: Path) -> None:
    patch = make("full", b"", b"new", tmp_path)
    cases = {
        b"": "truncated",
        b"NOTPATCH" + patch[8:]: "not an edgerec patch",
        patch[:20] + bytes([patch[20] ^ 1]) + patch[21:]: "CRC-32 mismatch",
        patch[:-1]: "truncated",
        patch + b"x": "followed by extra bytes",
    }
    for data, message in cases.items():
        with pytest.raises(PatchError, match=message):
            read_header(io.BytesIO(data))


def test_header_round_trips_and_layout(tmp_path: Path) -> None:
    patch = make("bsdiff4", b"old", b"new", tmp_path)
    assert patch[:8] == MAGIC
    assert HEADER_SIZE == 96
    header = read_header(io.BytesIO(patch))
    assert header == PatchHeader(
        codec="bsdiff4",
        base_sha256=hashlib.sha256(b"old").hexdigest(),
        target_sha256=hashlib.sha256(b"new").hexdigest(),
        target_size=3,
        body_length=len(patch) - HEADER_SIZE - TRAILER_SIZE,
    )
    assert patch[12:44] == hashlib.sha256(b"old").digest()
    assert patch[-TRAILER_SIZE:] == hashlib.sha256(body_of(patch)).digest()


def test_header_rejects_invalid_fields() -> None:
    with pytest.raises(ValueError):
        PatchHeader("lzma", None, "0" * 64, 1, 1)
    with pytest.raises(ValueError):
        PatchHeader("full", None, "XYZ", 1, 1)
    with pytest.raises(ValueError):
        PatchHeader("full", None, "0" * 64, -1, 1)


# --- bases, codecs and out -----------------------------------------------------------


def test_wrong_base_is_refused(small_patches: dict[str, tuple[bytes, bytes, bytes]], tmp_path: Path) -> None:
    old, _, patch = small_patches["bsdiff4"]
    bad = write(tmp_path / "p.patch", patch)
    out = write(tmp_path / "out.bin", PREVIOUS)
    other = write(tmp_path / "other.bin", old[:-1] + bytes([old[-1] ^ 1]))
    with pytest.raises(WrongBaseError, match="applies to a file with sha256"):
        apply_patch(other, bad, out)
    with pytest.raises(WrongBaseError, match="got none"):
        apply_patch(None, bad, out)
    assert out.read_bytes() == PREVIOUS


def test_a_patch_given_to_another_codec_is_refused(
    small_patches: dict[str, tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    old = write(tmp_path / "old.bin", small_patches["bsdiff4"][0])
    for made_by, applied_by in (("bsdiff4", "full"), ("full", "bsdiff4")):
        bad = write(tmp_path / "p.patch", small_patches[made_by][2])
        with pytest.raises(PatchError, match=f"made by codec '{made_by}'"):
            get_codec(applied_by).apply(old, bad, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_a_full_header_naming_a_base_is_refused(tmp_path: Path) -> None:
    f = io.BytesIO()
    body = zstandard.ZstdCompressor().compress(b"new")
    sha = hashlib.sha256(b"new").hexdigest()
    write_container(f, codec="full", base_sha256="ab" * 32, target_sha256=sha, target_size=3, body=[body])
    assert_refused("full", f.getvalue(), tmp_path, match="must not name a base")


def test_unknown_codec_names_raise_patch_error(tmp_path: Path) -> None:
    with pytest.raises(PatchError, match="unknown codec 'xdelta'"):
        get_codec("xdelta")
    with pytest.raises(PatchError):
        make_patch("xdelta", None, write(tmp_path / "new.bin", b"x"), tmp_path / "p")
    assert set(CODEC_NAMES) == {"full", "bsdiff4", "zstd-patch-from", "tensor"}
    assert all(get_codec(name).name == name for name in CODEC_NAMES)


def test_bsdiff4_make_needs_a_base(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_patch("bsdiff4", None, write(tmp_path / "new.bin", b"x"), tmp_path / "p")


def test_a_failed_make_leaves_no_patch(tmp_path: Path) -> None:
    out = write(tmp_path / "p.patch", b"earlier patch")
    with pytest.raises(FileNotFoundError):
        make_patch("full", None, tmp_path / "missing.bin", out)
    assert out.read_bytes() == b"earlier patch"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.patch"]


def test_apply_replaces_an_existing_out(small_patches: dict[str, tuple[bytes, bytes, bytes]], tmp_path: Path) -> None:
    old, new, patch = small_patches["bsdiff4"]
    out = write(tmp_path / "old.bin", old)
    apply_patch(out, write(tmp_path / "p.patch", patch), out)  # in place: out is also the base
    assert out.read_bytes() == new


# --- size bounds: what a codec makes at most, and a device accepts at most -------------------


def test_the_bounds_are_the_compressors_documented_ones() -> None:
    # ZSTD_COMPRESSBOUND: 64 bytes of margin for an empty input, none from 128 KiB on.
    assert [zstd_compress_bound(n) for n in (0, 1, 128 << 10, 1 << 20)] == [64, 64, (128 << 10) + 512, (1 << 20) + 4096]
    assert [bz2_compress_bound(n) for n in (0, 1, 100, 101)] == [600, 602, 701, 703]
    with pytest.raises(ValueError):
        zstd_compress_bound(-1)


@pytest.mark.parametrize("size", [0, 1, 1000, (128 << 10) - 1, 128 << 10, 300_000])
def test_incompressible_data_stays_within_the_compressors_bounds(size: int) -> None:
    import bz2

    data = np.random.default_rng(size).bytes(size)
    for level in (1, 19):
        assert len(zstandard.ZstdCompressor(level=level).compress(data)) <= zstd_compress_bound(size)
    assert len(bz2.compress(data, 9)) <= bz2_compress_bound(size)


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("size", [0, 5, 70_000, 140_000])
def test_every_codec_stays_within_its_bound_on_incompressible_files(codec: str, size: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(size)
    new = rng.bytes(size)
    patch = make(codec, rng.bytes(max(size // 2, 3)), new, tmp_path)
    assert read_patch_info(write(tmp_path / "p", patch)).body_length <= get_codec(codec).max_body_size(size)
    assert len(patch) <= max_payload_size(codec, size)
    out = tmp_path / "out.bin"
    apply_patch(base_for(codec, tmp_path), tmp_path / "p", out, codec=codec, target_size=size)
    assert out.read_bytes() == new


@given(byte_pairs(max_size=2048))
def test_every_codec_stays_within_its_bound(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    with workdir() as d:
        for codec in CODEC_NAMES:
            assert len(make(codec, old, new, d)) <= max_payload_size(codec, len(new))


def test_the_tensor_codec_falls_back_to_one_literal_within_its_bound(tmp_path: Path) -> None:
    """All of the target as one LITERAL op in full frames: the body the bound is made of, and it decodes."""
    new = np.random.default_rng(1).bytes(tensor_format.FRAME_SIZE + 100)  # two frames
    old = write(tmp_path / "old.bin", b"old bytes")
    chunks = literal_body(len(b"old bytes"), new, level=1)
    assert sum(map(len, chunks)) <= tensor_format.max_body_size(len(new))
    patch = tmp_path / "p.patch"
    with patch.open("wb") as f:
        write_container(
            f,
            codec="tensor",
            base_sha256=hashlib.sha256(b"old bytes").hexdigest(),
            target_sha256=hashlib.sha256(new).hexdigest(),
            target_size=len(new),
            body=chunks,
        )
    apply_patch(old, patch, tmp_path / "out.bin", target_size=len(new))
    assert (tmp_path / "out.bin").read_bytes() == new


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_a_body_longer_than_its_codec_makes_is_refused_before_decoding(
    codec: str, small_patches: dict[str, tuple[bytes, bytes, bytes]], tmp_path: Path
) -> None:
    old, new, patch = small_patches[codec]
    write(tmp_path / "old.bin", old)
    padded = reseal(patch, body_of(patch) + bytes(get_codec(codec).max_body_size(len(new)) + 1 - len(body_of(patch))))
    assert_refused(codec, padded, tmp_path, match="larger than the")
    out = tmp_path / "direct.bin"
    with pytest.raises(PatchError, match="larger than the"):
        get_codec(codec).apply(base_for(codec, tmp_path), write(tmp_path / "p", padded), out)
    assert not out.exists()


@pytest.mark.parametrize(
    ("expected", "error", "match"),
    [
        ({"target_size": -1}, IntegrityError, "patch builds"),
        ({"target_size": 1 << 30}, IntegrityError, "patch builds"),
        ({"target_sha256": "0" * 64}, IntegrityError, "patch builds sha256"),
        ({"codec": "full"}, PatchError, "the plan says"),
    ],
)
def test_a_header_promising_another_target_is_refused_before_a_byte_is_written(
    expected: dict[str, object],
    error: type[Exception],
    match: str,
    small_patches: dict[str, tuple[bytes, bytes, bytes]],
    tmp_path: Path,
) -> None:
    old, new, patch = small_patches["bsdiff4"]
    write(tmp_path / "old.bin", old)
    if expected.get("target_size") == -1:
        expected = {"target_size": len(new) - 1}
    bad = write(tmp_path / "bad.patch", patch)
    out = write(tmp_path / "out.bin", PREVIOUS)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(error, match=match):
        apply_patch(tmp_path / "old.bin", bad, out, **expected)  # type: ignore[arg-type]
    assert out.read_bytes() == PREVIOUS and sorted(p.name for p in tmp_path.iterdir()) == before
    apply_patch(tmp_path / "old.bin", bad, out, codec="bsdiff4", target_size=len(new))
    assert out.read_bytes() == new


def test_bsdiff_diff_and_extra_blocks_together_cannot_exceed_the_target(tmp_path: Path) -> None:
    import bz2

    n = 64
    blocks = [bz2.compress(b""), bz2.compress(bytes(n)), bz2.compress(bytes(1))]
    body = struct.pack("<8sqqq", b"BSDIFF40", len(blocks[0]), len(blocks[1]), n) + b"".join(blocks)
    patch = make("bsdiff4", b"old", bytes(n), tmp_path)
    assert_refused("bsdiff4", reseal(patch, body), tmp_path, match="extra block decompresses past 0 bytes")


# --- hashing -------------------------------------------------------------------------


def test_sha256_file_and_hashing_writer(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes((1 << 20) * 2 + 7)  # spans several read blocks
    path = write(tmp_path / "f.bin", data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    sink = io.BytesIO()
    writer = HashingWriter(sink)
    for i in range(0, len(data), 100_000):
        assert writer.write(data[i : i + 100_000]) == len(data[i : i + 100_000])
    assert (writer.size, writer.hexdigest) == (len(data), hashlib.sha256(data).hexdigest())
    assert sink.getvalue() == data
    assert HashingWriter(io.BytesIO()).hexdigest == hashlib.sha256(b"").hexdigest()
