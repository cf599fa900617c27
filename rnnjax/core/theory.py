"""Theory that predicts how fast ||dL/dH_t|| vanishes or explodes, to set beside measurements.

- Mean field (Poole et al. 2016; Schoenholz et al. 2017; Chen, Pennington & Schoenholz 2018)
  for W_hh ~ N(0, g^2/H): the pre-activation variance q* and chi_1 = g^2 E[phi'(h)^2]; the
  per-step factor of ||dL/dH_t|| is sqrt(chi_1), the depth scale xi = -1/ln(chi_1).
- Pascanu, Mikolov & Bengio (2013): ||dH_T/dH_t|| <= (gamma sigma_max(W_hh))^(T-t).
- Lyapunov exponents of the driven hidden dynamics by the QR method (Engelken, Wolf & Abbott).

Gaussian expectations use Gauss-Hermite quadrature (numpy, float64). The functions that need
the network's trajectory (`make_lyapunov`) are pure JAX and vmappable, for any cell.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array
from jax.flatten_util import ravel_pytree

from rnnjax.core.cells.base import Cell

# the numpy mean field: jax-free in rnnjax.core.meanfield (the report draws its curves)
from rnnjax.core.meanfield import (  # noqa: F401 (re-exported)
    gauss_expect,
    mean_field,
    mean_field_chi,
    mean_field_q,
)
from rnnjax.core.stats import (  # noqa: F401 (re-exported)
    effective_gain,
    finite_median,
    relative_error,
)


def _as_real(state):
    """A state pytree with each complex leaf replaced by its (real, imaginary) parts."""
    return jax.tree.map(lambda a: (a.real, a.imag) if jnp.iscomplexobj(a) else a, state)


def _from_real(like: Array, parts) -> Array:
    """The leaf `like` rebuilt from `_as_real`'s parts of it."""
    return parts[0] + 1j * parts[1] if jnp.iscomplexobj(like) else parts


def initial_frame(n: int, k: int, dtype) -> Array:
    """The QR method's first frame: k orthonormal vectors of R^n in general position (from a
    fixed key), so that they are not aligned with an invariant subspace of the dynamics (the
    first k coordinate vectors would be, for a diagonal recurrence: its exponents would come
    out in the order of the coordinates, not sorted, and a direction the step maps to 0 would
    stay -inf)."""
    g = jax.random.normal(jax.random.key(0), (n, k), dtype)
    return jnp.linalg.qr(g)[0]


def make_lyapunov(cell: Cell, k: int = 3, burn_in: int = 0, every: int = 1
                  ) -> Callable[..., Array]:
    """Builds `lyapunov(params, x) -> (k,)`: the top k Lyapunov exponents (natural log per
    step) of the cell's state dynamics driven by the batch x, by the QR method (Benettin et
    al. 1980; Engelken, Wolf & Abbott 2023), averaged over the sequences of the batch.

    The Jacobian of one step, J_t = d s_t / d s_{t-1}, is applied to k tangent vectors at once
    (`jax.linearize`, vmapped over them; a complex state is taken as its real and imaginary
    parts), starting from `initial_frame`. Every `every` steps the frame is re-orthonormalized
    by QR, Q R = J_t ... J_{t-m+1} Q, and the logs of |diag R| are summed; exponent i is that
    sum over the steps after `burn_in` divided by their number. For the vanilla RNN,
    J_t = diag(phi'(A_t)) W_hh^T.

    Differentiable in the parameters (QR is), as gradient flossing needs; a frame that
    collapses to 0 (a dead ReLU network) gives an exponent of -inf.

    Args:
      cell: the cell.
      k: how many exponents (at most the state's real dimension).
      burn_in: steps left out of the average at the start (whole blocks of `every` steps: a
        block counts when its first step t >= burn_in, t from 0).
      every: steps between re-orthonormalizations (>= 1); with more than one, the frame grows
        or shrinks by up to the product of `every` steps' factors before QR rescales it, which
        the dtype must hold, and its vectors turn towards the leading direction: exponents
        that lie far below the first lose precision (float64, H = 6, every = 4: those 5.9 per
        step below the first came out 3e-6 relative apart in two implementations).
    """
    if every < 1:
        raise ValueError(f"every={every} is invalid: must be an integer >= 1")

    def one(params, x: Array) -> Array:  # x (T,) or (T, D): one sequence
        s0 = cell.initial_state(params, 1)
        # The state as real numbers: a complex leaf as its real and imaginary parts.
        flat0, unravel = ravel_pytree(_as_real(s0))

        def to_vec(s):
            return ravel_pytree(_as_real(s))[0]

        def from_vec(v):
            return jax.tree.map(_from_real, s0, unravel(v))

        Q0 = initial_frame(flat0.size, k, flat0.dtype)
        T = x.shape[0]
        blocks = -(-T // every)
        # Padded to whole blocks; a padded step (t >= T) leaves the state and frame as they are.
        xs = jnp.concatenate([x, jnp.zeros((blocks * every - T, *x.shape[1:]), x.dtype)])
        xs = xs.reshape(blocks, every, *x.shape[1:])
        ts = jnp.arange(blocks * every).reshape(blocks, every)

        def step(carry, inputs):
            s, Q = carry
            x_t, t = inputs
            s_next, jvp = jax.linearize(lambda z: cell.step(params, z, x_t[None]), s)
            JQ = jax.vmap(lambda q: to_vec(jvp(from_vec(q))), in_axes=1, out_axes=1)(Q)
            keep = t < T
            return (jax.tree.map(lambda a, b: jnp.where(keep, a, b), s_next, s),
                    jnp.where(keep, JQ, Q)), None

        def block(carry, inputs):
            x_b, t_b = inputs
            (s, JQ), _ = jax.lax.scan(step, carry, (x_b, t_b))
            Q, R = jnp.linalg.qr(JQ)
            logs = jnp.log(jnp.abs(jnp.diagonal(R)))
            return (s, Q), jnp.where(t_b[0] >= burn_in, logs, 0.0)

        _, logs = jax.lax.scan(block, (s0, Q0), (xs, ts))
        counted = jnp.sum(jnp.where(ts[:, 0] >= burn_in,
                                    jnp.minimum(T - ts[:, 0], every), 0))
        return logs.sum(0) / jnp.maximum(counted, 1)

    def lyapunov(params, x: Array) -> Array:
        return jax.vmap(one, (None, 0))(params, x).mean(0)

    return lyapunov
