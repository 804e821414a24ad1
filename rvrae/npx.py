"""Numpy helpers shared by the data layer, the metrics, the models and the synthetic panel.
Torch-free, so every layer may import it; each helper exists once, here.

* `tie_average_ranks`: cross-sectional ranks with ties averaged (GKX's characteristic ranks,
  Spearman's rank IC).
* `prevailing_mean`: the factor forecast of models without a factor forecaster (GKX; paper
  eq. 33).
* `prevailing_ar1`: the same with each factor's own AR(1) dynamics, fitted on the rows before.
* `ar1_factor_tstats`, `bonferroni_t`: each factor's out-of-sample AR(1) test and its critical
  value over the factors (`NeuralConfig.forecast_test`).
* `ls_factors`: each month's cross-sectional least-squares factors on given betas (IPCA's
  realised factors; the ceiling regression of `rvrae.metrics.r2_beta`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtri


def tie_average_ranks(v: np.ndarray, dtype=np.float64) -> np.ndarray:
    """0-based ranks along the last axis, ties sharing the mean of their positions, in
    `dtype`. Callers mark missing entries with +inf: they sort last and rank after every
    observed value (then mask them out).

    One argsort over the whole array, then each tie group's first and last sorted position
    by a running max / min: no Python loop over rows."""
    n = v.shape[-1]
    order = np.argsort(v, axis=-1)  # ties are averaged below, so any sort order will do
    s = np.take_along_axis(v, order, axis=-1)
    pos = np.broadcast_to(np.arange(n, dtype=np.int32), s.shape)
    new = np.ones(s.shape, dtype=bool)  # a tie group starts where the sorted value changes
    np.not_equal(s[..., 1:], s[..., :-1], out=new[..., 1:])
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)
    end = np.ones(s.shape, dtype=bool)
    end[..., :-1] = new[..., 1:]
    last = np.minimum.accumulate(np.where(end, pos, n)[..., ::-1], axis=-1)[..., ::-1]
    rank0 = (first + last).astype(dtype) * dtype(0.5)
    ranks = np.empty(s.shape, dtype=dtype)
    np.put_along_axis(ranks, order, rank0, axis=-1)
    return ranks


def prevailing_mean(f_all: np.ndarray) -> np.ndarray:
    """[T, K] -> [T, K] float32: row t is the mean of rows 0..t-1 (zeros for t = 0)."""
    csum = np.cumsum(f_all, axis=0, dtype=np.float64)
    out = np.zeros_like(csum)
    out[1:] = csum[:-1] / np.arange(1, len(f_all))[:, None]
    return out.astype(np.float32)


def prior_spread(z_prior: np.ndarray, z_post: np.ndarray) -> float:
    """How much a prior's mean moves from month to month against the posterior's: the mean
    over latent dimensions k of std_t(z_prior[:, k]) / std_t(z_post[:, k]), both [t, K]
    (dimensions whose posterior does not move are left out; NaN if none moves). 0: the prior
    forecasts the same latent factors every month, whatever happened before."""
    prior, post = np.asarray(z_prior, np.float64), np.asarray(z_post, np.float64)
    sd_post = post.std(axis=0)
    moving = sd_post > 0
    if len(post) < 2 or not moving.any():
        return math.nan
    return float(np.mean(prior.std(axis=0)[moving] / sd_post[moving]))


def clustered_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """The least-squares slope b through the origin of y on x, both [t, n] and pooled over
    every cell, and its t-statistic with the error clustered by row (month: a month's stocks
    share its factor shock, so they are not independent draws); month t's score is
    Σ_n x (y − b x). (0, 0) where x is all zero."""
    xx = float(np.sum(x * x))
    if xx <= 0:
        return 0.0, 0.0
    b = float(np.sum(x * y)) / xx
    score = np.sum(x * (y - b * x), axis=1)  # [t]
    se = float(np.sqrt(np.sum(score * score))) / xx
    return b, (b / se if se > 0 else (math.inf if b > 0 else 0.0))


def ar1_factor_tstats(f: np.ndarray, fbar: np.ndarray, dev: np.ndarray) -> np.ndarray:
    """[t, K] three times -> [K]: for each factor k, the t-statistic of the least-squares slope
    through the origin of f_k − f̄_k (the realised factor against its prevailing mean) on
    dev_k (a forecast's deviation from the mean, made before the month: `prevailing_ar1`),
    one row a month, the error heteroskedasticity-robust (`clustered_slope`, one cell a
    month): the forecast tested out of sample, factor by factor."""
    y = np.asarray(f, dtype=np.float64) - fbar
    x = np.asarray(dev, dtype=np.float64)
    return np.array([clustered_slope(x[:, k : k + 1], y[:, k : k + 1])[1] for k in range(x.shape[1])])


def bonferroni_t(k: int, size: float = 0.05) -> float:
    """The two-sided Bonferroni critical t for k tests at family-wise `size`: Φ⁻¹(1 − size / 2k)
    (2.58 for k = 5 at 5 %)."""
    return float(ndtri(1.0 - size / (2 * k)))


def shrinkage(t: float) -> float:
    """(1 − 1/t²)⁺, 0 for t ≤ 0: an estimate with t-statistic t has E[b̂²] = b² + se², so
    b²/(b² + se²) ≈ 1 − 1/t² is the plug-in squared-error-optimal share of it to keep."""
    return max(0.0, 1.0 - 1.0 / t**2) if t > 0 else 0.0


def prevailing_ar1(f_all: np.ndarray, min_pairs: int = 12) -> np.ndarray:
    """[T, K] -> [T, K] float32: row t is a_k + b_k f[t-1, k], (a_k, b_k) the least-squares
    AR(1) of factor k on the pairs (f[s-1], f[s]) for s < t; `prevailing_mean` where fewer
    than `min_pairs` pairs exist or f[:t-1, k] does not vary. Cumulative sums, no loop."""
    f = np.asarray(f_all, dtype=np.float64)
    out = prevailing_mean(f).astype(np.float64)
    if len(f) < 3:
        return out.astype(np.float32)
    x, y = f[:-1], f[1:]  # pair j = (f[j], f[j + 1])
    c = {k: np.cumsum(v, axis=0) for k, v in (("x", x), ("y", y), ("xx", x * x), ("xy", x * y))}
    n = np.arange(1, len(x) + 1, dtype=np.float64)[:, None]  # pairs 0..j
    sxx = c["xx"] - c["x"] ** 2 / n
    sxy = c["xy"] - c["x"] * c["y"] / n
    ok = (n >= min_pairs) & (sxx > 1e-12 * np.maximum(c["xx"], 1e-300))
    b = np.where(ok, sxy / np.where(ok, sxx, 1.0), 0.0)
    a = (c["y"] - b * c["x"]) / n
    # row t (t >= 2) uses pairs 0..t-2, i.e. cumulative row t-2, and forecasts from f[t-1]
    fc = a[:-1] + b[:-1] * f[1:-1]  # rows 2..T-1
    out[2:] = np.where(ok[:-1], fc, out[2:])
    return out.astype(np.float32)


def ls_factors(beta: np.ndarray, ret: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[T, N, K], [T, N], [T, N] -> [T, K] float64: f_t = argmin Σ_i (r_it − β_it f)² over the
    month's live stocks. Batched over months (normal equations); a tiny ridge relative to the
    month's scale (and never 0) keeps a month with a collinear or all-zero β solvable (f = 0
    there)."""
    mask = np.asarray(mask, dtype=bool)
    b = np.where(mask[..., None], np.asarray(beta, dtype=np.float64), 0.0)
    r = np.where(mask, np.asarray(ret, dtype=np.float64), 0.0)
    gram = np.einsum("tnk,tnj->tkj", b, b)
    rhs = np.einsum("tnk,tn->tk", b, r)
    ridge = 1e-10 * np.trace(gram, axis1=1, axis2=2) / b.shape[-1] + 1e-300  # [t]
    return np.linalg.solve(gram + ridge[:, None, None] * np.eye(b.shape[-1]), rhs[..., None])[..., 0]
