"""The installable package: the wheel holds the code, conf/ and the entry point, and its
`rnnjax run` works from any directory without the repository (the one place where a
subprocess is the test: an installed program, not this checkout)."""

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT

# What a wheel is built from (pyproject.toml's packages, readme and package-dir).
SOURCES = ("pyproject.toml", "README.md", "rnnjax", "conf", "hydra_plugins")


def pip(*args, cwd):
    p = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a copy of the sources (no stale build/ of the checkout), offline
    with this environment's setuptools (the dev extra has it)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns(
            "__pycache__", "*.pyc")} if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("dist")
    pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out),
        str(src), cwd=src)
    (whl,) = out.glob("rnnjax-*.whl")
    return whl


def test_wheel_holds_the_code_the_configs_and_the_entry_point(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    code = {p.relative_to(ROOT).as_posix() for p in (ROOT / "rnnjax").rglob("*.py")}
    assert code and code <= names, f"missing from the wheel: {sorted(code - names)}"
    confs = {"rnnjax/" + p.relative_to(ROOT).as_posix()
             for p in (ROOT / "conf").rglob("*.yaml")}
    assert "rnnjax/conf/config.yaml" in confs and "rnnjax/conf/experiment/d2l_rnn_scratch.yaml" \
        in confs
    assert confs <= names, f"missing from the wheel: {sorted(confs - names)}"
    plugin = {p.relative_to(ROOT).as_posix()
              for p in (ROOT / "hydra_plugins" / "rnnjax_sweeper").glob("*.py")}
    assert plugin <= names
    # nothing else of the repository: no tests, experiments or results
    assert {n.split("/")[0] for n in names} == {"rnnjax", "hydra_plugins",
                                                wheel.name.split("-py")[0] + ".dist-info"}
    (entry,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "[console_scripts]" in text and "rnnjax = rnnjax.cli:main" in text


@pytest.mark.e2e
def test_installed_command_runs_from_any_directory(wheel, tmp_path, jax_cache):
    target, cwd = tmp_path / "site", tmp_path / "anywhere"
    cwd.mkdir()
    pip("install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel),
        cwd=tmp_path)
    # Only the installed copy on the path: not this checkout, whatever PYTHONPATH said.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    env.update(PYTHONPATH=str(target), JAX_COMPILATION_CACHE_DIR=jax_cache)

    def run(*cmd):
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=300)

    p = run(sys.executable, "-m", "rnnjax", "--help")
    assert p.returncode == 0 and "report PATH" in p.stdout, p.stderr
    p = run(str(target / "bin" / "rnnjax"), "run", "seq_len=3", "hidden_size=2",
            "batch_size=1", "seeds=1")
    assert p.returncode == 0, p.stderr
    assert "log10 grad_norm per step back" in p.stdout + p.stderr
    job = cwd / "results" / "runs" / "single" / "batch_size=1,hidden_size=2,seeds=1,seq_len=3"
    summary = json.loads((job / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["config"]["seq_len"] == 3
    # it ran the installed package (in no git checkout), composed from its own conf/
    assert summary["provenance"]["git_commit"] is None
    hydra = (job / ".hydra" / "hydra.yaml").read_text()
    assert f"path: {(target / 'rnnjax' / 'conf').resolve()}\n" in hydra
    assert sorted(p.name for p in cwd.iterdir()) == ["results"]


def test_lock_pins_every_dependency_within_its_range():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock lacks {name} (run scripts/lock.py)"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])
