"""Can the months before the test choose between ranks and ranks + squares (`--squares`)?

For each planted panel and basis, one model (default config, model seed `--seed`, 0 unless
told) is fitted on the usual train/valid/test split, and once more at each of `--origins`
rolling origins: trained on every year before year y, validated on year y, for the
`--origins` years before the test. Four rules pick a basis per panel: the 36-month
validation Rank IC (what a study could choose on today), the rolling-origin validation Rank
IC pooled over its years, the validation total R², and always one basis.
Each is judged on the test months twice: by the Rank IC against the realised returns (what
the tables print) and by the Rank IC against the oracle's expected return r̂ (no return
noise: what a choice should get right). The first and second halves of the test say how
stable each judge is. studies/FINDINGS.md, "Choosing the basis on validation", has the run.

    python studies/basis_choice.py --data synthetic --data synthetic:studies/panels/Q.json \\
        [--model ipca] [--origins 6] [--seed 0] [--jsonl rows.jsonl]

`--origins 0` fits each basis once (no rolling origin): the check for a model too slow for
2 × (1 + origins) fits a panel, such as RVRAE.

Planted panels only (`--data synthetic[:DESIGN.json]`): the oracle's r̂ is the second judge.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

BASES = ("ranks", "squares")


def fit_scores(panel, model: str, split: tuple[int, int, int], seed: int = 0):
    """Fit `model` (default config, seed `seed`) on `split`; a function of months -> (Rank IC
    against the returns, Rank IC against the oracle's r̂, total R²), and the split's
    valid/test months."""
    from rvrae.data.panel import split_by_years
    from rvrae.metrics import r2_total, rank_ic, true_rank_ic
    from rvrae.models.registry import make_model
    from rvrae.study.trainable import resolved_config
    from rvrae.train import seed_everything

    seed_everything(seed)
    train, valid, test = split_by_years(panel, *split)
    fitted = make_model(model, resolved_config(model, {}))
    fitted.fit(train, valid, seed=seed, device="cpu")
    fc = fitted.predict(panel, np.arange(panel.T))
    oracle = panel.meta["oracle"].r_hat

    def scores(months):
        return (rank_ic(fc.r_hat[months], panel.ret[months], panel.mask[months]),
                true_rank_ic(fc.r_hat[months], oracle[months], panel.mask[months]),
                r2_total(panel.ret[months], fc.beta[months], fc.f_post[months], panel.mask[months]))  # fmt: skip

    return scores, valid.target_months, test.target_months


def load_checked(spec: str, origins: int, test_years: int = 3):
    """The planted panel `spec`, with room for `origins` rolling origins before its test."""
    from rvrae.data.io import load_planted
    from rvrae.errors import UserError

    base = load_planted(spec)
    if base.T // 12 - test_years - origins < 1:
        raise UserError(f"--data {spec}: {base.T // 12} years leave no training year before {origins} origins")
    if base.T // 12 - test_years - 3 < 1:  # the main split: 3 validation years, then the test
        raise UserError(f"--data {spec}: {base.T // 12} years leave no training year before 3 validation "
                        f"and {test_years} test years")  # fmt: skip
    return base


def panel_row(base, spec: str, model: str, origins: int, valid_years: int = 3, test_years: int = 3,
              seed: int = 0) -> dict:
    """Every score of the panel `base` (loaded from `spec` by `load_checked`), both bases, each
    fit at model seed `seed`: the JSON line of `--jsonl`."""
    years = base.T // 12
    row: dict = {"panel": spec, "model": model, "seed": seed}
    for basis, panel in zip(BASES, (base, base.with_squares())):
        t0 = time.perf_counter()
        scores, valid, test = fit_scores(panel, model, (years - valid_years - test_years, valid_years, test_years), seed)
        half = len(test) // 2
        row[f"{basis}_valid"], _, row[f"{basis}_valid_r2_total"] = scores(valid)
        for name, months in (("test", test), ("test_a", test[:half]), ("test_b", test[half:])):
            row[f"{basis}_{name}"], row[f"{basis}_true_{name}"], _ = scores(months)
        rolling = []
        for y in range(years - test_years - origins, years - test_years):  # train [0, y), validate y
            s, v, _ = fit_scores(panel, model, (y, 1, years - y - 1), seed)
            rolling.append(s(v)[0])
        row[f"{basis}_rolling"] = float(np.mean(rolling)) if rolling else float("nan")
        row[f"{basis}_rolling_years"] = rolling
        row[f"{basis}_seconds"] = time.perf_counter() - t0
    return row


def judge(rows: list[dict]) -> dict:
    """Per rule: how often its pick is the better basis on each judge, and the mean test Rank
    IC of its picks; per judge, how often its two test halves name the same basis."""
    def diff(r, key):
        return r[f"squares_{key}"] - r[f"ranks_{key}"]

    rules = {"valid 36 m": lambda r: diff(r, "valid") > 0, "rolling": lambda r: diff(r, "rolling") > 0,
             "valid total R²": lambda r: diff(r, "valid_r2_total") > 0,
             "always ranks": lambda r: False, "always squares": lambda r: True}  # fmt: skip
    if any(np.isnan(r["ranks_rolling"]) for r in rows):  # --origins 0: no rolling origin
        del rules["rolling"]
    out: dict = {"n": len(rows), "halves_agree": {}}
    for key, label in (("test", "returns"), ("true_test", "oracle r̂")):
        first, second = key.replace("test", "test_a"), key.replace("test", "test_b")
        out["halves_agree"][label] = sum((diff(r, first) > 0) == (diff(r, second) > 0) for r in rows)
        for name, rule in rules.items():
            picks = [r[f"{'squares' if rule(r) else 'ranks'}_{key}"] for r in rows]
            right = sum(rule(r) == (diff(r, key) > 0) for r in rows)
            out.setdefault(name, {})[label] = (right, float(np.mean(picks)))
        best = [max(r[f"ranks_{key}"], r[f"squares_{key}"]) for r in rows]
        out.setdefault("best", {})[label] = (len(rows), float(np.mean(best)))
    return out


def render(rows: list[dict], console) -> None:
    from rich.table import Table

    t = Table(title="Rank IC, ranks / squares (test: against returns; r̂: against the oracle's expected return)")
    for col in ("panel", "valid 36 m", "rolling", "test", "test r̂"):
        t.add_column(col, justify="left" if col == "panel" else "right")
    for r in rows:
        cell = lambda k: f"{r['ranks_' + k]:.3f} / {r['squares_' + k]:.3f}"  # noqa: E731
        name = Path(r["panel"].partition(":")[2]).stem or r["panel"]
        t.add_row(name, cell("valid"), cell("rolling"), cell("test"), cell("true_test"))
    console.print(t)
    j = judge(rows)
    s = Table(title=f"Each rule's pick over {j['n']} panels: right / mean Rank IC of its picks")
    s.add_column("rule")
    for label in ("returns", "oracle r̂"):
        s.add_column(f"judged on {label}", justify="right")
    for name in ("valid 36 m", "rolling", "valid total R²", "always ranks", "always squares", "best"):
        if name not in j:
            continue
        s.add_row(name, *(f"{j[name][lab][0]} / {j[name][lab][1]:.4f}" for lab in ("returns", "oracle r̂")))
    s.add_row("test halves agree", *(str(j["halves_agree"][lab]) for lab in ("returns", "oracle r̂")))
    console.print(s)


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from rvrae.errors import UserError
    from rvrae.jsonl import check_jsonl
    from rvrae.models.registry import model_names

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", action="append", required=True, help="synthetic or synthetic:DESIGN.json; repeat")
    p.add_argument("--model", default="ipca", choices=model_names())
    p.add_argument("--origins", type=int, default=6,
                   help="rolling-origin validation years (0: none, two fits a panel: a slow model's check)")
    p.add_argument("--seed", type=int, default=0, help="the model seed of every fit (a panel's draw is its design's)")
    p.add_argument("--jsonl", help="append each panel's scores here as a JSON line")
    a = p.parse_args(argv)
    console = Console()
    rows = []
    try:
        if a.origins < 0:
            raise UserError(f"--origins must be >= 0, got {a.origins}")
        if a.jsonl:
            check_jsonl(a.jsonl)
        panels = [load_checked(spec, a.origins) for spec in a.data]  # all checked before the first fit
        for spec, panel in zip(a.data, panels):
            rows.append(panel_row(panel, spec, a.model, a.origins, seed=a.seed))
            if a.jsonl:
                with open(a.jsonl, "a") as fh:
                    fh.write(json.dumps(rows[-1]) + "\n")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    render(rows, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
