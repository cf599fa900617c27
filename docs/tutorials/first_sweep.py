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
# # Your first sweep
#
# This tutorial runs a small sweep from the command line, reads the line each job prints,
# opens the results in pandas and plots the gradient profile. Each job measures
# `||dL/dH_t||`, the gradient of the loss with respect to every hidden state, at every
# timestep t. The sweep covers two activations, `tanh` and `relu`, with everything else at its
# default: a vanilla RNN with d2l's `normal` initialization (every weight N(0, 0.01²)), random
# tokens, and the loss at the last step.
#
# The sizes are small, so that the page builds in seconds on a 2-core CPU: T = 32 steps,
# H = 16 hidden units, 2 networks (`seeds=2`) of 8 sequences each. Everything is written into
# a temporary directory.

# %%
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import pyplot as plt

import rnnjax

pd.set_option("display.width", 120)
out = Path(tempfile.mkdtemp(prefix="rnnjax-tutorial-first-sweep-")) / "sweep"

# %% [markdown]
# ## Run the sweep
#
# `rnnjax run -m KEY=V1,V2 ...` is a Hydra multirun: one job per combination of the
# comma-separated values. `python -m rnnjax` is the same program as the `rnnjax` command.
# `hydra.sweep.dir` chooses the sweep's directory. Without it, the sweep goes to
# `results/runs/multirun/<its overrides>` under the current directory.
#
# The command writes many log lines. Below we print only the line that ends each job and the
# lines with which the sweep closes.

# %%
command = [sys.executable, "-m", "rnnjax", "run", "-m",
           "activation=tanh,relu", "seq_len=32", "hidden_size=16", "seeds=2", "batch_size=8",
           f"hydra.sweep.dir={out}"]


def run(command):
    """Runs the command in the temporary directory; returns its output and its wall time."""
    start = time.perf_counter()
    done = subprocess.run(command, cwd=out.parent, check=True, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return done.stdout, time.perf_counter() - start


log, seconds = run(command)
for line in log.splitlines():
    if "per step back" in line or line.startswith("rnnjax:"):
        print(line)
print(f"({seconds:.1f} s)")

# %% [markdown]
# ## The headline line
#
# Each job ends with one line. In
# `tanh/normal T=32 H=16 S=2: log10 grad_norm per step back ... (median over seeds; mean field
# ..., Pascanu bound ..., top Lyapunov ...), loss ..., underflow ..., overflow ..., status ok`:
#
# - `tanh/normal T=32 H=16 S=2` is the model (activation / initialization), the sequence
#   length, the hidden size and the number of networks.
# - **`log10 grad_norm per step back`** is the headline number. It is the least-squares slope
#   of log10 `||dL/dH_t||` against the number of steps back from the last step, fitted for each
#   network over the middle half of the usable steps, and the median over the networks.
#   A slope of -1.4 means the gradient shrinks about 25-fold (10^1.4) with each step back.
# - **`mean field`** is what mean-field theory predicts for a random W_hh with this network's
#   gain and input variance (log10 of sqrt(chi_1) per step). The **`Pascanu bound`** is log10
#   of gamma·sigma_max(W_hh) (gamma = 1 for tanh and ReLU), an upper bound: over k steps back,
#   the norm of the product of Jacobians is at most 10^(k × bound). The **`top Lyapunov`**
#   exponent is that of the hidden dynamics driven by the inputs. All three are in the same
#   unit as the slope, log10 per step.
# - **`loss`** is the mean loss of the untrained networks. The random task has 28 tokens, so
#   the loss is close to ln 28 = 3.33.
# - **`underflow`** counts the norms, over all networks and steps, that fell below float32's
#   range (about 1e-38). They are stored as 0, flagged and left out of the fit;
#   `dtype=float64` would measure them. **`overflow`** counts the norms that became
#   inf.
#
# The closing lines say how many jobs ran and how each ended. They also show how to open the
# results.
#
# ## Re-running resumes
#
# Each job's directory is named by its overrides. A job that holds a finished run of the same
# config (its `summary.json` and result files check out) is skipped before anything is
# launched. So the same command again runs no job here. This is how an interrupted sweep is
# resumed: only the missing or failed jobs run again.

# %%
log, seconds = run(command)
for line in log.splitlines():
    if "skipped" in line:
        print(line)
print(f"({seconds:.1f} s)")

# %% [markdown]
# ## The files
#
# Each job has a directory with its per-timestep norms (`grad_norms.parquet`), its summary
# (`summary.json`), the Lyapunov spectrum, the parameters and batch it measured, and its log.
# `sweep.json` lists the sweep's jobs.

# %%
for path in sorted(out.iterdir()):
    print(path.name + ("/" if path.is_dir() else ""))
    if path.is_dir():
        for file in sorted(path.iterdir()):
            print("   ", file.name)

# %% [markdown]
# ## Open the results
#
# `rnnjax.load_sweep` reads every finished job's `grad_norms.parquet` into one tidy
# DataFrame, with one row per job, network (`seed`) and timestep `t`, plus the config as
# columns. `rnnjax.load_summaries` gives one row per job from its `summary.json`. Nested keys
# are joined by dots, such as `headline.log10_slope_per_step_back`.

# %%
df = rnnjax.load_sweep(out)
print(len(df), "rows")
first = df.query("activation == 'tanh' and seed == 0").sort_values("steps_back")
first[["activation", "seed", "t", "steps_back", "grad_norm", "underflow"]].head()

# %% [markdown]
# How far back the norms stay above float32's range, per network:

# %%
underflowed = df[df.underflow].groupby(["activation", "seed"]).steps_back.min()
underflowed.rename("first underflowed steps_back")

# %%
summaries = rnnjax.load_summaries(out)
columns = {
    "headline.log10_slope_per_step_back": "measured",
    "headline.theory.mean_field.log10_factor_per_step": "mean field",
    "headline.theory.pascanu_log10_bound_per_step": "Pascanu bound",
    "headline.theory.lyapunov_top_log10_per_step": "top Lyapunov",
    "headline.n_underflow": "underflow",
}
table = summaries.set_index("activation")[list(columns)].rename(columns=columns)
table.round(4)

# %% [markdown]
# The measured slopes and the mean-field predictions, side by side. Their difference,
# in decades per step back:

# %%
(table["measured"] - table["mean field"]).round(4).rename("measured - mean field")

# %% [markdown]
# ## Plot the profile
#
# log10 `grad_norm` against `steps_back` (0 is the last step, where the loss is), one line per
# network. Underflowed norms are 0; they are dropped before taking the logarithm. The dashed
# lines start at each activation's median norm at the last step and fall at mean field's
# predicted rate.

# %%
usable = df[df.grad_norm > 0].assign(log10_grad_norm=lambda d: np.log10(d.grad_norm))
fig, ax = plt.subplots(figsize=(7, 4))
sns.lineplot(data=usable, x="steps_back", y="log10_grad_norm", hue="activation",
             units="seed", estimator=None, ax=ax)
palette = dict(zip(usable.activation.unique(), sns.color_palette(), strict=False))
for activation, row in table.iterrows():
    start = np.log10(df[(df.activation == activation) & (df.steps_back == 0)].grad_norm.median())
    steps = np.arange(0, usable[usable.activation == activation].steps_back.max() + 1)
    ax.plot(steps, start + row["mean field"] * steps, "--", color=palette[activation],
            label=f"{activation}: mean field")
ax.set(xlabel="steps back from the last step", ylabel="log10 ||dL/dH_t||",
       title="T = 32, H = 16, 2 networks per activation")
ax.legend()
plt.show()

# %% [markdown]
# The lines end where the gradient underflowed float32. To go further:
#
# - `rnnjax run --help` lists every key (cells, initializations, tasks, training).
# - `rnnjax report DIR` draws a run or a sweep and writes its `report.md`.
# - [Sweeps, resume and SLURM](../../sweeps/) describes sweep directories, resuming and
#   launchers.
#
# This page's temporary directory goes now:

# %%
shutil.rmtree(out.parent)
