"""Instrumented PCA (Kelly, Pruitt & Su 2019), restricted (no intercept); SPEC §3.2.

    r_{i,t} = z_{i,t} Γ f_t + ε_{i,t},   β_t = Z_t Γ   (Γ [C, K])

Estimated by alternating least squares on the managed-portfolio moments of each month,
A_t = Z_tᵀ Z_t [C, C] and b_t = Z_tᵀ r_t [C] over the month's live stocks:

    factor step   f_t = (Γᵀ A_t Γ)⁻¹ Γᵀ b_t                      (batched over months)
    Γ step        vec(Γ) = (Σ_t A_t ⊗ f_t f_tᵀ)⁻¹ Σ_t b_t ⊗ f_t    (one CK × CK solve)

Everything after the moments is O(T·C²·K²) per iteration, independent of the number of
stocks; the moments are one batched matmul. Initialisation, stopping rule and normalisation
follow the reference package `ipca` (bkelly-lab), which is our test oracle:
SVD of the per-month mean portfolios Q_t = b_t / n_t; stop when the largest absolute change
of Γ and of the factors falls below `tol`; after each step ΓᵀΓ = I, factors orthogonal
(ordered by their second moment), positive time-series mean.

Fit on the training months only; `valid` is not used to fit (IPCA has no early stopping),
only to report a validation loss once, for the harness. Out of sample, f_post is the realised
factor (ΓᵀZ_tᵀZ_tΓ)⁻¹ΓᵀZ_tᵀr_t (SPEC §3.2) and f_prior its prevailing mean (paper eq. 33).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rvrae.data.panel import Panel
from rvrae.errors import UserError
from rvrae.models.base import FactorModel, Forecast, forecast_from_prevailing_mean
from rvrae.models.checks import check_config

CHUNK = 4  # months per moments buffer: stays in cache (paper scale: 5,682 × 48 × 4 B × 4 = 4.4 MB)


@dataclass
class Config:
    n_factors: int = 5  # K: the paper's default (SPEC §3.1); KPS report K = 1..6
    max_iter: int = 10_000  # the reference package's default cap on ALS iterations
    tol: float = 1e-5  # the reference's `iter_tol=10e-6`: max |ΔΓ|, |Δf| to stop
    # Relative ridge on every solve (× the mean diagonal): keeps a characteristic that is all
    # zero (or a month with no stocks) from making a solve singular; 1e-8 moves nothing else.
    ridge: float = 1e-8
    # A constant instrument next to the characteristics, as KPS (their z_{i,t} holds one):
    # ranks average zero, so without it no beta carries the market level.
    constant: bool = True

    def __post_init__(self):
        check_config("ipca", self, at_least_1=("n_factors",))
        if self.max_iter < 1 or not self.tol > 0 or self.ridge < 0:
            raise UserError("ipca: max_iter must be >= 1, tol > 0 and ridge >= 0")


def instruments(chars: np.ndarray, constant: bool) -> np.ndarray:
    """Z as float64, with a leading column of ones when `constant`: [t, N, C (+1)]."""
    z = chars.astype(np.float64)
    return np.concatenate([np.ones_like(z[..., :1]), z], -1) if constant else z


def moments(
    chars: np.ndarray, ret: np.ndarray, mask: np.ndarray, constant: bool = False,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-month managed-portfolio moments over the live stocks, returned as float64:
    A [T, C, C] = ZᵀZ, b [T, C] = Zᵀr, rr [T] = rᵀr, n [T] = live stocks
    (C counts the constant instrument when there is one).

    All four come from ONE Gram matrix per month, G_t = X_tᵀX_t with X_t = [1, Z_t, r_t] masked
    to the live stocks ([N, C+2]), batched over CHUNK months in a reused buffer: one pass over
    the characteristics and one matmul. The chunks are shared out over `threads` threads
    (default torch's thread count, the one knob the harness sets to a trial's CPUs for every
    model) with BLAS held to one thread each: OpenBLAS's own threading
    barely helps these 48 × N products, two chunk threads run 1.75× one on 2 cores. Every
    month's Gram is the same BLAS call whatever the thread count, so results do not change.

    The Gram is accumulated in float32 (the panel's own precision; sgemm is twice dgemm's
    speed, and this matmul is most of an IPCA fit), every step after it in float64. Ranks in
    [-1, 1] are centred, so float32 costs almost nothing: against a float64 Gram, Γ moved by
    ≤ 3e-7 and total R² by ≤ 1e-14 on the planted IPCA panel (2,000 × 180 × 46) and the
    synthetic panels (714 × 252 × 20, 2,402 × 252 × 46), with the same ALS iteration counts."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    T, N, C = chars.shape
    c = int(constant)
    D = c + C + 1
    G = np.empty((T, D, D), np.float32)
    starts = range(0, T, CHUNK)  # chunks of months, never stocks
    if threads is None:
        import torch

        threads = torch.get_num_threads()
    threads = max(1, min(threads, len(starts)))

    def work(part: int) -> None:
        buf = np.empty((min(CHUNK, T), N, D), np.float32)
        for s in starts[part::threads]:
            m = mask[s : s + CHUNK]
            x = buf[: len(m)]
            np.multiply(chars[s : s + CHUNK], m[..., None], out=x[..., c : c + C])  # mask
            np.multiply(ret[s : s + CHUNK], m, out=x[..., -1])
            if constant:
                x[..., 0] = m
            np.matmul(x.transpose(0, 2, 1), x, out=G[s : s + CHUNK])

    with threadpool_limits(1, user_api="blas"):
        if threads == 1:
            work(0)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, range(threads)))  # list(): re-raises a worker's error
    G = G.astype(np.float64)
    return np.ascontiguousarray(G[:, :-1, :-1]), G[:, :-1, -1].copy(), G[:, -1, -1].copy(), mask.sum(1).astype(np.float64)


def _ridge_eye(M: np.ndarray, ridge: float) -> np.ndarray:
    """ridge × (mean diagonal, or 1 where the matrix is all zero) × I, batched over [..., d, d]."""
    d = M.shape[-1]
    scale = np.trace(M, axis1=-2, axis2=-1) / d
    scale = np.where(scale > 0, scale, 1.0)
    return (ridge * scale)[..., None, None] * np.eye(d)


def factor_step(gamma: np.ndarray, A: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
    """f_t = (ΓᵀA_tΓ)⁻¹Γᵀb_t for every month at once: [T, K]. Also the realised factor."""
    M = gamma.T @ (A @ gamma)  # [T, K, K] = ΓᵀA_tΓ (two broadcast matmuls: no einsum path search)
    return np.linalg.solve(M + _ridge_eye(M, ridge), (b @ gamma)[..., None])[..., 0]


def gamma_step(F: np.ndarray, A: np.ndarray, b: np.ndarray, ridge: float) -> np.ndarray:
    """Γ from Σ_t (A_t ⊗ f_t f_tᵀ) vec(Γ) = Σ_t b_t ⊗ f_t, one (C·K)² solve: [C, K]."""
    T, C, _ = A.shape
    K = F.shape[1]
    FF = (F[:, :, None] * F[:, None, :]).reshape(T, K * K)  # [T, K²]
    D = (A.reshape(T, C * C).T @ FF).reshape(C, C, K, K)  # Σ_t A_t[c,d] f_k f_j
    D = D.transpose(0, 2, 1, 3).reshape(C * K, C * K)  # row (c,k), col (d,j): kron order
    rhs = (b.T @ F).reshape(C * K)  # Σ_t b_t[c] f_t[k]
    return np.linalg.solve(D + _ridge_eye(D, ridge), rhs).reshape(C, K)


def normalise(gamma: np.ndarray, F: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference's identification: ΓᵀΓ = I, FᵀF diagonal (descending), mean(f) > 0.
    Γ ← Γ R₁⁻¹ R₂, F ← F R₁ᵀ R₂ with ΓᵀΓ = R₁ᵀR₁ and R₂ the eigenvectors of R₁FᵀFR₁ᵀ."""
    R1 = np.linalg.cholesky(gamma.T @ gamma).T  # upper: ΓᵀΓ = R1ᵀ R1
    R2, _, _ = np.linalg.svd(R1 @ (F.T @ F) @ R1.T)
    gamma = np.linalg.solve(R1.T, gamma.T).T @ R2  # Γ R1⁻¹ R2
    F = F @ R1.T @ R2
    sign = np.sign(F.mean(0))
    sign[sign == 0] = 1.0
    return gamma * sign, F * sign


def als(
    A: np.ndarray, b: np.ndarray, n: np.ndarray, K: int, max_iter: int, tol: float, ridge: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """IPCA by alternating least squares: (Γ [C, K], F [T, K], iterations)."""
    if K > A.shape[1]:
        raise UserError(f"ipca: n_factors = {K} exceeds the {A.shape[1]} characteristics")
    # Start as the reference: SVD of the mean portfolios Q [C, T] (Q_t = b_t / n_t).
    Q = (b / np.maximum(n, 1.0)[:, None]).T
    U, s, Vt = np.linalg.svd(Q, full_matrices=False)
    gamma, F = U[:, :K], (s[:K, None] * Vt[:K]).T
    for it in range(1, max_iter + 1):
        F_new = factor_step(gamma, A, b, ridge)
        g_new, F_new = normalise(gamma_step(F_new, A, b, ridge), F_new)
        change = max(np.abs(g_new - gamma).max(), np.abs(F_new - F).max())
        gamma, F = g_new, F_new
        if change <= tol:
            break
    return gamma, F, it


def _sse(gamma, F, A, b, rr) -> float:
    """Σ_t ‖r_t − Z_tΓf_t‖² from the moments alone."""
    G = A @ gamma  # [T, C, K]
    fit2 = np.einsum("tk,tck,cj,tj->", F, G, gamma, F, optimize=True)
    return float(rr.sum() - 2 * np.einsum("tc,ck,tk->", b, gamma, F) + fit2)


def _rows(panel: Panel, months: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """chars, ret, mask of `months`: a view (no copy) when the months are a contiguous run."""
    months = np.asarray(months)
    if len(months) and np.array_equal(months, np.arange(months[0], months[0] + len(months))):
        sl = slice(int(months[0]), int(months[0]) + len(months))
        return panel.chars[sl], panel.ret[sl], panel.mask[sl]
    return panel.chars[months], panel.ret[months], panel.mask[months]


class IPCA(FactorModel):
    name = "ipca"
    Config = Config
    uses_device = False  # float64 ALS in numpy

    def fit(self, train: Panel, valid: Panel, seed=0, device="cpu", progress=None):
        """ALS on the training months (deterministic: `seed` and `device` do not matter; the
        work is a few small float64 solves on the CPU). `progress` is called once, at the end,
        with the in-sample and validation MSE (valid never influences the fit)."""
        cfg = self.config
        A, b, rr, n = moments(*_rows(train, train.target_months), cfg.constant)
        self.gamma_, self.factors_, self.n_iter_ = als(
            A, b, n, cfg.n_factors, cfg.max_iter, cfg.tol, cfg.ridge
        )
        record = {"epoch": self.n_iter_, "train_loss": _sse(self.gamma_, self.factors_, A, b, rr)
                  / max(n.sum(), 1.0)}
        vm = valid.target_months
        if len(vm):
            Av, bv, rrv, nv = moments(*_rows(valid, vm), cfg.constant)
            fv = factor_step(self.gamma_, Av, bv, cfg.ridge)
            record["valid_loss"] = _sse(self.gamma_, fv, Av, bv, rrv) / max(nv.sum(), 1.0)
        self.history_ = [record]
        if progress is not None:
            progress(self.n_iter_, dict(record))
        return self

    def betas(self, chars: np.ndarray) -> np.ndarray:
        """β = ZΓ for [t, N, C] characteristics -> [t, N, K] float64 (Z with its constant)."""
        return instruments(chars, self.config.constant) @ self.gamma_

    def realised_factors(self, panel: Panel, months: np.ndarray) -> np.ndarray:
        """f_t = (ΓᵀZ_tᵀZ_tΓ)⁻¹ΓᵀZ_tᵀr_t over the month's live stocks (SPEC §3.2): [t, K] —
        the ALS factor step on the months' managed-portfolio moments."""
        A, b, _, _ = moments(*_rows(panel, months), self.config.constant)
        return factor_step(self.gamma_, A, b, self.config.ridge)

    def predict(self, panel: Panel, months: np.ndarray | None = None) -> Forecast:
        months = panel.target_months if months is None else np.asarray(months)
        # Realised factors of every month up to the last one, for the prevailing mean.
        f_all = self.realised_factors(panel, np.arange(int(months.max()) + 1)).astype(np.float32)
        beta = self.betas(panel.chars[months]).astype(np.float32)
        return forecast_from_prevailing_mean(months, beta, f_all[months], f_all)


MODEL = IPCA


def space(trial) -> None:
    """IPCA's natural equivalent of the searched hyperparameters: the number of factors K."""
    trial.suggest_int("n_factors", 1, 8)
