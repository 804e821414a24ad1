"""The README's tables of the built-in panel, printed from the result folders its rerun
commands write, or checked against a document (rvrae/results/readme.py).

    python studies/readme_tables.py DIR                      # print both tables (markdown)
    python studies/readme_tables.py DIR --check README.md    # exit 1 if a row differs

DIR holds seed0, seed0_seq, seed1, seed1_seq, seed2, seed2_seq (README, "Where the models
stand": the commands that write them). --check may be given more than once (README.md,
studies/FINDINGS.md: the latter's variant rows are left alone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvrae.errors import UserError
from rvrae.results.readme import check, readme_tables


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path, help="folder with seed0[_seq], seed1[_seq], seed2[_seq]")
    p.add_argument("--check", type=Path, action="append", default=[], help="a document to check the rows of")
    a = p.parse_args(argv)
    try:
        tables = readme_tables(a.root)
        for doc in a.check:
            if not doc.is_file():
                raise UserError(f"{doc}: no such file")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not a.check:
        print("\n\n".join("\n".join(t) for t in tables))
        return 0
    bad = 0
    for doc in a.check:
        problems = check(doc.read_text(), tables)
        print(f"{doc}: " + (f"{len(problems)} row(s) differ from the results in {a.root}" if problems
                            else f"every row equals the results in {a.root}"))
        for line in problems:
            print("  " + line.replace("\n", "\n  "))
        bad += bool(problems)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
