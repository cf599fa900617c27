"""Probe per-timestep gradient norms: `python experiments/run.py [overrides]` (see --help)."""

import sys

from rnnjax.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("run", sys.argv[1:], "experiments/run.py"))
