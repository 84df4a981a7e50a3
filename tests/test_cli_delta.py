"""``edgerec delta make|apply|info`` on real files, as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from edgerec.codecs import CODEC_NAMES


def edgerec(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgerec", *map(str, args)], capture_output=True, text=True, timeout=120
    )


def test_make_auto_info_apply_round_trip(tmp_path: Path) -> None:
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    data = bytearray(os.urandom(200_000))
    old.write_bytes(bytes(data))
    data[5000:5010] = b"0123456789"
    new.write_bytes(bytes(data) + b"tail")
    made = edgerec("delta", "make", old, new, "-o", tmp_path / "p.erpatch", "--json")
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    assert {t["codec"] for t in report["tried"]} == set(CODEC_NAMES)
    assert report["bytes"] == min(t["bytes"] for t in report["tried"]) < 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.bin", "old.bin", "p.erpatch"], "scratch files left"

    info = json.loads(edgerec("delta", "info", tmp_path / "p.erpatch", "--json").stdout)
    assert info["codec"] == report["codec"] and info["target_size"] == len(data) + 4

    applied = edgerec("delta", "apply", old, tmp_path / "p.erpatch", "-o", tmp_path / "out.bin")
    assert applied.returncode == 0, applied.stderr
    assert (tmp_path / "out.bin").read_bytes() == new.read_bytes()


def test_apply_of_a_corrupt_patch_fails_cleanly(tmp_path: Path) -> None:
    old, new = tmp_path / "old.bin", tmp_path / "new.bin"
    old.write_bytes(os.urandom(50_000))
    new.write_bytes(old.read_bytes()[::-1])
    assert edgerec("delta", "make", old, new, "-o", tmp_path / "p", "--codec", "bsdiff4").returncode == 0
    patch = bytearray((tmp_path / "p").read_bytes())
    patch[len(patch) // 2] ^= 0x55
    (tmp_path / "p").write_bytes(bytes(patch))
    result = edgerec("delta", "apply", old, tmp_path / "p", "-o", tmp_path / "out.bin")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: PatchError"), result.stderr
    assert not (tmp_path / "out.bin").exists()
