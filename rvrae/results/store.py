"""The results store (SPEC §6): one Parquet dataset, one file per trial.

Layout, hive-partitioned so that pyarrow / pandas / DuckDB read a study's folder as one table
(`pd.read_parquet("<out>/study=benchmark")`; not `<out>` itself, which also holds the
forecasts, the oracle's rows, best_configs.json and optuna.db: `read_results(out)` reads
every study's rows):

    <out>/study=<study>/model=<model>/<trial_id>.parquet      (one row)

`study` and `model` live in the path only (not in the file), as hive partitioning expects;
`read_results` restores them as columns. Files are written to a hidden temporary name in
the same folder, fsynced and renamed (`os.replace`), so a reader never sees half a file and a
killed study leaves at most a hidden `.tmp` that every reader skips (and a resumed study
removes, with any forecast whose row was never written: `remove_leftovers`).

A row holds: provenance (`PROVENANCE_COLUMNS`), the config as a canonical JSON string
(`config`) and flattened as `hp_<name>` columns, and the metrics: the test metrics of SPEC §4
(`TEST_METRICS`), the same on the validation months (`valid_*`) and on the omitted stocks
(`omitted_*`). Lists, tuples, arrays and dicts (e.g. `versions`, the harness's per-month
`ls_gross` / `ls_net` / `ls_dates`, the learning curve `history` of neural models: a list of
{epoch, train_loss, valid_loss}) are stored as JSON strings. `cell_id` (the cell key hashed)
joins a row to its forecasts under <out>/forecasts/ (rvrae.results.forecasts).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rvrae.errors import UserError
from rvrae.identity import IDENTITY_COLUMNS, key_of
from rvrae.metrics import TEST_METRICS

VALID_METRICS = tuple(f"valid_{m}" for m in TEST_METRICS)
OMITTED_METRICS = tuple(f"omitted_{m}" for m in TEST_METRICS)
METRIC_COLUMNS = TEST_METRICS + VALID_METRICS + OMITTED_METRICS
PROVENANCE_COLUMNS = (
    "study", "model", "seed", "m", "trial_id", "cell_id", "status", "error", "config", "epochs",
    "fit_seconds", "started_at", "finished_at", "device", "hostname", *IDENTITY_COLUMNS,
    "resolved_config", "git_commit", "versions",
)  # fmt: skip
RESULT_COLUMNS = PROVENANCE_COLUMNS + METRIC_COLUMNS
_STRING_COLUMNS = ("trial_id", "cell_id", "status", "error", "config", "started_at", "finished_at", "device",
                   "hostname", *(c for c in IDENTITY_COLUMNS if c != "epoch_cap"), "resolved_config",
                   "git_commit", "versions")  # fmt: skip
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_VERSIONED = ("rvrae", "torch", "ray", "optuna", "numpy", "pandas", "pyarrow", "scipy")


def canonical_json(value: Any) -> str:
    """Key-sorted, compact JSON: equal configs give equal strings (cell keys rely on it)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (np.datetime64, pd.Timestamp)):
        return str(v)
    if hasattr(v, "__dataclass_fields__"):
        import dataclasses

        return _jsonable(dataclasses.asdict(v))
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _check_name(kind: str, value: Any) -> str:
    s = str(value)
    if not _SAFE.match(s):
        raise UserError(f"{kind} {s!r} is not a safe file name (letters, digits, _ . + - only)")
    return s


def _cell_value(key: str, v: Any) -> Any:
    if isinstance(v, (dict, list, tuple, np.ndarray)) or hasattr(v, "__dataclass_fields__"):
        return canonical_json(v)
    if isinstance(v, np.generic):
        return v.item()
    return v


def _flatten_row(row: dict) -> dict:
    """The row as stored: JSON config + hp_* columns, every result column present."""
    missing = [k for k in ("study", "model", "trial_id") if row.get(k) in (None, "")]
    if missing:
        raise UserError(f"results row lacks {missing[0]!r}")
    out: dict[str, Any] = {}
    config = row.get("config") or {}
    if isinstance(config, str):
        config = json.loads(config) if config else {}
    config = _jsonable(config)
    out["config"] = canonical_json(config)
    # hp_* are the hyperparameters the trial ran with: the resolved config (every field, its
    # defaults included) where the row has one, so a default-config row has hp_n_factors too
    resolved = row.get("resolved_config") or {}
    if isinstance(resolved, str):
        resolved = json.loads(resolved) if resolved else {}
    for k, v in {**_jsonable(resolved), **config}.items():
        out[f"hp_{k}"] = canonical_json(v) if isinstance(v, (dict, list)) else v
    for k, v in row.items():
        if k != "config":
            out[k] = _cell_value(k, v)
    out.setdefault("status", "ok")
    out.setdefault("seed", 0)  # single-seed studies (speed) need not say
    out.setdefault("m", 0)  # m = 0: nothing omitted (benchmark)
    for k in METRIC_COLUMNS:
        v = out.get(k)
        out[k] = math.nan if v is None else float(v)
    for k in _STRING_COLUMNS:
        v = out.get(k)
        out[k] = "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
    for k in ("epochs", "fit_seconds"):
        out[k] = math.nan if out.get(k) is None else float(out[k])
    out["seed"], out["m"] = int(out["seed"]), int(out["m"])
    out["epoch_cap"] = key_of(out)[2]
    return out


def trial_path(out_dir: str | Path, study: str, model: str, trial_id: str) -> Path:
    return (
        Path(out_dir) / f"study={_check_name('study', study)}" / f"model={_check_name('model', model)}"
        / f"{_check_name('trial_id', trial_id)}.parquet"
    )


def write_row(out_dir: str | Path, row: dict) -> Path:
    """Write one trial's row atomically; returns the final path. Rewriting a trial_id
    replaces its file (a retried trial never leaves two rows)."""
    flat = _flatten_row(row)
    path = trial_path(out_dir, flat.pop("study"), flat.pop("model"), flat["trial_id"])
    table = pa.Table.from_pylist([flat])
    atomic_write(path, lambda fh: pq.write_table(table, fh))
    return path


def atomic_write(path: Path, write) -> None:
    """`write(file)` into a hidden temporary name beside `path`, fsync, rename: a reader
    never sees half a file (rows and forecasts alike)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def result_files(out_dir: str | Path, study: str | None = None) -> list[Path]:
    """Finished trial files (hidden and temporary files skipped), sorted."""
    root = Path(out_dir)
    pattern = f"study={study}/model=*/*.parquet" if study else "study=*/model=*/*.parquet"
    return sorted(p for p in root.glob(pattern) if not p.name.startswith((".", "_")))


def read_results(out_dir: str | Path, study: str | None = None) -> pd.DataFrame:
    """Every finished trial row under `out_dir` (optionally of one study) as a DataFrame,
    with `study` and `model` restored from the path. UserError if there is nothing to read."""
    root = Path(out_dir)
    if root.exists() and not root.is_dir():
        raise UserError(f"{str(root)!r} is a file, not a results folder")
    if not root.is_dir():
        raise UserError(f"results folder {str(root)!r} does not exist")
    files = result_files(root, study)
    if not files:
        present = sorted(p.name.split("=", 1)[1] for p in root.glob("study=*") if p.is_dir())
        where = f" for study {study!r}" if study else ""
        hint = f" (studies present: {', '.join(present)})" if present and study else ""
        raise UserError(f"no results in {str(root)!r}{where}{hint}")
    tables = []
    for p in files:
        try:
            t = pq.read_table(p)
        except Exception as e:  # a foreign or damaged file: name it
            raise UserError(f"cannot read results file {str(p)!r}: {e}") from None
        part = {"study": p.parent.parent.name.split("=", 1)[1], "model": p.parent.name.split("=", 1)[1]}
        for i, (k, v) in enumerate(part.items()):
            if k in t.column_names:
                t = t.drop_columns([k])
            t = t.add_column(i, k, pa.array([v] * t.num_rows, pa.string()))
        tables.append(t)
    # One conversion to pandas: rows of different trials may carry different columns and
    # types (an hp that is int in one trial, float in another): arrow promotes them.
    try:
        df = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):  # e.g. str vs int
        df = pd.concat([t.to_pandas() for t in tables], ignore_index=True)
    head = [c for c in RESULT_COLUMNS if c in df.columns]
    hps = sorted(c for c in df.columns if c.startswith("hp_"))
    df = df[head + hps + [c for c in df.columns if c not in head and c not in hps]]
    return df.sort_values(["study", "model", "m", "seed", "trial_id"], kind="stable").reset_index(drop=True)


def cell_key(row: dict | pd.Series) -> tuple:
    """(study, model, seed, m, resolved config JSON, *study identity key): a study cell that
    must exist once. The resolved config has every field of the model's config (defaults
    included); rows without one (hand-written, older) fall back to their `config`."""
    get = row.get
    return (str(get("study")), str(get("model")), int(get("seed", 0)), int(get("m", 0)), config_key(row), *key_of(row))


def config_key(row: dict | pd.Series) -> str:
    """The config part of a row's cell key: its resolved config, else its `config`, as
    canonical JSON ("{}" for neither)."""
    get = row.get
    config = next((c for c in (get("resolved_config"), get("config")) if isinstance(c, (str, dict)) and c), {})
    return canonical_json(config)


def cell_id(row: dict | pd.Series) -> str:
    """The cell key hashed (16 hex digits): the `cell_id` column of a row and of its stored
    forecast (rvrae.results.forecasts), which join on it."""
    import hashlib

    return hashlib.sha256(canonical_json(list(cell_key(row))).encode()).hexdigest()[:16]


def remove_leftovers(out_dir: str | Path, study: str) -> int:
    """What a killed driver left under `study`, removed before a resumed study runs: hidden
    temporary files (half-written rows and forecasts; every reader skips them) and forecasts
    without a row (the driver stores a trial's forecast as its final result arrives and the
    row when the trial completes; a kill between the two leaves the forecast alone, and the
    resumed study redoes that cell under a new trial id). Returns how many files."""
    from rvrae.results.forecasts import FORECAST_DIR

    root = Path(out_dir)
    pattern = f"study={study}/model=*/.*.parquet.tmp"
    stale = [*root.glob(pattern), *(root / FORECAST_DIR).glob(pattern)]
    rows = {p.relative_to(root) for p in result_files(root, study)}
    fc_root = root / FORECAST_DIR
    stale += [p for p in result_files(fc_root, study) if p.relative_to(fc_root) not in rows]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def remove_error_rows(out_dir: str | Path, study: str, identity_key: tuple) -> int:
    """`--retry-errors`: the error rows of `study` with this study identity are removed (with
    any forecast beside them), so the resumed study runs those cells again; rows of other
    identities and every ok row stay. Returns how many rows."""
    from rvrae.identity import key_of
    from rvrae.results.forecasts import FORECAST_DIR

    root = Path(out_dir)
    gone = 0
    for p in result_files(root, study):
        t = pq.read_table(p)
        if "status" not in t.column_names:
            continue
        rows = t.to_pylist()
        if rows and all(r.get("status") == "error" and key_of(r) == tuple(identity_key) for r in rows):
            p.unlink()
            (root / FORECAST_DIR / p.relative_to(root)).unlink(missing_ok=True)
            gone += len(rows)
    return gone


def existing_cells(out_dir: str | Path, study: str) -> set:
    """The cells already recorded for `study` (status ok or error: an error row is a result
    too, so a resumed study does not run it twice). Empty if there is nothing yet."""
    return set(recorded_keys(out_dir, study))


def recorded_keys(out_dir: str | Path, study: str) -> list:
    """The cell key of every row recorded for `study`, one per row: a tune study's search
    may sample one config twice, two trials that are one cell (`existing_cells` counts it once)."""
    root = Path(out_dir)
    if not root.is_dir() or not result_files(root, study):
        return []
    return [cell_key(r) for r in read_results(root, study).to_dict("records")]


def _git_commit(root: Path) -> str:
    if not (root / ".git").exists():
        return ""
    try:
        res = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return ""
    return res.stdout.strip() if res.returncode == 0 else ""


def code_version(prov: dict | None = None) -> str:
    """The code that produced a row: the package's git commit, else its installed version."""
    prov = prov or provenance()
    return prov["git_commit"][:12] or f"rvrae {prov['versions'].get('rvrae', '?')}"


def provenance() -> dict:
    """hostname, git commit of the installed package's repository ("" if none) and package
    versions (a dict; stored as JSON) for every results row."""
    import platform

    import rvrae

    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return {
        "hostname": socket.gethostname(),
        "git_commit": _git_commit(Path(rvrae.__file__).resolve().parent.parent),
        "versions": versions,
    }
