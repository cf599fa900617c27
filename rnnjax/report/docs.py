"""`rnnjax docs`: the documentation site (MkDocs, mkdocs.yml at the checkout's root), served
locally or built strictly.

    rnnjax docs                 serve it at http://127.0.0.1:8000 and rebuild on every edit
    rnnjax docs --build         build it strictly (a warning fails) into site/ (--out DIR)

Building runs the tutorials (docs/tutorials/*.py) and makes the reference tables from the code
(docs/hooks.py). It needs a checkout (the pages are not installed with the package) and the
`docs` extra; without either it is one line and exit code 2.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "mkdocs.yml"


def make_parser(prog: str = "rnnjax docs") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].strip())
    p.add_argument("--build", action="store_true",
                   help="build the site strictly instead of serving it")
    p.add_argument("--out", type=Path, default=None,
                   help="where --build writes the site (default: site/ in the checkout)")
    p.add_argument("--addr", default="127.0.0.1:8000", help="where to serve (default: %(default)s)")
    return p


def problem() -> str | None:
    """Why the site cannot be built here, in one line, or None."""
    if not CONFIG.is_file():
        return (f"{CONFIG} not found: the docs are built from a checkout of the repository "
                "(git clone, then pip install -e '.[docs]')")
    if importlib.util.find_spec("mkdocs") is None or \
            importlib.util.find_spec("mkdocs_jupyter") is None:
        return "the docs need the docs extra: pip install -e '.[docs]'"
    return None


def command(build: bool, out: Path | None = None, addr: str = "127.0.0.1:8000") -> list[str]:
    """The mkdocs command line."""
    if build:
        cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG)]
        return cmd + (["-d", str(out.resolve())] if out is not None else [])
    return [sys.executable, "-m", "mkdocs", "serve", "-f", str(CONFIG), "-a", addr]


def main(argv: list[str] | None = None, prog: str = "rnnjax docs") -> int:
    args = make_parser(prog).parse_args(argv)
    why = problem()
    if why:
        print(f"{prog}: error: {why}", file=sys.stderr)
        return 2
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(command(args.build, args.out, args.addr), cwd=ROOT, env=env).returncode
