"""Structured configs (Hydra ConfigStore schema) and their validation.

Types and enum values are checked by OmegaConf when Hydra composes the config; ranges and
cross-field rules are checked by `validate`, which the `ValidateConfig` callback runs on every
job of a run or a sweep before Hydra creates any output directory.
"""

import hashlib
import json
import math
import re
import sys
import time
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnjax.init import PARAM_DEFAULTS
from rnnjax.tasks import DataError, check_readable, check_windows, load_timemachine


class Activation(Enum):
    tanh = "tanh"
    sigmoid = "sigmoid"
    relu = "relu"
    linear = "linear"


class InitName(Enum):
    normal = "normal"
    xavier = "xavier"
    orthogonal = "orthogonal"
    identity = "identity"
    gaussian = "gaussian"
    spectral = "spectral"


class TaskName(Enum):
    random = "random"
    timemachine = "timemachine"
    adding = "adding"
    copy = "copy"


class LossAt(Enum):
    all = "all"
    last = "last"


class Optimizer(Enum):
    sgd = "sgd"
    adam = "adam"
    rmsprop = "rmsprop"


class BPTT(Enum):
    full = "full"
    truncated = "truncated"
    randomized = "randomized"


class DType(Enum):
    float32 = "float32"
    float64 = "float64"


class LoggerName(Enum):  # rnnjax.trackers.TRACKERS
    none = "none"
    tensorboard = "tensorboard"
    wandb = "wandb"
    mlflow = "mlflow"
    csv = "csv"


class WandbMode(Enum):
    online = "online"
    offline = "offline"


# The one parameter each W_hh initializer takes (None: it takes none).
INIT_PARAM = {
    "normal": "std",
    "xavier": None,
    "orthogonal": "gain",
    "identity": "gain",
    "gaussian": "gain",
    "spectral": "radius",
}


@dataclass
class ActivationConfig:
    name: Activation = Activation.tanh  # phi in H_t = phi(A_t)


@dataclass
class InitConfig:
    # The parameter of the init is a number, or a list of numbers ([0.5,1.0,2.0]) that are
    # vmapped inside one job, one network per value and seed (typed Any so that it can be a
    # list; `validate` checks it).
    name: InitName = InitName.normal  # initializer of W_hh
    std: Any = None  # normal: entry std (d2l: 0.01)
    gain: Any = None  # orthogonal, identity, gaussian: the gain g
    radius: Any = None  # spectral: the exact spectral radius of W_hh


@dataclass
class TaskConfig:
    name: TaskName = TaskName.random  # where the probed batches come from
    vocab_size: int | None = 28  # random: number of distinct tokens (timemachine: from the text)
    path: str | None = None  # timemachine: the text file (else $RNNJAX_DATA, else download)


@dataclass
class ProbeConfig:
    loss_at: LossAt = LossAt.all  # L averaged over all steps, or at the last step only


@dataclass
class TrainConfig:
    steps: int = 0  # optimizer steps; 0 (the default) probes at initialization only
    epochs: int | None = None  # timemachine: passes over the 10000 training windows (not steps)
    optimizer: Optimizer = Optimizer.sgd  # optax.sgd, optax.adam or optax.rmsprop
    lr: float = 1.0  # learning rate
    clip: float | None = None  # global-norm clipping threshold (optax); null: off
    bptt: BPTT = BPTT.full  # full, truncated (every train.truncate steps) or randomized
    truncate: int | None = None  # truncated: k; randomized: the mean truncation length
    log_every: int = 10  # steps between logged profiles and metrics


@dataclass
class LoggerConfig:
    # Options a tracker does not take stay null (rnnjax.trackers.check_options); each
    # conf/logger/<name>.yaml sets its own defaults.
    name: LoggerName = LoggerName.none  # experiment tracker (none: the job's files only)
    dir: str | None = None  # where its files go; null: under the job's directory
    project: str | None = None  # wandb: the project; mlflow: the experiment
    mode: WandbMode | None = None  # wandb: null is offline unless WANDB_MODE/WANDB_API_KEY is set
    uri: str | None = None  # mlflow: a tracking server or database; null: sqlite:///<dir>/mlflow.db


@dataclass
class Config:
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    init: InitConfig = field(default_factory=InitConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seq_len: int = 64  # T, timesteps backpropagated through (>= 1)
    hidden_size: int = 64  # H (>= 1)
    batch_size: int = 32  # B, sequences per network (>= 1)
    seeds: int = 4  # S, independent networks and batches, vmapped in one call (>= 1)
    seed: int = 0  # base seed: network s uses seed + s
    dtype: DType = DType.float32  # float64 enables JAX's x64 mode for the job
    max_memory_gb: float | None = None  # per compiled call; null: 80% of free device memory
    resume: bool = True  # skip a job whose directory holds a finished run of the same config


def register_configs() -> None:
    """Stores the schema in Hydra's ConfigStore as `config_schema` (config.yaml extends it)."""
    ConfigStore.instance().store(name="config_schema", node=Config)


class ConfigError(ValueError):
    """An invalid config value; the message is one line naming the key and what is allowed."""


def _check_size(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key}={value} is invalid: must be an integer >= 1")


def _omegaconf_message(e: OmegaConfBaseException) -> str:
    """One line from an OmegaConf error (an interpolation that does not resolve, say)."""
    key = getattr(e, "full_key", None) or "config"
    return f"{key} is invalid: {str(e).splitlines()[0]}"


def _check_keys(node: DictConfig, schema: type, prefix: str) -> None:
    """Raises ConfigError for a key the schema does not have (`+train.clipp=1` would otherwise
    be ignored, silently)."""
    known = {f.name: f for f in fields(schema)}
    for key in node.keys():
        if prefix == "" and key == "hydra":
            continue
        if key not in known:
            raise ConfigError(f"{prefix}{key} is not a config key; allowed in "
                              f"{prefix.rstrip('.') or 'the config'}: {', '.join(known)}")
        sub = known[key].default_factory
        value = node._get_node(key)
        if isinstance(value, DictConfig) and is_dataclass(sub):
            _check_keys(value, sub, f"{prefix}{key}.")


def check_group_options(argv: list[str], conf_dir: Path) -> None:
    """Exits with a one-line error when a config group is given a value that is not an option
    name (`activation=null`, `task=5`), which Hydra would report with a traceback."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep
    from hydra.errors import HydraException

    groups = {p.name: sorted(f.stem for f in p.glob("*.yaml"))
              for p in Path(conf_dir).iterdir() if p.is_dir()}
    args = [a for a in argv if "=" in a and not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except HydraException:
        return  # Hydra reports its own syntax errors
    for o in parsed:
        if o.key_or_group not in groups or o.is_delete():
            continue
        value = o.value()
        items = value.list if isinstance(value, ChoiceSweep) else [value]
        if not all(isinstance(v, str) for v in items):
            given = o.input_line or o.key_or_group
            _fail(f"{given} is invalid: {o.key_or_group} takes option names; allowed: "
                  f"{', '.join(groups[o.key_or_group])}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_init_value(p: str, value: Any) -> None:
    allowed = "must be a number > 0, or a list of them ([0.5,1.0]) vmapped in one job"
    items = value if isinstance(value, list) else [value]
    if not items or not all(_is_number(v) and 0 < v < math.inf for v in items):
        shown = "[" + ",".join(map(str, items)) + "]" if isinstance(value, list) else value
        raise ConfigError(f"init.{p}={shown} is invalid: {allowed}")
    if isinstance(value, list) and len(set(items)) != len(items):
        raise ConfigError(f"init.{p}={value} is invalid: the values must differ")


def init_values(cfg: Config) -> tuple[str | None, list[float | None], bool]:
    """(the init's parameter name, its values, whether it was given as a list).

    A parameter left unset is its default (normal: std 0.01; orthogonal, identity, gaussian:
    gain 1; spectral: radius 1); xavier takes none: (None, [None], False).
    """
    p = INIT_PARAM[cfg.init.name.value]
    if p is None:
        return None, [None], False
    value = getattr(cfg.init, p)
    if value is None:
        return p, [PARAM_DEFAULTS[p]], False
    if isinstance(value, list):
        return p, [float(v) for v in value], True
    return p, [float(value)], False


def validate(cfg: DictConfig | Config) -> Config:
    """Checks ranges and cross-field rules and returns the config as a `Config` object.

    Raises:
      ConfigError: one line naming the offending key and what is allowed.
    """
    if isinstance(cfg, DictConfig):
        _check_keys(cfg, Config, "")
        keys = [f.name for f in fields(Config)]
        try:
            cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config),
                                                      OmegaConf.masked_copy(cfg, keys)))
        except OmegaConfBaseException as e:
            raise ConfigError(_omegaconf_message(e)) from None
    for key in ("seq_len", "hidden_size", "batch_size", "seeds"):
        _check_size(key, getattr(cfg, key))
    if not 0 <= cfg.seed <= 2**32 - cfg.seeds:
        raise ConfigError(f"seed={cfg.seed} is invalid: must be an integer >= 0 with seed + seeds "
                          f"<= 2**32 (JAX's PRNG seeds are 32-bit)")
    if cfg.max_memory_gb is not None and not 0 < cfg.max_memory_gb < math.inf:
        raise ConfigError(f"max_memory_gb={cfg.max_memory_gb} is invalid: must be > 0, or null "
                          "for 80% of the free device memory")

    init = cfg.init.name.value
    wanted = INIT_PARAM[init]
    for p in ("std", "gain", "radius"):
        value = getattr(cfg.init, p)
        if p != wanted and value is not None:
            takes = f"init.{wanted}" if wanted else "no parameter"
            raise ConfigError(f"init.{p} is not a parameter of init={init} (it takes {takes})")
        if p == wanted and value is not None:
            _check_init_value(p, value)
            if isinstance(value, list) and (cfg.train.steps or cfg.train.epochs):
                raise ConfigError(f"init.{p} is a list: lists are vmapped for probing at "
                                  f"initialization only; to train, sweep init.{p} as separate "
                                  f"jobs (-m init.{p}=a,b)")

    task = cfg.task.name.value
    if task in ("adding", "copy", "timemachine") and cfg.task.vocab_size is not None and not (
            task == "timemachine" and cfg.task.vocab_size == 28):
        raise ConfigError(f"task.vocab_size is not a parameter of task={task} (its inputs are "
                          "fixed by the task); leave it unset")
    if task in ("adding", "copy") and cfg.task.path is not None:
        raise ConfigError(f"task.path is not a parameter of task={task}")
    if task == "adding" and cfg.probe.loss_at.value != "last":
        raise ConfigError("probe.loss_at=all is invalid for task=adding: it is scored at the "
                          "last step; allowed: last")
    if task == "random":
        if cfg.task.vocab_size is None or cfg.task.vocab_size < 2:
            raise ConfigError(
                f"task.vocab_size={cfg.task.vocab_size} is invalid: must be an integer >= 2"
            )
        if cfg.task.path is not None:
            raise ConfigError("task.path is not a parameter of task=random (use task=timemachine)")
    elif task == "timemachine":
        if cfg.task.path is not None:
            try:
                check_readable(Path(cfg.task.path).expanduser(), "task.path")
            except DataError as e:
                raise ConfigError(str(e)) from None
    _validate_train(cfg)
    return cfg


def _validate_train(cfg: Config) -> None:
    tr = cfg.train
    if tr.steps < 0:
        raise ConfigError(f"train.steps={tr.steps} is invalid: must be an integer >= 0")
    if tr.epochs is not None:
        if cfg.task.name.value != "timemachine":
            raise ConfigError(f"train.epochs applies to task=timemachine only; use train.steps "
                              f"for task={cfg.task.name.value}")
        if tr.epochs < 1:
            raise ConfigError(f"train.epochs={tr.epochs} is invalid: must be an integer >= 1")
        if tr.steps:
            raise ConfigError("train.epochs and train.steps are both set: give one of them")
    if not 0 < tr.lr < math.inf:
        raise ConfigError(f"train.lr={tr.lr} is invalid: must be a finite number > 0")
    if tr.clip is not None and not 0 < tr.clip < math.inf:
        raise ConfigError(f"train.clip={tr.clip} is invalid: must be a finite number > 0, or null "
                          "for no clipping")
    if tr.log_every < 1:
        raise ConfigError(f"train.log_every={tr.log_every} is invalid: must be an integer >= 1")
    bptt = tr.bptt.value
    if bptt == "full" and tr.truncate is not None:
        raise ConfigError("train.truncate is not a parameter of train.bptt=full (use "
                          "train.bptt=truncated or randomized)")
    least = {"truncated": 1, "randomized": 2}.get(bptt)
    if least is not None and (tr.truncate is None or tr.truncate < least):
        raise ConfigError(f"train.truncate={tr.truncate} is invalid for train.bptt={bptt}: must "
                          f"be an integer >= {least}")


def _job_overrides(config: DictConfig) -> list[list[str]]:
    """The override lists of every job a multirun will launch (as Hydra's basic sweeper)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    # The raw strings: an override such as seq_len=${oops} must not be resolved here.
    args = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    if params:
        params = OmegaConf.to_container(params, resolve=False)
    args += [f"{k}={v}" for k, v in params.items()]
    parsed = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _fail(message: str) -> None:
    # One line and a non-zero exit, before Hydra writes anything. SystemExit passes through
    # Hydra's error reporting, which would otherwise add a traceback and a hint.
    print(f"rnnjax: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def prepare_data(cfg: Config, corpus_sizes: dict | None = None) -> None:
    """Makes sure the data a job needs is on disk (downloading it once if needed) and long
    enough for its seq_len. `corpus_sizes` caches the token counts of texts already read."""
    if cfg.task.name.value == "timemachine":
        sizes = {} if corpus_sizes is None else corpus_sizes
        if cfg.task.path not in sizes:
            sizes[cfg.task.path] = len(load_timemachine(cfg.task.path)[0])
        check_windows(sizes[cfg.task.path], cfg.seq_len)


SWEEP_ROOT = "results/runs/multirun"
_NAME_MAX = 120


def sweep_name(overrides: list[str]) -> str:
    """A directory name for a sweep from its command-line overrides, the same whatever their
    order: `activation=tanh,relu seq_len=16` -> `activation=tanh,relu__seq_len=16`.

    Hydra's own settings (`hydra.*`, `hydra/launcher=...`) and `resume` are left out, so a
    sweep interrupted under one launcher resumes under another. Characters other than letters,
    digits and `_.,=+-` become `_`; a name over 120 characters is cut and given a hash.
    """
    keep = sorted(o for o in overrides
                  if not re.match(r"^[+~]*(hydra[./]|resume=)", o) and not o.startswith("-"))
    name = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", "__".join(keep)) or "default"
    if len(name) > _NAME_MAX:
        digest = hashlib.sha1("\0".join(keep).encode()).hexdigest()[:12]
        name = f"{name[:_NAME_MAX - 13]}-{digest}"
    return name


def sweep_dir_override(argv: list[str]) -> list[str]:
    """The `hydra.sweep.dir=...` override naming a multirun by its overrides (see `sweep_name`),
    so that re-running an interrupted sweep's command maps every job to its old directory;
    none when not a multirun or when the command sets hydra.sweep.dir itself."""
    if not {"-m", "--multirun"} & set(argv) or any(
            a.startswith("hydra.sweep.dir=") for a in argv):
        return []
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    return [f"hydra.sweep.dir='{SWEEP_ROOT}/{sweep_name(overrides)}'"]


class ValidateConfig(Callback):
    """Hydra callback: validates every job's config (and fetches its data) before any output
    directory is created, so bad input writes nothing; after a sweep, prints a closing line
    with every job's status and the failed jobs' overrides."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            prepare_data(validate(config))
        except (ConfigError, DataError) as e:
            _fail(str(e))
        except OmegaConfBaseException as e:
            _fail(_omegaconf_message(e))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra import compose
        from hydra.errors import HydraException

        self._started = time.time()
        config_name = kwargs.get("config_name") or "config"
        sizes: dict = {}
        for overrides in _job_overrides(config):
            job = " ".join(overrides)
            try:
                cfg = validate(compose(config_name=config_name, overrides=overrides))
                prepare_data(cfg, sizes)
            except (ConfigError, DataError) as e:
                _fail(f"{e} (in job {job})")
            except OmegaConfBaseException as e:  # e.g. an interpolation that does not resolve
                _fail(f"{_omegaconf_message(e)} (in job {job})")
            except HydraException as e:
                # Hydra's own message (unknown option, wrong type), without its search path.
                text = str(e).split("Config search path:")[0].strip()
                if e.__cause__ is not None:
                    text += f"\n{e.__cause__}"
                _fail(f"{text}\n(in job {job})")
            except Exception as e:  # Hydra would only warn, and skip the validation
                _fail(f"{type(e).__name__}: {str(e).splitlines()[0]} (in job {job})")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        line, failed = sweep_report(Path(config.hydra.sweep.dir), _job_overrides(config),
                                    getattr(self, "_started", None))
        print(line, file=sys.stderr)
        if failed:
            raise SystemExit(1)


def sweep_report(sweep: Path, jobs: list[list[str]], started: float | None) -> tuple[str, int]:
    """The closing line of a sweep and its number of failed jobs.

    Jobs are matched to their directories by the overrides Hydra saved in `.hydra/`; a job
    whose summary.json is older than this sweep's start was skipped as finished earlier.
    """
    from rnnjax.results import SUMMARY, job_status

    def key(overrides):
        return tuple(sorted(o for o in overrides if not re.match(r"^[+~]*resume=", o)))

    dirs = {}
    for saved in sweep.rglob(".hydra/overrides.yaml"):
        dirs[key(OmegaConf.load(saved))] = saved.parent.parent
    counts: dict[str, int] = {}
    skipped, failures = 0, []
    for job in jobs:
        d = dirs.get(key(job))
        status = job_status(d) if d is not None else "unfinished"
        counts[status] = counts.get(status, 0) + 1
        if status == "failed":
            error = _read_json(d / SUMMARY).get("error", "?")
            failures.append(f"{' '.join(job) or '(no overrides)'} ({error})")
        elif status != "unfinished" and started and (d / SUMMARY).stat().st_mtime < started:
            skipped += 1
    parts = [f"{n} {s}" for s, n in sorted(counts.items())]
    line = f"rnnjax: sweep {sweep}: {len(jobs)} jobs: {', '.join(parts)}"
    if skipped:
        line += f" ({skipped} skipped: finished earlier)"
    if failures:
        line += "; failed: " + "; ".join(failures)
    return line, len(failures)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
