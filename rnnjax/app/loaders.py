"""Reading results: the one schema of summary.json (`summary_problem`, `read_job`), which jobs
under a directory finished, and the loaders (`load_sweep`, `load_summaries`, `load_metrics`).

Files only: pandas, pyarrow and the standard library; no Hydra, no JAX (the report reads with
these). `rnnjax.app.results` re-exports every public name.
"""

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from rnnjax.core.files import file_sha1

GRAD_NORMS = "grad_norms.parquet"
SUMMARY = "summary.json"
METRICS = "metrics.parquet"
LYAPUNOV = "lyapunov.parquet"

# Column names kept from before every key was a column; `seed` is taken by the network's seed.
_COLUMN_NAMES = {"task.vocab_size": "vocab_size", "probe.loss_at": "loss_at", "seed": "base_seed"}


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
    return _load_table(path, METRICS, "load_metrics")


def load_lyapunov(path: str | os.PathLike) -> pd.DataFrame | None:
    """The Lyapunov spectra (lyapunov.parquet: per seed, training step and exponent i) of every
    finished job under `path` that has them, with a `job` column; None when none has. A file
    that cannot be read skips its job with a warning."""
    return _load_table(path, LYAPUNOV, "load_lyapunov")


def _load_table(path: str | os.PathLike, name: str, what: str) -> pd.DataFrame | None:
    """The table `name` of every finished job under `path` that lists it, with a `job`
    column and the summary's job keys; None when none does (`what`: the caller, for warnings)."""
    root = _check_root(path)
    done, _ = _finished_jobs(root)
    frames = []
    for job, summary in done.items():
        if name not in summary["files"]:  # a file its summary does not list is stale
            continue
        try:
            frames.append(_with_job_keys(pd.read_parquet(job / name), summary)
                          .assign(job=str(job.relative_to(root))))
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds; one job never fails all
            _warn_unreadable(what, root, job, name, e)
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


__all__ = ["FINISHED", "GRAD_NORMS", "JOB_KEYS", "LYAPUNOV", "METRICS", "STATUSES", "SUMMARY",
           "TEXT_DTYPES", "JobState", "file_dtypes", "file_record", "flat_config", "job_status",
           "load_lyapunov", "load_metrics", "load_summaries", "load_sweep", "read_job",
           "remove_temporaries", "summary_problem", "value_job", "with_dtypes"]
