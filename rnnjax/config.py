"""Structured configs (Hydra ConfigStore schema) and their validation.

Types and enum values are checked by OmegaConf when Hydra composes the config; ranges and
cross-field rules are checked by `validate`, which the `ValidateConfig` callback runs on every
job of a run or a sweep before Hydra creates any output directory.
"""

import sys
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from rnnjax.tasks import DataError, check_readable, timemachine_path


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
    name: InitName = InitName.normal  # initializer of W_hh
    std: float | None = None  # normal: entry std (d2l: 0.01)
    gain: float | None = None  # orthogonal, identity, gaussian: the gain g
    radius: float | None = None  # spectral: the exact spectral radius of W_hh


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
class Config:
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    init: InitConfig = field(default_factory=InitConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seq_len: int = 64  # T, timesteps backpropagated through (>= 1)
    hidden_size: int = 64  # H (>= 1)
    batch_size: int = 32  # B, sequences per network (>= 1)
    seeds: int = 4  # S, independent networks and batches, vmapped in one call (>= 1)
    seed: int = 0  # base seed: network s uses seed + s
    dtype: DType = DType.float32  # float64 enables JAX's x64 mode for the job


def register_configs() -> None:
    """Stores the schema in Hydra's ConfigStore as `config_schema` (config.yaml extends it)."""
    ConfigStore.instance().store(name="config_schema", node=Config)


class ConfigError(ValueError):
    """An invalid config value; the message is one line naming the key and what is allowed."""


def _check_size(key: str, value: int) -> None:
    if value < 1:
        raise ConfigError(f"{key}={value} is invalid: must be an integer >= 1")


def validate(cfg: DictConfig | Config) -> Config:
    """Checks ranges and cross-field rules and returns the config as a `Config` object.

    Raises:
      ConfigError: one line naming the offending key and what is allowed.
    """
    if isinstance(cfg, DictConfig):
        keys = [f.name for f in fields(Config)]
        cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config),
                                                  OmegaConf.masked_copy(cfg, keys)))
    for key in ("seq_len", "hidden_size", "batch_size", "seeds"):
        _check_size(key, getattr(cfg, key))
    if cfg.seed < 0:
        raise ConfigError(f"seed={cfg.seed} is invalid: must be an integer >= 0")

    init = cfg.init.name.value
    wanted = INIT_PARAM[init]
    for p in ("std", "gain", "radius"):
        value = getattr(cfg.init, p)
        if p != wanted and value is not None:
            takes = f"init.{wanted}" if wanted else "no parameter"
            raise ConfigError(f"init.{p} is not a parameter of init={init} (it takes {takes})")
        if p == wanted and value is not None and not value > 0:
            raise ConfigError(f"init.{p}={value} is invalid: must be > 0")

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
    if not tr.lr > 0:
        raise ConfigError(f"train.lr={tr.lr} is invalid: must be > 0")
    if tr.clip is not None and not tr.clip > 0:
        raise ConfigError(f"train.clip={tr.clip} is invalid: must be > 0, or null for no clipping")
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

    args = list(config.hydra.overrides.task)
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args += [f"{k}={v}" for k, v in params.items()]
    parsed = OverridesParser.create().parse_overrides(args)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _fail(message: str) -> None:
    # One line and a non-zero exit, before Hydra writes anything. SystemExit passes through
    # Hydra's error reporting, which would otherwise add a traceback and a hint.
    print(f"rnnjax: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def prepare_data(cfg: Config) -> None:
    """Makes sure the data a job needs is on disk (downloading it once if needed)."""
    if cfg.task.name.value == "timemachine":
        timemachine_path(cfg.task.path)


class ValidateConfig(Callback):
    """Hydra callback: validates every job's config (and fetches its data) before any output
    directory is created, so bad input writes nothing."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            prepare_data(validate(config))
        except (ConfigError, DataError) as e:
            _fail(str(e))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra import compose
        from hydra.errors import HydraException

        config_name = kwargs.get("config_name") or "config"
        seen = []
        for overrides in _job_overrides(config):
            job = " ".join(overrides)
            try:
                cfg = validate(compose(config_name=config_name, overrides=overrides))
                if cfg.task not in seen:
                    prepare_data(cfg)
                    seen.append(cfg.task)
            except (ConfigError, DataError) as e:
                _fail(f"{e} (in job {job})")
            except HydraException as e:
                # Hydra's own message (unknown option, wrong type), without its search path.
                text = str(e).split("Config search path:")[0].strip()
                if e.__cause__ is not None:
                    text += f"\n{e.__cause__}"
                _fail(f"{text}\n(in job {job})")
