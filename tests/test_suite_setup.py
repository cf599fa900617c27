"""The test command's own setup (pyproject.toml, tests/conftest.py): the default run leaves out
the tests marked slow, and xdist hands out the test files in conftest's order."""

import shlex
import tomllib

from conftest import FIRST, ROOT


def addopts() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return shlex.split(config["tool"]["pytest"]["ini_options"]["addopts"])


def test_the_default_run_leaves_out_the_slow_tests():
    args = addopts()
    assert args[args.index("-m") + 1] == "not slow"


def test_xdist_keeps_the_order_conftest_gives_the_files(pytestconfig):
    # xdist's default (--loadscope-reorder) started the files with the most tests first:
    # FIRST was ignored, and the docs build (8 tests, the longest file) ran near the end.
    assert "--no-loadscope-reorder" in addopts()
    assert pytestconfig.getoption("loadscopereorder", default=False) is False


def test_every_file_conftest_starts_first_exists():
    # a renamed file would silently drop out of the order
    assert [f for f in FIRST if not (ROOT / "tests" / f).is_file()] == []
    assert len(set(FIRST)) == len(FIRST)
