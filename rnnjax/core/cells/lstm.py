"""The long short-term memory cell of d2l 10.1 (Hochreiter & Schmidhuber 1997; with the forget
gate of Gers et al. 2000), in row-vector form.

    I_t = sigmoid(X_t W_xi + H_{t-1} W_hi + b_i)                  input gate
    F_t = sigmoid(X_t W_xf + H_{t-1} W_hf + b_f)                  forget gate
    C~_t = tanh(X_t W_xc + H_{t-1} W_hc + b_c)                    input node
    C_t = F_t * C_{t-1} + I_t * C~_t                              memory cell
    O_t = sigmoid(X_t W_xo + H_{t-1} W_ho [+ C_t * w_co] + b_o)   output gate
    H_t = O_t * tanh(C_t),      O_t W_hq + b_q the read-out,      H_0 = C_0 = 0.

The state is (H_t, C_t). `peephole` adds the bracketed term: a learned vector w_co (H,) through
which the output gate sees the new cell C_t (the diagonal peephole of Gers & Schmidhuber 2000;
the code of Arjovsky et al. 2016 has a full matrix there, C_t V_o with V_o (H, H)).
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from rnnjax.core.cells.base import Cell
from rnnjax.core.cells.gated import gate_theory, initializers, mean_gates
from rnnjax.core.cells.registry import CellSpec, Option
from rnnjax.core.cells.vanilla import step_drive


def _finite(value: float) -> str | None:
    if math.isfinite(value):
        return None
    return "must be a finite number (d2l: 0; Jozefowicz et al. 2015: 1)"


OPTIONS = {
    "forget_bias": Option(0.0, float, "initial b_f (d2l: 0; Jozefowicz et al. 2015: 1)",
                          _finite),
    "peephole": Option(False, bool, "the output gate sees C_t through a learned w_co (H,)"),
}


class LSTMParams(NamedTuple):
    """Parameters of one LSTM network (a leading seed axis S is added by `vmap`)."""

    W_xi: Array  # (D, H) input to input gate, one row per token
    W_hi: Array  # (H, H)
    b_i: Array  # (H,)
    W_xf: Array  # (D, H) input to forget gate
    W_hf: Array  # (H, H)
    b_f: Array  # (H,) starts at cell.forget_bias
    W_xo: Array  # (D, H) input to output gate
    W_ho: Array  # (H, H)
    b_o: Array  # (H,)
    W_xc: Array  # (D, H) input to input node
    W_hc: Array  # (H, H)
    b_c: Array  # (H,)
    W_hq: Array  # (H, Q) hidden to output
    b_q: Array  # (Q,)
    # (H,) the peephole, cell C_t to output gate, elementwise; None without `peephole` (JAX
    # takes None for an empty subtree: vmap, grad and optax leave it alone)
    w_co: Array | None = None


RECURRENT = ("W_hi", "W_hf", "W_ho", "W_hc")

State = tuple[Array, Array]  # (H_t, C_t), each (B, H)


def initial_state(params, B: int) -> State:
    """(H_0, C_0) = (0, 0), each (B, H)."""
    z = jnp.zeros((B, params.W_hi.shape[0]), params.W_hi.dtype)
    return z, z


def tapped_step_with_gate(params, state: State, x_t: Array, taps: dict[str, Array] | None
                          ) -> tuple[State, Array]:
    """((H_t, C_t), F_t): one step and its forget gate; `taps["cell"]` (B, H), when given, is
    added to C_t right after it is computed, before the output gate and H_t read it."""
    p = params
    h, c = state
    i = jax.nn.sigmoid(step_drive(p.W_xi, x_t) + h @ p.W_hi + p.b_i)
    f = jax.nn.sigmoid(step_drive(p.W_xf, x_t) + h @ p.W_hf + p.b_f)
    node = jnp.tanh(step_drive(p.W_xc, x_t) + h @ p.W_hc + p.b_c)
    c = f * c + i * node
    if taps:
        c = c + taps["cell"]
    a_o = step_drive(p.W_xo, x_t) + h @ p.W_ho + p.b_o
    if p.w_co is not None:
        a_o = a_o + c * p.w_co
    h = jax.nn.sigmoid(a_o) * jnp.tanh(c)
    return (h, c), f


def step_with_gate(params, state: State, x_t: Array) -> tuple[State, Array]:
    """((H_t, C_t), F_t): one step and its forget gate."""
    return tapped_step_with_gate(params, state, x_t, None)


def lstm(init: str = "normal", init_value=None, forget_bias: float = 0.0,
         peephole: bool = False) -> Cell:
    """d2l's LSTM cell (d2l 10.1); the input node's and the cell output's nonlinearity is tanh.

    Args:
      init: the initializer of W_hi, W_hf, W_ho and W_hc (one of `rnnjax.core.init.INITS`). With
        `normal` every weight matrix is N(0, std^2), exactly d2l's scratch LSTM, and so is w_co;
        with the others the input matrices and W_hq are Glorot normal and w_co is N(0, 1 / H)
        (Glorot for a vector with fan-in and fan-out H, as Keras's peephole weights).
      init_value: the initializer's parameter (std, gain or radius; None: its default).
      forget_bias: the initial value of every entry of b_f (d2l: 0; Jozefowicz et al. 2015: 1);
        the other biases start at 0.
      peephole: add the output gate's peephole w_co (else the params' w_co is None).

    Returns:
      A Cell whose state is (H_t, C_t), with the tap "cell": the total derivative dL/dC_t.
    """
    w_h_init, io_init = initializers(init, init_value)

    def init_fn(key, D, H, Q, dtype=jnp.float32):
        k = dict(zip(("xi", "hi", "xf", "hf", "xo", "ho", "co", "xc", "hc", "hq"),
                     jax.random.split(key, 10), strict=True))
        zeros = jnp.zeros((H,), dtype)
        p = dict(W_xi=io_init(k["xi"], (D, H), dtype), W_hi=w_h_init(k["hi"], (H, H), dtype),
                 b_i=zeros,
                 W_xf=io_init(k["xf"], (D, H), dtype), W_hf=w_h_init(k["hf"], (H, H), dtype),
                 b_f=jnp.full((H,), forget_bias, dtype),
                 W_xo=io_init(k["xo"], (D, H), dtype), W_ho=w_h_init(k["ho"], (H, H), dtype),
                 b_o=zeros,
                 W_xc=io_init(k["xc"], (D, H), dtype), W_hc=w_h_init(k["hc"], (H, H), dtype),
                 b_c=zeros,
                 W_hq=io_init(k["hq"], (H, Q), dtype), b_q=jnp.zeros((Q,), dtype))
        if not peephole:
            return LSTMParams(**p)
        if init == "normal":
            w_co = io_init(k["co"], (H,), dtype)
        else:  # Glorot's variance for fan-in = fan-out = H
            w_co = jax.random.normal(k["co"], (H,), dtype) / jnp.sqrt(jnp.asarray(H, dtype))
        return LSTMParams(**p, w_co=w_co)

    def step(params, state, x_t):
        return step_with_gate(params, state, x_t)[0]

    def tapped_step(params, state, x_t, taps):
        return tapped_step_with_gate(params, state, x_t, taps)[0]

    def readout(params, state):
        return state[0] @ params.W_hq + params.b_q

    return Cell(name="lstm", init=init_fn, initial_state=initial_state, step=step,
                readout=readout, hidden=lambda s: s[0],
                recurrent=RECURRENT + (("w_co",) if peephole else ()),
                taps=("cell",), tapped_step=tapped_step)


def theory(cell, params, x, measured, **options) -> dict:
    """The mean forget gate F_t at initialization over the probe batch (see
    `rnnjax.core.cells.gated.gate_theory`)."""
    del measured, options
    return gate_theory("forget gate F", mean_gates(step_with_gate, initial_state),
                       RECURRENT, params, x)


def label(options: dict) -> str:
    """"forget_bias=1, peephole"; "" for d2l's LSTM (forget_bias 0, no peephole)."""
    parts = [f"forget_bias={options['forget_bias']:g}"] if options["forget_bias"] != 0 else []
    return ", ".join(parts + (["peephole"] if options["peephole"] else []))


def cost(options: dict, H: int) -> int:
    """Per step: H_{t-1}, C_{t-1}, the four gates' outputs and derivatives, C_t and tanh'(C_t)
    (what autodiff saves; tests/test_cells.py measures it), and w_co * C_t's factor."""
    return (13 if options["peephole"] else 12) * H


SPEC = CellSpec(
    build=lstm,
    options=OPTIONS,
    activations=("tanh",),
    theory=theory,
    label=label,
    cost=cost,
    help="d2l's LSTM, state (H_t, C_t); init applies to W_h*; the probe also taps dL/dC_t",
    order=2,
)
