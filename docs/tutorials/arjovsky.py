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
# # Reproduce Arjovsky et al.'s figure
#
# Arjovsky, Shah & Bengio (2016, *Unitary Evolution Recurrent Neural Networks*) drew a figure
# of the gradient norm `||dC/dh_t||` over t = 1..1000 on the adding problem. C is the cost at
# the last step. They drew it at initialization and after 100 RMSProp iterations, for a tanh
# RNN, an LSTM and their unitary RNN (uRNN). The figure shows how far back in time the signal
# from the cost reaches.
#
# rnnjax has this experiment as `+experiment=urnn_gradients`
# (`conf/experiment/urnn_gradients.yaml`):
#
# - `task=adding`: two input channels, a value in U[0, 1] and a marker on two positions, one
#   in each half of the sequence. The target is the sum of the two marked values, scored by
#   squared error at the last step. Always predicting 1 scores 1/6 = 0.167.
# - `seq_len=1000`, `hidden_size=128`, `batch_size=20`, `seeds=3`, and 100 RMSProp steps at
#   lr 1e-3 (`train.steps=100 train.optimizer=rmsprop train.lr=0.001`). The profile is logged
#   at initialization and at step 100 (`train.log_every=100`).
# - As a sweep (`-m`) it runs a grid of `activation=tanh,relu` × `init=xavier,identity,orthogonal`,
#   6 jobs. The paper's vanilla models are in it: the tanh RNN (`tanh`/`xavier`), the IRNN
#   (`relu`/`identity`) and an orthogonal RNN (`tanh`/`orthogonal`).
#
# The published figure, `fig4_urnn_gradients`, is made by
# `rnnjax reproduce --only fig4_urnn_gradients`. It takes about 2 minutes on 2 CPU cores, so it
# is not run here. That figure uses the models of the paper's code instead of this grid; it is
# shown at the end of this page.
#
# Here the same experiment runs at a tiny size: T = 50 instead of 1000, H = 16 instead of
# 128, and 2 networks per job. Everything else is the experiment's own, including the 100
# RMSProp steps.

# %%
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from IPython.display import display
from matplotlib import pyplot as plt

import rnnjax

pd.set_option("display.width", 120)
tmp = Path(tempfile.mkdtemp(prefix="rnnjax-tutorial-arjovsky-"))
SMALL = ["seq_len=50", "hidden_size=16", "seeds=2"]


def start(*args):
    """Starts `rnnjax run ARGS` in the temporary directory."""
    return subprocess.Popen([sys.executable, "-m", "rnnjax", "run", *args], cwd=tmp, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(process):
    """Waits for the command and prints the lines that sum it up."""
    out, _ = process.communicate()
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, process.args, out)
    for line in out.splitlines():
        if "after training" in line or "trained" in line or line.startswith("rnnjax: sweep"):
            print(line.split(" - ", 1)[-1])


# %% [markdown]
# ## Two commands
#
# **The tanh RNNs: the experiment's sweep, cut down.** On the command line, values given after
# the experiment replace the experiment's own. `activation=tanh init=xavier,orthogonal` keeps
# two cells of its grid, the tanh RNN with Glorot normal W_hh and the orthogonal RNN. The IRNN
# is left out: at T = 1000 it diverges within the 100 steps.
#
# ```bash
# rnnjax run -m +experiment=urnn_gradients activation=tanh init=xavier,orthogonal \
#     seq_len=50 hidden_size=16 seeds=2
# ```
#
# **The uRNN.** The uRNN is another cell (`cell=urnn`), which takes neither `activation` nor
# this `init`. A grid cannot pair it with `init=xavier`, so it runs as a single job of the same
# experiment:
#
# ```bash
# rnnjax run +experiment=urnn_gradients cell=urnn seq_len=50 hidden_size=16 seeds=2
# ```
#
# The two commands are independent, so this page starts both at once, each with its own
# directory, and prints each one's summary lines once it has ended.

# %%
sweep, urnn = tmp / "sweep", tmp / "urnn"
running = [
    start("-m", "+experiment=urnn_gradients", "activation=tanh", "init=xavier,orthogonal",
          *SMALL, f"hydra.sweep.dir={sweep}"),
    start("+experiment=urnn_gradients", "cell=urnn", *SMALL, f"hydra.run.dir={urnn}"),
]
for name, process in zip(["The tanh RNNs", "The uRNN"], running, strict=True):
    print(f"{name}:")
    finish(process)
    print()

# %% [markdown]
# Each job logs its fitted slope (log10 of the gradient norm per step back) at initialization
# and after training, next to the prediction for its weights: mean field's for the tanh RNNs,
# 0 (a norm-preserving W) for the uRNN. It also logs the training and validation MSE.

# %% [markdown]
# ## Load and compare
#
# `grad_norms.parquet` holds one profile per network at every logged training step: its
# `train_step` column is 0 at initialization and 100 after training.

# %%
df = pd.concat([rnnjax.load_sweep(sweep), rnnjax.load_sweep(urnn)], ignore_index=True)
summaries = pd.concat([rnnjax.load_summaries(sweep), rnnjax.load_summaries(urnn)],
                      ignore_index=True)


def model(row):
    return "uRNN" if row["cell"] == "urnn" else f"tanh RNN, init={row['init']}"


df["model"] = df.apply(model, axis=1)
summaries["model"] = summaries.apply(model, axis=1)
print(sorted(df.train_step.unique().tolist()))

# %% [markdown]
# How many decades the gradient falls from t = T back to t = 1 (log10 at t = T minus log10
# at t = 1, the median over the networks), beside each job's fitted slope per step back:

# %%
ends = df[df.t.isin([1, 50])].assign(log10=lambda d: np.log10(d.grad_norm))
ends = ends.pivot_table(index=["model", "seed", "train_step"], columns="t", values="log10")
falls = (ends[50] - ends[1]).groupby(["model", "train_step"]).median().unstack()
falls.columns = [f"decades fallen, step {step}" for step in falls.columns]
slopes = summaries.set_index("model")[[
    "headline.log10_slope_per_step_back", "training.headline.log10_slope_per_step_back",
    "training.final_val_loss"]]
slopes.columns = ["slope at init", "slope after training", "val MSE after training"]
falls.join(slopes).round(4)

# %% [markdown]
# ## The figure
#
# `||dC/dh_t||` against t, at initialization and after 100 RMSProp steps (thin lines: single
# networks; thick: the median over them).

# %%
df["log10"] = np.log10(df.grad_norm)
colors = dict(zip(sorted(df.model.unique()), sns.color_palette(), strict=False))
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True, layout="constrained")
titles = {0: "at initialization", 100: "after 100 RMSProp steps"}
for ax, (step, title) in zip(axes, titles.items(), strict=True):
    part = df[df.train_step == step]
    for name, runs in part.groupby("model"):
        for _, net in runs.groupby("seed"):
            ax.plot(net.t, net.log10, color=colors[name], lw=0.7, alpha=0.5)
        median = runs.groupby("t").log10.median()
        ax.plot(median.index, median, color=colors[name], lw=2.5, label=name)
    ax.set(title=title, xlabel="timestep t")
axes[0].set_ylabel("log10 ||dC/dh_t||")
axes[1].legend()
fig.suptitle("Adding problem, T = 50, H = 16 (the paper: T = 1000, H = 128)")
plt.show()

# %%
shutil.rmtree(tmp)  # this page's temporary directory: everything is loaded

# %% [markdown]
# At this size the run is only a sketch of the experiment, with 2 networks per model; the
# table above has its numbers. The uRNN's recurrent matrix is unitary, so at initialization its
# profile is flat: the prediction logged beside it is 0, a norm-preserving W. Training moves it
# away from flat. The tanh RNNs' gradients fall over the 50 steps, at a rate mean field
# predicts only roughly for a network this small (the logged `predicted` values). The
# full-size figure below has T = 1000, where the same rates add up to many more decades.
#
# ## The full-size figure
#
# This is `fig4_urnn_gradients` as the repository commits it (`results/figures/`). Unlike the
# experiment above, it uses the models of the paper's code and their training settings: a
# tanh RNN with Glorot uniform W_hh (4 networks), an LSTM (forget bias 1, peephole), the uRNN
# with H = 512, and the IRNN as a fourth line. All but the uRNN are clipped element-wise at 1,
# and RMSProp's mean square starts at 1e-3. The band is the 10th to 90th percentile of the tanh
# RNN over 64 draws of its weights at initialization.
#
# ![fig4_urnn_gradients](../../results/figures/fig4_urnn_gradients.png)
#
# Its first table says how many decades each model's gradient falls from t = 1000 back to
# t = 1, over the networks of each model. Here it is read from the figure's committed report
# (`results/figures/fig4_urnn_gradients.md`), with its 10th, 50th and 90th percentiles:

# %%
report = Path(rnnjax.__file__).resolve().parents[1] / "results/figures/fig4_urnn_gradients.md"
if report.exists():
    lines = report.read_text().split("Slopes per job")[0].splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in lines if line.startswith("|") and not line.startswith("|---")]
    table = pd.DataFrame(rows[1:], columns=rows[0]).set_index(["model", "training step"])
    display(table[["seeds", "10% (decades)", "median (decades)", "90% (decades)"]])
else:
    print(f"{report} is not here (an installed rnnjax has no results/)")

# %% [markdown]
# What it shows, in the terms of that table:
#
# - **The tanh RNN's fall depends on the draw of its weights** far more than on anything else
#   that was varied. Over the 64 networks at initialization, the 10th and 90th percentiles
#   of the fall are about 0 and about 20 decades. The paper's one network falls about 13.5
#   decades, inside that spread. The 4 trained tanh RNNs spread as widely after 100 steps, from
#   a slight rise to about 21 decades; with 4 networks, their median says little.
# - **The LSTM** falls further after training than at initialization.
# - **The uRNN** is flat at initialization. After training it falls too, as the paper's
#   uRNN does (theirs from about 10^-0.6 at t = 1000 to about 10^-7.9 at t = 1).
# - **The IRNN** (ReLU, W_hh = I) diverges within the 100 steps. It is recorded as status
#   `nonfinite` and has no line after training.
#
# The paper's LSTM at initialization falls faster than this one. The page
# [Figures and reproduce](../../figures/) works through why, and where the tanh RNN's profile
# comes from.
