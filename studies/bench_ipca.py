"""IPCA speed study: our vectorised ALS vs the reference package `ipca`, one JSON line.

    python studies/bench_ipca.py [--stocks 2000] [--months 180] [--chars 46] [--k 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys

from rvrae.bench_ipca import ipca_benchmark


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stocks", type=int, default=2000)
    p.add_argument("--months", type=int, default=180)
    p.add_argument("--chars", type=int, default=46)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    # a rank needs two stocks; K factors need K characteristics and more months than K
    bad = next((f"--{k} must be at least {lo}, got {v}" for k, v, lo in
                (("stocks", a.stocks, 2), ("k", a.k, 1), ("chars", a.chars, a.k), ("months", a.months, a.k + 1),
                 ("seed", a.seed, 0)) if v < lo), None)  # fmt: skip
    if bad:
        print(f"error: {bad}", file=sys.stderr)
        return 2
    print(json.dumps(ipca_benchmark(a.stocks, a.months, a.chars, a.k, a.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
