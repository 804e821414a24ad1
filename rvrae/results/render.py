"""Turn tables (rvrae.results.tables) into text: rich, markdown, latex, csv (SPEC §7).

Cell convention, every format: `mean(std)` in the table's display units (R² in percent),
a `*` after the cell when it differs from RVRAE (see the caption), the best value per
column in bold (bold green in rich). A cell with one value shows that value alone; an
empty cell shows `–`. `n` (the number of seeds) is one column at the right of each row:
one number when every cell of the row has the same n, else `min–max`.
CSV is long and machine-readable, in stored units (R² as fractions):
`study,model,m,metric,mean,std,n`.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from rvrae.errors import UserError
from rvrae.metrics import span_factor
from rvrae.results.tables import ENSEMBLE, Table, base_metric

FORMATS = ("rich", "markdown", "latex", "csv")
MODEL_LABELS = {"ipca": "IPCA", "ca": "CA", "factorvae": "FactorVAE", "alstm": "ALSTM",
                "transformer": "Trans", "rvrae": "RVRAE",
                "oracle": "Oracle (true model)"}  # fmt: skip  (the paper's labels; rvrae.results.oracle)
METRIC_LABELS = {
    "r2_total": ("Total R²", r"Total $R^2$"),
    "r2_pred": ("Predictive R²", r"Predictive $R^2$"),  # β · prevailing mean of the factors
    "r2_forecast": ("Forecast R²", r"Forecast $R^2$"),  # the model's own forecast r̂
    "r2_forecast_xs": ("Forecast R², cross-section", r"Forecast $R^2$, cross-section"),  # r2_cross_section: without the months' level
    "r2_beta": ("β-regression R²", r"$\beta$-regression $R^2$"),  # ceiling of the factor path
    "ic": ("IC", "IC"),
    "icir": ("ICIR", "ICIR"),
    "rank_ic": ("Rank IC", "Rank IC"),
    "rank_icir": ("Rank ICIR", "Rank ICIR"),
    "rank_ic_span": ("β-span Rank IC", r"$\beta$-span Rank IC"),  # the Rank IC the betas allow
    "rank_ic_true": ("Rank IC vs true E[r]", r"Rank IC vs true $E[r]$"),  # against the planted r̂, no return noise
    "rank_ic_w0": ("Rank IC at w=0", "Rank IC at $w=0$"),  # the premia alone (calibrate's w = 0)
    "rank_ic_w1": ("Rank IC at w=1", "Rank IC at $w=1$"),  # the dynamic forecast in full
    "rank_ic_true_w0": ("vs true E[r] at w=0", "vs true $E[r]$ at $w=0$"),  # rank_ic_w0 against the planted r̂
    "rank_ic_true_w1": ("vs true E[r] at w=1", "vs true $E[r]$ at $w=1$"),  # rank_ic_w1 against the planted r̂
    "forecast_weight": ("Forecast share w", "Forecast share $w$"),  # of the dynamic forecast (calibrate)
    "forecast_tstat": ("Forecast share t", "Forecast share $t$"),  # its validation t-statistic
    "forecast_factor_tstat": ("Factor AR(1) t", "Factor AR(1) $t$"),  # the largest factor's (forecast_test)
    "forecast_scale": ("Forecast scale c", "Forecast scale $c$"),  # its level (forecast_scale)
    "prior_spread": ("Prior spread", "Prior spread"),  # std_t of the prior's mean / posterior's
    "sharpe": ("Sharpe", "Sharpe"),
    "sharpe_net": ("Sharpe (30 bps)", "Sharpe (30 bps)"),
    "turnover": ("Turnover", "Turnover"),
    "coverage90": ("Coverage 90%", r"Coverage 90\%"),
    "nll": ("NLL", "NLL"),
}
_PREFIX = {"valid_": ("valid ", "valid "), "omitted_": ("omitted ", "omitted ")}


def _decimals(metric: str) -> int | None:
    b = base_metric(metric)
    if span_factor(b):  # an R² in [0, 1], not a percent
        return 3
    if b.startswith("r2") or b.startswith("sharpe") or b == "turnover":
        return 2
    if b in METRIC_LABELS:
        return 3
    return None  # other columns: 4 significant digits


def fmt_number(metric: str, x: float, scale: float = 1.0) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    d = _decimals(metric)
    return f"{x * scale:.{d}f}" if d is not None else f"{x * scale:#.4g}".rstrip(".")


def metric_label(metric: str, table: Table, latex: bool = False) -> str:
    i = 1 if latex else 0
    prefix = ""
    base = metric
    for pre, labels in _PREFIX.items():
        if metric.startswith(pre):
            # Table III's title already says its metrics are on the omitted stocks
            prefix = "" if table.key == "table3" else labels[i]
            base = metric[len(pre):]
    if base in METRIC_LABELS:
        label = prefix + METRIC_LABELS[base][i].replace("30 bps", f"{table.cost_bps:g} bps")  # --cost
    elif k := span_factor(base):  # rvrae.metrics.span_r2
        label = prefix + (rf"$\beta$ span $R^2$, factor {k}" if latex else f"β span R², factor {k}")
    else:
        label = _tex_escape(metric) if latex else metric
    if table.scale.get(metric) == 100.0:
        label += r" (\%)" if latex else " (%)"
    return label


def model_label(key: str, latex: bool = False) -> str:
    suffix = f" ({ENSEMBLE})"
    if key.endswith(suffix):  # a benchmark table's seed-ensemble row
        return model_label(key[: -len(suffix)], latex) + suffix
    label = MODEL_LABELS.get(key, key)
    return _tex_escape(label) if latex else label


def _cell(table: Table, row: str, metric: str, m: int) -> dict[str, Any]:
    f = table.frame.loc[row]
    mean, std, n = f[(metric, m, "mean")], f[(metric, m, "std")], int(f[(metric, m, "n")])
    scale = table.scale.get(metric, 1.0)
    if n == 0 or not math.isfinite(mean):
        text = "–"
    elif n == 1 or not math.isfinite(std):
        text = fmt_number(metric, mean, scale)
    else:
        text = f"{fmt_number(metric, mean, scale)}({fmt_number(metric, std, scale)})"
    if (share := table.share.get((row, metric, m))) is not None:  # rvrae table --share
        text += f" [{share:.0%}]"
    return {"text": text, "sig": bool(f[(metric, m, "sig")]), "best": bool(f[(metric, m, "best")]), "n": n}


def _n_text(cells: list[dict]) -> str:
    ns = sorted({c["n"] for c in cells if c["n"] > 0})
    if not ns:
        return "0"
    return str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"


def _rows(table: Table):
    """(row key, [cell dicts]) in display order."""
    for r in table.rows:
        yield r, [_cell(table, r, metric, m) for metric, m in table.cells]


def _header(table: Table, metric: str, m: int, latex: bool = False) -> str:
    label = metric_label(metric, table, latex)
    return f"{label} (m={m})" if table.by_m and not latex else label


def _m_groups(table: Table) -> list[tuple[int, int]]:
    """[(m, number of consecutive columns)] for the m header row."""
    groups: list[list[int]] = []
    for _, m in table.cells:
        if groups and groups[-1][0] == m:
            groups[-1][1] += 1
        else:
            groups.append([m, 1])
    return [(m, k) for m, k in groups]


# ---- markdown ----------------------------------------------------------------------------
def _markdown(table: Table) -> str:
    extra = list(table.extra)
    head = [table.row_label] + [_header(table, me, m) for me, m in table.cells] + ["n"] + extra
    lines = [f"**{table.title}**", "", "| " + " | ".join(head) + " |",
             "|" + "|".join([":---"] + ["---:"] * (len(table.cells) + 1) + [":---"] * len(extra)) + "|"]  # fmt: skip
    for r, cells in _rows(table):
        texts = []
        for c in cells:
            t = c["text"] + ("*" if c["sig"] else "")
            texts.append(f"**{t}**" if c["best"] else t)
        ex = [table.extra[e].get(r, "") for e in extra]
        lines.append("| " + " | ".join([model_label(r)] + texts + [_n_text(cells)] + ex) + " |")
    lines += ["", table.caption] + (["", table.footer] if table.footer else [])
    return "\n".join(lines) + "\n"


# ---- latex -------------------------------------------------------------------------------
_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "<": "$<$", ">": "$>$", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip


def _tex_escape(s: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in str(s)).replace("²", "$^2$").replace("–", "--")


def _latex(table: Table) -> str:
    extra = list(table.extra)
    ncols = 1 + len(table.cells) + 1 + len(extra)
    spec = "l" + "r" * (len(table.cells) + 1) + "l" * len(extra)
    out = [r"\begin{table}[htbp]", r"\centering",
           rf"\caption{{{_tex_escape(table.title)}. {_tex_escape(table.caption)} {_tex_escape(table.footer)}}}",
           rf"\label{{tab:{table.key or table.study}}}", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]  # fmt: skip
    if table.by_m:
        parts, rules, col = [""], [], 2
        for m, k in _m_groups(table):
            parts.append(rf"\multicolumn{{{k}}}{{c}}{{$m = {m}$}}")
            rules.append(rf"\cmidrule(lr){{{col}-{col + k - 1}}}")
            col += k
        parts += [""] * (1 + len(extra))
        out += [" & ".join(parts) + r" \\", " ".join(rules)]
    head = [table.row_label] + [_header(table, me, m, latex=True) for me, m in table.cells] + ["$n$"]
    head += [_tex_escape(e) for e in extra]
    assert len(head) == ncols
    out += [" & ".join(head) + r" \\", r"\midrule"]
    for r, cells in _rows(table):
        texts = []
        for c in cells:
            t = _tex_escape(c["text"]) + ("$^{*}$" if c["sig"] else "")
            texts.append(rf"\textbf{{{t}}}" if c["best"] else t)
        ex = [_tex_escape(table.extra[e].get(r, "")) for e in extra]
        out.append(" & ".join([model_label(r, latex=True)] + texts + [_tex_escape(_n_text(cells))] + ex) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


# ---- csv ---------------------------------------------------------------------------------
def _num(x: float) -> str:
    return "" if x is None or not math.isfinite(x) else format(float(x), ".10g")


def _csv(tables: list[Table]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    shares = any(t.share for t in tables)  # --share: one more column, share of the oracle's mean
    w.writerow(["study", "model", "m", "metric", "mean", "std", "n"] + (["share_of_oracle"] if shares else []))
    seen = set()
    for t in tables:
        for r in t.rows:
            f = t.frame.loc[r]
            for metric, m in t.cells:
                key = (t.study, r, m, metric)
                n = int(f[(metric, m, "n")])
                if key in seen or n == 0:
                    continue
                seen.add(key)
                # a tune cell is the best trial's value, not a mean over its n trials: n = 1
                row = [t.study, r, m, metric, _num(f[(metric, m, "mean")]), _num(f[(metric, m, "std")]),
                       1 if "best config" in t.extra else n]  # fmt: skip
                w.writerow(row + ([_num(t.share.get((r, metric, m), math.nan))] if shares else []))
    return buf.getvalue()


# ---- rich --------------------------------------------------------------------------------
def _rich(table: Table) -> RichTable:
    """Every text is escaped: rich reads "[r]" in a label (E[r]) as markup and drops it."""
    from rich.markup import escape

    caption = table.caption + (f"\n{table.footer}" if table.footer else "")
    rt = RichTable(title=escape(table.title), caption=escape(caption), caption_justify="left")
    rt.add_column(escape(table.row_label), style="bold")
    for me, m in table.cells:
        rt.add_column(escape(_header(table, me, m)), justify="right")
    rt.add_column("n", justify="right")
    for e in table.extra:
        rt.add_column(escape(e), overflow="fold")
    for r, cells in _rows(table):
        texts = []
        for c in cells:
            t = escape(c["text"] + ("*" if c["sig"] else ""))
            texts.append(f"[bold green]{t}[/]" if c["best"] else t)
        rt.add_row(escape(model_label(r)), *texts, _n_text(cells),
                   *[escape(str(table.extra[e].get(r, ""))) for e in table.extra])  # fmt: skip
    return rt


def _natural_width(rt: RichTable) -> int:
    """Width of a rich table with no cell wrapped: the widest cell (header included) of each
    column, plus padding and borders."""
    from rich.text import Text

    def width(c) -> int:
        text = Text.from_markup(c) if isinstance(c, str) else c
        return max((len(line) for line in text.plain.splitlines()), default=0)

    cols = [max([width(col.header), *map(width, col._cells)]) for col in rt.columns]
    return sum(cols) + 3 * len(cols) + 1


def render_tables(tables: list[Table], fmt: str, console: Console | None = None) -> str:
    """Text of the tables in `fmt`; `rich` prints on `console` and returns ""."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if fmt == "csv":
        return _csv(tables)
    if fmt == "markdown":
        return "\n".join(_markdown(t) for t in tables)
    if fmt == "latex":
        return "\n".join(_latex(t) for t in tables)
    console = console or Console()
    for t in tables:
        rt = _rich(t)
        # Never truncate a number: a table wider than the terminal (Table III has 2 columns per
        # m) is printed at its natural width instead of being squeezed into "0.09…" cells.
        w = _natural_width(rt)
        out = console if w <= console.width else Console(
            file=console.file, width=w, force_terminal=console.is_terminal,
            color_system=console.color_system, no_color=console.no_color,
        )  # rich clamps print(width=...) to the console's width, so widen the console
        out.print(rt)
    return ""


# ---- other printouts of the CLI ----------------------------------------------------------
def print_oracle(synth, console: Console) -> None:
    """The synthetic panel's oracle scores (the planted model scored on its own data), next to
    its references when it has them: the true betas with a factor forecast estimated from the
    true factors' past (`rvrae.data.synthetic.REFERENCES`), what perfect betas would score."""
    oracle = getattr(synth, "oracle", None)
    columns = {"oracle": dict(getattr(oracle, "scores", None) or {})}
    columns.update(getattr(oracle, "references", None) or {})
    caption = "R² in percent"
    if len(columns) > 1:
        caption += ("; oracle: true β and the true law of f (λ, φ); the others: true β (visible β: "
                    "0 for the factors second moments cannot reveal) with the factor forecast "
                    "estimated from the true factors' past")
    rt = RichTable(title="Oracle (true model) scores", caption=caption)
    rt.add_column("metric")
    for name in columns:
        rt.add_column(name if len(columns) > 1 else "value", justify="right")
    for k in columns["oracle"]:
        pct = base_metric(k).startswith("r2")
        cells = [c.get(k) for c in columns.values()]
        cells = [None if v is None or not math.isfinite(float(v)) else f"{float(v) * (100 if pct else 1):.3f}"
                 for v in cells]
        if all(c is None for c in cells):
            continue  # e.g. coverage: the oracle has no forecast distribution
        label = METRIC_LABELS.get(k, (k,))[0] + (" (%)" if pct else "")
        rt.add_row(label, *(c or "–" for c in cells))
    console.print(rt)


def print_factors(synth, console: Console) -> None:
    """The synthetic panel's true factors and whether second moments can reveal each one
    (`rvrae.data.synthetic.factor_visibility`): a hidden factor's betas are beyond what a
    model trained on return reconstruction can learn, so the oracle's lead there is not a gap
    a model can close."""
    rows = list(getattr(getattr(synth, "oracle", None), "visibility", None) or [])
    if not rows:
        return
    caption = (f"spike: N σ² mean(β²) / σ_ε²; visible: spike ≥ √(N/T) = {rows[0]['threshold']:.2f} "
               f"or spike × linear ≥ √(P/T) = {rows[0]['threshold_portfolios']:.2f}")
    rt = RichTable(title="True factors (months before the test years)", caption=caption)
    for col in ("factor", "premium", "φ", "spike", "linear share of β", "visible"):
        rt.add_column(col, justify="left" if col == "factor" else "right")
    for v in rows:
        rt.add_row(str(v["factor"]), f"{v['premium']:.4f}", f"{v['phi']:.2f}", f"{v['spike']:.2f}",
                   f"{v['linear']:.2f}", "yes" if v["visible"] else "no")
    console.print(rt)


def _fallback_summary(panel) -> dict:
    import numpy as np

    per_month = panel.mask.sum(axis=1)
    return {
        "months": int(panel.T),
        "first month": str(panel.dates[0]) if len(panel.dates) else "",
        "last month": str(panel.dates[-1]) if len(panel.dates) else "",
        "stocks": int(panel.N),
        "stocks per month": {"min": int(per_month.min()), "median": float(np.median(per_month)),
                             "max": int(per_month.max())},  # fmt: skip
        "characteristics": int(panel.C),
    }


def _fmt_info(v: Any, key: str = "") -> str:
    if isinstance(v, float) and "share" in key:
        return f"{v:.1%}" if math.isfinite(v) else "–"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt_info(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if len(v) <= 12 else ", ".join(map(str, v[:12])) + f", … ({len(v)})"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_panel_info(panel, console: Console) -> None:
    """What the loader sees (`rvrae.data.io.panel_summary`): months, stocks per month,
    characteristics, missing share."""
    try:
        from rvrae.data.io import panel_summary

        summary = panel_summary(panel)
    except ImportError:
        summary = _fallback_summary(panel)
    rt = RichTable(title=f"Panel {getattr(panel, 'source', '') or ''}".strip())
    rt.add_column("")
    rt.add_column("", overflow="fold")
    for k, v in summary.items():
        rt.add_row(str(k).replace("_", " "), _fmt_info(v, str(k)))
    console.print(rt)
