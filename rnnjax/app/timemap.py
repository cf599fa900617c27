"""probe.time_map: the job's time-to-time map (`rnnjax.core.timemap`), fitted into memory,
refused in one line where one network does not fit, and written as time_map.parquet."""

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from rnnjax.app import results
from rnnjax.app.memory import fit_seeds
from rnnjax.app.validate import init_values
from rnnjax.core.timemap import make_time_map, time_map_error

log = logging.getLogger("rnnjax")


def time_map_frame(seeds: np.ndarray, log10_grad_norm: np.ndarray,
                   extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    """One row per (network, s, t) with t <= s: time_map.parquet's rows.

    Args:
      seeds: (N,) each network's seed.
      log10_grad_norm: (N, T, T) the map of each network, [s - 1, t - 1].
      extra: further per-network columns, (N,) each (an init parameter's value per network).

    Returns:
      Columns seed, s, t (1-based), log10_grad_norm (float64: log10 ||d(L_s / T)/dH_t||), and
      `extra`'s, seed-major, then s, then t.
    """
    N, T = log10_grad_norm.shape[:2]
    s, t = np.tril_indices(T)  # s >= t, row-major: s, then t
    per = len(s)
    return pd.DataFrame({
        "seed": np.repeat(np.asarray(seeds, np.int64), per),
        "s": np.tile(s + 1, N).astype(np.int64),
        "t": np.tile(t + 1, N).astype(np.int64),
        "log10_grad_norm": np.asarray(log10_grad_norm, np.float64)[:, s, t].ravel(),
        **{k: np.repeat(np.asarray(v), per) for k, v in (extra or {}).items()},
    })


def refusal(T: int, need: int, budget: int, max_memory_gb: float | None) -> str:
    """The one line refusing a map whose one network alone needs `need` bytes (planned peak)
    over the job's `budget`."""
    where = (f"max_memory_gb={max_memory_gb:g}" if max_memory_gb is not None
             else "80% of the free memory")
    return (f"probe.time_map=true is refused: the map of one network at T={T} needs about "
            f"{need / 1e9:.3g} GB (planned peak), over the {budget / 1e9:.3g} GB budget "
            f"({where}); use a smaller seq_len or batch_size, or probe.time_map=false")


def write_time_map(run: Any, truncate: int | None) -> str:
    """Computes the time-to-time map of the job's networks at initialization and writes it.

    Args:
      run: the job (`rnnjax.app.job.JobRun`): its config, cell, task, params, batches, memory
        budget and directory.
      truncate: the probe's truncation (`rnnjax.app.job.profile_truncation`).

    Returns:
      The file name written (time_map.parquet), for the summary's file list.

    Raises:
      ValueError: one line, where T is over `rnnjax.core.timemap.MAX_T` or the map of one
        network alone does not fit the memory budget.
    """
    cfg, x = run.cfg, run.x
    T = int(x.shape[2])
    error = time_map_error(T)
    if error:
        raise ValueError(error)
    calls = fit_seeds(make_time_map(run.cell, run.task.kind, truncate, cfg.probe.unroll),
                      (0, 0, 0), (run.params, x, run.y), run.budget, "time map")
    if run.budget is not None and calls.plan.peak(1) > run.budget:
        raise ValueError(refusal(T, calls.plan.peak(1), run.budget, cfg.max_memory_gb))
    started = time.perf_counter()
    tm = calls(run.params, x, run.y)
    log.info("time map: %d loss steps x %d timesteps measured in %.1f s", T, T,
             time.perf_counter() - started)
    param, values, is_list = init_values(cfg)
    seeds = np.arange(cfg.seed, cfg.seed + cfg.seeds)
    extra = ({f"init_{param}": np.repeat(np.asarray(values, np.float64), len(seeds))}
             if is_list else None)
    frame = time_map_frame(np.tile(seeds, len(values)), np.asarray(tm.log10_grad_norm), extra)
    results.write_parquet(frame, run.out / results.TIME_MAP)
    return results.TIME_MAP
