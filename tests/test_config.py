import pytest
from omegaconf import OmegaConf

from rnnjax.config import Config, ConfigError, InitName, TaskName, validate


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
