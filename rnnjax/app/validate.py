"""Validation of a config: ranges, cross-field rules and the cell's options (from the registry),
each error one line naming the key and what is allowed (`ConfigError`)."""

import copy
import inspect
import math
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from rnnjax.app.config import CELL_OPTIONS, CellConfig, Config
from rnnjax.app.loaders import _is_number  # its one definition (the loaders check summaries)
from rnnjax.app.memory import host_memory_error
from rnnjax.core.cells import registry
from rnnjax.core.init import INIT_PARAM, PARAM_DEFAULTS
from rnnjax.core.mnist import MNIST_TASKS, check_mnist_folder
from rnnjax.core.scan import resolve_scan
from rnnjax.core.tasks import DataError, check_readable, task_option_error, task_shape
from rnnjax.core.timemap import time_map_error


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
    free: dict[str, Any] = {}
    if isinstance(cfg, DictConfig):
        cfg, free = _split_free_options(cfg)
        _check_keys(cfg, Config, "")
        keys = [f.name for f in fields(Config)]
        try:
            cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Config),
                                                      OmegaConf.masked_copy(cfg, keys)))
        except OmegaConfBaseException as e:
            raise ConfigError(_omegaconf_message(e)) from None
        cfg.cell.free_options = free
    for key in ("seq_len", "hidden_size", "batch_size", "seeds"):
        _check_size(key, getattr(cfg, key))
    if cfg.probe.unroll is not None:
        _check_size("probe.unroll", cfg.probe.unroll)
    _check_size("model.layers", cfg.model.layers)
    if cfg.lyapunov.k is not None:
        _check_size("lyapunov.k", cfg.lyapunov.k)
    _check_size("lyapunov.every", cfg.lyapunov.every)
    if not 0 <= cfg.seed <= 2**32 - cfg.seeds:
        raise ConfigError(f"seed={cfg.seed} is invalid: must be an integer >= 0 with seed + seeds "
                          f"<= 2**32 (JAX's PRNG seeds are 32-bit)")
    if cfg.max_memory_gb is not None and not 0 < cfg.max_memory_gb < math.inf:
        raise ConfigError(f"max_memory_gb={cfg.max_memory_gb} is invalid: must be > 0, or null "
                          "for 80% of the free device memory")

    _validate_cell(cfg)
    from rnnjax.app.trackers import TrackerError, check_options  # (trackers import results)

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

    _validate_task(cfg)
    _validate_time_map(cfg)
    _validate_train(cfg)
    error = host_memory_error(cfg, networks=cfg.seeds * len(init_values(cfg)[1]))
    if error:
        raise ConfigError(error)
    return cfg


def _split_free_options(cfg: DictConfig) -> tuple[DictConfig, dict[str, Any]]:
    """`cfg` without the keys of `cell` the schema lacks, and those keys with their values: the
    keyword options of a cell that takes free ones (cell=custom); another cell refuses them
    (`_validate_cell`). The schema's `cell` is not struct (config.register_configs), so
    `cell.KEY=VALUE` reaches here without Hydra's `+`."""
    cell = cfg.get("cell") if "cell" in cfg else None
    if not isinstance(cell, DictConfig):
        return cfg, {}
    known = {f.name for f in fields(CellConfig)}
    extra = [k for k in cell.keys() if k not in known]
    if not extra:
        return cfg, {}
    try:
        values = OmegaConf.to_container(cell, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(_omegaconf_message(e)) from None
    cfg = copy.deepcopy(cfg)
    with read_write(cfg), open_dict(cfg):
        for k in extra:
            del cfg.cell[k]
    return cfg, {k: values[k] for k in extra}


def cell_options(cfg: Config) -> dict[str, Any]:
    """The options of the config's cell, with its defaults where the config leaves them null,
    and the free ones a cell such as cell=custom takes (`cell.KEY=VALUE`)."""
    name = cfg.cell.name.value
    given = {k: getattr(cfg.cell, k) for k in registry.get(name).options}
    return {**registry.defaults(name), **{k: v for k, v in given.items() if v is not None},
            **cfg.cell.free_options}


def takes_free_options(name: str) -> bool:
    """Whether `cell=name` takes keyword options beyond the ones it declares: its build takes
    **options (cell=custom's factory's), and its check validates them."""
    params = inspect.signature(registry.get(name).build).parameters.values()
    return any(p.kind is p.VAR_KEYWORD for p in params)


def _validate_cell(cfg: Config) -> None:
    """The cell's options (each Option's type and check, then the cell's own check), and the
    activation and init options it takes."""
    name = cfg.cell.name.value
    spec = registry.get(name)
    given = [k for k in CELL_OPTIONS if getattr(cfg.cell, k) is not None]
    if not takes_free_options(name):
        given += list(cfg.cell.free_options)
    for key in given:
        if key not in spec.options:
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
    error = registry.check(name, cell_options(cfg), activation=act, init=init)
    if error:
        raise ConfigError(error)
    if cfg.probe.scan is not None and cfg.probe.scan.value == "parallel":
        if cfg.model.layers > 1:
            raise ConfigError(f"probe.scan=parallel runs one layer: a stack (model.layers="
                              f"{cfg.model.layers}) is not linear in its state; use "
                              "probe.scan=sequential or model.layers=1")
        try:
            resolve_scan(registry.build(name, cell_options(cfg), activation=act, init=init),
                         "parallel")
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _validate_task(cfg: Config) -> None:
    """The task's options: each task takes its own (`task.vocab_size`, `task.path`,
    `task.tokens`, `task.symbols`), its sizes (`task_option_error`) and its loss_at."""
    task = cfg.task.name.value
    if task != "random" and cfg.task.vocab_size is not None and not (
            task == "timemachine" and cfg.task.vocab_size == 28):
        raise ConfigError(f"task.vocab_size is not a parameter of task={task} (its inputs are "
                          "fixed by the task); leave it unset")
    if task in ("adding", "copy", "selective_copy") and cfg.task.path is not None:
        raise ConfigError(f"task.path is not a parameter of task={task}")
    for key in ("tokens", "symbols"):
        if task != "selective_copy" and getattr(cfg.task, key) is not None:
            raise ConfigError(f"task.{key} is not a parameter of task={task} (it is "
                              "task=selective_copy's); leave it unset")
    if task in ("adding", *MNIST_TASKS) and cfg.probe.loss_at.value != "last":
        raise ConfigError(f"probe.loss_at=all is invalid for task={task}: it is scored at the "
                          "last step; allowed: last")
    error = task_option_error(task, cfg.seq_len, cfg.task.tokens, cfg.task.symbols)
    if error:
        raise ConfigError(error)
    if task == "random":
        if cfg.task.vocab_size is None or cfg.task.vocab_size < 2:
            raise ConfigError(
                f"task.vocab_size={cfg.task.vocab_size} is invalid: must be an integer >= 2"
            )
        if cfg.task.path is not None:
            raise ConfigError("task.path is not a parameter of task=random (use task=timemachine)")
    elif cfg.task.path is not None:  # the Time Machine's text, or the MNIST files' folder
        check = check_mnist_folder if task in MNIST_TASKS else check_readable
        try:
            check(Path(cfg.task.path).expanduser(), "task.path")
        except DataError as e:
            raise ConfigError(str(e)) from None


def _validate_time_map(cfg: Config) -> None:
    """probe.time_map=true: the loss averaged over all steps, one layer, T <= MAX_T."""
    if not cfg.probe.time_map:
        return
    if cfg.probe.loss_at.value != "all":
        raise ConfigError("probe.time_map=true needs probe.loss_at=all (it splits the loss "
                          "averaged over all steps by loss step; with the loss at the last step "
                          "its one row is the probe's profile); allowed: probe.loss_at=all, or "
                          "probe.time_map=false")
    if cfg.model.layers > 1:
        raise ConfigError(f"probe.time_map=true maps one layer, not a stack (model.layers="
                          f"{cfg.model.layers}); use model.layers=1 or probe.time_map=false")
    T = task_shape(cfg.task.name.value, cfg.seq_len, cfg.task.vocab_size, cfg.task.tokens,
                   cfg.task.symbols)[0]
    error = time_map_error(T)
    if error:
        raise ConfigError(error)


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
    _validate_floss(cfg)


def _validate_floss(cfg: Config) -> None:
    fl = cfg.train.floss
    if fl.k is not None and fl.k < 0:
        raise ConfigError(f"train.floss.k={fl.k} is invalid: must be an integer >= 0, or null "
                          "(off)")
    if not fl.k:
        return
    if not (cfg.train.steps or cfg.train.epochs):
        raise ConfigError("train.floss.k is set but nothing trains: train.floss needs "
                          "train.steps >= 1 (or null train.floss.k)")
    if fl.k > cfg.hidden_size:
        raise ConfigError(f"train.floss.k={fl.k} is invalid with hidden_size={cfg.hidden_size}: "
                          f"allowed: 1 to {cfg.hidden_size}")
    if not 0 <= fl.weight < math.inf:
        raise ConfigError(f"train.floss.weight={fl.weight} is invalid: must be a finite number "
                          ">= 0")
    for key, value, least in (("before", fl.before, 0), ("every", fl.every, 1),
                              ("length", fl.length, 1), ("burn_in", fl.burn_in, 0)):
        if value is not None and value < least:
            raise ConfigError(f"train.floss.{key}={value} is invalid: must be an integer >= "
                              f"{least}{', or null (never)' if key == 'every' else ''}")


