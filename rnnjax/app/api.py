"""The Python door: the per-timestep gradient norms of any cell's parameters, no config.

    import rnnjax
    out = rnnjax.probe(cell, params, x, y)      # one network, or S on a leading axis
    out.grad_norm                               # (T,) ||dL/dH_t||, t = 1..T ((S, T) for S)
    out.frame                                   # a tidy DataFrame, as in grad_norms.parquet

`cell` is a `rnnjax.Cell`: a built-in (`rnnjax.core.cells.registry.build("gru", {})`), your own,
or a Flax or Equinox cell you already have (`rnnjax.flax_cell(module, ...)`,
`rnnjax.equinox_cell(module, ...)` return the Cell and the params of that very module, trained
or not). The probe is the harness's (`rnnjax.core.probes.make_probe`), vmapped over networks and
jit-compiled once per cell and setting.
"""

import dataclasses
import functools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from rnnjax.core.cells import Cell
from rnnjax.core.probes import ProbeResult, make_probe


@dataclass(frozen=True)
class ProbeReport:
    """What `probe` measured. Norms are float64 numbers, as grad_norms.parquet holds them (0
    where a norm underflowed, inf where the backward chain overflowed); `log10` keeps the
    probe's own log10 norms. Arrays are (T,) for one network, (S, T) for S networks; a stack of
    L layers (`rnnjax.core.cells.stack.stack`) has a trailing layer axis, (T, L) or (S, T, L)."""

    loss: np.ndarray  # () or (S,) the batch-mean loss
    grad_norm: np.ndarray  # ||dL/dH_t||, t = 1..T
    param_grad_norm: np.ndarray  # the norm of step t's share of dL/d(recurrent parameters)
    taps: dict[str, np.ndarray]  # the cell's extra total derivatives (the LSTM's "cell")
    overflow: np.ndarray  # bool: the backward chain was lost at or after t
    forward_overflow_t: np.ndarray  # the first t whose H_t is not finite (0: none)
    log10: ProbeResult  # the probe's result: log10 norms, a leading axis S
    seeds: np.ndarray = field(repr=False)  # (S,) the `seed` column of `frame`

    def with_seeds(self, seeds) -> "ProbeReport":
        """The same report with `seeds` (S,) as the frame's `seed` column."""
        seeds = np.asarray(seeds)
        if seeds.shape != self.seeds.shape:
            raise ValueError(f"seeds: {len(self.seeds)} labels expected (one per network), got "
                             f"{seeds.shape}")
        return dataclasses.replace(self, seeds=seeds)

    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        """One row per (network, layer, t): network (0..S-1), seed, t, T, steps_back (T - t),
        grad_norm, param_grad_norm, <tap>_grad_norm, train_step, the flags underflow,
        overflow, forward_overflow, forward_overflow_t, and layer (1 for one cell)
        (`rnnjax.app.results.probe_frame`)."""
        from rnnjax.app.results import probe_frame

        r = self.log10  # (S, T) arrays, as the job's Profile holds them (norms in float64)
        profile = SimpleNamespace(
            grad_norm=_norm(r.log10_grad_norm), param_grad_norm=_norm(r.log10_param_grad_norm),
            taps={k: _norm(v) for k, v in r.taps.items()}, overflow=np.asarray(r.overflow),
            forward_overflow_t=np.asarray(r.forward_overflow_t))
        df = probe_frame(self.seeds, profile, {})
        rows = len(df) // len(self.seeds)  # T, or T L for a stack
        df.insert(0, "network", np.repeat(np.arange(len(self.seeds)), rows))
        return df


def _norm(log10: Any) -> np.ndarray:
    """The norms of the probe's log10 norms, exponentiated in float64 (as the job's)."""
    return np.power(10.0, np.asarray(log10, np.float64))


@functools.lru_cache(maxsize=32)
def _compiled(cell: Cell, loss_at: str, kind: str, truncate: int | None, unroll: int | None):
    return jax.jit(jax.vmap(make_probe(cell, loss_at, kind, truncate, unroll), (0, None, None)))


def _one_network(cell: Cell, params, x, y, setting: tuple) -> bool:
    """Whether `params` are one network's (else S networks' on a leading axis): the probe is
    traced (shapes only) for one network, and where that fails for S."""
    one = make_probe(cell, *setting)
    try:
        jax.eval_shape(one, params, x, y)
        return True
    except Exception as e:  # noqa: BLE001 (any failure to trace: then it is S networks)
        error = e
    try:
        jax.eval_shape(jax.vmap(one, (0, None, None)), params, x, y)
    except Exception:  # noqa: BLE001
        raise error from None  # neither: one network's error is the one to read
    return False


def probe(cell: Cell | str, params, x, y, loss_at: str = "last", *, kind: str | None = None,
          networks: bool | None = None, truncate: int | None = None) -> ProbeReport:
    """Measures ||dL/dH_t|| and step t's share of the recurrent parameters' gradient, for every
    t, of one network or of S networks at once.

    Args:
      cell: a Cell (or the name of a registered cell, built with its defaults).
      params: the parameters of one network, or of S networks stacked on a leading axis.
      x: (B, T) integer tokens or (B, T, D) real inputs, one batch for every network.
      y: the targets: (B, T) integer tokens (softmax cross-entropy), or (B,) real numbers
        (squared error of the last output, the adding problem's).
      loss_at: "last" (the loss of the last step only) or "all" (averaged over every step).
      kind: "tokens" or "regression"; None: tokens for integer y, regression otherwise.
      networks: True where params have the leading axis S, False for one network; None: found
        from the shapes.
      truncate: None for full BPTT; k for truncated BPTT every k steps.

    Returns:
      A ProbeReport; its frame's `seed` column counts the networks 0..S-1
      (`ProbeReport.with_seeds` relabels them).
    """
    if isinstance(cell, str):
        from rnnjax.core.cells import registry

        cell = registry.build(cell, {})
    x, y = jnp.asarray(x), jnp.asarray(y)
    if kind is None:
        kind = "tokens" if jnp.issubdtype(y.dtype, jnp.integer) else "regression"
    setting = (loss_at, kind, truncate)
    if networks is None:
        networks = not _one_network(cell, params, x, y, setting)
    batched = params if networks else jax.tree.map(lambda a: jnp.asarray(a)[None], params)
    S = jax.tree.leaves(batched)[0].shape[0]
    res = _compiled(cell, loss_at, kind, truncate, None)(batched, x, y)
    def host(a: Any, norm: bool = True) -> np.ndarray:
        a = _norm(a) if norm else np.asarray(a)
        return a if networks else a[0]

    return ProbeReport(
        loss=host(res.loss, norm=False).astype(np.float64), grad_norm=host(res.log10_grad_norm),
        param_grad_norm=host(res.log10_param_grad_norm),
        taps={k: host(v) for k, v in res.taps.items()}, overflow=host(res.overflow, norm=False),
        forward_overflow_t=host(res.forward_overflow_t, norm=False), log10=res, seeds=np.arange(S))


def flax_cell(module, params=None, readout=None, *, in_features: int | None = None,
              Q: int | None = None, key=None) -> tuple[Cell, Any]:
    """(Cell, params) of a Flax cell you already have (NNX, or Linen with its `params`), with
    its trained read-out (`readout`: (W (H, Q), b), an nnx.Linear or a Dense's params) or a
    fresh one of Q outputs from `key`. See `rnnjax.core.cells.flax_cells.from_module`."""
    from rnnjax.core.cells import flax_cells

    return flax_cells.from_module(module, params, readout, in_features=in_features, Q=Q,
                                  key=key)


def equinox_cell(module, readout=None, *, in_features: int | None = None, Q: int | None = None,
                 key=None) -> tuple[Cell, Any]:
    """(Cell, params) of an Equinox cell you already have, with its trained read-out
    (`readout`: an equinox.nn.Linear or (W (H, Q), b)) or a fresh one of Q outputs from `key`.
    See `rnnjax.core.cells.equinox_cells.from_module`."""
    from rnnjax.core.cells import equinox_cells

    return equinox_cells.from_module(module, readout, in_features=in_features, Q=Q, key=key)
