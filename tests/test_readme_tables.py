"""The README's built-in tables printed from results and checked against a document
(rvrae/results/readme.py, studies/readme_tables.py): the format of each cell, and that a row
that differs, or is missing, is reported while a document's own variant rows are not."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from rvrae.results.readme import METRICS, SHARE_COLUMNS, check, check_cells, share_tables, table_seed0, table_seeds12
from rvrae.results.tables import FIELDS, Table

ROOT = Path(__file__).resolve().parents[1]


def _table(values: dict[str, dict[str, tuple[float, float, int]]], share: dict) -> Table:
    """A table as build_tables makes it: (metric, m = 0, field) columns, R² in fractions."""
    data = {}
    for metric in METRICS:
        for f in FIELDS:
            col = []
            for row in values:
                mean, std, n = values[row].get(metric, (float("nan"), float("nan"), 0))
                col.append({"mean": mean, "std": std, "n": n}.get(f, False if f in ("sig", "best") else float("nan")))
            data[(metric, 0, f)] = col
    frame = pd.DataFrame(data, index=pd.Index(list(values), name="model"))
    frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["metric", "m", "field"])
    scale = {m: 100.0 for m in METRICS if m.startswith("r2")}
    return Table(title="", caption="", study="benchmark", frame=frame, cells=[(m, 0) for m in METRICS],
                 scale=scale, share=share)  # fmt: skip


def _one(x):
    return (x, float("nan"), 1)


ORACLE_ROW = {"r2_total": _one(0.16), "r2_pred": _one(0.0085), "r2_forecast": _one(0.0148), "r2_beta": _one(0.174),
              "rank_ic": _one(0.098), "sharpe": _one(2.52), "coverage90": _one(0.916)}  # fmt: skip
T = _table(
    {
        "oracle": ORACLE_ROW,
        "ipca": {"r2_total": _one(0.1249), "r2_pred": _one(0.0049), "r2_forecast": _one(0.0049),
                 "r2_beta": _one(0.1249), "rank_ic": _one(0.062), "sharpe": _one(1.62)},
        "rvrae": {"r2_total": (0.1529, 0.0012, 3), "r2_pred": (0.0062, 0.001, 3), "r2_forecast": (-0.0073, 0.0022, 3),
                  "r2_beta": (0.1555, 0.001, 3), "rank_ic": (0.088, 0.006, 3), "sharpe": (2.70, 0.1, 3),
                  "coverage90": (0.9012, 0.003, 3)},
    },  # fmt: skip
    share={("ipca", "r2_total", 0): 0.1249 / 0.16, ("ipca", "rank_ic", 0): 0.062 / 0.098,
           ("rvrae", "r2_total", 0): 0.1529 / 0.16, ("rvrae", "rank_ic", 0): 0.088 / 0.098},  # fmt: skip
)


def test_rows_are_formatted_as_the_readme_prints_them():
    lines = table_seed0(T)
    assert lines[2] == "| oracle | 16.00 | 0.85 | 1.48 | 17.40 | 0.098 | 2.52 | 0.92 |"
    # one fit: no std; no r_std: coverage "–"
    assert lines[3] == "| IPCA | 12.49 (78 %) | 0.49 | 0.49 | 12.49 | 0.062 (63 %) | 1.62 | – |"
    # mean(std) over seeds, shares of the oracle's, the README's minus sign
    assert lines[4] == "| RVRAE | 15.29(0.12) (96 %) | 0.62 | −0.73(0.22) | 15.55 | 0.088(0.006) (90 %) | 2.70 | 0.90 |"
    both = table_seeds12(T, T)
    assert both[2] == "| oracle | 16.00 | 1.48 (0.85) | 0.098 | 16.00 | 1.48 (0.85) | 0.098 |"
    assert both[4] == "| RVRAE | 96 % | −0.73 (0.62) | 0.088(0.006) (90 %) | 96 % | −0.73 (0.62) | 0.088(0.006) (90 %) |"


def test_check_reports_rows_that_differ_or_are_missing_and_leaves_variant_rows_alone():
    tables = (table_seed0(T), table_seeds12(T, T))
    doc = "\n".join(["# text", "", *tables[0], "", "words", "", *tables[1], ""])
    assert check(doc, tables) == []
    # the document's own variants (other configs) are not generated, and not reported
    variant = "| RVRAE with `premia=\"ls\"` | 15.29(0.12) (96 %) | 0.62 | 0.97(0.22) | 15.55 | 0.087 | 2.64 | 0.90 |"
    assert check(doc.replace(tables[0][4], tables[0][4] + "\n" + variant), tables) == []
    # a document may word its headers its own way after the first cell's words
    assert check(doc.replace("| total R² |", "| total R² (share of oracle) |", 1), tables) == []
    stale = doc.replace("0.088(0.006) (90 %) | 2.70", "0.085(0.006) (87 %) | 2.70")
    (msg,) = check(stale, tables)
    assert msg.startswith("row differs") and "0.085(0.006) (87 %)" in msg and "0.088(0.006) (90 %)" in msg
    missing = check(doc.replace(tables[0][3] + "\n", ""), tables)
    assert missing == ["row missing: " + tables[0][3]]
    assert check(doc.replace("| panel seed 0 |", "| panel |"), tables) == ["table not found: " + tables[0][0]]


def test_script_says_which_folder_is_missing(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "studies"))
    try:
        from readme_tables import main
    finally:
        sys.path.pop(0)
    assert main([str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere' / 'seed0'}: no such results folder" in capsys.readouterr().err


def _shares(values: dict[str, float]) -> Table:
    """A panel's table with only shares: r2_total and rank_ic at `values` of the oracle's."""
    rows = {"oracle": ORACLE_ROW, **{m: {"r2_total": (0.16 * v, 0.0, 3), "rank_ic": (0.098 * v, 0.0, 3)} for m, v in values.items()}}
    share = {(m, k, 0): v for m, v in values.items() for k in ("r2_total", "rank_ic")}
    return _table(rows, share)


def test_unseen_share_tables_bold_the_best_only_when_all_six_are_there_and_check_cell_by_cell():
    full = dict(zip(SHARE_COLUMNS, (0.98, 0.87, 0.91, 0.87, 0.87, 0.74)))
    doc_tables = share_tables({"A": _shares(full), "B": _shares({**full, "ipca": -0.05})})
    assert doc_tables[0][0] == "| total R² share | RVRAE | CA | IPCA | ALSTM | Transformer | FactorVAE |"
    assert doc_tables[0][2] == "| A | **98 %** | 87 % | 91 % | 87 % | 87 % | 74 % |"
    assert doc_tables[1][3] == "| B | **98 %** | 87 % | −5 % | 87 % | 87 % | 74 % |"
    doc = "\n\n".join("\n".join(t) for t in doc_tables)
    # a rerun of two models: their cells are compared, the others' ("–") are not, bold aside
    part = share_tables({"A": _shares({"rvrae": 0.98, "ipca": 0.91}), "B": _shares({"rvrae": 0.98, "ipca": -0.05})})
    assert part[0][2] == "| A | 98 % | – | 91 % | – | – | – |"
    assert check_cells(doc, part) == []
    moved = share_tables({"A": _shares({"rvrae": 0.98, "ipca": 0.90}), "B": _shares({"rvrae": 0.98})})
    assert check_cells(doc, moved) == ["total R² share, A, IPCA: document 91 %, results 90 %",
                                       "Rank IC share, A, IPCA: document 91 %, results 90 %"]
    assert check_cells(doc.replace("| B |", "| B2 |"), part) == ["row missing: " + part[0][3], "row missing: " + part[1][3]]


def test_one_model_in_two_folders_of_a_panel_is_refused(tmp_path):
    """A model in both of a panel's folders (P and P_seq): its rows were concatenated under one
    label, and the table's aggregation crashed (a duplicate index) or took either silently."""
    import pytest

    from rvrae.errors import UserError
    from rvrae.identity import StudyIdentity
    from rvrae.results.readme import panel_table
    from rvrae.results.store import write_row

    ident = StudyIdentity("f00d", "synthetic", (15, 3, 3), 0).columns()
    for folder, models in (("p", ("ipca", "ca")), ("p_seq", ("alstm", "ipca"))):
        for model in models:
            for s in range(2):
                write_row(tmp_path / folder, dict(study="benchmark", model=model, seed=s, m=0, trial_id=f"{model}{s}",
                                                   config={}, r2_total=0.1 + s / 100, rank_ic=0.05, **ident))  # fmt: skip
    with pytest.raises(UserError, match="p_seq: holds ipca"):
        panel_table(tmp_path / "p", tmp_path / "p_seq")
    t = panel_table(tmp_path / "p")
    assert list(t.frame.index) == ["ipca", "ca"]
