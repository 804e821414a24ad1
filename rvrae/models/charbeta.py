"""The conditional factor model shared by ALSTM and Transformer (SPEC §3.2), and the helper
that runs a per-stock sequence network over a batch's stocks.

    beta net    β_{i,t} = g(x_{i,t-L+1..t})      a sequence net over each stock's window
    factor net  f_t = CAFactorNet(Z_t, r_t)      GKX's linear map of the month's managed
                                                 portfolios (the same layer as CA)
    output      r̂_t = β_t f_t;  loss = masked MSE of r_t vs β_t f_t (as CA, GKX)

Qlib's ALSTM and Transformer predict a return directly; SPEC §3.2 uses them as the beta
network of a CA-style factor model so that all six models produce β, factors and both R²s
uniformly. There is no factor forecaster: `forecast` returns β and f_post only, and predict()
forecasts with the prevailing mean of f_post (base.py; GKX, paper eq. 33).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from rvrae.data.panel import Panel
from rvrae.models.base import Batch, NeuralFactorModel, rows_with_chars
from rvrae.models.ca import CAFactorNet, masked_mse

# Sequences per forward call when no gradient is kept (predict, validation): bounds the
# activation memory at paper scale (12 months × 5,682 stocks per predict chunk).
EVAL_ROWS = 8192


def over_stocks(
    net: nn.Module, x: torch.Tensor, rows: torch.Tensor | None = None, eval_rows: int = EVAL_ROWS,
) -> torch.Tensor:
    """Apply a per-stock sequence net to every stock of every month of a batch at once.

    x [B, L, N, C] -> net([rows, L, C]) -> [B, N, D]. Stocks whose whole window is zero (not
    listed, or before the panel starts) are not run: they get net(zero window), computed once,
    which is exactly what running them would give (each row is independent) at a fraction of
    the cost on a panel whose union of stocks is much larger than a month's cross-section.
    Without gradients the live rows go through in chunks of `eval_rows` to bound memory.
    `rows` ([S] flat b·N + n, ascending) names the live rows where the caller knows them
    (`Batch.seen_rows()`, found on the host): finding them here waits for the device.
    """
    B, L, N, C = x.shape
    seqs = x.permute(0, 2, 1, 3).reshape(B * N, L, C)  # [B·N, L, C]
    idx = rows if rows is not None else rows_with_chars(x)
    zero = net(seqs.new_zeros(1, L, C))  # [1, D]
    if torch.is_grad_enabled() or len(idx) <= eval_rows:
        parts = [net(seqs[idx])] if len(idx) else []
    else:
        parts = [net(seqs[idx[s : s + eval_rows]]) for s in range(0, len(idx), eval_rows)]
    out = zero.expand(B * N, -1)
    if parts:
        out = out.index_put((idx,), torch.cat(parts))  # out-of-place: autograd-safe
    return out.reshape(B, N, -1)  # [B, N, D]


class CharBetaNet(nn.Module):
    """A sequence beta net (rows [S, L, C] -> [S, K]) + GKX's factor net on the month."""

    def __init__(self, beta_net: nn.Module, n_chars: int, n_factors: int, ridge: float):
        super().__init__()
        self.beta = beta_net
        self.factor = CAFactorNet(n_chars, n_factors, ridge)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        beta = over_stocks(self.beta, batch.x, batch.seen_rows())  # [B, N, K] from chars[..t]
        f = self.factor(batch.x[:, -1], batch.r, batch.m)  # [B, K]: realised (uses r_t)
        return beta, f


class CharBetaFactorModel(NeuralFactorModel):
    """Base of ALSTM and Transformer: subclasses declare `beta_net(n_chars)` only. Their
    Config must carry n_factors, ridge (and the NeuralConfig fields)."""

    @abstractmethod
    def beta_net(self, n_chars: int) -> nn.Module:
        """A module mapping rows [S, L, C] to betas [S, K]."""

    def build(self, panel: Panel) -> nn.Module:
        cfg = self.config
        return CharBetaNet(self.beta_net(panel.C), panel.C, cfg.n_factors, cfg.ridge)

    def loss(self, net: CharBetaNet, batch: Batch) -> torch.Tensor:
        beta, f = net(batch)
        r_hat = torch.einsum("bnk,bk->bn", beta, f)  # r̂ = β f_post
        return masked_mse(batch.r, r_hat, batch.m)

    def forecast(self, net: CharBetaNet, batch: Batch) -> dict[str, torch.Tensor]:
        beta, f = net(batch)
        return {"beta": beta, "f_post": f}  # no factor forecaster: prevailing mean (base.py)
