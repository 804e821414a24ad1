"""Cross-sectional preprocessing (SPEC §2.2, the GKX / CPZ convention).

Each month, each characteristic is ranked across the stocks that have it and mapped to
[-1, 1] by `2 * (rank - 1) / (n - 1) - 1` (ties get their average rank); missing values
become 0, the cross-sectional median. A characteristic missing for every stock in a month
is therefore all zeros that month. A month with a single observed value maps it to 0.
"""

from __future__ import annotations

import numpy as np


def rank_to_unit(x: np.ndarray, month_chunk: int = 16) -> np.ndarray:
    """[T, N, C] raw characteristics (NaN = missing) -> [T, N, C] float32 ranks in [-1, 1].

    Batched over months and characteristics: one sort per chunk of months along the stock
    axis, then average ranks over tie groups via running max / min of the group bounds.
    Chunking keeps the int64 sort indices small at paper scale (5,682 x 46 per month).
    """
    x = np.asarray(x)
    T, N, C = x.shape
    out = np.zeros((T, N, C), dtype=np.float32)
    for t0 in range(0, T, month_chunk):
        out[t0 : t0 + month_chunk] = _rank_block(x[t0 : t0 + month_chunk])
    return out


def _rank_block(x: np.ndarray) -> np.ndarray:
    B, N, C = x.shape
    v = np.moveaxis(x, 1, 2).astype(np.float32)  # [B, C, N]
    miss = np.isnan(v)
    n = (N - miss.sum(axis=-1, keepdims=True)).astype(np.float32)  # [B, C, 1] observed
    # +inf instead of NaN: sorts last as well, and argsort runs ~2.5x faster without NaNs
    # (the loader rejects real infs, so +inf here always means missing)
    v[miss] = np.inf
    order = np.argsort(v, axis=-1)  # ties are averaged below, so any sort order will do
    s = np.take_along_axis(v, order, axis=-1)  # sorted values, missing at the end
    pos = np.broadcast_to(np.arange(N, dtype=np.int32), s.shape)
    # tie groups: a new group starts where the sorted value changes; average rank of a
    # group = (its first + its last position) / 2
    new = np.ones(s.shape, dtype=bool)
    np.not_equal(s[..., 1:], s[..., :-1], out=new[..., 1:])
    first = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)
    end = np.ones(s.shape, dtype=bool)
    end[..., :-1] = new[..., 1:]
    last = np.minimum.accumulate(np.where(end, pos, N)[..., ::-1], axis=-1)[..., ::-1]
    rank0 = 0.5 * (first + last).astype(np.float32)  # 0-based average rank
    u = np.where(n > 1, rank0 * (2.0 / np.maximum(n - 1, 1)) - 1.0, 0.0).astype(np.float32)
    u[np.isinf(s)] = 0.0  # missing -> 0 (the cross-sectional median)
    ranked = np.empty_like(u)
    np.put_along_axis(ranked, order, u, axis=-1)
    return np.moveaxis(ranked, 2, 1)


def missing_share(x: np.ndarray, mask: np.ndarray) -> float:
    """Share of missing characteristic values over the stock-months present (before filling)."""
    present = int(mask.sum()) * x.shape[-1]
    if present == 0:
        return float("nan")
    return float(np.isnan(x)[mask].sum() / present)
