"""Any Equinox recurrent cell as a rnnjax Cell (`cell=equinox cell.module=GRUCell`).

equinox.nn's GRUCell or LSTMCell, or a user's `eqx.Module` by import path
(`cell.module=my_pkg.mod:MyCell`), constructed as `Cls(input_size=D, hidden_size=H, key=key)`
(and `dtype=` where it takes one) and called, unbatched, as `cell(x_t, state) -> state` with
x_t (D,) and a state of zeros (hidden_size,) or a pair of them (an LSTM's (h, c)). Equinox cells
are unbatched: a step is `jax.vmap` of the cell over the batch. Its parameters are the arrays of
`eqx.partition(module, eqx.is_array)`; the rest is kept static and `eqx.combine`d at each step.

Token inputs are one-hot encoded to D (no embedding). The adapter adds a linear read-out
(W_hq, b_q) of the hidden output, outside `recurrent`: param_grad_norm is step t's share of the
gradient of all the Equinox cell's parameters (weight_ih, weight_hh and biases).

The hidden output H_t whose gradient `grad_norm` measures is the state, or for a state that is a
tuple its first element: Equinox's LSTM state is (h, c), so for an LSTM grad_norm measures
dL/dh_t, the hidden output; the memory cell c_t is not included.

equinox is imported when a cell is built, not when this module is imported.
"""

from rnnjax.core.cells.adapters import Adapter, adapted, dtype_kwargs, readout_arrays, resolve
from rnnjax.core.cells.base import Cell
from rnnjax.core.cells.registry import CellSpec, Option

NAME = "equinox"
BUILTINS = ("GRUCell", "LSTMCell")


def hidden(state):
    """H_t: the state, or the first element of a tuple state (h of Equinox's LSTM (h, c))."""
    return state[0] if isinstance(state, tuple | list) else state


def one_state(module, D: int, dtype):
    """The zero state of one sequence: (hidden_size,), or a pair of them where the cell
    returns a pair (found by `jax.eval_shape`, nothing is computed)."""
    import jax
    import jax.numpy as jnp

    z = jnp.zeros((module.hidden_size,), dtype)
    x = jnp.zeros((D,), dtype)
    for state in (z, (z, z)):
        try:
            out = jax.eval_shape(module, x, state)
        except (TypeError, ValueError):
            continue
        if jax.tree.structure(out) == jax.tree.structure(state) and all(
                o.shape == s.shape for o, s in zip(jax.tree.leaves(out), jax.tree.leaves(state),
                                                   strict=True)):
            return state
    raise ValueError(f"cell.module={type(module).__name__}: an Equinox cell is called as "
                     "cell(x_t, state) -> state with a state of (hidden_size,) or a pair of them")


def equinox_adapter(cls) -> Adapter:
    """The Adapter of an Equinox cell class."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    def make(key, D, H, dtype):
        module = cls(input_size=D, hidden_size=H, key=key, **dtype_kwargs(cls, dtype))
        return eqx.partition(module, eqx.is_array)

    def step(static, tree, state, x_t):
        return jax.vmap(eqx.combine(tree, static))(x_t, state)

    def initial(static, tree, B, D):
        dtype = jax.tree.leaves(tree)[0].dtype
        one = one_state(eqx.combine(tree, static), D, dtype)
        return jax.tree.map(lambda a: jnp.zeros((B, *a.shape), a.dtype), one)

    return Adapter(name=NAME, cls=cls, make=make, step=step, initial=initial, hidden=hidden)


def equinox_class(module: str):
    """The Equinox cell class `module` (a built-in name or package.module:Class)."""
    import equinox as eqx

    return resolve(module, BUILTINS, eqx.nn, "Equinox")


def equinox(module: str = "GRUCell") -> Cell:
    """The Cell of an Equinox recurrent cell (see the module's docstring).

    Args:
      module: GRUCell, LSTMCell (equinox.nn) or `package.module:Class`.
    """
    return adapted(equinox_adapter(equinox_class(module))).cell


def from_module(module, readout=None, *, in_features: int | None = None, Q: int | None = None,
                key=None):
    """(Cell, params) of an Equinox cell instance you already have (trained or not).

    Args:
      module: the cell (an eqx.Module with input_size and hidden_size, called as
        cell(x_t, state)).
      readout: the trained read-out: an equinox.nn.Linear or (W (H, Q), b (Q,)); None: a fresh
        one of Q outputs from `key`.
      in_features: D, the input size (tokens are one-hot encoded to D); default: the module's
        `input_size`.
      Q, key: the fresh read-out's outputs and key (with readout=None).
    """
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from rnnjax.core.cells.adapters import Adapted, field_names

    adapter = equinox_adapter(type(module))
    tree, static = eqx.partition(module, eqx.is_array)
    D = getattr(module, "input_size", None) if in_features is None else in_features
    if D is None:
        raise ValueError(f"{type(module).__name__} has no input_size: pass in_features=D")
    dtype = jax.tree.leaves(tree)[0].dtype
    W, b = readout_arrays(readout, module.hidden_size, Q, key, dtype)
    a = Adapted(adapter, field_names(tree))
    return a.cell, a.pack(tree, static, D, W, jnp.asarray(b).astype(W.dtype))


def _check(options: dict) -> str | None:
    try:
        equinox(options["module"])
    except ImportError:
        return "cell=equinox needs equinox: pip install 'rnnjax[equinox]'"
    except ValueError as e:
        return str(e)
    return None


SPEC = CellSpec(
    build=equinox,
    options={"module": Option(default="GRUCell", type=str,
                              help="an Equinox cell: GRUCell, LSTMCell or package.module:Class")},
    activations=("tanh",), inits=("normal",), check=_check,
    label=lambda o: f"equinox {o['module']}",
    help="any Equinox recurrent cell, vmapped over the batch, one-hot inputs and a linear "
         "read-out",
    order=51)
