"""A job's headline numbers and the theory set beside them, from the probe's arrays on the host.

Everything here runs after the jitted probe has returned: numpy in, plain dicts out (what
summary.json holds and the job's log line shows).
"""

import logging
import math
from typing import Any, NamedTuple

import jax
import numpy as np

from rnnjax.app import results
from rnnjax.core.cells import Cell, registry
from rnnjax.core.stats import finite_median
from rnnjax.core.theory import make_lyapunov

log = logging.getLogger("rnnjax")


class Profile(NamedTuple):
    """A probe's result on the host, for S networks: norms as float64 numbers (a stack of L
    layers, `model.layers`, has every norm per layer: (S, T, L) where (S, T) is said)."""

    loss: np.ndarray  # (S,)
    grad_norm: np.ndarray  # (S, T) ||dL/dH_t||: 0 where it underflowed, inf where overflowed
    param_grad_norm: np.ndarray  # (S, T)
    overflow: np.ndarray  # (S, T) bool: the backward chain was lost at or after t
    forward_overflow_t: np.ndarray  # (S,) int: the first t whose H_t is not finite (0: none)
    taps: dict[str, np.ndarray]  # tap name -> (S, T) norms

    def select(self, sl) -> "Profile":
        """The networks `sl` (a slice or index array) of this profile."""
        return Profile(*(v[sl] if not isinstance(v, dict) else {k: a[sl] for k, a in v.items()}
                         for v in self))


def to_host(res) -> Profile:
    """A `ProbeResult` (device arrays, log10 norms) as a `Profile` (numpy, float64 norms).

    The norms are exponentiated in float64, so a float32 norm of finite entries beyond float32's
    range (up to ~1e38 * sqrt(B H)) is still a finite number here."""
    def norm(a):
        return np.power(10.0, np.asarray(a, np.float64))

    return Profile(loss=np.asarray(res.loss, np.float64), grad_norm=norm(res.log10_grad_norm),
                   param_grad_norm=norm(res.log10_param_grad_norm),
                   overflow=np.asarray(res.overflow, bool),
                   forward_overflow_t=np.asarray(res.forward_overflow_t, np.int64),
                   taps={k: norm(v) for k, v in res.taps.items()})


def headline(p: Profile) -> dict:
    """The headline numbers of one group of networks (one init value, every seed).

    Of a stack of L layers (`model.layers`) they are the top layer's (next to the loss: the
    layer a one-layer model has), with `layer` = L and every layer's under `layers` ("1" at
    the input .. "L": `layer_headline`); n_nonfinite and n_underflow count every layer.
    """
    nonfinite = ((~np.isfinite(p.grad_norm)).sum() + (~np.isfinite(p.loss)).sum()
                 + (~np.isfinite(p.param_grad_norm)).sum())
    layers = {}
    if p.grad_norm.ndim == 3:  # (S, T, L)
        layers = {"layer": p.grad_norm.shape[2], "n_underflow": int((p.grad_norm == 0).sum()),
                  "layers": {str(l + 1): layer_headline(g)
                             for l, g in enumerate(np.moveaxis(p.grad_norm, 2, 0))}}
        p = p._replace(grad_norm=p.grad_norm[..., -1], taps={k: v[..., -1] for k, v in
                                                             p.taps.items()})
    return {
        **layer_headline(p.grad_norm),
        "loss_mean": float(np.mean(p.loss)),
        "n_nonfinite": int(nonfinite),
        "n_overflow": int(p.overflow.sum()),
        "n_forward_overflow": int((p.forward_overflow_t > 0).sum()),
        "forward_overflow_t_per_seed": p.forward_overflow_t.tolist(),
        **{f"{k}_grad_norm_tT_median": float(np.median(v[:, -1])) for k, v in p.taps.items()},
        **layers,
    }


def layer_headline(grad_norm: np.ndarray) -> dict:
    """The profile of one layer (S, T) in numbers: its slope (median over seeds, and per seed
    with the t range each seed's fit used), its median norm at t = 1 and t = T and how many of
    its norms underflowed."""
    fits = [results.log10_slope(g) for g in grad_norm]
    slopes = np.array([f[0] for f in fits])
    return {
        "log10_slope_per_step_back": finite_median(slopes),
        "log10_slope_per_seed": slopes.tolist(),
        "fit_window_t_per_seed": [list(f[1]) for f in fits],
        "grad_norm_t1_median": float(np.median(grad_norm[:, 0])),
        "grad_norm_tT_median": float(np.median(grad_norm[:, -1])),
        "n_underflow": int((grad_norm == 0).sum()),
    }


def label_keys(cell: str, options: dict, activation: str) -> dict[str, str]:
    """The summary keys that name a job's network for the report, which reads files only:
    cell_label, how the cell's options read in a figure (`registry.label`; "" for none), and
    model_label, one word for the network: its activation where the cell's activation is free
    (the cell takes every one), else the cell's name."""
    free = registry.get(cell).activations is None
    return {"cell_label": registry.label(cell, options),
            "model_label": activation if free else cell}


def theory_applies(loss_at: str | None) -> bool:
    """Whether the predictions describe the measured profile: they are of the gradient of one
    loss term, which `probe.loss_at=last` measures; with `all` each step's own loss term keeps
    the profile flat (None: not said, taken as last)."""
    return loss_at != "all"


def log_headline(name: str, sizes: str, loss_at: str, h: dict, status: str, wall: float
                 ) -> None:
    """The job's log line: the measured slope, the predictions beside it where they apply
    (the gradient of one loss term: `probe.loss_at=last`), and what was flagged.

    Args:
      name: what the networks are ("tanh/gaussian"); sizes: "T=64 H=64 S=4".
    """
    th = h["theory"]
    value = f" {h['init_param']}={h['init_value']:g}" if "init_param" in h else ""
    if theory_applies(loss_at) and "mean_field" in th:
        theory = (f"; mean field {_num(th['mean_field']['log10_factor_per_step'])}, Pascanu bound "
                  f"{_num(th['pascanu_log10_bound_per_step'])}, top Lyapunov "
                  f"{_num(th['lyapunov_top_log10_per_step'])}")
    elif theory_applies(loss_at):
        theory = f"; top Lyapunov {_num(th['lyapunov_top_log10_per_step'])}"
        if th.get("predicted_log10_slope_per_step_back") is not None:
            theory = (f"; {th.get('prediction', 'predicted')} "
                      f"{_num(th['predicted_log10_slope_per_step_back'])}" + theory)
    else:
        theory = ("; with the loss over all steps each step's own loss term keeps the profile "
                  "flat, and no prediction applies: probe.loss_at=last measures one term's decay")
    if "layers" in h:  # a stack: every layer's slope, the input's first
        theory = "; by layer " + " ".join(
            f"{l}: {_num(v['log10_slope_per_step_back'])}" for l, v in h["layers"].items()) + (
            f" (the headline: layer {h['layer']}); no prediction for a stack")
    n_fwd = h["n_forward_overflow"]
    fwd = ""
    if n_fwd:
        first = min(t for t in h["forward_overflow_t_per_seed"] if t > 0)
        fwd = (f", FORWARD OVERFLOW in {n_fwd} of {len(h['forward_overflow_t_per_seed'])} seeds "
               f"(H_t not finite from t={first}: gradients NaN)")
    log.info("%s%s %s: log10 grad_norm per step back %s (median over seeds%s), loss %.4f, "
             "underflow %d, overflow %d%s, status %s, %.2fs", name, value, sizes,
             _num(h["log10_slope_per_step_back"]), theory, h["loss_mean"], h["n_underflow"],
             h["n_overflow"], fwd, status, wall)


LYAPUNOV_SEQUENCES = 4  # of the probe batch: the exponents are averaged over these
LYAPUNOV_K = 3  # exponents per network beyond a state of LYAPUNOV_ALL_UP_TO numbers
LYAPUNOV_ALL_UP_TO = 64  # lyapunov.k=null: every exponent of a state up to this real dimension


def state_dimension(cell: Cell, params) -> int:
    """The real dimension of the cell's state: every leaf of the pytree, a complex entry
    counting twice (from shapes only: nothing is computed or compiled). params: leading axis S."""
    s0 = jax.eval_shape(lambda p: cell.initial_state(jax.tree.map(lambda a: a[0], p), 1), params)
    return sum(a.size * (2 if np.issubdtype(a.dtype, np.complexfloating) else 1)
               for a in jax.tree.leaves(s0))


def lyapunov_k(k: int | None, dimension: int) -> int:
    """How many exponents lyapunov.k asks of a state of `dimension` real numbers: k (at most
    all); null: all up to LYAPUNOV_ALL_UP_TO, else LYAPUNOV_K."""
    if k is None:
        return dimension if dimension <= LYAPUNOV_ALL_UP_TO else min(LYAPUNOV_K, dimension)
    return min(k, dimension)


class Lyapunov(NamedTuple):
    """The job's Lyapunov spectrum, compiled once and measured at initialization and at every
    logged training step: `measure(params, x) -> (S, k)` natural log per step."""

    k: int
    every: int
    measure: Any

    @classmethod
    def build(cls, cell: Cell, params, T: int, k: int | None = None, every: int = 1
              ) -> "Lyapunov":
        """For a job's cell and networks (params: leading axis S) whose batches have T steps:
        the exponents after a burn-in of T // 4 steps, on the first LYAPUNOV_SEQUENCES
        sequences of each network's batch (`rnnjax.core.theory.make_lyapunov`)."""
        k = lyapunov_k(k, state_dimension(cell, params))
        f = jax.jit(jax.vmap(make_lyapunov(cell, k, burn_in=T // 4, every=every)))
        return cls(k, every, lambda p, x: np.asarray(f(p, x[:, :LYAPUNOV_SEQUENCES]),
                                                     np.float64))


def lyapunov_numbers(lam: np.ndarray, lyap: Lyapunov) -> dict:
    """summary.json's Lyapunov entries of the exponents lam (S, k) (natural log per step): the
    top one (median over seeds), and the spectrum per seed and its median, also in log10."""
    top = finite_median(lam[:, 0])
    log10 = lam / math.log(10)
    return {
        "lyapunov_top_per_step": top,
        "lyapunov_top_log10_per_step": top / math.log(10),
        "lyapunov_exponents_per_seed": lam.tolist(),
        "lyapunov_k": lyap.k,
        "lyapunov_every": lyap.every,
        "lyapunov_log10_per_step_per_seed": log10.tolist(),
        "lyapunov_log10_per_step": [finite_median(log10[:, i]) for i in range(lam.shape[1])],
    }


def theory_summary(cell: Cell, params, x, measured: float, cell_theory=None,
                   options: dict | None = None, lyapunov: Lyapunov | None = None,
                   lam: np.ndarray | None = None, **context) -> dict:
    """Predictions at initialization, beside the measured slope (log10 per step back), and
    whether they apply to it (`applies`: false with `loss_at="all"`, see `theory_applies`).

    lyapunov (every cell): the leading exponents of the driven state dynamics (natural log per
    step, and log10), on the first sequences of each seed's probe batch, after a burn-in of a
    quarter of the batch's actual length T (`Lyapunov`; None: lyapunov.k=null, every=1). Then
    the cell's own theory, merged in; not for a stack of layers (`cell.layers` > 1): a cell's
    theory describes one layer fed by the input, so a stack's `applies` is false, with
    `not_applied` saying why (its Lyapunov exponents are the whole stack's).

    Args:
      cell: the job's cell.
      params: the networks' parameters (leading axis S). x: (S, B, T...) their probe batches.
      measured: the measured slope.
      cell_theory: the cell's own theory (`rnnjax.core.cells.CellSpec.theory`), called as
        cell_theory(cell, params, x, measured, **options, **context) with those entries of
        `context` it declares (`registry.declared`); its dict is merged in.
      options: the cell's options.
      lyapunov: the job's compiled spectrum. lam: its exponents (S, k) where already measured.
      context: y ((S, B, T) or (S, B) the probe batches' targets), kind, loss_at (the probe's
        loss), activation, init, init_value (the job's).
    """
    lyapunov = lyapunov or Lyapunov.build(cell, params, x.shape[2])
    lam = lyapunov.measure(params, x) if lam is None else lam  # (S, k)
    out = {
        # false with loss_at=all: the numbers below are kept, but no plot or line compares them
        "applies": theory_applies(context.get("loss_at")),
        "measured_log10_slope_per_step_back": measured,
        **lyapunov_numbers(lam, lyapunov),
    }
    if cell.layers > 1:
        out["applies"] = False
        out["not_applied"] = (f"a stack of {cell.layers} layers: the cell's theory describes one "
                              "layer, so no prediction is made")
    elif cell_theory is not None:
        out.update(cell_theory(cell, params, x, measured, **(options or {}),
                               **registry.declared(cell_theory, context)))
    return out


def _num(v: float) -> str:
    """A slope for the log: 4 decimals, or 3 significant digits when it is below 1e-3 (the
    uRNN's deviations from 0 are ~1e-5 per step)."""
    if v is None or not math.isfinite(v) or v == 0 or abs(v) >= 1e-3:
        return f"{v:+.4f}" if v is not None else "n/a"
    return f"{v:+.2e}"
