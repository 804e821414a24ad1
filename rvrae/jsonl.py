"""The `--jsonl` files of the scratch-study scripts (studies/basis_choice.py, restarts.py):
one JSON object per line, appended as each fit ends, so a stopped run keeps what it fitted.
Checked before the first fit, read with one clear error naming the line."""

from __future__ import annotations

import json
from pathlib import Path

from rvrae.errors import UserError


def check_jsonl(path: str | Path) -> None:
    """UserError unless `path` can be appended to: its folder exists and it is not a folder."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UserError(f"--jsonl {p}: is a folder")
    if not folder.is_dir():
        raise UserError(f"--jsonl {p}: folder {folder} does not exist")


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of `path` ([] when it does not exist). A last line cut short by a kill (no
    newline after it, not JSON) is dropped, as its fit never finished; any other line that
    is not a JSON object is a UserError naming it."""
    p = Path(path)
    if not p.exists():
        return []
    check_jsonl(p)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--jsonl {p}: not a readable text file ({e})") from None
    lines = text.split("\n")
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if i == len(lines):  # the unfinished last line of a killed run
                continue
            raise UserError(f"--jsonl {p}: line {i} is not JSON") from None
        if not isinstance(row, dict):
            raise UserError(f"--jsonl {p}: line {i} is not a JSON object")
        rows.append(row)
    return rows
