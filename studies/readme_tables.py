"""The README's tables of the built-in panel and of the unseen panels, printed from the result
folders its rerun commands write, or checked against a document (rvrae/results/readme.py).

    python studies/readme_tables.py DIR                          # the built-in tables (markdown)
    python studies/readme_tables.py DIR --check README.md        # exit 1 if a row differs
    python studies/readme_tables.py DIR --panels A,B,C,D [--check README.md]

DIR holds seed0, seed0_seq, seed1, seed1_seq, seed2, seed2_seq for the built-in tables (README,
"Where the models stand": the commands that write them), and A[_seq], B[_seq], … for
--panels, whose share tables are checked cell by cell for the models DIR has. With --panels,
the built-in tables are included only if DIR has seed0. --check may be given more than once
(README.md, studies/FINDINGS.md: the latter's variant rows are left alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvrae.errors import UserError
from rvrae.results.readme import check, check_cells, readme_tables, unseen_tables


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="folder with seed0[_seq], seed1[_seq], seed2[_seq] (and the --panels)")
    p.add_argument("--panels", default="", help="unseen panels' folders in DIR, comma-separated (e.g. A,B,C,D)")
    p.add_argument("--check", type=Path, action="append", default=[], help="a document to check the rows of")
    a = p.parse_args(argv)
    panels = [x for x in a.panels.split(",") if x]
    try:
        builtin = readme_tables(a.root) if (a.root / "seed0").is_dir() or not panels else ()
        unseen = unseen_tables(a.root, panels) if panels else []
        for doc in a.check:
            if not doc.is_file():
                raise UserError(f"{doc}: no such file")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.check:
        print("\n\n".join("\n".join(t) for t in [*builtin, *unseen]))
        return 0
    bad = 0
    for doc in a.check:
        text = doc.read_text()
        problems = (check(text, builtin) if builtin else []) + (check_cells(text, unseen) if unseen else [])
        print(f"{doc}: " + (f"{len(problems)} row(s) or cell(s) differ from the results in {a.root}" if problems
                            else f"every row and cell equals the results in {a.root}"))
        for line in problems:
            print("  " + line.replace("\n", "\n  "))
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
