"""Experiment trackers (the `logger` group): a job's config, headline numbers, gradient
profiles and training metrics, sent to TensorBoard, Weights & Biases, MLflow or CSV files.

Each tracker's package is imported only when that backend is chosen (`pip install
'rnnjax[tensorboard]'`, `[wandb]`, `[mlflow]`, or `[trackers]` for all three); `none` and
`csv` need nothing beyond rnnjax's own dependencies.

Where the files go: under the job's directory (`<job>/tensorboard/`, `<job>/wandb/`,
`<job>/mlflow.db` with `<job>/mlartifacts/`, `<job>/csv/`), or under `logger.dir` when it is
given (TensorBoard and CSV: one folder per run, `<dir>/<run name>`; wandb: `<dir>/wandb/`;
MLflow: one store `<dir>/mlflow.db` shared by every job pointed there).
"""

import importlib.util
import logging
import os
import shutil
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from rnnjax.app.names import folder_name
from rnnjax.app.tracker_backends import (
    CsvTracker,
    MlflowTracker,
    TensorBoardTracker,
    Tracker,
    WandbTracker,
    flatten,
)
from rnnjax.app.tracker_names import TRACKERS  # one list: the config's schema reads it too

log = logging.getLogger("rnnjax")

# The `logger.*` keys each backend takes (besides `name`); the others must stay null.
OPTIONS = {
    "none": (),
    "tensorboard": ("dir",),
    "wandb": ("dir", "project", "mode"),
    "mlflow": ("dir", "project", "uri"),
    "csv": ("dir",),
}
# The packages each backend imports, and the pip extra that installs them.
PACKAGES = {"tensorboard": ("tensorboardX",), "wandb": ("wandb",),
            "mlflow": ("mlflow", "sqlalchemy", "alembic")}  # sqlalchemy, alembic: sqlite store
EXTRA = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
REACH_TIMEOUT_S = 10  # seconds to wait for a tracking server's port before giving up


class TrackerError(ValueError):
    """A tracker that cannot be made (unknown name, an option it does not take, a package
    that is not installed); the message is one line."""


def needs_package(choice: str, package: str, extra: str) -> str:
    """The message for an option (`logger=wandb`, `hydra/launcher=slurm`) whose package is
    not installed, naming the extra that installs it."""
    return f"{choice} needs the package {package!r}: pip install 'rnnjax[{extra}]'"


def check_options(name: str, options: Mapping[str, Any] | None = None) -> None:
    """Raises TrackerError for an unknown tracker name, a `logger.*` option that the tracker
    does not take (set, that is, not None), or a package it needs that is not installed
    (looked up, not imported). `validate` can call it before any job starts."""
    if name not in TRACKERS:
        raise TrackerError(f"logger={name} is invalid: allowed: {', '.join(TRACKERS)}")
    for key, value in (options or {}).items():
        if key != "name" and value is not None and key not in OPTIONS[name]:
            takes = ", ".join(f"logger.{k}" for k in OPTIONS[name]) or "no option"
            raise TrackerError(f"logger.{key} is not an option of logger={name} (it takes "
                               f"{takes})")
    if name == "mlflow" and (options or {}).get("uri") and (options or {}).get("dir"):
        raise TrackerError("logger.uri and logger.dir are both set: give one of them (uri: a "
                           "tracking server or database; dir: a local sqlite store there)")
    for package in PACKAGES.get(name, ()):
        if importlib.util.find_spec(package) is None:
            raise TrackerError(needs_package(f"logger={name}", package, EXTRA[name]))


def check_reachable(name: str, options: Mapping[str, Any] | None = None) -> None:
    """Raises TrackerError, within REACH_TIMEOUT_S seconds, when the tracker's server cannot be
    reached (`logger=mlflow logger.uri=http://...`), so that a job does not compute for
    minutes and then find its tracker gone; other trackers and URIs are not checked."""
    uri = (options or {}).get("uri")
    if getattr(name, "value", name) != "mlflow" or not uri:
        return
    parts = urlsplit(str(uri))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        socket.create_connection((parts.hostname, port), timeout=REACH_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise TrackerError(f"logger.uri={uri}: cannot reach the tracking server ({why}); "
                           "start it, or set another logger.uri") from None


def planned_location(name: str, job_dir: str | os.PathLike, run_name: str,
                     options: Mapping[str, Any] | None = None) -> str | None:
    """Where `make_tracker` would write (a folder, or MLflow's URI), for messages about a
    tracker that could not be made; None for `none`. Under `logger.dir` a file-based run's
    folder may get -2, -3, ... (see `_run_dir`)."""
    name = getattr(name, "value", name)
    opts = {k: v for k, v in (options or {}).items() if k != "name" and v is not None}
    base = Path(opts["dir"]).expanduser() if "dir" in opts else Path(job_dir)
    if name in ("tensorboard", "csv"):
        return str(base / folder_name(run_name or Path(job_dir).name) if "dir" in opts
                   else base / name)
    if name == "mlflow":
        return str(opts.get("uri") or f"sqlite:///{base.resolve() / 'mlflow.db'}")
    if name == "wandb":
        return str(base / "wandb")
    return None


def make_tracker(name: str, job_dir: str | os.PathLike, run_name: str,
                 options: Mapping[str, Any] | None = None, group: str | None = None
                 ) -> "Tracker":
    """The tracker `name` for one job; close it when the job ends (or use it as a context
    manager, which marks the run failed when the block raises).

    Args:
      name: none, tensorboard, wandb, mlflow or csv (or the config's LoggerName).
      job_dir: the job's output directory; the tracker's files go under it unless
        `options["dir"]` is given.
      run_name: the run's name in the tracker (a sweep job's overrides, say); under
        `options["dir"]` also the name of its folder (TensorBoard, CSV).
      options: the `logger.*` keys: dir, project (wandb project, MLflow experiment; default
        rnnjax), mode (wandb: online or offline; default offline unless WANDB_MODE or
        WANDB_API_KEY is set), uri (MLflow tracking URI; default sqlite:///<dir>/mlflow.db).
        None values mean the default; `name` is ignored.
      group: the sweep the job belongs to (wandb's run group, an MLflow tag), if any.

    Raises:
      TrackerError: an unknown name, an option the tracker does not take, or its package is
        missing (the message says which extra to install).
    """
    name = getattr(name, "value", name)
    check_options(name, options)
    opts = {k: v for k, v in (options or {}).items() if k != "name" and v is not None}
    opts = {k: (v.value if hasattr(v, "value") else v) for k, v in opts.items()}  # enums
    job_dir = Path(job_dir)
    run_name = run_name or job_dir.name
    if name == "none":
        return Tracker()
    try:
        if name == "tensorboard":
            return TensorBoardTracker(_run_dir(job_dir, opts.get("dir"), run_name, "tensorboard"))
        if name == "csv":
            return CsvTracker(_run_dir(job_dir, opts.get("dir"), run_name, "csv"))
        root = Path(opts["dir"]).expanduser().resolve() if "dir" in opts else job_dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
        if name == "wandb":
            return WandbTracker(root, run_name, opts.get("project", "rnnjax"), opts.get("mode"),
                                group)
        return MlflowTracker(root, run_name, opts.get("project", "rnnjax"), opts.get("uri"),
                             group)
    except ModuleNotFoundError as e:
        raise TrackerError(needs_package(f"logger={name}", e.name, EXTRA[name])) from None


def headline_numbers(headline: Mapping[str, Any], sep: str = "/") -> dict[str, float]:
    """The numbers of a (nested) headline dict, flat: `{"theory": {"mean_field": {"x": 1}}}`
    -> `{"theory/mean_field/x": 1}`. Counts stay integers and flags booleans (a tracker that
    only takes floats converts them); the strings "inf"/"-inf" (how summary.json writes
    infinities) are infinities; lists, other strings and None (summary.json's NaN) are left
    out."""
    out: dict[str, Any] = {}
    for k, v in flatten(headline, sep):
        if isinstance(v, bool | np.bool_):
            out[k] = bool(v)
        elif isinstance(v, int | np.integer):
            out[k] = int(v)
        elif isinstance(v, float | np.floating):
            out[k] = float(v)
        elif v in ("inf", "-inf"):
            out[k] = float(v)
    return out


def median_profile(grad_norm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The median over seeds of a profile, ordered by steps back.

    Args:
      grad_norm: (S, T) the profile of each seed at t = 1..T (NaN ignored; inf kept).

    Returns:
      steps_back (T,) = 0, 1, ..., T-1 (T - t), and the median over seeds there (T,).
    """
    g = np.asarray(grad_norm, dtype=np.float64)
    with warnings.catch_warnings():
        # an all-NaN column (every seed diverged there) is data, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(g, axis=0)
    return np.arange(g.shape[-1]), med[::-1]


def _run_dir(job_dir: Path, base: str | None, run_name: str, sub: str) -> Path:
    """The folder of a file-based run: `<job>/<sub>/`, emptied first (a job that runs again
    replaces its own files, as it does its tables), or a new `<base>/<run name>` (with -2,
    -3, ... when taken: a run never writes into another run's folder)."""
    if base is None:
        d = job_dir / sub
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d
    root = Path(base).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    name = folder_name(run_name)
    for i in range(1, 10_000):
        d = root / (name if i == 1 else f"{name}-{i}")
        try:
            d.mkdir()  # atomic: two parallel jobs cannot both get the same folder
            return d
        except FileExistsError:
            continue
    raise TrackerError(f"{root}: no free folder name for run {name}")


