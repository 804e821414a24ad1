"""What produced a results row: the study identity (SPEC §6). Torch-free and Ray-free, so the
runner, the trainable, the results store and the tables all import it.

The runner builds ONE `StudyIdentity` per study; every trial receives it (trial config key
`identity`) and every row stores its columns (`IDENTITY_COLUMNS`). Two rows belong to the
same cell only if their identity keys match (`key_of`), so `--resume` with another `--data`,
`--split`, `--epochs` or objective runs those cells, and the tables never average rows of
different identities.

What is in the key and what is only recorded:
* key: the data's content hash (`data_fingerprint`), the split, the epoch cap, the objective
  and its mode — change one and the numbers change;
* recorded and printed under every table, not in the key: where the data came from
  (`data_source`: the same bytes under another path are the same data), where the configs
  came from (`config_source`) and the code version (`code_version`; a table whose rows come
  from several versions says so in its footer rather than splitting on every commit).
The resolved model config (every field, defaults included) is per model and is part of the
cell key beside this identity (`rvrae.results.store.cell_key`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

KEY_COLUMNS = ("data_fingerprint", "split", "epoch_cap", "objective", "mode")
IDENTITY_COLUMNS = KEY_COLUMNS + ("data_source", "config_source", "code_version")
NO_CAP = 0  # `epoch_cap` when the study set none: --epochs must be >= 1, so 0 is unambiguous


@dataclass(frozen=True)
class StudyIdentity:
    data_fingerprint: str  # Panel.fingerprint(): a hash of the panel's content
    data_source: str  # the file path or "synthetic(...)" it came from
    split: tuple[int, int, int]  # train / valid / test years
    epoch_cap: int | None  # --epochs: the cap on neural models' epochs (None: each config's own)
    objective: str = ""  # the tune objective (a validation metric); "" for grids (fixed configs)
    mode: str = ""  # "max" | "min" with an objective
    config_source: str = "defaults"  # "defaults", "--configs FILE", "optuna search"
    code_version: str = ""  # git commit of the package, else its version

    def columns(self) -> dict[str, Any]:
        """The row's identity columns (plain strings and ints: Parquet- and groupby-friendly)."""
        d = asdict(self)
        d["split"] = "/".join(str(int(x)) for x in self.split)
        d["epoch_cap"] = NO_CAP if self.epoch_cap is None else int(self.epoch_cap)
        return d

    def key(self) -> tuple:
        return key_of(self.columns())


def key_of(row) -> tuple:
    """The identity part of a cell key, from a row (dict or pandas Series). Rows written
    before the identity existed have none: "" (they never match a new study's identity)."""
    get = row.get
    out = []
    for c in KEY_COLUMNS:
        v = get(c)
        if c == "epoch_cap":
            out.append(NO_CAP if v is None or v == "" or v != v else int(v))
        else:
            out.append("" if v is None or v != v else str(v))
    return tuple(out)


def describe(row) -> str:
    """One line saying what produced a group of rows (printed under every table)."""
    get = row.get
    source = str(get("data_source") or "") or "?"
    fp = str(get("data_fingerprint") or "")
    cap = key_of(row)[2]
    parts = [f"data {source}" + (f" (fingerprint {fp[:8]})" if fp else "")]
    parts.append(f"split {get('split') or '?'} years (train/valid/test)")
    parts.append("epochs: each config's own" if cap == NO_CAP else f"epochs capped at {cap}")
    parts.append(f"configs: {get('config_source') or '?'}")
    if get("objective"):
        parts.append(f"objective {get('objective')} ({get('mode') or '?'})")
    return "; ".join(parts)
