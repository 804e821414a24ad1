"""Transformer (Qlib's `pytorch_transformer`) as the beta network of a conditional factor
model whose factor side is GKX's CA factor net (SPEC §3.2; the shared model is charbeta.py).

Qlib's network, per stock window x [L, C]:
    h = Linear(C -> d_model)(x) + sinusoidal positions    (Vaswani et al.)
    h = TransformerEncoder(d_model, 2 heads, 2 layers, dropout)(h)
    out = Linear(d_model -> K)(h_L)                       the last step; Qlib outputs 1 return
Deviation: Qlib inherits PyTorch's feed-forward width 2048; we default to 4·d_model = 256
(Vaswani's ratio) because 2048 needs ~2 GB of activations per month of a paper-scale panel
(5,682 stocks × 12 steps); `ff_dim = 2048` restores Qlib's network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from rvrae.errors import UserError
from rvrae.models.base import NeuralConfig
from rvrae.models.checks import FORECASTS, check_config
from rvrae.models.charbeta import CharBetaFactorModel


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """[length, d_model]: sin on even, cos on odd channels (Vaswani et al.; as Qlib)."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(1e4) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d_model // 2]
    return pe


class TransformerBetaNet(nn.Module):
    """rows [S, L, C] -> β [S, K] (Qlib's Transformer with a K-wide head)."""

    def __init__(self, n_chars: int, cfg: "Config"):
        super().__init__()
        self.feature = nn.Linear(n_chars, cfg.d_model)
        self.register_buffer("pe", sinusoidal_positions(cfg.seq_len, cfg.d_model), persistent=False)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.heads, dim_feedforward=cfg.ff_dim, dropout=cfg.dropout,
            batch_first=True,
        )
        # Without the nested-tensor fast path: the same kernels in train and eval mode.
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Linear(cfg.d_model, cfg.n_factors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.feature(x) + self.pe[: x.shape[1]]  # [S, L, d_model]
        h = self.encoder(h)  # [S, L, d_model]
        return self.head(h[:, -1])  # [S, K]


@dataclass
class Config(NeuralConfig):
    n_factors: int = 5  # K: the paper's default latent size (SPEC §3.1), as CA
    d_model: int = 64  # Qlib pytorch_transformer d_model
    heads: int = 2  # Qlib nhead
    layers: int = 2  # Qlib num_layers
    ff_dim: int = 256  # 4·d_model (Vaswani); Qlib's implicit 2048 is too heavy (module doc)
    dropout: float = 0.0  # Qlib default; searched (the regulariser standing in for KL weight)
    ridge: float = 1e-4  # ε of the managed-portfolio solve, per live stock (SPEC §2.2)
    lr: float = 1e-3  # Adam, as every neural model here
    epochs: int = 50  # cap; early stopping ends sooner
    patience: int = 5
    seq_len: int = 12  # window of monthly characteristics (SPEC §2.2)

    def __post_init__(self):
        check_config("transformer", self, at_least_1=("n_factors", "d_model", "heads", "layers", "ff_dim"),
                     unit=("dropout",), choices={"forecast": FORECASTS})  # fmt: skip
        if self.d_model % self.heads:
            raise UserError(
                f"transformer: d_model ({self.d_model}) must be divisible by heads ({self.heads})"
            )


class Transformer(CharBetaFactorModel):
    name = "transformer"
    Config = Config

    def beta_net(self, n_chars: int) -> nn.Module:
        return TransformerBetaNet(n_chars, self.config)


MODEL = Transformer


def space(trial) -> None:
    """Optuna define-by-run space: K, dropout (in the KL weight's slot), width d_model and
    learning rate (SPEC §3.1 design card). d_model choices are even, so 2 heads divide them."""
    trial.suggest_int("n_factors", 1, 8)
    trial.suggest_float("dropout", 0.0, 0.5)
    trial.suggest_categorical("d_model", [32, 64, 128])
    trial.suggest_float("lr", 1e-4, 1e-2, log=True)
