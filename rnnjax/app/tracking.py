"""Sending a job's results to its experiment tracker (`logger=...`), after the job's own files.

A tracker is not part of what a job computes: a job writes its files first (summary.json
last), then sends them to the tracker. A finished job that is run again with a tracker is
skipped and its finished results are sent the same way, from its files: the tracker gets the
same events either way (`log_results`). A tracker that fails (it cannot start, a full disk, a
read-only folder, a bad URI, a server that went away) costs the job nothing: the failure is
one line naming the tracker and where it writes, and is recorded in summary.json under
`trackers`, beside every earlier sending of the job.
"""

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rnnjax.app import results
from rnnjax.app.trackers import headline_numbers, make_tracker, median_profile, planned_location

log = logging.getLogger("rnnjax")

TRACKERS = "trackers"  # summary.json's key: one record per sending (see `send_job`)
# The training metrics a tracker gets at each logged step: their mean over the networks
# (`interval_metrics`), the same numbers as the console's progress line.
INTERVAL_KEYS = ("train_loss", "train_ppl", "val_loss", "val_ppl", "grad_norm_global",
                 "grad_norm_global_mean", "clip_fraction")


def logger_options(logger: Any) -> tuple[str, dict[str, Any]]:
    """(the tracker's name, its options that are set) from a config's `logger` (the Config's
    LoggerConfig or the resolved config's dict): what decides whether a job was sent there."""
    items = logger.items() if isinstance(logger, Mapping) else vars(logger).items()
    values = {k: getattr(v, "value", v) for k, v in items}
    name = values.pop("name")
    return name, {k: v for k, v in sorted(values.items()) if v is not None}


def mean_over_networks(values: Any) -> float:
    """The mean over networks, leaving out NaN (a network that diverged has no loss); +inf
    where a network's value is +inf (a perplexity that overflowed is infinite, not missing);
    NaN when no network has a value."""
    a = np.asarray(values, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if a.size else math.nan


def interval_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """A logged training step's metrics: the mean over networks of each of INTERVAL_KEYS
    (`mean_over_networks`) and the fraction of networks still alive.

    Args:
      rows: the step's rows of metrics.parquet, one per network.
    """
    out = {k: mean_over_networks(rows[k].to_numpy(float)) for k in INTERVAL_KEYS}
    out["alive_fraction"] = float(np.mean(rows["alive"].to_numpy(bool)))
    return out


def _profile(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """steps back and the median over seeds of grad_norm, from a step's rows of a table (of a
    stack of layers, the top layer's: the headline's)."""
    if "layer" in rows:
        rows = rows[rows["layer"] == rows["layer"].max()]
    rows = rows.sort_values(["seed", "t"])
    T = int(rows["t"].max())
    return median_profile(rows["grad_norm"].to_numpy(np.float64).reshape(-1, T))


def log_results(tracker: Any, config: Mapping[str, Any], summary: Mapping[str, Any],
                grad_norms: pd.DataFrame, metrics: pd.DataFrame | None) -> None:
    """Sends one finished job to `tracker`: its config, the profile at initialization (one
    per init value when the init parameter was a list), then at each logged training step the
    profile of all networks and the metrics (`interval_metrics`), then the headline numbers.

    Args:
      tracker: a `rnnjax.app.trackers.Tracker`.
      config: the job's config as the tracker records it (nested dicts).
      summary: the job's summary as summary.json holds it (NaN as None, infinities as
        strings).
      grad_norms: the job's grad_norms.parquet.
      metrics: its metrics.parquet (None: the job did not train).
    """
    tracker.log_config(dict(config))
    heads = summary.get("headlines") or [summary["headline"]]
    at_init = grad_norms[grad_norms["train_step"] == 0]
    for h in heads:
        if "init_param" in h:
            p, v = h["init_param"], h["init_value"]
            tracker.log_profile(0, *_profile(at_init[at_init[f"init_{p}"] == v]),
                                name=f"grad_norm[{p}={v:g}]")
        else:
            tracker.log_profile(0, *_profile(at_init))
    if metrics is not None:
        for step, rows in metrics.groupby("train_step", sort=True):
            tracker.log_profile(int(step), *_profile(grad_norms[grad_norms["train_step"] == step]))
            tracker.log_metrics(int(step), interval_metrics(rows))
    for h in heads:
        prefix = f"{h['init_param']}={h['init_value']:g}/" if "init_param" in h else ""
        body = {k: v for k, v in h.items() if k not in ("init_param", "init_value")}
        tracker.log_headline({prefix + k: v for k, v in headline_numbers(body).items()})


def already_sent(summary: Mapping[str, Any], name: str, options: Mapping[str, Any]
                 ) -> dict | None:
    """The record of an earlier sending of this job to the same tracker with the same options
    that succeeded, else None."""
    for record in reversed(summary.get(TRACKERS) or []):
        if record.get("logger") == name and record.get("options") == dict(options):
            return record if record.get("status") == "ok" else None
    return None


def _one_line(e: BaseException, limit: int = 240) -> str:
    """An error as one line: its type and its first sentences, up to about `limit` characters
    (MLflow's messages run to several hundred)."""
    text = " ".join(str(e).split())
    if len(text) > limit:
        cut = text.rfind(". ", 0, limit)
        text = text[:cut + 1] if cut > 0 else text[:limit] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def send_job(logger: Any, job_dir: str | Path, summary: dict, grad_norms: pd.DataFrame,
             metrics: pd.DataFrame | None) -> dict:
    """Sends a finished job to the tracker its config's `logger` names; never raises for the
    tracker's sake.

    Args:
      logger: the config's `logger` (see `logger_options`).
      job_dir: the job's directory (the tracker's run is named by it, grouped by its parent).
      summary: the job's summary, as summary.json holds it.
      grad_norms, metrics: its tables (metrics None: it did not train).
    Returns:
      The record of this sending: {"logger", "options", "location", "status" ("ok" or
      "failed"), "error" (one line, or None), "sent_at"}.
    """
    name, options = logger_options(logger)
    out = Path(job_dir)
    record = _record(name, options, planned_location(name, out, out.name, options))
    config = {**summary["config"], "logger": {"name": name, **options}}
    tracker = None
    try:
        tracker = make_tracker(name, out, out.name, options, group=out.parent.name)
        record["location"] = tracker.location or record["location"]
        log_results(tracker, config, summary, grad_norms, metrics)
        tracker.close()
    except Exception as e:  # noqa: BLE001 - any tracker's failure is recorded, never raised
        record.update(status="failed", error=_one_line(e))
        if tracker is not None:
            try:
                tracker.close(failed=True)
            except Exception:  # noqa: BLE001, S110 - it failed already; the first error says why
                pass
    return record


def failure_line(record: Mapping[str, Any], job_dir: str | Path | None = None) -> str:
    """The one line that says a tracker failed, naming it and where it writes (and, given
    `job_dir`, that the job's results are intact there)."""
    line = f"logger={record['logger']} ({record['location']}) failed: {record['error']}"
    return line if job_dir is None else f"{line}; the job's results are intact in {job_dir}"


def send_and_record(logger: Any, job_dir: str | Path, summary: dict,
                    grad_norms: pd.DataFrame | None = None,
                    metrics: pd.DataFrame | None = None) -> dict:
    """Sends a finished job to its tracker (reading its tables from the job's files when not
    given) unless it was sent there already, records the sending in summary.json, and logs
    one line about it.

    Returns:
      The summary with the record appended under `trackers` (also when summary.json could not
      be rewritten: a read-only directory, a full disk; that is logged).
    """
    name, options = logger_options(logger)
    out = Path(job_dir)
    if name == "none":
        return summary
    earlier = already_sent(summary, name, options)
    if earlier is not None:
        log.info("logger=%s: %s was sent there already (%s, at %s); not sent again", name, out,
                 earlier["location"], earlier["sent_at"])
        return summary
    if grad_norms is None:
        try:
            grad_norms = pd.read_parquet(out / results.GRAD_NORMS)
            if results.METRICS in summary.get("files", {}):
                metrics = pd.read_parquet(out / results.METRICS)
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
            record = _record(name, options, None, "failed",
                             f"cannot read the job's tables: {_one_line(e)}")
            return _recorded(out, summary, record)
    record = send_job(logger, out, summary, grad_norms, metrics)
    return _recorded(out, summary, record)


def _record(name: str, options: dict, location: str | None, status: str = "ok",
            error: str | None = None) -> dict:
    """A sending's record, as summary.json's `trackers` lists it (see `send_job`)."""
    return {"logger": name, "options": options, "location": location, "status": status,
            "error": error, "sent_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _recorded(out: Path, summary: dict, record: dict) -> dict:
    """Logs a sending, and records it in summary.json (see `send_and_record`)."""
    if record["status"] == "ok":
        log.info("logger=%s: sent %s to %s", record["logger"], out, record["location"])
    else:
        log.error("%s", failure_line(record, out))
    summary = {**summary, TRACKERS: [*(summary.get(TRACKERS) or []), record]}
    try:
        results.write_json(summary, out / results.SUMMARY)
    except OSError as e:
        log.warning("could not record the sending to logger=%s in %s (%s)", record["logger"],
                    out / results.SUMMARY, e.strerror or e)
    return summary


def tracker_failure(summary: Mapping[str, Any], logger: Any) -> dict | None:
    """The failed record of the latest sending of this job to the tracker `logger` names (this
    run's, when it sent), else None."""
    name, options = logger_options(logger)
    if name == "none":
        return None
    for record in reversed(summary.get(TRACKERS) or []):
        if record.get("logger") == name and record.get("options") == options:
            return record if record.get("status") == "failed" else None
    return None
