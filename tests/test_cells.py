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
from rnnjax.core.cells import ACTIVATIONS, CELLS, registry, unroll, vanilla
from rnnjax.core.cells.vanilla import activation
from rnnjax.core.tasks import make_random_batch

# the cells of this package whose specs these tests hold to their own numbers (plugins and
# adapters test theirs)
BUILT_IN = ("vanilla", "gru", "lstm", "urnn", "lru", "mingru", "minlstm", "s6")


def test_config_options_and_yaml_files_are_the_cells_own():
    assert {c.value for c in CellName} == set(CELLS)
    files = {p.stem: OmegaConf.to_container(OmegaConf.load(p)) for p in (ROOT / "conf" /
                                                                          "cell").glob("*.yaml")}
    assert set(files) == set(CELLS)
    for name, spec in CELLS.items():
        assert files[name] == {"name": name, **registry.defaults(name)}, name
        assert set(spec.options) <= set(CELL_OPTIONS), name


@pytest.mark.e2e
def test_the_core_imports_no_app_stack():
    code = ("import sys, rnnjax.core.cells, rnnjax.core.probes, rnnjax.core.train, "
            "rnnjax.core.theory, rnnjax.core.losses, rnnjax.core.tasks, rnnjax.core.init\n"
            "bad = sorted(m for m in ('hydra', 'omegaconf', 'pandas', 'matplotlib') "
            "if m in sys.modules)\n"
            "assert not bad, bad")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr


# cell=custom builds the user's factory (cell.target): its own tests run the contract on one
@pytest.mark.parametrize("name", sorted(set(CELLS) - {"custom"}))
@pytest.mark.e2e
def test_every_cell_runs_its_contract(key, name):
    """init, initial_state, step, readout and hidden fit together, for tokens and real inputs:
    shapes, dtypes, a deterministic init, and `unroll` equal to stepping by hand."""
    _check_contract(key, registry.build(name, {}, activation="tanh", init="normal",
                                        init_value=None))


@pytest.mark.e2e
def test_a_pytree_state_and_a_three_axis_hidden_meet_the_contract(key):
    from helpers import pair_cell as _pair_cell

    _check_contract(key, _pair_cell())


def _check_contract(key, cell):
    D, H, Q, B, T = 5, 6, 5, 3, 7
    params = cell.init(key, D, H, Q, jnp.float64)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)),
                                     params, cell.init(key, D, H, Q, jnp.float64)))
    # the step and the read-out by hand, each compiled once (eagerly, every op of every step
    # is dispatched on its own)
    step, readout = jax.jit(cell.step), jax.jit(cell.readout)
    for x in (make_random_batch(D, B, T)(key)[0],
              jax.random.uniform(key, (B, T, D), jnp.float64)):
        states, outputs = unroll(cell, params, x)
        assert outputs.shape == (T, B, Q)
        s = cell.initial_state(params, B)
        for t in range(T):
            s = step(params, s, x[:, t])
            # atol: XLA rounds a step inside the scan and a step on its own differently (by
            # a few ulps, e.g. the uRNN's FFTs and complex products), which an output near 0
            # turns into a large relative difference
            np.testing.assert_allclose(readout(params, s), outputs[t], rtol=1e-12, atol=1e-13)
        h = cell.hidden(s)
        assert h.shape[0] == B  # (B, ...): any shape after the batch axis
        for leaf in jax.tree.leaves(params):
            assert leaf.dtype == jnp.float64


def test_vanilla_is_the_default_cell():
    assert CELLS["vanilla"].build is vanilla
    assert OmegaConf.load(ROOT / "conf" / "config.yaml").defaults[1] == {"cell": "vanilla"}


def test_each_option_is_a_record_with_its_type_help_and_default():
    for name in BUILT_IN:
        spec = CELLS[name]
        assert spec.help, name
        for key, value in spec.options.items():
            assert isinstance(value, registry.Option), (name, key)
            assert value.help and isinstance(value.default, value.type), (name, key)


def test_a_builder_takes_only_what_the_cell_uses():
    """A cell whose activation (or init) is not free does not take it; build passes only what a
    builder declares, so a free activation reaches the vanilla RNN and nothing else."""
    import inspect

    for name in BUILT_IN:
        spec = CELLS[name]
        params = inspect.signature(spec.build).parameters
        assert ("activation" in params) == (spec.activations is None), name
        assert ("init" in params) == (spec.inits is None), name
    relu = registry.build("vanilla", {}, activation="relu", init="normal", init_value=None)
    h = relu.step(relu.init(jax.random.key(0), 3, 4, 3), -jnp.ones((2, 4)), jnp.array([0, 1]))
    assert float(jnp.min(h)) >= 0  # relu, not the default tanh
    assert registry.build("urnn", {}, activation="relu", init="gaussian", init_value=2.0).name \
        == "urnn"


@pytest.mark.parametrize(("name", "options", "error"), [
    ("lstm", {"forget_bias": float("inf")}, "cell.forget_bias=inf is invalid: must be a finite "
                                            "number"),
    ("lru", {"r_min": 0.0}, "cell.r_min=0.0 is invalid: must be in (0, 1]"),
    ("lru", {"r_max": 1.5}, "cell.r_max=1.5 is invalid: must be in (0, 1]"),
    ("lru", {"r_min": 0.99, "r_max": 0.9}, "cell.r_min=0.99 is invalid: must be <= cell.r_max=0.9"),
    ("lru", {"max_phase": -1.0}, "cell.max_phase=-1.0 is invalid: must be a finite number >= 0"),
])
def test_option_checks_give_one_line(name, options, error):
    message = registry.check(name, options)
    assert message.startswith(error) and "\n" not in message
    assert registry.check(name, {}) is None


@pytest.mark.parametrize(("name", "options", "text"), [
    ("vanilla", {}, ""),
    ("gru", {}, ""),
    ("urnn", {}, ""),
    ("lstm", {}, ""),
    ("lstm", {"forget_bias": 1.0}, "forget_bias=1"),
    ("lstm", {"peephole": True}, "peephole"),
    ("lstm", {"forget_bias": 1.0, "peephole": True}, "forget_bias=1, peephole"),
    ("lru", {}, "|λ| in [0.9, 0.999]"),
    ("lru", {"r_min": 0.99, "r_max": 0.99}, "r=0.99"),
    ("lru", {"normalize": False}, "|λ| in [0.9, 0.999], unnormalized"),
])
def test_labels(name, options, text):
    assert registry.label(name, options) == text


def _saved_floats(cell, params, x_t, B):
    """Floats JAX's autodiff saves to differentiate one step of B sequences (complex: 2)."""
    from jax._src.ad_checkpoint import saved_residuals

    s = jax.eval_shape(lambda p: cell.initial_state(p, B), params)  # traced: shapes suffice
    saved = saved_residuals(lambda p, s: cell.step(p, s, x_t), params, s)
    return sum((2 if jnp.issubdtype(a.dtype, jnp.complexfloating) else 1) * a.size
               for a, _ in saved if jnp.issubdtype(a.dtype, jnp.inexact))


@pytest.mark.parametrize(("name", "options"), [(n, {}) for n in BUILT_IN]
                         + [("lstm", {"peephole": True})])
@pytest.mark.parametrize("H", [8, 16])
@pytest.mark.e2e
def test_cost_is_what_autodiff_saves_per_sequence(name, options, H):
    """registry.cost: the floats per step and per sequence a step's backward keeps (the saved
    activations of 2 sequences less those of 1: the parameters drop out)."""
    cell = registry.build(name, options, activation="tanh", init="normal", init_value=None)
    # the shapes of the params (no init is run: saved_residuals traces the step)
    params = jax.eval_shape(lambda k: cell.init(k, 5, H, 3), jax.random.key(0))
    per_sequence = (_saved_floats(cell, params, jnp.zeros((2,), jnp.int32), 2)
                    - _saved_floats(cell, params, jnp.zeros((1,), jnp.int32), 1))
    assert registry.cost(name, options, H) == per_sequence


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_an_activation_is_one_consistent_record(name):
    """phi in JAX and in numpy agree (float64); phi' from the output H = phi(A) and the numpy phi'
    are jax.grad of phi; gamma is sup |phi'| (Pascanu et al.'s constant)."""
    act = ACTIVATIONS[name]
    assert act.name == name and activation(name) is act.fn
    with jax.enable_x64(True):
        a = jnp.linspace(-6.0, 6.0, 1001, dtype=jnp.float64) + 1e-3  # no point at relu's kink
        grad = jax.vmap(jax.grad(act.fn))(a)
        np.testing.assert_allclose(act.phi(np.asarray(a)), act.fn(a), rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(act.derivative_from_output(act.fn(a)), grad, rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(act.dphi(np.asarray(a)), grad, rtol=1e-9, atol=1e-12)
        assert act.gamma == pytest.approx(float(jnp.max(jnp.abs(grad))), rel=1e-5)


def test_an_unknown_activation_fails_with_one_line():
    with pytest.raises(ValueError, match=r"^activation='swish' is unknown; allowed: \["):
        activation("swish")
