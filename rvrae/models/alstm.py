"""ALSTM (Qin et al. 2017, "A dual-stage attention-based RNN"; Qlib's `pytorch_alstm`) as the
beta network of a conditional factor model whose factor side is GKX's CA factor net
(SPEC §3.2; the shared model is in charbeta.py).

Qlib's network, per stock window x [L, C]:
    h_τ   = tanh(W_in x_τ + b)                         input net (Linear + Tanh)
    o_τ   = GRU₂(h)_τ                                  2-layer GRU (Qlib's default rnn_type)
    a     = softmax_τ(w₂ᵀ tanh(dropout(W₁ o_τ)))       temporal attention
    out   = W_out [o_L ; Σ_τ a_τ o_τ]                  last state ⊕ attention pooling
Qlib's head outputs one return; here it outputs the K betas.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rvrae.models.checks import FORECASTS, check_config
from rvrae.models.base import NeuralConfig
from rvrae.models.charbeta import CharBetaFactorModel


class ALSTMBetaNet(nn.Module):
    """rows [S, L, C] -> β [S, K] (Qlib's ALSTMModel with a K-wide head)."""

    def __init__(self, n_chars: int, hidden: int, layers: int, dropout: float, n_factors: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(n_chars, hidden), nn.Tanh())
        self.rnn = nn.GRU(
            hidden, hidden, num_layers=layers, batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.att = nn.Sequential(
            nn.Linear(hidden, max(1, hidden // 2)),
            nn.Dropout(dropout),
            nn.Tanh(),
            nn.Linear(max(1, hidden // 2), 1, bias=False),
        )
        self.out = nn.Linear(2 * hidden, n_factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o, _ = self.rnn(self.net(x))  # [S, L, H]
        a = torch.softmax(self.att(o), dim=1)  # [S, L, 1]: attention over time
        pooled = (a * o).sum(dim=1)  # [S, H]
        return self.out(torch.cat([o[:, -1], pooled], dim=-1))  # [S, K]


@dataclass
class Config(NeuralConfig):
    n_factors: int = 5  # K: the paper's default latent size (SPEC §3.1), as CA
    hidden: int = 64  # Qlib pytorch_alstm hidden_size
    layers: int = 2  # Qlib num_layers
    dropout: float = 0.0  # Qlib default; searched (the regulariser standing in for KL weight)
    ridge: float = 1e-4  # ε of the managed-portfolio solve, per live stock (SPEC §2.2)
    lr: float = 1e-3  # Qlib default
    epochs: int = 50  # cap; early stopping (Qlib early_stop 20 on daily data) ends sooner
    patience: int = 5
    seq_len: int = 12  # window of monthly characteristics (SPEC §2.2)

    def __post_init__(self):
        check_config("alstm", self, at_least_1=("n_factors", "hidden", "layers"), unit=("dropout",),
                     choices={"forecast": FORECASTS})


class ALSTM(CharBetaFactorModel):
    name = "alstm"
    Config = Config

    def beta_net(self, n_chars: int) -> nn.Module:
        c = self.config
        return ALSTMBetaNet(n_chars, c.hidden, c.layers, c.dropout, c.n_factors)


MODEL = ALSTM


def space(trial) -> None:
    """Optuna define-by-run space: K, dropout (ALSTM's regulariser, in the KL weight's slot),
    hidden size and learning rate (SPEC §3.1 design card)."""
    trial.suggest_int("n_factors", 1, 8)
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_categorical("hidden", [32, 64, 128])
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
