"""The few statistical tests the rollout gates use, exact where counts are small (no scipy needed)."""

from __future__ import annotations

import math

__all__ = ["fisher_lower_p", "normal_cdf", "proportion_drop_p", "rate_ratio_p"]

# Beyond this many terms the exact test gives way to the normal approximation (counts are then large).
MAX_EXACT_TERMS = 20_000
# An expected cell count under which the normal approximation is not trusted.
MIN_EXPECTED = 5.0


def normal_cdf(z: float) -> float:
    """P(Z <= z) for a standard normal Z."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_lower_p(x_t: int, n_t: int, x_c: int, n_c: int) -> float:
    """One-sided Fisher exact p-value that the treatment's proportion is lower: P(X <= x_t) for X
    hypergeometric (``n_t`` draws from ``n_t + n_c`` with ``x_t + x_c`` successes)."""
    total, successes = n_t + n_c, x_t + x_c
    low = max(0, successes - n_c)
    log_denominator = _log_comb(total, n_t)
    p = 0.0
    for x in range(low, x_t + 1):
        p += math.exp(_log_comb(successes, x) + _log_comb(total - successes, n_t - x) - log_denominator)
    return min(1.0, p)


def proportion_drop_p(x_t: int, n_t: int, x_c: int, n_c: int) -> tuple[float, float]:
    """(z, one-sided p-value) against "the treatment's proportion x_t/n_t is not lower than the control's".

    A pooled two-proportion z-test; Fisher's exact test when an expected cell is under 5 (z is then
    still the z-statistic, for reading). Needs n_t, n_c > 0 and 0 <= x <= n.
    """
    if n_t <= 0 or n_c <= 0 or not (0 <= x_t <= n_t and 0 <= x_c <= n_c):
        raise ValueError(f"need 0 <= x <= n and n > 0, got {x_t}/{n_t}, {x_c}/{n_c}")
    pooled = (x_t + x_c) / (n_t + n_c)
    variance = pooled * (1 - pooled) * (1 / n_t + 1 / n_c)
    z = 0.0 if variance == 0 else (x_t / n_t - x_c / n_c) / math.sqrt(variance)
    expected = min(n * q for n in (n_t, n_c) for q in (pooled, 1 - pooled))
    if expected < MIN_EXPECTED and min(x_t + x_c, n_t) < MAX_EXACT_TERMS:
        return z, fisher_lower_p(x_t, n_t, x_c, n_c)
    return z, normal_cdf(z) if variance > 0 else 1.0


def rate_ratio_p(events_t: float, exposure_t: float, events_c: float, exposure_c: float) -> tuple[float, float]:
    """(log rate ratio, two-sided p-value) against "the two Poisson rates events/exposure are equal".

    The log of the ratio of rates has variance about 1/events_t + 1/events_c; needs every argument > 0.
    """
    if min(events_t, exposure_t, events_c, exposure_c) <= 0:
        raise ValueError("every count and exposure must be > 0")
    log_ratio = math.log((events_t / exposure_t) / (events_c / exposure_c))
    z = log_ratio / math.sqrt(1 / events_t + 1 / events_c)
    return log_ratio, min(1.0, 2 * normal_cdf(-abs(z)))
