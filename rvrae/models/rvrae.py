"""RVRAE: a dynamic factor model on a regularised variational recurrent autoencoder
(Wang & Guo; paper eqs. 4 and 8–31; our reading of its open points is SPEC §3.1).

Month t is the target; its window is τ = t-L+1 .. t (L = `seq_len`), the last position being
the target month itself (`rvrae.models.base.Batch`).

* Factor network, encoder (eqs. 10–16). Per window month the P = C + 1 characteristic-managed
  portfolio returns y_τ = (Z_τᵀ M Z_τ + εI)⁻¹ Z_τᵀ M r_τ, Z with a constant column (SPEC §3.1;
  `chars[τ]` is already the characteristic known before r_τ, SPEC's Z_{τ-1}). A tanh RNN
  h_τ = tanh(W h_{τ-1} + W_in y_τ + b) (eqs. 11–12); posterior q(z_τ | y_≤τ) = N(μ_τ, σ²_τ)
  from h_τ (eqs. 13–14).
* Predictor = prior (eq. 4): p(z_τ | y_<τ) = N(μ⁰_τ, σ⁰²_τ) = φ_prior(h_{τ-1}); only the past.
* Decoder (eqs. 17–21): h⁰ = tanh(W_z z + b_z) from the last step's z (eqs. 18–19), a tanh RNN
  step over the window's lagged portfolio returns y_{τ-1} (eq. 20; never y_t),
  f̂ = act(W_out h + b_out) (eq. 21).
* Beta network (eqs. 22–29): an LSTM over each stock's characteristic window, last hidden
  state -> β ∈ R^K (a linear head; `beta_head=False` is the paper's β = h_T with hidden = K).
* r̂ = β f̂. Loss (eqs. 30–31): the squared error averaged over `mc_samples` posterior draws
  + λ · (1/L) Σ_τ KL(q_τ ‖ p_τ): the KL at every timestep, averaged, the paper's remedy for
  posterior collapse. `loss="nll"`: Gaussian NLL with a learned idiosyncratic variance.
* Forecast: the prior at the last step through the decoder (no ret[t]); f_prior is the mean
  of `forecast_samples` decoded prior draws, r_std² their variance through β plus the
  idiosyncratic variance. f_post decodes the posterior mean (it sees ret[t]: total R² only).
  The default factor forecast is not the prior's but the AR(1) of f_post (`forecast`, below).

Where we depart from the paper's text, each is an option, and why (measured on the built-in
panel, seed 0, default config unless said; `studies/benchmark.py` and studies/FINDINGS.md give
the tables):

* `constant=True`: the managed portfolios include a constant instrument, as IPCA and CA do.
  Ranked characteristics average zero across stocks every month, so without it y carries
  nothing of the market's level and no factor can follow the market: total R² 27 % of the
  oracle's without it (old code, a market beta with a non-monotone shape), 87-90 % with it.
* `skip=True`: μ_τ gets a linear read U y_τ of the month's portfolios, and f̂ a linear term
  V z, around the tanh layers of the factor path (eq. 12 also reads y_τ linearly now: no
  squashing layer before the recurrence). Without them f_post explained 15.8 % where a
  month-by-month regression on the model's own β reached 19.2 % (the previous panel): the
  factor path lost what the betas knew. With them the gap is 0.5 points (test R²_total
  18.6 % vs the β-regression's 19.2 %; `r2_beta` in every row measures it).
* `kl_scale="per_stock"`: eq. 30 sums the squared error over the month's stocks (‖r − r̂‖²₂)
  against one KL; we average the error per stock, so the KL is divided by the live stocks to
  keep the paper's ratio (FactorVAE's default too). Measured equal in R² to "per_month" on
  the previous panel; chosen because it is the literal eq. 30.
* `forecast="ar1"` (default): the forecast is f̄ + w (g − f̄), f̄ the premia (by default the
  prevailing mean of the least-squares factors on β, `premia` below; else that of f_post),
  g each factor's AR(1) forecast from its own past f_post (least squares on the months before,
  `rvrae.npx.prevailing_ar1`: the transition equation of a classical dynamic factor model), and
  w ∈ [0, 1] fitted on the validation months after the fit (`NeuralFactorModel.calibrate`),
  kept only where its month-clustered t-statistic there reaches `forecast_tstat` = 2 (else
  w = 0: the prevailing mean; `forecast_gate="shrink"` scales w by (1 − 1/t²)⁺ instead, with no
  step at 2 — not the default, studies/FINDINGS.md, "How much of the AR(1) forecast", has the
  measured reason; `forecast_test="valid+factors"` also keeps it where a factor's own history
  supports it, measured and not the default either: FINDINGS, "The AR(1) forecast tested on
  each factor's history"). `forecast="shrunk"` does the same with the prior's forecast as g,
  `"prior"` is the paper's forecast as it is (eq. 4). Why: the learned prior does not
  forecast the factors better than their prevailing mean. Its forecast R² was −2.4 % against
  +0.2 % for the prevailing mean (the previous panel); a share of it fitted freely on 36
  validation months was 0.5-0.9 in most fits while the raw prior lost on the test years
  (e.g. forecast R² 0.06 % vs 0.60 %, Rank IC 0.048 vs 0.073); a linear prior or a VAR(1)
  prior on the previous posterior mean did no better (one seed each: 0.34 % and 0.35 % raw vs
  0.40 % and 0.65 %). The per-factor AR(1) of f_post, gated, was at or above the prevailing
  mean in all 9 RVRAE fits on built-in panel seeds 0/1/2 (forecast R² 0.47/−0.70/1.32 % vs
  "shrunk" 0.41/−0.72/0.14 %; Rank IC 0.082/0.041/0.064 vs 0.064/0.042/0.039), the gate
  closed on seed 1 where the factors' test-year means differ from their history; on one
  unseen panel one of two fits fell 0.4 points below it. It is a forecaster any factor model
  can use: CA takes `forecast="ar1"` too and gains as much (studies/FINDINGS.md).
  Early stopping watches the posterior's reconstruction error plus the prior's forecast error
  (`valid_loss`): the eq. 30 loss barely depends on the prior.
* `premia="ls"` (RVRAE's default; NeuralConfig's is "factors"): the forecast starts from the
  prevailing mean of each month's least-squares factors on the model's own β (Fama–MacBeth
  premia) instead of that of f_post, the AR(1) share and its gate unchanged. Our reading: the
  paper's r̂ = β f̂ (eq. 33's predictive form) names no premia estimator; f_post is the encoder's
  posterior, not the factors β prices (IPCA's factors are least-squares factors on its β
  already; CA given the same option ranked as before, 54.1 against 54.0 %). Measured on 27 default fits (9 planted panels × 3 seeds, the same nets
  scored both ways; studies/FINDINGS.md, "Fama–MacBeth premia as RVRAE's default"): Rank IC
  +3.3 points of the oracle's on average (60.8 against 57.5 %), higher on 7 panels and within
  one point on the other two; mean forecast R² 0.54 against 0.50 %. What it costs: the
  forecast sits below the predictive R² of f_post's prevailing mean in 7 fits of 27 against 3
  (on panel A by 0.07 points on average).
* `beta_portfolios=True`: the target month's posterior mean also reads, linearly (a K × K
  map, zero at the start), the portfolios of the model's own betas (βᵀMβ + εI)⁻¹ βᵀ M r_t —
  the month's least-squares factors on β, which is IPCA's f_t; β is detached, so to the
  encoder they are data like y. Earlier window steps do not get them. Why: the posterior
  built from characteristic-managed portfolios alone explained ~1 point less than a regression
  on the model's own β (14.06 % vs 14.92 % on panel seed 0, 3 seeds; 11.93 vs 12.93 and 15.79
  vs 16.82 on seeds 1 and 2), whether or not the tanh layers were in the path (a purely linear
  f_post lost 0.7 points too): the betas are nonlinear in the characteristics, so no linear
  map of y reaches their factors. With them (3 seeds, panel seeds 0/1/2): total R² 14.55 /
  12.44 / 16.90 % against a β-regression R² of 15.02 / 12.95 / 17.38 % (gap 0.5 points), 91 /
  91 / 86 % of the oracle's (88 / 87 / 80 % without), and the betas learn a little better too.
* `beta_input=True`, `beta_layers=2`: the beta LSTM reads the characteristics through a
  Linear + tanh layer (ALSTM's input net, Qlib) and has two stacked layers; the paper's is one
  LSTM on the raw characteristics. Built-in panel seeds 0/1/2, 3 seeds each: β-regression
  R² 13.07/11.50/15.49 % → 14.92/12.93/16.82 % (CA 14.35/12.27/17.02 %), total R² 78/79/75 %
  → 88/87/80 % of the oracle's. The single raw LSTM overfit after ~10 epochs; hidden 64 or
  weight decay did not fix that one, the input layer alone gave about half of the gain (for
  the two-layer net weight decay does help: `weight_decay`, next).
* `weight_decay=3e-4` (Adam's L2 penalty; the paper gives no regulariser beyond the KL, and
  the other neural models keep 0): the two-layer beta net still stopped improving on
  validation after 13-19 epochs. Built-in panel seeds 0/1/2, 3 seeds each (CPU), for weight
  decay 0 / 1e-4 / 3e-4: total R² 91/91/86 % → 94/95/88 % → 96/97/92 % of the oracle's
  (β-regression R² 15.02/12.95/17.38 → 15.35/13.39/17.72 → 15.55/13.51/18.37 %); 1e-3 fell back
  to 85 % on seed 2. Rank IC moved with it on seeds 0 and 2 (85 → 90 %, 54 → 64 % of the
  oracle's) and fell on seed 1 (58 → 47 %), where the test years' factor means are not
  their history's (README and studies/FINDINGS.md, "Where the models stand").
* `prior_decay=None`: the weight decay leaves the prior's weights alone exactly where the
  forecast reads the prior (`forecast="prior"` or `"shrunk"`); under the default AR(1) forecast
  they are decayed with the rest. The prior's only gradient is λ·KL's, per live stock (λ/N ≈
  3e-6 a month), far below the decay's pull (3e-4·θ), so a decayed prior sits at N(0, 1): in
  all 21 default fits (7 panels × 3 seeds) its mean did not move from month to month (std 0
  to three decimals) and its σ was 1.00. The default RVRAE is therefore a recurrent VAE
  whose KL pulls the posterior towards N(0, 1), not towards a learned predictor: the paper's
  prior–posterior learning is off in it, and its forecast is the AR(1) of f_post. Why not
  free the prior by default (`prior_decay=False`, the same 21 fits; studies/FINDINGS.md, "The
  prior under weight decay"): alive, its mean moved 2–27 % as much as the posterior's and
  correlated with it at −0.14 to 0.20; its own forecast (`forecast="prior"`) ranked at 32 %
  of the oracle's Rank IC on average (the AR(1) forecast of the default fits: 57 %) and fell
  below the prevailing mean in 10 of 21 fits; and the default forecast of the freed model
  lost on average (Rank IC 55 vs 57 %, total R² 94 vs 95 % of the oracle's: its early
  stopping, which sees the prior's forecast error, stopped one fit at epoch 11 with 67 %).
* `patience=10` (NeuralConfig's 5, which the other neural models keep): on a fresh panel with
  46 characteristics (studies/FINDINGS.md, "Two fresh panels") one fit in three stopped at
  epoch 13 with 71 % of the oracle's total R², where the other two trained to epochs 36 and 32
  and reached
  82 %; with patience 10 the same fit trained to epoch 44 and reached 82 %. The factor path
  can sit on a plateau for more than five epochs before its validation loss moves again.
  Cost: five more epochs per fit. Of 21 fits on seven panels (3 seeds each), 18 ended at
  the same best epoch as at patience 5 (the same numbers); the other three trained on (24 → 35,
  15 → 38, 13 → 44 epochs) to 92.2, 89.6 and 82.1 % of the oracle's total R² (from 91.2, 88.7
  and 71.0 %).
* r_std: under the squared-error loss nothing learns the idiosyncratic variance; it is set to
  the mean squared training residual after the fit (coverage90 0.36 before, 0.90-0.91 after).

Decoder input: by default the window's lagged portfolio returns (SPEC §3.1's reading of eq. 20);
`decoder_input="generated"` feeds the decoder its own previous output instead, as the VRAE the
paper builds on (Fabius & van Amersfoort) does when free-running (total R² 89-90 % of the
oracle vs 87-89 % lagged on the built-in panel, two seeds: within noise, so the SPEC's reading
stays the default).

Decoder activation: the paper writes a sigmoid (eq. 21), which confines every factor to (0, 1):
a factor return can then never change sign, and since β cannot see the month's sign either, a
market factor that is negative in a down month is not representable. The default is therefore
`decoder_act="identity"`; `"sigmoid"` reproduces the paper literally.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rvrae.data.panel import Panel
from rvrae.models.base import Batch, NeuralConfig, NeuralFactorModel
from rvrae.models.checks import FORECASTS_WITH_PRIOR, check_config
from rvrae.models.layers import managed_portfolios

DECODER_ACTS = ("identity", "sigmoid")
DECODER_INPUTS = ("lagged", "generated")
LOSSES = ("mse", "nll")
KL_SCALES = ("per_stock", "per_month")


@dataclass
class Config(NeuralConfig):
    n_factors: int = 5  # K latent factors; the paper's choice (§V.A)
    hidden: int = 32  # encoder / decoder / beta-LSTM hidden size; GKX-sized nets (CA0 has 32)
    kl_weight: float = 1e-3  # λ of eq. 30; the paper gives none (searched by `tune`)
    kl_scale: str = "per_stock"  # eq. 30 sums the squared error over the month's stocks
    # (‖r − r̂‖²₂) against one KL: "per_stock" keeps that ratio with the error averaged per
    # stock (KL / live stocks), as FactorVAE's default; "per_month": KL against the mean error
    mc_samples: int = 8  # L of eq. 30: posterior draws per training step
    forecast_samples: int = 64  # prior draws averaged for f_prior and spread for r_std
    decoder_act: str = "identity"  # eq. 21 writes sigmoid; identity lets factors change sign
    loss: str = "mse"  # eq. 30's squared error; "nll": Gaussian NLL, learned idiosyncratic var
    beta_head: bool = True  # linear hidden -> K head; False: the paper's β = h_T (eq. 29)
    beta_input: bool = True  # a Linear + tanh input layer before the beta LSTM (ALSTM's, Qlib)
    beta_layers: int = 2  # stacked LSTM layers of the beta network (the paper: one)
    decoder_input: str = "lagged"  # eq. 20's input: "lagged" portfolio returns y_{τ-1} (SPEC
    # §3.1), or "generated": the decoder's own previous output f̂_{τ-1} (VRAE free-running)
    decoder_steps: int = 1  # how many of the most recent lagged steps eq. 20 runs over (a
    # 12-step tanh recurrence from h⁰ washed z out: test R²_total 2.6 % vs 13.8 % with one)
    skip: bool = True  # linear skips around the tanh layers of the factor path: μ_τ gets
    # U y_τ (eq. 13) and f̂ gets V z (eq. 21). Not in the paper; without them f_post lost a
    # fifth of what the betas explain (module docstring)
    forecast: str = "ar1"  # "prior": r̂ from the prior as it is (eq. 4); "shrunk": the
    # prevailing mean of f_post plus a share w ∈ [0, 1] of the prior's deviation from it;
    # "ar1": the same share of each factor's AR(1) forecast from its own past f_post (the
    # transition equation of a classical dynamic factor model); "mean": the prevailing mean.
    # w fitted on the validation months (module docstring; one w: per-factor shares chose
    # noise as often as signal)
    dropout: float = 0.0  # on the factor network's portfolio inputs
    ridge: float = 1e-4  # ε of the managed-portfolio solve (per live stock); all-zero chars
    beta_portfolios: bool = True  # the target month's posterior mean also reads the K
    # portfolios of the model's own betas, (βᵀMβ + εI)⁻¹ βᵀ M r_t, linearly (not in the paper:
    # module docstring)
    constant: bool = True  # a constant instrument in the managed portfolios, as IPCA and CA
    # (SPEC §3.1): ranks average zero, so without it y carries nothing of the market's level
    batch_months: int = 1  # one cross-section per optimiser step (GKX, CPZ)
    weight_decay: float = 3e-4  # Adam's L2 penalty on every weight (the paper names none;
    # NeuralConfig's default is 0): measured reason in the module docstring
    prior_decay: bool | None = None  # weight decay on the prior's weights too; None: only
    # where the forecast does not read the prior ("ar1", "mean"). Decayed, the prior sits at
    # N(0, 1) (module docstring, `param_groups`)
    patience: int = 10  # early stopping (NeuralConfig's default is 5): the factor path can sit
    # on a plateau for 5+ epochs before it finds a factor (module docstring)
    premia: str = "ls"  # the forecast's premia: the prevailing mean of each month's least-
    # squares factors on β (Fama–MacBeth; IPCA's factors are such factors); NeuralConfig's
    # default "factors" (the prevailing mean of f_post) ranked worse on 7 of 9 panels (module
    # docstring)

    def __post_init__(self):
        choices = {"decoder_act": DECODER_ACTS, "decoder_input": DECODER_INPUTS, "loss": LOSSES,
                   "kl_scale": KL_SCALES, "forecast": FORECASTS_WITH_PRIOR,
                   "prior_decay": (None, True, False)}
        sizes = ("n_factors", "hidden", "mc_samples", "forecast_samples", "decoder_steps",
                 "beta_layers")
        check_config("rvrae", self, at_least_1=sizes, unit=("dropout",), choices=choices)


def space(trial) -> None:
    """Optuna define-by-run search space (SPEC §3.1 design card): K, λ, hidden size, lr."""
    trial.suggest_int("n_factors", 2, 8)
    trial.suggest_float("kl_weight", 1e-5, 1e-1, log=True)
    trial.suggest_categorical("hidden", [16, 32, 64])
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)


def gaussian_kl(mu_q, lv_q, mu_p, lv_p) -> torch.Tensor:
    """KL(N(mu_q, e^lv_q) ‖ N(mu_p, e^lv_p)) of diagonal Gaussians, summed over the last dim."""
    return 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p) ** 2) / lv_p.exp() - 1.0).sum(-1)


class RVRAENet(nn.Module):
    def __init__(self, n_chars: int, cfg: Config, y_scale: float = 1.0, r_var: float = 1e-2):
        super().__init__()
        K, H = cfg.n_factors, cfg.hidden
        P = n_chars + int(cfg.constant)  # managed portfolios (the constant's first)
        self.ridge, self.constant = cfg.ridge, cfg.constant
        self.act = torch.sigmoid if cfg.decoder_act == "sigmoid" else (lambda v: v)
        # Managed-portfolio returns are regression slopes (~1e-2); rescale to unit size.
        self.register_buffer("y_scale", torch.tensor(float(y_scale)))
        # The net works in units of the training returns' RMS: f̂ is scaled back to return units
        # and the squared error divided by r_var, so λ does not depend on the return scale.
        self.register_buffer("r_var", torch.tensor(float(r_var)))
        # Idiosyncratic variance in return units: learned under NLL; under MSE estimated from
        # the training residuals after the fit (`RVRAE.calibrate_fit`), for r_std.
        self.log_idio_var = nn.Parameter(torch.tensor(math.log(max(r_var, 1e-12))))
        self.drop = nn.Dropout(cfg.dropout)
        # Encoder (eqs. 11–14). nn.RNN is exactly h = tanh(W_in y + W h + b) (eq. 12): the
        # portfolio returns enter linearly, no squashing before the recurrence.
        self.enc = nn.RNN(P, H, batch_first=True)
        self.post = nn.Linear(H, 2 * K)  # [μ, log σ²] (eqs. 13–14)
        self.post_skip = nn.Linear(P, K, bias=False) if cfg.skip else None  # U y_τ in μ_τ
        self.post_beta = nn.Linear(K, K, bias=False) if cfg.beta_portfolios else None
        if self.post_beta is not None:
            nn.init.zeros_(self.post_beta.weight)  # starts as the model without it
        self.prior = nn.Sequential(nn.Linear(H, H), nn.Tanh(), nn.Linear(H, 2 * K))  # φ^prior (eq. 4)
        # Decoder (eqs. 18–21).
        self.dec_z = nn.Linear(K, H)  # eq. 19
        self.generated = cfg.decoder_input == "generated"
        self.decoder_steps = cfg.decoder_steps
        self.dec = nn.RNN(K if self.generated else P, H, batch_first=True)  # eq. 20
        self.dec_out = nn.Linear(H, K)  # eq. 21
        self.dec_skip = nn.Linear(K, K, bias=False) if cfg.skip else None  # V z in f̂
        if self.dec_skip is not None:
            nn.init.eye_(self.dec_skip.weight)  # start as f̂ ≈ z: the posterior's own factors
        # Beta network (eqs. 22–29).
        hb = H if cfg.beta_head else K
        self.beta_in = (nn.Sequential(nn.Linear(n_chars, hb), nn.Tanh()) if cfg.beta_input
                        else nn.Identity())
        self.beta_lstm = nn.LSTM(hb if cfg.beta_input else n_chars, hb,
                                 num_layers=cfg.beta_layers, batch_first=True)
        self.beta_out = nn.Linear(hb, K) if cfg.beta_head else nn.Identity()

    def portfolios(self, batch: Batch) -> torch.Tensor:
        """Managed-portfolio returns of every window month, [B, L, P] (data, no gradient)."""
        y = managed_portfolios(batch.x, batch.r_hist, batch.m_hist, self.ridge, self.constant)
        return y / self.y_scale

    def beta_portfolios(self, beta: torch.Tensor, batch: Batch) -> torch.Tensor | None:
        """The target month's portfolios of the model's own betas, [B, K] in units of the
        return RMS: (βᵀ M β + εI)⁻¹ βᵀ M r_t, β detached (data to the encoder, as y is).
        None without `beta_portfolios`."""
        if self.post_beta is None:
            return None
        yb = managed_portfolios(beta.detach(), batch.r_hist[:, -1], batch.m_hist[:, -1], self.ridge)
        return yb / self.r_var.sqrt()

    def infer(self, batch: Batch, every_stock: bool = False) -> tuple[torch.Tensor, torch.Tensor,
                                                                      dict]:
        """The pass every use of the net starts with: the window's managed portfolios y
        [B, L, P], the betas [B, N, K] (of the target month's live stocks; `every_stock` for
        a forecast) and the posterior and prior parameters (`encode`, with `beta_portfolios`)."""
        y = self.portfolios(batch)
        beta = self.betas(batch.x, None if every_stock else batch.live_index())
        return y, beta, self.encode(y, self.beta_portfolios(beta, batch))

    def encode(self, y: torch.Tensor, y_beta: torch.Tensor | None = None) -> dict:
        """Posterior and prior parameters at every window step, each [B, L, K]; `y_beta`
        [B, K] (`beta_portfolios`) enters the target month's posterior mean only."""
        y = self.drop(y)
        h, _ = self.enc(y)  # [B, L, H]: h_τ sees y_≤τ (eq. 12; h_0 = 0, eq. 11)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)  # h_{τ-1}: y_<τ
        mu_q, lv_q = self.post(h).chunk(2, dim=-1)  # eqs. 13–14
        if self.post_skip is not None:
            mu_q = mu_q + self.post_skip(y)  # y_τ read linearly, not only through tanh
        if y_beta is not None:
            last = mu_q[:, -1:] + self.post_beta(y_beta).unsqueeze(1)
            mu_q = torch.cat([mu_q[:, :-1], last], dim=1)
        mu_p, lv_p = self.prior(h_prev).chunk(2, dim=-1)  # eq. 4
        return {"mu_q": mu_q, "lv_q": lv_q, "mu_p": mu_p, "lv_p": lv_p}

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Factors f̂ [S, B, K] in return units from latent draws z [S, B, K] and the window's
        LAGGED portfolio returns (y_{τ-1}; the target month's y_t never enters: eq. 20)."""
        S, B, K = z.shape
        zf = z.reshape(S * B, K)
        h = torch.tanh(self.dec_z(zf))  # [S*B, H] (eq. 19)
        if self.generated:  # VRAE free-running: the input is the previous output f̂_{τ-1}
            f = h.new_zeros(S * B, K)
            for _ in range(min(self.decoder_steps, y.shape[1])):
                _, h1 = self.dec(f.unsqueeze(1), h.unsqueeze(0))  # eq. 20, one step
                h = h1[0]
                f = self.dec_out(h)  # eq. 21 (before the activation)
        else:
            lagged = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)  # [B, L, P]
            lagged = self.drop(lagged[:, -self.decoder_steps :])  # the most recent steps only
            inp = lagged.unsqueeze(0).expand(S, -1, -1, -1).reshape(S * B, *lagged.shape[1:])
            _, h_last = self.dec(inp, h.unsqueeze(0))  # eq. 20
            f = self.dec_out(h_last[0])  # eq. 21 (before the activation)
        if self.dec_skip is not None:
            f = f + self.dec_skip(zf)
        return (self.act(f) * self.r_var.sqrt()).reshape(S, B, K)  # in return units

    def betas(self, x: torch.Tensor, live: tuple[torch.Tensor, torch.Tensor] | None = None
              ) -> torch.Tensor:
        """β [B, N, K] from each stock's characteristic window x [B, L, N, C] (eqs. 22–29).
        Every (month, stock) window goes through the LSTM at once; with `live` (the (b, n)
        indices of the target month's live stocks, `Batch.live_index`) only those (the rest
        get β = 0), which saves the ~45 % of stocks dead in a month."""
        B, L, N, C = x.shape
        if live is None:
            seq = x.permute(0, 2, 1, 3).reshape(B * N, L, C)  # [B*N, L, C]
        else:
            b, n = live
            seq = x[b, :, n]  # [P, L, C]
        _, (h_last, _) = self.beta_lstm(self.beta_in(seq))
        beta = self.beta_out(h_last[-1])  # [P, K]
        if live is None:
            return beta.reshape(B, N, -1)
        out = beta.new_zeros(B, N, beta.shape[-1])
        out[b, n] = beta
        return out


class RVRAE(NeuralFactorModel):
    """The paper's model (see the module docstring). Defaults: K = 5 (paper), squared-error
    loss (eq. 30), identity decoder activation (the paper's sigmoid forbids negative factor
    returns; `decoder_act="sigmoid"` restores it)."""

    name = "rvrae"
    Config = Config

    def build(self, panel: Panel) -> RVRAENet:
        y_scale, r_var = _scales(panel, self.config.ridge, self.config.constant)
        return RVRAENet(panel.C, self.config, y_scale=y_scale, r_var=r_var)

    def param_groups(self, net: RVRAENet) -> list[dict] | None:
        """Adam's groups: the prior's weights undecayed unless `prior_decay` (None: decayed
        only where the forecast does not read the prior). The only gradient that reaches the
        prior is λ·KL's, per live stock (λ/N ≈ 3e-6 a month), far below the decay's
        `weight_decay`·θ: decayed, the prior sits at N(0, 1) in every fit we measured."""
        decay = self.config.prior_decay
        if decay is None:
            decay = self.config.forecast not in ("prior", "shrunk")
        if decay:
            return None
        prior = list(net.prior.parameters())
        ids = {id(p) for p in prior}
        rest = [p for p in net.parameters() if id(p) not in ids]
        return [{"params": rest}, {"params": prior, "weight_decay": 0.0}]

    def kl_terms(self, net: RVRAENet, batch: Batch, q: dict | None = None):
        """Per-step KL(q_τ ‖ p_τ) [B, L] and the loss's term (1/L) Σ_τ KL, averaged over the
        batch (eq. 31: the KL at every timestep, not only the last), per live stock under
        kl_scale="per_stock"."""
        if q is None:
            q = net.infer(batch)[2]
        per_step = gaussian_kl(q["mu_q"], q["lv_q"], q["mu_p"], q["lv_p"])  # [B, L]
        per_month = per_step.mean(dim=1)  # [B]
        if self.config.kl_scale == "per_stock":
            per_month = per_month / batch.m.sum(-1).clamp_min(1.0)
        return per_step, per_month.mean()

    def _error(self, net: RVRAENet, batch: Batch, r_hat: torch.Tensor) -> torch.Tensor:
        """Masked mean over stocks of the eq. 30 error of r_hat [..., B, N] -> [..., B]."""
        err = (batch.r - r_hat) ** 2
        if self.config.loss == "nll":
            err = 0.5 * (err / net.log_idio_var.exp() + net.log_idio_var + math.log(2 * math.pi))
        else:
            err = err / net.r_var  # in units of the return variance: λ is scale-free
        return (err * batch.m).sum(-1) / batch.m.sum(-1).clamp_min(1.0)

    def loss(self, net: RVRAENet, batch: Batch) -> torch.Tensor:
        cfg = self.config
        y, beta, q = net.infer(batch)  # [B, L, P], [B, N, K], posterior and prior
        _, kl = self.kl_terms(net, batch, q)
        mu, lv = q["mu_q"][:, -1], q["lv_q"][:, -1]  # posterior of the target month [B, K]
        eps = torch.randn((cfg.mc_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
        f = net.decode(mu + (0.5 * lv).exp() * eps, y)  # eq. 16 -> [S, B, K]
        r_hat = torch.einsum("bnk,sbk->sbn", beta, f)  # [S, B, N]
        return self._error(net, batch, r_hat).mean() + cfg.kl_weight * kl  # eq. 30

    def valid_loss(self, net: RVRAENet, batch: Batch) -> torch.Tensor:
        """Early stopping sees the forecast (SPEC §3.1): the reconstruction error from the
        posterior mean plus the error of the prior's forecast β f̂(μ⁰), both in units of the
        return variance. The eq. 30 loss barely depends on the prior (λ is small), so the best
        epoch by it can be one whose prior has overfit the training months; and without λ·KL
        the criterion does not depend on the searched λ, so trials of a search (ASHA) compare
        on one scale."""
        y, beta, q = net.infer(batch)
        f = net.decode(torch.stack([q["mu_q"][:, -1], q["mu_p"][:, -1]]), y)  # [2, B, K]
        r_fit = torch.einsum("bnk,sbk->sbn", beta, f)  # posterior fit, prior forecast
        return self._error(net, batch, r_fit).sum(0).mean()

    def forecast(self, net: RVRAENet, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        # every stock's β: the target month's mask is not used (y_beta reaches f_post only)
        y, beta, q = net.infer(batch, every_stock=True)
        mu_p, lv_p = q["mu_p"][:, -1], q["lv_p"][:, -1]  # prior from h_{t-1} (eq. 4)
        f_post = net.decode(q["mu_q"][:, -1].unsqueeze(0), y)[0]  # sees ret[t]
        # Prior draws through the decoder, each month's from a generator seeded by that month
        # (a month's forecast is the same whatever the global RNG did before and whichever
        # months share its batch): their mean is the factor forecast, their spread the factor
        # part of the risk forecast. One small draw per month of the batch, not per stock.
        dev = mu_p.device
        eps = torch.stack([torch.randn((cfg.forecast_samples, mu_p.shape[-1]), device=dev,
                                       generator=torch.Generator(device=dev).manual_seed(int(m)))
                           for m in batch.months], dim=1)  # [S, B, K]  # fmt: skip
        f_draws = net.decode(mu_p + (0.5 * lv_p).exp() * eps, y)  # [S, B, K]
        f_prior = f_draws.mean(0)  # [B, K]
        f_dev = f_draws - f_prior
        fac_var = (torch.einsum("bnk,sbk->sbn", beta, f_dev) ** 2).mean(0)  # [B, N]
        return {
            "r_hat": torch.einsum("bnk,bk->bn", beta, f_prior),
            "beta": beta, "f_post": f_post, "f_prior": f_prior,
            "r_std": (fac_var + net.log_idio_var.exp()).sqrt(),  # + idiosyncratic variance
            "z_prior": mu_p, "z_post": q["mu_q"][:, -1],  # latent means (`prior_spread`)
        }

    def calibrate_fit(self, out: dict, panel: Panel, train_months: np.ndarray) -> None:
        """Under the squared-error loss nothing learns the idiosyncratic variance, so r_std
        would hold the factors' uncertainty only (90 % intervals covered ~40 %): set it to the
        mean squared residual r − β f_post over the training stock-months."""
        if self.config.loss == "nll" or len(train_months) == 0:
            return
        mask = panel.mask[train_months]
        fit = np.einsum("tnk,tk->tn", out["beta"][train_months], out["f_post"][train_months])
        resid = (panel.ret[train_months] - fit)[mask].astype(np.float64)
        if resid.size:
            with torch.no_grad():
                self.net_.log_idio_var.fill_(math.log(max(float(np.mean(resid**2)), 1e-12)))


def _scales(panel: Panel, ridge: float, constant: bool, chunk: int = 24) -> tuple[float, float]:
    """RMS of the managed-portfolio returns and mean square of the returns over the training
    months: the input scale of the factor network and its output (and loss) scale."""
    months = panel.target_months
    ys = []
    with torch.no_grad():
        for s in range(0, len(months), chunk):
            mm = months[s : s + chunk]
            m = torch.from_numpy(panel.mask[mm].astype(np.float32))
            ys.append(managed_portfolios(
                torch.from_numpy(panel.chars[mm]), torch.from_numpy(panel.ret[mm]) * m, m, ridge, constant
            ))
    y = torch.cat(ys) if ys else torch.zeros(1)
    y_scale = float(y.pow(2).mean().sqrt())
    live = panel.mask[months]
    r_var = float(np.mean(panel.ret[months][live].astype(np.float64) ** 2)) if live.any() else 0.0
    ok = lambda v, d: v if v > 0 and math.isfinite(v) else d  # noqa: E731
    return ok(y_scale, 1.0), ok(r_var, 1e-2)


MODEL = RVRAE
