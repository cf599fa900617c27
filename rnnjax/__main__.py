"""`python -m rnnjax COMMAND ...`: the `rnnjax` command (see rnnjax.cli)."""

import sys

from rnnjax.cli import main

if __name__ == "__main__":
    sys.exit(main())
