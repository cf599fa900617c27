"""The reference the Flax and Equinox cells' probes are held to: plain autodiff through the whole
unrolled sequence (a Python loop over t, no scan, no probe code), with a zero perturbation added
to every hidden output H_t (its gradient is the total dL/dH_t) and every step given its own copy
of the cell's parameters (the gradient of step t's copy is step t's share); and users' own cells
imported by path (`adapter_reference:NNXTanhCell`)."""

import weakref

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rnnjax.core.probes import make_probe


def reference(call, carry0, trees, readout, x, y, loss_at, hidden_index=None):
    """(grad_norm (T,), param_grad_norm (T,), loss) in float64 numbers.

    Args:
      call: (tree, carry, x_t (B, D)) -> carry, one step of the library's cell.
      carry0: the carry before the first step.
      trees: the cell's parameter pytree (every step gets its own copy).
      readout: (W (H, Q), b (Q,)).
      x: (B, T, D) real inputs (tokens one-hot encoded by the caller).
      y: (B, T) integer targets.
      loss_at: "all" or "last".
      hidden_index: None where the carry is H_t, else the index of H_t in the tuple carry.
    """
    T = x.shape[1]
    h0 = carry0 if hidden_index is None else carry0[hidden_index]
    zeros = jnp.zeros((T, *h0.shape), h0.dtype)
    value, (dH, dP) = _value_and_grad(call, loss_at, hidden_index)(
        zeros, [trees] * T, carry0, *readout, x, y)
    g = np.sqrt((np.asarray(dH, np.float64) ** 2).sum(axis=(1, 2)))
    pg = np.array([np.sqrt(sum((np.asarray(a, np.float64) ** 2).sum() for a in jax.tree.leaves(d)))
                   for d in dP])  # on the host: no op dispatched per leaf and step
    return g, pg, float(value)


# call -> {(loss_at, hidden_index): the jitted value_and_grad}: one compilation for every
# seed that a test's `call` is held to (jit traces the unrolled loop once for given shapes)
_COMPILED = weakref.WeakKeyDictionary()


def _value_and_grad(call, loss_at, hidden_index):
    """The jitted value_and_grad, in (dH, copies), of the loss through the unrolled sequence:
    a Python loop over t, each step given its own copy of the parameters and its hidden output
    a zero perturbation dH[t]."""
    by_options = _COMPILED.setdefault(call, {})
    if (loss_at, hidden_index) in by_options:
        return by_options[loss_at, hidden_index]

    def with_hidden(carry, f):
        if hidden_index is None:
            return f(carry)
        return tuple(f(c) if i == hidden_index else c for i, c in enumerate(carry))

    def loss(dH, copies, carry0, W, b, x, y):
        carry, outs = carry0, []
        for t in range(x.shape[1]):
            carry = call(copies[t], carry, x[:, t])
            carry = with_hidden(carry, lambda h, t=t: h + dH[t])
            h = carry if hidden_index is None else carry[hidden_index]
            outs.append(h @ W + b)
        o = jnp.stack(outs)  # (T, B, Q)
        if loss_at == "all":
            return optax.softmax_cross_entropy_with_integer_labels(o, y.T).mean()
        return optax.softmax_cross_entropy_with_integer_labels(o[-1], y[:, -1]).mean()

    by_options[loss_at, hidden_index] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    return by_options[loss_at, hidden_index]


def perturbed(params, key, scale=0.3):
    """`params` with every field moved by scale * N(0, 1) (non-zero biases, a non-trivial net)."""
    keys = jax.random.split(key, len(params))
    return type(params)(*(p + scale * jax.random.normal(k, jnp.shape(p), jnp.result_type(p))
                          for p, k in zip(params, keys, strict=True)))


def probe_norms(res):
    """(grad_norm, param_grad_norm) of a ProbeResult as float64 numbers."""
    return (10.0 ** np.asarray(res.log10_grad_norm, np.float64),
            10.0 ** np.asarray(res.log10_param_grad_norm, np.float64))


# Users' own cells, imported by path in the tests.
try:
    from flax import nnx

    class NNXTanhCell(nnx.Module):
        """h_t = tanh(x_t W + h_{t-1} U + b), as a user writes an NNX cell."""

        def __init__(self, in_features, hidden_features, *, rngs, dtype=jnp.float32,
                     param_dtype=jnp.float32):
            self.in_features, self.hidden_features = in_features, hidden_features
            init = jax.nn.initializers.normal(0.5)
            self.W = nnx.Param(init(rngs.params(), (in_features, hidden_features), param_dtype))
            self.U = nnx.Param(init(rngs.params(), (hidden_features, hidden_features),
                                    param_dtype))
            self.b = nnx.Param(jnp.zeros((hidden_features,), param_dtype))

        def __call__(self, carry, x):
            h = jnp.tanh(x @ self.W[...] + carry @ self.U[...] + self.b[...])
            return h, h

        def initialize_carry(self, input_shape, rngs=None):
            return jnp.zeros((*input_shape[:-1], self.hidden_features), self.W[...].dtype)
except ImportError:  # the tests that need flax skip
    pass

try:
    import equinox as eqx

    class EqxTanhCell(eqx.Module):
        """h_t = tanh(W x_t + U h_{t-1}), as a user writes an Equinox cell."""

        W: jax.Array
        U: jax.Array
        input_size: int = eqx.field(static=True)
        hidden_size: int = eqx.field(static=True)

        def __init__(self, input_size, hidden_size, *, key, dtype=jnp.float32):
            k1, k2 = jax.random.split(key)
            self.input_size, self.hidden_size = input_size, hidden_size
            self.W = 0.5 * jax.random.normal(k1, (hidden_size, input_size), dtype)
            self.U = 0.5 * jax.random.normal(k2, (hidden_size, hidden_size), dtype)

        def __call__(self, x, h):
            return jnp.tanh(self.W @ x + self.U @ h)
except ImportError:
    pass


def assert_probe_matches_autodiff(cell, call, structure, loss_at, hidden_index=None,
                                  sizes=(2, 5, 4, 3, 4)):
    """The probe of a library cell's adapter (`cell`) against `reference` on 3 seeds, to rtol
    1e-10 in float64: `call` and `structure` are the library cell made apart from the adapter
    (its step and its parameter pytree's structure); hidden_index: where H_t is in an LSTM's
    carry (None: the carry is H_t). sizes: B, T, D, H, Q."""
    B, T, D, H, Q = sizes
    probe = jax.jit(make_probe(cell, loss_at))
    for seed in range(3):
        k_init, k_move, k_x, k_y = jax.random.split(jax.random.key(seed), 4)
        params = perturbed(cell.init(k_init, D, H, Q, jnp.float64), k_move)
        x = jax.random.randint(k_x, (B, T), 0, D)
        y = jax.random.randint(k_y, (B, T), 0, Q)
        got_g, got_pg = probe_norms(probe(params, x, y))
        tree = jax.tree.unflatten(structure, list(params[:-2]))  # the adapter's cell_* fields
        zeros = jnp.zeros((B, H), jnp.float64)
        want_g, want_pg, _ = reference(
            call, zeros if hidden_index is None else (zeros, zeros), tree,
            (params.W_hq, params.b_q), jax.nn.one_hot(x, D, dtype=jnp.float64), y, loss_at,
            hidden_index)
        np.testing.assert_allclose(got_g, want_g, rtol=1e-10, atol=0)
        np.testing.assert_allclose(got_pg, want_pg, rtol=1e-10, atol=0)
        assert np.all(want_pg > 0) and want_g[0] > 0  # a comparison of nonzero numbers
