"""Does keeping the best of N restarts by validation keep the fit that ranks the test months better?

For each planted panel and trial seed, the model (default config unless `--configs`) is fitted
once per restart i = 0..N-1 at `rvrae.models.base.restart_seed(seed, i)`: each of the fits a
trial with `restarts=N` makes, fitted alone (a one-restart fit at that seed is the same fit;
tests/test_rvrae.py checks it). Per fit a JSON line keeps the monthly validation Rank IC of its
calibrated forecast (the series `NeuralFactorModel.fit` chooses on) and its test scores: the
Rank IC against the realised returns (what the tables print), against the oracle's expected
return r̂ (no return noise: what a choice should get right), and the total R².

Each rule then picks one restart per (panel, seed) with `rvrae.models.base.choose_restart`,
the function the fit itself calls: restart 0 alone (`restarts=1`), the larger validation Rank
IC (`restart_tstat=0`), and a later restart only at a paired validation t of at least each
`--tstat`. "Best on r̂" is the ceiling no rule can see. studies/FINDINGS.md, "Restarts chosen
on validation", has the runs.

    python studies/restarts.py --data synthetic:studies/panels/C.json [--data ...] \\
        [--model rvrae] [--seeds 0,1,2] [--restarts 2] [--tstat 2] [--jsonl rows.jsonl]
    python studies/restarts.py --jsonl rows.jsonl     # judge the stored fits, fit nothing

With `--jsonl`, a fit already in the file (panel, model, config, seed, restart) is not fitted
again, so a stopped run resumes where it stopped. Planted panels only (`--data
synthetic[:DESIGN.json]`). RVRAE takes 1.5–5 minutes a fit on a 2-core laptop.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def fit_row(panel, spec: str, model: str, overrides: dict, seed: int, restart: int,
            split: tuple[int, int, int] = (15, 3, 3)) -> dict:
    """Fit restart `restart` of a trial at `seed` on the planted `panel` (loaded from `spec`):
    the JSON line of `--jsonl`."""
    from rvrae.data.panel import split_by_years
    from rvrae.metrics import _nanmean, ic_series, r2_total, rank_ic, true_rank_ic
    from rvrae.models.base import restart_seed
    from rvrae.models.registry import make_model
    from rvrae.study.trainable import resolved_config

    model_seed = restart_seed(seed, restart)
    train, valid, test = split_by_years(panel, *split)
    t0 = time.perf_counter()
    fitted = make_model(model, resolved_config(model, {**overrides, "restarts": 1}))
    fitted.fit(train, valid, seed=model_seed, device="cpu")
    seconds = time.perf_counter() - t0
    v = np.asarray(valid.target_months)
    fc = fitted.predict(valid, v)  # as NeuralFactorModel.fit scores a restart
    series = ic_series(fc.r_hat, valid.ret[v], valid.mask[v], rank=True)
    m = np.asarray(test.target_months)
    fc = fitted.predict(panel, np.arange(panel.T))
    oracle = panel.meta["oracle"].r_hat
    return {
        "panel": spec, "model": model, "config": overrides, "seed": seed, "restart": restart, "split": list(split),
        "model_seed": model_seed, "valid_series": [float(x) for x in series], "valid": _nanmean(series),
        "test": rank_ic(fc.r_hat[m], panel.ret[m], panel.mask[m]),
        "true_test": true_rank_ic(fc.r_hat[m], oracle[m], panel.mask[m]),
        "r2_total": r2_total(panel.ret[m], fc.beta[m], fc.f_post[m], panel.mask[m]),
        "epochs": len(fitted.history_), "seconds": seconds,
    }  # fmt: skip


def _key(row: dict) -> tuple:
    """A trial: panel, model, config, seed and split (rows written before the split was
    recorded are the default 15/3/3)."""
    split = tuple(row.get("split") or (15, 3, 3))
    return row["panel"], row["model"], json.dumps(row["config"], sort_keys=True), row["seed"], split


def pairs(rows: list[dict], restarts: int) -> list[list[dict]]:
    """The trials with every restart 0..restarts-1 fitted, each as its restarts in order (a
    later duplicate of a fit replaces the earlier)."""
    by: dict = {}
    for r in rows:
        by.setdefault(_key(r), {})[int(r["restart"])] = r
    return [[fits[i] for i in range(restarts)] for fits in by.values() if all(i in fits for i in range(restarts))]


def judge(trials: list[list[dict]], tstats: list[float]) -> dict:
    """Per rule, the restart it keeps in each trial and the mean test scores of those fits:
    {rule: {"picks": [...], "true_test": mean, "test": mean, "better": n, "worse": n}}, where
    better / worse count the trials whose kept fit ranks r̂ better / worse than restart 0's."""
    from rvrae.models.base import choose_restart

    rules = {"restart 0 (restarts=1)": lambda s: 0, "larger valid (restart_tstat=0)": lambda s: choose_restart(s, 0.0)}
    for t in tstats:
        rules[f"valid t ≥ {t:g} (restart_tstat={t:g})"] = lambda s, t=t: choose_restart(s, t)
    out: dict = {}
    for name, rule in rules.items():
        picks = [rule([np.asarray(f["valid_series"], dtype=np.float64) for f in fits]) for fits in trials]
        picks = [len(fits) - 1 if p is None else p for p, fits in zip(picks, trials)]  # as the fit: the last stays
        out[name] = _scores(trials, picks)
    out["best on r̂ (the ceiling)"] = _scores(trials, [int(np.argmax([f["true_test"] for f in fits])) for fits in trials])
    return out


def _scores(trials, picks) -> dict:
    kept = [fits[p] for fits, p in zip(trials, picks)]
    d = [k["true_test"] - fits[0]["true_test"] for k, fits in zip(kept, trials)]
    return {"picks": picks, "true_test": float(np.mean([k["true_test"] for k in kept])),
            "test": float(np.mean([k["test"] for k in kept])),
            "better": sum(x > 0 for x in d), "worse": sum(x < 0 for x in d)}  # fmt: skip


def render(trials: list[list[dict]], tstats: list[float], console) -> None:
    from rich.table import Table

    from rvrae.metrics import paired_t

    t = Table(title="Each restart: validation Rank IC / test Rank IC against r̂ / realised; paired t of restart i − 0")
    for col in ("panel", "seed", *(f"restart {i}" for i in range(len(trials[0]))), "t vs 0"):
        t.add_column(col, justify="left" if col == "panel" else "right")
    for fits in trials:
        name = Path(fits[0]["panel"].partition(":")[2]).stem or fits[0]["panel"]
        ts = [f"{paired_t(f['valid_series'], fits[0]['valid_series']):+.2f}" for f in fits[1:]]
        t.add_row(name, str(fits[0]["seed"]), *(f"{f['valid']:.4f} / {f['true_test']:.3f} / {f['test']:.4f}" for f in fits),
                  ", ".join(ts))  # fmt: skip
    console.print(t)
    j = judge(trials, tstats)
    s = Table(title=f"Each rule's kept fit over {len(trials)} trials (mean test Rank IC; kept vs restart 0 on r̂)")
    for col in ("rule", "against r̂", "realised", "better / worse than restart 0"):
        s.add_column(col, justify="left" if col == "rule" else "right")
    for name, r in j.items():
        s.add_row(name, f"{r['true_test']:.3f}", f"{r['test']:.4f}", f"{r['better']} / {r['worse']}")
    console.print(s)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from rvrae.data.io import load_planted
    from rvrae.errors import UserError
    from rvrae.models.base import NeuralConfig
    from rvrae.models.registry import get_spec, model_names
    from rvrae.jsonl import check_jsonl, read_jsonl
    from rvrae.study.cli import _split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", default=[], help="synthetic or synthetic:DESIGN.json; repeat")
    neural = [n for n in model_names() if issubclass(get_spec(n).config_cls, NeuralConfig)]  # those with restarts
    p.add_argument("--model", default="rvrae", choices=neural)
    p.add_argument("--configs", default="{}", help='JSON overrides of the model\'s config, e.g. {"epochs": 30}')
    p.add_argument("--seeds", default="0,1,2", help="trial seeds, comma-separated")
    p.add_argument("--restarts", type=int, default=2, help="fits per trial (restart 0 at the trial's seed)")
    p.add_argument("--tstat", default="2", help="comma-separated restart_tstat values to judge besides 0")
    p.add_argument("--split", default="15/3/3", help="train/valid/test years")
    p.add_argument("--threads", type=int, default=1, help="torch threads per fit (a trial's default: 1)")
    p.add_argument("--jsonl", help="append each fit's scores here as a JSON line; fits already in it are skipped")
    a = p.parse_args(argv)
    console = Console()
    try:
        try:
            overrides = json.loads(a.configs)
            seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
            tstats = [float(x) for x in a.tstat.split(",") if x.strip()]
        except ValueError as e:
            raise UserError(f"--configs / --seeds / --tstat: {e}") from None
        if not isinstance(overrides, dict):
            raise UserError(f"--configs {a.configs!r}: expected a JSON object")
        if a.restarts < 2:
            raise UserError(f"--restarts must be >= 2 (one restart has nothing to choose), got {a.restarts}")
        if any(t <= 0 for t in tstats):
            raise UserError(f"--tstat {a.tstat!r}: each must be > 0 (0, the larger score, is always judged)")
        if not a.data and not a.jsonl:
            raise UserError("give --data to fit, or --jsonl to judge stored fits")
        split = _split(a.split)
        if a.threads < 1:
            raise UserError(f"--threads must be >= 1, got {a.threads}")
        import torch

        torch.set_num_threads(a.threads)
        panels = [load_planted(spec) for spec in a.data]  # all checked before the first fit
        if a.jsonl:
            check_jsonl(a.jsonl)  # before the first fit, not after it
        rows = read_jsonl(a.jsonl) if a.jsonl else []
        done = {(*_key(r), int(r["restart"])) for r in rows}
        for spec, panel in zip(a.data, panels):
            for seed in seeds:
                for i in range(a.restarts):
                    key = (*_key(dict(panel=spec, model=a.model, config=overrides, seed=seed, split=split)), i)
                    if key in done:
                        continue
                    rows.append(fit_row(panel, spec, a.model, overrides, seed, i, split))
                    console.print(f"{spec} seed {seed} restart {i}: valid {rows[-1]['valid']:.4f}, "
                                  f"r̂ {rows[-1]['true_test']:.3f} ({rows[-1]['seconds']:.0f} s)")  # fmt: skip
                    if a.jsonl:
                        with open(a.jsonl, "a") as fh:
                            fh.write(json.dumps(rows[-1]) + "\n")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trials = pairs([r for r in rows if r["model"] == a.model], a.restarts)
    if not trials:
        print(f"error: no trial of {a.model} with all {a.restarts} restarts fitted", file=sys.stderr)
        return 2
    render(trials, tstats, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
