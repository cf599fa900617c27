"""A training job's progress: its metrics rows per logged interval, its log lines and the text
its first network writes."""

import logging
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rnnjax.core.baselines import ADDING_BASELINE
from rnnjax.core.cells import Cell
from rnnjax.core.tasks import Task
from rnnjax.core.train import make_generate

log = logging.getLogger("rnnjax")

SAMPLE_PREFIX = "time traveller "  # d2l's predict() prefix
SAMPLE_LENGTH = 50


def interval_rows(seeds, done: int, m, val: np.ndarray, alive: np.ndarray, tokens: bool,
                  accuracy: np.ndarray | None = None) -> list[dict]:
    """One metrics row per seed for the interval of training that ends at step `done`.

    Args:
      seeds: the seeds. m: the interval's `StepMetrics` on the host ((S, n) each).
      val: (S,) the validation losses. alive: (S,) bool. tokens: a token task (perplexities).
      accuracy: (S,) the validation accuracies, for a task that has one (a `val_accuracy`
        column); None: no such column.
    """
    rows = []
    for s, seed in enumerate(seeds):
        active = m.active[s]
        train_loss = mean_finite(m.loss[s][active])
        val_loss = float(val[s]) if alive[s] else math.nan
        rows.append({
            "seed": int(seed), "train_step": done,
            "train_loss": train_loss,
            "train_ppl": exp(train_loss) if tokens else math.nan,
            "val_loss": val_loss,
            "val_ppl": exp(val_loss) if tokens else math.nan,
            "grad_norm_global": last(m.grad_norm[s][active]),
            "grad_norm_global_mean": mean_finite(m.grad_norm[s][active]),
            "clipped": bool(m.clipped[s][active][-1]) if active.any() else False,
            "clip_fraction": float(m.clipped[s][active].mean()) if active.any() else 0.0,
            "alive": bool(alive[s]),
            **({} if accuracy is None else
               {"val_accuracy": float(accuracy[s]) if alive[s] else math.nan}),
        })
    return rows


def log_progress(console: bool, msg: str, *args: Any) -> None:
    """Logs a progress line: to every handler where `console` (no progress bar shows it), else
    to the log files only (run.log), which so hold the same lines with a terminal or without."""
    if console:
        log.info(msg, *args)
        return
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, msg, args, None)
    if not log.isEnabledFor(logging.INFO) or not log.filter(record):  # e.g. "job 3 of 6: "
        return
    logger: logging.Logger | None = log
    while logger is not None:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)
        logger = logger.parent if logger.propagate else None


def exp(x: float) -> float:
    """exp that saturates to inf (a diverging loss is data, not an OverflowError)."""
    return math.exp(x) if x < 709 else math.inf


def mean_finite(a: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else math.nan


def last(a: np.ndarray) -> float:
    return float(a[-1]) if len(a) else math.nan


def number(x: float, digits: int) -> str:
    """x with `digits` decimals, or that many significant digits where it is huge (a
    diverging run's loss) or not finite."""
    return f"{x:.{digits}f}" if abs(x) < 1e5 else f"{x:.{digits}g}"


def progress_line(m: dict, tokens: bool) -> str:
    """Training numbers for the log: perplexities (and the validation accuracy, for a task
    that has one) for a token task, the squared error (with its trivial baseline) for a
    regression one."""
    if tokens:
        accuracy = m.get("val_accuracy")
        return (f"train loss {number(m['train_loss'], 4)} (ppl {number(m['train_ppl'], 3)}), val "
                f"loss {number(m['val_loss'], 4)} (ppl {number(m['val_ppl'], 3)})"
                + ("" if accuracy is None else f", val accuracy {number(accuracy, 4)}"))
    return (f"train MSE {number(m['train_loss'], 4)}, val MSE {number(m['val_loss'], 4)} (always "
            f"predicting 1 scores {ADDING_BASELINE:.4f})")


def sample_text(cell: Cell, task: Task, params) -> str:
    """d2l's predict('time traveller ', 50) with the first seed's network."""
    index = {tok: i for i, tok in enumerate(task.vocab)}
    prefix = jnp.asarray([index[c] for c in SAMPLE_PREFIX], jnp.int32)
    first = jax.tree.map(lambda a: a[0], params)
    # to numpy first: iterating over a device array compiles a program that splits it
    toks = np.asarray(jax.jit(make_generate(cell, SAMPLE_LENGTH))(first, prefix))
    return SAMPLE_PREFIX + "".join(task.vocab[int(i)] for i in toks)
