"""Structured configs (Hydra ConfigStore schema) and their validation.

Types and enum values are checked by OmegaConf when Hydra composes the config; ranges and
cross-field rules are checked by `validate`, which `rnnjax.sweeps.app` runs on every job of a run or
a sweep before Hydra creates any output directory.
"""

import math
import os
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnjax.app.memory import host_available, host_bytes
from rnnjax.app.trackers import TRACKERS, TrackerError, check_options
from rnnjax.core.cells import ACTIVATIONS, CELLS
from rnnjax.core.init import INIT_PARAM, INITS, PARAM_DEFAULTS
from rnnjax.core.losses import LOSS_AT
from rnnjax.core.tasks import (
    COPY_LENGTH,
    COPY_VOCAB,
    NUM_TRAIN,
    TASKS,
    TIMEMACHINE_FILE,
    DataError,
    cache_dir,
    check_readable,
    check_windows,
    load_timemachine,
)
from rnnjax.core.train import BPTT_MODES, OPTIMIZERS


def _options(name: str, names) -> type[Enum]:
    """An Enum of option names, derived from the core's own list of them (one place)."""
    return Enum(name, {n: n for n in names})


# The options of each enum-valued key, from the lists of the core that implements them.
CellName = _options("CellName", CELLS)
Activation = _options("Activation", ACTIVATIONS)
InitName = _options("InitName", INITS)
TaskName = _options("TaskName", TASKS)
LossAt = _options("LossAt", LOSS_AT)
Optimizer = _options("Optimizer", OPTIMIZERS)
BPTT = _options("BPTT", BPTT_MODES)
DType = _options("DType", ("float32", "float64"))
LoggerName = _options("LoggerName", TRACKERS)
WandbMode = _options("WandbMode", ("online", "offline"))


@dataclass
class CellConfig:
    # The options of every cell; a cell takes its own (rnnjax.core.cells.CELLS[name].options), the
    # others stay null. null: the cell's default.
    name: CellName = CellName.vanilla  # the recurrent cell (rnnjax.core.cells.CELLS)
    forget_bias: float | None = None  # lstm: initial bias of the forget gate (d2l: 0)
    peephole: bool | None = None  # lstm: output gate sees C_t through a learned w_co (H,)
    r_min: float | None = None  # lru: smallest |lambda| of the ring initialization, in (0, 1]
    r_max: float | None = None  # lru: largest |lambda|, in [r_min, 1]
    max_phase: float | None = None  # lru: phases of lambda uniform on [0, max_phase]
    normalize: bool | None = None  # lru: gamma = sqrt(1 - |lambda|^2) on the input


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
    loss_at: LossAt = LossAt.last  # L at the last step only, or averaged over all steps
    # steps per iteration of the probe's two scans (lax.scan's unroll, >= 1); null: by backend,
    # 16 on a GPU, 1 on a CPU (rnnjax.core.probes.DEFAULT_UNROLL, measured by experiments/bench.py)
    unroll: int | None = None


@dataclass
class TrainConfig:
    steps: int = 0  # optimizer steps; 0 (the default) probes at initialization only
    epochs: int | None = None  # timemachine: passes over the 10000 training windows (not steps)
    optimizer: Optimizer = Optimizer.sgd  # optax.sgd, optax.adam or optax.rmsprop
    lr: float = 1.0  # learning rate
    clip: float | None = None  # global-norm clipping threshold (optax); null: off
    clip_value: float | None = None  # element-wise clipping of each gradient entry; null: off
    initial_scale: float = 0.0  # rmsprop: the initial mean square (optax; Arjovsky et al.: 1e-3)
    bptt: BPTT = BPTT.full  # full, truncated (every train.truncate steps) or randomized
    truncate: int | None = None  # truncated: k; randomized: the mean truncation length
    log_every: int = 10  # steps between logged profiles and metrics


@dataclass
class LoggerConfig:
    # Options a tracker does not take stay null (rnnjax.app.trackers.check_options); each
    # conf/logger/<name>.yaml sets its own defaults.
    name: LoggerName = LoggerName.none  # experiment tracker (none: the job's files only)
    dir: str | None = None  # where its files go; null: under the job's directory
    project: str | None = None  # wandb: the project; mlflow: the experiment
    mode: WandbMode | None = None  # wandb: null is offline unless WANDB_MODE/WANDB_API_KEY is set
    uri: str | None = None  # mlflow: a tracking server or database; null: sqlite:///<dir>/mlflow.db


@dataclass
class Config:
    cell: CellConfig = field(default_factory=CellConfig)
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
    max_memory_gb: float | None = None  # GiB the job's peak device memory may reach; null: 80% free
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


def not_a_key(key: str, schema: type) -> str:
    """The message for `key` (dotted), which the dataclass `schema` of its parent lacks."""
    parent = key.rpartition(".")[0] or "the config"
    return f"{key} is not a config key; allowed in {parent}: " \
           f"{', '.join(f.name for f in fields(schema))}"


def _check_keys(node: DictConfig, schema: type, prefix: str) -> None:
    """Raises ConfigError for a key the schema does not have (`+train.clipp=1` would otherwise
    be ignored, silently)."""
    known = {f.name: f for f in fields(schema)}
    for key in node.keys():
        if prefix == "" and key == "hydra":
            continue
        if key not in known:
            raise ConfigError(not_a_key(f"{prefix}{key}", schema))
        sub = known[key].default_factory
        value = node._get_node(key)
        if isinstance(value, DictConfig) and is_dataclass(sub):
            _check_keys(value, sub, f"{prefix}{key}.")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_init_value(p: str, value: Any, dtype: str) -> None:
    allowed = "must be a number > 0, or a list of them ([0.5,1.0]) vmapped in one job"
    items = value if isinstance(value, list) else [value]
    strings = [v for v in items if isinstance(v, str)]
    text = [repr(v) if isinstance(v, str) else str(v) for v in items]
    shown = "[" + ",".join(text) + "]" if isinstance(value, list) else text[0] if text else ""
    if strings:  # a quoted number ('1.5') reaches us as a string: say so
        raise ConfigError(f"init.{p}={shown} is invalid: got the string {strings[0]!r}; "
                          f"{allowed} (write numbers without quotes)")
    if not items or not all(_is_number(v) and 0 < v < math.inf for v in items):
        raise ConfigError(f"init.{p}={shown} is invalid: {allowed}")
    if isinstance(value, list) and len(set(items)) != len(items):
        raise ConfigError(f"init.{p}={value} is invalid: the values must differ")
    info = np.finfo(dtype)
    for v in items:
        # The value scales the weights: one the dtype rounds to inf or 0 makes every number
        # of the job NaN (and LAPACK complain), so it is bad input, not data.
        with np.errstate(over="ignore"):
            held = np.asarray(v, dtype)
        if not 0 < held < np.inf:
            raise ConfigError(f"init.{p}={v:g} is invalid: dtype={dtype} cannot hold it (it "
                              f"holds {info.smallest_subnormal:.3g} to {info.max:.3g}); use "
                              f"{'dtype=float64 or ' if dtype == 'float32' else ''}a value in "
                              "that range")


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
    if cfg.probe.unroll is not None:
        _check_size("probe.unroll", cfg.probe.unroll)
    if not 0 <= cfg.seed <= 2**32 - cfg.seeds:
        raise ConfigError(f"seed={cfg.seed} is invalid: must be an integer >= 0 with seed + seeds "
                          f"<= 2**32 (JAX's PRNG seeds are 32-bit)")
    if cfg.max_memory_gb is not None and not 0 < cfg.max_memory_gb < math.inf:
        raise ConfigError(f"max_memory_gb={cfg.max_memory_gb} is invalid: must be > 0, or null "
                          "for 80% of the free device memory")

    _validate_cell(cfg)
    try:
        check_options(cfg.logger.name.value, vars(cfg.logger))
    except TrackerError as e:
        raise ConfigError(str(e)) from None
    init = cfg.init.name.value
    wanted = INIT_PARAM[init]
    for p in ("std", "gain", "radius"):
        value = getattr(cfg.init, p)
        if p != wanted and value is not None:
            takes = f"init.{wanted}" if wanted else "no parameter"
            raise ConfigError(f"init.{p} is not a parameter of init={init} (it takes {takes})")
        if p == wanted and value is not None:
            _check_init_value(p, value, cfg.dtype.value)
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
    _check_host_memory(cfg)
    return cfg


CELL_OPTIONS = tuple(f.name for f in fields(CellConfig) if f.name != "name")


def cell_options(cfg: Config) -> dict[str, Any]:
    """The options of the config's cell, with its defaults where the config leaves them null."""
    spec = CELLS[cfg.cell.name.value]
    return {k: default if getattr(cfg.cell, k) is None else getattr(cfg.cell, k)
            for k, default in spec.options.items()}


def _validate_cell(cfg: Config) -> None:
    """The cell's options, and the activation and init options it takes."""
    name = cfg.cell.name.value
    spec = CELLS[name]
    for key in CELL_OPTIONS:
        if getattr(cfg.cell, key) is not None and key not in spec.options:
            takes = ", ".join(f"cell.{k}" for k in spec.options) or "no options"
            raise ConfigError(f"cell.{key} is not an option of cell={name} (it takes {takes})")
    act = cfg.activation.name.value
    if spec.activations is not None and act not in spec.activations:
        raise ConfigError(f"activation={act} does not apply to cell={name}; allowed: "
                          f"{', '.join(spec.activations)}")
    init = cfg.init.name.value
    if spec.inits is not None and init not in spec.inits:
        raise ConfigError(f"init={init} does not apply to cell={name}; allowed: "
                          f"{', '.join(spec.inits)}")
    if spec.inits == ("normal",):  # the cell follows its paper: init is ignored
        std = cfg.init.std
        if std is not None and std != PARAM_DEFAULTS["std"]:
            raise ConfigError(f"init.std={std} does not apply to cell={name} (it follows its "
                              f"paper's initialization); leave init=normal at its default")
    if spec.check is not None:
        error = spec.check(cell_options(cfg))
        if error:
            raise ConfigError(error)


_SIZE_KEYS = ("seeds", "seq_len", "hidden_size", "batch_size")


def _text_bytes(cfg: Config) -> int:
    """The size of the text file a task=timemachine job would read (0 when not found yet): an
    upper bound on its characters."""
    if cfg.task.path is not None:
        p = Path(cfg.task.path).expanduser()
    elif os.environ.get("RNNJAX_DATA"):
        p = Path(os.environ["RNNJAX_DATA"]).expanduser() / TIMEMACHINE_FILE
    else:
        p = cache_dir() / TIMEMACHINE_FILE
    try:
        return p.stat().st_size if p.is_file() else 0
    except OSError:
        return 0


def _check_host_memory(cfg: Config) -> None:
    """Refuses a job whose parameters, batches and outputs alone need more host memory than the
    host has available (MemAvailable): the kernel's OOM killer would end it without a word.

    The key named is the size furthest above its default; the message gives the estimate.
    """
    available = host_available()
    if available is None:
        return
    task = cfg.task.name.value
    T = cfg.seq_len + 2 * COPY_LENGTH if task == "copy" else cfg.seq_len
    D, Q = {"random": (cfg.task.vocab_size, cfg.task.vocab_size), "timemachine": (28, 28),
            "copy": (COPY_VOCAB, COPY_VOCAB), "adding": (2, 1)}[task]
    tr = cfg.train
    steps = (tr.epochs * -(-NUM_TRAIN // cfg.batch_size) if tr.epochs is not None
             else tr.steps)
    need = host_bytes(
        networks=cfg.seeds * len(init_values(cfg)[1]), T=T, batch_size=cfg.batch_size,
        hidden_size=cfg.hidden_size, inputs=D, outputs=Q,
        dtype_bytes=np.dtype(cfg.dtype.value).itemsize,
        profiles=1 + (-(-steps // tr.log_every) if steps else 0), training=bool(steps),
        input_channels=2 if task == "adding" else 1,
        text_windows=_text_bytes(cfg) if task == "timemachine" else 0)
    if need > available:
        default = Config()
        key = max(_SIZE_KEYS, key=lambda k: getattr(cfg, k) / getattr(default, k))
        sizes = " ".join(f"{k}={getattr(cfg, k)}" for k in _SIZE_KEYS if k != key)
        raise ConfigError(f"{key}={getattr(cfg, key)} is invalid: with {sizes} the job needs "
                          f"about {need / 1e9:,.1f} GB of host memory for its parameters, "
                          f"batches and outputs, more than the {available / 1e9:,.1f} GB "
                          f"available (MemAvailable); use a smaller {key}")


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
    if tr.clip_value is not None and not 0 < tr.clip_value < math.inf:
        raise ConfigError(f"train.clip_value={tr.clip_value} is invalid: must be a finite number "
                          "> 0, or null for no clipping")
    if not 0 <= tr.initial_scale < math.inf:
        raise ConfigError(f"train.initial_scale={tr.initial_scale} is invalid: must be a finite "
                          "number >= 0")
    if tr.initial_scale and tr.optimizer.value != "rmsprop":
        raise ConfigError(f"train.initial_scale applies to train.optimizer=rmsprop only, not "
                          f"{tr.optimizer.value}")
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


def prepare_data(cfg: Config, corpus_sizes: dict | None = None) -> None:
    """Makes sure the data a job needs is on disk (downloading it once if needed) and long
    enough for its seq_len. `corpus_sizes` caches the token counts of texts already read."""
    if cfg.task.name.value == "timemachine":
        sizes = {} if corpus_sizes is None else corpus_sizes
        if cfg.task.path not in sizes:
            sizes[cfg.task.path] = len(load_timemachine(cfg.task.path)[0])
        check_windows(sizes[cfg.task.path], cfg.seq_len)
