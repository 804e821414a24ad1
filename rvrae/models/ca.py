"""Gu-Kelly-Xiu conditional autoencoder, CA0–CA3 (GKX 2021, "Autoencoder asset pricing
models"; SPEC §3.2).

    beta net    β_t = g(Z_t)              Z_t = chars of the target month (known before r_t)
                g = [Linear -> BatchNorm -> ReLU] × depth -> Linear(K)
                hidden sizes: CA0 none, CA1 32, CA2 32-16, CA3 32-16-8
    factor net  f_t = W y_t,  y_t = (Z̃_tᵀ M Z̃_t + εI)⁻¹ Z̃_tᵀ M r_t  (managed portfolios -> K)
                Z̃ = [1, Z]: a constant instrument, our reading (see CAFactorNet)
    output      r̂_t = β_t f_t;  loss = masked MSE + λ₁ Σ|weights|

f_post is the factor net on the month's own portfolios (it uses r_t: the realised factor).
There is no factor forecaster, so `predict` forecasts with the prevailing mean of f_post
(GKX; SPEC §3.2) through the shared NeuralFactorModel machinery.

`CAFactorNet` is reused as the factor side of ALSTM and Transformer (SPEC §3.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rvrae.data.panel import Panel
from rvrae.errors import UserError
from rvrae.models.base import Batch, NeuralConfig, NeuralFactorModel
from rvrae.models.checks import FORECASTS, check_config
from rvrae.models.layers import managed_portfolios

# GKX's architectures: hidden widths of the beta net for CA0..CA3.
HIDDEN = {0: (), 1: (32,), 2: (32, 16), 3: (32, 16, 8)}


class CAFactorNet(nn.Module):
    """GKX factor net: linear map of the month's characteristic-managed portfolios to K
    factors. forward(z [B,N,C], r [B,N], m [B,N] float) -> f [B,K].

    With `constant` (default) a column of ones joins Z before the portfolio solve, as KPS and
    GKX include a constant instrument: ranks in [-1, 1] average zero, so without it no
    portfolio carries the market level and a market factor cannot be recovered."""

    def __init__(self, n_chars: int, n_factors: int, ridge: float = 1e-4, constant: bool = True):
        super().__init__()
        self.ridge = ridge
        self.constant = constant
        # GKX write f_t = W₂ x_t with x_t the managed portfolios: linear, no intercept.
        self.linear = nn.Linear(n_chars + int(constant), n_factors, bias=False)

    def forward(self, z: torch.Tensor, r: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        y = managed_portfolios(z, r, m, self.ridge, self.constant)  # [B, (1 +) C]
        return self.linear(y)  # [B, K]


class CABetaNet(nn.Module):
    """GKX beta net on one month's characteristics: z [B,N,C] (+ mask [B,N]) -> β [B,N,K].

    BatchNorm statistics are taken over the live stocks of the batch only (dead stocks have
    all-zero characteristics and would drag the statistics); in eval mode the running
    statistics apply to every stock."""

    def __init__(self, n_chars: int, n_factors: int, hidden: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_chars
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, n_factors))
        self.net = nn.Sequential(*layers)
        self.n_factors = n_factors

    def forward(
        self, z: torch.Tensor, m: torch.Tensor | None = None,
        live: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """`live`: (b, n) of m > 0 where the caller found them on the host
        (`Batch.live`); finding them here waits for the device."""
        B, N, C = z.shape
        flat = z.reshape(B * N, C)  # [B·N, C]
        if not self.training or m is None:
            return self.net(flat).reshape(B, N, self.n_factors)
        if live is None:
            live = (m > 0).nonzero(as_tuple=True)
        rows = live[0] * N + live[1]  # [S] flat rows, ascending: the order m > 0 selects in
        if len(rows) < 2:  # BatchNorm cannot train on fewer than two rows
            return flat.new_zeros(B, N, self.n_factors)
        out = flat.new_zeros(B * N, self.n_factors)
        out = out.index_put((rows,), self.net(flat[rows]))
        return out.reshape(B, N, self.n_factors)  # [B, N, K]


class CANet(nn.Module):
    def __init__(self, n_chars: int, cfg: "Config"):
        super().__init__()
        hidden = tuple(max(1, round(h * cfg.width_scale)) for h in HIDDEN[cfg.depth])
        self.beta = CABetaNet(n_chars, cfg.n_factors, hidden)
        self.factor = CAFactorNet(n_chars, cfg.n_factors, cfg.ridge)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        z = batch.x[:, -1]  # [B, N, C]: Z_t, known before r_t
        beta = self.beta(z, batch.m, batch.live)  # [B, N, K]
        f = self.factor(z, batch.r, batch.m)  # [B, K]: realised factor (uses r_t)
        return beta, f


@dataclass
class Config(NeuralConfig):
    n_factors: int = 5  # K: the paper's default latent size (SPEC §3.1); GKX report K = 1..6
    depth: int = 1  # CA1 (hidden 32): GKX find CA1–CA2 best out of sample; CA1 is the cheaper
    width_scale: float = 1.0  # multiplies GKX's widths 32 / 16 / 8 (searched)
    l1: float = 1e-5  # λ₁ L1 on weights: the low end of GKX's grid {1e-5, 1e-4, 1e-3}
    ridge: float = 1e-4  # ε of the managed-portfolio solve, per live stock (SPEC §2.2)
    lr: float = 1e-3  # Adam; GKX's grid {1e-3, 1e-2}
    epochs: int = 100  # GKX cap; early stopping ends sooner
    patience: int = 5  # GKX early stopping
    seq_len: int = 1  # CA is static: only the target month's characteristics are used
    # GKX train with batches of 10,000 stock-months: ~ a few months of a CRSP cross-section.
    batch_months: int = 4

    def __post_init__(self):
        if self.depth not in HIDDEN:
            raise UserError(f"ca: depth must be 0, 1, 2 or 3 (CA0–CA3), got {self.depth}")
        check_config("ca", self, at_least_1=("n_factors",), choices={"forecast": FORECASTS})


def masked_mse(r: torch.Tensor, r_hat: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the stock-months present (m = 1): GKX's loss, shared by CA and
    the sequence baselines (charbeta.py)."""
    return ((r - r_hat) ** 2 * m).sum() / m.sum().clamp_min(1.0)


class CA(NeuralFactorModel):
    name = "ca"
    Config = Config

    def build(self, panel: Panel) -> nn.Module:
        return CANet(panel.C, self.config)

    def loss(self, net: CANet, batch: Batch) -> torch.Tensor:
        beta, f = net(batch)
        r_hat = torch.einsum("bnk,bk->bn", beta, f)  # r̂ = β f
        mse = masked_mse(batch.r, r_hat, batch.m)
        # L1 on the weight matrices of both nets (not biases or BatchNorm scales), as GKX.
        l1 = sum(p.abs().sum() for p in net.parameters() if p.dim() > 1)
        return mse + self.config.l1 * l1

    def forecast(self, net: CANet, batch: Batch) -> dict[str, torch.Tensor]:
        beta, f = net(batch)
        return {"beta": beta, "f_post": f}  # no factor forecaster: prevailing mean (base.py)


MODEL = CA


def space(trial) -> None:
    """Optuna define-by-run space: K, the L1 strength (the KL-weight analogue of RVRAE's
    search), the hidden width scale and the learning rate (SPEC §3.1 design card)."""
    trial.suggest_int("n_factors", 1, 8)
    trial.suggest_float("l1", 1e-6, 1e-3, log=True)
    trial.suggest_categorical("width_scale", [0.5, 1.0, 2.0])
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
