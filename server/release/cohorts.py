"""Sticky cohorts: which wave of a rollout a device belongs to.

A device's bucket is a number in ``[0, BUCKETS)`` from ``sha256(seed || 0x00 || device id)``, the
seed being the rollout's own. It depends on nothing else, so a device keeps its bucket across checks,
replicas, halts and resumes, a device seen for the first time mid-rollout gets its bucket by the same
rule, and a wave of p percent holds the buckets below ``p * BUCKETS / 100``: widening a wave only
adds devices. Another rollout (another seed) draws its cohorts afresh.
"""

from __future__ import annotations

import hashlib

__all__ = ["BUCKETS", "bucket", "in_wave", "new_seed"]

BUCKETS = 1_000_000
"""Buckets per rollout: waves are exact to 0.0001 percent."""


def bucket(seed: str, device_id: str) -> int:
    """The device's bucket in the rollout seeded by ``seed``."""
    digest = hashlib.sha256(seed.encode() + b"\0" + device_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def in_wave(seed: str, device_id: str, percent: float) -> bool:
    """Whether the device is among the first ``percent`` percent of the rollout seeded by ``seed``."""
    return bucket(seed, device_id) < round(percent * BUCKETS / 100)


def new_seed() -> str:
    """A fresh random seed for a new rollout (32 hex digits)."""
    import secrets

    return secrets.token_hex(16)
