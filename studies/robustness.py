"""The robustness study (SPEC §5): `python studies/robustness.py --help`. Uses the installed rvrae package."""

import sys

import rvrae.study.cli

if __name__ == "__main__":
    sys.exit(rvrae.study.cli.main("robustness", sys.argv[1:]))
