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


def make_lyapunov(cell: Cell, k: int = 3, burn_in: int = 0) -> Callable[..., Array]:
    """Builds `lyapunov(params, x) -> (k,)`: the top k Lyapunov exponents (natural log per
    step) of the cell's state dynamics driven by the batch x, by the QR method, averaged over the
    sequences of the batch.

    The Jacobian of one step, J_t = d s_t / d s_{t-1}, is applied to an orthonormal frame Q by
    `jax.linearize` (a complex state is taken as its real and imaginary parts); Q is
    re-orthonormalized, and the logs of |diag R| are averaged over the steps after `burn_in`.
    For the vanilla RNN, J_t = diag(phi'(A_t)) W_hh^T.

    Args:
      cell: the cell.
      k: how many exponents (at most the state's real dimension).
      burn_in: steps left out of the average at the start.
    """

    def one(params, x: Array) -> Array:  # x (T,) or (T, D): one sequence
        s0 = cell.initial_state(params, 1)
        flat0, unravel = ravel_pytree(s0)
        n, is_complex = flat0.size, jnp.iscomplexobj(flat0)

        def to_vec(s):
            v = ravel_pytree(s)[0]
            return jnp.concatenate([v.real, v.imag]) if is_complex else v

        def from_vec(v):
            return unravel(v[:n] + 1j * v[n:] if is_complex else v)

        Q0 = jnp.eye(to_vec(s0).size, k, dtype=flat0.real.dtype)

        def step(carry, inputs):
            s, Q = carry
            x_t, t = inputs
            s_next, jvp = jax.linearize(lambda z: cell.step(params, z, x_t[None]), s)
            JQ = jax.vmap(lambda q: to_vec(jvp(from_vec(q))), in_axes=1, out_axes=1)(Q)
            Q, R = jnp.linalg.qr(JQ)
            logs = jnp.log(jnp.abs(jnp.diagonal(R)))
            return (s_next, Q), jnp.where(t >= burn_in, logs, 0.0)

        T = x.shape[0]
        _, logs = jax.lax.scan(step, (s0, Q0), (x, jnp.arange(T)))
        return logs.sum(0) / max(T - burn_in, 1)

    def lyapunov(params, x: Array) -> Array:
        return jax.vmap(one, (None, 0))(params, x).mean(0)

    return lyapunov
