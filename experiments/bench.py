"""Benchmark of the probe against PyTorch eager and a JAX loop (see --help)."""

import sys

from rnnjax.bench import main

if __name__ == "__main__":
    sys.exit(main())
