"""Building blocks shared by several models."""

from __future__ import annotations

import torch


def managed_portfolios(
    z: torch.Tensor, r: torch.Tensor, m: torch.Tensor, ridge: float = 1e-4, constant: bool = False
) -> torch.Tensor:
    """Characteristic-managed portfolio returns y = (Zᵀ M Z + εI)⁻¹ Zᵀ M r (GKX; SPEC §3.1).

    z [..., N, C], r [..., N], m [..., N] (float mask) -> y [..., C (+1)]. Batched over any
    leading dims (months, window steps). The ridge ε (scaled by the number of live stocks)
    keeps the solve well posed when a characteristic is all zero in a month (SPEC §2.2).

    With `constant` a column of ones joins Z first (y's first entry), as KPS and GKX include a
    constant instrument: ranks in [-1, 1] average zero across stocks every month, so without
    it no portfolio carries the market level and a market factor cannot be recovered.
    """
    if constant:
        z = torch.cat([torch.ones_like(z[..., :1]), z], -1)  # [..., N, 1 + C]
    zm = z * m.unsqueeze(-1)  # [..., N, C]
    gram = zm.transpose(-1, -2) @ z  # [..., C, C]
    n = m.sum(-1).clamp_min(1.0)[..., None, None]  # live stocks
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    rhs = (zm * r.unsqueeze(-1)).sum(-2, keepdim=False).unsqueeze(-1)  # [..., C, 1]
    # solve_ex: the same solve without its error check, which on a GPU waits for the device
    # every call; the ridge keeps the system positive definite, and a failure would show as a
    # non-finite loss, which the training loop refuses
    return torch.linalg.solve_ex(gram + ridge * n * eye, rhs, check_errors=False)[0].squeeze(-1)
