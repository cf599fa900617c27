"""Any Flax recurrent cell as a rnnjax Cell (`cell=flax cell.module=GRUCell`).

Both Flax APIs:

- NNX (`cell.api=nnx`, the default): flax.nnx's SimpleCell, GRUCell, LSTMCell,
  OptimizedLSTMCell, or a user's `nnx.Module` by import path (`cell.module=my_pkg.mod:MyCell`),
  constructed as `Cls(in_features=D, hidden_features=H, rngs=rngs)`, called as
  `cell(carry, x_t) -> (carry, y_t)`, with `initialize_carry(input_shape, rngs)`. Its parameters
  are `nnx.split(module, nnx.Param, ...)`'s State (the GraphDef is kept static); a step is
  `nnx.merge(graphdef, state)` called once.
- Linen (`cell.api=linen`): flax.linen's SimpleCell, GRUCell, LSTMCell, OptimizedLSTMCell,
  MGUCell, or a user's `nn.RNNCellBase` by import path, constructed as `Cls(features=H)`, run by
  `module.init` / `module.apply`, its carry from `initialize_carry(rng, input_shape)`.

Token inputs are one-hot encoded to D (no embedding). The adapter adds a linear read-out
(W_hq, b_q) of the hidden output, outside `recurrent`: param_grad_norm is step t's share of the
gradient of all the Flax cell's parameters (input and recurrent kernels and biases).

The hidden output H_t whose gradient `grad_norm` measures is the carry, or for a carry that is a
tuple its last element: Flax's LSTM carry is (c, h), so for an LSTM grad_norm measures dL/dh_t,
the hidden output; the memory cell c_t is not included.

flax is imported when a cell is built, not when this module is imported (the registry imports
every cell module).
"""

from rnnjax.core.cells.adapters import Adapter, adapted, dtype_kwargs, readout_arrays, resolve
from rnnjax.core.cells.base import Cell
from rnnjax.core.cells.registry import CellSpec, Option

NAME = "flax"
APIS = ("nnx", "linen")
BUILTINS = {"nnx": ("SimpleCell", "GRUCell", "LSTMCell", "OptimizedLSTMCell"),
            "linen": ("SimpleCell", "GRUCell", "LSTMCell", "OptimizedLSTMCell", "MGUCell")}


def hidden(carry):
    """H_t: the carry, or the last element of a tuple carry (h of Flax's LSTM carry (c, h))."""
    return carry[-1] if isinstance(carry, tuple | list) else carry


def _only_params(rest, name: str) -> None:
    import jax

    if jax.tree.leaves(rest):
        raise ValueError(f"cell.module={name}: the module holds state other than parameters; "
                         "the flax adapter takes cells whose state is nnx.Param / 'params' only")


def nnx_adapter(cls) -> Adapter:
    """The Adapter of an NNX cell class."""
    from flax import nnx

    def make(key, D, H, dtype):
        module = cls(in_features=D, hidden_features=H, rngs=nnx.Rngs(key),
                     **dtype_kwargs(cls, dtype))
        graphdef, tree, rest = nnx.split(module, nnx.Param, ...)
        _only_params(rest, cls.__name__)
        return tree, graphdef

    def step(graphdef, tree, carry, x_t):
        return nnx.merge(graphdef, tree)(carry, x_t)[0]

    def initial(graphdef, tree, B, D):
        return nnx.merge(graphdef, tree).initialize_carry((B, D), nnx.Rngs(0))

    return Adapter(name=NAME, cls=cls, make=make, step=step, initial=initial, hidden=hidden)


def linen_adapter(cls) -> Adapter:
    """The Adapter of a Linen cell class."""
    import jax
    import jax.numpy as jnp

    def make(key, D, H, dtype):
        module = cls(features=H, **dtype_kwargs(cls, dtype))
        carry = module.initialize_carry(key, (1, D))
        variables = dict(module.init(key, carry, jnp.zeros((1, D), dtype)))
        tree = variables.pop("params")
        _only_params(variables, cls.__name__)
        return tree, module

    def step(module, tree, carry, x_t):
        return module.apply({"params": tree}, carry, x_t)[0]

    def initial(module, tree, B, D):
        return module.initialize_carry(jax.random.key(0), (B, D))

    return Adapter(name=NAME, cls=cls, make=make, step=step, initial=initial, hidden=hidden)


def flax_class(module: str, api: str):
    """The Flax cell class `module` of `api` (a built-in name or package.module:Class)."""
    if api not in APIS:
        raise ValueError(f"cell.api={api} is unknown; allowed: {', '.join(APIS)}")
    if api == "nnx":
        from flax import nnx as lib
    else:
        import flax.linen as lib
    return resolve(module, BUILTINS[api], lib, f"Flax {api}")


def flax(module: str = "GRUCell", api: str = "nnx") -> Cell:
    """The Cell of a Flax recurrent cell (see the module's docstring).

    Args:
      module: a built-in cell of `api` (BUILTINS) or `package.module:Class`.
      api: "nnx" or "linen".
    """
    cls = flax_class(module, api)
    return adapted(nnx_adapter(cls) if api == "nnx" else linen_adapter(cls)).cell


def from_module(module, params=None, readout=None, *, in_features: int | None = None,
                Q: int | None = None, key=None):
    """(Cell, params) of a Flax cell instance you already have (trained or not).

    Args:
      module: an NNX cell (its parameters are read from it) or a Linen cell (then `params`).
      params: for a Linen cell, its variables or their "params" collection.
      readout: the trained read-out: (W (H, Q), b (Q,)), an nnx.Linear or a Dense's params;
        None: a fresh one of Q outputs from `key`.
      in_features: D, the input size (tokens are one-hot encoded to D); default: the NNX
        module's `in_features`. Required for a Linen cell.
      Q, key: the fresh read-out's outputs and key (with readout=None).
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rnnjax.core.cells.adapters import Adapted, field_names

    if isinstance(module, nnx.Module):
        adapter = nnx_adapter(type(module))
        graphdef, tree, rest = nnx.split(module, nnx.Param, ...)
        _only_params(rest, type(module).__name__)
        static = graphdef
        D = in_features if in_features is not None else getattr(module, "in_features", None)
        if D is None:
            raise ValueError(f"{type(module).__name__} has no in_features: pass in_features=D")
    else:
        if params is None or in_features is None:
            raise ValueError("a Linen cell needs its params and in_features")
        adapter = linen_adapter(type(module))
        tree = params.get("params", params)
        static, D = module, in_features
    dtype = jax.tree.leaves(tree)[0].dtype
    carry = adapter.initial(static, tree, 1, D)
    W, b = readout_arrays(readout, hidden(carry).shape[-1], Q, key, dtype)
    a = Adapted(adapter, field_names(tree))
    return a.cell, a.pack(tree, static, D, W, b.astype(jnp.asarray(W).dtype))


def _check(options: dict) -> str | None:
    try:
        flax(options["module"], options["api"])
    except ImportError:
        return "cell=flax needs flax: pip install 'rnnjax[flax]'"
    except ValueError as e:
        return str(e)
    return None


SPEC = CellSpec(
    build=flax,
    options={
        "module": Option(default="GRUCell", type=str,
                         help="a Flax cell: " + ", ".join(BUILTINS["linen"])
                         + " (MGUCell: linen only) or package.module:Class"),
        "api": Option(default="nnx", type=str, help="the Flax API: nnx or linen",
                      check=lambda v: None if v in APIS else "must be nnx or linen"),
    },
    activations=("tanh",), inits=("normal",), check=_check,
    label=lambda o: f"flax {o['api']} {o['module']}",
    help="any Flax recurrent cell (NNX or Linen), one-hot inputs and a linear read-out",
    order=50)
