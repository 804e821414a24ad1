"""The planted synthetic panel (SPEC §2.4): a conditional factor model with a known truth.

    r_{i,t} = β(z_{i,t}) · f_t + ε_{i,t}
    f_t     = λ + φ ⊙ (f_{t-1} − λ) + η_t                     (K factors, premia λ, AR(1))
    β_k(z)  = b_k + a_k · g_k(u),  u = 2Φ(z) − 1              (nonlinear in a few chars)

* z: persistent per-stock AR(1) characteristics; the first `n_signal` drive the betas, the
  rest are noise. The panel carries their cross-sectional ranks (rvrae.data.prep), and
  since u = 2Φ(z) − 1 is (asymptotically) exactly that rank, the betas are a fixed nonlinear
  function of what the models see.
* `chars[t]` is known before `ret[t]` (the `same_row` alignment of rvrae.data.panel).
* ε: Student-t (heavy tails), scaled to a stock-specific volatility.
* Stocks enter and leave: `n_stocks` slots, each month a slot's stock delists with
  probability `hazard` and a new stock takes the slot, so exactly `n_stocks` stocks are
  alive per month and the union is about n_stocks · (1 + hazard · n_months).
* Some characteristic values are missing at random.

The oracle knows β_t, f_t and the law of f: its forecast is r̂_t = β_t · E[f_t | past]
= β_t · (λ + φ ⊙ (f_{t-1} − λ)), its posterior f_post = the true f_t. Beside it, `reference_scores`
scores the true betas with factor forecasts a model could estimate (the prevailing mean, each
factor's AR(1), and the same on the factors `factor_visibility` finds visible to second
moments): the part of the oracle's lead that perfect betas would not close. Defaults are
calibrated to the paper's regime on the test years of the 15/3/3 split (seed 0: see
`Synthetic.oracle.scores`, and tests/test_synthetic.py for the ranges).

It is built to tell models apart (SPEC §2.4): the market's beta is a non-monotone bump and a
priced factor's an interaction — shapes with no linear part — so IPCA, linear in the ranks,
reaches 75-80 % of the oracle's total R² (seeds 0-3), not 98 % as the earlier, mostly
monotone draw allowed; and the market factor is AR(1) with φ = 0.3, so the oracle's
conditional forecast explains about twice what the prevailing mean of the true factors does
(R²_forecast vs R²_pred: 1.48 % vs 0.85 % on seed 0, 2.0 % vs 0.7 % median of seeds 0-3).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
from scipy.special import ndtr

from rvrae.data.panel import Panel, split_by_years
from rvrae.data.prep import missing_share, rank_to_unit
from rvrae.errors import UserError
from rvrae.npx import prevailing_ar1, prevailing_mean


@dataclass
class SynthConfig:
    seed: int = 0  # everything below is drawn from np.random.default_rng(seed)
    n_stocks: int = 300  # stocks alive per month (the union is larger: entry and exit)
    n_months: int = 252  # 21 years: the paper's 15 / 3 / 3 split (2000-2020)
    n_chars: int = 20  # characteristics in the panel (paper: 46)
    n_factors: int = 5  # true K (the paper's K = 5)
    n_signal: int = 5  # characteristics that drive the betas; the rest are noise
    start: str = "2000-01"  # first month (the paper's sample starts January 2000)
    hazard: float = 1 / 180  # monthly delisting probability per stock (mean life 15 years)
    char_rho: float = 0.95  # AR(1) persistence of the signal characteristics (monthly)
    noise_rho: tuple[float, float] = (0.5, 0.99)  # persistence range of the noise chars
    missing: float = 0.05  # share of characteristic values missing at random
    # Factors, one entry per factor (cycled when n_factors is larger): premia λ, volatility σ
    # (std of f), AR(1) φ, beta shape (`_beta_shapes`), and the beta intercept b (1 for the
    # market-like factor 1, whose beta has the cross-sectional spread `market_beta_spread`;
    # 0 for the others, whose betas are pure cross-sectional shapes with unit spread).
    # Factor 1 carries variance and timing (φ), factors 2-3 the cross-sectional premia (IC),
    # factors 4-5 variance only. Calibrated for the oracle's test-period R²_total ≈ 17 %,
    # R²_pred ≈ 0.7 %, R²_forecast ≈ 2 %, Rank IC ≈ 0.10 (medians over seeds 0-3). 36 test
    # months are few: across seeds R²_pred spans about 0-1.3 % and Rank IC 0.08-0.12, mostly
    # through the realised means of the priced factors, which is why those have high Sharpe
    # ratios and φ = 0 (a cross-sectional AR(1) term makes the test-period IC far noisier).
    premia: tuple[float, ...] = (0.005, 0.0058, 0.0058, 0.0, 0.0)
    vols: tuple[float, ...] = (0.03, 0.005, 0.005, 0.02, 0.02)
    phis: tuple[float, ...] = (0.3, 0.0, 0.0, 0.0, 0.0)
    shapes: tuple[str, ...] = ("bump", "saturating", "interaction", "sine", "sine")
    market_beta_spread: float = 0.5  # a_1: cross-sectional spread of the market beta
    idio_vol: float = 0.09  # median idiosyncratic volatility (monthly)
    idio_df: float = 5.0  # Student-t degrees of freedom of ε (heavy tails)

    def __post_init__(self):
        checks = {
            "n_stocks": self.n_stocks >= 10,
            "n_months": self.n_months >= 2,
            "n_chars": self.n_chars >= 1,
            "n_factors": self.n_factors >= 1,
            "n_signal": 1 <= self.n_signal,
            "premia": len(self.premia) >= 1,
            "vols": len(self.vols) >= 1 and min(self.vols) >= 0,
            "phis": len(self.phis) >= 1 and max(abs(p) for p in self.phis) < 1,
            "shapes": len(self.shapes) >= 1 and set(self.shapes) <= set(SHAPES),
            "hazard": 0.0 <= self.hazard < 1.0,
            "missing": 0.0 <= self.missing < 1.0,
            "idio_df": self.idio_df > 2.0,
            "idio_vol": self.idio_vol > 0.0,
            "char_rho": abs(self.char_rho) < 1.0,
            "noise_rho": len(self.noise_rho) == 2 and -1.0 < self.noise_rho[0] <= self.noise_rho[1] < 1.0,
            # the months written as datetime64[ns] (pandas): 1678-01 .. 2262-03 only
            "start": _is_month(self.start) and np.datetime64("1678-01") <= np.datetime64(self.start, "M")
            and np.datetime64(self.start, "M") + max(self.n_months, 1) - 1 <= np.datetime64("2262-03"),
            "seed": self.seed >= 0,
        }
        # every number finite (a design file's JSON may say NaN or Infinity)
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            values = v if isinstance(v, tuple) else (v,)
            if any(isinstance(x, float) and not math.isfinite(x) for x in values):
                checks[f.name] = False
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise UserError(f"synthetic panel: invalid {bad[0]} = {getattr(self, bad[0])!r}")


def _source(cfg: SynthConfig) -> str:
    """The panel's name in tables: seed and size, then every other field a design changed."""
    rest = [f"{f.name}={getattr(cfg, f.name)}" for f in dataclasses.fields(cfg)
            if f.name not in ("seed", "n_stocks", "n_months", "n_chars")
            and getattr(cfg, f.name) != f.default]
    head = f"seed={cfg.seed}, n_stocks={cfg.n_stocks}, n_months={cfg.n_months}, n_chars={cfg.n_chars}"
    return f"synthetic({', '.join([head, *rest])})"


def _is_month(text) -> bool:
    try:
        np.datetime64(text, "M")
    except (TypeError, ValueError):
        return False
    return True


def read_design(path: str | os.PathLike) -> dict:
    """A planted design from a JSON file: an object of `SynthConfig` fields, e.g.
    `{"seed": 31, "n_factors": 5, "shapes": ["saturating", "bump", ...], "premia": [...]}`;
    fields left out keep their defaults (studies/panels/ holds the README's unseen panels).
    Returns the keyword arguments for SynthConfig; an unreadable file, invalid JSON, an
    unknown field or a value of the wrong type raises UserError naming the file and field
    (the values themselves are checked by SynthConfig)."""
    import json
    import typing

    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: design file does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the design file ({e})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a design is a JSON object of SynthConfig fields, got {type(raw).__name__}")
    hints = typing.get_type_hints(SynthConfig)
    design = {}
    for key, value in raw.items():
        if key not in hints:
            raise UserError(f"{path}: unknown field {key!r} (fields: {', '.join(hints)})")
        kind = hints[key]
        if typing.get_origin(kind) is tuple:  # a list in JSON; its items as the tuple's type
            item = typing.get_args(kind)[0]
            ok = isinstance(value, list) and value and all(_is(v, item) for v in value)
            value = tuple(float(v) if item is float else v for v in value) if ok else value
        else:
            ok = _is(value, kind)
            value = float(value) if ok and kind is float else value
        if not ok:
            want = f"a list of {typing.get_args(kind)[0].__name__}" if typing.get_origin(kind) is tuple else kind.__name__
            raise UserError(f"{path}: field {key!r} must be {want}, got {value!r}")
        design[key] = value
    try:
        SynthConfig(**design)  # its values, checked here to name the file
    except UserError as e:
        raise UserError(f"{path}: {e}") from None
    return design


def _is(value, kind: type) -> bool:
    """JSON value of a SynthConfig type: ints are floats too; bools are neither."""
    if isinstance(value, bool):
        return kind is bool
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


@dataclass
class Oracle:
    beta: np.ndarray  # [T, N, K] true betas (0 where the stock is not alive)
    factors: np.ndarray  # [T, K] true factor realisations f_t
    premia: np.ndarray  # [K] λ
    phi: np.ndarray  # [K] AR(1) coefficients
    f_prior: np.ndarray  # [T, K] E[f_t | past] = λ + φ (f_{t-1} − λ)
    r_hat: np.ndarray  # [T, N] the oracle forecast β_t · E[f_t | past]
    r_std: np.ndarray  # [T, N] its conditional std (factor shocks + idiosyncratic)
    test_months: np.ndarray  # [t] the months `scores` are computed on
    scores: dict = field(default_factory=dict)  # rvrae.metrics.score of the oracle there
    references: dict = field(default_factory=dict)  # name -> score of a true-β forecast there
    visibility: list = field(default_factory=list)  # per factor, `factor_visibility`

    def rescore(self, panel: Panel, test_months: np.ndarray) -> None:
        """Score the oracle and its references on other test months (e.g. the demo's split)."""
        self.test_months = np.asarray(test_months)
        self.scores = oracle_scores(panel, self)
        self.visibility = factor_visibility(panel, self)
        self.references = reference_scores(panel, self)


@dataclass
class Synthetic:
    config: SynthConfig
    panel: Panel  # preprocessed, meta["oracle"] = the Oracle
    frame: pd.DataFrame  # the long panel a user would have: permno, date, ret, c01..cC
    oracle: Oracle


def make_synthetic(cfg: SynthConfig | None = None) -> Synthetic:
    """Draw the planted panel; deterministic by `cfg.seed`, vectorised over stocks."""
    cfg = cfg or SynthConfig()
    rng = np.random.default_rng(cfg.seed)
    T, S, C, K = cfg.n_months, cfg.n_stocks, cfg.n_chars, cfg.n_factors
    n_sig = min(cfg.n_signal, C)

    # --- entry and exit: slot s holds stock id = offset_s + number of delistings so far
    deaths = rng.random((T, S)) < cfg.hazard
    deaths[0] = False
    gen = np.cumsum(deaths, axis=0)  # [T, S] generation of the slot's stock
    offsets = np.concatenate([[0], np.cumsum(gen[-1] + 1)[:-1]])
    stock = offsets[None, :] + gen  # [T, S] union index of the stock in each slot
    N = int(gen[-1].sum() + S)

    # --- characteristics: stationary N(0,1) AR(1) per stock; a new stock draws afresh
    rho = np.concatenate([np.full(n_sig, cfg.char_rho), rng.uniform(*cfg.noise_rho, C - n_sig)])
    shocks = rng.standard_normal((T, S, C)).astype(np.float32)
    z = np.empty((T, S, C), dtype=np.float32)
    z[0] = shocks[0]
    keep, innov = rho.astype(np.float32), np.sqrt(1 - rho**2).astype(np.float32)
    for t in range(1, T):  # a loop over months; each step is one [S, C] array op
        z[t] = np.where(deaths[t][:, None], shocks[t], keep * z[t - 1] + innov * shocks[t])

    # --- betas: a nonlinear function of the signal characteristics (eqs. of the docstring)
    u = (2.0 * ndtr(z[..., :n_sig]) - 1.0).astype(np.float32)  # ≈ the rank in [-1, 1]
    cycle = lambda v: [v[k % len(v)] for k in range(K)]  # noqa: E731
    cyc = lambda v: np.asarray(cycle(v), dtype=np.float64)  # noqa: E731
    g = _beta_shapes(u, tuple(cycle(cfg.shapes)))  # [T, S, K], each ~ mean 0, std 1
    lam, vol, phi = cyc(cfg.premia), cyc(cfg.vols), cyc(cfg.phis)
    b = np.zeros(K, dtype=np.float32)
    a = np.ones(K, dtype=np.float32)
    b[0], a[0] = 1.0, cfg.market_beta_spread
    beta_s = b + a * g  # [T, S, K]

    # --- factors: AR(1) around the premia
    eta = rng.standard_normal((T, K)) * vol * np.sqrt(1 - phi**2)
    f = np.empty((T, K))
    f_prior = np.empty((T, K))
    prev = lam + rng.standard_normal(K) * vol  # a draw from the stationary law
    for t in range(T):
        f_prior[t] = lam + phi * (prev - lam)
        f[t] = f_prior[t] + eta[t]
        prev = f[t]

    # --- returns: β f + heavy-tailed ε with stock-specific volatility
    svol = cfg.idio_vol * np.exp(0.3 * rng.standard_normal(N))  # [N] lognormal around the median
    df_ = cfg.idio_df
    eps = rng.standard_t(df_, (T, S)) * np.sqrt((df_ - 2) / df_) * svol[stock]
    r_s = np.einsum("tsk,tk->ts", beta_s, f) + eps
    rhat_s = np.einsum("tsk,tk->ts", beta_s, f_prior)
    fac_var = np.einsum("tsk,k->ts", beta_s**2, (vol**2) * (1 - phi**2))
    rstd_s = np.sqrt(fac_var + svol[stock] ** 2)

    # --- missing characteristic values
    x_s = z.copy()
    x_s[rng.random((T, S, C)) < cfg.missing] = np.nan

    # --- scatter the slots onto the union of stocks
    tt = np.broadcast_to(np.arange(T)[:, None], (T, S))
    chars_raw = np.full((T, N, C), np.nan, dtype=np.float32)
    chars_raw[tt, stock] = x_s
    ret = np.zeros((T, N), dtype=np.float32)
    ret[tt, stock] = r_s
    mask = np.zeros((T, N), dtype=bool)
    mask[tt, stock] = True
    beta = np.zeros((T, N, K), dtype=np.float32)
    beta[tt, stock] = beta_s
    r_hat = np.zeros((T, N), dtype=np.float32)
    r_hat[tt, stock] = rhat_s
    r_std = np.ones((T, N), dtype=np.float32)
    r_std[tt, stock] = rstd_s

    start = np.datetime64(cfg.start, "M")
    dates = start + np.arange(T)
    ids = np.asarray([f"{10001 + i}" for i in range(N)])  # permno-like
    char_names = tuple(f"c{j + 1:0{len(str(C))}d}" for j in range(C))
    test_months = _oracle_test_months(T)
    oracle = Oracle(
        beta=beta,
        factors=f.astype(np.float32),
        premia=lam.astype(np.float32),
        phi=phi.astype(np.float32),
        f_prior=f_prior.astype(np.float32),
        r_hat=r_hat,
        r_std=r_std,
        test_months=test_months,
    )
    panel = Panel(
        chars=rank_to_unit(chars_raw),
        ret=ret,
        mask=mask,
        dates=dates,
        ids=ids,
        char_names=char_names,
        source=_source(cfg),
        meta={"oracle": oracle, "missing_share": missing_share(chars_raw, mask), "synth_config": dataclasses.asdict(cfg)},
    )
    oracle.rescore(panel, test_months)

    # the long frame a user would have (row order: month, then stock)
    ti, ni = np.nonzero(mask)
    frame = pd.DataFrame({"permno": (10001 + ni).astype(np.int64), "date": dates[ti].astype("datetime64[ns]"), "ret": ret[ti, ni]})
    vals = chars_raw[ti, ni]  # [rows, C]
    frame = pd.concat([frame, pd.DataFrame(vals, columns=list(char_names))], axis=1)
    return Synthetic(config=cfg, panel=panel, frame=frame, oracle=oracle)


SHAPES = ("saturating", "interaction", "bump", "threshold", "sine")


def _beta_shapes(u: np.ndarray, shapes: tuple[str, ...]) -> np.ndarray:
    """One standardised (mean ≈ 0, std ≈ 1 for uniform u) function of the signal ranks
    u ∈ [-1, 1] per factor, factor k reading signal characteristics k and k + 1 (cycling):

    * saturating: tanh(2a), monotone — mostly linear in the rank;
    * interaction: a·b plus a convex term in a — no linear part at all;
    * bump: cos(πa), non-monotone and even — no linear part;
    * threshold: a step at 0 plus a slope;
    * sine: sin(πa), non-monotone but odd — about 60 % linear.

    A model linear in the ranks (IPCA) can fit only the linear part of each shape."""
    P = u.shape[-1]
    s3 = np.float32(np.sqrt(3.0))
    out = []
    for k, kind in enumerate(shapes):
        a, b = u[..., k % P], u[..., (k + 1) % P]
        if kind == "saturating":
            g = np.tanh(2.0 * a) / 0.80
        elif kind == "interaction":
            g = (a * b * 3.0 + (a * a - 1 / 3) * 1.5 * s3) / np.sqrt(1.0 + 0.8)
        elif kind == "bump":
            g = np.cos(np.pi * a) * np.sqrt(2.0)
        elif kind == "threshold":
            g = np.where(a > 0, 1.0, -1.0) * 0.5 + a * s3 * 0.5
            g = g / np.sqrt(0.25 + 0.25 + 2 * 0.5 * 0.5 * np.sqrt(3) / 2)
        elif kind == "sine":
            g = np.sin(np.pi * a) * np.sqrt(2.0)
        else:
            raise UserError(f"synthetic panel: unknown beta shape {kind!r} (known: {', '.join(SHAPES)})")
        out.append(g.astype(np.float32))
    return np.stack(out, axis=-1)


def _oracle_test_months(T: int) -> np.ndarray:
    """The test months of the default 15/3/3 split when the panel is long enough, else the
    last seventh of the months (small test panels)."""
    if T >= 252:
        return np.arange(T - 36, T)
    return np.arange(T - max(1, T // 7), T)


def oracle_scores(panel: Panel, oracle: Oracle) -> dict:
    """rvrae.metrics.score of the true model on its test months (SPEC §4)."""
    return _score_true_beta(panel, oracle, oracle.f_prior, r_hat=oracle.r_hat, r_std=oracle.r_std)


# The oracle's references (`reference_scores`): the true betas with a factor forecast that a
# model could estimate, to read a model's gap to the oracle against. The oracle itself also
# knows the law of f (λ and φ); these know only the true factors' past.
REFERENCES = {
    "true β, prevailing mean": "the true betas times the prevailing mean of the true factors "
    "(eq. 33): a model with perfect betas and no factor forecaster",
    "true β, AR(1)": "the true betas times each true factor's AR(1) fitted on its own past "
    "(rvrae.npx.prevailing_ar1): perfect betas and the `forecast=\"ar1\"` forecaster, ungated",
    "visible β, AR(1)": "the same with the betas of the factors that second moments cannot "
    "reveal (`factor_visibility`) set to 0: what perfect betas on every visible factor score",
}


def reference_scores(panel: Panel, oracle: Oracle) -> dict[str, dict]:
    """rvrae.metrics.score of the true betas with an estimated factor forecast (`REFERENCES`)
    on the oracle's test months: how much of the oracle's Rank IC and forecast R² perfect
    betas keep when the premia and dynamics must be learned from the factors' history."""
    ar1 = prevailing_ar1(oracle.factors)
    out = {"true β, prevailing mean": _score_true_beta(panel, oracle, prevailing_mean(oracle.factors)),
           "true β, AR(1)": _score_true_beta(panel, oracle, ar1)}
    visible = np.asarray([v["visible"] for v in oracle.visibility or factor_visibility(panel, oracle)])
    out["visible β, AR(1)"] = _score_true_beta(panel, oracle, ar1 * visible)  # β_k f_k = 0 where hidden
    assert tuple(out) == tuple(REFERENCES)
    return out


def factor_visibility(panel: Panel, oracle: Oracle, months: np.ndarray | None = None) -> list[dict]:
    """Per true factor, whether the second moments of `months` (default: every month before
    the oracle's test months) can reveal it, by the spiked-covariance (BBP) threshold: a factor
    whose loadings carry a variance ℓ, in units of the idiosyncratic variance, below √(N/T)
    leaves no trace in the sample eigenvectors of N series over T months (asymptotically).

    * spike = N σ_k² mean(β_k²) / σ_ε²: factor k's eigenvalue in the returns' covariance (N
      live stocks a month, σ_k the std of f_k, σ_ε² the mean idiosyncratic variance).
    * linear = the share of mean(β_k²) a least-squares fit on the ranks and a constant explains:
      the part of the loadings the characteristic-managed portfolios (IPCA's, CA's, RVRAE's y)
      carry. There the threshold is √(P/T), P = C + 1 portfolios, for the spike × linear.
    * visible = spike ≥ √(N/T) or spike × linear ≥ √(P/T).

    A hidden factor can still be learned from its mean return (a priced one), but not from the
    reconstruction of returns that every model here is trained on: its betas are what no factor
    model here can be asked to find (studies/FINDINGS.md, "Where Rank IC is lost"). A
    heuristic, for reading the tables; the threshold is the Gaussian limit, the panel's noise
    is Student-t."""
    if months is None:
        months = np.arange(int(oracle.test_months.min()))
    months = np.asarray(months)
    mask = panel.mask[months]
    beta = oracle.beta[months][mask].astype(np.float64)  # [n, K] over the live stock-months
    x = np.concatenate([np.ones((len(beta), 1)), panel.chars[months][mask]], axis=1)
    coef, *_ = np.linalg.lstsq(x, beta, rcond=None)
    ms = np.mean(beta**2, axis=0)
    linear = 1.0 - np.mean((beta - x @ coef) ** 2, axis=0) / np.where(ms > 0, ms, 1.0)
    fit = np.einsum("tnk,tk->tn", oracle.beta[months], oracle.factors[months])[mask]
    idio = float(np.mean((panel.ret[months][mask] - fit).astype(np.float64) ** 2))
    n_live, n_months, n_pf = float(mask.sum(axis=1).mean()), len(months), x.shape[1]
    spike = n_live * np.var(oracle.factors[months].astype(np.float64), axis=0) * ms / max(idio, 1e-300)
    raw_cut, pf_cut = np.sqrt(n_live / n_months), np.sqrt(n_pf / n_months)
    return [
        {"factor": k + 1, "premium": float(oracle.premia[k]), "phi": float(oracle.phi[k]),
         "spike": float(spike[k]), "linear": float(linear[k]), "threshold": float(raw_cut),
         "threshold_portfolios": float(pf_cut),
         "visible": bool(spike[k] >= raw_cut or spike[k] * linear[k] >= pf_cut)}
        for k in range(len(spike))
    ]


def _score_true_beta(panel: Panel, oracle: Oracle, f_fc: np.ndarray, r_hat=None, r_std=None) -> dict:
    """Score the forecast β_t · f_fc[t] (true betas, f_fc [T, K]; `r_hat` [T, N] if already
    computed) on the oracle's test months, with f_post = the true factors."""
    from rvrae.metrics import score

    m = oracle.test_months
    # any object with these attributes will do (rvrae.models.base.Forecast would import torch,
    # seconds of start-up for `rvrae data synth`)
    fc = SimpleNamespace(
        months=m,
        r_hat=np.einsum("tnk,tk->tn", oracle.beta[m], f_fc[m]) if r_hat is None else r_hat[m],
        beta=oracle.beta[m],
        f_post=oracle.factors[m],
        f_prior=f_fc[m],
        r_std=None if r_std is None else r_std[m],
    )
    # The two predictive R²s under the models' names (SPEC §2.4): r2_pred with the prevailing
    # mean of the true factors (eq. 33, as every model's r2_pred), r2_forecast with the
    # forecast β_t f_fc (for the oracle its conditional forecast β_t E[f_t | past], as every
    # model's own r_hat).
    lam = prevailing_mean(oracle.factors)[m]
    return {k: float(v) for k, v in score(panel.ret[m], panel.mask[m], fc, lam).items()}


def write_synthetic(synth: Synthetic, path: str | os.PathLike) -> Path:
    """Write the long frame (Parquet or CSV by suffix), atomically."""
    from rvrae.data.io import write_long

    return write_long(synth.frame, path)
