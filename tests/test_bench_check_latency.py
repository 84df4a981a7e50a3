"""The check-latency benchmark's verdicts (``make bench-fleet`` measures; here only its judging)."""

from __future__ import annotations

from edgerec.tools.bench.check_latency import CheckLatency, targets


def test_the_p99_target_counts_the_slowest_hundredth_and_needs_deltas_and_no_failure() -> None:
    fast = CheckLatency([1, 2], 4, build_s=5.0, latencies_ms=[5.0] * 99 + [49.0], deltas_offered=True)
    assert [t.met for t in targets(fast)] == [True, True]
    slow = CheckLatency([1, 2], 4, build_s=5.0, latencies_ms=[5.0] * 98 + [60.0, 70.0], deltas_offered=True)
    assert [t.met for t in targets(slow)] == [False, True]
    assert slow.summary()["p99_ms"] == 70.0 and slow.summary()["checks"] == 100
    never_built = CheckLatency([1], 4, build_s=600.0, latencies_ms=[5.0], deltas_offered=False)
    assert [t.met for t in targets(never_built)] == [True, False]
    failed = CheckLatency([1], 4, build_s=5.0, latencies_ms=[5.0], errors=1, deltas_offered=True)
    assert [t.met for t in targets(failed)] == [True, False]
    assert [t.met for t in targets(CheckLatency([1], 4))] == [False, False]  # nothing measured meets nothing
