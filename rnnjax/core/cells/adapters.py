"""What the Flax and Equinox adapters share: a library's recurrent cell as a rnnjax `Cell`.

A library keeps a cell's parameters in its own pytree (an NNX State, a Linen variable dict, an
Equinox module's arrays) beside static structure (an NNX GraphDef, the Linen module, Equinox's
static half). The adapter's params are a flat namedtuple, `cell_<path>` for each array of the
library's pytree and the adapter's linear read-out `W_hq` (H, Q), `b_q` (Q,), so that the
harness treats them as it treats a built-in's (`params._replace`, `params._asdict()` written to
params.npz). The static structure is kept by the adapter, found again from the params' shapes.

`recurrent` is every `cell_*` field: param_grad_norm is step t's share of the gradient of all
the cell's parameters (input and recurrent weights and biases), the read-out's excluded.
Token inputs are one-hot encoded to D (no embedding parameters).
"""

import collections
import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array

from rnnjax.core.cells.base import Cell


class Adapter(NamedTuple):
    """How one library's cell is made and run; `static` is the library's non-array half."""

    name: str  # the option of the config group `cell`
    cls: type  # the library's cell class
    # (key, D, H, dtype) -> (parameter pytree, static)
    make: Callable[[Array, int, int, Any], tuple[Any, Any]]
    # (static, tree, carry, x_t (B, D) real) -> carry
    step: Callable[[Any, Any, Any, Array], Any]
    # (static, tree, B, D) -> the carry before the first step
    initial: Callable[[Any, Any, int, int], Any]
    # carry -> H_t (B, H): the hidden output, a selection from the carry
    hidden: Callable[[Any], Array]


# The structures of the params made or given so far, by (cell class, params type, shapes and
# dtypes): a job builds its Cell more than once (under vmap for each network's init, again for
# the probe), and each Cell finds the structure of params another made.
_STRUCTURES: dict[tuple, "_Structure"] = {}


class _Structure(NamedTuple):
    treedef: Any
    static: Any
    D: int


_CLASSES: dict[tuple[str, ...], type] = {}


def params_class(fields: tuple[str, ...]) -> type:
    """The namedtuple type of adapter params with these fields (one type per field tuple, so
    that params made apart have the same pytree structure)."""
    if fields not in _CLASSES:
        _CLASSES[fields] = collections.namedtuple("AdapterParams", fields)
    return _CLASSES[fields]


def _part(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def field_names(tree) -> tuple[str, ...]:
    """`cell_<path>` for each leaf of `tree` (an NNX Variable's trailing `value` dropped)."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]:
        parts = [_part(k) for k in path]
        if len(parts) > 1 and parts[-1] == "value":
            parts = parts[:-1]
        name = re.sub(r"\W", "_", "_".join(["cell", *parts]))
        name = re.sub(r"_+", "_", name)
        while name in names:
            name += "_"
        names.append(name)
    return tuple(names)


def _cast(tree, dtype):
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a,
                        tree)


def resolve(spec: str, builtins: tuple[str, ...], module, what: str):
    """The class named `spec`: a built-in name (an attribute of `module`) or `pkg.mod:Class`."""
    if ":" in spec:
        path, _, attr = spec.partition(":")
        try:
            return getattr(importlib.import_module(path), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cell.module={spec}: cannot import it ({e}); give "
                             "package.module:Class") from None
    if spec not in builtins:
        raise ValueError(f"cell.module={spec} is not a built-in {what} cell; allowed: "
                         f"{', '.join(builtins)}, or package.module:Class")
    return getattr(module, spec)


def dtype_kwargs(cls, dtype) -> dict:
    """{"dtype": dtype, "param_dtype": dtype}, of those that `cls`'s constructor takes."""
    names = set()
    for f in (cls, cls.__init__):  # an NNX Module's metaclass hides __init__'s signature
        try:
            names |= set(inspect.signature(f).parameters)
        except (TypeError, ValueError):
            pass
    return {k: dtype for k in ("dtype", "param_dtype") if k in names}


class Adapted:
    """An adapter's Cell and the structures of the params it has made or been given.

    `fields` are the `cell_*` names of the library's parameters (`field_names`), which the
    Cell's `recurrent` lists; params whose names differ are refused.
    """

    def __init__(self, adapter: Adapter, fields: tuple[str, ...]):
        self.adapter = adapter
        self.fields = fields
        self.cell = self._cell()

    def _signature(self, params) -> tuple:
        return (self.adapter.name, self.adapter.cls, type(params),
                tuple((jnp.shape(v), jnp.result_type(v)) for v in params))

    def pack(self, tree, static, D: int, W_hq: Array, b_q: Array):
        """Adapter params of the library's parameter pytree `tree` (its float leaves cast to
        W_hq's dtype) and a read-out; remembers `static` and D for them."""
        tree = _cast(tree, jnp.asarray(W_hq).dtype)
        leaves, treedef = jax.tree.flatten(tree)
        names = field_names(tree)
        if names != self.fields:
            raise ValueError(f"cell={self.adapter.name}: the module's parameters are "
                             f"{list(names)}, not the {list(self.fields)} this cell was built for")
        params = params_class((*names, "W_hq", "b_q"))(*leaves, jnp.asarray(W_hq),
                                                          jnp.asarray(b_q))
        _STRUCTURES[self._signature(params)] = _Structure(treedef, static, D)
        return params

    def unpack(self, params) -> tuple[Any, _Structure]:
        """(the library's parameter pytree, its structure) of adapter params of one network."""
        try:
            s = _STRUCTURES[self._signature(params)]
        except KeyError:
            raise ValueError(f"cell={self.adapter.name}: these params were not made by this "
                             "cell's init or its from_module (one network's params expected)"
                             ) from None
        return jax.tree.unflatten(s.treedef, list(params[:-2])), s

    def _cell(self) -> Cell:
        a = self.adapter

        def init(key, D, H, Q, dtype=jnp.float32):
            k_cell, k_out = jax.random.split(key)
            tree, static = a.make(k_cell, D, H, jnp.dtype(dtype))
            W = jax.nn.initializers.glorot_normal()(k_out, (H, Q), dtype)
            return self.pack(tree, static, D, W, jnp.zeros((Q,), dtype))

        def initial_state(params, B):
            tree, s = self.unpack(params)
            return _cast(a.initial(s.static, tree, B, s.D), params.W_hq.dtype)

        def step(params, carry, x_t):
            tree, s = self.unpack(params)
            if jnp.issubdtype(x_t.dtype, jnp.integer):
                x_t = jax.nn.one_hot(x_t, s.D, dtype=params.W_hq.dtype)
            # (a cell of a fixed computation dtype, probed in another, keeps the scan's carry type)
            return _cast(a.step(s.static, tree, carry, x_t.astype(params.W_hq.dtype)),
                         params.W_hq.dtype)

        def readout(params, carry):
            return a.hidden(carry) @ params.W_hq + params.b_q

        return Cell(name=a.name, init=init, initial_state=initial_state, step=step,
                    readout=readout, hidden=a.hidden, recurrent=self.fields)


def adapted(adapter: Adapter) -> Adapted:
    """The Adapted cell of `adapter`, its parameter names found by making a small module
    abstractly (`jax.eval_shape`: no arrays are allocated)."""
    try:
        tree = jax.eval_shape(lambda k: adapter.make(k, 2, 2, jnp.float32)[0],
                              jax.random.key(0))
    except Exception as e:  # a user's class that is not a cell of this library's kind
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"cell={adapter.name}: cannot make {adapter.cls.__name__} as a cell "
                         f"({type(e).__name__}: {first})") from None
    return Adapted(adapter, field_names(tree))


def readout_arrays(readout, H: int, Q: int | None, key, dtype) -> tuple[Array, Array]:
    """(W_hq (H, Q), b_q (Q,)) of a trained model's read-out: a pair of arrays (W, b), a Linen
    Dense's params {"kernel", "bias"}, a flax.nnx.Linear, an equinox.nn.Linear (weight (Q, H)),
    or None for a fresh one of Q outputs from `key` (Glorot normal, zero bias)."""
    if readout is None:
        if Q is None or key is None:
            raise ValueError("readout=None needs Q (the number of outputs) and key")
        return (jax.nn.initializers.glorot_normal()(key, (H, Q), dtype), jnp.zeros((Q,), dtype))
    if isinstance(readout, dict):
        W, b = readout["kernel"], readout.get("bias")
    elif isinstance(readout, tuple | list):
        W, b = readout
    elif hasattr(readout, "kernel"):  # flax.nnx.Linear
        W, b = readout.kernel[...], None if readout.bias is None else readout.bias[...]
    elif hasattr(readout, "weight"):  # equinox.nn.Linear
        W, b = jnp.transpose(readout.weight), readout.bias
    else:
        raise ValueError(f"readout: a pair (W (H, Q), b (Q,)), a Dense's params, an nnx.Linear "
                         f"or an equinox.nn.Linear expected, got {type(readout).__name__}")
    W = jnp.asarray(W)
    if W.shape[0] != H:
        raise ValueError(f"readout: W is {W.shape}, expected ({H}, Q) for H={H}")
    b = jnp.zeros((W.shape[1],), W.dtype) if b is None else jnp.asarray(b)
    return W, b
