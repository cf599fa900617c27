"""Training speed against PyTorch on d2l's RNN language model (see --help)."""

import sys

from rnnjax.bench_train import main

if __name__ == "__main__":
    sys.exit(main())
