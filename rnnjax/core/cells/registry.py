"""The registry of cells: everything the harness knows about a cell, kept with the cell.

A cell module of this package (or a plugin, through the entry point group `rnnjax.cells`)
declares one `CellSpec`: how to build its `Cell`, its options (names, types, defaults, allowed
values), how its options read in figure labels and tables, its theory, its cost and the
activations and inits it takes. The config asks the registry for the schema of `cell.*`, the
job for the Cell, the figures for labels, the planner for cost. Nothing else knows a cell by
name.

Built-in cells register through the same function a plugin's does (`register`): the modules of
this package that define `SPEC` (and `NAME`, else the module's name) are the built-ins; then
every entry point of the group `rnnjax.cells` (its value a CellSpec, or a function of no
arguments that returns one) under the entry point's name.
"""

import importlib
import inspect
import pkgutil
import sys
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points
from typing import Any, NamedTuple

from rnnjax.core.cells.base import Cell

ENTRY_POINT_GROUP = "rnnjax.cells"


class Option(NamedTuple):
    """One `cell.*` option of a cell.

    `check` returns the end of a one-line error ("must be in (0, 1]") or None; the registry
    prefixes it with `cell.NAME=VALUE`.
    """

    default: Any
    type: type = float  # float, int, bool or str (None allowed where default is None)
    help: str = ""
    check: Callable[[Any], str | None] | None = None


def option(value: Any) -> Option:
    """`value` as an Option: an Option stays, a plain default gets its type from the default."""
    if isinstance(value, Option):
        return value
    return Option(default=value, type=str if value is None else type(value))


class CellSpec(NamedTuple):
    """What the harness knows about one cell (an option of the config group `cell`)."""

    # (**options, and of activation, init, init_value those it declares) -> Cell
    build: Callable[..., Cell]
    # its `cell.*` options: an Option or a plain default each
    options: Mapping[str, Any] = {}
    # the activations it takes; None: every one. A cell with no free activation takes
    # ("tanh",), the default, and its build does not declare `activation`.
    activations: tuple[str, ...] | None = None
    # the init options it takes; None: every one. A cell that follows its paper's
    # initialization takes ("normal",), the default, and its build does not declare `init`.
    inits: tuple[str, ...] | None = None
    # options (defaults filled in) -> an error line naming the keys and what is allowed, or None:
    # what no single option's `Option.check` can say (the LRU's r_min <= r_max)
    check: Callable[[dict[str, Any]], str | None] | None = None
    # Theory beside the measurement, for `summary.json`: (cell, params of S networks, x of
    # (S, B, T...), the measured slope, options; and, where the caller passes them, y, kind,
    # loss_at, activation, init, init_value) -> a dict; it may hold
    # "predicted_log10_slope_per_step_back" and "prediction" (what that number is), which the
    # job's log line shows beside the measured slope.
    theory: Callable[..., dict[str, Any]] | None = None
    # options (defaults filled in) -> how they read in a figure's label or a table ("" for
    # none); None: "key=value" for each option that differs from its default
    label: Callable[[dict[str, Any]], str] | None = None
    # (options, H) -> floats per step and per sequence that differentiating the cell keeps: the
    # state and the activations JAX's autodiff saves for one step's backward (the state it reads
    # included), for memory planning and scheduling; None: H
    cost: Callable[[dict[str, Any], int], int] | None = None
    # one line for `rnnjax run --help`
    help: str = ""
    # where the cell stands in listings, tables and figures (lowest first; then by name)
    order: float = 100.0


_CELLS: dict[str, CellSpec] = {}
_LOADED = False


def register(name: str, spec: CellSpec) -> None:
    """Adds `spec` as the option `cell=name` (the built-ins and plugins alike)."""
    if not isinstance(spec, CellSpec):
        raise TypeError(f"cell {name!r}: expected a rnnjax CellSpec, got {type(spec).__name__}")
    _CELLS[name] = spec


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    package = sys.modules[__package__]
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in ("activations", "base", "registry"):
            continue
        module = importlib.import_module(f"{__package__}.{info.name}")
        if isinstance(getattr(module, "SPEC", None), CellSpec):
            register(getattr(module, "NAME", info.name), module.SPEC)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _CELLS:
            continue  # a built-in's name is not replaced
        try:
            value = ep.load()
            register(ep.name, value() if callable(value) and not isinstance(value, CellSpec)
                     else value)
        except Exception as e:  # a broken plugin costs its own option only
            print(f"rnnjax: warning: cell plugin {ep.name} ({ep.value}) not loaded: "
                  f"{type(e).__name__}: {e}", file=sys.stderr)
    ordered = sorted(_CELLS.items(), key=lambda item: (item[1].order, item[0]))
    _CELLS.clear()
    _CELLS.update(ordered)


class _Registry(Mapping):
    """The registered cells by name, loaded on first use."""

    def __getitem__(self, name: str) -> CellSpec:
        _load()
        return _CELLS[name]

    def __iter__(self) -> Iterator[str]:
        _load()
        return iter(_CELLS)

    def __len__(self) -> int:
        _load()
        return len(_CELLS)


CELLS: Mapping[str, CellSpec] = _Registry()


def get(name: str) -> CellSpec:
    """The spec of `cell=name`; a ValueError naming the allowed cells otherwise."""
    try:
        return CELLS[name]
    except KeyError:
        raise ValueError(f"cell={name} is unknown; allowed: {', '.join(CELLS)}") from None


def defaults(name: str) -> dict[str, Any]:
    """The options of `cell=name` with their defaults."""
    return {k: option(v).default for k, v in get(name).options.items()}


def build(name: str, options: Mapping[str, Any], **context) -> Cell:
    """The Cell of `cell=name` with `options`; of `context` (activation, init, init_value) only
    what its build function declares is passed."""
    spec = get(name)
    return spec.build(**{**defaults(name), **options}, **declared(spec.build, context))


def declared(fn: Callable, context: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `context` that `fn` declares as parameters (all of them where it takes
    **kwargs): how the harness passes activation, init, init_value or the probe's loss to a
    cell's build and theory functions, which declare only what they use."""
    params = inspect.signature(fn).parameters
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in context.items() if takes_all or k in params}


def label(name: str, options: Mapping[str, Any]) -> str:
    """How the options of `cell=name` read in a figure's label ("" for the defaults)."""
    spec = get(name)
    full = {**defaults(name), **options}
    if spec.label is not None:
        return spec.label(full)
    base = defaults(name)
    return ", ".join(f"{k}={v}" for k, v in full.items() if v != base.get(k))


def check(name: str, options: Mapping[str, Any], **context) -> str | None:
    """The error line for `options` of `cell=name` (defaults filled in), or None: each option's
    own `Option.check` ("cell.r_min=0 is invalid: must be in (0, 1] ..."), then the spec's,
    given the entries of the job's `context` (activation, init) it declares."""
    spec = get(name)
    full = {**defaults(name), **options}
    for key, value in spec.options.items():
        rule = option(value).check
        error = rule(full[key]) if rule is not None else None
        if error:
            return f"cell.{key}={full[key]} is invalid: {error}"
    return spec.check(full, **declared(spec.check, context)) if spec.check is not None else None


def cost(name: str, options: Mapping[str, Any], hidden_size: int) -> int:
    """Floats per step and per sequence that differentiating `cell=name` keeps (state and saved
    activations; see `CellSpec.cost`)."""
    spec = get(name)
    if spec.cost is None:
        return hidden_size
    return spec.cost({**defaults(name), **options}, hidden_size)

