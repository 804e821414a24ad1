"""Random planted designs over the ranges of studies/FINDINGS.md ("Two fresh random panels"):
K 2–5; factor 1 with volatility 3–5 % and premium 0.4–0.7 % a month; each other factor with
volatility 0.4–2.5 % and, with probability 0.6, a monthly Sharpe ratio of 0.1–0.6, else no
premium; φ 0–0.5; shapes, characteristics (15–46), stocks (200–500), signal characteristics
(3–7), market-beta spread (0.3–0.7) and idiosyncratic volatility (7–12 %) drawn too.

    python studies/panels/draw.py                      # I–P: default_rng(20261128), as committed
    python studies/panels/draw.py --seed 20261129 --names QRST   # Q–T, drawn after `--squares`
    python studies/panels/draw.py --seed 7 --names XY --out /tmp

(E–H came from an earlier script over the same ranges, default_rng(20261127), not kept.)"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from rvrae.data.synthetic import SHAPES


def draw(rng: np.random.Generator) -> dict:
    k = int(rng.integers(2, 6))
    vols = [rng.uniform(0.03, 0.05)] + list(rng.uniform(0.004, 0.025, k - 1))
    premia = [rng.uniform(0.004, 0.007)]
    for v in vols[1:]:
        premia.append(v * rng.uniform(0.1, 0.6) if rng.random() < 0.6 else 0.0)
    return dict(
        seed=int(rng.integers(0, 1000)), n_factors=k, n_chars=int(rng.integers(15, 47)),
        n_stocks=int(rng.integers(200, 501)), n_signal=int(rng.integers(3, 8)),
        shapes=[str(s) for s in rng.choice(SHAPES, k)], premia=[round(float(p), 4) for p in premia],
        vols=[round(float(v), 3) for v in vols], phis=[round(float(p), 2) for p in rng.uniform(0, 0.5, k)],
        market_beta_spread=round(float(rng.uniform(0.3, 0.7)), 2), idio_vol=round(float(rng.uniform(0.07, 0.12)), 3),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=20261128)
    ap.add_argument("--names", default="IJKLMNOP", help="one letter per design, drawn in this order")
    ap.add_argument("--out", default=str(Path(__file__).parent))
    args = ap.parse_args(argv)
    # checked before anything is written: a repeated name would overwrite its own design
    twice = sorted({c for c in args.names if args.names.count(c) > 1})
    if twice or not args.names:
        print(f"error: --names {args.names!r}: one distinct letter per design", file=sys.stderr)
        return 2
    if not Path(args.out).is_dir():
        print(f"error: --out {args.out}: no such folder", file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    for name in args.names:
        path = Path(args.out) / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(draw(rng), indent=2) + "\n")
        os.replace(tmp, path)  # a design file is whole or absent
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
