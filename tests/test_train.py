"""The shared training loop: early stopping with best-weight restore, NaN detection, seeding."""

import sys

import numpy as np
import pytest
import torch

from rvrae.models.base import NeuralConfig
from rvrae.train import fit_module, seed_everything


class _Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


def _run(cfg, losses=None, valid=None):
    """Train a 1-parameter net whose validation loss follows `valid` (a list by epoch)."""
    net = _Toy()
    calls = {"valid": 0}

    def loss_fn(batch):
        if batch == "valid":
            v = valid[min(calls["valid"], len(valid) - 1)]
            return (net.w * 0).sum() + v
        return (net.w - 1.0).pow(2).sum() if losses is None else losses(net)

    def valid_batch(months):
        return "valid"

    def count_epoch(epoch, rec):
        calls["valid"] += 1

    hist = fit_module(
        net, loss_fn, train_batch=lambda m: "train", valid_batch=valid_batch,
        train_months=np.arange(5), valid_months=np.arange(2), cfg=cfg, seed=0,
        progress=count_epoch,
    )
    return net, hist


def test_early_stopping_stops_after_patience_and_restores_best():
    valid = [5.0, 3.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    cfg = NeuralConfig(epochs=20, patience=2, lr=0.1)
    net, hist = _run(cfg, valid=valid)
    # best at epoch 2, then 2 epochs without improvement -> stop after epoch 4
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[1]["valid_loss"] == pytest.approx(3.0)
    # restored weights are those after epoch 2 (w moved towards 1 by Adam steps, 5 per epoch)
    net2 = _Toy()
    opt = torch.optim.Adam(net2.parameters(), lr=0.1)
    for _ in range(10):
        opt.zero_grad(); (net2.w - 1.0).pow(2).sum().backward()
        torch.nn.utils.clip_grad_norm_(net2.parameters(), 1.0); opt.step()
    assert torch.equal(net.w, net2.w)


def test_nan_loss_raises():
    cfg = NeuralConfig(epochs=3, patience=2)
    with pytest.raises(FloatingPointError, match="epoch 1"):
        _run(cfg, losses=lambda net: net.w.sum() * float("nan"), valid=[1.0])


def test_the_loop_reads_its_losses_once_an_epoch_not_once_a_step(monkeypatch):
    """Reading a loss (`.item()`, a truth value) makes a GPU wait for the device; the loop
    sums the epoch's losses on the device and reads the sum once (train, then valid), and
    the sum is the one adding every step's loss gives."""
    import rvrae.train

    reads = []
    item = torch.Tensor.item

    def counted(t):
        if sys._getframe(1).f_code.co_filename == rvrae.train.__file__:
            reads.append(t.dtype)
        return item(t)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    steps = []
    net = _Toy()

    def loss_fn(batch):
        loss = (net.w - 1.0).pow(2).sum() + 0.1 * len(steps) ** 0.5  # float32, changes per step
        if batch == "train":
            steps.append(float(item(loss)))
        return loss

    cfg = NeuralConfig(epochs=3, patience=5, batch_months=1)
    hist = fit_module(net, loss_fn, train_batch=lambda m: "train", valid_batch=lambda m: "valid",
                      train_months=np.arange(7), valid_months=np.arange(4), cfg=cfg, seed=0)
    assert len(steps) == 21 and reads == [torch.float64] * 6  # 2 reads an epoch, 21 steps
    expect = 0.0
    for v in steps[:7]:
        expect += v  # what adding loss.item() step by step gives
    assert hist[0]["train_loss"] == expect / 7


def test_seed_everything_makes_torch_draws_repeat():
    seed_everything(7)
    a = torch.randn(5)
    seed_everything(7)
    assert torch.equal(a, torch.randn(5))


def test_evaluate_loss_restores_the_cuda_generators_too(monkeypatch):
    """Validation seeds every generator with 0; training's CUDA draws must go on from where
    they were, not restart every epoch. A fake CUDA state stands in for the GPU."""
    from rvrae.train import evaluate_loss

    cuda = {"state": "training-draws"}
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [cuda["state"]])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: cuda.update(state=states[0]))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: cuda.update(state=f"seeded {seed}"))
    seen = []
    net = _Toy()
    loss = evaluate_loss(net, lambda b: seen.append(cuda["state"]) or net.w.sum() + 1.0, lambda m: m, np.arange(3), 2)
    assert loss == pytest.approx(1.0)
    assert seen == ["seeded 0", "seeded 0"]  # validation draws from the fixed seed ...
    assert cuda["state"] == "training-draws"  # ... and training's generator is back as it was


def test_empty_validation_set_is_an_error_not_a_perfect_loss():
    from rvrae.train import evaluate_loss

    with pytest.raises(ValueError, match="validation set has no months"):
        evaluate_loss(_Toy(), lambda b: torch.tensor(1.0), lambda m: m, np.arange(0), 1)
    net = _Toy()
    with pytest.raises(ValueError, match="validation set has no months"):
        fit_module(net, lambda b: (net.w - 1).pow(2).sum(), lambda m: m, lambda m: m, np.arange(4),
                   np.arange(0), NeuralConfig(epochs=2, patience=1), seed=0)  # fmt: skip
