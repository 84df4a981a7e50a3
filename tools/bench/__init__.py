"""Benchmarks (``make bench``, ``make bench-predict``, ``make bench-fleet``), each runnable as
``python -m edgerec.tools.bench.<name> --help``:

:mod:`.delta`
    Delta payloads against bsdiff4, HDiffPatch, ``zstd --patch-from`` and xdelta3.
:mod:`.quant`
    Quantized artifacts: size, accuracy and latency per recipe and runtime.
:mod:`.predict`
    The device's predict path: cache hits, policy overhead, fallback, micro-batching, failures.
:mod:`.fleet`
    A fleet updating at once against a default ``edgerec serve``.
:mod:`.rollout`
    Staged rollouts of a bad, a worse and a good version to a simulated fleet (``make bench-rollout``).

Results they measured, with the command for each, are in ``docs/performance.md``.
"""
