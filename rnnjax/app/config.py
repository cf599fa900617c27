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
    [("name", CellName, field(default=next(iter(CellName))))]
    + [(k, t if t is Any else t | None, field(default=None)) for k, t in _option_types().items()],
    namespace={"free_options": {}, "__module__": __name__,
               "__doc__": "cell.*: the cell and its options (from the registry)"},
)
CELL_OPTIONS = tuple(f.name for f in fields(CellConfig) if f.name != "name")


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
    # timemachine: the text file; smnist, psmnist: the folder of the four MNIST files (else
    # $RNNJAX_DATA, else download)
    path: str | None = None
    tokens: int | None = None  # selective_copy: symbols to memorize (conf/task: 8; null: 8)
    symbols: int | None = None  # selective_copy: data symbols 1..symbols (conf/task: 8; null: 8)


@dataclass
class ProbeConfig:
    loss_at: LossAt = LossAt.last  # L at the last step only, or averaged over all steps
    # steps per iteration of the probe's two scans (lax.scan's unroll, >= 1); null: by backend,
    # 16 on a GPU, 1 on a CPU (rnnjax.core.probes.DEFAULT_UNROLL, measured by experiments/bench.py)
    unroll: int | None = None
    # the probe's and training's scans in time: sequential (lax.scan) or parallel
    # (jax.lax.associative_scan, O(log T) deep, for cells whose step is linear in the state,
    # Cell.linear); null: for those cells parallel on a GPU, sequential on a CPU (measured
    # faster there: rnnjax.core.scan.DEFAULT_SCAN), else sequential
    scan: Scan | None = None
    # with loss_at=all, also the time-to-time map log10 ||d(L_s/T)/dH_t|| of every loss step s
    # and timestep t <= s at initialization (time_map.parquet; O(T^2), T <= 1024:
    # rnnjax.core.timemap.MAX_T)
    time_map: bool = False


@dataclass
class FlossConfig:
    # Gradient flossing (Engelken 2023; rnnjax.core.floss): gradient descent on sum_{i<=k}
    # lambda_i^2 of the top k Lyapunov exponents, before and/or during training
    k: int | None = None  # exponents flossed and measured before/after training; null, 0: off
    weight: float = 1.0  # the regularizer's factor (0: measure only, never floss)
    before: int = 0  # optimizer steps of flossing alone before training (0: none)
    every: int | None = None  # during training, add its gradient every n steps; null: never
    length: int = 4  # steps the exponents are averaged and differentiated over, per sequence
    burn_in: int = 30  # steps before them, without gradient (state and frame settle)


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
    floss: FlossConfig = field(default_factory=FlossConfig)  # gradient flossing


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
class ModelConfig:
    # A stack of the cell: layer 1 reads the input, layer l > 1 reads layer l - 1's output at
    # the same step (through that layer's own output layer), the read-out is the top layer's
    # (rnnjax.core.cells.stack); every layer's gradient norms are reported (column `layer`).
    layers: int = 1  # L, layers of the cell (>= 1; 1: the cell alone)


@dataclass
class LyapunovConfig:
    # The leading Lyapunov exponents of the driven state dynamics (QR method, on the probe
    # batch's first sequences), reported at initialization, at every logged training step
    # and after training (summary.json, lyapunov.parquet).
    k: int | None = None  # how many (>= 1; more than the state's dimension: all); null: all
    # up to a state of 64 numbers (rnnjax.app.summary.LYAPUNOV_ALL_UP_TO), else 3
    every: int = 1  # steps between QR re-orthonormalizations (>= 1)


@dataclass
class Config:
    cell: CellConfig = field(default_factory=CellConfig)
    activation: ActivationConfig = field(default_factory=ActivationConfig)
    init: InitConfig = field(default_factory=InitConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lyapunov: LyapunovConfig = field(default_factory=LyapunovConfig)
    seq_len: int = 64  # T, timesteps backpropagated through (>= 1)
    hidden_size: int = 64  # H (>= 1)
    batch_size: int = 32  # B, sequences per network (>= 1)
    seeds: int = 4  # S, independent networks and batches, vmapped in one call (>= 1)
    seed: int = 0  # base seed: network s uses seed + s
    dtype: DType = DType.float32  # float64 enables JAX's x64 mode for the job
    max_memory_gb: float | None = None  # GiB the job's peak device memory may reach; null: 80% free
    resume: bool = True  # skip a job whose directory holds a finished run of the same config


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
