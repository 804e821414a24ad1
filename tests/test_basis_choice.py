"""studies/basis_choice.py: ranks vs squares chosen on validation, judged on the test months
against the returns and against the oracle's expected return."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))
try:
    from basis_choice import judge, load_checked, main, panel_row
finally:
    sys.path.pop(0)


def test_a_panels_row_has_every_score_and_ipca_ranks_like_the_oracle(ten_year_design):
    row = panel_row(load_checked(ten_year_design, 2), ten_year_design, "ipca", origins=2)  # 14 IPCA fits, about 10 s
    for basis in ("ranks", "squares"):
        assert len(row[f"{basis}_rolling_years"]) == 2  # one validation year per origin
        assert row[f"{basis}_rolling"] == pytest.approx(sum(row[f"{basis}_rolling_years"]) / 2)
        assert 0 < row[f"{basis}_valid_r2_total"] < 1
        for key in ("valid", "test", "test_a", "test_b", "true_test", "true_test_a", "true_test_b"):
            assert -1 <= row[f"{basis}_{key}"] <= 1
        # IPCA on a planted panel orders stocks much as the oracle's expected return does,
        # far more closely than it orders the noisy returns
        assert row[f"{basis}_true_test"] > 0.3 > abs(row[f"{basis}_test"])


def _row(**d) -> dict:
    """A panel's row with only the differences (squares - ranks) the judge reads."""
    keys = ("valid", "valid_r2_total", "rolling", "test", "test_a", "test_b", "true_test", "true_test_a", "true_test_b")
    return {**{f"ranks_{k}": 0.0 for k in keys}, **{f"squares_{k}": d.get(k, 0.0) for k in keys}}


def test_judge_counts_each_rules_right_picks_and_the_halves():
    rows = [
        _row(valid=0.01, valid_r2_total=0.005, rolling=-0.01, test=0.02, test_a=0.01, test_b=0.03, true_test=0.1, true_test_a=0.1, true_test_b=0.1),
        _row(valid=0.01, rolling=0.02, test=-0.01, test_a=0.01, test_b=-0.02, true_test=0.2, true_test_a=0.1, true_test_b=0.3),
        _row(valid=-0.01, rolling=-0.02, test=-0.03, test_a=-0.01, test_b=-0.05, true_test=-0.1, true_test_a=-0.1, true_test_b=0.1),
    ]
    j = judge(rows)
    assert j["n"] == 3
    assert j["valid 36 m"]["returns"][0] == 2 and j["valid 36 m"]["oracle r̂"][0] == 3
    assert j["rolling"]["returns"][0] == 1 and j["rolling"]["oracle r̂"][0] == 2
    assert j["valid total R²"]["returns"][0] == 3 and j["valid total R²"]["oracle r̂"][0] == 2
    assert j["always squares"]["returns"][0] == 1 and j["always ranks"]["returns"][0] == 2
    assert j["always squares"]["oracle r̂"][1] == pytest.approx((0.1 + 0.2 - 0.1) / 3)
    assert j["valid 36 m"]["oracle r̂"][1] == pytest.approx((0.1 + 0.2 + 0.0) / 3)  # picks ranks (0) on the third
    assert j["best"]["returns"][1] == pytest.approx((0.02 + 0.0 + 0.0) / 3)
    assert j["halves_agree"] == {"returns": 2, "oracle r̂": 2}
    no_origins = [{**r, "ranks_rolling": float("nan"), "squares_rolling": float("nan")} for r in rows]
    assert "rolling" not in judge(no_origins) and judge(no_origins)["valid 36 m"] == j["valid 36 m"]


def test_bad_data_is_one_error_before_any_fit(tmp_path, ten_year_design, capsys):
    out = tmp_path / "rows.jsonl"
    panel = tmp_path / "long.csv"
    panel.write_text("permno,date,ret,x1\n1,2000-01,0.01,0.5\n")
    assert main(["--data", ten_year_design, "--data", str(panel), "--jsonl", str(out)]) == 2
    assert f"--data {panel}: not a planted panel" in capsys.readouterr().err
    assert not out.exists()  # the first panel was not fitted either
    assert main(["--data", ten_year_design, "--origins", "7", "--jsonl", str(out)]) == 2
    assert "10 years leave no training year before 7 origins" in capsys.readouterr().err
    assert not out.exists()


def test_seed_reaches_every_fit_and_the_row(ten_year_design, monkeypatch, tmp_path):
    """`--seed` is the model seed of every fit (both bases, every rolling origin), and the
    JSON line records it, so rows of several seeds can be told apart."""
    import basis_choice

    seeds = []
    real = basis_choice.fit_scores

    def spy(panel, model, split, seed=0):
        seeds.append(seed)
        return real(panel, model, split, seed)

    monkeypatch.setattr(basis_choice, "fit_scores", spy)
    out = tmp_path / "rows.jsonl"
    assert main(["--data", ten_year_design, "--origins", "1", "--seed", "3", "--jsonl", str(out)]) == 0
    assert seeds == [3] * 4  # two bases, each fitted once and at one rolling origin
    assert json.loads(out.read_text())["seed"] == 3


def test_a_panel_too_short_for_the_main_split_and_a_bad_jsonl_are_refused_first(tmp_path, ten_year_design, capsys):
    short = tmp_path / "six.json"
    short.write_text(json.dumps({"n_stocks": 50, "n_months": 72, "n_chars": 4}))
    out = tmp_path / "rows.jsonl"
    assert main(["--data", ten_year_design, "--data", f"synthetic:{short}", "--origins", "0", "--jsonl", str(out)]) == 2
    assert "6 years leave no training year before 3 validation" in capsys.readouterr().err
    assert not out.exists()  # the ten-year panel was not fitted first
    assert main(["--data", ten_year_design, "--jsonl", str(tmp_path / "no" / "rows.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
