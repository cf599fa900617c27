"""The references the docs print, made from the code so that they cannot go stale: every config
key (the schema, `rnnjax.app.config`, with each key's `help`), every option of every config
group (its YAML file's first comment; a cell's line from the registry), every cell option (the
registry's `Option.help`), every column of the job's tables (`COLUMNS`) and the experiments
(conf/experiment). `docs/hooks.py` puts them into the pages; tests/test_docs.py fails on a key,
an option or a column without a description.
"""

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, NamedTuple

from omegaconf import OmegaConf

from rnnjax.app import config as schema
from rnnjax.app.markdown import markdown_table
from rnnjax.app.paths import CONF_DIR
from rnnjax.core.cells import registry


class Key(NamedTuple):
    """One row of the config reference."""

    key: str  # its path, as on the command line
    type: str  # int, float, bool, str, a number or a list, group (an option name)
    default: Any  # in the default config (`rnnjax run` with no overrides)
    allowed: str  # what it takes, where it is a choice ("" otherwise)
    meaning: str


class Option(NamedTuple):
    """One option of a config group (`group=name`), or one `cell.*` option of a cell."""

    group: str
    name: str
    meaning: str


# The Hydra groups of the schema whose option picks a kind (`cell=lstm`); probe and train have
# one option each (their defaults), which is not a choice.
GROUPS = ("cell", "activation", "init", "task", "logger")
# Hydra's own groups that rnnjax ships options for.
HYDRA_GROUPS = {
    "hydra/launcher": "how a sweep's jobs run (Hydra's basic launcher, one after another, "
                      "when not set)",
    "hydra/sweeper": "what a sweep runs (rnnjax: the grid, validated first, finished jobs "
                     "skipped; rnnjax_optuna: a search)",
}


def _type_name(annotation: Any) -> tuple[str, str]:
    """(type, allowed values) of a schema annotation."""
    if annotation is Any:
        return "number or list of numbers", ""
    args = typing.get_args(annotation)
    nullable = type(None) in args
    if isinstance(annotation, types.UnionType) or args:
        (annotation,) = [a for a in args if a is not type(None)]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        allowed = ", ".join(m.value for m in annotation)
        return "str" + (" or null" if nullable else ""), allowed
    return annotation.__name__ + (" or null" if nullable else ""), ""


def _yaml_help(path: Path) -> str:
    """The first paragraph of the comment that opens a config file (after `@package`)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith("@package"):
            continue
        if not text and lines:
            break
        lines.append(text)
    return " ".join(lines).strip()


def group_options(group: str) -> list[Option]:
    """The options of a config group: its conf/GROUP/*.yaml and, for `cell`, every registered
    cell (a plugin's too), with what each is."""
    out = {}
    if group == "cell":
        for name, spec in registry.CELLS.items():
            out[name] = Option(group, name, spec.help)
    folder = CONF_DIR / group
    for path in sorted(folder.glob("*.yaml")):
        if path.stem not in out:
            out[path.stem] = Option(group, path.stem, _yaml_help(path))
    return list(out.values())


def cell_options() -> list[Option]:
    """Every `cell.*` option of every registered cell: group is the cell, name the option."""
    return [Option(cell, key, registry.option(value).help)
            for cell, spec in registry.CELLS.items() for key, value in spec.options.items()]


def _defaults() -> Any:
    """The default config, as `rnnjax run` composes it with no overrides."""
    from hydra import compose, initialize_config_dir

    schema.register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config")


def config_keys() -> list[Key]:
    """Every key of the config: each group (its options listed), each schema key below it, the
    cell options (once per name, with the cells that take it) and rnnjax's Hydra groups."""
    cfg = _defaults()
    rows: list[Key] = []

    def walk(cls: type, prefix: str, node: Any) -> None:
        values = OmegaConf.to_container(node, resolve=True)
        for f in dataclasses.fields(cls):
            path = f"{prefix}{f.name}"
            help_ = f.metadata.get("help", "")
            if f.name in GROUPS and not prefix:
                names = ", ".join(o.name for o in group_options(f.name))
                inner = {g.name: g for g in dataclasses.fields(f.default_factory)}
                meaning = inner["name"].metadata.get("help", "") if "name" in inner else help_
                rows.append(Key(path, "group", node[f.name].name, names, meaning))
                if f.name != "cell":
                    walk(f.default_factory, f"{path}.", node[f.name])
                continue
            if f.name == "name" and prefix.rstrip(".") in GROUPS:
                continue
            if dataclasses.is_dataclass(f.default_factory if f.default_factory is not
                                        dataclasses.MISSING else None):
                walk(f.default_factory, f"{path}.", node[f.name])
                continue
            type_, allowed = _type_name(f.type)
            rows.append(Key(path, type_, values[f.name], allowed, help_))

    walk(schema.Config, "", cfg)
    takers: dict[str, list[str]] = {}
    for o in cell_options():
        takers.setdefault(o.name, []).append(o.group)
    options = []
    for name, cells in takers.items():
        specs = [registry.option(registry.CELLS[c].options[name]) for c in cells]
        defaults = ", ".join(dict.fromkeys(f"{c}: {_cell(s.default)}"
                                           for c, s in zip(cells, specs, strict=True)))
        meaning = "; ".join(f"{c}: {s.help}" for c, s in zip(cells, specs, strict=True))
        options.append(Key(f"cell.{name}", specs[0].type.__name__ + " or null", defaults, "",
                           meaning))
    rows[1:1] = options  # after `cell`
    for group, meaning in HYDRA_GROUPS.items():
        names = ", ".join(o.name for o in group_options(group))
        rows.append(Key(group, "group", None, names, meaning))
    return rows


# The columns of a job's tables besides the config's (every key of the config is also a
# column, `rnnjax.app.results.config_columns`, described by config_keys). name -> (type,
# meaning).
COLUMNS: dict[str, dict[str, tuple[str, str]]] = {
    "grad_norms.parquet": {
        "seed": ("int", "the network's seed (seed + s)"),
        "t": ("int", "timestep, 1..T"),
        "T": ("int", "the job's timesteps: seq_len, or seq_len + 20 for task=copy, seq_len + "
                     "task.tokens for task=selective_copy"),
        "steps_back": ("int", "T - t: steps back from the end (0 at t = T), the x axis of the "
                              "decay figures"),
        "grad_norm": ("float", "||dL/dH_t||_F (0 where it underflowed, inf where it "
                               "overflowed)"),
        "underflow": ("bool", "grad_norm is 0: below the dtype's range"),
        "overflow": ("bool", "the backward chain left the dtype's range at or after t, so "
                             "grad_norm is inf from there back to t = 1"),
        "forward_overflow": ("bool", "the seed's forward pass was not finite (its hidden state "
                                     "overflowed), so its gradients are NaN"),
        "forward_overflow_t": ("int", "the first timestep whose hidden state was not finite; "
                                      "0 when the forward pass was finite"),
        "param_grad_norm": ("float", "||H_{t-1}^T dL/dA_t||_F: step t's share of the gradient "
                                     "of the recurrent weights"),
        "cell_grad_norm": ("float", "cell=lstm only: ||dL/dC_t||_F, the total derivative with "
                                    "respect to the memory cell"),
        "train_step": ("int", "the training step of the profile (0: at initialization)"),
        "layer": ("int", "the layer of a stack (model.layers), 1 (reads the input) to L (the "
                         "read-out); 1 for one cell"),
        "scan": ("str", "the scan in time that ran: sequential or parallel (probe.scan with "
                        "null resolved)"),
    },
    "metrics.parquet": {
        "seed": ("int", "the network's seed (seed + s)"),
        "train_step": ("int", "the step count at the end of the logged interval"),
        "T": ("int", "the job's timesteps (as in grad_norms.parquet)"),
        "scan": ("str", "the scan in time that ran: sequential or parallel"),
        "train_loss": ("float", "the mean training loss over the interval's steps"),
        "train_ppl": ("float", "exp(train_loss) (NaN for adding)"),
        "val_loss": ("float", "the loss on the validation set (Time Machine: the 5000 windows "
                              "after the 10000 training ones; generated tasks: a fixed held-out "
                              "batch; MNIST: a fixed batch of test images)"),
        "val_ppl": ("float", "exp(val_loss)"),
        "val_accuracy": ("float", "tasks with answers only: the fraction of the recalled "
                                  "symbols (selective_copy) or classes (smnist, psmnist) right"),
        "grad_norm_global": ("float", "the global gradient norm before clipping at the "
                                      "interval's last step"),
        "grad_norm_global_mean": ("float", "its mean over the interval"),
        "clipped": ("bool", "clipping acted at the interval's last step"),
        "clip_fraction": ("float", "the fraction of the interval's steps where clipping "
                                   "acted"),
        "alive": ("bool", "False once the seed diverged"),
        "log10_slope_per_step_back": ("float", "the seed's measured slope of its profile at "
                                               "that step (as the headline's)"),
        "predicted_log10_slope_per_step_back": ("float", "the theory's prediction at that step "
                                                         "where one applies (NaN where none)"),
        "lyapunov_top_log10_per_step": ("float", "the seed's top Lyapunov exponent at that "
                                                 "step, log10 per step"),
    },
    "lyapunov.parquet": {
        "seed": ("int", "the network's seed (seed + s)"),
        "T": ("int", "the job's timesteps (as in grad_norms.parquet)"),
        "scan": ("str", "the scan in time that ran: sequential or parallel"),
        "train_step": ("int", "0 at initialization, then each logged training step"),
        "i": ("int", "the exponent's rank, 1..k (1: the largest)"),
        "lyapunov_per_step": ("float", "the exponent, natural log per step"),
        "lyapunov_log10_per_step": ("float", "the exponent, log10 per step (as the slopes)"),
    },
    "time_map.parquet": {
        "seed": ("int", "the network's seed (seed + s)"),
        "s": ("int", "the loss step"),
        "t": ("int", "the timestep, t <= s"),
        "log10_grad_norm": ("float", "log10 ||d(L_s/T)/dH_t||"),
    },
}


def experiments() -> list[Option]:
    """The experiments (`+experiment=NAME`), each with the first paragraph of its file."""
    return [Option("experiment", p.stem, _yaml_help(p))
            for p in sorted((CONF_DIR / "experiment").glob("*.yaml"))]


def _cell(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else \
        str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return markdown_table(header, [[_cell(c) for c in row] for row in rows]) + "\n"


def config_markdown(prefix: str = "") -> str:
    """The config reference as Markdown tables: the keys, then each group's options; with a
    prefix (`train.`), the table of the keys under it alone."""
    keys = _table(["key", "type", "default", "allowed", "meaning"],
                  [[f"`{k.key}`", k.type, "" if k.key.startswith("hydra/") else
                    f"`{_cell(k.default)}`", k.allowed, k.meaning] for k in config_keys()
                   if k.key.startswith(prefix)])
    if prefix:
        return keys
    out = [keys]
    for group in (*GROUPS, *HYDRA_GROUPS):
        out.append(f"\n### `{group}=...`\n\n")
        out.append(_table(["option", "what it is"],
                          [[f"`{o.name}`", o.meaning] for o in group_options(group)]))
    return "".join(out)


def columns_markdown() -> str:
    """The columns of each table a job writes, as Markdown tables."""
    out = []
    for file, cols in COLUMNS.items():
        out.append(f"\n### `{file}`\n\n")
        out.append(_table(["column", "type", "meaning"],
                          [[f"`{c}`", t, m] for c, (t, m) in cols.items()]))
    from rnnjax.app.results import config_schema_columns

    out.append("\n### The config's columns\n\nEvery table also holds the job's whole resolved "
               "config, one column per key (typed by the schema, null where the config is, so "
               "that jobs concatenate and group on any key); each means what its key does in "
               "the [config reference](config.md):\n\n")
    out.append(_table(["column", "config key", "pandas dtype"],
                      [[f"`{c.name}`", f"`{c.key}`", c.dtype] for c in config_schema_columns()]))
    return "".join(out)


def experiments_markdown() -> str:
    return _table(["experiment", "what it is"],
                  [[f"`+experiment={o.name}`", o.meaning] for o in experiments()])
