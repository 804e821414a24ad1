"""Cross-sectional preprocessing (SPEC §2.2, the GKX / CPZ convention).

Each month, each characteristic is ranked across the stocks that have it and mapped to
[-1, 1] by `2 * (rank - 1) / (n - 1) - 1` (ties get their average rank); missing values
become 0, the cross-sectional median. A characteristic missing for every stock in a month
is therefore all zeros that month. A month with a single observed value maps it to 0.
"""

from __future__ import annotations

import numpy as np

from rvrae.npx import tie_average_ranks


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
    rank0 = tie_average_ranks(v, np.float32)  # 0-based, ties averaged; missing rank last
    u = np.where(n > 1, rank0 * (2.0 / np.maximum(n - 1, 1)) - 1.0, 0.0).astype(np.float32)
    u[miss] = 0.0  # missing -> 0 (the cross-sectional median)
    return np.moveaxis(u, 2, 1)


def missing_share(x: np.ndarray, mask: np.ndarray) -> float:
    """Share of missing characteristic values over the stock-months present (before filling)."""
    present = int(mask.sum()) * x.shape[-1]
    if present == 0:
        return float("nan")
    return float(np.isnan(x)[mask].sum() / present)


def squared_ranks(chars: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[T, N, C] ranks, [T, N] mask -> [T, N, C] their squares, centred each month over the
    stocks present (`--squares`, README "Ranks and their squares").

    u² - mean(u²) over the month's stocks: a symmetric (bump- or U-shaped) dependence on a
    characteristic, which a model linear in the ranks and the managed portfolios on them
    cannot see (studies/FINDINGS.md, "Panel K's missing betas"), becomes linear in these
    columns. Centring keeps SPEC §2.2's conventions: a characteristic missing for every stock
    in a month is all 0 that month here too, a stock without a return that month is 0, and a
    missing value (rank 0, the median) is the median stock's square (about -1/3).
    """
    m = np.asarray(mask, dtype=bool)[..., None]  # [T, N, 1]
    sq = np.square(chars, dtype=np.float32)
    n = np.maximum(m.sum(axis=1, keepdims=True), 1)  # [T, 1, 1] stocks present
    mean = np.where(m, sq, 0.0).sum(axis=1, keepdims=True, dtype=np.float64) / n  # [T, 1, C]
    # (a characteristic missing for every stock is all 0: its squares and their mean are 0)
    return np.where(m, sq - mean, 0.0).astype(np.float32)
