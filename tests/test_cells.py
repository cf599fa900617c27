"""The Cell interface: every cell option is declared once (rnnjax.core.cells.CELLS) and the config
schema, its validation and conf/cell/*.yaml agree with it; the core imports no app stack."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from rnnjax.app.config import CELL_OPTIONS, CellName
from rnnjax.core.cells import CELLS, unroll, vanilla
from rnnjax.core.tasks import make_random_batch


def test_config_options_and_yaml_files_are_the_cells_own():
    assert {c.value for c in CellName} == set(CELLS)
    files = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in (ROOT / "conf" /
                                                                          "cell").glob("*.yaml")}
    assert set(files) == set(CELLS)
    for name, spec in CELLS.items():
        assert files[name] == {"name": name, **spec.options}, name
        assert set(spec.options) <= set(CELL_OPTIONS), name


def test_the_core_imports_no_app_stack():
    code = ("import sys, rnnjax.core.cells, rnnjax.core.probes, rnnjax.core.train, "
            "rnnjax.core.theory, rnnjax.core.losses, rnnjax.core.tasks, rnnjax.core.init\n"
            "bad = sorted(m for m in ('hydra', 'omegaconf', 'pandas', 'matplotlib') "
            "if m in sys.modules)\n"
            "assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("name", sorted(CELLS))
def test_every_cell_runs_its_contract(key, name):
    """init, initial_state, step, readout and hidden fit together, for tokens and real inputs:
    shapes, dtypes, a deterministic init, and `unroll` equal to stepping by hand."""
    spec = CELLS[name]
    cell = spec.build(activation="tanh", init="normal", init_value=None, **spec.options)
    D, H, Q, B, T = 5, 6, 5, 3, 7
    params = cell.init(key, D, H, Q, jnp.float64)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params,
                                     cell.init(key, D, H, Q, jnp.float64)))
    for x in (make_random_batch(D, B, T)(key)[0],
              jax.random.uniform(key, (B, T, D), jnp.float64)):
        states, outputs = unroll(cell, params, x)
        assert outputs.shape == (T, B, Q)
        s = cell.initial_state(params, B)
        for t in range(T):
            s = cell.step(params, s, x[:, t])
            # atol: XLA rounds a step inside the scan and a step on its own differently (by
            # a few ulps, e.g. the uRNN's FFTs and complex products), which an output near 0
            # turns into a large relative difference
            np.testing.assert_allclose(cell.readout(params, s), outputs[t], rtol=1e-12,
                                       atol=1e-13)
        h = cell.hidden(s)
        assert h.shape[0] == B and h.ndim == 2
        for leaf in jax.tree.leaves(params):
            assert leaf.dtype == jnp.float64


def test_vanilla_is_the_default_cell():
    assert CELLS["vanilla"].build is vanilla
    assert OmegaConf.load(ROOT / "conf" / "config.yaml").defaults[1] == {"cell": "vanilla"}
