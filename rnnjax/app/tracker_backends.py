"""The experiment trackers' backends: the `Tracker` interface (which `none` is) and one class
per backend, TensorBoard, Weights & Biases, MLflow and CSV files (`rnnjax.app.trackers` makes
them). Each imports its package when it is made."""

import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("rnnjax")

# MLflow's HTTP client settings (its environment variables): a few quick retries, not minutes
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


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


def flatten(tree: Mapping[str, Any], sep: str, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from flatten(v, sep, f"{prefix}{k}{sep}")
        else:
            yield f"{prefix}{k}", v


def _param_value(v: Any) -> bool | int | float | str:
    """A config value as a scalar that trackers' parameter tables take (lists as JSON)."""
    if isinstance(v, bool | int | float | str):
        return v
    return json.dumps(v)


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
        self._config = {k: _param_value(v) for k, v in flatten(config, ".")}
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

        params = [Param(k, str(_param_value(v))) for k, v in flatten(config, ".")]
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
