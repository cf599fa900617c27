"""The unitary evolution RNN (uRNN) of Arjovsky, Shah & Bengio (2016), with a complex state.

    z_t = W h_{t-1} + V x_t,    h_t = modReLU(z_t, b),    o_t = [Re h_t, Im h_t] W_hq + b_q,

    W = D3 R2 F^-1 D2 Pi R1 F D1,

with D_k = diag(exp(i theta_k)), reflections R_k = I - 2 v_k v_k^* / ||v_k||^2 (complex v_k),
F the unitary DFT (F_jk = exp(-2 pi i jk / n) / sqrt(n), `jnp.fft.fft(norm="ortho")`), Pi a
fixed permutation ((Pi u)_j = u_{pi(j)}) and modReLU(z, b) = z / |z| * relu(|z| + b) (0 at
z = 0). Every factor is unitary, so W preserves norms exactly; only modReLU changes them.

The state h_t is complex (B, H): complex64 with float32 parameters, complex128 with float64.
Parameters stay real (complex ones as re/im pairs), so optax trains them unchanged. The paper
writes column vectors (W h); a batch here is rows, each row mapped by W.
"""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from rnnjax.core.cells.registry import CellSpec
from rnnjax.core.cells.vanilla import step_drive

# The permutation Pi is a constant of the cell, the same for every network of a given H: the
# authors' code draws it as `np.random.permutation(n)` right after `np.random.seed(1234)`, so
# this reproduces their Pi exactly. Kept out of the parameters, which optax differentiates and
# updates (an integer leaf would break jax.grad; a float one would be trained).
PERMUTATION_SEED = 1234
RECURRENT = ("theta1", "theta2", "theta3", "v1_re", "v1_im", "v2_re", "v2_im")
MODRELU_BIAS = 0.01  # b ~ U[-0.01, 0.01], as in the authors' code


class URNNParams(NamedTuple):
    """Parameters of one uRNN (a leading seed axis S is added by `vmap`); all real."""

    theta1: Array  # (H,) phases of D1
    theta2: Array  # (H,) phases of D2
    theta3: Array  # (H,) phases of D3
    v1_re: Array  # (H,) reflection vector of R1, real part
    v1_im: Array  # (H,) reflection vector of R1, imaginary part
    v2_re: Array  # (H,) reflection vector of R2, real part
    v2_im: Array  # (H,) reflection vector of R2, imaginary part
    V_re: Array  # (D, H) input matrix V, real part, one row per token
    V_im: Array  # (D, H) input matrix V, imaginary part
    b: Array  # (H,) modReLU bias
    h0_re: Array  # (H,) learned initial state, real part
    h0_im: Array  # (H,) learned initial state, imaginary part
    W_hq: Array  # (2H, Q) read-out of [Re h, Im h] (the paper's U)
    b_q: Array  # (Q,) output bias (the paper's b_o)


@functools.cache
def permutation(H: int) -> np.ndarray:
    """(H,) int: pi of the fixed permutation Pi, (Pi u)_j = u_{pi(j)} (the authors' own)."""
    pi = np.random.RandomState(PERMUTATION_SEED).permutation(H)
    pi.setflags(write=False)
    return pi


def _complex(re: Array, im: Array) -> Array:
    return jax.lax.complex(re, im)


def phase(theta: Array, u: Array) -> Array:
    """D u for D = diag(exp(i theta)): theta (H,), u (..., H) complex."""
    return _complex(jnp.cos(theta), jnp.sin(theta)) * u


def reflect(v_re: Array, v_im: Array, u: Array) -> Array:
    """R u for R = I - 2 v v^* / ||v||^2: v = v_re + i v_im (H,), u (..., H) complex."""
    v = _complex(v_re, v_im)
    vhu = jnp.sum(jnp.conj(v) * u, axis=-1, keepdims=True)  # v^* u, (..., 1)
    return u - (2 / jnp.sum(v_re**2 + v_im**2)) * v * vhu


def fft(u: Array) -> Array:
    """F u, the unitary DFT along the last axis."""
    return jnp.fft.fft(u, axis=-1, norm="ortho")


def ifft(u: Array) -> Array:
    """F^-1 u = F^* u, the unitary inverse DFT along the last axis."""
    return jnp.fft.ifft(u, axis=-1, norm="ortho")


def recurrence(params: URNNParams, u: Array) -> Array:
    """W u = D3 R2 F^-1 D2 Pi R1 F D1 u for each row of u (..., H) complex: O(H log H)."""
    p = params
    u = fft(phase(p.theta1, u))
    u = reflect(p.v1_re, p.v1_im, u)[..., permutation(u.shape[-1])]
    u = ifft(phase(p.theta2, u))
    return phase(p.theta3, reflect(p.v2_re, p.v2_im, u))


def modrelu(z: Array, b: Array) -> Array:
    """z / |z| * relu(|z| + b), and 0 where z = 0 (where the gradient is 0 too, not NaN)."""
    nonzero = z != 0
    m = jnp.abs(jnp.where(nonzero, z, 1))  # |z| without a 0 / 0 in the gradient
    return z * jnp.where(nonzero, jax.nn.relu(m + b) / m, 0)


def drive(params: URNNParams, x_t: Array) -> Array:
    """V x_t for one step, (B, H) complex: x_t (B,) tokens (rows of V) or (B, D) real inputs."""
    return _complex(step_drive(params.V_re, x_t), step_drive(params.V_im, x_t))


def pre_activation(params: URNNParams, h: Array, x_t: Array) -> Array:
    """z_t = W h_{t-1} + V x_t, (B, H) complex."""
    return recurrence(params, h) + drive(params, x_t)


def _uniform(key: Array, shape: tuple[int, ...], bound, dtype) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)


def init_params(key: Array, D: int, H: int, Q: int, dtype=jnp.float32) -> URNNParams:
    """Initial parameters of one uRNN, as in the paper and the authors' code.

    Phases theta_k ~ U[-pi, pi] (D_k uniform on the unit circle); reflection vectors, real and
    imaginary parts ~ U[-1, 1]; V (re and im) and W_hq Glorot uniform,
    U[-sqrt(6 / (fan_in + fan_out)), +], as in the code (V: (D, H) each, W_hq: (2H, Q));
    b ~ U[-0.01, 0.01] (the code; the paper says 0); h0 re and im ~ U[-sqrt(3 / 2H), +], the
    paper's, so that E||h0||^2 = 1; b_q = 0.

    Args:
      key: a PRNG key.
      D: input size (vocabulary or channels). H: complex hidden units. Q: output size.
      dtype: parameter dtype (the state is the complex dtype of the same precision).

    Returns:
      URNNParams (field shapes in its definition).
    """
    keys = dict(zip(URNNParams._fields[:13], jax.random.split(key, 13), strict=True))
    pi = math.pi

    def u(name, shape, bound):
        return _uniform(keys[name], shape, bound, dtype)

    return URNNParams(
        theta1=u("theta1", (H,), pi), theta2=u("theta2", (H,), pi), theta3=u("theta3", (H,), pi),
        v1_re=u("v1_re", (H,), 1.0), v1_im=u("v1_im", (H,), 1.0),
        v2_re=u("v2_re", (H,), 1.0), v2_im=u("v2_im", (H,), 1.0),
        V_re=u("V_re", (D, H), math.sqrt(6 / (D + H))),
        V_im=u("V_im", (D, H), math.sqrt(6 / (D + H))),
        b=u("b", (H,), MODRELU_BIAS),
        h0_re=u("h0_re", (H,), math.sqrt(3 / (2 * H))),
        h0_im=u("h0_im", (H,), math.sqrt(3 / (2 * H))),
        W_hq=u("W_hq", (2 * H, Q), math.sqrt(6 / (2 * H + Q))),
        b_q=jnp.zeros((Q,), dtype),
    )


def initial_state(params: URNNParams, B: int) -> Array:
    """h_0 for every sequence of the batch: (B, H) complex."""
    h0 = _complex(params.h0_re, params.h0_im)
    return jnp.broadcast_to(h0, (B, h0.shape[0]))


def step(params: URNNParams, h: Array, x_t: Array) -> Array:
    """h_t = modReLU(W h_{t-1} + V x_t, b): h (B, H) complex, x_t (B,) int or (B, D)."""
    return modrelu(pre_activation(params, h, x_t), params.b)


def readout(params: URNNParams, h: Array) -> Array:
    """o_t = [Re h_t, Im h_t] W_hq + b_q: (B, Q) real."""
    return jnp.concatenate([h.real, h.imag], axis=-1) @ params.W_hq + params.b_q


def urnn() -> "Cell":  # noqa: F821
    """The uRNN cell. `activation` and `init` do not apply (the paper fixes modReLU and its
    initialization).

    Returns:
      A Cell whose state is h_t (B, H) complex; `recurrent` is the parameters of W (the
      phases and the reflection vectors), so `param_grad_norm` is step t's share of their
      gradient.
    """
    from rnnjax.core.cells.base import Cell

    return Cell(name="urnn", init=init_params, initial_state=initial_state, step=step,
                readout=readout, hidden=lambda h: h, recurrent=RECURRENT)


# ----------------------------------------------------------------------------- theory


def unitarity_error(params: URNNParams) -> Array:
    """max |W^* W - I| of one network's W (built by applying W to the identity's rows)."""
    H = params.theta1.shape[0]
    eye = jnp.eye(H, dtype=_complex(params.theta1, params.theta1).dtype)
    Wt = recurrence(params, eye)  # row j is (W e_j)^T: Wt = W^T, and W^* W = conj(Wt) Wt^T
    return jnp.max(jnp.abs(jnp.conj(Wt) @ Wt.T - eye))


def modrelu_stats(params: URNNParams, x: Array) -> tuple[Array, Array]:
    """What modReLU does to gradients along one probe batch x ((B, T) or (B, T, D)).

    Per unit with |z| + b > 0, the Jacobian of modReLU (in the real view) keeps the radial
    component of a cotangent (factor 1) and scales the tangential one by c = (|z| + b) / |z|;
    an off unit (|z| + b <= 0) passes nothing. For a cotangent spread evenly over the 2H real
    directions, one step back multiplies its squared norm by mean(on * (1 + c^2) / 2).

    Returns:
      off: () the fraction of units off, over steps, sequences and units.
      log10_factor: () the mean over steps of 0.5 log10 of that squared-norm factor (log10 per
        step back of the isotropic cotangent's norm).
    """

    def one(h, x_t):
        z = pre_activation(params, h, x_t)
        m = jnp.abs(z)
        on = m + params.b > 0
        c = jnp.where(on, (m + params.b) / jnp.where(m > 0, m, 1), 0)
        factor = jnp.mean(jnp.where(on, (1 + c**2) / 2, 0))
        return modrelu(z, params.b), (jnp.mean(~on, dtype=m.dtype), 0.5 * jnp.log10(factor))

    _, (off, log_f) = jax.lax.scan(one, initial_state(params, x.shape[0]), jnp.swapaxes(x, 0, 1))
    return jnp.mean(off), jnp.mean(log_f)


def theory(cell, params, x, measured: float, **options) -> dict:
    """The uRNN's theory beside the measured slope (log10 per step back).

    W is unitary, so the linear part of the recurrence preserves the gradient's norm exactly:
    the prediction is a slope of 0, and the deviation is what modReLU does (its off units and
    its tangential factors, `modrelu_stats`). Also W's distance from unitarity in the dtype.

    Args:
      cell: the uRNN cell (unused: the functions are the module's).
      params: URNNParams of S networks (leading axis S). x: (S, B, T...) their probe batches.
      measured: the measured median slope.
      options: the cell's options (it has none).
    """
    del cell, options
    err = jax.jit(jax.vmap(unitarity_error))(params)
    off, log_f = jax.jit(jax.vmap(modrelu_stats))(params, x)
    return {
        "predicted_log10_slope_per_step_back": 0.0,
        "prediction": "unitary W (norm-preserving)",
        "deviation_from_unitary_log10_per_step": measured,
        "unitarity_error_max": float(jnp.max(err)),
        "modrelu_off_fraction": float(np.median(np.asarray(off))),
        "modrelu_isotropic_log10_factor_per_step": float(np.median(np.asarray(log_f))),
    }


SPEC = CellSpec(
    build=urnn,
    activations=("tanh",),
    inits=("normal",),
    theory=theory,
    # per step: the complex intermediates of W's seven factors and of modReLU, and 4 floats of
    # the two reflections' v^* u (what autodiff saves; tests/test_cells.py measures it)
    cost=lambda options, H: 23 * H + 4,
    help="Arjovsky et al. (2016)'s unitary RNN: complex state, W = D3 R2 F^-1 D2 Pi R1 F D1",
    order=3,
)
