"""A stack of recurrent layers is itself a cell (`model.layers=L`): layer 1 reads the input,
each layer above reads the output of the layer below at the same step, and the stack's read-out
is the top layer's.

    s^1_t = step_1(s^1_{t-1}, x_t)
    s^l_t = step_l(s^l_{t-1}, o^{l-1}_t),   o^{l-1}_t = readout_{l-1}(s^{l-1}_t)  (B, H), l > 1
    o_t = readout_L(s^L_t)

The map between two layers is the lower layer's own output layer (initialized with Q = H
outputs, as that cell initializes its read-out: the vanilla RNN's H_t W_hq + b_q), so any cell
stacks with no knowledge of its kind, and layer l > 1 takes a real (B, H) input as the adding
problem's inputs are taken. That map is linear: there is no residual connection, no
normalization and no nonlinearity between the layers beyond each cell's own (Mamba's blocks,
for one, add both; this is the plain stacked RNN of d2l 10.3 and `torch.nn.RNN(num_layers=L)`,
whose layer l + 1 reads H^l_t through its own W_xh: here through W_hq^l then W_xh^{l+1}).

Per-layer total derivatives. The probe's cotangent of the state after step t, g_t, holds the
other outputs of step t fixed. For the top layer that is the total derivative dL/dH^L_t; a
lower layer's H^l_t also reaches the loss through layer l + 1 within the same step, a path g_t
does not see (with the loss at the last step g^l_T = 0 for every l < L). The total derivative
of each layer is the cotangent of s^l_t inside step t, which the stack's backward step forms
from the top down,

    G^L_t = g^L_t,    G^l_t = g^l_t + (d s^{l+1}_t / d s^l_t)^T G^{l+1}_t,

each layer's vector-Jacobian product taking its G^l_t to its previous state (the cotangent
passed back in time), to its recurrent parameters (that layer's share, `param_grad_norm`) and to
the layer below (its input, through the lower read-out). The backward returns the totals as a
fourth value (`Cell.layers`), and the probe reports ||hidden(G^l_t)|| for every layer.

Taps (the LSTM's dL/dC_t) are each layer's, for the tap names every layer has. A layer's own
faster backward step (the vanilla RNN's) is not used: the stack differentiates each layer by
`jax.vjp`, as `rnnjax.core.probes.generic_backward` does.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from rnnjax.core.cells.base import Cell, log10_norm


def stack(cells: Sequence[Cell]) -> Cell:
    """The cells as the layers of one cell, bottom (reads the input) to top (the read-out).

    Args:
      cells: L >= 1 cells; the same Cell L times for L layers of one kind.

    Returns:
      The stack: params a tuple of the layers' params, state a tuple of their states, `hidden`
      the tuple of their hidden outputs, `layers` = L. One cell is returned as it is (a
      one-layer stack is that cell: the same parameters, the same numbers).
    """
    cells = tuple(cells)
    if not cells:
        raise ValueError("stack: at least one cell is needed")
    if len(cells) == 1:
        return cells[0]
    L = len(cells)
    taps = tuple(k for k in cells[0].taps if all(k in c.taps for c in cells))

    def init(key, D, H, Q, dtype=jnp.float32):
        # every layer but the top maps to the next layer's H inputs
        keys = jax.random.split(key, L)
        return tuple(c.init(k, D if l == 0 else H, H, Q if l == L - 1 else H, dtype)
                     for l, (c, k) in enumerate(zip(cells, keys, strict=True)))

    def initial_state(params, B):
        return tuple(c.initial_state(p, B) for c, p in zip(cells, params, strict=True))

    def layer_input(params, state, l, x_t):
        """What layer l reads at step t: x_t, or the output of layer l - 1 (its new state)."""
        return x_t if l == 0 else cells[l - 1].readout(params[l - 1], state[l - 1])

    def one_step(cell, params, s, u, tap):
        return cell.tapped_step(params, s, u, tap) if tap else cell.step(params, s, u)

    def tapped_step(params, state, x_t, taps_):
        # taps_: name -> a tuple of each layer's perturbation (shaped like its hidden output)
        new = []
        for l, (c, p, s) in enumerate(zip(cells, params, state, strict=True)):
            tap = {k: v[l] for k, v in (taps_ or {}).items()}
            new.append(one_step(c, p, s, layer_input(params, new, l, x_t), tap))
        return tuple(new)

    def step(params, state, x_t):
        return tapped_step(params, state, x_t, None)

    def readout(params, state):
        return cells[-1].readout(params[-1], state[-1])

    def backward(params, state_prev, state, x_t, g):
        to_earlier, totals, log_pg = [None] * L, [None] * L, [None] * L
        log_taps = {k: [None] * L for k in taps}
        from_above = None  # the cotangent of s^l_t from layer l + 1's input at step t
        for l in reversed(range(L)):
            c, p = cells[l], params[l]
            G = g[l] if from_above is None else jax.tree.map(jnp.add, g[l], from_above)
            rec = {k: getattr(p, k) for k in c.recurrent}
            zeros = {k: jnp.zeros_like(c.hidden(state_prev[l])) for k in taps}
            if l == 0:  # the input x_t (tokens, perhaps) is not differentiated
                def f(rec, s, tap, c=c, p=p):
                    return one_step(c, p._replace(**rec), s, x_t, tap)

                _, vjp = jax.vjp(f, rec, state_prev[0], zeros)
                rec_bar, s_bar, tap_bar = vjp(G)
            else:
                below, p_below = cells[l - 1], params[l - 1]

                def f(rec, s, lower, tap, c=c, p=p, below=below, p_below=p_below):
                    return one_step(c, p._replace(**rec), s, below.readout(p_below, lower), tap)

                _, vjp = jax.vjp(f, rec, state_prev[l], state[l - 1], zeros)
                rec_bar, s_bar, from_above, tap_bar = vjp(G)
            to_earlier[l], totals[l], log_pg[l] = s_bar, G, log10_norm(rec_bar)
            for k in taps:
                log_taps[k][l] = log10_norm(tap_bar[k])
        return (tuple(to_earlier), jnp.stack(log_pg),
                {k: jnp.stack(v) for k, v in log_taps.items()}, tuple(totals))

    return Cell(
        name=cells[-1].name, init=init, initial_state=initial_state, step=step,
        readout=readout,
        hidden=lambda state: tuple(c.hidden(s) for c, s in zip(cells, state, strict=True)),
        # each layer's own (by name within its params; the backward step reads them per layer)
        recurrent=tuple(f"{l}.{k}" for l, c in enumerate(cells, 1) for k in c.recurrent),
        taps=taps, tapped_step=tapped_step, backward=backward, layers=L)
