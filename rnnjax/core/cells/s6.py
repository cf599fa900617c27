"""S6, the selective diagonal state-space layer of Gu & Dao (2023), "Mamba: Linear-Time
Sequence Modeling with Selective State Spaces" (its Algorithm 2), in row-vector form:

    u_t = x_t W_in + b_in                               (B, E) input expansion, E = expand * H
    Delta_t = softplus(u_t W_Delta + b_Delta)           (B, E) step size, one per channel
    B_t = u_t W_B,   C_t = u_t W_C                      (B, N) input and read-out vectors
    A = -exp(A_log)                                     (E, N) negative real, diagonal
    h_t[d, n] = exp(Delta_t[d] A[d, n]) h_{t-1}[d, n] + Delta_t[d] B_t[n] u_t[d],   h_0 = 0
    y_t[d] = sum_n C_t[n] h_t[d, n] + D[d] u_t[d],      o_t = y_t W_hq + b_q.

The state h_t is (B, E, N): E channels of N states each. Delta, B and C are functions of the
input only (the "selection"), never of h_{t-1}: the recurrence is diagonal and linear in the
state, dh_t/dh_{t-1} = diag(exp(Delta_t A)), with coefficients the forward pass computes from
the inputs. So with the loss at the last step dL/dh_t = dL/dh_T * prod_{s=t+1..T}
exp(Delta_s A) elementwise, and the gradient profile is known exactly (`theory`, the minGRU's
helpers with log keep = Delta_t A). The discretization is Mamba's: zero-order hold for A
(exp(Delta A)) and the simplified Euler step Delta B for the input.

The read-out needs C_t and D u_t, which do not depend on the previous state; the state carries
them as leaves beside h_t (`S6State`, as the LRU carries its skip term), so that the read-out
is a function of the state alone. `hidden` is h_t, so `grad_norm` is ||dL/dh_t|| over all
(E, N) entries.

What differs from Mamba's block: there is no causal conv1d before the SSM, no SiLU gate branch
(y * silu(z)) after it and no SiLU on u_t; Delta's projection is full (E, E) where Mamba's is
low rank (x_proj to dt_rank = ceil(d_model / 16), then dt_proj back to d_inner); and the input
expansion has a bias (Mamba's in_proj has none by default). This is one layer with an output
layer, as every other rnnjax cell, not a stack of residual blocks with normalization.

Initialization, as Mamba's code: A[d, n] = -(n + 1) (S4D-real), D = 1; Delta's bias
b_Delta = softplus^{-1}(dt) = dt + log(-expm1(-dt)) with dt = exp(U[log dt_min, log dt_max])
per channel, clamped below at 1e-4, so that Delta starts in [dt_min, dt_max]; W_Delta
U[-dt_rank^-1/2, +] (its dt_proj's "random" init) with dt_rank = E here (the projection is
full). Every other linear layer is PyTorch's nn.Linear default U[-1/sqrt(fan_in), +]: W_in,
b_in fan-in D (a token is a one-hot row), W_B, W_C fan-in E (Mamba's x_proj, no bias), W_hq,
b_q fan-in E. `activation` and `init` do not apply.

The parameters of the recurrence, whose per-step share `param_grad_norm` measures, are
(W_Delta, b_Delta, A_log): the ones that set the coefficient exp(Delta_t A) of h_{t-1}. (Delta
also scales the input term; its share counts in that gradient too, as the minGRU's z_t.)
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from rnnjax.core.cells.base import Cell
from rnnjax.core.cells.mingru import affine, linear_init, make_profile_terms, make_theory
from rnnjax.core.cells.registry import CellSpec, Option

DT_FLOOR = 1e-4  # Mamba's dt_init_floor: the initial step sizes are clamped below at it


class S6Params(NamedTuple):
    """Parameters of one S6 network (a leading seed axis S is added by `vmap`)."""

    W_in: Array  # (D, E) input expansion, one row per token
    b_in: Array  # (E,)
    W_delta: Array  # (E, E) u_t to the step size's pre-activation
    b_delta: Array  # (E,) softplus^{-1} of the initial step sizes
    W_B: Array  # (E, N) u_t to B_t
    W_C: Array  # (E, N) u_t to C_t
    A_log: Array  # (E, N) log(-A)
    D: Array  # (E,) the skip D * u_t
    W_hq: Array  # (E, Q) read-out
    b_q: Array  # (Q,)


class S6State(NamedTuple):
    """The state after step t: h_t, and the read-out's input-dependent terms (they do not
    depend on the previous state; they are carried so that the read-out is a function of the
    state)."""

    h: Array  # (B, E, N)
    skip: Array  # (B, E) D * u_t
    C: Array  # (B, N) C_t


RECURRENT = ("W_delta", "b_delta", "A_log")


class S6Options(NamedTuple):
    """The cell's options (`cell.*`), with Mamba's defaults."""

    N: int = 16  # d_state: states per channel
    expand: int = 2  # E = expand * H channels (Mamba's d_inner = expand * d_model)
    dt_min: float = 0.001  # initial step sizes log-uniform on [dt_min, dt_max]
    dt_max: float = 0.1


def init_params(key: Array, D: int, H: int, Q: int, options: S6Options | None = None,
                dtype=jnp.float32) -> S6Params:
    """Initial parameters of one network, as Mamba's code draws them (see the module's
    docstring).

    Args:
      key: a PRNG key.
      D: input size (vocabulary or channels). H: model width (E = expand * H channels).
      Q: output size.
      options: N, expand, dt_min, dt_max (None: the defaults).
      dtype: parameter dtype (float32 or float64).
    """
    N, expand, dt_min, dt_max = options or S6Options()
    E = expand * H
    k = jax.random.split(key, 8)
    log_lo, log_hi = math.log(dt_min), math.log(dt_max)
    dt = jnp.exp(jax.random.uniform(k[3], (E,), dtype) * (log_hi - log_lo) + log_lo)
    dt = jnp.maximum(dt, DT_FLOOR)
    return S6Params(
        W_in=linear_init(k[0], D, (D, E), dtype), b_in=linear_init(k[1], D, (E,), dtype),
        W_delta=linear_init(k[2], E, (E, E), dtype),  # U[-dt_rank^-1/2, +], dt_rank = E
        b_delta=dt + jnp.log(-jnp.expm1(-dt)),  # softplus^{-1}(dt)
        W_B=linear_init(k[4], E, (E, N), dtype), W_C=linear_init(k[5], E, (E, N), dtype),
        A_log=jnp.log(jnp.broadcast_to(jnp.arange(1, N + 1, dtype=dtype), (E, N))),
        D=jnp.ones((E,), dtype),
        W_hq=linear_init(k[6], E, (E, Q), dtype), b_q=linear_init(k[7], E, (Q,), dtype))


class Selection(NamedTuple):
    """What a step computes from x_t alone."""

    u: Array  # (B, E) u_t
    delta: Array  # (B, E) Delta_t
    B: Array  # (B, N) B_t
    C: Array  # (B, N) C_t


def select(params: S6Params, x_t: Array) -> Selection:
    """u_t, Delta_t, B_t, C_t of one step's input."""
    u = affine(params.W_in, params.b_in, x_t)
    delta = jax.nn.softplus(u @ params.W_delta + params.b_delta)
    return Selection(u, delta, u @ params.W_B, u @ params.W_C)


def log_keep(params: S6Params, x_t: Array) -> Array:
    """log exp(Delta_t A) = Delta_t A: (B, E, N), the log of the coefficient of h_{t-1}."""
    return select(params, x_t).delta[..., None] * -jnp.exp(params.A_log)


def coefficients(params: S6Params, x_t: Array) -> tuple[Selection, Array, Array]:
    """(the selection, exp(Delta_t A) (B, E, N), Delta_t B_t u_t (B, E, N)): the step is
    h_t = keep * h_{t-1} + write."""
    sel = select(params, x_t)
    keep = jnp.exp(sel.delta[..., None] * -jnp.exp(params.A_log))
    write = (sel.delta * sel.u)[..., None] * sel.B[:, None, :]
    return sel, keep, write


def zero_state(params: S6Params, B: int) -> S6State:
    """h_0 = 0, and zero read-out terms."""
    (E, N), dtype = params.A_log.shape, params.A_log.dtype
    return S6State(h=jnp.zeros((B, E, N), dtype), skip=jnp.zeros((B, E), dtype),
                   C=jnp.zeros((B, N), dtype))


def s6_readout(params: S6Params, state: S6State) -> Array:
    """o_t = (sum_n C_t[n] h_t[:, n] + D * u_t) W_hq + b_q: (B, Q)."""
    y = jnp.einsum("ben,bn->be", state.h, state.C) + state.skip
    return y @ params.W_hq + params.b_q


def s6(N: int = 16, dt_min: float = 0.001, dt_max: float = 0.1, expand: int = 2) -> Cell:
    """The S6 cell (Gu & Dao 2023) as one layer with an output layer.

    Args:
      N: states per channel (Mamba's d_state).
      dt_min, dt_max: the initial step sizes Delta, log-uniform on [dt_min, dt_max].
      expand: E = expand * H channels.

    Returns:
      A Cell whose state is `S6State` (h_t (B, E, N), D * u_t, C_t); `hidden` is h_t,
      `recurrent` (W_delta, b_delta, A_log), and `linear` its step as
      h_t = exp(Delta_t A) h_{t-1} + Delta_t B_t u_t (the read-out terms: 0 * s + new).
    """
    options = S6Options(N, expand, dt_min, dt_max)

    def init_fn(key, D, H, Q, dtype=jnp.float32):
        return init_params(key, D, H, Q, options, dtype)

    def step(params, state, x_t):
        sel, keep, write = coefficients(params, x_t)
        return S6State(h=keep * state.h + write, skip=params.D * sel.u, C=sel.C)

    def linear(params, x_t):
        sel, keep, write = coefficients(params, x_t)
        return (S6State(h=keep, skip=jnp.zeros_like(sel.u), C=jnp.zeros_like(sel.C)),
                S6State(h=write, skip=params.D * sel.u, C=sel.C))

    return Cell(name="s6", init=init_fn, initial_state=zero_state, step=step,
                readout=s6_readout, hidden=lambda s: s.h, recurrent=RECURRENT, linear=linear)


# ----------------------------------------------------------------------------- theory


@functools.cache
def seed_terms(log_space: bool = False, kind: str | None = None, loss_at: str | None = None):
    """`make_profile_terms` of the S6 (log keep = Delta_t A, (B, E, N)) vmapped over seeds and
    jitted, once per setting. The cell has no log-space form: `make_theory` passes False, and
    the terms do not depend on the cell's options (they are in the parameters' shapes)."""
    del log_space
    return jax.jit(jax.vmap(make_profile_terms(s6(), log_keep, kind, loss_at)))


# dL/dh_t = dL/dh_T * prod_{s>t} exp(Delta_s A), from the step sizes of the probe's batch
theory = make_theory(seed_terms, "S6", "exp(Δ A) (keep of each state)")


# ----------------------------------------------------------------------------- the spec


def _positive_int(n: int) -> str | None:
    return None if n >= 1 else "must be an integer >= 1"


def _step_size(dt: float) -> str | None:
    return None if 0 < dt < math.inf else "must be a finite number > 0 (an initial step " \
                                          "size Delta)"


OPTIONS = {
    "N": Option(16, int, "states per channel (Mamba's d_state), >= 1", _positive_int),
    "dt_min": Option(0.001, float, "smallest initial step size Delta, > 0 (log-uniform on "
                     "[dt_min, dt_max])", _step_size),
    "dt_max": Option(0.1, float, "largest initial step size Delta, >= dt_min", _step_size),
    "expand": Option(2, int, "channels E = expand * hidden_size (Mamba's d_inner), >= 1",
                     _positive_int),
}


def check(options: dict) -> str | None:
    """The step sizes' order, which no single option can check."""
    if options["dt_min"] > options["dt_max"]:
        return (f"cell.dt_min={options['dt_min']} is invalid: must be <= cell.dt_max="
                f"{options['dt_max']} (equal is allowed)")
    return None


def label(options: dict) -> str:
    """The options that differ from their defaults: "N=4", "expand=1", "Δ in [0.01, 0.1]" (or
    "Δ=0.01" when dt_min = dt_max); "" for the defaults."""
    base = S6Options()
    parts = [f"{k}={options[k]}" for k in ("N", "expand") if options[k] != getattr(base, k)]
    lo, hi = options["dt_min"], options["dt_max"]
    if (lo, hi) != (base.dt_min, base.dt_max):
        parts.append(f"Δ={lo:g}" if lo == hi else f"Δ in [{lo:g}, {hi:g}]")
    return ", ".join(parts)


def cost(options: dict, H: int) -> int:
    """Floats per step and per sequence autodiff keeps (tests/test_s6.py measures them): the
    state h_{t-1} and exp(Delta_t A) (E N each), u_t, Delta_t and what its softplus keeps
    (6 E), B_t (N)."""
    E, N = options["expand"] * H, options["N"]
    return 2 * E * N + 6 * E + N


SPEC = CellSpec(
    build=s6,
    options=OPTIONS,
    activations=("tanh",),
    inits=("normal",),
    check=check,
    theory=theory,
    label=label,
    cost=cost,
    help="Gu & Dao (2023)'s S6 (Mamba's selective SSM): h_t = exp(Δ_t A) h + Δ_t B_t u_t, "
         "Δ, B, C of the input; exact gradient profile",
    order=7,
)
