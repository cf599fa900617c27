"""minGRU of Feng et al. (2024), "Were RNNs All We Needed?", in row-vector form:

    z_t = sigmoid(x_t W_xz + b_z)                       update gate (of the input only)
    h~_t = x_t W_xh + b_h                               candidate (no nonlinearity)
    h_t = (1 - z_t) * h_{t-1} + z_t * h~_t,    o_t = h_t W_hq + b_q,    h_0 = 0.

Neither gate nor candidate reads h_{t-1}: the recurrence is diagonal and linear in the state,
dh_t/dh_{t-1} = diag(1 - z_t), with coefficients the forward pass computes from the inputs. So
with the loss at the last step dL/dh_t = dL/dh_T * prod_{s=t+1..T} (1 - z_s) elementwise, and
the gradient profile is known exactly (`theory`).

`cell.log_space=true` is the paper's log-space variant (its Appendix code): the candidate goes
through g(a) = a + 1/2 for a >= 0, sigmoid(a) below (positive), the gates are taken as
log z = -softplus(-k), log(1 - z) = -softplus(k), h_0 = g(0) = 1/2 (the paper's code applies g to
h_0 too; a positive h_0 also keeps log h_0 finite), and each step is

    log h_t = logaddexp(log(1 - z_t) + log h_{t-1}, log z_t + log g(h~_t)),

mathematically the direct form with g applied. (The direct form computes 1 - z_t as
sigmoid(-k_t): the same number, without the cancellation of 1 - sigmoid(k_t) near z_t = 1.)
The state is h_t itself (what `grad_norm`
measures): each step takes its log, combines in log space and exponentiates. Over time the
harness runs it by its parallel scan (`linear` gives log(1 - z_t) and log(z_t g(h~_t)), composed
with logaddexp: `rnnjax.core.scan`) or, with probe.scan=sequential, step by step.

Initialization: every linear layer (the two of the cell and the read-out W_hq, b_q) is PyTorch's
nn.Linear default, the paper's implementation's: weights and biases U[-1/sqrt(fan_in),
+1/sqrt(fan_in)], fan_in = D for the cell's layers (a token is a one-hot row, so its drive is a
row of W) and H for the read-out. `activation` and `init` do not apply. The paper's models
stack such layers with MLPs and normalization in between; this is one layer with an output
layer, as for every other cell.

The parameters of the recurrence, whose per-step share `param_grad_norm` measures, are the
update gate's (W_xz, b_z): the only ones that set the coefficient 1 - z_t.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from rnnjax.core.cells.base import Cell, linear_step
from rnnjax.core.cells.registry import CellSpec, Option
from rnnjax.core.cells.vanilla import step_drive
from rnnjax.core.losses import make_loss
from rnnjax.core.stats import finite_median, slope_of_log10

# ----------------------------------------------------------------------------- shared helpers
# (minlstm imports these)


def g(a: Array) -> Array:
    """The paper's positive candidate map: a + 1/2 for a >= 0, sigmoid(a) below (continuous,
    with slope 1/4 .. 1 at 0)."""
    return jnp.where(a >= 0, a + 0.5, jax.nn.sigmoid(a))


def log_g(a: Array) -> Array:
    """log g(a), as the paper's code computes it: log(relu(a) + 1/2) for a >= 0,
    -softplus(-a) below (no log of a rounded sigmoid)."""
    return jnp.where(a >= 0, jnp.log(jax.nn.relu(a) + 0.5), -jax.nn.softplus(-a))


def linear_init(key: Array, fan_in: int, shape: tuple[int, ...], dtype) -> Array:
    """PyTorch's nn.Linear default for a weight or bias: U[-1/sqrt(fan_in), +1/sqrt(fan_in)]."""
    bound = 1 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def affine(W: Array, b: Array, x_t: Array) -> Array:
    """x_t W + b: (B, H); a row lookup of W for (B,) tokens, a matmul for (B, D) inputs."""
    return step_drive(W, x_t) + b


def readout(params, h: Array) -> Array:
    """o_t = h_t W_hq + b_q: (B, Q)."""
    return h @ params.W_hq + params.b_q


H0_LOG_SPACE = 0.5  # g(0): the log-space variant's h_0


def zero_or_half(params, B: int, log_space: bool) -> Array:
    """h_0: 0 (the direct form), g(0) = 1/2 (the log-space form): (B, H)."""
    H, dtype = params.b_h.shape[0], params.b_h.dtype
    return jnp.full((B, H), H0_LOG_SPACE if log_space else 0.0, dtype)


def exact_log10_profile(log_keep: Array, last: Array) -> tuple[Array, Array]:
    """log10 ||dL/dh_t|| for t = 1..T with the loss at the last step, exactly, for a diagonal
    recurrence h_t = keep_t * h_{t-1} + ...: dL/dh_t = dL/dh_T * prod_{s=t+1..T} keep_s
    elementwise, so ||dL/dh_t||^2 = sum_{b,k} (dL/dh_T)_{bk}^2 exp(2 sum_{s>t} log keep_{s,bk}).
    Computed in logs: finite however far below the dtype's range the norm falls.

    Args:
      log_keep: (T, B, ...) natural log of the coefficient of h_{t-1} at each step.
      last: (B, ...) dL/dh_T.

    Returns:
      (log10 norm (T,), log10 of the largest entry's modulus (T,)), in the arrays' dtype
      (-inf where dL/dh_T is 0).
    """
    after = jnp.cumsum(log_keep[::-1], axis=0)[::-1]  # sum_{s>=t}
    after = jnp.concatenate([after[1:], jnp.zeros_like(after[:1])])  # sum_{s>t}
    logs = (jnp.log(jnp.abs(last))[None] + after).reshape(after.shape[0], -1)
    return (0.5 * jax.nn.logsumexp(2 * logs, axis=1) / math.log(10),
            jnp.max(logs, axis=1) / math.log(10))


def make_profile_terms(cell: Cell, log_keep_fn: Callable[..., Array], kind: str | None,
                       loss_at: str | None) -> Callable[..., tuple[Array, Array]]:
    """Builds `terms(params, x, y=None) -> (exact log10 profile (T,), log10 of its largest
    entry (T,), log keep (T, B, H))` for one network and one batch (the profiles are NaN
    without targets).

    Args:
      cell: the cell (its step, read-out and initial state give h_T and dL/dh_T; dL/dh_T is
        `cell.hidden` of the cotangent of the state, which may hold more than h_t).
      log_keep_fn: (params, x_t) -> (B, ...) the log of the coefficient of h_{t-1} at a step,
        shaped like `cell.hidden`'s output: it depends on x_t alone.
      kind, loss_at: the probe's loss; None: no targets. dL/dh_T is the gradient of the last
        step's loss term (with loss_at=all: that term alone, unscaled; the profile is then
        that term's, not the measured sum's).
    """
    loss = make_loss(kind, "last") if kind is not None else None

    def terms(params, x, y=None):
        xs = jnp.swapaxes(x, 0, 1)  # (T, B) or (T, B, D)
        log_keep = jax.vmap(log_keep_fn, (None, 0))(params, xs)
        if loss is None:
            nan = jnp.full(xs.shape[:1], jnp.nan, log_keep.dtype)
            return nan, nan, log_keep

        def step(h, x_t):
            return cell.step(params, h, x_t), None

        h_T, _ = jax.lax.scan(step, cell.initial_state(params, x.shape[0]), xs)
        targets = y if kind == "regression" or loss_at == "last" else y[:, -1:]
        last = cell.hidden(jax.grad(lambda s: loss(cell.readout(params, s)[None], targets))(h_T))
        return *exact_log10_profile(log_keep, last), log_keep

    return terms


def exact_theory(terms: Callable[..., tuple[Array, Array]], name: str, gate: str,
                 params, x, measured: float, y=None, log_space: bool = False) -> dict:
    """The exact profile's slope beside the measured one, and the gate's statistics.

    Args:
      terms: `make_profile_terms`'s function vmapped over seeds (and jitted).
      name: the cell, in words ("minGRU"). gate: the coefficient of h_{t-1}, in words.
      params: S networks (leading axis). x: (S, B, T...), y: their targets (None: no profile).
      measured: the measured median slope. log_space: the cell's option (reported).

    The measured profile underflows to 0 going back from the step where every entry of dL/dh_t
    falls below the dtype's smallest normal number (a diagonal recurrence: each entry decays on
    its own, and the CPU flushes subnormal numbers to 0); those steps of the exact profile are
    left out of its fit too, so that both are fitted over the same steps.

    Returns:
      For summary.json: prediction ("exact (NAME)", None without targets),
      predicted_log10_slope_per_step_back (median over seeds, the headline's fit of the exact
      profile), predicted_log10_slope_per_seed, measured_minus_predicted, gate, gate_mean (the
      coefficient's mean over steps, units and sequences, median over seeds),
      gate_log10_geometric_mean (mean of its log10: the profile's slope when every unit and
      sequence weighs the same; median over seeds) and log_space.
    """
    profile, largest, log_keep = terms(params, x) if y is None else terms(params, x, y)
    floor = math.log10(np.finfo(log_keep.dtype).tiny)
    log_keep = np.asarray(log_keep, np.float64)  # (S, T, B, H)
    axes = tuple(range(1, log_keep.ndim))
    slopes = None
    if y is not None:
        usable = np.where(np.asarray(largest) < floor, -np.inf,
                          np.asarray(profile, np.float64))
        slopes = [slope_of_log10(p)[0] for p in usable]
    predicted = finite_median(slopes) if slopes is not None else None
    return {
        "prediction": f"exact ({name})" if slopes is not None else None,
        "predicted_log10_slope_per_step_back": predicted,
        "predicted_log10_slope_per_seed": slopes,
        "measured_minus_predicted": (measured - predicted) if slopes is not None else None,
        "gate": gate,
        "gate_mean": finite_median(np.mean(np.exp(log_keep), axis=axes)),
        "gate_log10_geometric_mean": finite_median(np.mean(log_keep, axis=axes) / math.log(10)),
        "log_space": bool(log_space),
    }


def log_space_option() -> Option:
    return Option(False, bool, "the paper's log-space form: candidate g(x) > 0, h_0 = g(0), "
                  "log h_t = logaddexp(...) (sequential)")


# ----------------------------------------------------------------------------- minGRU


class MinGRUParams(NamedTuple):
    """Parameters of one minGRU network (a leading seed axis S is added by `vmap`)."""

    W_xz: Array  # (D, H) input to update gate, one row per token
    b_z: Array  # (H,)
    W_xh: Array  # (D, H) input to candidate
    b_h: Array  # (H,)
    W_hq: Array  # (H, Q) hidden to output
    b_q: Array  # (Q,)


RECURRENT = ("W_xz", "b_z")


def init_params(key: Array, D: int, H: int, Q: int, dtype=jnp.float32) -> MinGRUParams:
    """nn.Linear's default for each layer (see the module's docstring)."""
    k = jax.random.split(key, 6)
    return MinGRUParams(
        W_xz=linear_init(k[0], D, (D, H), dtype), b_z=linear_init(k[1], D, (H,), dtype),
        W_xh=linear_init(k[2], D, (D, H), dtype), b_h=linear_init(k[3], D, (H,), dtype),
        W_hq=linear_init(k[4], H, (H, Q), dtype), b_q=linear_init(k[5], H, (Q,), dtype))


def log_keep(params: MinGRUParams, x_t: Array) -> Array:
    """log(1 - z_t) = -softplus(x_t W_xz + b_z): (B, H)."""
    return -jax.nn.softplus(affine(params.W_xz, params.b_z, x_t))


def mingru(log_space: bool = False) -> Cell:
    """The minGRU cell (Feng et al. 2024), direct or in log space.

    Args:
      log_space: the paper's log-space form (see the module's docstring); False: the direct
        form h_t = (1 - z_t) h_{t-1} + z_t h~_t with h_0 = 0.

    Returns:
      A Cell whose state is h_t (B, H); `recurrent` is the update gate's (W_xz, b_z).
    """
    def linear(params, x_t):  # (1 - z_t, z_t h~_t), or their logs (the log-space form)
        k = affine(params.W_xz, params.b_z, x_t)
        a_h = affine(params.W_xh, params.b_h, x_t)
        if log_space:
            return -jax.nn.softplus(k), -jax.nn.softplus(-k) + log_g(a_h)
        return jax.nn.sigmoid(-k), jax.nn.sigmoid(k) * a_h  # 1 - z_t = sigmoid(-k_t)

    return Cell(name="mingru", init=init_params,
                initial_state=functools.partial(zero_or_half, log_space=log_space),
                step=linear_step(linear, log_space), readout=readout, hidden=lambda h: h,
                recurrent=RECURRENT, linear=linear, linear_log=log_space)


@functools.cache
def seed_terms(log_space: bool, kind: str | None = None, loss_at: str | None = None):
    """`make_profile_terms` of the minGRU vmapped over seeds and jitted, once per setting."""
    return jax.jit(jax.vmap(make_profile_terms(mingru(log_space), log_keep, kind, loss_at)))


def make_theory(seed_terms: Callable[..., Callable], name: str, gate: str) -> Callable:
    """A cell's `theory` (its CellSpec's) from its `seed_terms(log_space[, kind, loss_at])`:
    the exact gradient profile (the loss at the last step), dL/dh_t = dL/dh_T * prod_{s>t}
    (the coefficient `gate` of h_{s-1}), from the gates of the probe's batch and dL/dh_T of its
    targets; its slope by the headline's fit, beside the measured one (`exact_theory`). Without
    the targets only the gate's statistics. With loss_at=all the profile is the last step's
    loss term's (the measured sum of every step's term is flatter; summary.json's `applies` is
    false then).

    The theory's arguments: cell (unused: the setting is rebuilt from `options`); params
    ((S, ...) leaves); x ((S, B, T...) probe batches); measured (the measured slope); y, kind,
    loss_at (the targets and the probe's loss: all three, or none); options (the cell's:
    log_space).
    """

    def theory(cell: Cell, params, x: Array, measured: float, y: Array | None = None,
               kind: str | None = None, loss_at: str | None = None, **options) -> dict:
        del cell
        log_space = options.get("log_space", False)
        has_targets = y is not None and kind is not None and loss_at is not None
        terms = seed_terms(log_space, kind, loss_at) if has_targets else seed_terms(log_space)
        return exact_theory(terms, name, gate, params, jnp.asarray(x), measured,
                            jnp.asarray(y) if has_targets else None, log_space)

    return theory


theory = make_theory(seed_terms, "minGRU", "1 - z (keep of the update gate)")


def label(options: dict) -> str:
    return "log space" if options["log_space"] else ""


def cost(options: dict, H: int) -> int:
    """Floats per step and per sequence autodiff keeps (tests/test_mingru.py measures them)."""
    return (12 if options["log_space"] else 6) * H


SPEC = CellSpec(
    build=mingru,
    options={"log_space": log_space_option()},
    activations=("tanh",),
    inits=("normal",),
    theory=theory,
    label=label,
    cost=cost,
    help="Feng et al. (2024)'s minGRU: gates of the input only, h_t = (1 - z) h + z h~; "
         "exact gradient profile",
    order=5,
)
