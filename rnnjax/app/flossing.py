"""Gradient flossing in a job (`train.floss`, `rnnjax.core.floss`): flossing before training,
the flossing during it, and the top k Lyapunov exponents measured before and after, for
summary.json's `training.floss`."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.app.config import Config
from rnnjax.core.cells import Cell
from rnnjax.core.floss import Floss, floss_inputs, make_floss_chunk
from rnnjax.core.tasks import Task
from rnnjax.core.theory import make_lyapunov

# The measured exponents (not the flossed ones): make_lyapunov over the validation set's
# sequences one after another, MEASURE_STEPS steps, the first MEASURE_BURN_IN left out.
MEASURE_STEPS = 500
MEASURE_BURN_IN = 100


def floss_of(cfg: Config) -> Floss | None:
    """The config's flossing (None: off, or weight 0, which only measures)."""
    fl = cfg.train.floss
    if not fl.k or fl.weight == 0:
        return None
    return Floss(fl.k, fl.weight, fl.every, fl.length, fl.burn_in)


def during(cfg: Config) -> Floss | None:
    """The flossing during training (`rnnjax.core.train.Training.floss`), None without."""
    floss = floss_of(cfg)
    return floss if floss is not None and floss.every is not None else None


def measure(cfg: Config, cell: Cell, params, val_x) -> np.ndarray:
    """(N, k) the top k exponents of each network (natural log per step), on its validation
    sequences one after another."""
    lyap = make_lyapunov(cell, cfg.train.floss.k, MEASURE_BURN_IN)
    one = lambda p, x: lyap(p, floss_inputs(x, MEASURE_STEPS)[None])  # noqa: E731
    return np.asarray(jax.jit(jax.vmap(one))(params, val_x))


def before_training(cfg: Config, cell: Cell, task: Task, tx, params, data_keys, val_x
                    ) -> tuple[Any, dict | None]:
    """Flosses the networks alone for train.floss.before steps (the training's optimizer, its
    own state; each step on the inputs of a fresh training batch), and measures the exponents
    at initialization and after that. Returns the parameters to train and the record (None
    with train.floss.k off)."""
    if not cfg.train.floss.k:
        return params, None
    record = {"exponents_at_init": measure(cfg, cell, params, val_x)}
    floss = floss_of(cfg)
    if floss is not None and cfg.train.floss.before:
        chunk = jax.jit(jax.vmap(make_floss_chunk(cell, floss, tx, task.train_batch,
                                                  cfg.train.floss.before), (0, 0, 0, None)))
        keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(data_keys[:, 0])
        params, _, values = chunk(params, jax.vmap(tx.init)(params), keys, jnp.asarray(0))
        record["regularizer_before"] = np.asarray(values)  # (N, before)
        record["exponents_flossed"] = measure(cfg, cell, params, val_x)
    return params, record


def summary(cfg: Config, cell: Cell, record: dict, params, val_x) -> dict:
    """summary.json's `training.floss`: per network (lists, seed order) and medians over them
    by exponent index (`spectrum_*.i`, flat keys that `load_summaries` keeps)."""
    record = {**record, "exponents_after": measure(cfg, cell, params, val_x)}
    out: dict[str, Any] = {"k": cfg.train.floss.k, "measure_steps": MEASURE_STEPS,
                           "measure_burn_in": MEASURE_BURN_IN}
    for name, values in record.items():
        if name.startswith("exponents"):
            stage = name.removeprefix("exponents_")
            out[name] = values.tolist()
            out[f"spectrum_{stage}"] = {str(i + 1): float(v)
                                        for i, v in enumerate(np.median(values, 0))}
        else:  # the regularizer's first and last values while flossing before training
            out[f"{name}_first"] = float(np.median(values[:, 0]))
            out[f"{name}_last"] = float(np.median(values[:, -1]))
    return out
