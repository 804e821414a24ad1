"""The README's tables of the built-in panel ("Where the models stand"), printed from result
folders, and checked against a document that carries them (`studies/readme_tables.py`).

Rows typed by hand go stale silently: FactorVAE's once carried figures that no committed code
gave (studies/FINDINGS.md, "Reproduction across machines"). Here every default row is
formatted from a benchmark's stored rows by the same aggregation `rvrae table --share` uses
(`build_tables`), so a document's row either equals what the code gives today or is reported.

The unseen panels' two share tables (total R², Rank IC; a row per panel, a column per model)
come from `P` and `P_seq` the same way, for the panels asked for, and are checked cell by cell:
a cell the results do not have (a model not rerun) is not compared.

Layout of DIR: `seed{k}` holds the benchmark of RVRAE, IPCA, CA and FactorVAE on the built-in
panel's draw k (default configs, 3 seeds), `seed{k}_seq` that of ALSTM and the Transformer at
`--epochs 10` (the README's commands write exactly this). Two tables: draw 0 with every
column, and draws 1 and 2 side by side with total R² share, forecast R² (predictive R²) and
Rank IC (share).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from rvrae.errors import UserError
from rvrae.results.oracle import ORACLE, read_oracle
from rvrae.results.render import fmt_number
from rvrae.results.store import read_results
from rvrae.results.tables import FIELDS, Table, build_tables

METRICS = ["r2_total", "r2_pred", "r2_forecast", "r2_beta", "rank_ic", "sharpe", "coverage90"]
# The README's row labels, in its order (render.MODEL_LABELS has the paper's: "Trans",
# "Oracle (true model)")
ROWS = {ORACLE: "oracle", "ipca": "IPCA", "ca": "CA", "factorvae": "FactorVAE", "alstm": "ALSTM",
        "transformer": "Transformer", "rvrae": "RVRAE"}  # fmt: skip
HEAD0 = ("| panel seed 0 | total R² | predictive R² | forecast R² | β-regression R² | Rank IC | Sharpe "
         "| coverage90 |")  # fmt: skip
HEAD12 = ("| | seed 1: total share | forecast R² (pred) | Rank IC (share) | seed 2: total share "
          "| forecast R² (pred) | Rank IC (share) |")  # fmt: skip


def panel_table(*folders: Path) -> Table:
    """One mean(std) table of `METRICS` over the benchmark rows of `folders` (one panel), the
    oracle's row first, shares of it filled in; one study identity per folder."""
    merged: Table | None = None
    for folder in folders:
        if not Path(folder).is_dir():
            raise UserError(f"{folder}: no such results folder (run the README's commands first)")
        df = read_results(folder, study="benchmark")
        have = [m for m in METRICS if m in df.columns and df[m].notna().any()]  # no r_std: no coverage90
        tables = build_tables(df, study="benchmark", metrics=have, oracle=read_oracle(folder), share=True)
        if len(tables) != 1:
            raise UserError(f"{folder}: {len(tables)} study identities; the README's rows come from one")
        (t,) = tables
        for metric in METRICS:
            if metric not in have:  # printed "–"
                for f in FIELDS:
                    t.frame[(metric, 0, f)] = {"n": 0, "sig": False, "best": False}.get(f, math.nan)
        if merged is None:
            merged = t
            continue
        new = t.frame.drop(index=[ORACLE], errors="ignore")
        twice = sorted(set(new.index) & set(merged.frame.index))
        if twice:  # one model's rows in both folders: which are the README's? (never mixed)
            raise UserError(f"{folder}: holds {', '.join(twice)}, which another folder of this panel holds too")
        merged.frame = pd.concat([merged.frame, new.reindex(columns=merged.frame.columns)])
        merged.share.update({k: v for k, v in t.share.items() if k[0] != ORACLE})
    assert merged is not None
    return merged


def _num(t: Table, row: str, metric: str, field: str = "mean") -> str:
    x = float(t.frame.loc[row, (metric, 0, field)])
    if metric == "coverage90":  # a rate against 0.90: two decimals are what it is read to
        text = "–" if not math.isfinite(x) else f"{x:.2f}"
    else:
        text = fmt_number(metric, x, t.scale.get(metric, 1.0))
    return text.replace("-", "−")  # the README's minus


def _mean_std(t: Table, row: str, metric: str) -> str:
    """mean(std) where more than one seed went into it, the mean alone otherwise."""
    n = int(t.frame.loc[row, (metric, 0, "n")])
    return _num(t, row, metric) + (f"({_num(t, row, metric, 'std')})" if n > 1 else "")


def _pct(t: Table, row: str, metric: str) -> str | None:
    """The row's share of the oracle's as the README prints it ("96 %"); None without one."""
    s = t.share.get((row, metric, 0))
    return None if s is None else f"{round(100 * s)} %".replace("-", "−")


def _share(t: Table, row: str, metric: str) -> str:
    pct = _pct(t, row, metric)
    return "" if pct is None else f" ({pct})"


def _rows(t: Table) -> list[str]:
    return [r for r in ROWS if r in t.frame.index]


def table_seed0(t: Table) -> list[str]:
    lines = [HEAD0, "|" + "---|" * 8]
    for r in _rows(t):
        cells = [ROWS[r], _mean_std(t, r, "r2_total") + _share(t, r, "r2_total"), _num(t, r, "r2_pred"),
                 _mean_std(t, r, "r2_forecast"), _num(t, r, "r2_beta"),
                 _mean_std(t, r, "rank_ic") + _share(t, r, "rank_ic"), _num(t, r, "sharpe"),
                 _num(t, r, "coverage90")]  # fmt: skip
        if r == ORACLE:
            cells = [ROWS[r]] + [_num(t, r, m) for m in METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def table_seeds12(t1: Table, t2: Table) -> list[str]:
    def part(t: Table, r: str) -> list[str]:
        if r not in t.frame.index:
            return ["–"] * 3
        total = _num(t, r, "r2_total") if r == ORACLE else _pct(t, r, "r2_total") or ""
        return [total, f"{_num(t, r, 'r2_forecast')} ({_num(t, r, 'r2_pred')})",
                _mean_std(t, r, "rank_ic") + _share(t, r, "rank_ic")]

    lines = [HEAD12, "|" + "---|" * 7]
    for r in ROWS:
        if r in t1.frame.index or r in t2.frame.index:
            lines.append("| " + " | ".join([ROWS[r], *part(t1, r), *part(t2, r)]) + " |")
    return lines


SHARE_COLUMNS = ["rvrae", "ca", "ipca", "alstm", "transformer", "factorvae"]  # the README's order
SHARE_HEADS = {"r2_total": "total R² share", "rank_ic": "Rank IC share"}


def share_tables(tables: dict[str, Table]) -> list[list[str]]:
    """The unseen panels' tables: per metric a row per panel, a column per model, each cell
    the model's mean as a share of the oracle's; the best of a row in bold where all six
    models are in it (with fewer, the best is not known)."""
    out = []
    for metric, head in SHARE_HEADS.items():
        lines = ["| " + " | ".join([head, *(ROWS[m] for m in SHARE_COLUMNS)]) + " |", "|" + "---|" * 7]
        for panel, t in tables.items():
            shares = {m: t.share.get((m, metric, 0)) for m in SHARE_COLUMNS}
            known = [v for v in shares.values() if v is not None]
            best = max(known) if len(known) == len(SHARE_COLUMNS) else None
            cells = []
            for m in SHARE_COLUMNS:
                text = _pct(t, m, metric) or "–"
                cells.append(f"**{text}**" if shares[m] is not None and shares[m] == best else text)
            lines.append("| " + " | ".join([panel, *cells]) + " |")
        out.append(lines)
    return out


def check_cells(text: str, tables: list[list[str]]) -> list[str]:
    """The unseen panels' tables cell by cell: every cell the results have ("–" where a model
    was not rerun) against the document's, bold marks aside."""
    problems = []
    for lines in tables:
        head = lines[0]
        doc = _doc_rows(text, head)
        if doc is None:
            problems.append(f"table not found: {head}")
            continue
        models = [c.strip() for c in head.split("|")[2:-1]]
        for line in lines[2:]:
            cells = [c.strip().strip("*") for c in line.split("|")[1:-1]]
            have = doc.get(cells[0])
            if have is None:
                problems.append(f"row missing: {line}")
                continue
            theirs = [c.strip().strip("*") for c in have.split("|")[1:-1]]
            for model, mine, their in zip(models, cells[1:], theirs[1:]):
                if mine != "–" and mine != their:
                    problems.append(f"{head.split('|')[1].strip()}, {cells[0]}, {model}: document {their}, results {mine}")
    return problems


def _panel(root: Path, name: str) -> Table:
    """`root`/name, and `root`/name_seq where the sequence models ran as a study of their own."""
    seq = Path(root) / f"{name}_seq"
    return panel_table(Path(root) / name, *([seq] if seq.is_dir() else []))


def readme_tables(root: Path) -> tuple[list[str], list[str]]:
    """The two tables from `root`/seed{k}[_seq]."""
    return table_seed0(_panel(root, "seed0")), table_seeds12(_panel(root, "seed1"), _panel(root, "seed2"))


def unseen_tables(root: Path, panels: list[str]) -> list[list[str]]:
    """The share tables of the unseen panels from `root`/P[_seq] for each panel P."""
    return share_tables({p: _panel(root, p) for p in panels})


def _doc_rows(text: str, head: str) -> dict[str, str] | None:
    """The rows of the table whose header starts as `head` does (up to its second cell's
    first words: a document may word its column headers its own way), by their first cell."""
    key = "|".join(head.split("|")[:3]).split(":")[0]
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(key)), None)
    if start is None:
        return None
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows[line.split("|")[1].strip()] = line.strip()
    return rows


def check(text: str, tables: tuple[list[str], list[str]]) -> list[str]:
    """Every generated row against the document's row of the same label in the same table:
    one message per row missing or different. Rows only the document has (variants run with
    other configs, e.g. FINDINGS' `CA [ar1]`) are not this check's business."""
    problems = []
    for lines in tables:
        head, generated = lines[0], lines[2:]
        doc = _doc_rows(text, head)
        if doc is None:
            problems.append(f"table not found: {head}")
            continue
        for line in generated:
            label = line.split("|")[1].strip()
            have = doc.get(label)
            if have is None:
                problems.append(f"row missing: {line}")
            elif re.sub(r"\s+", " ", have) != re.sub(r"\s+", " ", line):
                problems.append(f"row differs:\n  document: {have}\n  results:  {line}")
    return problems
