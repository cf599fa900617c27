"""S6's selectivity in the gradient profile: `python experiments/s6_selectivity.py [--out F]`.

Trains one S6 (`cell=s6`, Mamba's defaults) on selective copying (`task=selective_copy`, the
loss over all steps, adam), then probes single sequences of the task (batch of 1, the loss at
the last step: the recall of the last symbol) three ways: the trained network; the same
network without selectivity (W_Δ = 0 and softplus(b_Δ) = each channel's mean Δ over a batch of
the task, so Δ is the trained one's on average but the same at every step); and the network at
initialization. Draws per sequence ‖dL/dh_t‖ relative to the last step and Δ_t (mean over
channels), the data tokens marked, and prints the numbers it draws from. The figure goes under
results/runs/s6_selectivity/ unless --out names another file.
"""

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

import rnnjax
from rnnjax.app.job import enable_compilation_cache
from rnnjax.core.cells import registry
from rnnjax.core.cells.s6 import select
from rnnjax.core.tasks import last_steps_accuracy, make_selective_copy_batch
from rnnjax.core.train import make_accuracy, sequence_loss
from rnnjax.report.style import OKABE_ITO, figure_style

DEFAULT_OUT = Path("results/runs/s6_selectivity/s6_selectivity.png")
COLOURS = {"trained": OKABE_ITO[0], "no selectivity": OKABE_ITO[1], "init": OKABE_ITO[2]}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="s6_selectivity.py", description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=64, help="blank steps (the task's seq_len)")
    p.add_argument("--tokens", type=int, default=4, help="data symbols to recall (task.tokens)")
    p.add_argument("--symbols", type=int, default=4, help="data alphabet (task.symbols)")
    p.add_argument("--hidden", type=int, default=32, help="hidden_size H (E = 2H channels)")
    p.add_argument("--steps", type=int, default=1500, help="adam steps")
    p.add_argument("--lr", type=float, default=1e-2, help="adam's learning rate")
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--sequences", type=int, default=3, help="probed sequences (panels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes and 20 steps (a smoke test)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"the figure (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    if args.quick:
        args.seq_len, args.hidden, args.steps = 16, 8, 20
    return args


def train(cell, params, args, chunk=100):
    """Adam on fresh batches of the task, the loss over all steps, in jitted chunks (steps
    rounded up to a whole chunk)."""
    chunk = min(chunk, args.steps)
    batch = make_selective_copy_batch(args.batch, args.seq_len, args.tokens, args.symbols)
    tx = optax.adam(args.lr)

    @jax.jit
    def run(params, opt_state, key):
        def step(carry, k):
            params, opt_state = carry
            loss, g = jax.value_and_grad(sequence_loss, 3)(cell, "tokens", "all", params, *batch(k))
            updates, opt_state = tx.update(g, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss
        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state),
                                                   jax.random.split(key, chunk))
        return params, opt_state, losses.mean()

    opt_state, key = tx.init(params), jax.random.key(args.seed + 1)
    for i in range(-(-args.steps // chunk)):
        params, opt_state, loss = run(params, opt_state, jax.random.fold_in(key, i))
        print(f"  step {(i + 1) * chunk}: train loss {float(loss):.4f}", flush=True)
    return params


def without_selectivity(params, x):
    """The same network with Δ_t fixed at each channel's mean over the batch x."""
    mean = select(params, x).delta.mean((0, 1))  # (E,)
    return params._replace(W_delta=jnp.zeros_like(params.W_delta),
                           b_delta=mean + jnp.log(-jnp.expm1(-mean)))  # softplus^{-1}


def measure(cell, nets, x, y, args):
    """Per network: accuracy on the batch, Δ (B, T, E) and the per-sequence profiles."""
    acc = jax.jit(make_accuracy(cell, last_steps_accuracy(args.tokens)))
    delta = jax.jit(lambda p, x: select(p, x).delta)
    out = {}
    for name, p in nets.items():
        profiles = [rnnjax.probe(cell, p, x[i:i + 1], y[i:i + 1], loss_at="last",
                                 networks=False).grad_norm for i in range(args.sequences)]
        out[name] = dict(accuracy=float(acc(p, x, y)), delta=np.asarray(delta(p, x)),
                         log10_g=np.log10(profiles))
    return out


def report(m, x, args):
    """Prints the numbers the figure draws from; per sequence and network."""
    data = np.asarray(x[:, :args.seq_len] > 0)  # input steps holding a data symbol
    print("\nΔ over the whole batch (mean over channels and steps); val accuracy (chance "
          f"{1 / args.symbols:.2f}):")
    for name, r in m.items():
        d = r["delta"][:, :args.seq_len]
        print(f"  {name:15s} Δ data {d[data].mean():.4f}  blank {d[~data].mean():.4f}  "
              f"ratio {d[data].mean() / d[~data].mean():5.2f}  accuracy {r['accuracy']:.3f}")
    print("\nper sequence: mean Δ at data tokens / blanks; log10 ‖dL/dh_t‖ − log10 ‖dL/dh_T‖ "
          "(mean at data / blank steps); fall: decades lost going back across a data / blank "
          "step (log10 g_t − log10 g_{t−1}, mean); loss at the last step")
    for i in range(args.sequences):
        pos = np.flatnonzero(data[i])
        print(f" sequence {i + 1}: data tokens at t = {', '.join(str(t + 1) for t in pos)}")
        for name, r in m.items():
            d, g = r["delta"][i, :args.seq_len].mean(-1), r["log10_g"][i]
            rel, fall = g[:args.seq_len] - g[-1], np.diff(g)[:args.seq_len - 1]
            tok = data[i, 1:]  # fall at step t (t >= 2): across step t's keep exp(Δ_t A)
            print(f"  {name:15s} Δ {d[data[i]].mean():.4f} / {d[~data[i]].mean():.4f}   "
                  f"log10 g {rel[data[i]].mean():+.3f} / {rel[~data[i]].mean():+.3f}   "
                  f"fall {fall[tok].mean():.4f} / {fall[~tok].mean():.4f}   "
                  f"(from t=1 to T: {g[0] - g[-1]:+.3f})")


@figure_style
def draw(m, x, args) -> Figure:
    n, T = args.sequences, x.shape[1]
    fig = Figure(figsize=(5.5 * n, 8.5), layout="constrained")
    axes = fig.subplots(2, n, sharex=True, sharey="row", squeeze=False)
    t = np.arange(1, T + 1)
    for i in range(n):
        top, bottom = axes[0, i], axes[1, i]
        for name, r in m.items():
            g = r["log10_g"][i]
            top.plot(t, g - g[-1], color=COLOURS[name], label=name, lw=2)
            bottom.plot(t, r["delta"][i].mean(-1), color=COLOURS[name], label=name, lw=2)
        for ax in (top, bottom):
            for p in np.flatnonzero(np.asarray(x[i, :args.seq_len])):
                ax.axvline(p + 1, color=OKABE_ITO[4], lw=1, ls=":", zorder=0)
            ax.axvspan(args.seq_len + 0.5, T + 0.5, color="0.88", zorder=0)
        top.set_title(f"sequence {i + 1}")
        bottom.set_yscale("log")
    axes[0, 0].set_ylabel("log10 (‖dL/dh_t‖ / ‖dL/dh_T‖)")
    axes[1, 0].set_ylabel("Δ_t (mean over channels)")
    axes[0, 0].legend(loc="upper left", fontsize="small")
    fig.supxlabel("timestep t   (dotted: the data tokens; grey: the marker steps, where the "
                  "symbols are recalled)")
    fig.suptitle(f"S6 trained on selective copying (T = {T}, {args.tokens} tokens of "
                 f"{args.symbols} symbols, H = {args.hidden}): one sequence per column, the loss "
                 "at the last step\nno selectivity: the trained network with Δ_t fixed at each "
                 "channel's mean Δ")
    return fig


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    enable_compilation_cache()  # JAX's persistent cache: a rerun does not recompile
    cell = registry.build("s6", {})
    V = args.symbols + 2  # blank, data symbols, marker
    init = cell.init(jax.random.key(args.seed), V, args.hidden, V)
    print(f"training S6 (H={args.hidden}) on selective_copy seq_len={args.seq_len} "
          f"tokens={args.tokens} symbols={args.symbols}: {args.steps} adam steps, lr {args.lr}")
    trained = train(cell, init, args)
    x, y = make_selective_copy_batch(256, args.seq_len, args.tokens, args.symbols)(
        jax.random.key(args.seed + 2))  # held out: the control's mean Δ and the probes
    nets = {"trained": trained, "no selectivity": without_selectivity(trained, x), "init": init}
    m = measure(cell, nets, x, y, args)
    report(m, x, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    draw(m, x, args).savefig(args.out, dpi=120)
    print(f"\nwrote {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
