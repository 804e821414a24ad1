"""The paper's metrics (SPEC §4): pure numpy functions, arrays in, numbers out.

Every function takes `[t, n]` arrays over the scored months (`ret`, `mask` bool, forecasts)
and is vectorised over months and stocks. Stock-months outside `mask` are ignored, whatever
they hold (NaN included). Computation is in float64.

Conventions where the paper is silent (SPEC §4):
* R² is uncentred and pooled over every masked stock-month (GKX, CPZ; paper eqs. 32–33).
* IC / Rank IC are per-month Pearson / Spearman correlations (ties get the average rank);
  months with fewer than `min_stocks` (10) stocks are skipped (NaN in the series).
* Long-short: each month, stocks sorted on r_hat; the top decile is held long and the bottom
  decile short, equal-weighted, k = floor(n/10) stocks per leg (ties broken by stock order).
  Turnover compares this month's target weights with last month's weights *drifted* by last
  month's returns, w_i (1 + r_i) / Σ_j w_j (1 + r_j), normalised within each leg, and sums the
  absolute changes over both legs (so it lies in [0, 4]). The first scored month builds the
  book from cash (turnover 2); a month with too few stocks holds nothing (NaN return), so the
  month after it rebuilds from cash too. Net = gross − cost × turnover (30 bps).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import norm

from rvrae.npx import ls_factors, tie_average_ranks

TEST_METRICS = (
    "r2_total", "r2_pred", "r2_forecast", "r2_forecast_xs", "r2_beta", "ic", "icir", "rank_ic", "rank_icir",
    "sharpe", "sharpe_net", "turnover", "coverage90", "nll",
)  # fmt: skip
MIN_STOCKS = 10  # months with fewer stocks are skipped (SPEC §4)
COST = 0.003  # 30 bps per unit of turnover (paper Table II, after GKX)


def _f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def r2(ret, fitted, mask) -> float:
    """1 − Σ(r − fitted)² / Σ r², uncentred, pooled over masked stock-months."""
    mask = np.asarray(mask, dtype=bool)
    r = _f64(ret)[mask]
    e = r - _f64(fitted)[mask]
    den = float(np.sum(r * r))
    return float(1.0 - np.sum(e * e) / den) if den > 0 else math.nan


def _demean(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """x less each month's (row's) mean over its masked entries, 0 outside the mask; x is 0
    outside the mask already."""
    n = np.maximum(mask.sum(axis=1), 1)
    return np.where(mask, x - (x.sum(1) / n)[:, None], 0.0)


def r2_cross_section(ret, fitted, mask) -> float:
    """The part of `r2(ret, fitted, mask)` that the cross-section earns: with d and d̂ the
    returns and the forecast less each month's equal-weighted mean over its live stocks,
    (Σ d² − Σ (d − d̂)²) / Σ r². Within a month the errors split into the deviations' and
    the mean's, so `r2` minus this is the part the month's level earns, Σ_t n_t (m_t² −
    (m_t − m̂_t)²) / Σ r²: a forecast R² below zero is then read as the market's level
    (timing) or the stocks' ranking (studies/FINDINGS.md, "The forecast's level and its
    cross-section")."""
    mask = np.asarray(mask, dtype=bool)
    r, f = np.where(mask, _f64(ret), 0.0), np.where(mask, _f64(fitted), 0.0)
    den = float(np.sum(r * r))
    if den <= 0:
        return math.nan
    d = _demean(r, mask)
    e = d - _demean(f, mask)
    return float((np.sum(d * d) - np.sum(e * e)) / den)


def r2_total(ret, beta, f_post, mask) -> float:
    """Total R² (eq. 32): fitted = β̂_t' f̂_t with the factors inferred from month t."""
    return r2(ret, np.einsum("tnk,tk->tn", _f64(beta), _f64(f_post)), mask)


def r2_beta(ret, beta, mask) -> float:
    """The ceiling of a model's factor path: total R² when each month's factors are the
    cross-sectional least-squares fit of that month's returns on the model's own β̂_t
    (f_t = argmin Σ_i (r_it − β̂_it f)², what IPCA's realised factors are). A model whose
    R²_total sits well below it loses in its factor network what its betas know; one that
    reaches it but stays low has weak betas (`rvrae.npx.ls_factors`)."""
    mask = np.asarray(mask, dtype=bool)
    b = np.where(mask[..., None], _f64(beta), 0.0)  # [t, n, K]
    return r2(ret, np.einsum("tnk,tk->tn", b, ls_factors(b, ret, mask)), mask)


SPAN_PREFIX = "span_r2_"  # results columns span_r2_<k>, k = 1..K_true (`span_r2`)


def span_factor(column: str) -> str | None:
    """The true factor number k of a `span_r2_<k>` column, else None."""
    k = column[len(SPAN_PREFIX):] if column.startswith(SPAN_PREFIX) else ""
    return k if k.isdigit() else None


def _on_span(beta, y, mask, ridge: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fit, y, w): the month-by-month least-squares fit of y [t, n, k] on [1, β̂_t] over the
    masked stocks (every month in one batched solve), y as fitted (float64, 0 where masked
    out) and the mask as weights [t, n, 1]."""
    w = np.asarray(mask, dtype=bool)[..., None].astype(np.float64)
    x = np.concatenate([np.ones_like(w), _f64(beta)], axis=-1) * w  # [t, n, 1 + K]
    y = _f64(y) * w
    xtx = np.einsum("tnp,tnq->tpq", x, x) + ridge * np.eye(x.shape[-1])
    coef = np.linalg.solve(xtx, np.einsum("tnp,tnk->tpk", x, y))
    return np.einsum("tnp,tpk->tnk", x, coef), y, w


def span_r2(beta, beta_true, mask, ridge: float = 1e-10) -> np.ndarray:
    """[K_true]: for each true factor k, the R² of a month-by-month least-squares regression
    of its true betas on [1, β̂_t] (centred within the month, pooled over masked stock-months):
    how much of that factor's cross-section the model's betas span, whatever their rotation.
    A planted panel only (the truth is known); the diagnostic behind "Where Rank IC is lost"
    in studies/FINDINGS.md (RVRAE's betas span the small priced factor at 0.55-0.67, CA's at
    0.84-0.89)."""
    mask = np.asarray(mask, dtype=bool)
    fit, y, w = _on_span(beta, beta_true, mask, ridge)
    resid = (y - fit) * w
    n = np.maximum(mask.sum(axis=1), 1)[:, None]  # [t, 1]
    centred = (y - (y.sum(axis=1) / n)[:, None, :]) * w
    den = np.sum(centred * centred, axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, 1.0 - np.sum(resid * resid, axis=(0, 1)) / den, np.nan)


SPAN_RANK_IC = "rank_ic_span"  # results column (`span_rank_ic`)
TRUE_RANK_IC = "rank_ic_true"  # results column (`true_rank_ic`)


def span_rank_ic(beta, r_hat_true, ret, mask, ridge: float = 1e-10) -> float:
    """The Rank IC its betas allow a model: the mean monthly Rank IC against `ret` of the
    true expected return `r_hat_true` [t, n] (a planted panel's β_t E(f_t | past)) projected
    each month on [1, β̂_t]. Premia and forecaster aside, no r̂ = β̂ f̂ ranks the true expected
    return better than its projection (up to the noise in ranking against realised returns).
    A model's Rank IC well below it loses in its premia or forecast; a low value means its
    betas miss the priced factors (`span_r2` says which). The oracle's equals its Rank IC."""
    fit, _, _ = _on_span(beta, _f64(r_hat_true)[..., None], mask, ridge)
    return rank_ic(fit[..., 0], ret, mask)


def true_rank_ic(r_hat, r_hat_true, mask) -> float:
    """The mean monthly Rank IC of a forecast against the true expected return `r_hat_true`
    [t, n] (a planted panel's β_t E(f_t | past)) instead of the realised return: the same
    ranking judged without the returns' noise. Realised Rank ICs are small (the oracle's own is
    ~0.1), and the month-by-month difference of two forecasts' Rank IC against the returns has
    a standard deviation of 0.03-0.08, a standard error of 0.004-0.013 over 36 test months, so
    two forecasts whose rankings of the truth differ by 0.09 can swap places on the returns
    (studies/FINDINGS.md, "Choosing the basis on validation"). The oracle's is 1."""
    return rank_ic(r_hat, r_hat_true, mask)


def r2_pred(ret, beta, lam, mask) -> float:
    """Predictive R² (eq. 33): fitted = β̂_t' λ̂_t, λ̂_t the prevailing mean of the factors."""
    return r2(ret, np.einsum("tnk,tk->tn", _f64(beta), _f64(lam)), mask)


def _ranks(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-row ranks 1..n of the masked entries (average rank for ties), NaN elsewhere.

    Masked-out entries are set to +inf so they sort last (rvrae.npx.tie_average_ranks)."""
    ranks = tie_average_ranks(np.where(mask, x, np.inf)) + 1.0
    return np.where(mask, ranks, np.nan)


def ic_series(r_hat, ret, mask, rank: bool = False, min_stocks: int = MIN_STOCKS) -> np.ndarray:
    """[t] per-month Pearson (or Spearman, rank=True) correlation of r_hat with ret; NaN for
    months with fewer than `min_stocks` stocks (SPEC §4: skipped). A month with enough stocks
    whose forecast (or return) is the same for every stock scores 0: it ranks nothing, and
    skipping it would let a forecast that is constant in most months be scored on the few
    where it is not (the long-short, which holds a book every month, counts them too)."""
    x, y = _f64(r_hat), _f64(ret)
    mask = np.asarray(mask, dtype=bool) & np.isfinite(x) & np.isfinite(y)
    if rank:
        x, y = _ranks(x, mask), _ranks(y, mask)
    cnt = mask.sum(axis=1)
    xc = _demean(np.where(mask, x, 0.0), mask)
    yc = _demean(np.where(mask, y, 0.0), mask)
    sx, sy = (xc * xc).sum(1), (yc * yc).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (xc * yc).sum(1) / np.sqrt(sx * sy)
    # no spread: what is left after demeaning is rounding (1e-17 of the values), not a ranking
    flat = lambda v, ss: ~(ss > 1e-20 * np.where(mask, v * v, 0.0).sum(1))  # noqa: E731
    out[flat(x, sx) | flat(y, sy)] = 0.0
    out[cnt < min_stocks] = np.nan
    return out


def icir(series) -> float:
    """mean / std (ddof 1) of a monthly IC series over its non-NaN months."""
    s = _f64(series)
    s = s[np.isfinite(s)]
    if len(s) < 2:
        return math.nan
    sd = s.std(ddof=1)
    return float(s.mean() / sd) if sd > 0 else math.nan


def paired_t(series, other) -> float:
    """The t-statistic of the monthly differences `series` - `other` (two IC series over the
    same months): icir of the differences times the square root of their finite months; NaN
    under 2 months or without spread."""
    d = _f64(series) - _f64(other)
    return icir(d) * math.sqrt(np.isfinite(d).sum())


def _nanmean(x) -> float:
    x = _f64(x)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else math.nan


def rank_ic(r_hat, ret, mask) -> float:
    """Rank IC: the mean over months of the Spearman correlation of r_hat with ret."""
    return _nanmean(ic_series(r_hat, ret, mask, rank=True))


def decile_weights(r_hat, mask, min_stocks: int = MIN_STOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Long and short leg weights [t, n] (each leg sums to 1; zeros in skipped months):
    equal-weighted top and bottom decile of r_hat, k = floor(n/10) stocks per leg."""
    x = _f64(r_hat)
    mask = np.asarray(mask, dtype=bool) & np.isfinite(x)
    t, n = x.shape
    cnt = mask.sum(axis=1)
    k = cnt // 10
    order = np.argsort(np.where(mask, x, np.inf), axis=1, kind="stable")
    ordinal = np.empty((t, n), dtype=np.int64)
    np.put_along_axis(ordinal, order, np.broadcast_to(np.arange(n), (t, n)), axis=1)
    ok = (cnt >= min_stocks)[:, None] & mask
    short = ok & (ordinal < k[:, None])
    long = ok & (ordinal >= (cnt - k)[:, None])
    kk = np.maximum(k, 1)[:, None]
    return long / kk, short / kk


def _drift(w: np.ndarray, r: np.ndarray) -> np.ndarray:
    """w_i (1 + r_i) / Σ_j w_j (1 + r_j) per row (a leg's weights after its returns)."""
    g = w * (1.0 + r)
    tot = g.sum(axis=1, keepdims=True)
    return np.divide(g, tot, out=np.zeros_like(g), where=tot != 0)


def long_short(r_hat, ret, mask, cost: float = COST, min_stocks: int = MIN_STOCKS, size=None) -> dict:
    """Decile long-short portfolio: dict(gross=[t], net=[t], turnover=[t]); NaN in months
    with fewer than `min_stocks` stocks. Turnover convention: see the module docstring.
    `size` [t, n] (market equity known at formation): value-weighted legs (GKX's VW)
    instead of equal-weighted."""
    mask = np.asarray(mask, dtype=bool)
    r = np.where(mask, _f64(ret), 0.0)
    wl, ws = decile_weights(r_hat, mask & np.isfinite(r), min_stocks)
    if size is not None:
        wl, ws = _by_size(wl, size), _by_size(ws, size)
    held = wl.sum(axis=1) > 0
    gross = (wl * r).sum(1) - (ws * r).sum(1)
    prev_l = np.zeros_like(wl)
    prev_s = np.zeros_like(ws)
    prev_l[1:] = _drift(wl[:-1], r[:-1])
    prev_s[1:] = _drift(ws[:-1], r[:-1])
    turnover = np.abs(wl - prev_l).sum(1) + np.abs(ws - prev_s).sum(1)
    gross = np.where(held, gross, np.nan)
    turnover = np.where(held, turnover, np.nan)
    return {"gross": gross, "net": gross - cost * turnover, "turnover": turnover}


def _by_size(w: np.ndarray, size) -> np.ndarray:
    """A leg's weights ∝ size over its stocks, summing to 1 per month (0 where none held)."""
    g = np.where(w > 0, np.nan_to_num(np.maximum(_f64(size), 0.0)), 0.0)
    tot = g.sum(axis=1, keepdims=True)
    return np.divide(g, tot, out=np.zeros_like(g), where=tot > 0)


def sharpe(x) -> float:
    """Annualised Sharpe ratio of monthly excess returns: mean / std (ddof 1) · √12 — the
    same mean-over-std as `icir`, over the non-NaN months, annualised."""
    return icir(x) * math.sqrt(12)


def coverage(ret, r_hat, r_std, mask, level: float = 0.9) -> float:
    """Share of masked returns inside the central `level` Gaussian forecast interval."""
    if r_std is None:
        return math.nan
    mask = np.asarray(mask, dtype=bool)
    z = norm.ppf(0.5 + level / 2.0)
    err = np.abs(_f64(ret)[mask] - _f64(r_hat)[mask])
    return float(np.mean(err <= z * _f64(r_std)[mask])) if mask.any() else math.nan


def gaussian_nll(ret, r_hat, r_std, mask, min_std: float = 1e-8) -> float:
    """Mean Gaussian negative log-likelihood of the masked returns under N(r_hat, r_std²)."""
    if r_std is None:
        return math.nan
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return math.nan
    e = _f64(ret)[mask] - _f64(r_hat)[mask]
    var = np.maximum(_f64(r_std)[mask], min_std) ** 2
    return float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * e * e / var))


def score(ret, mask, fc, lam, cost: float = COST, size=None) -> dict[str, float]:
    """Every test metric of SPEC §6 for a forecast over consecutive months.

    `fc` has r_hat [t,n], beta [t,n,K], f_post [t,K], r_std [t,n] or None (a
    `rvrae.models.base.Forecast` restricted to the scored months); `lam` [t,K] is the
    prevailing mean of f_post for those months (eq. 33). NaN where a metric does not apply.
    """
    ic = ic_series(fc.r_hat, ret, mask)
    ric = ic_series(fc.r_hat, ret, mask, rank=True)
    ls = long_short(fc.r_hat, ret, mask, cost=cost, size=size)  # 30 bps, equal-weighted unless rescored
    r_std = getattr(fc, "r_std", None)
    out = {
        "r2_total": r2_total(ret, fc.beta, fc.f_post, mask),
        "r2_pred": r2_pred(ret, fc.beta, lam, mask),
        "r2_forecast": r2(ret, fc.r_hat, mask),
        "r2_forecast_xs": r2_cross_section(ret, fc.r_hat, mask),  # its cross-section's part
        "r2_beta": r2_beta(ret, fc.beta, mask),
        "ic": _nanmean(ic),
        "icir": icir(ic),
        "rank_ic": _nanmean(ric),
        "rank_icir": icir(ric),
        "sharpe": sharpe(ls["gross"]),
        "sharpe_net": sharpe(ls["net"]),
        "turnover": _nanmean(ls["turnover"]),
        "coverage90": coverage(ret, fc.r_hat, r_std, mask, 0.9),
        "nll": gaussian_nll(ret, fc.r_hat, r_std, mask),
    }
    assert tuple(out) == TEST_METRICS
    return out
