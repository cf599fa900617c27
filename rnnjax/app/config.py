"""Structured configs: the schema Hydra's ConfigStore holds (`Config`), its `cell.*` made from
the registry of cells.

Types and enum values are checked by OmegaConf when Hydra composes the config; ranges and
cross-field rules by `rnnjax.app.validate.validate`, which `rnnjax.sweeps.app` runs on every job
of a run or a sweep before Hydra creates any output directory. The names other modules import
from here before (validate, ConfigError, cell_options, init_values, prepare_data, ...) stay
importable from here (`__getattr__`).
"""

from dataclasses import dataclass, field, fields, make_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from rnnjax.app.tracker_names import TRACKERS
from rnnjax.core.cells import ACTIVATIONS, registry
from rnnjax.core.init import INITS
from rnnjax.core.losses import LOSS_AT
from rnnjax.core.scan import SCANS
from rnnjax.core.tasks import TASKS
from rnnjax.core.train import BPTT_MODES, OPTIMIZERS


def _options(name: str, names) -> type[Enum]:
    """An Enum of option names, derived from the core's own list of them (one place)."""
    return Enum(name, {n: n for n in names})


# The options of each enum-valued key, from the lists of the core that implements them.
CellName = _options("CellName", registry.CELLS)
Activation = _options("Activation", ACTIVATIONS)
InitName = _options("InitName", INITS)
TaskName = _options("TaskName", TASKS)
LossAt = _options("LossAt", LOSS_AT)
Scan = _options("Scan", SCANS)
Optimizer = _options("Optimizer", OPTIMIZERS)
BPTT = _options("BPTT", BPTT_MODES)
DType = _options("DType", ("float32", "float64"))
LoggerName = _options("LoggerName", TRACKERS)
WandbMode = _options("WandbMode", ("online", "offline"))


_TYPES = (bool, int, float, str)


def _option_types() -> dict[str, Any]:
    """Every registered cell's options, name -> type (Any where two cells type one name apart
    or a type is not one OmegaConf holds), in the registry's order."""
    types: dict[str, Any] = {}
    for name in registry.CELLS:
        for key, value in registry.get(name).options.items():
            t = registry.option(value).type
            t = t if t in _TYPES else Any
            types[key] = t if types.get(key, t) is t else Any
    return types


# The options of every cell, made from the registry (a cell or a plugin adds its own with no
# edit here): a cell takes its own (registry.get(name).options), the others stay null; null: the
# cell's default. `name` is the recurrent cell. A cell whose build takes **options (cell=custom)
# takes further keys, `cell.KEY=VALUE` on the command line: `validate` keeps them in
# `free_options` (not a field: no column, no schema key).
CellConfig = make_dataclass(
    "CellConfig",
    [("name", CellName, field(default=next(iter(CellName)), metadata={
        "help": "the recurrent cell; its options are cell.* (one cell's own, the others null)"}))]
    + [(k, t if t is Any else t | None, field(default=None)) for k, t in _option_types().items()],
    namespace={"free_options": {}, "__module__": __name__,
               "__doc__": "cell.*: the cell and its options (from the registry)"},
)
CELL_OPTIONS = tuple(f.name for f in fields(CellConfig) if f.name != "name")


def _key(default: Any, help: str):
    """A schema key with its one-line meaning (the config reference's, `rnnjax.app.reference`;
    a test fails on a key without one). A dataclass default is a nested config."""
    if isinstance(default, type):
        return field(default_factory=default, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ActivationConfig:
    name: Activation = _key(Activation.tanh, "phi in H_t = phi(A_t) (vanilla RNN); linear is "
                            "the identity, the analytic control")


@dataclass
class InitConfig:
    # The parameter of the init is a number, or a list of numbers ([0.5,1.0,2.0]) that are
    # vmapped inside one job, one network per value and seed (typed Any so that it can be a
    # list; `validate` checks it).
    name: InitName = _key(InitName.normal, "the initializer of W_hh (W_xh and W_hq: N(0, std^2) "
                          "with normal, else Glorot normal)")
    std: Any = _key(None, "normal: the entries' standard deviation (d2l: 0.01); a number or a "
                    "list of numbers vmapped in one job")
    gain: Any = _key(None, "orthogonal, identity, gaussian: the gain g (1.0); a number or a list "
                     "of numbers vmapped in one job")
    radius: Any = _key(None, "spectral: the exact spectral radius of W_hh (1.0); a number or a "
                       "list of numbers vmapped in one job")


@dataclass
class TaskConfig:
    name: TaskName = _key(TaskName.random, "where the probed and training batches come from")
    vocab_size: int | None = _key(28, "random: the number of distinct tokens (timemachine: "
                                  "from the text; the other tasks: their own)")
    path: str | None = _key(None, "timemachine: the text file; smnist, psmnist: the folder of "
                            "the four MNIST files (null: $RNNJAX_DATA, else a download)")
    tokens: int | None = _key(None, "selective_copy: the symbols to memorize, 1..seq_len "
                              "(conf/task/selective_copy.yaml: 8; Mamba: 16)")
    symbols: int | None = _key(None, "selective_copy: the data symbols 1..symbols, >= 1 "
                               "(conf/task/selective_copy.yaml: 8; Mamba: 16)")


@dataclass
class ProbeConfig:
    loss_at: LossAt = _key(LossAt.last, "L at the last step only (whose decay the theory "
                           "predicts) or averaged over all steps (task=timemachine, copy and "
                           "selective_copy set all; adding, smnist and psmnist take last only)")
    unroll: int | None = _key(None, "steps per iteration of the probe's scans (lax.scan's "
                              "unroll, >= 1); null: 16 on a GPU, 1 on a CPU "
                              "(rnnjax.core.probes.DEFAULT_UNROLL)")
    scan: Scan | None = _key(None, "the scans in time of the probe and of training: sequential "
                             "(lax.scan) or parallel (jax.lax.associative_scan, O(log T) deep, "
                             "cells linear in the state); null: parallel on a GPU, sequential "
                             "on a CPU for those cells, else sequential")
    time_map: bool = _key(False, "with loss_at=all, also log10 ||d(L_s/T)/dH_t|| for every "
                          "loss step s and t <= s at initialization (time_map.parquet; O(T^2), "
                          "T <= 1024; one layer)")


@dataclass
class FlossConfig:
    # Gradient flossing (Engelken 2023; rnnjax.core.floss): gradient descent on sum_{i<=k}
    # lambda_i^2 of the top k Lyapunov exponents, before and/or during training
    k: int | None = _key(None, "the top Lyapunov exponents flossed, and measured before and "
                         "after training; null or 0: off")
    weight: float = _key(1.0, "the regularizer's factor (0: the exponents are measured, "
                         "nothing is flossed)")
    before: int = _key(0, "optimizer steps of flossing alone before training (the "
                        "training's optimizer, its own state; 0: none)")
    every: int | None = _key(None, "during training, its gradient is added every n steps; "
                             "null: never")
    length: int = _key(4, "steps per sequence the exponents are averaged and differentiated "
                       "over")
    burn_in: int = _key(30, "steps before them, without gradient (the state and the frame "
                        "settle)")


@dataclass
class TrainConfig:
    steps: int = _key(0, "optimizer steps; 0 probes at initialization only")
    epochs: int | None = _key(None, "timemachine: passes over the 10000 training windows "
                              "(d2l's epochs: a fresh order each epoch, batches of B, the last "
                              "one partial), instead of steps")
    optimizer: Optimizer = _key(Optimizer.sgd, "optax.sgd, optax.adam or optax.rmsprop")
    lr: float = _key(1.0, "the learning rate")
    clip: float | None = _key(None, "global-norm clipping threshold "
                              "(optax.clip_by_global_norm); null: off")
    clip_value: float | None = _key(None, "element-wise clipping of every gradient entry to "
                                    "[-c, c] (optax.clip, as Arjovsky et al.'s code clips), "
                                    "before train.clip; null: off. The metrics' clipped and "
                                    "clip_fraction count a step where either one acted")
    initial_scale: float = _key(0.0, "rmsprop only: the initial running mean square (optax's "
                                "initial_scale; 0: the first steps are about lr·√10·sign(g) "
                                "however small g is; Arjovsky et al.'s code: 1e-3)")
    bptt: BPTT = _key(BPTT.full, "full; truncated: the gradient is stopped every "
                      "train.truncate = k steps (d2l's detach); randomized: at each step the "
                      "backward chain is kept with probability 1 - 1/k and rescaled by its "
                      "inverse, unbiased with mean truncation length k (Tallec & Ollivier "
                      "2017, d2l 9.7)")
    truncate: int | None = _key(None, "k, for truncated (>= 1) and randomized (>= 2)")
    log_every: int = _key(10, "steps between logged profiles and metrics rows")
    floss: FlossConfig = _key(FlossConfig, "gradient flossing (Engelken 2023)")


@dataclass
class LoggerConfig:
    # Options a tracker does not take stay null (rnnjax.app.trackers.check_options); each
    # conf/logger/<name>.yaml sets its own defaults.
    name: LoggerName = _key(LoggerName.none, "the experiment tracker each job is also sent to "
                            "(none: the job's files only)")
    dir: str | None = _key(None, "where the tracker's files go; null: under the job's "
                           "directory")
    project: str | None = _key(None, "wandb: the project; mlflow: the experiment")
    mode: WandbMode | None = _key(None, "wandb: online or offline; null: offline unless "
                                  "WANDB_MODE or WANDB_API_KEY is set")
    uri: str | None = _key(None, "mlflow: a tracking server or database; null: "
                           "sqlite:///<dir>/mlflow.db")


@dataclass
class ModelConfig:
    # A stack of the cell: layer 1 reads the input, layer l > 1 reads layer l - 1's output at
    # the same step (through that layer's own output layer), the read-out is the top layer's
    # (rnnjax.core.cells.stack); every layer's gradient norms are reported (column `layer`).
    layers: int = _key(1, "L, layers of the cell stacked (>= 1; 1: the cell alone); every "
                       "layer's norms are reported (column layer)")


@dataclass
class LyapunovConfig:
    # The leading Lyapunov exponents of the driven state dynamics (QR method, on the probe
    # batch's first sequences), reported at initialization, at every logged training step
    # and after training (summary.json, lyapunov.parquet).
    k: int | None = _key(None, "how many Lyapunov exponents (>= 1; beyond the state's "
                         "dimension: all); null: all up to a state of 64 numbers, else 3")
    every: int = _key(1, "steps between QR re-orthonormalizations of the Lyapunov "
                         "frame (>= 1); more cost less but lose precision in exponents far "
                         "below the first")


@dataclass
class Config:
    cell: CellConfig = _key(CellConfig, "the recurrent cell (a group: cell=NAME) and its "
                            "options cell.*")
    activation: ActivationConfig = _key(ActivationConfig, "the vanilla RNN's nonlinearity")
    init: InitConfig = _key(InitConfig, "the initialization of W_hh")
    task: TaskConfig = _key(TaskConfig, "the data")
    probe: ProbeConfig = _key(ProbeConfig, "what the probe measures and how it scans")
    train: TrainConfig = _key(TrainConfig, "training with optax (train.steps > 0)")
    logger: LoggerConfig = _key(LoggerConfig, "an experiment tracker")
    model: ModelConfig = _key(ModelConfig, "the stack of cells")
    lyapunov: LyapunovConfig = _key(LyapunovConfig, "the Lyapunov spectrum")
    seq_len: int = _key(64, "T, timesteps backpropagated through (>= 1)")
    hidden_size: int = _key(64, "H, the hidden size (>= 1)")
    batch_size: int = _key(32, "B, sequences per network (>= 1)")
    seeds: int = _key(4, "S, independent networks and batches, vmapped into one compiled "
                      "call (>= 1)")
    seed: int = _key(0, "the base seed: network s uses seed + s, so a seed "
                    "names the same network in any job")
    dtype: DType = _key(DType.float32, "float32 or float64 (switches on JAX's x64 mode for "
                        "the job: everything runs in float64)")
    max_memory_gb: float | None = _key(None, "GiB the job's peak device memory may reach (on a "
                                       "CPU: the process's resident memory); more seeds run "
                                       "in chunks; null: what the job holds plus 80% of the "
                                       "free memory")
    resume: bool = _key(True, "skip a job whose directory holds a finished run of the same "
                        "config")


def register_configs(conf_dir=None) -> None:
    """Stores the schema in Hydra's ConfigStore as `config_schema` (config.yaml extends it), and
    the option `cell=NAME` (group `cell`, its options at their defaults) of every registered
    cell that has no conf/cell/NAME.yaml in `conf_dir` (default: the app's): a plugin's cell.

    The schema's `cell` node is not struct, so that `cell.KEY=VALUE` reaches a cell that takes
    free options (cell=custom) without Hydra's `+`; `validate` refuses a key the cell does not
    take, with the cell's options in the message.
    """
    if conf_dir is None:
        from rnnjax.app.paths import CONF_DIR as conf_dir  # noqa: N811 (where conf/ is)
    # `rnnjax run --help` lists every registered cell with its line (conf/config.yaml's footer)
    OmegaConf.register_new_resolver("rnnjax_cells", cells_help, replace=True)
    store = ConfigStore.instance()
    node = OmegaConf.structured(Config)
    OmegaConf.set_struct(node.cell, False)
    store.store(name="config_schema", node=node)
    for name in registry.CELLS:
        if not (conf_dir / "cell" / f"{name}.yaml").is_file():
            store.store(group="cell", name=name, node={"name": name, **registry.defaults(name)})


def cells_help() -> str:
    """One line per registered cell, "  NAME  its help", in the registry's order."""
    width = max(map(len, registry.CELLS))
    return "\n".join(f"  {name:<{width}}  {spec.help}".rstrip()
                     for name, spec in registry.CELLS.items())
