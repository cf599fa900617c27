"""Cell plugins: an installed package that declares an entry point of the group `rnnjax.cells`
adds `cell=NAME` with its options, label and theory (examples/cell_plugin, installed offline
into a temporary folder and put on PYTHONPATH of real `rnnjax` processes); a plugin that fails
to load costs one warning line and nothing else."""

import json
import math
import os
import shutil
import subprocess
import sys
import warnings

import pytest
from conftest import ROOT

RNNJAX = [sys.executable, "-m", "rnnjax"]
BROKEN = "broken_cell"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder holding the example plugin (pip install --target, no network) and a broken
    one: a distribution whose entry point's module raises on import."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "cell_plugin"
    shutil.copytree(ROOT / "examples" / "cell_plugin", source)  # pip builds in its source
    target = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    info = target / "broken_cell-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-cell\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[rnnjax.cells]\n{BROKEN} = {BROKEN}:SPEC\n")
    (target / f"{BROKEN}.py").write_text("raise ImportError('needs a package not installed')\n")
    return target


def rnnjax(site, cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(site), "RNNJAX_JOB": ""}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([*RNNJAX, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def warnings_of(p) -> list[str]:
    return [ln for ln in p.stderr.splitlines() if "warning: cell plugin" in ln]


@pytest.mark.slow
@pytest.mark.e2e
def test_a_plugin_cell_is_listed_swept_and_reported(site, tmp_path):
    help_ = rnnjax(site, tmp_path, "run", "--help")
    assert help_.returncode == 0, help_.stderr
    assert "scaled_tanh" in next(ln for ln in help_.stdout.splitlines()
                                 if ln.startswith("cell: "))
    # the broken plugin: one warning line naming it, and everything else works
    (warning,) = warnings_of(help_)
    assert warning.startswith(f"rnnjax: warning: cell plugin {BROKEN} ") and \
        "ImportError: needs a package not installed" in warning
    assert BROKEN not in help_.stdout
    assert "  scaled_tanh  example plugin: H_t = phi(scale" in help_.stdout  # its help line

    gain, scales = 0.8, (0.5, 1.0)
    sweep = tmp_path / "sweep"
    readme = (f"rnnjax run -m cell=scaled_tanh cell.scale={','.join(map(str, scales))} "
              f"activation=linear init=orthogonal init.gain={gain}")
    assert readme in (ROOT / "docs" / "custom-cells.md").read_text()  # the docs' command, tiny
    p = rnnjax(site, tmp_path, *readme.split()[1:], f"hydra.sweep.dir={sweep}", "seq_len=6",
               "hidden_size=4", "batch_size=2", "seeds=1")
    assert p.returncode == 0, p.stderr[-3000:]
    summaries = [json.loads(s.read_text()) for s in sweep.rglob("summary.json")]
    assert sorted(s["config"]["cell"]["scale"] for s in summaries) == list(scales)
    for s in summaries:
        # linear, W_hh = gain * orthogonal: each step back scales the gradient by scale * gain
        want = math.log10(s["config"]["cell"]["scale"] * gain)
        h = s["headline"]
        assert h["log10_slope_per_step_back"] == pytest.approx(want, abs=1e-4)
        assert h["theory"]["predicted_log10_slope_per_step_back"] == pytest.approx(want,
                                                                                   abs=1e-5)

    # the report reads the files only (no plugin needed): in this process; no figure's layout
    # collapses (the plugin's long prediction text once outgrew the figure in the legend)
    from rnnjax.report import build

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert build.main([str(sweep), "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "scaled_tanh" in text
    assert list((tmp_path / "report").glob("*.png"))
