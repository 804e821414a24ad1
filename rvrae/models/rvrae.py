"""RVRAE: a dynamic factor model on a regularised variational recurrent autoencoder
(Wang & Guo; paper eqs. 4 and 8–31; our reading of its open points is SPEC §3.1).

Month t is the target; its window is τ = t-L+1 .. t (L = `seq_len`), the last position being
the target month itself (`rvrae.models.base.Batch`).

* Factor network, encoder (eqs. 10–16). Per window month the C characteristic-managed
  portfolio returns y_τ = (Z_τᵀ M Z_τ + εI)⁻¹ Z_τᵀ M r_τ (SPEC §3.1; `chars[τ]` is already the
  characteristic known before r_τ, SPEC's Z_{τ-1}). A tanh RNN h_τ = tanh(W h_{τ-1} + W_in φ(y_τ)
  + b) (eqs. 11–12); posterior q(z_τ | y_≤τ) = N(μ_τ, σ²_τ) from h_τ (eqs. 13–14).
* Predictor = prior (eq. 4): p(z_τ | y_<τ) = N(μ⁰_τ, σ⁰²_τ) = φ_prior(h_{τ-1}); only the past.
* Decoder (eqs. 17–21): h⁰ = tanh(W_z z + b_z) from the last step's z (eqs. 18–19), a tanh RNN
  over the window's lagged portfolio returns y_{τ-1} (eq. 20; never y_t), f̂ = act(W_out h + b_out)
  (eq. 21).
* Beta network (eqs. 22–29): an LSTM over each stock's characteristic window, last hidden
  state -> β ∈ R^K (a linear head; `beta_head=False` is the paper's β = h_T with hidden = K).
* r̂ = β f̂. Loss (eqs. 30–31): masked mean over stocks of the squared error, averaged over
  `mc_samples` posterior draws, + λ · (1/L) Σ_τ KL(q_τ ‖ p_τ): the KL at every timestep,
  averaged, the paper's remedy for posterior collapse. `loss="nll"`: Gaussian NLL with a learned
  idiosyncratic variance instead of the squared error.
* Forecast: r̂ and f_prior from the prior mean at the last step through the decoder (no
  ret[t]); r_std² = Var over prior draws of β f̂ (+ the idiosyncratic variance under NLL);
  f_post from the posterior mean at the last step (it sees ret[t]: total R² only).

Decoder input: by default the window's lagged portfolio returns (SPEC §3.1's reading of eq. 20).
A C-dimensional history is a fingerprint of its month, so on few training months the decoder
can memorise factor values from it (measured: train R²_total 22 % vs test 4-7 % on planted
panels). `decoder_input="generated"` feeds the decoder its own previous output instead, as the
VRAE the paper builds on (Fabius & van Amersfoort) does when free-running; on the default
synthetic panel it generalised better (test R²_total 6.2 % vs 3.9 %, Rank IC 0.058 vs 0.029).

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
from rvrae.errors import UserError
from rvrae.models.base import Batch, NeuralConfig, NeuralFactorModel
from rvrae.models.layers import managed_portfolios

DECODER_ACTS = ("identity", "sigmoid")
DECODER_INPUTS = ("lagged", "generated")
LOSSES = ("mse", "nll")


@dataclass
class Config(NeuralConfig):
    n_factors: int = 5  # K latent factors; the paper's choice (§V.A)
    hidden: int = 32  # encoder / decoder / beta-LSTM hidden size; GKX-sized nets (CA0 has 32)
    kl_weight: float = 1e-3  # λ of eq. 30; the paper gives none. The error is in units of the
    # return variance (≈ 1 per stock); on the synthetic panel λ = 1e-2 collapsed the posterior
    # (R²_total = R²_pred) and 1e-3 kept it informative
    mc_samples: int = 8  # L of eq. 30: posterior draws per step; prior draws for r_std
    decoder_act: str = "identity"  # eq. 21 writes sigmoid; identity lets factors change sign
    loss: str = "mse"  # eq. 30's squared error; "nll": Gaussian NLL, learned idiosyncratic var
    beta_head: bool = True  # linear hidden -> K head; False: the paper's β = h_T (eq. 29)
    decoder_input: str = "lagged"  # eq. 20's input: "lagged" portfolio returns y_{τ-1} (SPEC
    # §3.1), or "generated": the decoder's own previous output f̂_{τ-1} (VRAE free-running)
    decoder_steps: int = 1  # how many of the most recent lagged steps eq. 20 runs over. The
    # SPEC reads "a recurrent step": one step keeps z's information (a 12-step tanh recurrence
    # from h⁰ washed it out: test R²_total 2.6% with 12 steps vs 13.8% with one, 6 epochs on
    # the default synthetic panel, oracle 19.8%)
    dropout: float = 0.0  # on the factor network's portfolio features; the lagged window can
    # fingerprint a training month, which lets the decoder memorise (module docstring)
    ridge: float = 1e-4  # ε of the managed-portfolio solve (per live stock); all-zero chars
    batch_months: int = 1  # one cross-section per optimiser step (GKX, CPZ)

    def __post_init__(self):
        if self.decoder_act not in DECODER_ACTS:
            raise UserError(f"rvrae: decoder_act must be one of {DECODER_ACTS}, got {self.decoder_act!r}")
        if self.decoder_input not in DECODER_INPUTS:
            raise UserError(f"rvrae: decoder_input must be one of {DECODER_INPUTS}, got {self.decoder_input!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"rvrae: dropout must be in [0, 1), got {self.dropout}")
        if self.loss not in LOSSES:
            raise UserError(f"rvrae: loss must be one of {LOSSES}, got {self.loss!r}")
        if self.n_factors < 1 or self.hidden < 1 or self.mc_samples < 1 or self.decoder_steps < 1:
            raise UserError("rvrae: n_factors, hidden, mc_samples and decoder_steps must be >= 1")


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
        self.ridge = cfg.ridge
        self.act = torch.sigmoid if cfg.decoder_act == "sigmoid" else (lambda v: v)
        # Managed-portfolio returns are regression slopes (~1e-2); rescale to unit size.
        self.register_buffer("y_scale", torch.tensor(float(y_scale)))
        # The net works in units of the training returns' RMS: f̂ is scaled back to return units
        # and the squared error divided by r_var, so λ does not depend on the return scale.
        self.register_buffer("r_var", torch.tensor(float(r_var)))
        # Encoder (eqs. 11–14). nn.RNN is exactly h = tanh(W_in x + W h + b) (eq. 12).
        self.enc_in = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(n_chars, H), nn.Tanh())  # φ^r
        self.enc = nn.RNN(H, H, batch_first=True)
        self.post = nn.Linear(H, 2 * K)  # [μ, log σ²] (eqs. 13–14)
        self.prior = nn.Sequential(nn.Linear(H, H), nn.Tanh(), nn.Linear(H, 2 * K))  # φ^prior (eq. 4)
        # Decoder (eqs. 18–21).
        self.dec_z = nn.Linear(K, H)  # eq. 19
        self.generated = cfg.decoder_input == "generated"
        self.decoder_steps = cfg.decoder_steps
        d_in = K if self.generated else n_chars
        self.dec_in = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(d_in, H), nn.Tanh())
        self.dec = nn.RNN(H, H, batch_first=True)  # eq. 20
        self.dec_cell = nn.RNNCell(H, H)  # the same recurrence one step at a time ("generated")
        self.dec_out = nn.Linear(H, K)  # eq. 21
        # Beta network (eqs. 22–29).
        hb = H if cfg.beta_head else K
        self.beta_lstm = nn.LSTM(n_chars, hb, batch_first=True)
        self.beta_out = nn.Linear(hb, K) if cfg.beta_head else nn.Identity()
        # Idiosyncratic log-variance (NLL loss only; unused and untrained under MSE).
        self.log_idio_var = nn.Parameter(torch.tensor(math.log(max(r_var, 1e-12))))

    def portfolios(self, batch: Batch) -> torch.Tensor:
        """Managed-portfolio returns of every window month, [B, L, C] (data, no gradient)."""
        y = managed_portfolios(batch.x, batch.r_hist, batch.m_hist, self.ridge)  # [B, L, C]
        return y / self.y_scale

    def encode(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior and prior parameters at every window step, each [B, L, K]."""
        h, _ = self.enc(self.enc_in(y))  # [B, L, H]: h_τ sees y_≤τ (eq. 12; h_0 = 0, eq. 11)
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)  # h_{τ-1}: y_<τ
        mu_q, lv_q = self.post(h).chunk(2, dim=-1)  # eqs. 13–14
        mu_p, lv_p = self.prior(h_prev).chunk(2, dim=-1)  # eq. 4
        return {"mu_q": mu_q, "lv_q": lv_q, "mu_p": mu_p, "lv_p": lv_p}

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Factors f̂ [S, B, K] from latent draws z [S, B, K] and the window's LAGGED portfolio
        returns (y_{τ-1}; the target month's y_t never enters: eq. 20)."""
        S, B, K = z.shape
        h = torch.tanh(self.dec_z(z.reshape(S * B, K)))  # [S*B, H] (eq. 19)
        if self.generated:  # VRAE free-running: the input is the previous output f̂_{τ-1}
            f = h.new_zeros(S * B, K)
            for _ in range(min(self.decoder_steps, y.shape[1])):
                h = self.dec_cell(self.dec_in(f), h)  # eq. 20
                f = self.act(self.dec_out(h))  # eq. 21
        else:
            lagged = torch.cat([torch.zeros_like(y[:, :1]), y[:, :-1]], dim=1)  # [B, L, C]
            lagged = lagged[:, -self.decoder_steps :]  # the most recent steps only
            inp = self.dec_in(lagged)  # [B, L, H]
            inp = inp.unsqueeze(0).expand(S, -1, -1, -1).reshape(S * B, *inp.shape[1:])
            _, h_last = self.dec(inp, h.unsqueeze(0))  # eq. 20
            f = self.act(self.dec_out(h_last[0]))  # eq. 21
        return (f * self.r_var.sqrt()).reshape(S, B, K)  # in return units

    def betas(self, x: torch.Tensor, live: torch.Tensor | None = None) -> torch.Tensor:
        """β [B, N, K] from each stock's characteristic window x [B, L, N, C] (eqs. 22–29).
        Every (month, stock) window goes through the LSTM at once; with `live` [B, N] bool only
        those (the rest get β = 0), which saves the ~45 % of stocks dead in a month."""
        B, L, N, C = x.shape
        if live is None:
            seq = x.permute(0, 2, 1, 3).reshape(B * N, L, C)  # [B*N, L, C]
        else:
            b, n = live.nonzero(as_tuple=True)
            seq = x[b, :, n]  # [P, L, C]
        _, (h_last, _) = self.beta_lstm(seq)
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
        y_scale, r_var = _scales(panel, self.config.ridge)
        return RVRAENet(panel.C, self.config, y_scale=y_scale, r_var=r_var)

    def kl_terms(self, net: RVRAENet, batch: Batch, q: dict | None = None):
        """Per-step KL(q_τ ‖ p_τ) [B, L] and the loss's term (1/L) Σ_τ KL, averaged over the
        batch (eq. 31: the KL at every timestep, not only the last)."""
        if q is None:
            q = net.encode(net.portfolios(batch))
        per_step = gaussian_kl(q["mu_q"], q["lv_q"], q["mu_p"], q["lv_p"])  # [B, L]
        return per_step, per_step.mean(dim=1).mean()

    def loss(self, net: RVRAENet, batch: Batch) -> torch.Tensor:
        cfg = self.config
        y = net.portfolios(batch)  # [B, L, C]
        q = net.encode(y)
        _, kl = self.kl_terms(net, batch, q)
        mu, lv = q["mu_q"][:, -1], q["lv_q"][:, -1]  # posterior of the target month [B, K]
        eps = torch.randn((cfg.mc_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
        f = net.decode(mu + (0.5 * lv).exp() * eps, y)  # eq. 16 -> [S, B, K]
        beta = net.betas(batch.x, batch.m > 0)  # [B, N, K]
        r_hat = torch.einsum("bnk,sbk->sbn", beta, f)  # [S, B, N]
        err = (batch.r - r_hat) ** 2
        if cfg.loss == "nll":
            err = 0.5 * (err / net.log_idio_var.exp() + net.log_idio_var + math.log(2 * math.pi))
        else:
            err = err / net.r_var  # in units of the return variance: λ is scale-free
        recon = (err * batch.m).sum(-1) / batch.m.sum(-1).clamp_min(1.0)  # [S, B]
        return recon.mean() + cfg.kl_weight * kl  # eq. 30

    def forecast(self, net: RVRAENet, batch: Batch) -> dict[str, torch.Tensor]:
        cfg = self.config
        y = net.portfolios(batch)
        q = net.encode(y)
        beta = net.betas(batch.x)  # every stock: the target month's mask is not used
        mu_p, lv_p = q["mu_p"][:, -1], q["lv_p"][:, -1]  # prior from h_{t-1} (eq. 4)
        f_prior = net.decode(mu_p.unsqueeze(0), y)[0]  # [B, K]
        f_post = net.decode(q["mu_q"][:, -1].unsqueeze(0), y)[0]  # sees ret[t]
        # Prior draws for the risk forecast, from a generator seeded by the months: the same
        # months give the same r_std whatever the global RNG did before.
        gen = torch.Generator(device=mu_p.device).manual_seed(int(batch.months[0]))
        eps = torch.randn((cfg.mc_samples, *mu_p.shape), generator=gen, device=mu_p.device)
        f_draws = net.decode(mu_p + (0.5 * lv_p).exp() * eps, y)  # [S, B, K]
        r_draws = torch.einsum("bnk,sbk->sbn", beta, f_draws)  # [S, B, N]
        var = r_draws.var(dim=0, unbiased=False)
        if cfg.loss == "nll":
            var = var + net.log_idio_var.exp()
        return {
            "r_hat": torch.einsum("bnk,bk->bn", beta, f_prior),
            "beta": beta, "f_post": f_post, "f_prior": f_prior, "r_std": var.sqrt(),
        }


def _scales(panel: Panel, ridge: float, chunk: int = 24) -> tuple[float, float]:
    """RMS of the managed-portfolio returns and mean square of the returns over the training
    months: the input scale of the factor network and its output (and loss) scale."""
    months = panel.target_months
    ys = []
    with torch.no_grad():
        for s in range(0, len(months), chunk):
            mm = months[s : s + chunk]
            m = torch.from_numpy(panel.mask[mm].astype(np.float32))
            ys.append(managed_portfolios(
                torch.from_numpy(panel.chars[mm]), torch.from_numpy(panel.ret[mm]) * m, m, ridge
            ))
    y = torch.cat(ys) if ys else torch.zeros(1)
    y_scale = float(y.pow(2).mean().sqrt())
    live = panel.mask[months]
    r_var = float(np.mean(panel.ret[months][live].astype(np.float64) ** 2)) if live.any() else 0.0
    ok = lambda v, d: v if v > 0 and math.isfinite(v) else d  # noqa: E731
    return ok(y_scale, 1.0), ok(r_var, 1e-2)


MODEL = RVRAE
