"""The Linear Recurrent Unit (LRU) of Orvieto et al. (2023), "Resurrecting Recurrent Neural
Networks for Long Sequences", as one recurrent layer with an output layer:

    lambda = exp(-exp(nu_log) + i exp(theta_log))                    (H,) complex, |lambda| < 1
    h_t = lambda * h_{t-1} + gamma * (x_t B),   B = B_re + i B_im,   h_0 = 0   (B, H) complex
    y_t = Re(h_t C) + x_t D,                    C = C_re + i C_im  (H, H)       (B, H) real
    o_t = y_t W_hq + b_q                                                        (B, Q)

with gamma = exp(gamma_log), initialized to sqrt(1 - |lambda|^2) when `normalize` (the paper's
normalization of the input), else 1. x_t is a one-hot row for token inputs (x_t B and x_t D are
then row lookups) or the real input.

A deviation from the paper: there the input, the state's read-out and the output share the
model's width, and the skip term is elementwise, D * x_t with D (H,). Here the input's width D
(a vocabulary, or the adding problem's 2 channels) differs from the model's width H, so y_t has
the width H of every other cell's hidden output and the skip is a (D, H) matrix: the paper's
diagonal D is the special case D = H with a diagonal matrix. With an elementwise skip y_t would
have the input's width, and the output layer would see only D numbers (2 for the adding
problem), a bottleneck no other cell has.

Initialization follows the paper's appendix code: |lambda|^2 uniform on [r_min^2, r_max^2]
(uniform on the ring's area), the phase uniform on [0, max_phase],
nu_log = log(-log(u1 (r_max^2 - r_min^2) + r_min^2) / 2), theta_log = log(max_phase u2).
That code scales each projection by its fan-in: B ~ N(0, 1/(2 fan_in)) per part, C ~ N(0,
1/fan_in) per part, and its diagonal D, whose fan-in is 1, N(0, 1). Here, by the same rule:
B (D, H) ~ N(0, 1/(2D)) per part, C (H, H) ~ N(0, 1/H) per part and D (D, H) ~ N(0, 1/D), so
that for unit-variance inputs the skip's variance per unit is the paper's (1), and so is its
ratio to Re(h_t C). The output layer W_hq, b_q is the paper's model's decoder, a dense layer:
LeCun normal N(0, 1/H), bias 0 (flax's Dense, which the public JAX ports use, truncates it at
two standard deviations; this one does not).

The cell is linear from x_t to o_t: the paper's block puts a nonlinear layer (MLP or GLU) after
y_t, which this single layer does not have.
"""

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from rnnjax.core.cells.base import Cell
from rnnjax.core.cells.lru_exact import exact_log10_profile, expected_sensitivity
from rnnjax.core.cells.registry import CellSpec, Option
from rnnjax.core.losses import make_loss
from rnnjax.core.stats import finite_median, slope_of_log10

# The paper's ring for most tasks (Section 3.3: r_min 0.9, r_max 0.999) and the full phase
# range [0, 2 pi] (its appendix code writes 6.28). Its code's own signature defaults, r_min 0
# and r_max 1, are placeholders; r_min 0 is outside the range this cell takes.
R_MIN = 0.9
R_MAX = 0.999
MAX_PHASE = 2 * math.pi


class LRUParams(NamedTuple):
    """Parameters of one LRU network (a leading seed axis S is added by `vmap`)."""

    nu_log: Array  # (H,) log(-log|lambda|)
    theta_log: Array  # (H,) log(arg lambda)
    gamma_log: Array  # (H,) log gamma, the input normalization (0 when not normalized)
    B_re: Array  # (D, H) real part of the input matrix, one row per token
    B_im: Array  # (D, H) imaginary part
    C_re: Array  # (H, H) real part of the read-out matrix
    C_im: Array  # (H, H) imaginary part
    D: Array  # (D, H) the skip from the input x_t D, one row per token
    W_hq: Array  # (H, Q) output layer
    b_q: Array  # (Q,)


class LRUState(NamedTuple):
    """The state after step t: h_t, and the read-out's skip term x_t D (it does not depend on
    the previous state; it is carried so that the read-out is a function of the state)."""

    h: Array  # (B, H) complex: complex64 for float32 parameters, complex128 for float64
    skip: Array  # (B, H) real: x_t D


def eigenvalues(params: LRUParams) -> Array:
    """lambda = exp(-exp(nu_log) + i exp(theta_log)): (H,) complex."""
    return jnp.exp(-jnp.exp(params.nu_log) + 1j * jnp.exp(params.theta_log))


def ring_init(key: Array, H: int, r_min: float, r_max: float, max_phase: float,
              dtype=jnp.float32) -> tuple[Array, Array]:
    """The paper's ring initialization: (nu_log, theta_log), each (H,).

    |lambda|^2 is uniform on [r_min^2, r_max^2] and arg lambda uniform on [0, max_phase]:
    u1, u2 ~ U[0, 1), nu_log = log(-log(u1 (r_max^2 - r_min^2) + r_min^2) / 2),
    theta_log = log(max_phase u2).
    """
    u1, u2 = jax.random.uniform(key, (2, H), dtype)
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    theta_log = jnp.log(max_phase * u2)
    return nu_log, theta_log


def normalization_log(nu_log: Array) -> Array:
    """log sqrt(1 - |lambda|^2) for |lambda| = exp(-exp(nu_log)): (H,).

    1 - |lambda|^2 is computed as -expm1(-2 exp(nu_log)), exact for |lambda| near 1, where
    1 - |lambda|^2 itself would lose its digits.
    """
    return 0.5 * jnp.log(-jnp.expm1(-2 * jnp.exp(nu_log)))


class Ring(NamedTuple):
    """The ring initialization's options (see `ring_init`)."""

    r_min: float = R_MIN
    r_max: float = R_MAX
    max_phase: float = MAX_PHASE


def init_params(key: Array, D: int, H: int, Q: int, ring: Ring | None = None,
                normalize: bool = True, dtype=jnp.float32) -> LRUParams:
    """Initial parameters of one network, as the paper's appendix code draws them.

    Args:
      key: a PRNG key.
      D: input size (vocabulary or channels). H: complex hidden units. Q: output size.
      ring: the ring's options (see `ring_init`; None: the paper's).
      normalize: gamma_log = log sqrt(1 - |lambda|^2); else 0 (gamma = 1).
      dtype: parameter dtype (float32 or float64).

    Returns:
      LRUParams with nu_log, theta_log, gamma_log (H,), B_re, B_im (D, H), C_re, C_im (H, H),
      D (D, H), W_hq (H, Q), b_q (Q,).
    """
    k_ring, k_w = jax.random.split(key)
    nu_log, theta_log = ring_init(k_ring, H, *(ring or Ring()), dtype)
    gamma_log = normalization_log(nu_log) if normalize else jnp.zeros((H,), dtype)
    # One draw for every Gaussian matrix (each random draw is compiled on its own), split up.
    sizes = [D * H, D * H, H * H, H * H, D * H, H * Q]
    w = jnp.split(jax.random.normal(k_w, (sum(sizes),), dtype), np.cumsum(sizes)[:-1])
    return LRUParams(
        nu_log=nu_log,
        theta_log=theta_log,
        gamma_log=gamma_log,
        B_re=w[0].reshape(D, H) / math.sqrt(2 * D),
        B_im=w[1].reshape(D, H) / math.sqrt(2 * D),
        C_re=w[2].reshape(H, H) / math.sqrt(H),
        C_im=w[3].reshape(H, H) / math.sqrt(H),
        D=w[4].reshape(D, H) / math.sqrt(D),
        W_hq=w[5].reshape(H, Q) / math.sqrt(H),
        b_q=jnp.zeros((Q,), dtype),
    )


def skip_term(params: LRUParams, x_t: Array) -> Array:
    """x_t D: (B, H) real; a row lookup of D for (B,) tokens, a matmul for (B, D) inputs."""
    if jnp.issubdtype(x_t.dtype, jnp.integer):
        return params.D[x_t]
    return x_t.astype(params.D.dtype) @ params.D


def input_drive(params: LRUParams, x_t: Array) -> Array:
    """x_t B: (B, H) complex; a row lookup of B for tokens."""
    if jnp.issubdtype(x_t.dtype, jnp.integer):
        return params.B_re[x_t] + 1j * params.B_im[x_t]
    x = x_t.astype(params.B_re.dtype)
    return x @ params.B_re + 1j * (x @ params.B_im)


def lru_step(params: LRUParams, lam: Array, normalize: bool, state: LRUState,
             x_t: Array) -> LRUState:
    """One step with the eigenvalues `lam` (H,) given, so that they can be varied on their own
    (the gradient with respect to lambda itself). gamma = exp(gamma_log) when `normalize`."""
    u = input_drive(params, x_t)
    if normalize:
        u = jnp.exp(params.gamma_log) * u
    return LRUState(h=lam * state.h + u, skip=skip_term(params, x_t))


def lru_readout(params: LRUParams, state: LRUState) -> Array:
    """o_t = (Re(h_t C) + x_t D) W_hq + b_q: (B, Q)."""
    h = state.h
    y = h.real @ params.C_re - h.imag @ params.C_im + state.skip
    return y @ params.W_hq + params.b_q


def zero_state(params: LRUParams, B: int) -> LRUState:
    """The state before the first step: h_0 = 0 (complex of the parameters' precision), and a
    zero skip term."""
    H, dtype = params.nu_log.shape[0], params.nu_log.dtype
    return LRUState(h=jnp.zeros((B, H), jnp.result_type(dtype, jnp.complex64)),
                    skip=jnp.zeros((B, H), dtype))


def lru(r_min: float = R_MIN, r_max: float = R_MAX, max_phase: float = MAX_PHASE,
        normalize: bool = True) -> Cell:
    """The LRU cell (Orvieto et al. 2023). The recurrence is linear and the paper's
    initialization is used: `activation` and `init` do not apply.

    Args:
      r_min, r_max: |lambda| of the ring initialization, 0 < r_min <= r_max <= 1.
      max_phase: arg lambda uniform on [0, max_phase].
      normalize: gamma = sqrt(1 - |lambda|^2) at initialization (a trained parameter, as in the
        paper's code), else gamma = 1 (gamma_log is then 0 and unused).

    Returns:
      A Cell whose state is `LRUState` (h_t complex, x_t D); `hidden` is h_t and `recurrent` the
      eigenvalues' parameters (nu_log, theta_log).
    """
    def init_fn(key, D, H, Q, dtype=jnp.float32):
        return init_params(key, D, H, Q, Ring(r_min, r_max, max_phase), normalize, dtype)

    def step(params, state, x_t):
        return lru_step(params, eigenvalues(params), normalize, state, x_t)

    def linear(params, x_t):
        # h_t = lambda h_{t-1} + gamma x_t B; the skip term does not depend on the state
        zero = LRUState(h=jnp.zeros((), jnp.result_type(params.nu_log.dtype, jnp.complex64)),
                        skip=jnp.zeros((), params.nu_log.dtype))
        return (LRUState(h=eigenvalues(params), skip=zero.skip),
                lru_step(params, eigenvalues(params), normalize, zero, x_t))

    return Cell(name="lru", init=init_fn, initial_state=zero_state, step=step,
                readout=lru_readout, hidden=lambda s: s.h, recurrent=("nu_log", "theta_log"),
                linear=linear)


def _modulus(r: float) -> str | None:
    return None if 0 < r <= 1 else "must be in (0, 1] (a modulus |lambda| of the ring " \
                                   "initialization)"


def _phase(m: float) -> str | None:
    return None if 0 <= m < math.inf else "must be a finite number >= 0 (the phases of " \
                                          "lambda are uniform on [0, cell.max_phase])"


OPTIONS = {
    "r_min": Option(R_MIN, float, "smallest |lambda| of the ring, in (0, 1] (the paper's "
                    "Section 3.3)", _modulus),
    "r_max": Option(R_MAX, float, "largest |lambda|, in [r_min, 1]", _modulus),
    "max_phase": Option(MAX_PHASE, float, "arg lambda uniform on [0, max_phase] (2 pi)",
                        _phase),
    "normalize": Option(True, bool, "gamma = sqrt(1 - |lambda|^2) on the input (trained), "
                        "else gamma = 1"),
}


def check(options: dict) -> str | None:
    """The ring's order, which no single option can check (each option checks itself)."""
    if options["r_min"] > options["r_max"]:
        return (f"cell.r_min={options['r_min']} is invalid: must be <= cell.r_max="
                f"{options['r_max']} (equal is allowed)")
    return None


def label(options: dict) -> str:
    """The ring, "r=0.9" or "|λ| in [0.9, 0.999]", and the other options where they differ
    from their defaults ("max_phase=3.14", "unnormalized")."""
    lo, hi = options["r_min"], options["r_max"]
    parts = [f"r={lo:g}" if lo == hi else f"|λ| in [{lo:g}, {hi:g}]"]
    if options["max_phase"] != MAX_PHASE:
        parts.append(f"max_phase={options['max_phase']:g}")
    if not options["normalize"]:
        parts.append("unnormalized")
    return ", ".join(parts)


# ----------------------------------------------------------------------------- theory


class LambdaTerms(NamedTuple):
    """What one forward pass gives about the eigenvalues, for one network and one batch."""

    # (H,) complex: dL/dRe(lambda) + i dL/dIm(lambda), with gamma held fixed (it is its own
    # parameter); zeros without targets
    lambda_grad: Array
    # (H,) sum over the batch of |dL/dh_T|^2 through step T's read-out: with the loss at the
    # last step this is the total derivative, the weights of the exact profile
    last_weights: Array
    # () root mean square over the batch and units of |dh_T/dlambda| (no targets needed)
    sensitivity_rms: Array


def make_lambda_terms(normalize: bool, kind: str | None = None, loss_at: str | None = None
                      ) -> Callable[..., LambdaTerms]:
    """Builds `terms(params, x, y=None) -> LambdaTerms` for one network and one batch.

    One forward scan carries h_t and its sensitivity s_t = dh_t/dlambda (s_t = lambda s_{t-1}
    + h_{t-1}, elementwise: unit k depends on lambda_k only), so memory stays O(B H) however
    long T is. With L = sum_t l_t(h_t), dL/dlambda = sum_t sum_b conj(s_t) dl_t/dh_t, where
    dl_t/dh_t = dl_t/dRe h_t + i dl_t/dIm h_t is taken through step t's read-out.

    Args:
      normalize: the cell's option.
      kind, loss_at: the probe's loss ("tokens" or "regression"; "all" or "last"); None when
        there are no targets (only the sensitivity is computed).
    """
    loss = make_loss(kind, loss_at) if kind is not None else None

    def local_grad(params, state, l_t):
        # dl/dRe h + i dl/dIm h through the read-out of this step
        def f(h_re, h_im):
            return l_t(lru_readout(params, state._replace(h=h_re + 1j * h_im))[None])

        g_re, g_im = jax.grad(f, argnums=(0, 1))(state.h.real, state.h.imag)
        return g_re + 1j * g_im

    def terms(params, x, y=None):
        B, T = x.shape[:2]
        lam = eigenvalues(params)
        H, cdtype = lam.shape[0], lam.dtype
        state0 = zero_state(params, B)
        every_step = loss is not None and loss_at == "all"

        def step(carry, inputs):
            state, s, acc = carry
            x_t, t = inputs
            s = lam * s + state.h
            state = lru_step(params, lam, normalize, state, x_t)
            if every_step:  # l_t = the step's batch-mean loss / T: L is their sum
                y_t = jax.lax.dynamic_slice_in_dim(y, t, 1, axis=1)
                g = local_grad(params, state, lambda o: loss(o, y_t) / T)
                acc = acc + jnp.sum(jnp.conj(s) * g, axis=0)
            return (state, s, acc), None

        zero = jnp.zeros((B, H), cdtype)
        (state, s, acc), _ = jax.lax.scan(step, (state0, zero, jnp.zeros((H,), cdtype)),
                                          (jnp.swapaxes(x, 0, 1), jnp.arange(T)))
        sens = jnp.sqrt(jnp.mean(jnp.abs(s) ** 2))
        if loss is None:
            return LambdaTerms(acc, jnp.zeros((H,), lam.real.dtype), sens)
        # step T's read-out: with loss_at=last it is all of dL/dh_T; with loss_at=all it is
        # the same targets' gradient / T, so the weights have the same shape
        last = local_grad(params, state, lambda o: loss(o, y if loss_at == "last" else y[:, -1:]))
        if not every_step:
            acc = jnp.sum(jnp.conj(s) * last, axis=0)
        return LambdaTerms(acc, jnp.sum(jnp.abs(last) ** 2, axis=0), sens)

    return terms


def parameter_grads(params: LRUParams, lambda_grad: Array) -> tuple[Array, Array]:
    """dL/dnu_log and dL/dtheta_log (each (H,)) from dL/dlambda, by the chain rule through
    lambda = exp(a + i b), a = -exp(nu_log), b = exp(theta_log) (no division: exact at
    |lambda| = 1 and at phase 0)."""
    lam = eigenvalues(params)
    prod = jnp.conj(lambda_grad) * lam
    return prod.real * -jnp.exp(params.nu_log), -prod.imag * jnp.exp(params.theta_log)


@functools.cache
def _seed_terms(normalize: bool, kind: str | None = None, loss_at: str | None = None):
    """`make_lambda_terms` and `parameter_grads` vmapped over seeds and jitted, once per process
    and setting (the jobs of a sweep run in one process): (params, x[, y]) -> (LambdaTerms,
    (dL/dnu_log, dL/dtheta_log)), each with a leading seed axis."""
    terms = make_lambda_terms(normalize, kind, loss_at)

    def one(params, x, y=None):
        t = terms(params, x, y)
        return t, parameter_grads(params, t.lambda_grad)

    return jax.jit(jax.vmap(one))


def fitted_log10_slope(log10_profile: np.ndarray) -> float:
    """The slope per step back of a log10 profile, by the headline's rule
    (`rnnjax.core.stats.slope_of_log10`)."""
    return slope_of_log10(log10_profile)[0]


def theory(cell: Cell, params: LRUParams, x: Array, measured: float, y: Array | None = None,
           kind: str | None = None, loss_at: str | None = None, **options) -> dict:
    """The LRU's exact gradient profile and its curse-of-memory numbers, at initialization.

    The prediction (the loss at the last step): dL/dh_t = dL/dh_T lambda^(T - t) elementwise,
    so log10 ||dL/dh_t|| is exactly the weighted mix of `exact_log10_profile`, fitted with the
    headline's window; with r_min = r_max = r every |lambda_k| = r and the slope is log10 r
    exactly, whatever the weights. The weights need the targets `y`: without them the
    prediction is given for r_min = r_max only.

    Args:
      cell: the job's cell. params: (S, ...) leaves. x: (S, B, T...) probe batches.
      measured: the measured median slope.
      y: (S, B, T) or (S, B) the batches' targets; kind, loss_at: the probe's loss. Without
        them, the gradients with respect to lambda are not computed (None).
      options: the cell's (r_min, r_max, normalize; the defaults where absent).

    Returns:
      A dict for summary.json: prediction, predicted_log10_slope_per_step_back (median over
      seeds) and per seed; r and inverse_one_minus_r = 1/(1 - r) when r_min = r_max;
      lambda_grad_norm = ||dL/dlambda|| (median over seeds; gamma held fixed) and per seed,
      nu_log_grad_norm and theta_log_grad_norm (the same gradient through the cell's own
      parameters), state_lambda_sensitivity = RMS |dh_T/dlambda| over the batch and units
      (median over seeds) and, for token inputs, state_lambda_sensitivity_iid, its expected
      value for i.i.d. uniform tokens (`expected_sensitivity`).
    """
    del cell
    r_min, r_max = options.get("r_min", R_MIN), options.get("r_max", R_MAX)
    normalize = options.get("normalize", True)
    has_targets = y is not None and kind is not None and loss_at is not None
    fn = _seed_terms(normalize, kind, loss_at) if has_targets else _seed_terms(normalize)
    args = (params, jnp.asarray(x)) + ((jnp.asarray(y),) if has_targets else ())
    terms, (g_nu, g_theta) = fn(*args)
    T = x.shape[2]
    host = jax.tree.map(np.asarray, params)  # per-seed slices in numpy, not one dispatch each
    log_r = -np.exp(np.asarray(host.nu_log, np.float64))  # (S, H) ln |lambda|
    equal = r_min == r_max
    if has_targets:
        weights = np.asarray(terms.last_weights, np.float64)
        slopes = [fitted_log10_slope(exact_log10_profile(lr, w, T))
                  for lr, w in zip(log_r, weights, strict=True)]
    elif equal:  # every |lambda_k| = r: the slope is log10 r, whatever the weights
        slopes = [float(np.mean(lr)) / math.log(10) for lr in log_r]
    else:
        slopes = None
    predicted = finite_median(slopes) if slopes is not None else None
    out = {
        "prediction": "exact (LRU)" if slopes is not None else None,
        "predicted_log10_slope_per_step_back": predicted,
        "predicted_log10_slope_per_seed": slopes,
        "measured_minus_predicted": (measured - predicted) if slopes is not None else None,
        "lambda_modulus_min": float(np.exp(log_r.min())),
        "lambda_modulus_max": float(np.exp(log_r.max())),
        "r": r_min if equal else None,
        "inverse_one_minus_r": 1 / (1 - r_min) if equal and r_min < 1 else None,
        "normalize": bool(normalize),
        "state_lambda_sensitivity": finite_median(np.asarray(terms.sensitivity_rms, np.float64)),
        # for token inputs, whose drives are i.i.d. draws of B's rows on the random task
        "state_lambda_sensitivity_iid": finite_median(
            [expected_sensitivity(jax.tree.map(lambda a, s=s: a[s], host), T, normalize)
             for s in range(x.shape[0])]) if jnp.issubdtype(x.dtype, jnp.integer) else None,
        "lambda_grad_norm": None,
        "lambda_grad_norm_per_seed": None,
        "nu_log_grad_norm": None,
        "theta_log_grad_norm": None,
    }
    if has_targets:
        g = np.asarray(terms.lambda_grad)
        per_seed = np.linalg.norm(g, axis=1)
        out.update(lambda_grad_norm=finite_median(per_seed),
                   lambda_grad_norm_per_seed=per_seed.tolist(),
                   nu_log_grad_norm=finite_median(np.linalg.norm(np.asarray(g_nu), axis=1)),
                   theta_log_grad_norm=finite_median(np.linalg.norm(np.asarray(g_theta), axis=1)))
    return out


SPEC = CellSpec(
    build=lru,
    options=OPTIONS,
    activations=("tanh",),
    inits=("normal",),
    check=check,
    theory=theory,
    label=label,
    # per step: two complex (B, H) arrays, 2 floats a unit (what autodiff saves;
    # tests/test_cells.py measures it)
    cost=lambda options, H: 4 * H,
    help="Orvieto et al. (2023)'s linear recurrent unit: complex diagonal lambda on a ring",
    order=4,
)
