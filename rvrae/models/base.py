"""The model interface every model implements (SPEC §3), and the shared machinery of the
neural ones: batches of months with their windows, and fit/predict on top of rvrae.train.

    model = make_model(name, config)
    model.fit(train, valid, seed=0, device="cpu", progress=None)   # returns self
    fc = model.predict(panel, months)                             # -> Forecast

Estimator manners (scikit-learn): the constructor stores the config only; fitted state gets
a trailing underscore.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from rvrae.data.panel import Panel, window_months
from rvrae.errors import UserError
from rvrae.npx import (  # the factor forecasts (eq. 33), their calibration and diagnostics
    ar1_factor_tstats, bonferroni_t, clustered_slope, ls_factors, prevailing_ar1, prevailing_mean,
    prior_spread, shrinkage,
)

# progress(epoch, {"train_loss": ..., "valid_loss": ...}); the study harness reports it to Tune.
Progress = Callable[[int, dict], None]


@dataclass
class Forecast:
    """What a model says about `months` (SPEC §3). Arrays are numpy, float32."""

    months: np.ndarray  # [t] month indices into the panel
    r_hat: np.ndarray  # [t, N] forecast from information before the month (IC, Sharpe)
    beta: np.ndarray  # [t, N, K]
    f_post: np.ndarray  # [t, K] factors inferred with the month's realised returns (total R²)
    f_prior: np.ndarray  # [t, K] forecast factors (the prevailing mean where none)
    r_std: np.ndarray | None = None  # [t, N] forecast std, where the model has one
    # A calibrated dynamic forecaster's two ends (`NeuralFactorModel.predict`), for the
    # diagnostic `rank_ic_w0` / `rank_ic_w1`: β f̄ (w = 0, the premia alone) and β (f̄ + g − f̄_post)
    # (w = 1, the dynamic forecast in full), both before the level c. None elsewhere.
    r_w0: np.ndarray | None = None  # [t, N]
    r_w1: np.ndarray | None = None  # [t, N]


def config_from_dict(config_cls: type, values: dict | Any | None, model: str = "") -> Any:
    """Build a config dataclass; unknown keys are an error, never silently swallowed."""
    if values is None:
        return config_cls()
    if dataclasses.is_dataclass(values) and not isinstance(values, dict):
        return values
    known = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"unknown config key {unknown[0]!r} for model {model or config_cls.__name__!r} "
            f"(known: {', '.join(sorted(known))})"
        )
    return config_cls(**values)


class FactorModel(ABC):
    name: ClassVar[str]
    Config: ClassVar[type]
    uses_device: ClassVar[bool] = True  # False: computes on the CPU whatever `fit` is given

    def __init__(self, config=None):
        self.config = config_from_dict(self.Config, config, getattr(self, "name", ""))

    @abstractmethod
    def fit(
        self,
        train: Panel,
        valid: Panel,
        seed: int = 0,
        device: str = "cpu",
        progress: Progress | None = None,
    ) -> "FactorModel": ...

    @abstractmethod
    def predict(self, panel: Panel, months: np.ndarray | None = None) -> Forecast: ...


@dataclass
class NeuralConfig:
    """Training settings shared by every neural model (the one loop in rvrae.train)."""

    lr: float = 1e-3  # Adam; the usual default of every peer
    epochs: int = 50  # cap; early stopping usually ends sooner
    patience: int = 5  # epochs without a better validation loss before stopping
    grad_clip: float = 1.0  # max gradient norm; recurrent nets need it
    batch_months: int = 1  # months per optimiser step: one cross-section per step (GKX, CPZ)
    weight_decay: float = 0.0
    seq_len: int = 12  # window length T (SPEC §2.2)
    # The factor forecast (`NeuralFactorModel.calibrate`): "mean", the prevailing mean of the
    # model's own factors (GKX, paper eq. 33); "ar1", that plus a validation-chosen share of
    # each factor's AR(1) forecast, kept only at a month-clustered validation t-statistic of
    # `forecast_tstat` (models with a prior also take "shrunk" and "prior": rvrae.py)
    forecast: str = "mean"
    forecast_tstat: float = 2.0
    # How the validation t-statistic t of that share w acts (`calibrate`): "tstat", w only
    # where t reaches `forecast_tstat` (else 0); "shrink", w (1 − 1/t²)⁺ at every t, the
    # plug-in estimate of the squared-error-optimal shrinkage of an estimate with t-statistic
    # t, continuous in t (studies/FINDINGS.md: the gate's knife edge)
    forecast_gate: str = "tstat"
    # What else may keep the AR(1) forecast (`calibrate`; forecast="ar1" only): "valid", the
    # validation t-statistic above alone; "valid+factors", also each factor's own history:
    # where the validation gate keeps no share but some factor's AR(1) deviation predicts
    # that factor's realised least-squares factor on β (each month's returns on the model's
    # β, `rvrae.npx.ls_factors`, not f_post: a recurrent encoder's f_post shares its window
    # with the month before, which an AR(1) would find as persistence) over months
    # FORECAST_HISTORY_START..end of validation at a t-statistic of at least Φ⁻¹(1 − 0.025 / K)
    # (`rvrae.npx.ar1_factor_tstats`; Bonferroni: 5 % over the K factors, 2.58 at K = 5), the
    # AR(1) is kept as it is (w = 1). A factor's own test is free of the other factors'
    # shocks that a test on the returns carries, so it sees a small persistent factor that
    # 36 validation months of returns cannot (studies/FINDINGS.md, "The AR(1) forecast tested
    # on each factor's history")
    forecast_test: str = "valid"
    # The premia the forecast starts from (`NeuralFactorModel.calibrate`): "factors", the
    # prevailing mean of the model's own factors f_post (eq. 33); "ls", the prevailing mean of
    # each month's least-squares factors on the model's own β (Fama–MacBeth premia,
    # `rvrae.npx.ls_factors`), the dynamic part unchanged. RVRAE's default, not the others':
    # studies/FINDINGS.md, "Fama–MacBeth premia as RVRAE's default"
    premia: str = "factors"
    # The forecast's level (`NeuralFactorModel.calibrate`): "none" keeps it; "valid" scales
    # the whole forecast β f_fc by c = Σ r r̂ / Σ r̂² over the validation months, clipped to
    # [FORECAST_SCALE_FLOOR, 1] (least squares through the origin: the forecast combined
    # with the zero forecast). One c for every stock and factor, so ranks, Rank IC, IC and the
    # long-short portfolios stay exactly as they are; only the level-sensitive scores move
    # (forecast R², coverage90, NLL). "shrink": c times (1 − 1/t²)⁺, t = c / se(c) with the
    # error clustered by month — the rule `forecast_gate="shrink"` applies to w, towards the
    # zero forecast where 36 months cannot tell c from 0. FactorVAE's default is "shrink" (its
    # α column overshot the level: studies/FINDINGS.md, "The forecast's level"), not RVRAE's
    forecast_scale: str = "none"
    # Fits per trial (`NeuralFactorModel.fit`): each from its own initialisation (restart 0
    # at the trial's seed), the one whose calibrated forecast has the best validation Rank IC
    # kept; the trial's cost times `restarts`. 1 (every model's default): one fit, as the
    # peers do. Measured for RVRAE and not its default: it caught the fits that failed
    # outright, and elsewhere the 36 validation months picked the worse fit as often as not
    # (studies/FINDINGS.md, "Restarts chosen on validation")
    restarts: int = 1
    # How a later restart replaces the kept one (`NeuralFactorModel.fit`): 0, by a larger
    # validation Rank IC; t > 0, only where its monthly validation Rank IC beats the kept
    # one's at a paired t-statistic over the validation months of at least t (the first fit
    # stays unless validation clearly says otherwise). Measured on seven pairs at t = 2 and
    # not a default (studies/FINDINGS.md, "Restarts chosen on validation")
    restart_tstat: float = 0.0


# The least share of its level a scaled forecast keeps (`forecast_scale`): at c = 0
# every stock would be forecast 0 and nothing would be ranked; at 1 % it still orders the
# stocks as the model does, and its forecast R² is the zero forecast's (0) plus
# 0.02 Σ r r̂ / Σ r² − 0.0001 Σ r̂² / Σ r² (r̂ unscaled).
FORECAST_SCALE_FLOOR = 0.01

# The first month of `forecast_test="valid+factors"`'s window (or the first validation month,
# if earlier): the AR(1) forecast of every month from here on is fitted on at least 35 pairs.
FORECAST_HISTORY_START = 36


@dataclass
class Batch:
    """A batch of target months with their windows, gathered on the fly from the panel.

    The last window position is the target month itself: `x[:, -1]` (its characteristics)
    is known before the month, but `r_hist[:, -1]` is the realised target and may only feed
    the loss or the posterior, never a forecast.
    """

    months: torch.Tensor  # [B] long
    x: torch.Tensor  # [B, L, N, C] characteristic windows (0 before the panel starts)
    r_hist: torch.Tensor  # [B, L, N] returns over the window, target month last
    m_hist: torch.Tensor  # [B, L, N] float mask over the window
    r: torch.Tensor  # [B, N] target returns (= r_hist[:, -1])
    m: torch.Tensor  # [B, N] float target mask (= m_hist[:, -1])
    stocks: torch.Tensor | None = None  # [N] panel indices of the batch's stocks (None: all)
    live: tuple[torch.Tensor, torch.Tensor] | None = None  # (b, n) of m > 0, found on the host
    seen: torch.Tensor | None = None  # [S] rows b·N + n with a characteristic in the window

    def live_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, n) of the target month's live stocks (m > 0): the ones `batch` found on the
        host where it made them, else `nonzero` on the device (which waits for it)."""
        return self.live if self.live is not None else (self.m > 0).nonzero(as_tuple=True)

    def seen_rows(self) -> torch.Tensor:
        """[S] flat rows b·N + n of the (month, stock) windows with a non-zero characteristic,
        ascending: the rows a per-stock sequence net runs on (`charbeta.over_stocks`). Found
        on the host where `batch` made them, else on the device (which waits for it)."""
        return self.seen if self.seen is not None else rows_with_chars(self.x)


def rows_with_chars(x: torch.Tensor) -> torch.Tensor:
    """[S] flat rows b·N + n of x [B, L, N, C] whose window has a non-zero characteristic,
    found on the device (`nonzero` waits for it)."""
    return torch.nonzero(x.abs().amax(dim=(1, 3)).reshape(-1) > 0).squeeze(1)


class PanelTensors:
    """The panel's arrays as tensors on one device, made once per fit/predict (zero-copy on
    the CPU); `batch(months)` gathers windows for a few months only."""

    def __init__(self, panel: Panel, device: str | torch.device, seq_len: int):
        self.device = torch.device(device)
        self.seq_len = seq_len
        self.chars = torch.from_numpy(np.ascontiguousarray(panel.chars)).to(self.device)
        self.ret = torch.from_numpy(np.ascontiguousarray(panel.ret)).to(self.device)
        self.mask = torch.from_numpy(panel.mask.astype(np.float32)).to(self.device)
        self.mask_host = np.asarray(panel.mask, dtype=bool)  # the batch's indices come from here
        # [T, N]: the stock has a non-zero characteristic that month (missing ones are 0);
        # a month at a time, so no [T, N, C] temporary at paper scale
        self.seen_host = np.stack([(c != 0).any(axis=1) for c in panel.chars])
        self.n_stocks = panel.N

    def batch(self, months: np.ndarray) -> Batch:
        """Windows for `months`, compacted to the stocks alive somewhere in them: a stock
        without a return anywhere in the batch's windows cannot enter a loss, a managed
        portfolio or a scored forecast, so carrying it would only cost time (at paper scale
        about half the union of stocks is alive in a given year).

        Every index (window months, kept stocks, the target month's live stocks, the windows
        with a characteristic) is found on the host from the panel's mask and goes to the
        device in one copy, pinned and not waited for: on a GPU a step then never stops to
        wait for the device (a `nonzero` or a blocking copy would, several times a step;
        README, Performance)."""
        months = np.asarray(months)
        idx, ok = window_months(months, self.seq_len)
        alive = self.mask_host[idx] & ok[:, :, None]  # [B, L, N]
        stocks = np.flatnonzero(alive.any(axis=(0, 1)))
        if stocks.size == 0:  # nothing alive (a window before the panel): keep one dummy
            stocks = np.zeros(1, dtype=np.int64)
        live_b, live_n = np.nonzero(alive[:, -1][:, stocks])
        seen = (self.seen_host[idx][:, :, stocks] & ok[:, :, None]).any(axis=1)  # [B, N']
        parts = (months, idx.ravel(), ok.ravel(), stocks, live_b, live_n, np.flatnonzero(seen))
        flat = torch.from_numpy(np.concatenate([np.asarray(a, dtype=np.int64) for a in parts]))
        if self.device.type == "cuda":
            flat = flat.pin_memory().to(self.device, non_blocking=True)
        else:
            flat = flat.to(self.device)
        months_t, idx_t, ok_t, stocks_t, lb, ln, seen_t = flat.split([len(a) for a in parts])
        idx_t = idx_t.view(idx.shape)  # [B, L]
        ok_t = ok_t.view(ok.shape).to(torch.float32)  # [B, L]
        x = self.chars[idx_t[:, :, None], stocks_t] * ok_t[:, :, None, None]  # [B, L, N', C]
        r_hist = self.ret[idx_t[:, :, None], stocks_t] * ok_t[:, :, None]  # [B, L, N']
        m_hist = self.mask[idx_t[:, :, None], stocks_t] * ok_t[:, :, None]  # [B, L, N']
        return Batch(
            months=months_t, x=x, r_hist=r_hist, m_hist=m_hist, r=r_hist[:, -1], m=m_hist[:, -1],
            stocks=stocks_t, live=(lb, ln), seen=seen_t,
        )


class NeuralFactorModel(FactorModel):
    """A model made of an nn.Module trained by the shared loop. Subclasses declare the
    module (`build`), its loss on a batch and its forecast on a batch; nothing else."""

    Config: ClassVar[type] = NeuralConfig

    @abstractmethod
    def build(self, panel: Panel) -> torch.nn.Module: ...

    @abstractmethod
    def loss(self, net: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Scalar training loss of a batch (the module is in train mode)."""

    @abstractmethod
    def forecast(self, net: torch.nn.Module, batch: Batch) -> dict[str, torch.Tensor]:
        """Keys beta [B,N,K], f_post [B,K]; r_hat [B,N], f_prior [B,K] and r_std [B,N] where
        the model forecasts factors itself. Called in eval mode under no_grad. A model
        without a factor forecaster omits f_prior and r_hat: predict() then uses the
        prevailing mean of f_post (SPEC §3) and r_hat = beta · f_prior."""

    def valid_loss(self, net: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The early-stopping criterion on a validation batch (eval mode, no grad): the
        training loss unless a model says otherwise. RVRAE's is its reconstruction error plus
        its prior's forecast error, so the best epoch is chosen by what the tables score and
        does not depend on the searched KL weight (SPEC §3.1)."""
        return self.loss(net, batch)

    def param_groups(self, net: torch.nn.Module) -> list[dict] | None:
        """Adam's parameter groups; None: every parameter at the config's weight decay."""
        return None

    def fit(self, train, valid, seed=0, device="cpu", progress=None):
        """Fit `restarts` times (restart 0 at `seed`, restart i at `restart_seed(seed, i)`) and
        keep the restart whose calibrated forecast ranks the validation months' returns best
        (Rank IC): the validation choice the studies' objective makes between configs, made
        between initialisations. One restart is one fit, exactly as without the option.
        `restart_` is the kept restart, `restart_scores_` every restart's validation Rank IC
        (None at one restart). With `restart_tstat` > 0 a later restart replaces the kept one
        only where the paired t-statistic of their monthly validation Rank ICs reaches it.
        Progress epochs keep counting across restarts, so a scheduler sees one rising
        sequence."""
        from rvrae.metrics import _nanmean, ic_series

        restarts = int(self.config.restarts)
        self.restart_ = self.restart_scores_ = None
        if restarts == 1:
            return self._fit_once(train, valid, seed, device, progress)
        months = np.asarray(valid.target_months)
        fits, series, done = [], [], 0
        for i in range(restarts):
            def shifted(epoch, record, done=done):
                progress(done + epoch, record)

            self._fit_once(train, valid, restart_seed(seed, i), device, shifted if progress else None)
            done += len(self.history_)
            fc = self.predict(valid, months)
            series.append(ic_series(fc.r_hat, valid.ret[months], valid.mask[months], rank=True))
            fits.append({k: v for k, v in vars(self).items() if k.endswith("_")})
        index = choose_restart(series, float(self.config.restart_tstat))
        index = restarts - 1 if index is None else index  # no restart scored (all NaN): the last one stays
        vars(self).update(fits[index])
        # rvrae.metrics.rank_ic of the validation months, per restart
        self.restart_, self.restart_scores_ = index, [_nanmean(s) for s in series]
        return self

    def _fit_once(self, train, valid, seed, device, progress):
        from rvrae.train import fit_module, seed_everything

        seed_everything(seed)
        self.device_ = torch.device(device)
        self.net_ = self.build(train).to(self.device_)
        tensors = PanelTensors(train.view(None), self.device_, self.config.seq_len)
        valid_tensors = PanelTensors(valid.view(None), self.device_, self.config.seq_len)
        self.history_ = fit_module(
            self.net_,
            lambda b: self.loss(self.net_, b),
            train_batch=tensors.batch,
            valid_batch=valid_tensors.batch,
            train_months=train.target_months,
            valid_months=valid.target_months,
            cfg=self.config,
            seed=seed,
            progress=progress,
            valid_fn=lambda b: self.valid_loss(self.net_, b),
            param_groups=self.param_groups(self.net_),
        )
        self.calibrate(valid, valid_tensors, train.target_months, valid.target_months)
        return self

    def calibrate(self, panel: Panel, tensors: "PanelTensors", train_months, valid_months) -> None:
        """After the fit, on the fitted net: choose how far the factor forecast may move away
        from the prevailing mean f̄ of the model's own factors, on the validation months
        (SPEC §3.1: model selection must see the forecast). f_fc = f̄ + w (g − f̄), where g is
        the model's dynamic forecast — its prior's (`forecast="shrunk"`) or each factor's
        AR(1) on its own past f_post (`forecast="ar1"`, `rvrae.npx.prevailing_ar1`) — and
        w = argmin Σ_valid (r − β f_fc)², clipped to [0, 1]: w = 0 is the prevailing-mean
        forecast of IPCA / CA (`forecast="mean"`), w = 1 the dynamic forecast as it is.
        w is kept only where its t-statistic, clustered by month, reaches `forecast_tstat`;
        otherwise w = 0: 36 validation months chose noise as often as signal
        (studies/FINDINGS.md). With `forecast_gate="shrink"` w is scaled by (1 − 1/t²)⁺
        instead: no step at a threshold, so a fit whose t lands at 1.99 rather than 2.01 moves
        its forecast by a little, not from the dynamic forecast to none. One weight, not one
        per factor: K weights on 36 months were a lottery (test Rank IC 0.031 or 0.078 for the
        same model, measured). With `forecast_test="valid+factors"` a fit whose validation
        months keep no share keeps the AR(1) as it is (w = 1) where some factor's own AR(1)
        forecast predicts it over the history (`forecast_test`). With `forecast_scale="valid"`
        the whole forecast β f_fc is then scaled by its through-origin slope on the validation
        returns, c ∈ [0.01, 1]: its level, not its ranks ("shrink": c shrunk by its
        t-statistic first). `calibrate_fit` lets a model take more from the same pass
        (RVRAE: residual variance)."""
        self.forecast_weight_ = self.forecast_tstat_ = self.forecast_scale_ = None
        self.prior_spread_ = self.forecast_factor_tstat_ = None
        valid_months = np.asarray(valid_months)
        if len(valid_months) == 0:
            return
        hist = np.arange(int(valid_months.max()) + 1)
        out = self._run(tensors, hist)
        self.calibrate_fit(out, panel, np.asarray(train_months))
        if "z_prior" in out:  # a model with a learned prior: does it move (`prior_spread`)?
            self.prior_spread_ = prior_spread(out["z_prior"][valid_months], out["z_post"][valid_months])
        g = self._dynamic_forecast(out, out["f_post"], hist)  # rows = months 0..end of valid
        scaled = self.config.forecast_scale != "none" and self.config.forecast != "prior"
        if g is None and not scaled:
            return  # nothing to fit: the prevailing-mean forecast, or the prior's as it is
        post_mean = prevailing_mean(out["f_post"])  # [months 0..end of valid, K]
        fbar = self._premia(out["beta"], post_mean, panel, hist)[valid_months].astype(np.float64)
        beta = out["beta"][valid_months].astype(np.float64)  # [t, N, K]
        mask = panel.mask[valid_months]
        ret = np.where(mask, panel.ret[valid_months], 0.0)
        f_fc = fbar  # the forecast's factors on the validation months
        if g is not None:
            # the dynamic forecast's deviation from the prevailing mean of f_post
            d = g[valid_months].astype(np.float64) - post_mean[valid_months]
            resid = np.where(mask, ret - np.einsum("tnk,tk->tn", beta, fbar), 0.0)
            x = np.where(mask, np.einsum("tnk,tk->tn", beta, d), 0.0)  # β (g − f̄)
            # w and its month-clustered t-statistic: below `forecast_tstat` the validation
            # months do not support the deviation and the forecast stays at the prevailing
            # mean (w = 0)
            w, t = clustered_slope(x, resid)
            self.forecast_tstat_ = t
            w = min(max(w, 0.0), 1.0)
            if self.config.forecast_gate == "shrink":
                w *= shrinkage(t)
            elif t < self.config.forecast_tstat:
                w = 0.0
            if self.config.forecast_test == "valid+factors" and self.config.forecast == "ar1":
                # each factor's AR(1) deviation against its least-squares factor on β, over the
                # history (`forecast_test`)
                start = min(FORECAST_HISTORY_START, int(valid_months.min()))
                window = np.arange(start, int(valid_months.max()) + 1)
                ls = ls_factors(out["beta"], panel.ret[hist], panel.mask[hist])
                tf = ar1_factor_tstats(ls[window], prevailing_mean(ls)[window], (g - post_mean)[window])
                self.forecast_factor_tstat_ = float(tf.max())
                if w == 0.0 and tf.max() >= bonferroni_t(len(tf)):
                    w = 1.0
            self.forecast_weight_ = np.float32(w)
            f_fc = fbar + w * d
        if scaled:
            # c = the through-origin slope of r on r̂ = β f_fc over the validation stock-months
            r_hat = np.where(mask, np.einsum("tnk,tk->tn", beta, f_fc), 0.0)
            c, t = clustered_slope(r_hat, ret)
            if not r_hat.any():
                c = 1.0  # no forecast to scale
            elif self.config.forecast_scale == "shrink":  # shrunk by its t as w is above
                c = min(c, 1.0) * shrinkage(t)
            self.forecast_scale_ = min(max(c, FORECAST_SCALE_FLOOR), 1.0)

    def _dynamic_forecast(self, out: dict, f_all: np.ndarray, months: np.ndarray):
        """The factor forecast `calibrate` shrinks towards the prevailing mean, [t, K] for the
        rows of `out` (`months`): the prior's f_prior ("shrunk") or each factor's AR(1) on its
        own f_post ("ar1"; f_all = f_post of months 0..max(months)); None for "mean"."""
        mode = self.config.forecast
        if mode == "shrunk" and "f_prior" in out:
            return out["f_prior"]
        if mode == "ar1":
            return prevailing_ar1(f_all)[months]
        return None

    def _premia(self, beta: np.ndarray, post_mean: np.ndarray, panel: Panel, hist: np.ndarray) -> np.ndarray:
        """[t, K] for months `hist` = 0..t-1: the premia the forecast starts from, each row
        from the months before it (`premia`: `post_mean`, the prevailing mean of f_post, or
        that of each month's least-squares factors on β over `panel`'s live stocks)."""
        if self.config.premia == "ls":
            return prevailing_mean(ls_factors(beta, panel.ret[hist], panel.mask[hist]))
        return post_mean

    def calibrate_fit(self, out: dict, panel: Panel, train_months: np.ndarray) -> None:
        """Hook: `out` is the fitted net's forecast over months 0..end of validation."""

    def _run(self, tensors: PanelTensors, months: np.ndarray, chunk: int = 12) -> dict:
        self.net_.eval()
        parts: list[dict] = []
        with torch.no_grad():
            for s in range(0, len(months), chunk):
                batch = tensors.batch(months[s : s + chunk])
                out = self.forecast(self.net_, batch)
                parts.append(
                    {k: _to_panel_stocks(k, v, batch, tensors.n_stocks) for k, v in out.items()
                     if v is not None}
                )
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def predict(self, panel, months=None):
        months = panel.target_months if months is None else np.asarray(months)
        tensors = PanelTensors(panel, self.device_, self.config.seq_len)
        out = self._run(tensors, months)
        if self.config.forecast == "prior" and "f_prior" in out:
            return Forecast(  # the model's own forecast as it is
                months=months, r_hat=out["r_hat"], beta=out["beta"], f_post=out["f_post"],
                f_prior=out["f_prior"], r_std=out.get("r_std"),
            )
        # The prevailing mean of f_post over every earlier month: the forecast of a model
        # without a factor forecaster, the anchor of a shrunk one (`calibrate`; `premia="ls"`
        # anchors on the least-squares factors on β instead). The study's predict runs over
        # all months: its own output is the history.
        hist = np.arange(int(months.max()) + 1)
        every = out if np.array_equal(months, hist) else self._run(tensors, hist)
        f_all = every["f_post"]
        post_mean = prevailing_mean(f_all)
        f_prior = self._premia(every["beta"], post_mean, panel, hist)[months]
        ends = {}  # the forecast at w = 0 and w = 1, whatever w the validation months chose
        if self.forecast_weight_ is not None:  # a calibrated dynamic forecast (`calibrate`)
            w = float(self.forecast_weight_)
            d = self._dynamic_forecast(out, f_all, months) - post_mean[months]
            ends = {"r_w0": np.einsum("tnk,tk->tn", out["beta"], f_prior).astype(np.float32),
                    "r_w1": np.einsum("tnk,tk->tn", out["beta"], f_prior + d).astype(np.float32)}  # fmt: skip
            if w > 0:  # a validation-supported share of the dynamic forecast
                f_prior = f_prior + w * d
        if self.forecast_scale_ is not None:  # the validation-fitted level (`forecast_scale`)
            f_prior = f_prior * float(self.forecast_scale_)
        f_prior = f_prior.astype(np.float32)
        return Forecast(
            months=months, r_hat=np.einsum("tnk,tk->tn", out["beta"], f_prior).astype(np.float32),
            beta=out["beta"], f_post=out["f_post"], f_prior=f_prior, r_std=out.get("r_std"), **ends,
        )


_PER_STOCK = ("r_hat", "r_std", "beta")  # forecast outputs with a stock axis (axis 1)


def choose_restart(series: list[np.ndarray], tstat: float = 0.0) -> int | None:
    """The restart `NeuralFactorModel.fit` keeps, from each restart's monthly validation Rank
    ICs `series` (in restart order): the larger mean decides, the first of equal means stays,
    and with `tstat` > 0 a later restart replaces the kept one only where the paired
    t-statistic of their monthly differences (`rvrae.metrics.paired_t`) reaches `tstat`
    (`NeuralConfig.restart_tstat`; studies/FINDINGS.md, "Restarts chosen on validation").
    None where no restart has a finite score. studies/restarts.py judges the same rule."""
    from rvrae.metrics import _nanmean, paired_t

    best, index, kept = -np.inf, None, None
    for i, s in enumerate(series):
        score = _nanmean(s)
        if not (np.isfinite(score) and score > best):
            continue
        if kept is not None and tstat > 0 and not paired_t(s, kept) >= tstat:  # NaN: no
            continue
        best, index, kept = score, i, s
    return index


def restart_seed(seed: int, i: int) -> int:
    """The model seed of restart i of a fit at `seed` (`NeuralConfig.restarts`): `seed` itself
    for restart 0, else a draw of numpy's SeedSequence of (seed, i), so no restart of one
    trial repeats another trial's seed (the seeds of a study are 0, 1, 2, ...)."""
    if i == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2**32, i]).generate_state(1)[0])


def _to_panel_stocks(key: str, value: torch.Tensor, batch: Batch, n_stocks: int) -> np.ndarray:
    """A forecast output as numpy over the panel's stocks: per-stock outputs of a compacted
    batch are scattered back to [B, N, ...]; stocks outside the batch get 0."""
    value = value.float().cpu()
    if key not in _PER_STOCK or batch.stocks is None:
        return value.numpy()
    full = torch.zeros((value.shape[0], n_stocks, *value.shape[2:]), dtype=value.dtype)
    full[:, batch.stocks.cpu()] = value
    return full.numpy()


def forecast_from_prevailing_mean(
    months: np.ndarray, beta: np.ndarray, f_post: np.ndarray, f_all: np.ndarray
) -> Forecast:
    """Forecast with f_prior = prevailing mean of `f_all` (f_post over months 0..max) and
    r_hat = beta · f_prior: IPCA's forecast (the neural models' `predict` builds theirs
    around `premia` and the calibrated dynamic share)."""
    f_prior = prevailing_mean(f_all)[months]
    r_hat = np.einsum("tnk,tk->tn", beta, f_prior).astype(np.float32)
    return Forecast(months=months, r_hat=r_hat, beta=beta, f_post=f_post, f_prior=f_prior)
