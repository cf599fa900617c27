# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Probe your own Flax cell
#
# rnnjax measures `||dL/dH_t||` for its own cells, and for any Flax recurrent cell too. This
# tutorial takes a Flax NNX `GRUCell` with a linear read-out and probes it in Python, before
# and after a short training run. It ends with the commands that probe such a cell as a job.
#
# `rnnjax.flax_cell(module, readout=...)` turns the module into an rnnjax `Cell` and its
# parameters. `rnnjax.probe(cell, params, x, y)` then runs one forward and one backward pass
# (BPTT through `lax.scan`) and returns the norm of the gradient with respect to every hidden
# state. This needs Flax (`pip install 'rnnjax[flax]'`).

# %%
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
from flax import nnx
from matplotlib import pyplot as plt

import rnnjax
from rnnjax.core.stats import log10_slope

pd.set_option("display.width", 120)

# %% [markdown]
# ## A GRU and a task
#
# The cell reads one-hot tokens from a vocabulary of 8 and has 32 hidden units. An
# `nnx.Linear` head maps its state to 8 logits. The task is to output, at step t, the token
# seen `LAG` = 3 steps earlier. The loss is the cross-entropy at the last step only, the
# probe's `loss_at="last"`, so the gradient starts at t = T and travels back.

# %%
V, H, T, B, LAG = 8, 32, 24, 32, 3

rngs = nnx.Rngs(0)
model = (nnx.GRUCell(in_features=V, hidden_features=H, rngs=rngs), nnx.Linear(H, V, rngs=rngs))


def batch(key):
    """(x, y): random tokens and, at every step, the token LAG steps earlier (wrapping
    around at the start; the loss reads the last step only)."""
    x = jax.random.randint(key, (B, T), 0, V)
    return x, jnp.roll(x, LAG, axis=1)


x, y = batch(jax.random.key(1))  # the batch every probe below measures

# %% [markdown]
# ## Probe it
#
# `flax_cell` takes the GRU and its trained (here: fresh) head. Tokens are one-hot encoded
# to `in_features`. The report holds one norm per timestep, as float64 numbers. For an LSTM,
# whose carry is (c, h), the norm would be that of dL/dh_t.

# %%
cell, params = rnnjax.flax_cell(model[0], readout=model[1])
report = rnnjax.probe(cell, params, x, y, loss_at="last")
print("loss:", float(report.loss))
print("grad_norm:", report.grad_norm.shape)
report.frame[["t", "steps_back", "grad_norm", "param_grad_norm", "underflow"]].tail()

# %% [markdown]
# `grad_norm[t-1]` is `||dL/dH_t||` over the batch. `param_grad_norm` is step t's share of
# the gradient of all the GRU's parameters (its input and recurrent weights and biases, not
# the head). The headline number of a job is the least-squares slope of log10 `grad_norm`
# against steps back, fitted over the middle half of the usable steps. `rnnjax.core.stats`
# computes it for one profile:

# %%
slope, window = log10_slope(report.grad_norm)
print(f"log10 ||dL/dH_t|| per step back: {slope:+.4f} (fitted over t = {window[0]}..{window[1]})")

# %% [markdown]
# ## Train it, probe it again
#
# A few hundred Adam steps on fresh batches, written in plain Flax and optax: rnnjax plays no
# part in training. `nnx.split` separates the modules' structure from their weights, so the
# whole loop is a pure function that `jax.jit` compiles once.
#
# The trained GRU goes through `flax_cell` again for its parameters. It has the same
# structure as before, so the `cell` made above, whose probe is already compiled, measures
# them.

# %%
graphdef, weights = nnx.split(model)


def loss(weights, x, y):
    gru, head = nnx.merge(graphdef, weights)
    h = jnp.zeros((x.shape[0], H))
    h, _ = jax.lax.scan(lambda h, x_t: gru(h, jax.nn.one_hot(x_t, V)), h, x.T)
    return optax.softmax_cross_entropy_with_integer_labels(head(h), y[:, -1]).mean()


opt = optax.adam(3e-3)
STEPS = 300


@jax.jit
def train(weights, key):
    def step(carry, key):
        weights, state = carry
        grads = jax.grad(loss)(weights, *batch(key))
        updates, state = opt.update(grads, state)
        return (optax.apply_updates(weights, updates), state), None

    (weights, _), _ = jax.lax.scan(step, (weights, opt.init(weights)),
                                   jax.random.split(key, STEPS))
    return weights


start = time.perf_counter()
trained = train(weights, jax.random.key(2))
print(f"{STEPS} steps in {time.perf_counter() - start:.1f} s (compilation included)")

gru, head = nnx.merge(graphdef, trained)
_, trained_params = rnnjax.flax_cell(gru, readout=head)
after = rnnjax.probe(cell, trained_params, x, y, loss_at="last")
print(f"loss on the probe batch: {float(report.loss):.3f} before, {float(after.loss):.3f} after")

# %%
profiles = pd.DataFrame({
    "steps_back": report.frame.steps_back,
    "before training": report.frame.grad_norm,
    "after training": after.frame.grad_norm,
}).set_index("steps_back").sort_index()
slopes = pd.Series({"before training": log10_slope(report.grad_norm)[0],
                    "after training": log10_slope(after.grad_norm)[0]},
                   name="log10 per step back")
print(slopes.round(4).to_string())
print("largest at steps back:", profiles.idxmax().to_dict())
profiles.loc[[0, 1, 2, LAG, 2 * LAG, T - 1]]

# %% [markdown]
# Before training, the norm is largest at the last step and shrinks with every step back.
# The line above says where it is largest after training: in this run, no longer at the last
# step. The loss at the last step needs the token read `LAG` steps before the end (the dotted
# line in the plot below). The fitted slopes show how the decay over the whole sequence has
# changed.
#
# The profile before and after training, on a log scale (steps back: 0 is the last step):

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for name, profile in profiles.items():
    label = f"{name} ({slopes[name]:+.3f}/step)"
    ax.plot(profile.index, np.log10(profile), marker=".", label=label)
ax.axvline(LAG, color="grey", lw=0.8, ls=":")
ax.set(xlabel="steps back from the last step", ylabel="log10 ||dL/dH_t||",
       title=f"Flax NNX GRUCell, H = {H}, T = {T}, recall the token {LAG} steps back")
ax.legend()
plt.show()

# %% [markdown]
# ## The same cell from the command line
#
# `cell=flax cell.module=GRUCell` probes a freshly made `nnx.GRUCell` as a job, with its seeds
# vmapped and the results written as for any other cell:
#
# ```bash
# rnnjax run cell=flax cell.module=GRUCell seq_len=24 hidden_size=32 seeds=2 batch_size=8
# rnnjax run cell=flax cell.api=linen cell.module=MGUCell      # a Linen cell
# rnnjax run cell=flax cell.module=my_pkg.mod:MyCell           # a module of your own
# ```
#
# The job's task is the default random one (28 tokens, the loss at the last step). The cell is
# drawn with Flax's own initializers; `activation` and `init` do not apply to library cells.
# Tokens are one-hot encoded and a fresh linear read-out is added, as `flax_cell` adds one
# when it is given none (`rnnjax.flax_cell(gru, Q=V, key=jax.random.key(1))`). The job's
# results load with `rnnjax.load_sweep` and `rnnjax.load_summaries` like any other job's (see
# [Your first sweep](../first_sweep/)). [Probe your own cell](../../custom-cells/) covers
# Linen, Equinox and cells of your own.
