"""Arjovsky et al.'s LSTM at init, one factor at a time: `python experiments/arjovsky_lstm.py`.

Arjovsky, Shah & Bengio (2016, fig. 4, "after 0 iterations") show their LSTM's ‖dC/dh_t‖ on the
adding problem (T = 1000, H = 128, batch 20, the loss at the last step) at about 10^-1.5 at
t = 1000, 10^-20.7 at t ≈ 500 and below 10^-24 before t ≈ 455; the LSTM of fig4_urnn_gradients
(`cell=lstm init=xavier_uniform cell.forget_bias=1 cell.peephole=true`) falls about 16 decades
over all 1000 steps. This script probes variants that each change one thing, in float64 (no
underflow; float32 gives the same numbers down to 1e-38), with rnnjax's probe
(`rnnjax.make_probe`) on batches of rnnjax's adding task (their inputs: values in U[0, 1], one
mark in each half), each network on its own batch:

- `rnnjax fig4 LSTM`: the registered LSTM of the figure (W_h* Glorot uniform, W_x* and W_hq
  Glorot normal, forget bias 1, the diagonal peephole w_co ~ N(0, 1/H));
- `theirs`: the LSTM of their code (`models.py`, `LSTM`), written here as a `rnnjax.Cell`:
  every matrix U[±√(6/(fan_in + fan_out))], the input ones and the read-out too, forget bias 1,
  the other biases and h_0, c_0 zero, and the output gate's full peephole matrix V_o (H, H):
  O_t = sigmoid(X_t W_o + H_{t-1} U_o + C_t V_o + b_o);
- what is measured, on `theirs`: ‖dL/dH_t‖ (h: the figure's, rnnjax's `grad_norm`), the total
  ‖dL/dC_t‖ (c: rnnjax's `cell_grad_norm`), and the norm over the concatenated state [H_t, C_t];
- `theirs` with one change each (the same keys): the peephole diagonal (as rnnjax's) or none,
  Glorot normal instead of uniform, forget bias 0, and after one update of their training step
  (gradient entries clipped at 1, their RMSProp: lr 1e-3, decay 0.9, mean square starting at
  1e-3), on a batch of its own;
- the very weights their code draws (numpy `RandomState(1234)`: W_i, W_f, W_c, W_o, U_i, U_f,
  U_c, U_o, V_o, then the read-out, cast to float32 as Theano's floatX), one network on each
  batch, at initialization and after that one update; and, not theirs, with b_f = 0.85: the
  forget bias at which their weights fall by t = 500 as far as the paper's LSTM.

It prints a markdown table, one row per variant: the median over the networks (their weights:
over the batches) of log10 of the norm at t = 1000, 990, 500 and 1, the decades fallen from
t = 1000 to t = 1, and the first t, going back from t = 1000, where the norm is below 1e-24,
each with its range [min, max]. About 90 s of CPU (2 cores; `--seeds` fewer for less).
"""

import argparse
import functools
import time
from typing import NamedTuple

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import rnnjax  # noqa: E402
from rnnjax.core.cells import registry  # noqa: E402
from rnnjax.core.tasks import make_adding_batch  # noqa: E402

T, H, B, D, Q = 1000, 128, 20, 2, 1


class Params(NamedTuple):
    W_i: jax.Array  # (D, H)
    W_f: jax.Array
    W_c: jax.Array
    W_o: jax.Array
    U_i: jax.Array  # (H, H)
    U_f: jax.Array
    U_c: jax.Array
    U_o: jax.Array
    b_i: jax.Array  # (H,)
    b_f: jax.Array
    b_c: jax.Array
    b_o: jax.Array
    W_hq: jax.Array  # (H, Q)
    b_q: jax.Array  # (Q,)
    V_o: jax.Array | None = None  # (H, H) full peephole, (H,) diagonal, None: none


def glorot(key, shape, dist, dtype):
    """Glorot with fan_in, fan_out = shape (a vector: both H), uniform or normal."""
    fan = shape[0] + (shape[1] if len(shape) > 1 else shape[0])
    if dist == "uniform":
        b = np.sqrt(6.0 / fan)
        return jax.random.uniform(key, shape, dtype, -b, b)
    return jax.random.normal(key, shape, dtype) * np.sqrt(2.0 / fan)


def their_weights(dtype=jnp.float64) -> Params:
    """The weights their code draws: numpy RandomState(1234), in the order of `models.LSTM`,
    each U[±√(6/(n_in + n_out))], cast to float32 (Theano's floatX)."""
    rng = np.random.RandomState(1234)

    def draw(n_in, n_out):
        b = np.sqrt(6.0 / (n_in + n_out))
        return jnp.asarray(rng.uniform(-b, b, (n_in, n_out)).astype(np.float32), dtype)

    W = [draw(D, H) for _ in range(4)]  # W_i, W_f, W_c, W_o
    U = [draw(H, H) for _ in range(4)]  # U_i, U_f, U_c, U_o
    V_o = draw(H, H)
    W_hq = draw(H, Q)
    z = jnp.zeros((H,), dtype)
    return Params(W[0], W[1], W[2], W[3], U[0], U[1], U[2], U[3], z, jnp.ones((H,), dtype), z,
                  z, W_hq, jnp.zeros((Q,), dtype), V_o)


def their_init(key, peephole: str = "full", forget_bias: float = 1.0, dist: str = "uniform",
               dtype=jnp.float64) -> Params:
    """One network of their LSTM (`models.LSTM`) from a JAX key: every matrix Glorot (`dist`
    "uniform", theirs, or "normal"), b_f = forget_bias, the other biases 0; the output gate's
    peephole `full` (V_o (H, H), theirs), `diag` (rnnjax's w_co ~ N(0, 1/H)) or `none`."""
    k = jax.random.split(key, 10)
    W = [glorot(k[j], (D, H), dist, dtype) for j in range(4)]
    U = [glorot(k[4 + j], (H, H), dist, dtype) for j in range(4)]
    V_o = {"full": lambda: glorot(k[8], (H, H), dist, dtype),
           "diag": lambda: jax.random.normal(k[8], (H,), dtype) / np.sqrt(H),
           "none": lambda: None}[peephole]()
    z = jnp.zeros((H,), dtype)
    return Params(W[0], W[1], W[2], W[3], U[0], U[1], U[2], U[3], z,
                  jnp.full((H,), forget_bias, dtype), z, z, glorot(k[9], (H, Q), dist, dtype),
                  jnp.zeros((Q,), dtype), V_o)


def their_lstm(hidden: str = "h") -> rnnjax.Cell:
    """Their LSTM as a rnnjax Cell, state (H_t, C_t), H_0 = C_0 = 0:

        I_t = sigmoid(X_t W_i + H_{t-1} U_i + b_i),  C~_t = tanh(X_t W_c + H_{t-1} U_c + b_c),
        F_t = sigmoid(X_t W_f + H_{t-1} U_f + b_f),  C_t = I_t * C~_t + F_t * C_{t-1},
        O_t = sigmoid(X_t W_o + H_{t-1} U_o + C_t V_o + b_o),  H_t = O_t * tanh(C_t)

    (C_t * V_o for a diagonal V_o, no term without one). `hidden` "h": ‖dL/dH_t‖ is the norm
    over H_t, and the tap "cell" gives the total derivative ‖dL/dC_t‖ (a zero added to C_t
    right after it is made, before O_t and H_t read it, as rnnjax's `cell_grad_norm`); "hc": the
    norm over the concatenated state [H_t, C_t]."""

    def tapped_step(p, s, x_t, taps):
        h, c = s
        x_t = x_t.astype(p.W_i.dtype)
        i = jax.nn.sigmoid(x_t @ p.W_i + h @ p.U_i + p.b_i)
        cand = jnp.tanh(x_t @ p.W_c + h @ p.U_c + p.b_c)
        f = jax.nn.sigmoid(x_t @ p.W_f + h @ p.U_f + p.b_f)
        c = i * cand + f * c
        if taps:
            c = c + taps["cell"]
        a_o = x_t @ p.W_o + h @ p.U_o + p.b_o
        if p.V_o is not None:
            a_o = a_o + (c @ p.V_o if p.V_o.ndim == 2 else c * p.V_o)
        return jax.nn.sigmoid(a_o) * jnp.tanh(c), c

    def initial_state(p, B):
        z = jnp.zeros((B, p.U_i.shape[0]), p.U_i.dtype)
        return z, z

    def init(key, D_, H_, Q_, dtype=jnp.float64):
        assert (D_, H_, Q_) == (D, H, Q)
        return their_init(key, dtype=dtype)

    h_only = hidden == "h"
    return rnnjax.Cell(
        name="arjovsky_lstm", init=init, initial_state=initial_state,
        step=lambda p, s, x_t: tapped_step(p, s, x_t, None),
        readout=lambda p, s: s[0] @ p.W_hq + p.b_q,
        hidden=(lambda s: s[0]) if h_only else (lambda s: jnp.concatenate(s, axis=-1)),
        recurrent=("U_i", "U_f", "U_c", "U_o"),
        taps=("cell",) if h_only else (), tapped_step=tapped_step if h_only else None)


THEIRS, THEIRS_HC = their_lstm("h"), their_lstm("hc")


def batches(n: int, first: int = 0) -> tuple[jax.Array, jax.Array]:
    """n adding batches of rnnjax's task (B = 20, T = 1000), stacked: x (n, B, T, 2), y (n, B),
    float64; batch j from the key 10_000 + first + j."""
    make = make_adding_batch(B, T)
    xs, ys = zip(*(make(jax.random.key(10_000 + first + j)) for j in range(n)), strict=True)
    return jnp.stack(xs).astype(jnp.float64), jnp.stack(ys).astype(jnp.float64)


def stack(params_list):
    return jax.tree.map(lambda *a: jnp.stack(a), *params_list)


@functools.cache
def compiled_probe(cell):
    """rnnjax's probe (the loss at the last step, squared error), vmapped over networks and
    their batches, jitted once per cell (and shapes)."""
    return jax.jit(jax.vmap(rnnjax.make_probe(cell, "last", "regression"), (0, 0, 0)))


def profiles(cell, params, data, column: str = "h") -> np.ndarray:
    """(N, T) log10 norms: network j of the stacked params on batch j of data. column "h":
    ‖dL/dH_t‖ (the cell's `hidden`), "c": the tap ‖dL/dC_t‖."""
    res = compiled_probe(cell)(params, *data)
    lg = res.log10_grad_norm if column == "h" else res.taps["cell"]
    return np.asarray(lg, dtype=np.float64).reshape(-1, T)


def rmsprop_step(cell, params, data):
    """One update of their training step, on each network's own batch: the batch-mean squared
    error at the last step, every gradient entry clipped to [-1, 1], their RMSProp (lr 1e-3,
    decay 0.9, the mean square starting at 1e-3, no epsilon)."""

    def loss(p, x, y):
        s0 = cell.initial_state(p, x.shape[0])
        s, _ = jax.lax.scan(lambda s, x_t: (cell.step(p, s, x_t), None), s0,
                            jnp.swapaxes(x, 0, 1))
        return jnp.mean((cell.readout(p, s)[:, 0] - y) ** 2)

    def step(p, x, y):
        g = jax.tree.map(lambda a: jnp.clip(a, -1.0, 1.0), jax.grad(loss)(p, x, y))
        return jax.tree.map(lambda q, a: q - 1e-3 * a / jnp.sqrt(0.9e-3 + 0.1 * a**2), p, g)

    return jax.jit(jax.vmap(step))(params, *data)


def first_below(lg: np.ndarray, level: float = -24.0) -> float:
    """The first t, going back from t = T, where log10 ‖·‖ < level; nan if never."""
    below = np.nonzero(lg < level)[0]
    return float(below.max() + 1) if below.size else np.nan


def stat(v: np.ndarray, fmt: str = "{:.1f}") -> str:
    """"median [min, max]" over the networks; for the first t below 1e-24 (nan: never), "never"
    where most networks never get there, with how many do and at which t."""
    v = np.asarray(v, dtype=np.float64)
    hit = v[~np.isnan(v)]
    if hit.size == 0:
        return "never"
    rng = f"[{fmt.format(hit.min())}, {fmt.format(hit.max())}]"
    if hit.size == v.size:
        return f"{fmt.format(np.median(v))} {rng}"
    med = np.median(np.where(np.isnan(v), -np.inf, v))  # never: earlier than any t
    head = "never" if np.isinf(med) else fmt.format(med)
    return f"{head} ({hit.size} of {v.size} at {rng})"


COLS = ["log10 at t=1000", "log10 at t=990", "log10 at t=500", "log10 at t=1", "decades fallen",
        "first t below 1e-24"]


def summarize(name: str, measured: str, lg: np.ndarray) -> dict:
    return {"variant": name, "measured": measured, "n": lg.shape[0],
            "log10 at t=1000": lg[:, T - 1], "log10 at t=990": lg[:, 989],
            "log10 at t=500": lg[:, 499], "log10 at t=1": lg[:, 0],
            "decades fallen": lg[:, T - 1] - lg[:, 0],
            "first t below 1e-24": np.array([first_below(r) for r in lg])}


def spread(n: int):
    """How far `theirs` (their LSTM, Glorot uniform, b_f = 1) falls over n draws of its weights
    (keys 0..n-1), each on its own batch: quantiles of log10 ‖dL/dH_t‖ at t = 500 and of the
    decades fallen, and how many reach the paper's 10^-20.7 at t = 500."""
    t0 = time.time()
    lg = profiles(THEIRS, stack([their_init(jax.random.key(s)) for s in range(n)]), batches(n))
    q = [0, 10, 25, 50, 75, 90, 100]
    print(f"theirs, {n} draws; quantiles {q}:")
    print("  log10 at t=500:", np.round(np.percentile(lg[:, 499], q), 1))
    print("  decades fallen:", np.round(np.percentile(lg[:, -1] - lg[:, 0], q), 1))
    print(f"  below -20.7 at t=500: {int((lg[:, 499] < -20.7).sum())} of {n}; "
          f"{time.time() - t0:.0f} s")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8, help="networks (and batches) per variant")
    ap.add_argument("--draws", type=int, default=0,
                    help="instead of the table: the spread of `theirs` over this many draws")
    args = ap.parse_args(argv)
    if args.draws:
        return spread(args.draws)
    S = args.seeds
    t0 = time.time()
    data = batches(S)  # the probe's batches
    train = batches(S, first=1000)  # the batches of the one training step
    keys = [jax.random.key(s) for s in range(S)]
    rows = []

    def add(name, cell, params, measured=("h",)):
        for m in measured:
            rows.append(summarize(name, m, profiles(cell, params, data, "c" if m == "c" else "h")))

    # 1. rnnjax's LSTM of the figure, S draws
    ours = registry.build("lstm", {"forget_bias": 1.0, "peephole": True}, init="xavier_uniform")
    add("rnnjax fig4 LSTM (diagonal peephole, W_x* and W_hq Glorot normal)", ours,
        stack([ours.init(k, D, H, Q, jnp.float64) for k in keys]))
    # 2. theirs, S draws (the same keys), and one change at a time
    base = stack([their_init(k) for k in keys])
    add("theirs: full V_o, all Glorot uniform, b_f = 1", THEIRS, base, ("h", "c"))
    add("theirs: full V_o, all Glorot uniform, b_f = 1", THEIRS_HC, base, ("[h, c]",))
    for name, kw in [("theirs, diagonal peephole", {"peephole": "diag"}),
                     ("theirs, no peephole", {"peephole": "none"}),
                     ("theirs, Glorot normal", {"dist": "normal"}),
                     ("theirs, forget bias 0", {"forget_bias": 0.0})]:
        add(name, THEIRS, stack([their_init(k, **kw) for k in keys]))
    add("theirs, after one RMSProp step", THEIRS, rmsprop_step(THEIRS, base, train))
    # 3. their very weights, one network on S batches
    theirs = stack([their_weights()] * S)
    add("their RandomState(1234) weights", THEIRS, theirs)
    add("their weights, after one RMSProp step", THEIRS, rmsprop_step(THEIRS, theirs, train))
    # 4. not theirs: the forget bias at which their weights fall as far as the paper's by t = 500
    add("their weights, b_f = 0.85 (not theirs)", THEIRS,
        theirs._replace(b_f=jnp.full((S, H), 0.85)))

    print("| variant | measured | networks | " + " | ".join(COLS) + " |")
    print("|---|---|---:|" + "---:|" * len(COLS))
    print("| paper (fig. 4, after 0 iterations) | h | 1 | -1.5 | | -20.7 | | | about 455 |")
    for r in rows:
        print(f"| {r['variant']} | {r['measured']} | {r['n']} | " + " | ".join(
            stat(r[c], "{:.0f}" if c.startswith("first") else "{:.1f}") for c in COLS) + " |")
    print(f"\nmedian [min, max] over the networks (their weights: over the batches); float64, "
          f"T = {T}, H = {H}, batch {B}, the loss at the last step; {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
