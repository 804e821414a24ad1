"""The tune study (SPEC §5): `python studies/tune.py --help`. Uses the installed rvrae package."""

import sys

import rvrae.study.cli

if __name__ == "__main__":
    sys.exit(rvrae.study.cli.main("tune", sys.argv[1:]))
