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
# # A sweep on SLURM
#
# By default a sweep's jobs run one after another in the command's own process. With
# `hydra/launcher=slurm` (`conf/hydra/launcher/slurm.yaml`, the `slurm` extra:
# `pip install -e '.[slurm]'`), every job becomes one task of a SLURM array. The command
# submits the array, waits for every task and ends with the same closing line as any sweep.
# The preset is hydra-submitit-launcher's `submitit_slurm`, extended by rnnjax
# (`hydra_plugins/rnnjax_sweeper/slurm_launcher.py`) to wait for every task and account for
# each one.
#
# This page runs a small sweep of 2 jobs through SLURM where a cluster answers here. Where
# none does, it runs the same sweep with Hydra's `hydra/launcher=submitit_local`: the same
# submitit machinery, with the jobs as local processes instead of SLURM tasks. The output
# says which one ran. Set the environment variable `RNNJAX_TUTORIAL_NO_SLURM=1` before
# building the docs to take the local branch even where a cluster answers.

# %%
import os
import re
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
sweep = Path(tempfile.mkdtemp(prefix="rnnjax-tutorial-slurm-")) / "sweep"

# %% [markdown]
# ## Is there a cluster?
#
# The check: SLURM's commands are on the `PATH`, `sinfo` answers within 10 s, and it lists a
# node that is up. (`scripts/slurm_cluster.sh start` starts a single-node cluster on a
# Debian or Ubuntu machine, as root; CI does so for the SLURM tests.)


# %%
def no_cluster():
    """Why this page does not use SLURM; None when a cluster answers."""
    if os.environ.get("RNNJAX_TUTORIAL_NO_SLURM") == "1":
        return "RNNJAX_TUTORIAL_NO_SLURM=1 is set"
    for command in ("sinfo", "sbatch", "squeue"):
        if shutil.which(command) is None:
            return f"no `{command}` on PATH"
    try:
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                               timeout=10)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 10 s"
    if nodes.returncode != 0:
        return f"sinfo failed: {nodes.stderr.strip()}"
    if not re.search(r"^(idle|mixed|allocated|completing)", nodes.stdout, re.MULTILINE):
        return f"no node is up (sinfo: {' '.join(nodes.stdout.split()) or 'no nodes'})"
    return None


why = no_cluster()
if why is None:
    print(subprocess.run(["sinfo"], capture_output=True, text=True, timeout=10).stdout)
    # CPU-only jobs, each within what a small node offers (the preset asks for a GPU, 4 CPUs
    # and 32 GB per job)
    launcher = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0",
                "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1"]
    print("A SLURM cluster answers: this page runs the sweep with hydra/launcher=slurm.")
else:
    launcher = ["hydra/launcher=submitit_local"]
    print(f"No SLURM cluster here ({why}):")
    print("this page runs the sweep with hydra/launcher=submitit_local, as local processes.")

# %% [markdown]
# ## Run the sweep
#
# The sweep is the one from [Your first sweep](../first_sweep/): `tanh` and `relu` at T = 32,
# H = 16, 2 networks each. Only the launcher differs. We print the lines that say where the
# jobs went and the closing lines.

# %%
command = [sys.executable, "-m", "rnnjax", "run", "-m", *launcher, "hydra.launcher.timeout_min=10",
           "activation=tanh,relu", "seq_len=32", "hidden_size=16", "seeds=2", "batch_size=8",
           f"hydra.sweep.dir={sweep}"]
print("rnnjax run", " ".join(command[4:]))
start = time.perf_counter()
done = subprocess.run(command, cwd=sweep.parent, check=True, text=True,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
seconds = time.perf_counter() - start
for line in done.stdout.splitlines():
    if "Submitit" in line or "Waiting for SLURM" in line or line.startswith("rnnjax:"):
        print(line)
print(f"({seconds:.1f} s)")

# %% [markdown]
# With SLURM, the command logs the array's id and how to cancel it (`scancel ID`) while it
# waits. The closing line counts the jobs and how each ended, whichever launcher ran them.
#
# ## The directories
#
# The job directories are the same as with any launcher, named by each job's overrides.
# submitit's own files, each task's pickled function and result and its stdout and stderr, go
# to `.submitit/` inside the sweep directory. On SLURM they sit in one folder per array task.

# %%
for path in sorted(sweep.iterdir()):
    print(path.name + ("/" if path.is_dir() else ""))
    if path.is_dir():
        for sub in sorted(path.iterdir()):
            print("   ", sub.name + ("/" if sub.is_dir() else ""))

# %% [markdown]
# One task's files, and its stdout: submitit's own lines around the job's log lines (here the
# job's headline line only).

# %%
log = sorted(sweep.glob(".submitit/*/*_log.out"))[0]
for file in sorted(log.parent.iterdir()):
    print(file.relative_to(sweep))
print()
for line in log.read_text().splitlines():
    if line.startswith("submitit INFO") or "per step back" in line:
        print(line)

# %% [markdown]
# ## Load the results
#
# The results load as any sweep's, whichever machines ran the jobs.

# %%
df = rnnjax.load_sweep(sweep)
summaries = rnnjax.load_summaries(sweep)
columns = {"status": "status", "headline.log10_slope_per_step_back": "measured",
           "headline.theory.mean_field.log10_factor_per_step": "mean field",
           "provenance.host": "host"}
summaries.set_index("activation")[list(columns)].rename(columns=columns).round(4)

# %%
usable = df[df.grad_norm > 0].assign(log10_grad_norm=lambda d: np.log10(d.grad_norm))
fig, ax = plt.subplots(figsize=(7, 4))
sns.lineplot(data=usable, x="t", y="log10_grad_norm", hue="activation", units="seed",
             estimator=None, marker=".", ax=ax)
ax.set(xlabel="timestep t (the loss is at t = 32)", ylabel="log10 ||dL/dH_t||",
       title=f"The sweep's 2 jobs, run by {launcher[0].split('=')[1]}")
plt.show()
shutil.rmtree(sweep.parent)  # this page's temporary directory: everything is loaded

# %% [markdown]
# Norms that underflowed float32 (stored as 0) are left out, so the early timesteps are
# missing.
#
# ## On a real cluster
#
# The preset's defaults ask for one GPU, 4 CPUs and 32 GB per job, for 60 minutes, with up to
# 64 tasks at once. Override them on the command line (the names are hydra-submitit-launcher's):
#
# ```bash
# pip install -e '.[slurm]'
# rnnjax run -m hydra/launcher=slurm hydra.launcher.partition=gpu \
#     hydra.launcher.timeout_min=120 hydra.launcher.array_parallelism=32 \
#     hydra.sweep.dir=results/runs/multirun/my_sweep \
#     activation=tanh,sigmoid,relu seq_len=16,256,1024
# rnnjax report results/runs/multirun/my_sweep   # once the array has finished
# ```
#
# - `partition`: the cluster's partition (default: the cluster's default).
# - `timeout_min`: the wall-clock limit per job, in minutes (default 60).
# - `gpus_per_node`: 1 by default, so each job gets its own GPU (SLURM assigns it through
#   `CUDA_VISIBLE_DEVICES`) and vmaps its seeds on it. Use 0 for CPU-only jobs, as this page
#   does, and install a CUDA extra on GPU nodes.
# - `cpus_per_task` (4) and `mem_gb` (32): what each job asks for.
# - `array_parallelism`: how many jobs of the sweep run at once (64).
# - `setup`: shell lines run before each job. The preset exports
#   `XLA_PYTHON_CLIENT_PREALLOCATE=false`, so that JAX takes what it needs rather than 75% of
#   the card.
#
# Before anything is submitted, the request is compared with what the partition's nodes offer
# (`sinfo`). A request that no node can ever run fails with one line and exit code 2, and
# nothing is submitted.
#
# While the array runs:
#
# - A task cancelled with `scancel`, or ended by its time limit, memory or a node failure, does
#   not stop the others. The closing line lists its job as failed, with how its task ended.
# - Ctrl-C cancels the sweep's array and says so (exit code 130).
# - If the command itself is killed, its array runs on: let it end (`squeue --me`) or cancel it
#   before running the command again.
# - The same command again resumes the sweep: it submits tasks only for the jobs without a
#   finished run. A finished job takes no slot in the queue.
#
# SLURM's logs go to `SWEEP_DIR/.submitit/`, which the launcher creates readable by its owner
# only. The launcher loads the results that tasks leave there as pickles, so whoever can write
# a sweep directory can run code through it. Keep sweep directories where only you can write.
# [Sweeps, resume and SLURM](../../sweeps/) has the details.
