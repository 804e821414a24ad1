"""The one training loop every neural model uses (SPEC §3).

Adam over months (one cross-section or a few per step), gradient clipping, early stopping on
the validation loss with patience and restore of the best weights, seeding on CPU or CUDA
(identical numbers for the same seed, data and thread count on a CPU; on CUDA cuDNN's
recurrent kernels are not bitwise reproducible, so a GPU rerun can differ in the last
digits), and an optional per-epoch progress callback (the study harness reports it to Tune).
Nothing model-specific lives here: a model supplies `loss(batch) -> scalar` only.
"""

from __future__ import annotations

import copy
import math
import random
from typing import Callable

import numpy as np
import torch

from rvrae.models.base import Batch, NeuralConfig, Progress


def seed_everything(seed: int) -> None:
    """Seed every RNG a model may touch. Same seed, same data, same CPU -> same numbers."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit_module(
    net: torch.nn.Module,
    loss_fn: Callable[[Batch], torch.Tensor],
    train_batch: Callable[[np.ndarray], Batch],
    valid_batch: Callable[[np.ndarray], Batch],
    train_months: np.ndarray,
    valid_months: np.ndarray,
    cfg: NeuralConfig,
    seed: int,
    progress: Progress | None = None,
    valid_fn: Callable[[Batch], torch.Tensor] | None = None,
    param_groups: list[dict] | None = None,
) -> list[dict]:
    """Train `net` in place; returns the per-epoch history. Early stopping watches
    `valid_fn` on the validation months (default: `loss_fn`). `param_groups` (Adam's, each may
    set its own `weight_decay`) default to every parameter at `cfg.weight_decay`. Raises
    FloatingPointError when the loss stops being finite (the harness records the trial as an
    error)."""
    rng = np.random.default_rng(seed)
    groups = param_groups if param_groups is not None else net.parameters()
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, bad, history = math.inf, None, 0, []
    bm = max(1, int(cfg.batch_months))
    for epoch in range(1, int(cfg.epochs) + 1):
        net.train()
        order = rng.permutation(np.asarray(train_months))
        # The epoch's loss is summed on the device, in float64, and read once at its end (the
        # same sum as adding loss.item() step by step): reading it every step would make a
        # GPU wait at each one. A non-finite loss is therefore refused at the end of its
        # epoch, not at its step; the fit is discarded either way.
        total = None
        for s in range(0, len(order), bm):
            loss = loss_fn(train_batch(order[s : s + bm]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip and cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            part = loss.detach().double() * len(order[s : s + bm])
            total = part if total is None else total + part
        train_loss = (total.item() if total is not None else 0.0) / max(1, len(order))
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss became {train_loss} at epoch {epoch}")
        valid_loss = evaluate_loss(net, valid_fn or loss_fn, valid_batch, valid_months, bm)
        if not math.isfinite(valid_loss):
            raise FloatingPointError(f"validation loss became {valid_loss} at epoch {epoch}")
        record = {"epoch": epoch, "train_loss": train_loss, "valid_loss": valid_loss}
        history.append(record)
        if progress is not None:
            progress(epoch, dict(record))
        if valid_loss < best:
            best, bad = valid_loss, 0
            best_state = copy.deepcopy(net.state_dict())
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)  # restore the best validation weights
    return history


def evaluate_loss(
    net: torch.nn.Module,
    loss_fn: Callable[[Batch], torch.Tensor],
    make_batch: Callable[[np.ndarray], Batch],
    months: np.ndarray,
    batch_months: int,
) -> float:
    """Mean loss over `months` in eval mode, without gradients. Sampling models draw from a
    generator seeded here, so the validation loss is the same on every call; the CPU and CUDA
    generators are restored after, so training's random numbers do not restart every epoch.
    No months is an error: a loss of 0.0 would be the best early stopping ever saw."""
    months = np.asarray(months)
    if len(months) == 0:
        raise ValueError("the validation set has no months to score (early stopping needs some): check the split")
    net.eval()
    total, count = None, 0
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    torch.manual_seed(0)  # seeds CUDA's generators too
    try:
        with torch.no_grad():
            for s in range(0, len(months), batch_months):
                part = months[s : s + batch_months]
                loss = loss_fn(make_batch(part)).double() * len(part)  # summed on the device
                total = loss if total is None else total + loss
                count += len(part)
    finally:
        torch.set_rng_state(state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    return total.item() / count
