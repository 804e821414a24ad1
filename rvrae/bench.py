"""Seconds per epoch and peak memory of one model at paper scale (5,682 stocks × 252 months ×
46 characteristics), on a random panel built in memory — no file, no preprocessing.

    python -m rvrae.bench --model rvrae [--stocks 5682 --months 252 --chars 46 --seq-len 12
                                         --factors 5 --epochs 1 --device cpu --config JSON]

prints one JSON line: seconds_per_epoch, peak_rss_mb, n_stocks, n_months, n_chars, model, ...
The speed study calls `epoch_benchmark` in a fresh subprocess per model, so that peak RSS
(`peak_rss_mb`, the high-water mark of the process) belongs to that model alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from rvrae.data.panel import Panel
from rvrae.errors import UserError


def random_panel(
    n_stocks: int = 5682, n_months: int = 252, n_chars: int = 46, alive: float = 0.55,
    seed: int = 0,
) -> Panel:
    """Random ranks in [-1, 1], ~`alive` of the stocks with a return each month, returns
    ~ N(0, 0.1): the paper's shapes, no signal."""
    rng = np.random.default_rng(seed)
    chars = rng.uniform(-1.0, 1.0, (n_months, n_stocks, n_chars)).astype(np.float32)
    mask = rng.uniform(size=(n_months, n_stocks)) < alive
    ret = (0.1 * rng.standard_normal((n_months, n_stocks))).astype(np.float32)
    return Panel.from_arrays(chars, ret, mask, source="bench(random)")


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM of /proc/self/status, the high-water
    mark of its own address space. Not `ru_maxrss`: Linux carries that across fork + exec, so
    a subprocess of a large parent would report the parent's size (every model 626 MB in a
    quick speed run). `ru_maxrss` only where /proc is missing."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def wait_for_peers(barrier: str | None, timeout: float = 3600.0) -> None:
    """`barrier` "DIR:N": mark this process ready in DIR, then wait until N are, so that fits
    sharing a device (speed case s) start together whatever their imports and panel building
    took. None: return at once."""
    if not barrier:
        return
    folder, _, n = barrier.rpartition(":")
    if not folder or not n.isdigit() or int(n) < 1:
        raise UserError(f"--barrier: expected DIR:N, got {barrier!r}")
    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"--barrier {barrier}: {folder} is not a directory")
    (path / f"ready.{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len(list(path.glob("ready.*"))) < int(n):
        if time.monotonic() > deadline:
            raise UserError(f"--barrier {barrier}: the other processes did not come in {timeout:.0f} s")
        time.sleep(0.01)


def check_device(device: str) -> None:
    """`cpu` or `cuda[:N]` that torch can use here, else a UserError."""
    import re

    import torch

    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise UserError(f"--device: expected cpu or cuda[:N], got {device!r}")
    if device != "cpu":
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA device on this machine")
        index = torch.device(device).index or 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: torch sees {torch.cuda.device_count()} CUDA device(s)")


def epoch_benchmark(
    model: str,
    n_stocks: int = 5682,
    n_months: int = 252,
    n_chars: int = 46,
    seq_len: int = 12,
    n_factors: int = 5,
    epochs: int = 1,
    device: str = "cpu",
    config: dict | None = None,
    seed: int = 0,
    barrier: str | None = None,
) -> dict:
    """Fit `model` for `epochs` on a random paper-scale panel; time it and read peak RSS.

    Split: the last 1/7 of the months test (unused), the 1/7 before valid, the rest train —
    15/3/3 years at 252 months. `seq_len`, `n_factors` and `epochs` go into the config where
    the model has those fields; `config` overrides anything (unknown keys raise UserError).
    Early stopping is off (patience = epochs) so exactly `epochs` epochs run. `barrier`
    ("DIR:N"): the fit starts once N processes given that barrier are ready (`wait_for_peers`).
    """
    import torch

    from rvrae.models.registry import get_spec

    # the flags first, named as the user typed them (the config's own check says `epochs`)
    if n_months < 7:
        raise UserError(f"--months must be at least 7, got {n_months}")
    for flag, v in (("--stocks", n_stocks), ("--chars", n_chars), ("--epochs", epochs),
                    ("--seq-len", seq_len), ("--factors", n_factors)):  # fmt: skip
        if v < 1:
            raise UserError(f"{flag} must be at least 1, got {v}")
    check_device(device)
    spec = get_spec(model)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    wanted = {"seq_len": seq_len, "n_factors": n_factors, "epochs": epochs, "patience": epochs}
    cfg = {k: v for k, v in wanted.items() if k in fields}
    cfg.update(config or {})
    est = spec.cls(cfg)
    panel = random_panel(n_stocks, n_months, n_chars, seed=seed)
    k = n_months // 7
    train = panel.view(np.arange(0, n_months - 2 * k))
    valid = panel.view(np.arange(n_months - 2 * k, n_months - k))

    # One-time costs out of the timing: the first optimizer imports torch._dynamo (seconds).
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    cuda = device.startswith("cuda")
    if cuda:  # every cuda call below then means `device` (cuda:1 is not GPU 0)
        torch.cuda.set_device(torch.device(device))
    ends: list[float] = []  # perf_counter at the end of each epoch (its validation included)

    def epoch_end(epoch: int, record: dict) -> None:
        if cuda:
            torch.cuda.synchronize(device)
        ends.append(time.perf_counter())

    wait_for_peers(barrier)
    started, t0 = time.time(), time.perf_counter()
    est.fit(train, valid, seed=seed, device=device, progress=epoch_end)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    ran = max(1, len(ends))
    first = ends[0] - t0 if ends else seconds
    # Several epochs: the per-epoch figure is the steady state (epochs 2..n), since the first
    # pays one-time costs (CUDA context, cuBLAS/cuDNN plans); one epoch: the whole fit.
    per_epoch = (ends[-1] - ends[0]) / (ran - 1) if ran > 1 else seconds
    return {
        "model": model,
        "seconds_per_epoch": per_epoch,
        "first_epoch_seconds": first,
        "fit_seconds": seconds,
        "started": started,  # wall clock (epoch seconds) around the fit: fits run side by side
        "ended": started + seconds,  # (speed case s) are checked to overlap by these
        "epochs": ran,
        "peak_rss_mb": peak_rss_mb(),
        "gpu_peak_mb": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan"),
        "n_stocks": n_stocks,
        "n_months": n_months,
        "n_chars": n_chars,
        "seq_len": seq_len,
        "n_factors": n_factors,
        "device": device + (f" ({torch.cuda.get_device_name(device)})" if cuda else ""),
        "torch_threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rvrae.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--stocks", type=int, default=5682)
    ap.add_argument("--months", type=int, default=252)
    ap.add_argument("--chars", type=int, default=46)
    ap.add_argument("--seq-len", type=int, default=12)
    ap.add_argument("--factors", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--config", default=None, help="JSON object of config overrides")
    ap.add_argument("--barrier", default=None, help="DIR:N: start the fit once N processes are ready")
    a = ap.parse_args(argv)
    try:
        config = json.loads(a.config) if a.config else None
        if config is not None and not isinstance(config, dict):
            raise UserError("--config must be a JSON object")
        if a.threads is not None and a.threads < 1:
            raise UserError(f"--threads must be at least 1, got {a.threads}")
        if a.threads:
            import torch

            torch.set_num_threads(a.threads)
        out = epoch_benchmark(
            a.model, n_stocks=a.stocks, n_months=a.months, n_chars=a.chars, seq_len=a.seq_len,
            n_factors=a.factors, epochs=a.epochs, device=a.device, config=config, barrier=a.barrier,
        )
    except (UserError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
