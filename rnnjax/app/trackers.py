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

import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

log = logging.getLogger("rnnjax")

TRACKERS = ("none", "tensorboard", "wandb", "mlflow", "csv")
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
_NAME_MAX = 120
# MLflow's HTTP client settings (its environment variables): a few quick retries, not minutes
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
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
        return str(base / _safe_name(run_name or Path(job_dir).name) if "dir" in opts
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


class Tracker:
    """The `none` tracker, and the interface of the others: every method does nothing."""

    location: str | None = None  # where the run's files (or its store) are; None: nowhere

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Records the job's resolved config (a nested dict)."""

    def log_headline(self, headline: Mapping[str, float]) -> None:
        """Records the headline numbers (a flat dict of numbers, inf allowed: the measured
        slope beside each prediction, counts as integers, flags as booleans; see
        `headline_numbers`)."""

    def log_profile(self, train_step: int, steps_back: np.ndarray, values: np.ndarray,
                    name: str = "grad_norm") -> None:
        """Records one gradient profile against steps back, at a training step.

        Args:
          train_step: the training step (0: at initialization).
          steps_back: (T,) integers, T - t for timestep t (see `median_profile`).
          values: (T,) the profile there (e.g. the median over seeds of ||dL/dH_t||).
          name: the series (grad_norm, param_grad_norm, ...).
        """

    def log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Records training metrics (a flat dict of floats) at a training step."""

    def close(self, failed: bool = False) -> None:
        """Ends the run (marked failed where the tracker has such a state) and flushes."""

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


def headline_numbers(headline: Mapping[str, Any], sep: str = "/") -> dict[str, float]:
    """The numbers of a (nested) headline dict, flat: `{"theory": {"mean_field": {"x": 1}}}`
    -> `{"theory/mean_field/x": 1}`. Counts stay integers and flags booleans (a tracker that
    only takes floats converts them); the strings "inf"/"-inf" (how summary.json writes
    infinities) are infinities; lists, other strings and None (summary.json's NaN) are left
    out."""
    out: dict[str, Any] = {}
    for k, v in _flatten(headline, sep):
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


def _flatten(tree: Mapping[str, Any], sep: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, sep, f"{prefix}{k}{sep}")
        else:
            yield f"{prefix}{k}", v


def _param_value(v: Any) -> bool | int | float | str:
    """A config value as a scalar that trackers' parameter tables take (lists as JSON)."""
    if isinstance(v, bool | int | float | str):
        return v
    return json.dumps(v)


def _safe_name(run_name: str) -> str:
    """A folder name from a run name (`task.path=/a/b` must not make folders)."""
    name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", run_name).strip(".") or "run"
    if len(name) > _NAME_MAX:
        digest = hashlib.sha1(run_name.encode()).hexdigest()[:12]
        name = f"{name[:_NAME_MAX - 13]}-{digest}"
    return name


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
    name = _safe_name(run_name)
    for i in range(1, 10_000):
        d = root / (name if i == 1 else f"{name}-{i}")
        try:
            d.mkdir()  # atomic: two parallel jobs cannot both get the same folder
            return d
        except FileExistsError:
            continue
    raise TrackerError(f"{root}: no free folder name for run {name}")


class TensorBoardTracker(Tracker):
    """TensorBoard event files, written with tensorboardX (needs neither TensorFlow nor
    PyTorch). Tags: `config` (text: the config as JSON), `headline/<key>` (scalars at step 0),
    `profile/<name>/train_step_<n>` (one scalar series per logged training step, whose step
    axis is steps back), and each metric under its own name, against the training step. On
    close, the flat config and the headline tags go to the HParams dashboard, so a sweep's jobs
    can be compared by their config."""

    def __init__(self, logdir: Path):
        from tensorboardX import SummaryWriter

        # tensorboardX warns on every NaN/inf scalar; here they are data (flagged overflow).
        logging.getLogger("tensorboardX.x2num").addFilter(
            lambda r: "NaN or Inf" not in r.getMessage())
        self._writer = SummaryWriter(logdir=str(logdir))
        self.location = str(logdir)
        self._config: dict[str, Any] = {}
        self._headline: list[str] = []

    def log_config(self, config):
        self._config = {k: _param_value(v) for k, v in _flatten(config, ".")}
        text = json.dumps(config, indent=2, default=str)
        self._writer.add_text("config", f"```\n{text}\n```", 0)

    def log_headline(self, headline):
        for k, v in headline.items():
            self._writer.add_scalar(f"headline/{k}", float(v), 0)
            self._headline.append(f"headline/{k}")

    def log_profile(self, train_step, steps_back, values, name="grad_norm"):
        tag = f"profile/{name}/train_step_{int(train_step)}"
        for k, v in zip(_ints(steps_back), _floats(values, steps_back), strict=True):
            self._writer.add_scalar(tag, v, k)

    def log_metrics(self, step, metrics):
        for k, v in metrics.items():
            self._writer.add_scalar(k, float(v), int(step))

    def close(self, failed=False):
        if self._writer is None:
            return
        if self._config:
            from tensorboardX.summary import hparams

            for summary in hparams(self._config, dict.fromkeys(self._headline, math.nan)):
                self._writer.file_writer.add_summary(summary)
        self._writer.close()
        self._writer = None


class WandbTracker(Tracker):
    """A Weights & Biases run, offline unless asked (logger.mode=online, WANDB_MODE, or an
    API key in WANDB_API_KEY): `wandb sync <job>/wandb/offline-run-*` uploads it later. The
    config is the run's config; headline numbers go to its summary as `headline/<key>` (wandb
    stores NaN there as null); each profile is a table (steps_back, <name>) logged as a line
    chart `profile/<name>` at its training step (the chart shows the latest; every table is
    kept in the run's media); metrics are logged against `train_step`, the x axis of every
    key."""

    def __init__(self, root: Path, run_name: str, project: str, mode: str | None,
                 group: str | None):
        import wandb

        mode = mode or os.environ.get("WANDB_MODE") or (
            "online" if os.environ.get("WANDB_API_KEY") else "offline")
        kwargs = dict(dir=str(root), project=project, name=run_name, group=group,
                      reinit="create_new")
        try:
            self._run = wandb.init(mode=mode, **kwargs)
        except Exception as e:  # no network, a bad key: keep the data offline instead
            if mode != "online":
                raise
            log.warning("wandb: online run failed (%s); logging offline instead",
                        str(e).splitlines()[0])
            self._run = wandb.init(mode="offline", **kwargs)
        self._wandb = wandb
        self._run.define_metric("train_step")
        self._run.define_metric("*", step_metric="train_step")
        self.location = str(Path(self._run.dir).parent)

    def log_config(self, config):
        self._run.config.update(dict(config), allow_val_change=True)

    def log_headline(self, headline):
        self._run.summary.update({f"headline/{k}": float(v) for k, v in headline.items()})

    def log_profile(self, train_step, steps_back, values, name="grad_norm"):
        rows = [[k, v] for k, v in zip(_ints(steps_back), _floats(values, steps_back),
                                       strict=True)]
        table = self._wandb.Table(columns=["steps_back", name], data=rows)
        chart = self._wandb.plot.line(table, "steps_back", name,
                                      title=f"{name} against steps back")
        self._run.log({"train_step": int(train_step), f"profile/{name}": chart})

    def log_metrics(self, step, metrics):
        self._run.log({"train_step": int(step), **{k: float(v) for k, v in metrics.items()}})

    def close(self, failed=False):
        if self._run is not None:
            self._run.finish(exit_code=1 if failed else 0)
            self._run = None


class MlflowTracker(Tracker):
    """An MLflow run in a local sqlite store, `sqlite:///<dir>/mlflow.db` (MLflow 3's default
    kind of store; artifacts in `<dir>/mlartifacts/`), or at `logger.uri`. The config is the
    run's params (flat keys such as `train.lr`); headline numbers are metrics `headline/<key>`
    at step 0; each profile is a metric `profile/<name>/train_step_<n>` whose step is steps
    back (MLflow charts a metric against its step); training metrics are metrics at the
    training step. MLflow stores NaN as NaN and +-inf as +-1.8e308 (the largest float)."""

    _BATCH = 1000  # MLflow's limit of metrics per log_batch call

    def __init__(self, root: Path, run_name: str, experiment: str, uri: str | None,
                 group: str | None):
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        # MLflow retries an HTTP request for minutes by default: a server that goes away
        # mid-job would hold the job's end that long (the user's own settings win).
        for var, value in HTTP_RETRIES.items():
            os.environ.setdefault(var, value)
        local = uri is None
        uri = uri or f"sqlite:///{root / 'mlflow.db'}"
        self._client = MlflowClient(tracking_uri=uri)
        exp = self._client.get_experiment_by_name(experiment)
        if exp is None:
            try:
                artifacts = (root / "mlartifacts").as_uri() if local else None
                exp_id = self._client.create_experiment(experiment, artifact_location=artifacts)
            except MlflowException:  # a parallel job created it first
                exp_id = self._client.get_experiment_by_name(experiment).experiment_id
        else:
            exp_id = exp.experiment_id
        tags = {"sweep": group} if group else None
        self._run_id = self._client.create_run(exp_id, run_name=run_name,
                                               tags=tags).info.run_id
        self.location = uri

    def _log(self, metrics: list) -> None:
        for i in range(0, len(metrics), self._BATCH):
            self._client.log_batch(self._run_id, metrics=metrics[i:i + self._BATCH])

    def _metric(self, key: str, value: float, step: int):
        from mlflow.entities import Metric

        return Metric(key, float(value), int(time.time() * 1000), int(step))

    def log_config(self, config):
        from mlflow.entities import Param

        params = [Param(k, str(_param_value(v))) for k, v in _flatten(config, ".")]
        for i in range(0, len(params), 100):  # MLflow's limit of params per call
            self._client.log_batch(self._run_id, params=params[i:i + 100])

    def log_headline(self, headline):
        self._log([self._metric(f"headline/{k}", v, 0) for k, v in headline.items()])

    def log_profile(self, train_step, steps_back, values, name="grad_norm"):
        key = f"profile/{name}/train_step_{int(train_step)}"
        self._log([self._metric(key, v, k) for k, v in
                   zip(_ints(steps_back), _floats(values, steps_back), strict=True)])

    def log_metrics(self, step, metrics):
        self._log([self._metric(k, v, step) for k, v in metrics.items()])

    def close(self, failed=False):
        if self._run_id is not None:
            self._client.set_terminated(self._run_id, "FAILED" if failed else "FINISHED")
            self._run_id = None


class CsvTracker(Tracker):
    """Plain files that pandas reads: `config.json` (the nested config), `headline.csv` (one
    row, a column per headline key; counts as integers, flags as True/False), `profile.csv`
    (columns train_step, steps_back, t, name, value; appended at each logged step; t = T -
    steps_back, as in grad_norms.parquet), `metrics.csv` (columns step and one per metric).
    NaN is an empty field and infinities are `inf`/`-inf`, which `pd.read_csv` reads back."""

    def __init__(self, folder: Path):
        self._dir = folder
        self.location = str(folder)
        self._headline: dict[str, float] = {}
        self._metric_columns: list[str] | None = None

    def log_config(self, config):
        from rnnjax.app.results import write_json

        write_json(config, self._dir / "config.json")

    def log_headline(self, headline):
        import pandas as pd

        # counts stay integers and flags booleans: `pd.read_csv` reads them back as such
        self._headline.update({k: v if isinstance(v, bool | int) else float(v)
                               for k, v in headline.items()})
        path = self._dir / "headline.csv"
        pd.DataFrame([self._headline]).to_csv(path.with_suffix(".tmp"), index=False)
        path.with_suffix(".tmp").replace(path)

    def log_profile(self, train_step, steps_back, values, name="grad_norm"):
        import pandas as pd

        k = np.asarray(_ints(steps_back))
        # t beside steps back, as in the job's tables: steps back T - t for t = 1..T
        frame = pd.DataFrame({"train_step": int(train_step), "steps_back": k,
                              "t": len(k) - k, "name": name,
                              "value": _floats(values, steps_back)})
        path = self._dir / "profile.csv"
        frame.to_csv(path, mode="a", header=not path.exists(), index=False)

    def log_metrics(self, step, metrics):
        import pandas as pd

        row = pd.DataFrame([{"step": int(step), **{k: float(v) for k, v in metrics.items()}}])
        path = self._dir / "metrics.csv"
        if self._metric_columns is None:
            row.to_csv(path, index=False)
            self._metric_columns = list(row.columns)
        elif set(row.columns) <= set(self._metric_columns):
            row.reindex(columns=self._metric_columns).to_csv(path, mode="a", header=False,
                                                             index=False)
        else:  # a new metric: rewrite the file with the union of the columns
            table = pd.concat([pd.read_csv(path), row], ignore_index=True)
            table.to_csv(path, index=False)
            self._metric_columns = list(table.columns)


def _ints(steps_back: np.ndarray) -> list[int]:
    a = np.asarray(steps_back)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"steps_back must be a 1-D integer array, got {a.dtype} {a.shape}")
    return a.tolist()


def _floats(values: np.ndarray, steps_back: np.ndarray) -> list[float]:
    v = np.asarray(values, dtype=np.float64)
    if v.shape != np.shape(steps_back):
        raise ValueError(f"a profile of shape {v.shape} against steps_back of shape "
                         f"{np.shape(steps_back)}")
    return v.tolist()
