"""Numpy helpers shared by the data layer, the metrics, the models and the synthetic panel.
Torch-free, so every layer may import it; each helper exists once, here.

* `tie_average_ranks`: cross-sectional ranks with ties averaged (GKX's characteristic ranks,
  Spearman's rank IC).
* `prevailing_mean`: the factor forecast of models without a factor forecaster (GKX; paper
  eq. 33).
"""

from __future__ import annotations

import numpy as np


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
