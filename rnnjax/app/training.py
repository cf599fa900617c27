"""Training in a job: the networks trained together (`train_job`), with the profile, the
validation numbers and the dynamics (`rnnjax.app.dynamics`) of every logged step; and what a
job is once set up (`JobRun`), which probing and training share with `rnnjax.app.job`."""

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from rnnjax.app import dynamics, flossing, results, tracking
from rnnjax.app.config import Config
from rnnjax.app.memory import fit_seeds
from rnnjax.app.progress import interval_rows, log_progress, number, progress_line, sample_text
from rnnjax.app.summary import to_host
from rnnjax.core.cells import Cell
from rnnjax.core.scan import resolve_scan
from rnnjax.core.tasks import Task
from rnnjax.core.train import (
    Training,
    init_state,
    make_accuracy,
    make_eval,
    make_optimizer,
    make_train_chunk,
)

log = logging.getLogger("rnnjax")


def scan_of(cfg: Config, cell: Cell) -> str:
    """probe.scan for the job's cell: null resolves to parallel where the cell is linear in its
    state (`rnnjax.core.scan.resolve_scan`); the probe, training and evaluation all use it."""
    return resolve_scan(cell, None if cfg.probe.scan is None else cfg.probe.scan.value)


def total_steps(cfg: Config, task: Task) -> int:
    """train.steps, or train.epochs passes over the training windows."""
    if cfg.train.epochs is not None:
        return cfg.train.epochs * task.steps_per_epoch
    return cfg.train.steps


class JobRun(NamedTuple):
    """One job as `run_job` has set it up: what probing, training and writing it need."""

    cfg: Config
    cell: Cell
    task: Task
    data: dict | None  # the data file's record (`provenance.data_file`), None for generated data
    params: Any  # the networks' parameters, leading axis N = init values x seeds
    x: jax.Array  # (N, B, T...) the probed batches
    y: jax.Array  # their targets
    data_keys: jax.Array  # (N, 2) keys of each network's training data and validation set
    budget: Any  # `memory.memory_budget`'s
    out: Path  # the job's directory
    resolved: dict[str, Any] | None  # the resolved config written to summary.json
    started_at: str  # `provenance.now()` at the start
    start: float  # `time.perf_counter()` at the start


def profile_truncation(cfg: Config) -> int | None:
    """The profile shows the gradient that training uses: cut every k steps for truncated
    BPTT. Randomized truncation is unbiased, so its expected profile is the full one."""
    return cfg.train.truncate if cfg.train.bptt.value == "truncated" else None


def train_job(run: JobRun, probe, frames: list, columns: dict, step_theory):
    """Trains all seeds together; returns the profile frames (`frames` with the training's
    profiles added) and the training summary (with the metrics DataFrame under "metrics").

    Args:
      run: the job. probe: its fitted probe, for the profiles while training. columns: the
        config columns of every frame. step_theory: a `dynamics.StepTheory`, the headline,
        theory and spectrum of each logged step (the training summary's "logged": (step,
        `dynamics.StepNumbers`) of each).
    """
    cfg, cell, task, params, x, y, data_keys, budget = (
        run.cfg, run.cell, run.task, run.params, run.x, run.y, run.data_keys, run.budget)
    steps = total_steps(cfg, task)
    seeds = np.arange(cfg.seed, cfg.seed + cfg.seeds)
    tr = cfg.train
    loss_at = cfg.probe.loss_at.value
    tx = make_optimizer(tr.optimizer.value, tr.lr, tr.clip, tr.clip_value, tr.initial_scale)
    n = min(tr.log_every, steps)
    scan = scan_of(cfg, cell)
    evaluate = jax.jit(jax.vmap(make_eval(cell, loss_at, task.kind, scan)))
    val_x, val_y = jax.vmap(task.val_batch)(data_keys[:, 1])
    params, floss = flossing.before_training(cfg, cell, task, tx, params, data_keys, val_x)
    state = jax.vmap(init_state, (0, None))(params, tx)
    chunk = fit_seeds(make_train_chunk(Training(
        cell, loss_at, task.kind, tx, task.train_batch, steps, n, tr.bptt.value, tr.truncate,
        tr.clip, tr.clip_value, task.chunk_batches, scan, flossing.during(cfg))),
                      (0, 0, None), (state, data_keys[:, 0], jnp.asarray(0)), budget, "training")

    rows = []
    profiles = []  # (train_step, Profile) of each interval: one frame for all after the loop
    logged = []  # (train_step, dynamics.StepNumbers) of each interval
    n_clipped = n_taken = 0
    tokens = task.kind == "tokens"

    accuracy = task.accuracy and jax.jit(jax.vmap(make_accuracy(cell, task.accuracy)))
    def measure(params):
        """The validation loss (and accuracy) and the gradient profile of the networks."""
        acc = None if accuracy is None else np.asarray(accuracy(params, val_x, val_y))
        prof = to_host(probe(params, x, y))
        return np.asarray(evaluate(params, val_x, val_y)), acc, prof, step_theory(params, prof)

    def log_interval(begin, state, m, measured):
        nonlocal n_clipped, n_taken
        val, acc, prof, nums = measured.result()
        m = jax.tree.map(np.asarray, m)
        n_clipped += int(m.clipped.sum())
        n_taken += int(m.active.sum())
        done = min(begin + n, steps)
        profiles.append((done, prof))
        logged.append((done, nums))
        rows.extend(interval_rows(seeds, done, m, val, np.asarray(state.alive), tokens, acc))
        bar.update(done - begin)
        # the numbers a tracker gets for this step (`tracking.log_results`)
        recent = tracking.interval_metrics(pd.DataFrame(rows[-len(seeds):]))
        bar.set_postfix(loss=number(recent['train_loss'], 4))
        # Without a terminal (SLURM logs, nohup) a plain line instead of the bar; with one, the
        # line still goes to run.log, which holds the same lines either way.
        log_progress(bar.disable, "step %d of %d: %s", done, steps, progress_line(recent, tokens))

    # Each interval's validation and profile run in a second thread while the next interval
    # trains (XLA releases the GIL): the training step alone keeps less than two CPU cores
    # busy (2 cores, d2l's sizes: 95 -> 80 ms per 10 steps). Not while flossing: a chunk's QR
    # and the spectrum's beside it never finished on a 2-core CPU (both waiting in XLA).
    with tqdm(total=steps, desc="train", unit="step", dynamic_ncols=True,
              disable=None) as bar, ThreadPoolExecutor(1) as pool:
        pending = None
        for begin in range(0, steps, n):
            state, m = chunk(state, data_keys[:, 0], jnp.asarray(begin))
            measured = pool.submit(measure, state.params)
            if flossing.during(cfg) is not None:  # (see above)
                measured.result()
            if pending is not None:
                log_interval(*pending)
            pending = (begin, state, m, measured)
        if pending is not None:
            log_interval(*pending)

    if profiles:
        # One frame for every interval (rows ordered by interval, seed, t, as one frame each
        # would give): a pandas frame costs milliseconds to build, whatever its length.
        done = np.array([d for d, _ in profiles])
        stacked = jax.tree.map(lambda *a: np.concatenate(a), *[p for _, p in profiles])
        rows_each = len(seeds) * stacked.grad_norm[0].size  # S T (L): rows of one profile
        frames.append(results.probe_frame(np.tile(seeds, len(profiles)), stacked, columns,
                                          train_step=np.repeat(done, rows_each)))
    metrics = results.with_config_columns(
        dynamics.metrics_columns(pd.DataFrame(rows), seeds, logged, cfg.init.name.value), columns)
    diverged = np.asarray(state.diverged_at)
    last = metrics[metrics.train_step == metrics.train_step.max()]
    training = {
        "metrics": metrics,
        "logged": logged,
        "steps": steps,
        # means over the networks as the log and a tracker give them (an overflowed
        # perplexity is inf there too, not left out)
        "final_train_loss": tracking.mean_over_networks(last.train_loss),
        "final_train_ppl": tracking.mean_over_networks(last.train_ppl) if tokens else None,
        "final_val_loss": tracking.mean_over_networks(last.val_loss),
        "final_val_ppl": tracking.mean_over_networks(last.val_ppl) if tokens else None,
        **({"final_val_accuracy": tracking.mean_over_networks(last.val_accuracy)}
           if accuracy is not None else {}),
        "final_val_ppl_per_seed": last.val_ppl.tolist() if tokens else None,
        "final_train_ppl_per_seed": last.train_ppl.tolist() if tokens else None,
        "clip_fraction": n_clipped / max(n_taken, 1),  # over every step every seed took
        "diverged_seeds": {int(s): int(d) for s, d in zip(seeds, diverged, strict=True) if d >= 0},
    }
    if floss is not None:  # train.floss.k: the exponents before and after
        training["floss"] = flossing.summary(cfg, cell, floss, state.params, val_x)
    if task.vocab is not None:
        training["sample"] = sample_text(cell, task, state.params)
        log.info("sample (seed %d): %r", seeds[0], training["sample"])
    return frames, training
