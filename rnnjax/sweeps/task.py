"""The Hydra task function (`task`): one job in Hydra's output directory, and a single run's
last lines; `skip_if_finished` ends a single run whose directory holds a finished run of it."""

import copy
import json
import logging
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from rnnjax.app.config import Config
from rnnjax.app.interrupt import held, stop_if_interrupted
from rnnjax.app.validate import validate

log = logging.getLogger("rnnjax")


POSITION = "RNNJAX_JOB"  # hydra.job.env_set key: "i of N", set by the sweeper for each job


def job_config(cfg: DictConfig) -> tuple[Config, dict[str, Any]]:
    """A job's validated config and its resolved form (what summary.json records and resume
    compares), from the config Hydra gives the task function (without `hydra`)."""
    return validate(cfg), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def task_config(config: DictConfig) -> DictConfig:
    """The config a Hydra job's task function gets: the full config without `hydra`."""
    cfg = copy.deepcopy(config)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]
    return cfg


def open_lines(path: Path) -> list[str]:
    """The commands that open a sweep's (or run's) results."""
    shell, py = shlex.quote(str(path)), json.dumps(str(path))
    return [f"rnnjax: report: rnnjax report {shell}",
            f"rnnjax: in Python: rnnjax.load_sweep({py})"]


def skip_if_finished(config: Config, cfg: DictConfig, out: Path) -> None:
    """Ends a single run whose directory holds a finished run of its config: says so, sends
    it to the config's tracker if one is named, and exits (0; 1 when the tracker failed)."""
    from rnnjax.app.job import finished_summary
    from rnnjax.app.tracking import failure_line, send_and_record, tracker_failure

    # Quietly: where the directory holds no finished run of this config, the job itself says
    # why it runs again (into run.log too), and once.
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        summary = finished_summary(out, job_config(cfg)[1]) if out.is_dir() else None
    finally:
        log.setLevel(level)
    if summary is None:
        return
    with console_log():
        log.info("skipped: %s already holds a finished run of this config (status %s; "
                 "resume=false runs it again)", out, summary["status"])
        summary = send_and_record(config.logger, out, summary)
    failed = tracker_failure(summary, config.logger)
    finish_single(out, summary["status"], failure_line(failed, out) if failed else None)


@contextmanager
def console_log() -> Iterator[None]:
    """rnnjax's log lines on the console as `rnnjax: ...` while Hydra has not configured the
    job's logging (a single run that is skipped never gets that far)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("rnnjax: %(message)s"))
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def finish_single(out: Path, status: str, tracker_error: str | None) -> None:
    """A single run's last lines (where its results are, and how to open them) and its exit:
    0, or 1 with one more line when its tracker failed."""
    print("\n".join([f"rnnjax: run {out}: {status}", *open_lines(out)]), file=sys.stderr)
    if tracker_error:
        print(f"rnnjax: error: {tracker_error}", file=sys.stderr)
        raise SystemExit(1)
    raise SystemExit(0)


running: dict[str, str] = {}  # the output directory of the job this process runs now


def start_backends() -> None:
    """Starts JAX's backends (once per process) with Ctrl-C held until they are up:
    interrupted there, JAX leaves a timer thread behind that keeps the process from exiting
    for 60 s and then warns of a slow TPU."""
    import jax

    with held():
        jax.devices()


class _Position(logging.Filter):
    """Prefixes the job's log lines with its place in the sweep ("job 3 of 6: ...")."""

    def __init__(self, position: str) -> None:
        super().__init__()
        self.prefix = f"job {position}: "

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and not record.msg.startswith(self.prefix):
            record.msg = self.prefix + record.msg
        return True


@contextmanager
def log_position(position: str | None) -> Iterator[None]:
    if not position:
        yield
        return
    tag = _Position(position)
    log.addFilter(tag)
    try:
        yield
    finally:
        log.removeFilter(tag)


def task(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra task function: runs one job (or skips it when finished, see
    `rnnjax.app.job.run_or_resume`) in Hydra's output directory.

    Returns:
      {"status": ..., "error": ...}: "ok", "nonfinite", "failed" or "not run" (another process
      holds the job's directory). A single run that fails, or finds its directory held, exits
      1 with one line instead.
    """
    from rnnjax.app.job import JobBusy, run_or_resume
    from rnnjax.app.tracking import failure_line, tracker_failure

    hc = HydraConfig.get()
    single = hc.mode == RunMode.RUN
    out = hc.runtime.output_dir
    stop_if_interrupted()
    running["dir"] = out
    start_backends()
    config, resolved = job_config(cfg)
    with log_position(None if single else hc.job.env_set.get(POSITION)):
        if not single:
            log.info("%s in %s", " ".join(hc.overrides.task) or "(no overrides)", out)
        try:
            summary = run_or_resume(config, out, resolved=resolved)
        except JobBusy as e:
            if single:
                print(f"rnnjax: error: {e}", file=sys.stderr)
                raise SystemExit(1) from None
            log.error("not run: %s", e)
            return {"status": "not run", "error": str(e)}
    running.pop("dir", None)
    failed = tracker_failure(summary, config.logger)
    tracker_error = failure_line(failed, None if not single else out) if failed else None
    if single:
        if summary["status"] == "failed":
            # In a sweep the other jobs go on and the closing line lists the failures.
            print(f"rnnjax: error: the job failed: {summary['error']}", file=sys.stderr)
            raise SystemExit(1)
        if tracker_error:
            finish_single(Path(out), summary["status"], tracker_error)
        print("\n".join([f"rnnjax: run {out}: {summary['status']}", *open_lines(Path(out))]),
              file=sys.stderr)
    return {"status": summary["status"], "error": summary.get("error"),
            "tracker_error": tracker_error}
