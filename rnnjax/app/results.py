"""Tidy results: probe arrays to DataFrames, headline numbers and atomic files; reading them
(`load_sweep`, the summary schema, ...) is `rnnjax.app.loaders`, whose names are here too.

pandas only runs here, after the jitted call has returned.
"""

import dataclasses
import functools
import json
import math
import os
import tempfile
import typing
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

# Reading results has its own module (files only: no Hydra, no JAX); its names stay here too.
from rnnjax.app.loaders import (  # noqa: F401
    _COLUMN_NAMES,
    FINISHED,
    GRAD_NORMS,
    JOB_KEYS,
    METRICS,
    STATUSES,
    SUMMARY,
    TEXT_DTYPES,
    JobState,
    _file_sha1,
    _finished_jobs,
    _is_number,
    file_dtypes,
    file_record,
    flat_config,
    job_status,
    load_lyapunov,
    load_metrics,
    load_summaries,
    load_sweep,
    read_job,
    remove_temporaries,
    summary_problem,
    value_job,
    with_dtypes,
)
from rnnjax.core.stats import fit_window, log10_slope, usable_from  # noqa: F401 (here before)

PARAMS = "params.npz"
BATCH = "batch.npz"
# probe.time_map=true: log10 ||d(L_s / T)/dH_t|| for s >= t (rnnjax.app.timemap)
TIME_MAP = "time_map.parquet"


class Column(NamedTuple):
    """A config key as a column of the tables (grad_norms.parquet, metrics.parquet,
    `load_summaries`)."""

    key: str  # the dotted config key: "train.lr"
    name: str  # the column: "train_lr"
    dtype: str  # its pandas dtype, from the schema's type: "float64", "Int64", "object" (text)




def _dtype(annotation: Any) -> str:
    """The pandas dtype of a schema field's type: nullable where the field may be None, so that
    a column None in one job and a number in another concatenates to numbers."""
    args = set(typing.get_args(annotation)) or {annotation}
    optional = type(None) in args
    (base,) = args - {type(None)}
    if base is Any or base is float:  # Any: an init parameter (a number; a list is per group)
        return "float64"
    if base is bool:
        return "boolean" if optional else "bool"
    if base is int:
        return "Int64" if optional else "int64"
    return "object"  # str and the enums' option names


@functools.cache
def config_schema_columns() -> tuple[Column, ...]:
    """Every key of the config schema (`rnnjax.app.config.Config`, walked field by field) as a
    column: a group's `name` is named by the group (`cell`, `activation`, `init`, `task`,
    `logger`), every other key by its dotted path with `_` (`train_lr`, `cell_forget_bias`,
    `probe_unroll`, `seq_len`), except `task.vocab_size` (`vocab_size`), `probe.loss_at`
    (`loss_at`) and `seed` (`base_seed`: `seed` is each network's own seed)."""
    from rnnjax.app.config import Config  # the app's schema; results itself needs no Hydra

    def walk(schema: type, prefix: str) -> Iterator[Column]:
        hints = typing.get_type_hints(schema)
        for f in dataclasses.fields(schema):
            if dataclasses.is_dataclass(f.default_factory):
                yield from walk(f.default_factory, f"{prefix}{f.name}.")
                continue
            key = prefix + f.name
            name = (_COLUMN_NAMES.get(key) or (prefix[:-1] if f.name == "name" and prefix
                                               else key.replace(".", "_")))
            yield Column(key, name, _dtype(hints[f.name]))

    return tuple(walk(Config, ""))


def config_columns(cfg: Any) -> dict[str, Any]:
    """The whole config as flat columns (`config_schema_columns`), so that a sweep's frames
    concatenate with no joins and can be grouped on any key.

    Args:
      cfg: a validated `rnnjax.app.config.Config`, or the resolved config as nested dicts (a
        summary.json's `config`; a key it lacks is None).
    Returns:
      {column: value}, option names as strings; an init parameter given as a list is None
      here (the job sets it per network group).
    """
    out = {}
    for col in config_schema_columns():
        v = cfg
        for part in col.key.split("."):
            v = v.get(part) if isinstance(v, Mapping) else getattr(v, part, None)
        if isinstance(v, Enum):
            v = v.value
        out[col.name] = None if isinstance(v, list | tuple) else v
    return out


def order_keys(cell: str, activation: str, init: str) -> dict[str, Any]:
    """The summary keys of JOB_KEYS that the registries give (the cell's `order` and whether it
    takes the config's activation and init; the activation's and init's places in their
    listings), for the report, which reads files only."""
    from rnnjax.core.cells import ACTIVATIONS, registry  # the job's side: JAX is loaded
    from rnnjax.core.init import INITS

    spec = registry.get(cell)
    return {"cell_order": float(spec.order),
            "activation_order": _place(list(ACTIVATIONS), activation),
            "init_order": _place(list(INITS), init),
            "cell_takes_activation": spec.activations is None,
            "cell_takes_init": spec.inits is None}


def _place(names: list[str], name: str) -> int:
    return names.index(name) if name in names else len(names)


def with_config_columns(df: pd.DataFrame, columns: Mapping[str, Any]) -> pd.DataFrame:
    """`df` with the constant `columns` added (the job's config, its `T`), each config column
    in its schema's dtype (`config_schema_columns`). Returns `df`, changed in place."""
    for k, v in columns.items():
        df[k] = v
    return with_config_dtypes(df)


def with_config_dtypes(df: pd.DataFrame) -> pd.DataFrame:
    """`df`'s config columns in their schema's dtypes (in place; returns `df`): a column that
    is None in one job and a number in another must still concatenate to numbers."""
    return with_dtypes(df, {col.name: col.dtype for col in config_schema_columns()})


def probe_frame(seeds: np.ndarray, profile, columns: Mapping[str, Any],
                train_step: int = 0) -> pd.DataFrame:
    """One row per (seed, layer, t) of a probe's result, with the job's number of timesteps `T`
    (t = 1..T; seq_len, or seq_len + 20 for task=copy), `steps_back` (T - t) and its flags.

    `layer` is 1 for one cell; a stack of L layers (`model.layers`) has each layer's rows, 1
    (reads the input) to L (the read-out), each layer's t = 1..T together.

    Flags: `underflow` (grad_norm is 0: below the dtype's range, or exactly zero), `overflow`
    (the backward chain left the dtype's range at or after t: grad_norm is inf from there back
    to t = 1), `forward_overflow` (the seed's forward pass was not finite from step
    `forward_overflow_t` on, so its gradients are NaN; `forward_overflow_t` is 0 when finite).

    Args:
      seeds: (S,) seed of each network.
      profile: a `rnnjax.app.summary.Profile` of S networks and T steps (norms (S, T), or
        (S, T, L) for a stack).
      columns: constant columns (the config).
      train_step: the training step the profile was taken at (0: initialization), or one per
        row.
    """
    S, T = profile.grad_norm.shape[:2]
    L = profile.grad_norm.shape[2] if profile.grad_norm.ndim == 3 else 1

    def rows(a, dtype) -> np.ndarray:
        """(S, T) or (S, T, L) values as the rows' column: seed-major, then layer, then t."""
        a = np.asarray(a, dtype=dtype).reshape(S, T, -1)
        return np.broadcast_to(a, (S, T, L)).transpose(0, 2, 1).ravel()

    g = rows(profile.grad_norm, np.float64)
    fwd = np.repeat(np.asarray(profile.forward_overflow_t, dtype=np.int64), L * T)
    df = pd.DataFrame({
        "seed": np.repeat(np.asarray(seeds, dtype=np.int64), L * T),
        "t": np.tile(np.arange(1, T + 1, dtype=np.int64), S * L),
        "T": np.int64(T),
        # T - t, the axis the figures and trackers draw against (0: the last step)
        "steps_back": np.tile(np.arange(T - 1, -1, -1, dtype=np.int64), S * L),
        "grad_norm": g,
        "param_grad_norm": rows(profile.param_grad_norm, np.float64),
        **{f"{k}_grad_norm": rows(v, np.float64) for k, v in profile.taps.items()},
        "train_step": np.int64(train_step),
        "underflow": g == 0,
        "overflow": rows(profile.overflow, bool),
        "forward_overflow": fwd > 0,
        "forward_overflow_t": fwd,
        "layer": np.tile(np.repeat(np.arange(1, L + 1, dtype=np.int64), T), S),
    })
    return with_config_columns(df, columns)


def param_arrays(params) -> dict[str, np.ndarray]:
    """The parameters as params.npz holds them: each field by its name (`W_hh`), a stack's
    (a tuple of layers' params) as `layer<l>.<name>` (`layer1.W_hh`, l = 1 at the input); a
    None field (the LSTM's w_co without the peephole) is no array: not written."""
    if hasattr(params, "_asdict"):
        return {k: np.asarray(v) for k, v in params._asdict().items() if v is not None}
    return {f"layer{l}.{k}": v for l, p in enumerate(params, 1)
            for k, v in param_arrays(p).items()}


_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    """Writes through `write(tmp_path)` and renames into place, so readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def unwritable(path: str | os.PathLike, directory: bool = False) -> str | None:
    """Why a command cannot write its output `path` (a file, or with `directory` a folder that
    it creates where missing), in words; None when it can. Checked before any work starts, so
    that a bad path is one line, not a traceback at the end. Nothing is left behind: the test
    write is an unnamed temporary file in the nearest folder that exists, of a few KiB written
    through to the disk (a full disk still has room for an empty file).

    Args:
      path: the output file or folder.
      directory: `path` is a folder.
    Returns:
      e.g. "is a directory, not a file", "is a file, not a directory", "cannot write in
      /x (Permission denied)"; or None.
    """
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        return "is a file, not a directory" if directory else "is a directory, not a file"
    folder = path if directory else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a directory"
    try:
        with tempfile.TemporaryFile(dir=folder) as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return f"cannot write in {folder} ({e.strerror or e})"
    return None


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    _atomic(Path(path), lambda tmp: df.to_parquet(tmp, index=False))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    _atomic(Path(path), write)


def json_safe(x):
    """x with NaN as None and infinities as the strings \"inf\"/\"-inf\" (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    return x


def write_json(obj: Mapping[str, Any], path: Path) -> None:
    """Strict JSON (NaN becomes null, infinities the strings "inf"/"-inf"), written atomically."""
    text = json.dumps(json_safe(dict(obj)), indent=2, allow_nan=False)
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(text + "\n"))


