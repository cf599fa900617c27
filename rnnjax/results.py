"""Tidy results: probe arrays to DataFrames, headline numbers, atomic files, and `load_sweep`.

pandas only runs here, after the jitted call has returned.
"""

import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

GRAD_NORMS = "grad_norms.parquet"
SUMMARY = "summary.json"
PARAMS = "params.npz"
BATCH = "batch.npz"
METRICS = "metrics.parquet"


def fit_window(T: int, first: int = 1) -> tuple[int, int]:
    """The timesteps (1-based, inclusive) a slope is fitted over: the middle half of
    `first`..T, away from the ends (where the local loss term and H_0 = 0 distort the profile);
    all of `first`..T when that middle half has fewer than 2 steps."""
    n = T - first + 1
    lo, hi = first + n // 4, T - n // 4
    return (lo, hi) if hi - lo >= 1 else (first, T)


def usable_from(grad_norm: np.ndarray) -> int:
    """The first t (1-based) from which every grad_norm up to T is finite and > 0.

    Going back in time a vanishing gradient underflows to 0 and stays there; an exploding one
    overflows to inf. Only the steps after the last such step carry a measurable slope.
    """
    bad = ~(np.isfinite(grad_norm) & (np.asarray(grad_norm) > 0))
    return int(np.nonzero(bad)[0].max()) + 2 if bad.any() else 1


def log10_slope(grad_norm: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Least-squares slope of log10 grad_norm per step BACK in time, and the window fitted.

    The window is the middle half of the usable steps (`usable_from`..T). Negative: the
    gradient shrinks going back (vanishing); positive: it grows (exploding). NaN when fewer
    than 2 steps are usable.

    Args:
      grad_norm: (T,) norms for t = 1..T.

    Returns:
      (slope, (lo, hi)) with the window 1-based and inclusive.
    """
    g = np.asarray(grad_norm, dtype=np.float64)
    T, first = len(g), usable_from(g)
    window = fit_window(T, first) if first <= T else (first, T)
    t = np.arange(window[0], window[1] + 1)
    if len(t) < 2:
        return math.nan, window
    return float(-np.polyfit(t, np.log10(g[t - 1]), 1)[0]), window


def config_columns(cfg) -> dict[str, Any]:
    """The config as flat columns, so that a sweep's frames concatenate with no joins.

    An init parameter given as a list is None here: the job sets it per network group."""
    def scalar(v):
        return None if isinstance(v, list | tuple) else v

    return {
        "cell": cfg.cell.name.value,
        "activation": cfg.activation.name.value,
        "init": cfg.init.name.value,
        "init_std": scalar(cfg.init.std),
        "init_gain": scalar(cfg.init.gain),
        "init_radius": scalar(cfg.init.radius),
        "task": cfg.task.name.value,
        "vocab_size": cfg.task.vocab_size,
        "seq_len": cfg.seq_len,
        "hidden_size": cfg.hidden_size,
        "batch_size": cfg.batch_size,
        "loss_at": cfg.probe.loss_at.value,
        "dtype": cfg.dtype.value,
    }


def probe_frame(seeds: np.ndarray, profile, columns: Mapping[str, Any],
                train_step: int = 0) -> pd.DataFrame:
    """One row per (seed, t) of a probe's result, with its flags.

    Flags: `underflow` (grad_norm is 0: below the dtype's range, or exactly zero), `overflow`
    (the backward chain left the dtype's range at or after t: grad_norm is inf from there back
    to t = 1), `forward_overflow` (the seed's forward pass was not finite from step
    `forward_overflow_t` on, so its gradients are NaN; `forward_overflow_t` is 0 when finite).

    Args:
      seeds: (S,) seed of each network.
      profile: a `rnnjax.summary.Profile` of S networks and T steps.
      columns: constant columns (the config).
      train_step: the training step the profile was taken at (0: initialization).
    """
    S, T = profile.grad_norm.shape
    g = np.asarray(profile.grad_norm, dtype=np.float64).ravel()
    fwd = np.repeat(np.asarray(profile.forward_overflow_t, dtype=np.int64), T)
    df = pd.DataFrame({
        "seed": np.repeat(np.asarray(seeds, dtype=np.int64), T),
        "t": np.tile(np.arange(1, T + 1, dtype=np.int64), S),
        "grad_norm": g,
        "param_grad_norm": np.asarray(profile.param_grad_norm, dtype=np.float64).ravel(),
        **{f"{k}_grad_norm": np.asarray(v, dtype=np.float64).ravel()
           for k, v in profile.taps.items()},
        "train_step": np.int64(train_step),
        "underflow": g == 0,
        "overflow": np.asarray(profile.overflow, dtype=bool).ravel(),
        "forward_overflow": fwd > 0,
        "forward_overflow_t": fwd,
    })
    for k, v in columns.items():
        df[k] = v
    # Explicit dtypes: a column that is None in one job and a number in another must still
    # concatenate to float, and strings stay strings.
    for k in ("init_std", "init_gain", "init_radius"):
        if k in df:
            df[k] = df[k].astype("float64")
    if "vocab_size" in df:
        df["vocab_size"] = df["vocab_size"].astype("Int64")
    return df


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Writes through `write(tmp_path)` and renames into place, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    _atomic(Path(path), lambda tmp: df.to_parquet(tmp, index=False))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic(Path(path), write)


def json_safe(x):
    """x with NaN as None and infinities as the strings \"inf\"/\"-inf\" (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def write_json(obj: Mapping[str, Any], path: Path) -> None:
    """Strict JSON (NaN becomes null, infinities the strings "inf"/"-inf"), written atomically."""
    text = json.dumps(json_safe(dict(obj)), indent=2, allow_nan=False)
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"))


def job_status(job: Path) -> str:
    """"ok" or "nonfinite" (finished), "failed" (the job raised), or "unfinished" (running, or
    killed before its summary.json, which is written last)."""
    try:
        status = json.loads((job / SUMMARY).read_text()).get("status")
    except (OSError, ValueError):
        return "unfinished"
    if status == "failed":
        return status
    return status if (job / GRAD_NORMS).is_file() else "unfinished"


FINISHED = ("ok", "nonfinite")  # statuses of a job that ran to the end (nonfinite is data)


def _finished_jobs(root: Path) -> tuple[list[Path], dict[Path, str]]:
    """The finished job directories under root, and the failed and unfinished ones with their
    `job_status`: a job has a grad_norms.parquet, a summary.json or a Hydra `.hydra/` folder,
    and is finished once its summary.json (written last) says it ran to the end."""
    marks = [*root.rglob(GRAD_NORMS), *root.rglob(SUMMARY), *root.rglob(".hydra")]
    status = {j: job_status(j) for j in sorted({p.parent for p in marks})}
    others = {j: s for j, s in status.items() if s in ("failed", "unfinished")}
    return [j for j in status if j not in others], others


def _list_param(job: Path) -> str | None:
    """The init parameter a job vmapped over as a list, or None."""
    summary = json.loads((job / SUMMARY).read_text())
    return summary["headlines"][0]["init_param"] if "headlines" in summary else None


def _check_root(path) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a directory")
    return root


def _warn_unfinished(root: Path, others: dict[Path, str]) -> None:
    for kind in ("failed", "unfinished"):
        jobs = [j for j, s in others.items() if s == kind]
        if jobs:
            names = ", ".join(str(j.relative_to(root)) for j in jobs)
            warnings.warn(f"load_sweep: skipped {len(jobs)} {kind} job(s): {names}",
                          stacklevel=3)


def value_job(job: str, param: str, value: float) -> str:
    """The `job` name of one value of a job whose init parameter was a list:
    `JOB[init.gain=0.5]`."""
    return f"{job}[init.{param}={value:g}]"


def _per_value(job: str, summary: dict) -> list[tuple[str, dict]]:
    """A summary as (job name, summary) pairs, one per init value when the init parameter was
    a list (its headline under "headline", the value in config.init)."""
    if "headlines" not in summary:
        return [(job, summary)]
    pairs = []
    for h in summary["headlines"]:
        one = {k: v for k, v in summary.items() if k != "headlines"}
        param, value = h["init_param"], h["init_value"]
        one["headline"] = h
        one["config"] = {**one["config"], "init": {**one["config"]["init"], param: value}}
        pairs.append((value_job(job, param, value), one))
    return pairs


def load_summaries(path: str | os.PathLike) -> pd.DataFrame:
    """One row per finished job under `path`: its summary.json flattened (dots join nested
    keys: `headline.theory.mean_field.chi1`, `config.activation.name`, ...), per-seed lists
    dropped, plus a `job` column as in `load_sweep`."""
    root = _check_root(path)
    done, unfinished = _finished_jobs(root)
    _warn_unfinished(root, unfinished)
    rows = []
    for job in done:
        summary = json.loads((job / SUMMARY).read_text())
        for name, one in _per_value(str(job.relative_to(root)), summary):
            row = pd.json_normalize(one).iloc[0].to_dict()
            row = {k: v for k, v in row.items() if not isinstance(v, list | dict)}
            rows.append({"job": name, **row})
    if not rows:
        raise FileNotFoundError(f"load_summaries: no finished job under {str(root)!r}")
    return pd.DataFrame(rows)


def load_metrics(path: str | os.PathLike) -> pd.DataFrame | None:
    """The training metrics (metrics.parquet) of every finished job under `path`, with a `job`
    column; None when no job trained."""
    root = _check_root(path)
    done, _ = _finished_jobs(root)
    frames = [pd.read_parquet(j / METRICS).assign(job=str(j.relative_to(root)))
              for j in done if (j / METRICS).is_file()]
    return pd.concat(frames, ignore_index=True) if frames else None


def load_sweep(path: str | os.PathLike) -> pd.DataFrame:
    """One tidy DataFrame of every finished job under `path` (a run or a multirun directory).

    A job is a directory with a `grad_norms.parquet` or a Hydra `.hydra/` folder; it counts as
    finished once its `summary.json` (written last) says so. Unfinished and failed jobs are
    skipped with a warning. A `job` column holds each job's directory relative to `path`, with
    `[init.gain=0.5]` appended for each value of a job whose init parameter was a list.
    """
    root = _check_root(path)
    done, unfinished = _finished_jobs(root)
    frames = []
    for job in done:
        df = pd.read_parquet(job / GRAD_NORMS)
        name = str(job.relative_to(root))
        param = _list_param(job)
        if param is None:
            df.insert(0, "job", name)
        else:
            df.insert(0, "job", [value_job(name, param, v) for v in df[f"init_{param}"]])
        frames.append(df)
    _warn_unfinished(root, unfinished)
    if not frames:
        raise FileNotFoundError(f"load_sweep: no finished job under {str(root)!r}")
    return pd.concat(frames, ignore_index=True)
