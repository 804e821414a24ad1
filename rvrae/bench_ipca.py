"""Our IPCA against the reference package `ipca` (bkelly-lab): same answers, timed.

`ipca_benchmark(...)` is the speed study's entry point (`studies/bench_ipca.py` prints it);
`planted_ipca_panel` and `peer_fit` are shared with tests/test_ipca.py, where the peer is the
oracle. The peer is an optional dependency: it is imported only here, on use.
"""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np

from rvrae.data.panel import Panel


def planted_ipca_panel(
    n_stocks: int, n_months: int, n_chars: int, K: int, seed: int = 0, missing: float = 0.1
) -> Panel:
    """A panel drawn from the IPCA model itself: r = ZΓf + noise, Z monthly ranks in [-1, 1],
    about `missing` of the stock-months absent. Total R² of the truth is roughly 20 %."""
    rng = np.random.default_rng(seed)
    T, N, C = n_months, n_stocks, n_chars
    persistent = rng.standard_normal((N, C))  # characteristics are persistent, as real ones
    raw = persistent[None] + 0.5 * rng.standard_normal((T, N, C))
    ranks = raw.argsort(1).argsort(1)  # cross-sectional ranks per month and characteristic
    chars = (2.0 * ranks / (N - 1) - 1.0).astype(np.float32)
    gamma = rng.standard_normal((C, K)) / np.sqrt(C)
    f = 0.01 + 0.05 * rng.standard_normal((T, K))
    signal = np.einsum("tnc,ck,tk->tn", chars, gamma, f)
    ret = signal + 2.0 * signal.std() * rng.standard_normal((T, N))
    mask = rng.uniform(size=(T, N)) > missing
    return Panel.from_arrays(chars, ret, mask, source=f"planted_ipca({N}x{T}x{C}, K={K}, seed={seed})")


def total_r2(panel: Panel, fitted: np.ndarray) -> float:
    """Uncentred pooled R² over the live stock-months (SPEC §4), float64."""
    from rvrae.metrics import r2

    return r2(panel.ret, fitted, panel.mask)


def peer_fit(panel: Panel, K: int, max_iter: int = 10_000, tol: float = 1e-5,
             constant: bool = False):
    """Fit `ipca.InstrumentedPCA(n_factors=K, intercept=False)` on every month of the panel
    (long layout: MultiIndex (entity, time)); returns (fitted [T, N] = Z_tΓf_t, seconds).
    `constant` hands the peer a column of ones as one more instrument (KPS's constant)."""
    from rvrae.models.ipca import instruments

    import pandas as pd
    from ipca import InstrumentedPCA

    t_idx, n_idx = np.nonzero(panel.mask)
    index = pd.MultiIndex.from_arrays([n_idx, t_idx], names=["id", "t"])
    Z = instruments(panel.chars, constant)  # [T, N, C (+1)]
    X = pd.DataFrame(Z[t_idx, n_idx], index=index)
    y = pd.Series(panel.ret[t_idx, n_idx].astype(np.float64), index=index)
    peer = InstrumentedPCA(n_factors=K, intercept=False, max_iter=max_iter, iter_tol=float(tol))
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        peer.fit(X, y, quiet=True)
    seconds = time.perf_counter() - start
    # The peer's months are the sorted unique times: here every month of the panel.
    fitted = np.einsum("tnc,ck,kt->tn", Z, peer.Gamma, peer.Factors)
    return fitted, seconds


def ours_fit(panel: Panel, K: int, max_iter: int = 10_000, tol: float = 1e-5,
             constant: bool = False):
    """Our IPCA on every month of the panel; returns (fitted [T, N], seconds, model)."""
    from rvrae.models.ipca import IPCA

    model = IPCA({"n_factors": K, "max_iter": max_iter, "tol": tol, "constant": constant})
    start = time.perf_counter()
    model.fit(panel, panel.view(np.arange(0)))
    seconds = time.perf_counter() - start
    fitted = np.einsum("tnk,tk->tn", model.betas(panel.chars), model.factors_)
    return fitted, seconds, model


def ipca_benchmark(
    n_stocks: int = 2000, n_months: int = 180, n_chars: int = 46, K: int = 5, seed: int = 0,
    fits: int = 3,
) -> dict:
    """Fit time of our IPCA vs the reference on one planted panel, at the same tolerance.
    Both are warmed up first (the peer JIT-compiles with numba), then each side fits the panel
    `fits` times and its time is the median: ours takes well under 0.1 s, so one fit alone is
    at the mercy of a load spike on a shared machine (single fits here varied 0.07-0.10 s)."""
    warm = planted_ipca_panel(50, 12, 6, 1, seed)
    peer_fit(warm, 1, max_iter=3)
    ours_fit(warm, 1, max_iter=3)
    panel = planted_ipca_panel(n_stocks, n_months, n_chars, K, seed)
    ours = [ours_fit(panel, K) for _ in range(fits)]
    peer = [peer_fit(panel, K) for _ in range(fits)]
    (fit_ours, _, model), (fit_peer, _) = ours[0], peer[0]
    t_ours = float(np.median([o[1] for o in ours]))
    t_peer = float(np.median([p[1] for p in peer]))
    return {
        "n_stocks": n_stocks, "n_months": n_months, "n_chars": n_chars, "K": K, "seed": seed,
        "time_ours": t_ours, "time_peer": t_peer, "ratio": t_peer / t_ours, "fits": fits,
        "r2_ours": total_r2(panel, fit_ours), "r2_peer": total_r2(panel, fit_peer),
        "iters_ours": model.n_iter_,
        "fitted_corr": float(np.corrcoef(fit_ours[panel.mask], fit_peer[panel.mask])[0, 1]),
    }
