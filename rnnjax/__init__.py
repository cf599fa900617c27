"""rnnjax: per-timestep gradient dynamics of recurrent networks, in JAX."""

from rnnjax.cells import ACTIVATIONS, RNNParams, activation, forward, rnn_cell
from rnnjax.config import Config, ConfigError, validate
from rnnjax.init import (
    INITS,
    gaussian,
    identity,
    init_params,
    make_init,
    normal,
    orthogonal,
    spectral,
    xavier,
)
from rnnjax.probes import ProbeResult, TimeGrads, make_probe, make_time_grads
from rnnjax.results import load_metrics, load_summaries, load_sweep
from rnnjax.tasks import load_timemachine

__all__ = [
    "ACTIVATIONS", "INITS", "Config", "ConfigError", "ProbeResult", "RNNParams", "TimeGrads",
    "activation", "forward", "gaussian", "identity", "init_params", "load_metrics",
    "load_summaries", "load_sweep",
    "load_timemachine", "make_init", "make_probe", "make_time_grads", "normal", "orthogonal",
    "rnn_cell", "spectral", "validate", "xavier",
]
