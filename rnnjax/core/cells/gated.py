"""What the gated cells (`gru`, `lstm`) share: their weight initializers and the theory set
beside their measured slope (the mean update or forget gate at initialization)."""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from rnnjax.core.init import Initializer, make_init, xavier
from rnnjax.core.stats import effective_gain


def initializers(init: str, init_value=None) -> tuple[Initializer, Initializer]:
    """(initializer of every recurrent matrix W_h*, initializer of every W_x* and of W_hq).

    With `normal` every weight matrix is N(0, std^2), d2l's scratch GRU and LSTM; with any other
    init the W_h* are drawn by it (each independently) and the W_x* and W_hq are Glorot normal,
    as for the vanilla cell.
    """
    w_h = make_init(init, init_value)
    return w_h, (make_init("normal", init_value) if init == "normal" else xavier())


@functools.cache
def mean_gates(step_with_gate: Callable, initial_state: Callable) -> Callable[..., Array]:
    """`mean_gates(params, x) -> (S,)`, jitted: the mean of a cell's gate over a batch.

    Cached, so that a cell's theory compiles once per shape.

    Args:
      step_with_gate: (params, state, x_t) -> (state, gate (B, H)), for one network.
      initial_state: (params, B) -> state.

    Returns:
      mean_gates(params, x): for S networks (leading axis) and their batches x (S, B, T)
      tokens or (S, B, T, D) real inputs, the gate's mean over every step, unit and sequence.
    """

    def mean_gate(params, x):
        def f(s, x_t):
            s, g = step_with_gate(params, s, x_t)
            return s, jnp.mean(g)

        _, means = jax.lax.scan(f, initial_state(params, x.shape[0]), jnp.swapaxes(x, 0, 1))
        return jnp.mean(means)

    return jax.jit(jax.vmap(mean_gate))


# Why log10 of the mean gate is offered as the slope of ||dL/dH_t|| (the loss at the last step,
# at initialization) only for small recurrent matrices: the per-step Jacobian is diag(gate)
# (GRU: dH_t/dH_{t-1} = Z_t + ...; LSTM: the carousel dC_t/dC_{t-1} = F_t, which dL/dH_t follows
# through C_{t+1}) plus terms proportional to the W_h*. With W ~ N(0, g^2 / H) those terms are
# O(g) and, being the same matrices every step, shift the factor by O(g) rather than O(g^2):
# measured with d2l's N(0, 0.01^2) (gate 0.5), the slope lies 0.008 decades above log10 0.5 at
# H = 32 (g = 0.06), 0.013 at H = 64 (g = 0.08) and 0.019 at H = 128 (g = 0.11). Glorot or
# orthogonal W_h* (g = 1) are far from that regime: there only the mean gate is reported.
MAX_RECURRENT_GAIN = 0.15


def gate_theory(gate: str, mean_gate: Callable[..., Array], recurrent: tuple[str, ...],
                params, x) -> dict:
    """The mean gate at initialization beside the measured slope, for `summary.json`.

    Args:
      gate: what the gate is, in words ("update gate Z").
      mean_gate: `mean_gates`'s function.
      recurrent: the names of the recurrent matrices W_h* (their effective gain decides whether
        the mean gate is offered as the predicted slope).
      params: S networks (leading seed axis). x: (S, B, T...) their probe batches.

    Returns:
      gate, gate_mean (median over seeds of the mean over steps, units and sequences),
      gate_log10_mean (log10 of it), gate_log10_mean_per_seed, recurrent_gain (the largest
      sqrt(H mean(W^2)) over the W_h*, median over seeds), and, when that gain is at most
      MAX_RECURRENT_GAIN, predicted_log10_slope_per_step_back = gate_log10_mean with its
      "prediction" line.
    """
    means = np.asarray(mean_gate(params, x), np.float64)  # (S,)
    logs = np.log10(means)
    gains = np.max(np.stack([effective_gain(getattr(params, k)) for k in recurrent]),
                   axis=0)  # (S,)
    out = {
        "gate": gate,
        "gate_mean": float(np.median(means)),
        "gate_log10_mean": float(np.median(logs)),
        "gate_log10_mean_per_seed": logs.tolist(),
        "recurrent_gain": float(np.median(gains)),
    }
    if math.isfinite(out["gate_log10_mean"]) and out["recurrent_gain"] <= MAX_RECURRENT_GAIN:
        out["predicted_log10_slope_per_step_back"] = out["gate_log10_mean"]
        out["prediction"] = f"log10 mean {gate}"
    return out
