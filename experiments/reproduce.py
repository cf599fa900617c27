"""Regenerate every published figure and results/REPORT.md (see --help)."""

import sys

from rnnjax.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("reproduce", sys.argv[1:], "reproduce.py"))
