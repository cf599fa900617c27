"""Benchmark of the probe against PyTorch eager and a JAX loop (see --help)."""

import sys

from rnnjax.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("bench", sys.argv[1:], "bench.py"))
