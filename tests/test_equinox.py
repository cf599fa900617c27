"""cell=equinox: an Equinox recurrent cell (unbatched, vmapped over the batch) as a rnnjax Cell,
its probe held to plain autodiff through the whole unrolled sequence (tests/adapter_reference.py)
in float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from adapter_reference import assert_probe_matches_autodiff, probe_norms, reference

from rnnjax.core.cells import registry
from rnnjax.core.probes import make_probe

eqx = pytest.importorskip("equinox",
                          reason="cell=equinox needs equinox (pip install 'rnnjax[equinox]')")

from rnnjax.core.cells import equinox_cells  # noqa: E402

B, T, D, H, Q = 2, 5, 4, 3, 4
MODULES = ("GRUCell", "LSTMCell", "adapter_reference:EqxTanhCell")


def library_call(module):
    """(call(tree, carry, x_t) -> carry, the parameter pytree's structure) of the Equinox cell
    itself, vmapped over the batch here, apart from the adapter."""
    cls = equinox_cells.equinox_class(module)
    arrays, static = eqx.partition(
        cls(input_size=D, hidden_size=H, key=jax.random.key(0), dtype=jnp.float64), eqx.is_array)
    return (lambda tree, carry, x: jax.vmap(eqx.combine(tree, static))(x, carry),
            jax.tree.structure(arrays))


# Every module with the loss at the last step; the loss over every step (the probe's, which the
# adapter never sees) for the LSTM.
# The default run (CI) checks a user's own module and the LSTM's loss over every step; Equinox's
# own modules at the last step run with `-m slow` (docs/development.md).
@pytest.mark.parametrize("module,loss_at", [
    *((m, "last") if m.startswith("adapter_reference:")
      else pytest.param(m, "last", marks=pytest.mark.slow) for m in MODULES),
    ("LSTMCell", "all")])
@pytest.mark.e2e
def test_probe_matches_autodiff_through_the_sequence(module, loss_at):
    cell = registry.build("equinox", {"module": module})
    call, structure = library_call(module)
    # Equinox's LSTM state is (h, c): H_t is its first element
    assert_probe_matches_autodiff(cell, call, structure, loss_at,
                                  0 if module == "LSTMCell" else None, (B, T, D, H, Q))


def test_real_inputs_of_several_networks_in_float32():
    cell = registry.build("equinox", {"module": "LSTMCell"})
    params = jax.vmap(lambda k: cell.init(k, D, H, Q, jnp.float32))(
        jax.random.split(jax.random.key(0), 3))
    assert params.W_hq.shape == (3, H, Q) and params.cell_weight_hh.dtype == jnp.float32
    x = jax.random.normal(jax.random.key(1), (B, T, D), jnp.float32)
    y = jax.random.randint(jax.random.key(2), (B, T), 0, Q)
    res = jax.jit(jax.vmap(make_probe(cell, "last"), (0, None, None)))(params, x, y)
    assert res.log10_grad_norm.shape == (3, T) and res.log10_grad_norm.dtype == jnp.float32
    assert np.all(np.isfinite(res.log10_grad_norm))
    # the networks differ: each probe ran on its own network's params
    assert not np.allclose(res.log10_grad_norm[0], res.log10_grad_norm[1])


@pytest.mark.e2e
def test_from_module_with_its_trained_readout():
    k1, k2, k3, k4 = jax.random.split(jax.random.key(7), 4)
    gru = eqx.nn.GRUCell(D, H, key=k1, dtype=jnp.float64)
    head = eqx.nn.Linear(H, Q, key=k2, dtype=jnp.float64)
    cell, params = equinox_cells.from_module(gru, readout=head)
    np.testing.assert_array_equal(params.W_hq, head.weight.T)
    x = jax.random.randint(k3, (B, T), 0, D)
    y = jax.random.randint(k4, (B, T), 0, Q)
    arrays, static = eqx.partition(gru, eqx.is_array)
    want_g, want_pg, _ = reference(lambda tr, c, xt: jax.vmap(eqx.combine(tr, static))(xt, c),
                                   jnp.zeros((B, H), jnp.float64), arrays,
                                   (head.weight.T, head.bias),
                                   jax.nn.one_hot(x, D, dtype=jnp.float64), y, "all")
    got_g, got_pg = probe_norms(jax.jit(make_probe(cell, "all"))(params, x, y))
    np.testing.assert_allclose(got_g, want_g, rtol=1e-10)
    np.testing.assert_allclose(got_pg, want_pg, rtol=1e-10)


def test_unknown_module_is_one_line_naming_the_allowed_ones():
    message = "cell.module=RNNCell is not a built-in Equinox cell; allowed: GRUCell, LSTMCell, " \
              "or package.module:Class"
    with pytest.raises(ValueError) as e:
        registry.build("equinox", {"module": "RNNCell"})
    assert str(e.value) == message
    assert registry.get("equinox").check({"module": "RNNCell"}) == message
    assert registry.get("equinox").check({"module": "LSTMCell"}) is None
    # a class of another kind: one line, at validation
    check = registry.get("equinox").check({"module": "adapter_reference:perturbed"})
    assert check.startswith("cell=equinox: cannot make perturbed as a cell (TypeError: ")
    assert "\n" not in check


def test_a_cell_of_another_state_is_refused_in_one_line():
    class Odd(eqx.Module):
        hidden_size: int = 3

        def __call__(self, x, h):
            return jnp.concatenate([h, h])

    with pytest.raises(ValueError, match="^cell.module=Odd: an Equinox cell is called as"):
        equinox_cells.one_state(Odd(), D, jnp.float32)
