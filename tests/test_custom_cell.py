"""cell=custom: a cell of one's own by import path (`cell.target=module:function`), its keyword
options as `cell.KEY=VALUE`, checked against the factory's signature; a bad target is one line
and nothing is written. The factories are defined here (this module is importable in-process
as `test_custom_cell`)."""

import json
import math
from pathlib import Path

import pytest

from rnnjax.core.cells import registry
from rnnjax.core.cells.vanilla import vanilla

HERE = "test_custom_cell"
TINY = ["seq_len=6", "hidden_size=4", "batch_size=2", "seeds=1"]


def linear_orthogonal(gain: float, activation: str = "tanh"):
    """A linear RNN with W_hh = gain * orthogonal: every step back scales the gradient's norm
    by exactly `gain` (the probe's slope is log10(gain) per step back)."""
    assert activation == "tanh"  # the job's activation reaches a factory that declares it
    return vanilla(activation="linear", init="orthogonal", init_value=gain)


def with_required(width: int, depth: int = 1):
    return vanilla()


def not_a_cell():
    return 3


def refuses(scale: float = 1.0):
    raise ValueError("scale must be small")


NOT_CALLABLE = 5


def test_registry_builds_the_factorys_cell_with_its_options_and_the_context():
    cell = registry.build("custom", {"target": f"{HERE}:linear_orthogonal", "gain": 0.5},
                          activation="tanh", init="normal", init_value=None)
    assert cell.name == "vanilla"
    dotted = registry.build("custom", {"target": f"{HERE}.linear_orthogonal", "gain": 0.5})
    assert dotted.name == "vanilla"
    assert registry.check("custom", {"target": f"{HERE}:linear_orthogonal", "gain": 0.5}) is None
    assert registry.label("custom", {"target": f"{HERE}:linear_orthogonal", "gain": 0.5}) == \
        f"{HERE}:linear_orthogonal(gain=0.5)"


@pytest.mark.parametrize("options,message", [
    ({}, "cell.target is missing: cell=custom needs cell.target=module.path:function"),
    ({"target": "no_such_module_xyz:f"}, "cell.target=no_such_module_xyz:f is invalid: no "
                                         "module named no_such_module_xyz"),
    ({"target": f"{HERE}:nothing"}, f"cell.target={HERE}:nothing is invalid: module {HERE} "
                                    "has no attribute nothing"),
    ({"target": f"{HERE}:NOT_CALLABLE"}, "is invalid: NOT_CALLABLE is a int, not a function"),
    ({"target": f"{HERE}:not_a_cell"}, "is invalid: it returned a int, not a rnnjax Cell"),
    ({"target": "nocolon"}, "cell.target=nocolon is invalid: must be 'module.path:function'"),
    ({"target": f"{HERE}:linear_orthogonal", "gain": 0.5, "gian": 1},
     f"cell.gian is not a parameter of {HERE}:linear_orthogonal (it takes cell.gain)"),
    ({"target": f"{HERE}:with_required", "depth": 2},
     f"cell.width is missing: {HERE}:with_required requires it (give cell.width=VALUE)"),
    ({"target": f"{HERE}:linear_orthogonal", "gain": 0.5, "activation": "relu"},
     "cell.activation is not an option of cell=custom: the job passes activation"),
    ({"target": f"{HERE}:refuses"}, "calling it raised ValueError: scale must be small"),
])
def test_a_bad_target_or_option_is_one_line_naming_the_key(options, message):
    error = registry.check("custom", options)
    assert error is not None and message in error and "\n" not in error


def check_one_line(result, tmp_path, names):
    """Exit code 2, one `rnnjax: error:` line naming one of `names`, nothing written."""
    lines = [ln for ln in result.err.splitlines() if ln.strip()]
    assert result.code == 2, result.err
    assert len(lines) == 1 and lines[0].startswith("rnnjax: error: "), result.err
    assert any(n in lines[0] for n in names), lines[0]
    assert list(tmp_path.iterdir()) == [], "something was written"


@pytest.mark.parametrize("args,names", [
    (("cell.target=no_such_module_xyz:f",), ("cell.target=no_such_module_xyz:f is invalid",)),
    ((f"cell.target={HERE}:not_a_cell",), ("not a rnnjax Cell",)),
    ((f"cell.target={HERE}:linear_orthogonal", "cell.gain=0.5", "cell.gian=1"),
     ("cell.gian is not a parameter",)),
    ((f"cell.target={HERE}:with_required",), ("cell.width is missing",)),
])
@pytest.mark.e2e
def test_a_bad_target_stops_the_command_before_anything_is_written(args, names, tmp_path, app):
    for sweep in ([], ["-m", "seeds=1,2"]):  # a run, and a sweep validated before it starts
        check_one_line(app(*sweep, "cell=custom", *args, *TINY[:-1]), tmp_path, names)


def test_an_activation_or_init_the_factory_does_not_take_is_refused_not_ignored(tmp_path, app):
    # with_required declares neither activation nor init: relu or orthogonal would be ignored
    target = f"{HERE}:with_required"
    assert registry.check("custom", {"target": target, "width": 3}) is None
    assert registry.check("custom", {"target": target, "width": 3}, activation="relu") == (
        f"activation=relu does not apply to cell=custom with cell.target={target} (the factory "
        "takes no activation); allowed: tanh")
    assert "init=orthogonal does not apply" in registry.check(
        "custom", {"target": target, "width": 3}, init="orthogonal")
    # linear_orthogonal declares activation: any activation is passed on to it
    assert registry.check("custom", {"target": f"{HERE}:linear_orthogonal", "gain": 0.5},
                          activation="relu") is None
    check_one_line(app("cell=custom", f"cell.target={target}", "cell.width=3", "activation=relu",
                       *TINY), tmp_path, ("activation=relu does not apply to cell=custom",))


def test_another_cell_refuses_a_free_option(tmp_path, app):
    # `cell.KEY` without `+` reaches validation (the schema's cell is not struct) for any cell
    check_one_line(app("cell=gru", "cell.gain=2", *TINY), tmp_path,
                   ("cell.gain is not an option of cell=gru (it takes no options)",))


@pytest.mark.e2e
def test_a_custom_cell_runs_end_to_end_and_measures_its_slope(tmp_path, app):
    """A job of cell=custom in-process: its options in summary.json's config, and the probe's
    slope equal to the analytic one, log10(gain) per step back, of the linear orthogonal RNN."""
    gain = 0.5
    result = app("cell=custom", f"cell.target={HERE}:linear_orthogonal", f"cell.gain={gain}",
                 *TINY)
    assert result.code == 0, result.err
    (path,) = Path(tmp_path).rglob("summary.json")
    summary = json.loads(path.read_text())
    cell = {k: v for k, v in summary["config"]["cell"].items() if v is not None}
    assert cell == {"name": "custom", "target": f"{HERE}:linear_orthogonal", "gain": gain}
    slope = summary["headline"]["log10_slope_per_step_back"]
    assert slope == pytest.approx(math.log10(gain), abs=1e-4)
