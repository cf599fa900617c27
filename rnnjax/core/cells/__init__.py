"""Recurrent cells as values, and the registry that owns them.

A `Cell` (rnnjax.core.cells.base) is a handful of pure functions: one step of one batch, its
read-out and its parameters. A `CellSpec` (rnnjax.core.cells.registry) is everything the harness
knows about one option of the config group `cell`. `CELLS` maps each registered name to its
spec: the modules of this package that define `SPEC`, then plugins (entry point group
`rnnjax.cells`).
"""

from rnnjax.core.cells.activations import ACTIVATIONS, Activation
from rnnjax.core.cells.base import (
    Cell,
    Params,
    State,
    finite,
    log10_norm,
    scale_grad,
    unit,
    unroll,
)
from rnnjax.core.cells.registry import CELLS, CellSpec, Option, register
from rnnjax.core.cells.vanilla import RNNParams, activation, vanilla

__all__ = ["ACTIVATIONS", "CELLS", "Activation", "Cell", "CellSpec", "Option", "Params",
           "RNNParams", "State", "activation", "finite", "log10_norm", "register", "scale_grad",
           "unit", "unroll", "vanilla"]
