"""Writes requirements.lock: the exact versions, in this environment, of every package that
rnnjax and its `dev` extra need (their dependencies' dependencies included, markers evaluated),
for `pip install -c requirements.lock ...`.

    .venv/bin/python scripts/lock.py            # from the repository root, in the environment
                                                # the published numbers were measured with
"""

import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("dev",)
ALSO = ("setuptools",)  # builds the wheel offline (tests/test_install.py); pip freeze omits it


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """{canonical name: installed version} of everything `root[extras]` requires."""
    found, todo = {}, [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted or ("",)):
                continue
            key = canonical(req.name)
            if key not in found:
                found[key] = metadata.version(req.name)
                todo.append((req.name, tuple(req.extras)))
    return found


def main() -> None:
    pins = closure("rnnjax", EXTRAS)
    pins.pop("rnnjax", None)
    for name in ALSO:
        pins[name] = metadata.version(name)
    header = [
        "# The versions rnnjax's published numbers (README, results/) were measured with, for",
        "# rnnjax and its dev extra: pip install -c requirements.lock -e '.[dev]' (or '.').",
        f"# Written by scripts/lock.py with Python {platform.python_version()} on "
        f"{platform.system()} {platform.machine()}.",
    ]
    lines = [f"{name}=={version}" for name, version in sorted(pins.items())]
    (ROOT / "requirements.lock").write_text("\n".join(header + lines) + "\n")
    print(f"requirements.lock: {len(lines)} packages", file=sys.stderr)


if __name__ == "__main__":
    main()
