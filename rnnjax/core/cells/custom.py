"""cell=custom: your own cell, by the import path of a factory that returns a rnnjax `Cell`.

    PYTHONPATH=. rnnjax run cell=custom cell.target=my_cells:make_cell cell.scale=0.9

`cell.target` names the factory, "module.path:function" (Hydra's `_target_`, with a colon; a
dotted "module.path.function" works too). Every other `cell.KEY=VALUE` is a keyword option of
the factory, checked against its signature before any job starts; of the job's `activation`,
`init` and `init_value` the factory gets those its signature declares. Validation imports the
factory and calls it once, so that a bad target stops the run before anything is written.
"""

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from rnnjax.core.cells.base import Cell
from rnnjax.core.cells.registry import CellSpec, Option

NAME = "custom"
CONTEXT = {"activation": "tanh", "init": "normal", "init_value": None}  # the job's, at defaults


class TargetError(ValueError):
    """A `cell.target` or factory option that does not work; the message is one line."""


def load(target: str) -> Callable[..., Any]:
    """The callable named by `target` ("module.path:function" or "module.path.function")."""
    module_name, colon, attr = target.partition(":")
    if not colon:
        module_name, _, attr = target.rpartition(".")
    if not module_name or not attr:
        raise TargetError(f"cell.target={target} is invalid: must be 'module.path:function' (a "
                          "factory that returns a rnnjax Cell)")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name + ".").startswith(e.name + "."):
            raise TargetError(f"cell.target={target} is invalid: no module named {e.name} (is "
                              "it installed, or its folder on PYTHONPATH?)") from None
        raise TargetError(f"cell.target={target} is invalid: importing {module_name} failed: "
                          f"{type(e).__name__}: {e}") from None
    except Exception as e:  # the user's module: whatever it raises, one line
        raise TargetError(f"cell.target={target} is invalid: importing {module_name} failed: "
                          f"{type(e).__name__}: {e}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise TargetError(f"cell.target={target} is invalid: module {module_name} has no "
                              f"attribute {attr}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TargetError(f"cell.target={target} is invalid: {attr} is a "
                          f"{type(obj).__name__}, not a function")
    return obj


def _arguments(target: str, factory: Callable, options: dict, context: dict) -> dict:
    """The keyword arguments of the factory: `options`, checked against its signature, and of
    `context` the keys it declares."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature: pass the options as given
        return dict(options)
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    own = [n for n in named if n not in CONTEXT]
    for key in options:
        if key in CONTEXT:
            raise TargetError(f"cell.{key} is not an option of cell=custom: the job passes "
                              f"{key} (set it as {key}=...)")
        if key not in named and not takes_all:
            takes = ", ".join(f"cell.{n}" for n in own) or "no options"
            raise TargetError(f"cell.{key} is not a parameter of {target} (it takes {takes})")
    missing = [n for n in own if params[n].default is inspect.Parameter.empty
               and n not in options]
    if missing:
        raise TargetError(f"cell.{missing[0]} is missing: {target} requires it (give "
                          f"{' '.join(f'cell.{n}=VALUE' for n in missing)})")
    return {**options, **{k: v for k, v in context.items() if takes_all or k in named}}


def _split(options: dict) -> tuple[str | None, dict, dict]:
    """(target, the factory's options, the job's context) from what the registry passes."""
    rest = dict(options)
    target = rest.pop("target", None)
    context = {k: rest.pop(k) for k in CONTEXT if k in rest}
    return target, rest, context


def _call(target: str, options: dict, context: dict) -> Cell:
    factory = load(target)
    cell = factory(**_arguments(target, factory, options, context))
    if not isinstance(cell, Cell):
        raise TargetError(f"cell.target={target} is invalid: it returned a "
                          f"{type(cell).__name__}, not a rnnjax Cell")
    return cell


def custom(target: str | None = None, **options) -> Cell:
    """The Cell the factory `target` returns for `options` (and the context it declares)."""
    target, rest, context = _split({"target": target, **options})
    if target is None:
        raise TargetError(_MISSING)
    return _call(target, rest, context)


_MISSING = ("cell.target is missing: cell=custom needs cell.target=module.path:function (a "
            "factory that returns a rnnjax Cell)")


def check(options: dict, activation: str = "tanh", init: str = "normal") -> str | None:
    """The error line for a target that cannot be imported or called with these options, or
    that does not return a Cell (the factory is called once, with the context's defaults), or
    for a job's activation or init other than the default that the factory does not take (it
    would be ignored)."""
    rest = dict(options)  # a user's cell.activation is refused, not taken for the job's
    target = rest.pop("target", None)
    if target is None:
        return _MISSING
    try:
        _call(target, rest, CONTEXT)
    except TargetError as e:
        return str(e)
    except Exception as e:  # the factory's own refusal of a value, say
        return f"cell.target={target} is invalid: calling it raised {type(e).__name__}: {e}"
    taken = _arguments(target, load(target), rest, CONTEXT)
    for key, value in (("activation", activation), ("init", init)):
        if value != CONTEXT[key] and key not in taken:
            return (f"{key}={value} does not apply to cell=custom with cell.target={target} "
                    f"(the factory takes no {key}); allowed: {CONTEXT[key]}")
    return None


def label(options: dict) -> str:
    """"module:function(k=v, ...)": the factory and its options."""
    target, rest, _ = _split(options)
    return f"{target}({', '.join(f'{k}={v}' for k, v in rest.items())})"


SPEC = CellSpec(
    build=custom,
    options={"target": Option(None, str, "the factory, module.path:function")},
    check=check,
    label=label,
    help="your own cell: cell.target=module.path:function, its options as cell.KEY=VALUE",
    order=1000,
)
