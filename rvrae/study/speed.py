"""The speed study (issue 7): how fast the tables arrive, as RATIOS against a reference run
measured in the same process or study (the machine may be shared and noisy); absolute
seconds are kept as context only.

    python studies/speed.py [--quick] [--cases abcdefgh] [--repeats N] [--out results]
    python studies/speed.py --cases s --device cuda       # fits sharing one GPU
    python studies/speed.py --cases bs --models alstm,ca  # cases b and s for these models

Cases (medians over repeats):
  a  IPCA vs the peer package `ipca`: time ratio peer/ours and ΔR² (target ≥ 30× at |ΔR²| ≤ 1e-4)
  b  every model at paper scale: seconds per epoch and peak RSS, one subprocess per model
     (`python -m rvrae.bench`); ratio = sec/epoch ÷ RVRAE's (target RSS ≤ 2 GB)
  c  harness overhead: 12 short trials through Ray Tune (`run_study`, 1 concurrent trial) vs
     the same trials called one after another in a new Python process (target ≤ 1.10);
     `Grid` says which trials, BUILTIN_GRID is held to the target, CONTEXT_GRIDS are shorter
  d  concurrency: the same grid through Tune with 1 vs 2 concurrent trials (target ≥ 1.7×)
  e  scaling: fit time vs stocks for RVRAE and IPCA; log-log slope of time on N
  f  `rvrae demo` wall time in a subprocess (target ≤ 300 s)
  g  early stopping: a tune study of RVRAE on the built-in panel with ASHA vs without (same
     Optuna seed, so both draw the same first configs): the best validation objective of
     each, the seed noise of the best config (std over `Asha.seeds` seeds), and the summed
     trial time, ratio = ASHA ÷ none (target ≤ 0.5 with the best within the seed noise)
  h  forecast storage: a benchmark grid with vs without stored forecasts (--no-forecasts),
     ratio of wall times (target ≤ 1.05), and the bytes of one trial's file at 5,682 stocks
  s  sharing: `share` (4) fits of a model (RVRAE; `--models` names others) at once on one
     device, each with 1/4 of the CPUs, vs one alone, at case b's sizes; ratio = the
     throughput gained (no target: `--device cuda` on a GPU box measures the cluster's 0.25
     GPU per trial)

Rows go to `<out>/study=speed/model=<model>/` (`rvrae.results.store.write_row`), one per case
× repeat (`seed` = repeat index), with a `case` column, so `rvrae table results --study speed`
shows mean(std) per case; `run_speed` prints the medians with the targets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rvrae.errors import UserError

CASES = "abcdefghs"  # every case there is
DEFAULT_CASES = "abcdefgh"  # without --cases; s is meant for a GPU box (`--cases s --device cuda`)
PAPER = dict(n_stocks=5682, n_months=252, n_chars=46)
MODELS = ("rvrae", "ipca", "ca", "factorvae", "alstm", "transformer")


@dataclass
class Grid:
    """A grid of cases c and d: every model × `seeds` seeds on a synthetic panel, the demo's
    small nets (DEMO_CONFIGS), `epochs` epochs. Only a `verdict` grid is held to the targets;
    the others are context (the fixed cost per study weighs more the shorter the trials)."""

    name: str
    synth: dict  # SynthConfig overrides ({} = the built-in panel, 300 stocks × 252 months × 20)
    split: tuple = (15, 3, 3)
    epochs: int = 4
    seeds: int = 2
    models: tuple = MODELS
    verdict: bool = True
    repeats: int | None = None  # None: Sizes.repeats

    def label(self) -> str:
        n = len(self.models) * self.seeds
        return f"{n} trials, {self.name}, {self.epochs} ep" + ("" if self.verdict else " (context)")


# c, d: "12 short trials" = 6 models × 2 seeds with the demo's small nets. The verdict grid
# is the built-in synthetic panel (what `--data synthetic` runs) at 8 epochs: ~9 s per trial
# on average (12 take ~110 s in a loop here), where a real trial of that panel takes minutes. Shorter trials
# are measured as context (one repeat each): the harness's cost is mostly a fixed ~6 s per
# study (its trial actors start as new processes), which weighs more the shorter the study.
BUILTIN_GRID = Grid("built-in panel", {}, epochs=8)
CONTEXT_GRIDS = (
    Grid("built-in panel", {}, epochs=4, verdict=False, repeats=1),
    Grid("demo panel", dict(n_stocks=250, n_months=120, n_chars=12), split=(6, 2, 2), verdict=False, repeats=1),
)


_QUICK_PANEL = dict(synth=dict(n_stocks=150, n_months=120, n_chars=8), split=(6, 2, 2))


@dataclass
class Asha:
    """Case g: `samples` Optuna trials of RVRAE at `epochs` epochs, `concurrent` at a time, on
    the built-in panel ({} = 300 stocks × 252 months × 20 chars), then the best config of the
    study without ASHA over `seeds` seeds for the seed noise."""

    samples: int = 10  # ≤ 10: TPE's random start-up trials, the same configs in both studies
    epochs: int = 8  # sized to ~15 minutes for g and h together on a shared 2-core machine
    concurrent: int = 2
    seeds: int = 3
    synth: dict = field(default_factory=dict)
    split: tuple = (15, 3, 3)


@dataclass
class Sizes:
    """What each case runs; `full()` is the issue's sizes, `quick()` a few minutes' worth."""

    repeats: int = 3
    ipca: tuple = (2000, 180, 46, 5)  # a: stocks, months, chars, K
    bench: dict = field(default_factory=lambda: dict(PAPER))  # b
    bench_epochs: int = 1
    bench_models: tuple = MODELS
    grids: tuple = (BUILTIN_GRID, *CONTEXT_GRIDS)  # c, d
    scale_stocks: tuple = (1000, 2000, 4000)  # e
    scale_months: int = 252
    scale_models: tuple = ("rvrae", "ipca")
    demo_args: tuple = ()  # f: extra `rvrae demo` flags
    asha: Asha = field(default_factory=Asha)  # g
    store_grid: Grid = field(default_factory=lambda: Grid("built-in panel", {}, epochs=4, models=("rvrae", "ipca", "ca")))  # h
    threads: int = 1  # torch threads of every measured fit (a trial's CPUs in the harness)
    device: str = "cpu"  # b and e: where the measured fits run ("cuda" on a GPU box)
    share: int = 4  # s: fits at once on the device (the cluster's 0.25 GPU per trial)
    share_models: tuple = ("rvrae",)  # s: whose fits share it, one row each

    @classmethod
    def full(cls) -> "Sizes":
        return cls()

    @classmethod
    def quick(cls) -> "Sizes":
        tiny = Grid("reduced panel", dict(n_stocks=150, n_months=120, n_chars=8), split=(6, 2, 2),
                    epochs=1, verdict=False)  # fmt: skip
        return cls(
            repeats=1, ipca=(500, 60, 46, 5), bench=dict(n_stocks=500, n_months=84, n_chars=46),
            grids=(tiny,), scale_stocks=(250, 500, 1000), scale_months=84,
            demo_args=("--seeds", "1", "--epochs", "1"), asha=Asha(samples=4, epochs=4, seeds=2, **_QUICK_PANEL),
            store_grid=Grid("reduced panel", _QUICK_PANEL["synth"], split=(6, 2, 2), epochs=1, models=("rvrae", "ipca")),
        )  # fmt: skip


TARGETS = {
    "a": "ratio>=30, |dR2|<=1e-4",
    "b": "rss<=2048MB",
    "c": "ratio<=1.10",
    "d": "ratio>=1.7",
    "e": "",  # no target: the slope is reported (1 = linear in N)
    "f": "<=300s",
    "g": "ratio<=0.5, |best-ref_best|<=seed_std",
    "h": "ratio<=1.05",
    "s": "",  # no target: the throughput of fits sharing a device is reported
}


def load1() -> float:
    return os.getloadavg()[0]


def _row_id(case: str, model: str, rep: int) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", f"{case}-{model}-{rep}").strip("_")


def _row(case: str, model: str, rep: int, **values) -> dict:
    return {
        "study": "speed", "model": model, "trial_id": _row_id(case, model, rep), "seed": rep,
        "case": case, "target": TARGETS.get(case[0], ""), "load1": load1(), **values,
    }  # fmt: skip


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------- a: IPCA vs the peer


def a_size(ipca: tuple) -> str:
    N, T, C, K = ipca
    return f"{N}x{T}x{C} K={K}"


def b_size(z: dict) -> str:
    return f"{z['n_stocks']}x{z['n_months']}x{z['n_chars']}"


def case_a(s: Sizes) -> list[dict]:
    from rvrae.bench_ipca import ipca_benchmark

    N, T, C, K = s.ipca
    case = f"a ipca/peer {a_size(s.ipca)}"
    rows = []
    for rep in range(s.repeats):
        r = ipca_benchmark(N, T, C, K, seed=rep)  # each side: median of 3 fits of the panel
        rows.append(_row(case, "ipca", rep, ratio=r["ratio"], seconds=r["time_ours"],
                         ref_seconds=r["time_peer"], delta_r2=r["r2_ours"] - r["r2_peer"]))  # fmt: skip
    return rows


# ---------------------------------------------------------------- b: every model, paper scale


def bench_command(model: str, sizes: dict, epochs: int, threads: int, device: str = "cpu") -> list[str]:
    """The `python -m rvrae.bench` command line of one fit at `sizes`."""
    return [sys.executable, "-m", "rvrae.bench", "--model", model, "--stocks", str(sizes["n_stocks"]),
            "--months", str(sizes["n_months"]), "--chars", str(sizes["n_chars"]),
            "--epochs", str(epochs), "--threads", str(threads), "--device", device]  # fmt: skip


def bench_subprocess(model: str, sizes: dict, epochs: int, threads: int, timeout: float = 3600,
                     device: str = "cpu") -> dict:
    """`python -m rvrae.bench` in a fresh process (its own peak RSS); the JSON it prints."""
    cmd = bench_command(model, sizes, epochs, threads, device)
    return json_subprocess(cmd, threads, f"rvrae.bench --model {model}", timeout)


def bench_together(model: str, sizes: dict, epochs: int, threads: int, n: int, device: str = "cpu",
                   timeout: float = 3600) -> list[dict]:
    """`n` such processes at once, their fits starting together (`--barrier`): their JSONs."""
    with tempfile.TemporaryDirectory(prefix="rvrae-barrier-") as d:
        cmd = [*bench_command(model, sizes, epochs, threads, device), "--barrier", f"{d}:{n}"]
        return json_subprocesses(cmd, threads, f"rvrae.bench --model {model}", n, timeout)


def json_subprocess(cmd: list[str], threads: int, what: str, timeout: float = 3600) -> dict:
    """Run `cmd` in a fresh process held to `threads` threads; the JSON of its last line."""
    return json_subprocesses(cmd, threads, what, 1, timeout)[0]


def json_subprocesses(cmd: list[str], threads: int, what: str, n: int, timeout: float = 3600
                      ) -> list[dict]:
    """Run `n` copies of `cmd` at once, each a fresh process held to `threads` threads; the
    JSON of each one's last line."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    # Each process writes to its own files, not pipes: read one after another, a full pipe
    # would stall the processes not yet read (and skew case s's side-by-side timing).
    with tempfile.TemporaryDirectory(prefix="rvrae-speed-io-") as d:
        files = [(open(Path(d) / f"{i}.out", "w+"), open(Path(d) / f"{i}.err", "w+")) for i in range(n)]
        try:
            procs = [subprocess.Popen(cmd, stdout=o, stderr=e, text=True, env=env) for o, e in files]
            deadline = time.monotonic() + timeout
            try:
                for p in procs:
                    p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{what} did not finish in {timeout:.0f} s") from None
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait()
            outs = []
            for p, (o, e) in zip(procs, files):
                o.seek(0), e.seek(0)
                out, err = o.read(), e.read()
                if p.returncode != 0:
                    raise RuntimeError(f"{what} failed: {err.strip()[-500:]}")
                outs.append(json.loads(out.strip().splitlines()[-1]))
        finally:
            for o, e in files:
                o.close(), e.close()
    return outs


def case_b(s: Sizes) -> list[dict]:
    z, models = s.bench, s.bench_models
    case = f"b epoch {b_size(z)}" + ("" if s.device == "cpu" else f" {s.device}")
    # One pass, whatever --repeats says: at paper scale one epoch of a sequence model is minutes.
    # On a GPU at least 2 epochs, so the figure is the steady state, not the first epoch's
    # CUDA context and kernel loading (`first_epoch_seconds` keeps that).
    epochs = s.bench_epochs if s.device == "cpu" else max(2, s.bench_epochs)
    secs = {m: bench_subprocess(m, z, epochs, s.threads, device=s.device) for m in models}
    ref = secs["rvrae"]["seconds_per_epoch"] if "rvrae" in secs else math.nan
    return [_row(case, m, 0, seconds=r["seconds_per_epoch"], peak_rss_mb=r["peak_rss_mb"],
                 first_epoch_seconds=r["first_epoch_seconds"], gpu_peak_mb=r["gpu_peak_mb"],
                 ratio=r["seconds_per_epoch"] / ref) for m, r in secs.items()]  # fmt: skip


def case_s(s: Sizes) -> list[dict]:
    """For each of `s.share_models`: `s.share` fits at once on one device (a GPU shared the cluster's way, 1/share of
    it per trial; or a node's cores), each a `python -m rvrae.bench` process with 1/share of
    the CPUs, against one fit alone with the same threads. ratio = the throughput gained:
    share × (s/epoch alone) ÷ (mean s/epoch of the shared fits). The per-epoch figure is the
    steady state (epochs 2..n, at least 3 epochs). The fits start together (`--barrier`);
    `overlap` is the share of the whole span during which all of them were running (1: side
    by side throughout)."""
    z, k = s.bench, s.share
    epochs = max(3, s.bench_epochs)
    threads = max(1, (os.cpu_count() or 1) // k)
    case = f"s {k} fits sharing {s.device}, {b_size(z)}"
    rows = []
    for model in s.share_models:
        alone = bench_subprocess(model, z, epochs, threads, device=s.device)
        shared = bench_together(model, z, epochs, threads, k, device=s.device)
        per = [r["seconds_per_epoch"] for r in shared]
        starts, ends = [r["started"] for r in shared], [r["ended"] for r in shared]
        overlap = max(0.0, min(ends) - max(starts)) / (max(ends) - min(starts))
        rows.append(_row(case, model, 0, seconds=float(np.mean(per)), ref_seconds=alone["seconds_per_epoch"],
                         ratio=k * alone["seconds_per_epoch"] / float(np.mean(per)), overlap=overlap,
                         seconds_max=float(np.max(per)), gpu_peak_mb=float(np.max([r["gpu_peak_mb"] for r in shared]))))  # fmt: skip
    return rows


# ---------------------------------------------------------------- c, d: the harness


def grid_options(g: Grid, out: Path, concurrent: int):
    from rvrae.study.demo import DEMO_CONFIGS
    from rvrae.study.runner import StudyOptions

    return StudyOptions(
        study="benchmark", models=list(g.models), out=out, seeds=g.seeds, m=[0], epochs=g.epochs,
        cpus_per_trial=1, gpus_per_trial=0.0, max_concurrent=concurrent, address="local", split=tuple(g.split),
        configs={k: v for k, v in DEMO_CONFIGS.items() if k in g.models},
    )  # fmt: skip


def grid_panel(g: Grid):
    from rvrae.data.synthetic import SynthConfig, make_synthetic

    return make_synthetic(SynthConfig(**g.synth)).panel


def tune_wall(g: Grid, panel, concurrent: int) -> float:
    """Wall seconds of `run_study` (Ray already up): Tuner set-up, the trial actors' start,
    scheduling, trials, sink."""
    from rvrae.study.runner import run_study

    with tempfile.TemporaryDirectory(prefix="rvrae-speed-") as d:
        opts = grid_options(g, Path(d) / "out", concurrent)
        t0 = time.perf_counter()
        run = run_study(opts, panel=panel)
        wall = time.perf_counter() - t0
    n = len(g.models) * g.seeds
    if len(run.rows) != n:
        raise RuntimeError(f"speed grid: {len(run.rows)} of {n} trials written")
    return wall


def inprocess_wall(g: Grid, panel) -> float:
    """The same trials, `train_trial` called one after another in this process (reporting to
    a no-op instead of Tune): the work without the harness. The clock starts before torch is
    first used, so in a new process (`inprocess_cold_wall`) it includes torch's import and
    first-use costs, as a Tune trial actor's does."""
    import ray.tune  # noqa: F401  (imported by every Tune trial before its work too)

    from rvrae.study.runner import grid_cells, study_identity
    from rvrae.study.trainable import train_trial

    opts = grid_options(g, Path("."), 1)
    common = {"identity": study_identity(opts, panel), "cpus": 1}
    t0 = time.perf_counter()
    with torch_threads(1):
        for cell in grid_cells(opts):
            train_trial({**common, "cell": cell}, panel, report=lambda result: None)
    return time.perf_counter() - t0


def inprocess_cold_wall(g: Grid) -> float:
    """The reference of case c: the same trials one after another in a NEW Python process, as
    a plain loop script runs them. Every Tune study starts its trial actors as new processes
    (Tune gives its actors a runtime_env, so Ray never hands them a prestarted idle worker),
    which import torch and pay its first-use costs; so does this reference. The panel is built
    before the clock starts: the Tune side gets it ready-made too."""
    code = "import sys; from rvrae.study.speed import cold_child; cold_child(sys.argv[1])"
    cmd = [sys.executable, "-c", code, json.dumps(dataclasses.asdict(g))]
    return float(json_subprocess(cmd, 1, "in-process reference")["seconds"])


def cold_child(spec: str) -> None:
    """`inprocess_cold_wall`'s child: prints {"seconds": ...} of `inprocess_wall`."""
    g = Grid(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(spec).items()})
    panel = grid_panel(g)
    if "torch" in sys.modules:  # the clock must see torch's import, as a new actor does
        raise RuntimeError("torch was imported before the in-process reference started")
    seconds = inprocess_wall(g, panel)
    import ray

    if ray.is_initialized():  # a trial that starts Ray would time Ray's start, not the loop
        raise RuntimeError("the in-process reference started Ray")
    print(json.dumps({"seconds": seconds}))


def case_cd(s: Sizes, cases: str = "cd"):
    """Yields each repeat's rows as soon as they are measured (a stopped run keeps them)."""
    import ray

    from rvrae.study.runner import connect

    t0 = time.perf_counter()
    started = connect("local", False)
    ray_start = time.perf_counter() - t0
    try:
        for g in s.grids:
            panel, label = grid_panel(g), g.label()
            for rep in range(g.repeats or s.repeats):
                # Alternate the order so that drifting machine load hits both sides alike.
                if "c" not in cases:  # d alone needs no loop reference
                    tune1 = tune_wall(g, panel, 1)
                elif rep % 2 == 0:
                    inproc, tune1 = inprocess_cold_wall(g), tune_wall(g, panel, 1)
                else:
                    tune1, inproc = tune_wall(g, panel, 1), inprocess_cold_wall(g)
                if "c" in cases:
                    # Context (first repeat): the loop once more in this process, warm by now
                    # (torch imported and used): the ratio if the actors' start were all overhead.
                    warm = inprocess_wall(g, panel) if rep == 0 else math.nan
                    yield _row(f"c tune/in-process, {label}", "harness", rep, ratio=tune1 / inproc,
                               seconds=tune1, ref_seconds=inproc, ratio_warm=tune1 / warm,
                               ref_warm_seconds=warm, ray_start_seconds=ray_start)  # fmt: skip
                if "d" in cases:
                    tune2 = tune_wall(g, panel, 2)
                    yield _row(f"d speed-up 2 vs 1 concurrent, {label}", "harness", rep,
                               ratio=tune1 / tune2, seconds=tune2, ref_seconds=tune1)  # fmt: skip
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- e: scaling in N


def loglog_slope(n: list[float], t: list[float]) -> float:
    """Least-squares slope of log t on log n: 1 = linear in the number of stocks."""
    return float(np.polyfit(np.log(n), np.log(t), 1)[0])


def case_e(s: Sizes) -> list[dict]:
    from rvrae.bench import epoch_benchmark

    # IPCA runs a fixed number of ALS iterations (tol ~ 0) so iteration counts do not move
    # with N; RVRAE one epoch (early stopping off).
    configs = {"ipca": {"max_iter": 20, "tol": 1e-300}, "rvrae": None}
    rows = []
    with torch_threads(s.threads):
        if s.device != "cpu":  # CUDA's context and kernel loading out of the first timed fit
            epoch_benchmark("rvrae", n_stocks=min(s.scale_stocks), n_months=s.scale_months, epochs=1,
                            device=s.device)  # fmt: skip
        for m in s.scale_models:
            for rep in range(s.repeats):
                times = []
                for N in s.scale_stocks:
                    r = epoch_benchmark(m, n_stocks=N, n_months=s.scale_months, epochs=1,
                                        config=configs.get(m), seed=rep, device=s.device)  # fmt: skip
                    times.append(r["fit_seconds"])
                base = times[0]
                for N, t in zip(s.scale_stocks, times):
                    rows.append(_row(f"e fit N={N} x {s.scale_months}m", m, rep, seconds=t, ratio=t / base))
                rows.append(_row(f"e slope N={'/'.join(map(str, s.scale_stocks))}", m, rep,
                                 slope=loglog_slope(list(s.scale_stocks), times)))  # fmt: skip
    return rows


# ---------------------------------------------------------------- f: the demo


def case_f(s: Sizes) -> list[dict]:
    exe = Path(sys.executable).with_name("rvrae")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "rvrae.cli"]
    rows = []
    for rep in range(1):  # one demo is minutes: one run
        with tempfile.TemporaryDirectory(prefix="rvrae-speed-demo-") as d:
            t0 = time.perf_counter()
            p = subprocess.run([*cmd, "demo", "--out", str(Path(d) / "demo"), *s.demo_args],
                               capture_output=True, text=True, timeout=3600)  # fmt: skip
            wall = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"rvrae demo failed: {p.stderr.strip()[-500:]}")
        label = "f rvrae demo" + (" " + " ".join(s.demo_args) if s.demo_args else "")
        rows.append(_row(label, "harness", rep, seconds=wall))
    return rows


# ---------------------------------------------------------------- g, h: predictions as data


def trial_seconds(df) -> float:
    """Summed wall time of a study's trials (started_at .. finished_at of each row, the
    driver's clock, 1 s resolution): what early stopping saves."""
    import pandas as pd

    start, end = pd.to_datetime(df["started_at"]), pd.to_datetime(df["finished_at"])
    return float((end - start).dt.total_seconds().sum())


def g_label(a: Asha) -> str:
    return f"g ASHA/none tune rvrae, {a.samples} trials x {a.epochs} ep"


def case_g(s: Sizes):
    """Yields one row: ASHA vs none, then the seed noise of the best config (see module doc)."""
    import ray

    from rvrae.results.store import read_results
    from rvrae.study.runner import StudyOptions, connect, run_study

    a = s.asha
    panel = grid_panel(Grid("asha", a.synth, split=a.split))
    started = connect("local", False)
    got = {}
    try:
        with tempfile.TemporaryDirectory(prefix="rvrae-speed-asha-") as d:
            for kind in ("none", "asha"):
                opts = StudyOptions(study="tune", models=["rvrae"], out=Path(d) / kind, samples=a.samples,
                                    epochs=a.epochs, scheduler=kind, cpus_per_trial=1, gpus_per_trial=0.0,
                                    max_concurrent=a.concurrent,
                                    address="local", split=tuple(a.split), max_failures=0)  # fmt: skip
                t0 = time.perf_counter()
                run_study(opts, panel=panel)
                wall = time.perf_counter() - t0
                df = read_results(opts.out, study="tune")
                ok = df[df["status"] == "ok"]
                best = ok.loc[ok["valid_rank_ic"].astype(float).idxmax()]
                got[kind] = dict(best=float(best["valid_rank_ic"]), trial_s=trial_seconds(df), wall=wall,
                                 stopped=int((df["status"] == "stopped").sum()), config=json.loads(best["config"]))  # fmt: skip
            # Seed noise: the best config of the study without ASHA, over `seeds` seeds.
            cfg = {k: v for k, v in got["none"]["config"].items() if k != "epochs"}
            opts = StudyOptions(study="benchmark", models=["rvrae"], out=Path(d) / "seeds", seeds=a.seeds, m=[0],
                                epochs=a.epochs, configs={"rvrae": cfg}, cpus_per_trial=1, gpus_per_trial=0.0,
                                max_concurrent=a.concurrent,
                                address="local", split=tuple(a.split), max_failures=0)  # fmt: skip
            run_study(opts, panel=panel)
            seeds = read_results(opts.out, study="benchmark")["valid_rank_ic"].astype(float)
    finally:
        if started:
            ray.shutdown()
    label = f"{g_label(a)}, {panel.N} stocks"
    yield _row(label, "rvrae", 0, ratio=got["asha"]["trial_s"] / got["none"]["trial_s"],
               seconds=got["asha"]["trial_s"], ref_seconds=got["none"]["trial_s"], best=got["asha"]["best"],
               ref_best=got["none"]["best"], seed_std=float(seeds.std(ddof=1)), stopped=got["asha"]["stopped"],
               wall_seconds=got["asha"]["wall"], ref_wall_seconds=got["none"]["wall"])  # fmt: skip


def case_h(s: Sizes):
    """Yields one row per repeat: the grid's wall time with stored forecasts ÷ without, in
    alternating order (noisy on a shared machine); the row also carries what storing costs
    directly, measured on its own: seconds to build, serialise and write one trial's forecast
    at the grid's size (`store_seconds`) and at 5,682 stocks, and that file's bytes."""
    import ray

    from rvrae.results.forecasts import storage_cost
    from rvrae.study.runner import connect, run_study

    g = s.store_grid
    panel = grid_panel(g)
    size, paper_s = storage_cost(5682)
    _, grid_s = storage_cost(panel.N, months=12 * (g.split[1] + g.split[2]))
    started = connect("local", False)
    try:
        for rep in range(s.repeats):
            walls = {}
            for store in ((True, False) if rep % 2 == 0 else (False, True)):
                with tempfile.TemporaryDirectory(prefix="rvrae-speed-store-") as d:
                    opts = dataclasses.replace(grid_options(g, Path(d) / "out", 2), forecasts=store)
                    t0 = time.perf_counter()
                    run_study(opts, panel=panel)
                    walls[store] = time.perf_counter() - t0
            yield _row(f"h forecasts stored/not, {g.label()}", "harness", rep, ratio=walls[True] / walls[False],
                       seconds=walls[True], ref_seconds=walls[False], bytes_per_trial_5682=size,
                       store_seconds_5682=paper_s, store_seconds=grid_s)  # fmt: skip
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------- summary


def met(case: str, med: dict) -> str:
    """'met' / 'missed' / '' (no target) for one case's medians."""
    k = case[0]
    # Targets hold at the sizes only: the --quick run's reduced cases get no verdict.
    full = Sizes.full()
    if k == "a" and a_size(full.ipca) not in case or k == "b" and b_size(full.bench) not in case:
        return ""
    if k == "g" and not case.startswith(g_label(full.asha)) or k == "h" and full.store_grid.label() not in case:
        return ""
    if k == "a":
        return _ok(med.get("ratio", math.nan) >= 30 and abs(med.get("delta_r2", math.nan)) <= 1e-4)
    if k == "b":
        return _ok(med.get("peak_rss_mb", math.nan) <= 2048)
    if k in "cd" and "(context)" in case:
        return ""  # a context grid: no target
    if k == "c":
        return _ok(med.get("ratio", math.nan) <= 1.10)
    if k == "d":
        return _ok(med.get("ratio", math.nan) >= 1.7)
    if k == "f" and "--seeds" not in case:
        return _ok(med.get("seconds", math.nan) <= 300)
    if k == "g":
        close = abs(med.get("best", math.nan) - med.get("ref_best", math.nan)) <= med.get("seed_std", math.nan)
        return _ok(med.get("ratio", math.nan) <= 0.5 and close)
    if k == "h":
        return _ok(med.get("ratio", math.nan) <= 1.05)
    return ""


def _ok(flag: bool) -> str:
    return "met" if flag else "missed"


VALUE_COLUMNS = ("ratio", "ratio_warm", "seconds", "ref_seconds", "seconds_max", "overlap", "first_epoch_seconds", "peak_rss_mb", "gpu_peak_mb", "delta_r2", "slope", "best",
                 "ref_best", "seed_std", "stopped", "bytes_per_trial_5682", "store_seconds", "store_seconds_5682",
                 "load1")  # fmt: skip


def summarise(rows: list[dict]):
    """Medians over repeats per (case, model), with the target verdict: a DataFrame."""
    import pandas as pd

    df = pd.DataFrame(rows)
    cols = [c for c in VALUE_COLUMNS if c in df.columns]
    g = df.groupby(["case", "model"], sort=False)
    out = g[cols].median()
    out["n"] = g.size()
    out["target"] = g["target"].first()
    out["verdict"] = [met(c, r.to_dict()) for (c, _), r in out.iterrows()]
    return out.reset_index()


def render_summary(summary, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=max(160, Console().width))
    t = Table(title="Speed study (medians over repeats)")
    cols = [c for c in VALUE_COLUMNS if c in summary.columns and summary[c].notna().any()]
    for c in ("case", "model", *cols, "n", "target", "verdict"):
        t.add_column(c, justify="left" if c in ("case", "model", "target", "verdict") else "right",
                     min_width=40 if c == "case" else None)  # fmt: skip
    for _, r in summary.iterrows():
        cells = [str(r["case"]), str(r["model"])]
        cells += [f"{r[c]:.4g}" if isinstance(r[c], float) and math.isfinite(r[c]) else "–" for c in cols]
        cells += [str(r["n"]), str(r["target"]), str(r["verdict"])]
        t.add_row(*cells)
    console.print(t)


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = math.nan
    with contextlib.suppress(OSError, ValueError):
        kb = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        mem = int(kb.split()[1]) / 2**20
    gpu = ""
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.1f} GiB RAM{gpu}, "
            f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")  # fmt: skip


RUNNERS = {"a": case_a, "b": case_b, "e": case_e, "f": case_f, "g": case_g, "h": case_h, "s": case_s}


def run_speed(cases: str = DEFAULT_CASES, quick: bool = False, out: Path | str | None = Path("results"),
              repeats: int | None = None, sizes: Sizes | None = None, console=None,
              device: str | None = None, epochs: int | None = None,
              models: tuple[str, ...] | None = None) -> list[dict]:
    """Run the chosen cases, write one Parquet row per case × repeat under `out` (None: none),
    print the medians with their targets; returns the rows. `models`: the models of cases b
    and s (default: every model for b, RVRAE for s)."""
    from rich.console import Console

    from rvrae.results.store import write_row

    bad = set(cases) - set(CASES)
    if bad or not cases:
        raise UserError(f"--cases: expected letters from {CASES!r}, got {cases!r}")
    s = sizes or (Sizes.quick() if quick else Sizes.full())
    if repeats is not None:
        if repeats < 1:
            raise UserError(f"--repeats must be >= 1, got {repeats}")
        s.repeats = repeats
    if device is not None:
        from rvrae.bench import check_device

        check_device(device)
        s.device = device
    if models is not None:
        unknown = [m for m in models if m not in MODELS]
        if unknown or not models:
            raise UserError(f"--models: expected names from {', '.join(MODELS)}, got {','.join(models)!r}")
        s.bench_models = s.share_models = tuple(models)
    if epochs is not None:
        if epochs < 1:
            raise UserError(f"--epochs must be >= 1, got {epochs}")
        s.bench_epochs = epochs
    if out is not None:  # before minutes of measuring, not at the first row's write
        from rvrae.study.runner import check_out

        check_out(Path(out))
    if "a" in cases and importlib.util.find_spec("ipca") is None:
        raise UserError("case a times against the peer ipca package: pip install -e '.[test]' (or leave a out of --cases)")
    console = console or Console(width=max(160, Console().width))
    console.print(f"machine: {machine()}", highlight=False)
    rows: list[dict] = []
    for k in CASES:
        if k not in cases or k == "d" and "c" in cases:
            continue
        t0 = time.perf_counter()
        new = case_cd(s, "".join(x for x in "cd" if x in cases)) if k in "cd" else RUNNERS[k](s)
        n = 0
        for r in new:  # written as they come: a stopped run keeps what it measured
            if out is not None:
                write_row(out, r)
            rows.append(r)
            n += 1
        console.print(f"case {'cd' if k in 'cd' and 'd' in cases and 'c' in cases else k}: "
                      f"{n} rows in {time.perf_counter() - t0:.0f}s, load {load1():.2f}", highlight=False)  # fmt: skip
    render_summary(summarise(rows), console)
    if out is not None:
        console.print(f"rows in {out}/study=speed (rvrae table {out} --study speed)", highlight=False, soft_wrap=True)
    return rows
