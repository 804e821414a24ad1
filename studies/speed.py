"""The speed study (issue 7): ratios against in-process reference runs, one Parquet row per
case × repeat under --out (study=speed), then the table of medians with their targets.

    python studies/speed.py [--quick] [--cases abcdefgh] [--repeats N] [--out results] [--no-write]
                            [--device cpu|cuda] [--epochs N] [--models rvrae,ca,...]

See rvrae/study/speed.py for the cases. `rvrae table results --study speed` re-renders the rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rvrae.errors import UserError
from rvrae.study.speed import CASES, DEFAULT_CASES, run_speed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="reduced sizes and one repeat (minutes)")
    p.add_argument("--cases", default=DEFAULT_CASES,
                   help=f"which cases, letters of {CASES!r} (default {DEFAULT_CASES!r}; s: fits sharing a GPU)")
    p.add_argument("--repeats", type=int, default=None, help="repeats per case (default 3; quick 1)")
    p.add_argument("--out", type=Path, default=Path("results"), help="results root (rows under study=speed)")
    p.add_argument("--device", default=None, help="where cases b, e and s fit: cpu or cuda (default cpu)")
    p.add_argument("--epochs", type=int, default=None, help="cases b and s: epochs per fit (default 1, s at least 3; "
                   "with more, seconds is the steady state, epochs 2..n)")
    p.add_argument("--models", default=None,
                   help="cases b and s: comma-separated models (default: all for b, rvrae for s)")
    p.add_argument("--no-write", action="store_true", help="print only, write no rows")
    a = p.parse_args(argv)
    try:
        run_speed(a.cases, quick=a.quick, out=None if a.no_write else a.out, repeats=a.repeats,
                  device=a.device, epochs=a.epochs,
                  models=None if a.models is None else tuple(m.strip() for m in a.models.split(",")))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
