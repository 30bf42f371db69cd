"""How far into a tail a truncated normal's interval lies, and when that is too far to draw.

Both engines draw a truncated normal deep into a tail: the keyed engine inverts the CDF in
log space (docs/keyed-stream.md), torch 2.x rejection-samples. Past about 40 standard
deviations both fail: the keyed engine's inverse CDF (AS 241) runs beyond its range, its
error a growing share of the tail's spread (in float32 1e-4 of it at 40 std, 1% at 60,
half at 150; in float64 at 1000 std nearly every value lands on the bound), and torch's
rejection sampler accepts almost nothing (seconds per thousand values at 150 std, more the
deeper and wider the interval; the inverse CDF of older torch releases clamps every value
to a bound). Such an interval holds a probability below
1e-350: nearly always a units mistake, absolute bounds (``trunc_normal_``'s ``a``, ``b``)
written as multiples of a small std, e.g. ``std=0.02, a=3, b=4`` (150 std from the mean).
"""

from __future__ import annotations

import math

__all__ = ["MAX_DEPTH", "log_mass", "log_ndtr", "truncation_problem"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)

#: The farthest (in std from the mean) the nearer bound of a truncation interval may lie
MAX_DEPTH = 40.0


def log_ndtr(x: float) -> float:
    """log Phi(x) for N(0, 1) in double, accurate far into the lower tail.

    The keyed stream's truncated-normal constants come from this exact arithmetic
    (docs/keyed-stream.md): change it only with a new STREAM_VERSION.
    """
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x / math.sqrt(2.0)))
    # Mills ratio: Phi(x) = pdf(x) / |x| * (1 - 1/x^2 + 3/x^4 - 15/x^6 + 105/x^8 - ...)
    x2 = x * x
    series = 1.0 - 1.0 / x2 + 3.0 / x2**2 - 15.0 / x2**3 + 105.0 / x2**4
    return -0.5 * x2 - math.log(-x) - 0.5 * math.log(2.0 * math.pi) + math.log(series)


def log_mass(alpha: float, beta: float) -> float:
    """log(Phi(beta) - Phi(alpha)) for alpha < beta (standard units), in either tail."""
    if alpha + beta > 0:  # reflect into the lower tail, where log_ndtr keeps its precision
        alpha, beta = -beta, -alpha
    if not beta > alpha:
        return -math.inf
    la, lb = log_ndtr(alpha), log_ndtr(beta)
    d = -math.expm1(la - lb)
    if d > 0.0:
        return lb + math.log(d)
    # an interval too narrow for la and lb to differ: its width times the density at its end nearer the mean
    return -0.5 * beta * beta - _LOG_SQRT_2PI + math.log(beta - alpha)


def truncation_problem(mean: float, std: float, a: float, b: float, *, std_units: bool = False) -> str | None:
    """None if N(mean, std^2) restricted to the absolute bounds [a, b] (finite, std > 0,
    a < b) can be drawn faithfully; else why not, naming the bounds and the fix.
    ``std_units``: ``a`` and ``b`` are ``lower`` and ``upper`` in standard units
    (``trunc_normal_std_units_``). Narrow intervals are fine at any width: only the
    distance from the mean matters."""
    alpha, beta = (a, b) if std_units else ((a - mean) / std, (b - mean) / std)
    depth = max(alpha, -beta)
    if not depth > MAX_DEPTH:  # (nan: the caller's checks name it)
        return None
    lm = log_mass(alpha, beta)
    mass = f"about 1e{math.floor(lm / math.log(10))}" if math.isfinite(lm) else "0 in float64"
    bounds = (f"[lower, upper] = [{a:g}, {b:g}] (standard units) starts" if std_units
              else f"[a, b] = [{a:g}, {b:g}] starts")
    why = (f"{bounds} {depth:.4g} std from the mean (mean={mean:g}, std={std:g}), beyond the {MAX_DEPTH:g} std up "
           f"to which the engines draw a truncated normal faithfully: it holds a probability of {mass}, and the "
           "values would pile up at the bound")
    if std_units:
        return why
    return why + (". a and b are absolute values: for bounds in standard units use a = mean + lower * std, "
                  "b = mean + upper * std")
