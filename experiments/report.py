"""Figures and a markdown report of a run or sweep (see --help)."""

import sys

from rnnjax.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("report", sys.argv[1:], "report.py"))
