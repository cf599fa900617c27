"""Regenerate every published figure and results/REPORT.md (see --help)."""

import sys

from rnnjax.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
