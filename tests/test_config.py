import copy
import dataclasses
import re
import typing

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from rnnjax.app.config import (
    CELL_OPTIONS,
    CellConfig,
    CellName,
    Config,
    InitName,
    TaskName,
    _option_types,
    register_configs,
)
from rnnjax.app.validate import ConfigError, cell_options, validate
from rnnjax.core.cells import registry
from rnnjax.sweeps.app import CONF_DIR


def cfg(**kw):
    c = OmegaConf.structured(Config)
    for k, v in kw.items():
        OmegaConf.update(c, k, v)
    return c


def test_defaults_are_valid():
    c = validate(cfg())
    assert isinstance(c, Config) and c.init.name is InitName.normal
    assert c.task.name is TaskName.random


@pytest.mark.parametrize("overrides,message", [
    ({"seq_len": 0}, "seq_len=0 is invalid: must be an integer >= 1"),
    ({"hidden_size": -3}, "hidden_size=-3 is invalid"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"seeds": 0}, "seeds=0"),
    ({"seed": -1}, "seed=-1"),
    ({"init.name": "orthogonal", "init.std": 0.1},
     "init.std is not a parameter of init=orthogonal"),
    ({"init.name": "xavier", "init.gain": 2.0}, "it takes no parameter"),
    ({"init.name": "spectral", "init.radius": -1.0},
     "init.radius=-1.0 is invalid: must be a number > 0"),
    ({"task.vocab_size": 1}, "task.vocab_size=1"),
    ({"train.clip_value": 0.0}, "train.clip_value=0.0 is invalid: must be a finite number > 0"),
    ({"train.initial_scale": -1.0}, "train.initial_scale=-1.0 is invalid"),
    ({"train.initial_scale": 1e-3}, "train.initial_scale applies to train.optimizer=rmsprop only"),
    ({"task.path": "x.txt"}, "task.path is not a parameter of task=random"),
    ({"task.name": "timemachine", "task.vocab_size": None, "task.path": "/nope"}, "task.path"),
])
def test_invalid_values_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as e:
        validate(cfg(**overrides))
    assert "\n" not in str(e.value)


def test_types_are_checked_by_the_schema():
    with pytest.raises(Exception, match="batch_size"):
        cfg(batch_size="abc")
    with pytest.raises(Exception, match="loss_at"):
        cfg(**{"probe.loss_at": "first"})


@pytest.mark.parametrize("dtype,value,ok", [
    ("float32", 1e308, False), ("float32", 1e39, False), ("float32", 1e-46, False),
    ("float32", 3e38, True), ("float64", 1e308, True), ("float64", 1e-300, True),
])
def test_init_values_the_dtype_cannot_hold_are_bad_input(dtype, value, ok):
    c = cfg(**{"init.name": "orthogonal", "init.gain": value, "dtype": dtype})
    if ok:
        validate(c)
        return
    with pytest.raises(ConfigError) as e:
        validate(c)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"init.gain={value:g} is invalid: dtype={dtype} "
                                              "cannot hold it")
    # a list is checked value by value
    with pytest.raises(ConfigError, match=re.escape(f"init.gain={value:g} is invalid")):
        validate(cfg(**{"init.name": "orthogonal", "init.gain": [1.0, value], "dtype": dtype}))


@pytest.mark.parametrize("value,shown", [("1.5", "'1.5'"), (["1.5", 2.0], "['1.5',2.0]")])
def test_a_quoted_number_is_reported_as_a_string(value, shown):
    with pytest.raises(ConfigError) as e:
        validate(cfg(**{"init.name": "gaussian", "init.gain": value}))
    assert str(e.value).startswith(f"init.gain={shown} is invalid: got the string '1.5'; must be "
                                   "a number")


def test_quoted_init_value_through_hydra():
    # Hydra parses init.gain='1.5' (quoted on the command line) to the string "1.5".
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        c = compose("config", overrides=["init=gaussian", "init.gain='1.5'"])
    with pytest.raises(ConfigError, match="got the string '1.5'"):
        validate(c)


# The experiments whose training loss is over every step: the language models', and selective
# copying's (its task sets probe.loss_at=all, as task=copy does).
ALL_STEPS = {"d2l_rnn_scratch", "d2l_no_clip", "d2l_irnn_clipping", "d2l_gru_scratch",
             "d2l_lstm_scratch", "selective_copy_train"}


@pytest.mark.e2e
def test_loss_at_defaults_to_last_and_language_models_keep_all():
    # The probe's loss is also the loss that trains (job.train_job): an experiment or task
    # scored over every step must say so, now that the default is the last step.
    register_configs()
    assert CONF_DIR == ROOT / "conf" and Config().probe.loss_at.value == "last"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        def loss_at(*overrides):
            return compose("config", overrides=list(overrides)).probe.loss_at.value

        assert loss_at() == "last" and loss_at("task=adding") == "last"
        assert loss_at("task=timemachine") == loss_at("task=copy") == "all"
        assert loss_at("task=timemachine", "probe.loss_at=last") == "last"  # the command wins
        assert loss_at("task=random") == "last"
        experiments = {p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")}
        assert ALL_STEPS < experiments
        for name in sorted(experiments):
            assert loss_at(f"+experiment={name}") == ("all" if name in ALL_STEPS else "last"), \
                name


# ------------------------------------------------------------------ cell.* from the registry


def width_cell(width: int, activation: str = "tanh"):
    """A factory for cell=custom (this module is importable as `test_config`)."""
    from rnnjax.core.cells.vanilla import vanilla

    assert width > 0
    return vanilla(activation=activation)


def test_the_cell_schema_is_every_registered_cells_options():
    hints = typing.get_type_hints(CellConfig)
    assert [c.value for c in CellName] == list(registry.CELLS)
    assert CellConfig().name is CellName[next(iter(registry.CELLS))]
    declared = {k for name in registry.CELLS for k in registry.get(name).options}
    assert set(CELL_OPTIONS) == declared and "target" in declared  # cell=custom's
    for name in registry.CELLS:
        for key, value in registry.get(name).options.items():
            t = registry.option(value).type
            assert hints[key] in (t | None, typing.Any), (name, key)
            assert getattr(CellConfig(), key) is None  # null: the cell's default
    # the options of the config's cell, its defaults filled in
    c = validate(cfg(**{"cell.name": "lstm", "cell.forget_bias": 1.0}))
    assert cell_options(c) == {**registry.defaults("lstm"), "forget_bias": 1.0}


def test_two_cells_typing_one_option_apart_make_it_any(monkeypatch):
    cells = {"a": registry.CellSpec(build=lambda k=1.0: None, options={"k": 1.0, "j": 2}),
             "b": registry.CellSpec(build=lambda k="x": None, options={"k": "x"})}
    monkeypatch.setattr(registry, "_CELLS", cells)
    monkeypatch.setattr(registry, "_LOADED", True)
    assert _option_types() == {"k": typing.Any, "j": int}


@pytest.fixture
def store():
    """Hydra's ConfigStore, given back as it was (an entry stored here must not leak)."""
    repo = copy.deepcopy(ConfigStore.instance().repo)
    yield ConfigStore.instance()
    ConfigStore.instance().repo = repo


def test_a_cell_without_a_yaml_gets_a_stored_node(store, tmp_path):
    (tmp_path / "cell").mkdir()
    (tmp_path / "cell" / "vanilla.yaml").write_text("name: vanilla\n")
    register_configs(tmp_path)
    stored = {n.removesuffix(".yaml") for n in store.list("cell")}
    assert stored == set(registry.CELLS) - {"vanilla"}
    node = store.load("cell/lru.yaml").node
    assert OmegaConf.to_container(node) == {"name": "lru", **registry.defaults("lru")}


@pytest.mark.parametrize("plus", ["", "+"])
def test_free_cell_options_reach_the_factory_with_or_without_plus(plus):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        c = compose("config", overrides=["cell=custom", "cell.target=test_config:width_cell",
                                         f"{plus}cell.width=3"])
        bad = compose("config", overrides=["cell=lru", f"{plus}cell.width=3"])
    v = validate(c)
    assert cell_options(v) == {"target": "test_config:width_cell", "width": 3}
    assert [f.name for f in dataclasses.fields(v.cell)] == ["name", *CELL_OPTIONS]  # no column
    with pytest.raises(ConfigError, match=re.escape(
            "cell.width is not an option of cell=lru (it takes cell.r_min, ")):
        validate(bad)


def test_an_options_own_check_is_one_line_naming_key_and_value():
    with pytest.raises(ConfigError) as e:
        validate(cfg(**{"cell.name": "lru", "cell.r_max": 1.5}))
    assert str(e.value).startswith("cell.r_max=1.5 is invalid: must be in (0, 1]")
