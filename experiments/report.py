"""Figures and a markdown report of a run or sweep (see --help)."""

import sys

from rnnjax.report import main

if __name__ == "__main__":
    sys.exit(main())
