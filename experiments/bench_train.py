"""Training speed against PyTorch on d2l's RNN language model (see --help)."""

import sys

from rnnjax.cli import run_command

if __name__ == "__main__":
    sys.exit(run_command("bench-train", sys.argv[1:], "bench_train.py"))
