"""Tidy results: probe arrays to DataFrames, headline numbers, atomic files, and `load_sweep`.

pandas only runs here, after the jitted call has returned.
"""

import dataclasses
import functools
import json
import math
import os
import tempfile
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from rnnjax.core.files import file_sha1

GRAD_NORMS = "grad_norms.parquet"
SUMMARY = "summary.json"
PARAMS = "params.npz"
BATCH = "batch.npz"
METRICS = "metrics.parquet"


def fit_window(T: int, first: int = 1) -> tuple[int, int]:
    """The timesteps (1-based, inclusive) a slope is fitted over: the middle half of
    `first`..T, away from the ends (where the local loss term and H_0 = 0 distort the profile);
    all of `first`..T when that middle half has fewer than 2 steps."""
    n = T - first + 1
    lo, hi = first + n // 4, T - n // 4
    return (lo, hi) if hi - lo >= 1 else (first, T)


def usable_from(grad_norm: np.ndarray) -> int:
    """The first t (1-based) from which every grad_norm up to T is finite and > 0.

    Going back in time a vanishing gradient underflows to 0 and stays there; an exploding one
    overflows to inf. Only the steps after the last such step carry a measurable slope.
    """
    bad = ~(np.isfinite(grad_norm) & (np.asarray(grad_norm) > 0))
    return int(np.nonzero(bad)[0].max()) + 2 if bad.any() else 1


def log10_slope(grad_norm: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Least-squares slope of log10 grad_norm per step BACK in time, and the window fitted.

    The window is the middle half of the usable steps (`usable_from`..T). Negative: the
    gradient shrinks going back (vanishing); positive: it grows (exploding). NaN when fewer
    than 2 steps are usable.

    Args:
      grad_norm: (T,) norms for t = 1..T.

    Returns:
      (slope, (lo, hi)) with the window 1-based and inclusive.
    """
    g = np.asarray(grad_norm, dtype=np.float64)
    T, first = len(g), usable_from(g)
    window = fit_window(T, first) if first <= T else (first, T)
    t = np.arange(window[0], window[1] + 1)
    if len(t) < 2:
        return math.nan, window
    return float(-np.polyfit(t, np.log10(g[t - 1]), 1)[0]), window


class Column(NamedTuple):
    """A config key as a column of the tables (grad_norms.parquet, metrics.parquet,
    `load_summaries`)."""

    key: str  # the dotted config key: "train.lr"
    name: str  # the column: "train_lr"
    dtype: str  # its pandas dtype, from the schema's type: "float64", "Int64", "object" (text)


# Column names kept from before every key was a column; `seed` is taken by the network's seed.
_COLUMN_NAMES = {"task.vocab_size": "vocab_size", "probe.loss_at": "loss_at", "seed": "base_seed"}


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


def flat_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A resolved config as nested dicts (a summary.json's `config`) as flat columns named as
    `config_schema_columns` names them (a group's `name` by the group, `task.vocab_size` as
    `vocab_size`, every other key by its dotted path with `_`), read from the dicts alone: no
    schema, so no Hydra and no JAX. A list (an init parameter set per network group) is None."""
    out = {}
    for k, v in config.items():
        key = prefix + str(k)
        if isinstance(v, Mapping):
            out.update(flat_config(v, key + "."))
            continue
        name = _COLUMN_NAMES.get(key) or (prefix[:-1].replace(".", "_") if k == "name" and prefix
                                          else key.replace(".", "_"))
        out[name] = None if isinstance(v, list | tuple) else v
    return out


# Keys of summary.json that say how a job's cell reads and where it stands: `load_summaries`
# has them as columns as every key; `load_sweep` and `load_metrics` add them to their rows.
JOB_KEYS = ("cell_label", "model_label", "cell_order", "activation_order", "init_order",
            "cell_takes_activation", "cell_takes_init")


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


TEXT_DTYPES = ("object", "str", "string")  # strings concatenate as they are


def with_dtypes(df: pd.DataFrame, dtypes: Mapping[str, str]) -> pd.DataFrame:
    """`df`'s columns named in `dtypes` (column -> pandas dtype) in those dtypes, nullable
    where a value is missing (a summary written before the key existed); in place, returns
    `df`. A column that does not convert stays as it is."""
    for name, dtype in dtypes.items():
        if name not in df or dtype in TEXT_DTYPES:
            continue
        if df[name].isna().any():
            dtype = {"int64": "Int64", "bool": "boolean"}.get(dtype, dtype)
        if df[name].dtype != dtype:
            try:
                df[name] = df[name].astype(dtype)
            except (TypeError, ValueError):
                continue
    return df


def file_dtypes(job: Path) -> dict[str, str]:
    """column -> pandas dtype of the job's grad_norms.parquet (its footer only: the config
    columns in their schema's dtypes, as the job wrote them); {} where it cannot be read."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(Path(job) / GRAD_NORMS).pandas_metadata or {}
    except Exception:  # noqa: BLE001 - pyarrow raises many kinds; the values' own dtypes remain
        return {}
    return {c["name"]: c["numpy_type"] for c in meta.get("columns", [])
            if isinstance(c.get("name"), str) and isinstance(c.get("numpy_type"), str)}


def probe_frame(seeds: np.ndarray, profile, columns: Mapping[str, Any],
                train_step: int = 0) -> pd.DataFrame:
    """One row per (seed, t) of a probe's result, with the job's number of timesteps `T`
    (t = 1..T; seq_len, or seq_len + 20 for task=copy), `steps_back` (T - t) and its flags.

    Flags: `underflow` (grad_norm is 0: below the dtype's range, or exactly zero), `overflow`
    (the backward chain left the dtype's range at or after t: grad_norm is inf from there back
    to t = 1), `forward_overflow` (the seed's forward pass was not finite from step
    `forward_overflow_t` on, so its gradients are NaN; `forward_overflow_t` is 0 when finite).

    Args:
      seeds: (S,) seed of each network.
      profile: a `rnnjax.app.summary.Profile` of S networks and T steps.
      columns: constant columns (the config).
      train_step: the training step the profile was taken at (0: initialization).
    """
    S, T = profile.grad_norm.shape
    g = np.asarray(profile.grad_norm, dtype=np.float64).ravel()
    fwd = np.repeat(np.asarray(profile.forward_overflow_t, dtype=np.int64), T)
    df = pd.DataFrame({
        "seed": np.repeat(np.asarray(seeds, dtype=np.int64), T),
        "t": np.tile(np.arange(1, T + 1, dtype=np.int64), S),
        "T": np.int64(T),
        # T - t, the axis the figures and trackers draw against (0: the last step)
        "steps_back": np.tile(np.arange(T - 1, -1, -1, dtype=np.int64), S),
        "grad_norm": g,
        "param_grad_norm": np.asarray(profile.param_grad_norm, dtype=np.float64).ravel(),
        **{f"{k}_grad_norm": np.asarray(v, dtype=np.float64).ravel()
           for k, v in profile.taps.items()},
        "train_step": np.int64(train_step),
        "underflow": g == 0,
        "overflow": np.asarray(profile.overflow, dtype=bool).ravel(),
        "forward_overflow": fwd > 0,
        "forward_overflow_t": fwd,
    })
    return with_config_columns(df, columns)


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


# ------------------------------------------------------------------ summary.json: one schema

STATUSES = ("ok", "nonfinite", "failed")  # what summary.json's `status` may say
FINISHED = ("ok", "nonfinite")  # statuses of a job that ran to the end (nonfinite is data)


class JobState(NamedTuple):
    """A job directory as read against the summary schema (`read_job`)."""

    status: str  # "ok" or "nonfinite" (finished), "failed", or "unfinished"
    summary: dict | None  # the validated summary.json; None when unfinished
    problem: str | None  # why a job with a summary.json counts as unfinished; None otherwise


def file_record(path: Path) -> dict[str, Any]:
    """A result file as its summary lists it: {"bytes": size, "sha1": hex digest}."""
    return {"bytes": path.stat().st_size, "sha1": _file_sha1(path)}


def _file_sha1(path: Path) -> str:
    return file_sha1(path)  # loaders and resume check the same files again: hashed once each


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_slope(v: Any) -> bool:  # a float as write_json writes it: NaN as null, inf as a string
    return v is None or _is_number(v) or v in ("inf", "-inf")


def _headline_problem(h: Any, listed: bool) -> str | None:
    if not isinstance(h, dict):
        return "a headline is not an object"
    if not _is_slope(h.get("log10_slope_per_step_back", "missing")):
        return "a headline has no number log10_slope_per_step_back"
    if listed and not (isinstance(h.get("init_param"), str) and _is_number(h.get("init_value"))):
        return "a headline of `headlines` has no init_param and init_value"
    return None


def _files_problem(job: Path, files: Any) -> str | None:
    if not isinstance(files, dict) or GRAD_NORMS not in files:
        return f"its file list (`files`) is missing or lacks {GRAD_NORMS}"
    for name, rec in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            return f"its file list names {name!r}, not a file of the job directory"
        if not (isinstance(rec, dict) and isinstance(rec.get("bytes"), int)
                and isinstance(rec.get("sha1"), str)):
            return f"its file list has no bytes and sha1 for {name}"
        path = job / name
        try:
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != rec["bytes"]:
                return f"{name} has {path.stat().st_size} bytes, the summary says {rec['bytes']}"
            if _file_sha1(path) != rec["sha1"]:
                return f"{name} does not match its sha1 in the summary"
        except OSError as e:
            return f"{name} cannot be read ({e.strerror})"
    return None


def summary_problem(summary: Any, job: Path) -> str | None:
    """What makes `summary` (summary.json of the directory `job`) not a valid summary; None
    when it is one. THE schema of summary.json:

    - every summary: an object with `status` (one of STATUSES) and `config` (an object);
    - `failed`: `error` (a string); also `traceback`, `wall_time_s`, `provenance`;
    - `ok` / `nonfinite` (finished): `wall_time_s` (a number), `T` (an integer >= 1: the
      timesteps backpropagated through), `provenance` (an object with a string
      `code_version`), exactly one of `headline` (an object with
      `log10_slope_per_step_back`) and `headlines` (a non-empty list of such objects, each
      with `init_param` and `init_value`), optional `training` (an object), and `files`:
      {file name: {"bytes": int, "sha1": str}} for every result file of the job, GRAD_NORMS
      among them, each present with that size and sha1.
    """
    if not isinstance(summary, dict):
        return f"summary.json holds {type(summary).__name__}, not an object"
    status = summary.get("status")
    if status not in STATUSES:
        return f"status {status!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(summary.get("config"), dict):
        return "summary.json has no config"
    if status == "failed":
        return None if isinstance(summary.get("error"), str) else "a failed job with no error"
    if not _is_number(summary.get("wall_time_s")):
        return "summary.json has no wall_time_s"
    T = summary.get("T")
    if not (isinstance(T, int) and not isinstance(T, bool) and T >= 1):
        return "summary.json has no T (timesteps) >= 1"
    prov = summary.get("provenance")
    if not (isinstance(prov, dict) and isinstance(prov.get("code_version"), str)):
        return "summary.json has no provenance.code_version (written by an older rnnjax?)"
    if ("headline" in summary) == ("headlines" in summary):
        return "summary.json needs exactly one of headline and headlines"
    if "headline" in summary:
        problem = _headline_problem(summary["headline"], listed=False)
    elif not isinstance(summary["headlines"], list) or not summary["headlines"]:
        problem = "headlines is not a non-empty list"
    else:
        problem = next(filter(None, (_headline_problem(h, listed=True)
                                     for h in summary["headlines"])), None)
    if problem:
        return problem
    if "training" in summary and not isinstance(summary["training"], dict):
        return "training is not an object"
    return _files_problem(job, summary.get("files"))


def read_job(job: str | os.PathLike) -> JobState:
    """A job directory's state, from its summary.json read against the schema
    (`summary_problem`): the one place that decides whether a job finished.

    No summary.json: unfinished (running, or killed before its summary, which is written last).
    A summary.json that does not parse or validate, or whose result files do not match their
    sizes and sha1: unfinished too, with the `problem`.
    """
    path = Path(job) / SUMMARY
    try:
        text = path.read_text()
    except FileNotFoundError:
        return JobState("unfinished", None, None)
    except (OSError, UnicodeDecodeError) as e:
        return JobState("unfinished", None, f"summary.json cannot be read ({e})")
    try:
        summary = json.loads(text)
    except ValueError:
        return JobState("unfinished", None, "summary.json is not valid JSON")
    problem = summary_problem(summary, Path(job))
    if problem:
        return JobState("unfinished", None, problem)
    return JobState(summary["status"], summary, None)


def job_status(job: Path) -> str:
    """"ok" or "nonfinite" (finished), "failed" (the job raised), or "unfinished" (see
    `read_job`)."""
    return read_job(job).status


def remove_temporaries(job: Path) -> list[Path]:
    """Deletes the temporary files (`.NAME.*.tmp`) that a writer killed between writing and
    renaming left in `job`, and returns them. Only for a job about to run again: the job's
    own writer is the only one that makes them."""
    stale = [p for p in Path(job).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _finished_jobs(root: Path) -> tuple[dict[Path, dict], dict[Path, JobState]]:
    """The finished job directories under root with their summaries, and the others with their
    `JobState`: a job has a grad_norms.parquet, a summary.json or a Hydra `.hydra/` folder."""
    marks = [*root.rglob(GRAD_NORMS), *root.rglob(SUMMARY), *root.rglob(".hydra")]
    states = {j: read_job(j) for j in sorted({p.parent for p in marks})}
    done = {j: s.summary for j, s in states.items() if s.status in FINISHED}
    return done, {j: s for j, s in states.items() if s.status not in FINISHED}


def _list_param(summary: dict) -> str | None:
    """The init parameter a job vmapped over as a list, or None."""
    return summary["headlines"][0]["init_param"] if "headlines" in summary else None


def _check_root(path) -> Path:
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{str(root)!r} is not a directory")
    return root


def _warn_unfinished(root: Path, others: dict[Path, JobState], who: str) -> None:
    for kind in ("failed", "unfinished"):
        jobs = {j: st for j, st in others.items() if st.status == kind}
        if jobs:
            names = ", ".join(str(j.relative_to(root)) + (f" ({st.problem})" if st.problem else "")
                              for j, st in jobs.items())
            warnings.warn(f"{who}: skipped {len(jobs)} {kind} job(s): {names}", stacklevel=3)


def _warn_unreadable(who: str, root: Path, job: Path, name: str, e: Exception) -> None:
    error = f"{type(e).__name__}: {e}".splitlines()[0]
    warnings.warn(f"{who}: skipped 1 unreadable job: {job.relative_to(root)} ({name}: {error})",
                  stacklevel=3)


def value_job(job: str, param: str, value: float) -> str:
    """The `job` name of one value of a job whose init parameter was a list:
    `JOB[init.gain=0.5]`."""
    return f"{job}[init.{param}={value:g}]"


def _per_value(job: str, summary: dict) -> list[tuple[str, dict]]:
    """A summary as (job name, summary) pairs, one per init value when the init parameter was
    a list (its headline under "headline", the value in config.init)."""
    if "headlines" not in summary:
        return [(job, summary)]
    pairs = []
    for h in summary["headlines"]:
        one = {k: v for k, v in summary.items() if k != "headlines"}
        param, value = h["init_param"], h["init_value"]
        one["headline"] = h
        one["config"] = {**one["config"], "init": {**one["config"]["init"], param: value}}
        pairs.append((value_job(job, param, value), one))
    return pairs


def load_summaries(path: str | os.PathLike) -> pd.DataFrame:
    """One row per finished job under `path`: its summary.json flattened (dots join nested
    keys: `headline.theory.mean_field.chi1`, `training.final_val_ppl`, ...), per-seed lists,
    the file list and the tracker records dropped, plus a `job` column as in `load_sweep` and
    the config once, as the tables name it (`activation`, `train_lr`, ...: `flat_config`, each
    in the dtype its grad_norms.parquet holds it in;
    `vocab_size` is the config's, null where the task fixes it). Infinities, which
    summary.json writes as "inf"/"-inf", are floats again. Jobs that are not finished (see
    `read_job`) are skipped with a warning."""
    root = _check_root(path)
    done, unfinished = _finished_jobs(root)
    _warn_unfinished(root, unfinished, "load_summaries")
    rows, dtypes, config = [], {}, set()
    for job, summary in done.items():
        kept = {k: v for k, v in summary.items() if k not in ("files", "trackers")}
        dtypes.update(file_dtypes(job))
        for name, one in _per_value(str(job.relative_to(root)), kept):
            flat = pd.json_normalize({k: v for k, v in one.items() if k != "config"})
            row = {k: _float_if_inf(v) for k, v in flat.iloc[0].to_dict().items()
                   if not isinstance(v, list | dict)}
            columns = flat_config(one.get("config", {}))
            config |= set(columns)
            rows.append({"job": name, **row, **columns})
    if not rows:
        raise FileNotFoundError(f"load_summaries: no finished job under {str(root)!r}")
    # each config column in the dtype its job's grad_norms.parquet holds it in
    return with_dtypes(pd.DataFrame(rows), {k: v for k, v in dtypes.items() if k in config})


def _with_job_keys(df: pd.DataFrame, summary: dict) -> pd.DataFrame:
    """`df` with the keys of JOB_KEYS that `summary` has as constant columns (in place)."""
    for key in JOB_KEYS:
        if key in summary and key not in df:
            df[key] = summary[key]
    return df


def _float_if_inf(v: Any) -> Any:
    """An infinity as `write_json` wrote it ("inf", "-inf") as a float; other values as they
    are."""
    return float(v) if isinstance(v, str) and v in ("inf", "-inf") else v


def load_metrics(path: str | os.PathLike) -> pd.DataFrame | None:
    """The training metrics (metrics.parquet) of every finished job under `path` that trained,
    with a `job` column; None when no job trained. A file that cannot be read skips its job
    with a warning."""
    root = _check_root(path)
    done, _ = _finished_jobs(root)
    frames = []
    for job, summary in done.items():
        if METRICS not in summary["files"]:  # a metrics.parquet it does not list is stale
            continue
        try:
            frames.append(_with_job_keys(pd.read_parquet(job / METRICS), summary)
                          .assign(job=str(job.relative_to(root))))
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds; one job never fails all
            _warn_unreadable("load_metrics", root, job, METRICS, e)
    return pd.concat(frames, ignore_index=True) if frames else None


def load_sweep(path: str | os.PathLike) -> pd.DataFrame:
    """One tidy DataFrame of every finished job under `path` (a run or a multirun directory).

    A job is a directory with a `grad_norms.parquet`, a `summary.json` or a Hydra `.hydra/`
    folder; it counts as finished when its summary.json validates and its files match the
    sizes and sha1 it lists (see `read_job`). Unfinished and failed jobs, and a job whose file
    cannot be read, are skipped with a warning: one bad job never fails the whole load. A `job`
    column holds each job's directory relative to `path`, with `[init.gain=0.5]` appended for
    each value of a job whose init parameter was a list; the keys of JOB_KEYS its summary.json
    has (its cell's label and order, ...) are columns too.
    """
    root = _check_root(path)
    done, unfinished = _finished_jobs(root)
    frames = []
    for job, summary in done.items():
        try:
            df = pd.read_parquet(job / GRAD_NORMS)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds; one job never fails all
            _warn_unreadable("load_sweep", root, job, GRAD_NORMS, e)
            continue
        name = str(job.relative_to(root))
        param = _list_param(summary)
        if param is None:
            df.insert(0, "job", name)
        else:
            df.insert(0, "job", [value_job(name, param, v) for v in df[f"init_{param}"]])
        frames.append(_with_job_keys(df, summary))
    _warn_unfinished(root, unfinished, "load_sweep")
    if not frames:
        raise FileNotFoundError(f"load_sweep: no finished job under {str(root)!r}")
    return pd.concat(frames, ignore_index=True)
