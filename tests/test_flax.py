"""cell=flax: any Flax recurrent cell (NNX and Linen) as a rnnjax Cell, its probe held to plain
autodiff through the whole unrolled sequence (tests/adapter_reference.py) in float64."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from adapter_reference import assert_probe_matches_autodiff, probe_norms, reference

from rnnjax.core.cells import registry
from rnnjax.core.probes import make_probe

flax = pytest.importorskip("flax", reason="cell=flax needs flax (pip install 'rnnjax[flax]')")
from flax import linen as nn  # noqa: E402
from flax import nnx  # noqa: E402

from rnnjax.core.cells import flax_cells  # noqa: E402

B, T, D, H, Q = 2, 5, 4, 3, 4
LSTMS = ("LSTMCell", "OptimizedLSTMCell")
CASES = [("nnx", m) for m in (*flax_cells.BUILTINS["nnx"], "adapter_reference:NNXTanhCell")]
CASES += [("linen", m) for m in flax_cells.BUILTINS["linen"]]


def library_call(api, module):
    """(call(tree, carry, x_t) -> carry, the parameter pytree's structure) of the Flax cell
    itself, made here apart from the adapter."""
    cls = flax_cells.flax_class(module, api)
    f64 = {"dtype": jnp.float64, "param_dtype": jnp.float64}
    if api == "nnx":
        graphdef, state, rest = nnx.split(
            cls(in_features=D, hidden_features=H, rngs=nnx.Rngs(0), **f64), nnx.Param, ...)
        return (lambda tree, carry, x: nnx.merge(graphdef, tree, rest)(carry, x)[0],
                jax.tree.structure(state))
    mod = cls(features=H, **f64)
    carry = mod.initialize_carry(jax.random.key(0), (1, D))
    tree = mod.init(jax.random.key(0), carry, jnp.zeros((1, D)))["params"]
    return (lambda tree, carry, x: mod.apply({"params": tree}, carry, x)[0],
            jax.tree.structure(tree))


# Every module with the loss at the last step; the loss over every step (which the adapter
# never sees: it is the probe's) for one gated cell of each API.
PROBED = [(api, module, "last") for api, module in CASES]
PROBED += [("nnx", "GRUCell", "all"), ("linen", "LSTMCell", "all")]
# The default run (CI) checks one cell of each kind: each API's simplest cell, a user's own
# module, Linen's MGU and both losses over every step; the other library cells wrap the same
# adapter and run with `-m slow` (docs/development.md).
DEFAULT = {("nnx", "SimpleCell", "last"), ("nnx", "adapter_reference:NNXTanhCell", "last"),
           ("linen", "MGUCell", "last"), ("nnx", "GRUCell", "all"), ("linen", "LSTMCell", "all")}
assert DEFAULT <= set(PROBED), DEFAULT - set(PROBED)  # a misspelt case would run nowhere


@pytest.mark.parametrize("api,module,loss_at", [
    c if c in DEFAULT else pytest.param(*c, marks=pytest.mark.slow) for c in PROBED])
@pytest.mark.e2e
def test_probe_matches_autodiff_through_the_sequence(api, module, loss_at):
    cell = registry.build("flax", {"module": module, "api": api})
    call, structure = library_call(api, module)
    # Flax's LSTM carry is (c, h): H_t is its second element
    assert_probe_matches_autodiff(cell, call, structure, loss_at,
                                  1 if module in LSTMS else None, (B, T, D, H, Q))


@pytest.mark.e2e
def test_real_inputs_and_float32_stay_float32():
    cell = registry.build("flax", {"module": "GRUCell", "api": "linen"})
    params = cell.init(jax.random.key(0), D, H, Q, jnp.float32)
    assert all(p.dtype == jnp.float32 for p in params)
    x = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (B, T), 0, Q)
    res = jax.jit(make_probe(cell, "last"))(params, x, y)
    assert res.log10_grad_norm.dtype == jnp.float32
    assert np.all(np.isfinite(res.log10_grad_norm))
    assert np.all(np.isfinite(res.log10_param_grad_norm))


def test_recurrent_is_the_cells_parameters_and_the_readout_is_outside():
    cell = registry.build("flax", {"module": "LSTMCell", "api": "nnx"})
    params = cell.init(jax.random.key(0), D, H, Q)
    assert set(cell.recurrent) == set(params._fields) - {"W_hq", "b_q"}
    assert all(f.startswith("cell_") for f in cell.recurrent)
    assert params.W_hq.shape == (H, Q) and params.b_q.shape == (Q,)
    # the LSTM's hidden output is h of the carry (c, h)
    c, h = jnp.ones((B, H)), jnp.zeros((B, H))
    assert cell.hidden((c, h)) is h


@pytest.mark.e2e
def test_from_module_probes_a_cell_made_outside():
    # an NNX cell and a Linen cell with its params, each with a read-out of our own
    W = jax.random.normal(jax.random.key(3), (H, Q), jnp.float64)
    b = jnp.zeros((Q,), jnp.float64)
    x = jax.random.randint(jax.random.key(1), (B, T), 0, D)
    y = jax.random.randint(jax.random.key(2), (B, T), 0, Q)
    mod = nnx.GRUCell(in_features=D, hidden_features=H, rngs=nnx.Rngs(5),
                      dtype=jnp.float64, param_dtype=jnp.float64)
    cell, params = flax_cells.from_module(mod, readout=(W, b))
    _, state = nnx.split(mod)
    want_g, want_pg, _ = reference(lambda tr, c, xt: nnx.merge(nnx.graphdef(mod), tr)(c, xt)[0],
                                   jnp.zeros((B, H)), state, (W, b),
                                   jax.nn.one_hot(x, D, dtype=jnp.float64), y, "last")
    got_g, got_pg = probe_norms(jax.jit(make_probe(cell, "last"))(params, x, y))
    np.testing.assert_allclose(got_g, want_g, rtol=1e-10)
    np.testing.assert_allclose(got_pg, want_pg, rtol=1e-10)

    lin = nn.MGUCell(features=H, param_dtype=jnp.float64)
    variables = lin.init(jax.random.key(0), jnp.zeros((1, H)), jnp.zeros((1, D)))
    cell, params = flax_cells.from_module(lin, variables, readout={"kernel": W, "bias": b},
                                          in_features=D)
    want_g, want_pg, _ = reference(lambda tr, c, xt: lin.apply({"params": tr}, c, xt)[0],
                                   jnp.zeros((B, H)), variables["params"], (W, b),
                                   jax.nn.one_hot(x, D, dtype=jnp.float64), y, "all")
    got_g, got_pg = probe_norms(jax.jit(make_probe(cell, "all"))(params, x, y))
    np.testing.assert_allclose(got_g, want_g, rtol=1e-10)
    np.testing.assert_allclose(got_pg, want_pg, rtol=1e-10)


@pytest.mark.parametrize("options,message", [
    ({"module": "Foo"}, "cell.module=Foo is not a built-in Flax nnx cell; allowed: SimpleCell, "
                        "GRUCell, LSTMCell, OptimizedLSTMCell, or package.module:Class"),
    ({"module": "MGUCell", "api": "nnx"}, "cell.module=MGUCell is not a built-in Flax nnx"),
    ({"api": "haiku"}, "cell.api=haiku is unknown; allowed: nnx, linen"),
    ({"module": "no_such_pkg.mod:Cell"}, "cell.module=no_such_pkg.mod:Cell: cannot import"),
    ({"module": "adapter_reference:perturbed"}, "cell=flax: cannot make perturbed as a cell "
                                                "(TypeError: "),
])
def test_unknown_module_or_api_is_one_line_naming_the_key(options, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(")) as e:
        registry.build("flax", options)
    assert "\n" not in str(e.value)
    check = registry.get("flax").check({**registry.defaults("flax"), **options})
    assert check is not None and check.startswith(message)
    assert registry.get("flax").check(registry.defaults("flax")) is None


def test_registry_lists_flax_without_importing_it():
    code = ("import sys; from rnnjax.core.cells import registry; "
            "names = list(registry.CELLS); assert 'flax' in names and 'equinox' in names, names; "
            "assert registry.defaults('flax') == {'module': 'GRUCell', 'api': 'nnx'}; "
            "assert 'flax' not in sys.modules and 'equinox' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
