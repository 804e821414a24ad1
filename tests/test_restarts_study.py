"""rvrae.models.base.choose_restart, and studies/restarts.py: each restart fitted alone,
judged by the rule the fit itself uses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rvrae.models.base import choose_restart

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))
try:
    from restarts import fit_row, judge, main, pairs
finally:
    sys.path.pop(0)

FAST = {"epochs": 3}
SPLIT = (6, 2, 2)


SWING = np.tile([1.0, -1.0], 18)  # 36 validation months: a difference's spread, mean 0


def test_choose_restart_takes_the_larger_mean_and_at_a_tstat_only_a_clear_margin():
    base = np.random.default_rng(0).normal(0.02, 0.05, 36)
    noisy = base + 0.01 + 0.06 * SWING  # ahead on the mean by 0.01 at a paired t of 0.99
    clear = base + 0.02 + 0.005 * SWING  # ahead by 0.02 at a t of 23.7
    t_noisy = 0.01 / (0.06 * SWING).std(ddof=1) * 6
    assert choose_restart([base, noisy]) == 1 and choose_restart([base, noisy], 0.0) == 1
    assert choose_restart([base, noisy], 2.0) == 0
    assert choose_restart([base, noisy], t_noisy - 0.01) == 1 and choose_restart([base, noisy], t_noisy + 0.01) == 0
    assert choose_restart([base, clear], 2.0) == 1
    # a later restart is judged against the kept one, not the one before it
    assert choose_restart([base, noisy, clear], 2.0) == 2
    assert choose_restart([base, clear, clear + 0.01 + 0.06 * SWING], 2.0) == 1  # ahead of the kept, not clearly
    assert choose_restart([base, clear, clear + 0.01 + 0.06 * SWING]) == 2
    assert choose_restart([base, base.copy()]) == 0  # the first of equal means stays
    nan = np.full(36, np.nan)
    assert choose_restart([nan, nan]) is None
    assert choose_restart([nan, base], 2.0) == 1  # the first fit that scores is kept without a margin


def test_the_studys_fits_are_the_restarts_a_trial_makes_and_its_rule_keeps_the_fits_choice(ten_year_design):
    from rvrae.data.io import load_data
    from rvrae.data.panel import split_by_years
    from rvrae.models.registry import make_model
    from rvrae.study.trainable import resolved_config

    panel = load_data(ten_year_design)
    rows = [fit_row(panel, ten_year_design, "rvrae", FAST, seed=1, restart=i, split=SPLIT) for i in range(2)]
    train, valid, _ = split_by_years(panel, *SPLIT)
    for tstat in (0.0, 2.0):
        model = make_model("rvrae", resolved_config("rvrae", {**FAST, "restarts": 2, "restart_tstat": tstat}))
        model.fit(train, valid, seed=1)
        assert model.restart_scores_ == pytest.approx([r["valid"] for r in rows], abs=1e-12)
        name = "larger valid (restart_tstat=0)" if tstat == 0 else "valid t ≥ 2 (restart_tstat=2)"
        assert judge(pairs(rows, 2), [2.0])[name]["picks"] == [model.restart_]
    assert rows[1]["model_seed"] != 1 and rows[0]["model_seed"] == 1
    assert len(rows[0]["valid_series"]) == 24 and rows[0]["valid"] == pytest.approx(np.nanmean(rows[0]["valid_series"]))
    for r in rows:  # RVRAE on a planted panel ranks the oracle's r̂ far more closely than the returns
        assert r["true_test"] > 0.1 > abs(r["test"])


def _fit(seed, restart, valid, true_test, test=0.0):
    return {"panel": "p", "model": "rvrae", "config": {}, "seed": seed, "restart": restart,
            "valid_series": list(valid), "valid": float(np.mean(valid)), "true_test": true_test, "test": test}  # fmt: skip


def test_judge_scores_each_rules_kept_fits_against_restart_0():
    base = np.random.default_rng(1).normal(0.02, 0.05, 36)
    rows = [
        _fit(0, 0, base, 0.6, 0.05), _fit(0, 1, base + 0.01 + 0.06 * SWING, 0.5, 0.04),  # a noisy lead (t 0.99)
        _fit(1, 0, base, 0.1, 0.01), _fit(1, 1, base + 0.05 + 0.01 * SWING, 0.8, 0.08),  # a failed fit caught
        _fit(2, 0, base, 0.7), _fit(2, 1, base - 0.01 + 0.01 * SWING, 0.72),  # validation prefers restart 0
        _fit(3, 0, base, 0.9),  # restart 1 not fitted yet: no trial
    ]
    trials = pairs(rows, 2)
    assert [t[0]["seed"] for t in trials] == [0, 1, 2]
    assert rows[1]["valid"] > rows[0]["valid"]
    j = judge(trials, [2.0])
    assert j["restart 0 (restarts=1)"] == {"picks": [0, 0, 0], "true_test": pytest.approx(1.4 / 3),
                                           "test": pytest.approx(0.02), "better": 0, "worse": 0}  # fmt: skip
    larger = j["larger valid (restart_tstat=0)"]
    assert larger["picks"] == [1, 1, 0] and (larger["better"], larger["worse"]) == (1, 1)
    assert larger["true_test"] == pytest.approx((0.5 + 0.8 + 0.7) / 3)
    gated = j["valid t ≥ 2 (restart_tstat=2)"]
    assert gated["picks"] == [0, 1, 0] and (gated["better"], gated["worse"]) == (1, 0)
    assert j["best on r̂ (the ceiling)"]["picks"] == [0, 1, 1]


def test_the_study_resumes_from_its_rows_and_refuses_bad_options(ten_year_design, tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    args = ["--data", ten_year_design, "--seeds", "0", "--split", "6/2/2", "--configs", json.dumps(FAST),
            "--jsonl", str(rows)]  # fmt: skip
    assert main(args) == 0
    assert len(rows.read_text().splitlines()) == 2
    first = capsys.readouterr().out
    assert "restart 1" in first and "larger valid" in first
    assert main(args) == 0  # both fits are in the file: nothing is fitted again
    assert len(rows.read_text().splitlines()) == 2
    assert "seed 0 restart" not in capsys.readouterr().out
    assert main(["--jsonl", str(rows)]) == 0  # judge the stored fits alone
    for bad, says in ((["--restarts", "1"], "--restarts must be >= 2"), (["--tstat", "0"], "--tstat"),
                      (["--configs", "[1]"], "expected a JSON object"), ([], "give --data")):  # fmt: skip
        assert main(bad if not bad else ["--data", ten_year_design, *bad]) == 2
        assert says in capsys.readouterr().err


def test_a_fit_is_keyed_by_its_split_and_the_rows_file_is_read_with_care(tmp_path, capsys):
    """Rows of another --split are other fits (they were skipped as done and reported as
    this split's); a bad --jsonl is one error naming the line, a killed run's cut last line
    is dropped, and a --jsonl in a missing folder is refused before any fit."""
    from restarts import _key

    row = dict(panel="synthetic", model="rvrae", config={}, seed=0, restart=0)
    assert _key({**row, "split": [6, 2, 2]}) != _key({**row, "split": [15, 3, 3]}) == _key(row)
    good = dict(row, valid_series=[0.01, 0.02], valid=0.015, test=0.05, true_test=0.5, r2_total=0.1,
                model_seed=0, epochs=1, seconds=1.0)  # fmt: skip
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps(good) + "\n" + json.dumps({**good, "restart": 1}) + "\n" + '{"panel": "syn')
    assert main(["--model", "rvrae", "--jsonl", str(rows)]) == 0  # the cut line is a fit that never ended
    capsys.readouterr()
    rows.write_text("not json\n" + json.dumps(good) + "\n")
    assert main(["--model", "rvrae", "--jsonl", str(rows)]) == 2
    assert "line 1 is not JSON" in capsys.readouterr().err
    assert main(["--data", "synthetic", "--jsonl", str(tmp_path / "no" / "rows.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
