"""rnnjax: per-timestep gradient dynamics of recurrent networks, in JAX.

The names below are imported lazily, on first use, so that importing the core
(`rnnjax.core.cells`, `rnnjax.core.probes`, `rnnjax.core.train`, `rnnjax.core.theory`) loads
neither Hydra, OmegaConf, pandas nor matplotlib.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "rnnjax.core.cells": ("ACTIVATIONS", "CELLS", "Cell", "RNNParams", "activation", "unroll",
                     "vanilla"),
    "rnnjax.core.cells.vanilla": ("init_params",),
    "rnnjax.core.cells.stack": ("stack",),
    "rnnjax.core.init": ("INITS", "gaussian", "identity", "make_init", "normal", "orthogonal",
                    "spectral", "xavier"),
    "rnnjax.core.probes": ("ProbeResult", "make_probe"),
    "rnnjax.app.config": ("Config",),
    "rnnjax.app.validate": ("ConfigError", "validate"),
    "rnnjax.app.api": ("ProbeReport", "equinox_cell", "flax_cell", "probe"),
    "rnnjax.app.results": ("load_lyapunov", "load_metrics", "load_summaries", "load_sweep"),
    "rnnjax.core.tasks": ("load_timemachine",),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'rnnjax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
