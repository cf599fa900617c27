"""What rnnjax's Optuna sweeper does (`run_search`, `hydra/sweeper=rnnjax_optuna`): Hydra's
Optuna sweeper asks Optuna for trials and tells it their objectives; rnnjax launches them.

- The search space (`KEY=interval(LOW,HIGH)`, `choice(...)`, ...) is checked before any job:
  a job at each end of every range (and each choice) is composed and validated, so a value
  rnnjax rejects ends the command with one line, before anything is written.
- Each batch of trials is planned as a grid's jobs are (`rnnjax.sweeps.plan.plan_jobs`): named
  by their overrides (`job_name`) in the sweep directory that `rnnjax.sweeps.app.main` names by
  the command's, validated, and skipped without launching when finished. With a seeded sampler
  (the default) the same command asks for the same trials, so it resumes.
- A trial's objective comes from its job's summary.json (`hydra.sweeper.objective`: `KEY`,
  `|KEY|` or `KEY^2`, KEY a dotted key of a number in it), so a skipped job scores as the run
  that finished it did, and the task function stays the same for every sweeper. A failed job
  or a non-finite objective is a failed trial; the search goes on.
- The search ends with the sweep's closing line (`rnnjax.sweeps.plan.closing_line`), a line
  with Optuna's best trial, and the commands that open the results; Ctrl-C with one line.
"""

import copy
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from rnnjax.app.interrupt import INTERRUPTED, stop_if_interrupted
from rnnjax.sweeps.errors import error_line, fail, os_error_line
from rnnjax.sweeps.plan import (
    Job,
    Outcome,
    closing_line,
    disk_outcome,
    interrupted_line,
    launch_overrides,
    launched_outcome,
    plan_jobs,
    read_json,
    send_skipped,
    write_manifest,
)
from rnnjax.sweeps.slurm import unsatisfiable
from rnnjax.sweeps.sweep import _composed_once
from rnnjax.sweeps.task import job_config, open_lines, task_config

log = logging.getLogger("rnnjax")

RESULTS = "optimization_results.yaml"  # Optuna's sweeper writes its best trial(s) there
_FORM = re.compile(r"^(\|?)([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)(\|?)(\^2)?$")
ALLOWED = ("KEY, |KEY| (its absolute value) or KEY^2 (its square), KEY a dotted key of a "
           "number in a job's summary.json, e.g. |headline.log10_slope_per_step_back|")

SPACES = ("KEY=VALUE, choice(A,B,...), range(START,STOP[,STEP]), interval(LOW,HIGH) with LOW <= "
          "HIGH, tag(log,interval(LOW,HIGH)) with 0 < LOW")


class Objective(NamedTuple):
    """One objective: a number in a job's summary.json, as is, its absolute value or square."""

    text: str  # as given: |headline.log10_slope_per_step_back|
    key: tuple[str, ...]  # ("headline", "log10_slope_per_step_back")
    form: str  # "value", "abs" or "square"


def parse_objectives(spec: Any, directions: Sequence[str]) -> list[Objective]:
    """The objectives `hydra.sweeper.objective` names, one per direction (exits with one line
    on a malformed one or a count that does not match)."""
    texts = [str(t) for t in spec] if OmegaConf.is_list(spec) or isinstance(spec, list | tuple) \
        else [str(spec)]
    objectives = []
    for text in texts:
        m = _FORM.match(text.strip())
        if not m or m[1] != m[3] or (m[1] and m[4]):
            fail(f"hydra.sweeper.objective={text} is invalid; allowed: {ALLOWED}")
        form = "abs" if m[1] else "square" if m[4] else "value"
        objectives.append(Objective(text.strip(), tuple(m[2].split(".")), form))
    if len(objectives) != len(directions):
        fail(f"hydra.sweeper.objective names {len(objectives)} objectives and "
             f"hydra.sweeper.direction {len(directions)}; allowed: one direction per objective")
    return objectives


def numbers(summary: dict, prefix: str = "") -> list[str]:
    """The dotted keys of the numbers in a summary (lists left out)."""
    keys = []
    for k, v in summary.items():
        if isinstance(v, dict):
            keys += numbers(v, f"{prefix}{k}.")
        elif isinstance(v, int | float) and not isinstance(v, bool):
            keys.append(prefix + k)
    return keys


def score(objectives: list[Objective], summary: dict, where: Path) -> Any:
    """A finished job's objective for Optuna: a float (a list of them for several objectives),
    or a text saying why there is none (Optuna fails the trial: a non-finite number)."""
    values = []
    for o in objectives:
        v: Any = summary
        for k in o.key:
            v = v.get(k) if isinstance(v, dict) else None
        if v is None and summary.get("status") == "nonfinite":
            return f"{o.text} is not finite (status nonfinite)"
        if not isinstance(v, int | float) or isinstance(v, bool):
            head = [k for k in numbers(summary) if k.startswith("headline.")][:8]
            fail(f"hydra.sweeper.objective={o.text} is invalid: {where / 'summary.json'} has "
                 f"no number at {'.'.join(o.key)}; allowed: {ALLOWED} (such as "
                 f"{', '.join(head) or 'status'})")
        v = abs(v) if o.form == "abs" else v * v if o.form == "square" else float(v)
        if not math.isfinite(v):
            return f"{o.text} = {v}"
        values.append(float(v))
    return values[0] if len(values) == 1 else values


class _Stopped(Exception):
    """The launcher raised: the search stops, and every launched job is accounted for."""


class _Search:
    """The state of one search, and the launcher Optuna's sweeper launches its trials with."""

    def __init__(self, impl: Any, objectives: list[Objective], sweep_dir: Path) -> None:
        self.impl, self.objectives, self.sweep_dir = impl, objectives, sweep_dir
        self.inner = impl.launcher
        self.started = time.time()
        self.jobs: list[Job] = []
        self.outcomes: dict[int, Outcome] = {}
        self.launcher_error: str | None = None

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """Plans, skips or launches a batch of trials; a JobReturn per trial whose value is
        its objective."""
        from hydra.core.utils import JobReturn, JobStatus

        total = max(int(self.impl.n_trials), len(self.jobs) + len(job_overrides))
        batch = plan_jobs(self.impl, [list(o) for o in job_overrides],
                          first=len(self.jobs) + 1, total=total)
        self._record(batch)
        first: dict[Path, int] = {}  # a directory's job launched in this batch
        todo = []
        for job in batch:
            if job.done is not None:
                log.info("job %d of %d skipped: %s holds a finished run of this config "
                         "(status %s; resume=false runs it again)", job.number, total, job.dir,
                         job.done["status"])
                self.outcomes[job.number] = send_skipped(job)
            elif job.dir not in first:  # Optuna may ask for the same values twice
                first[job.dir] = job.number
                todo.append(job)
        if todo:
            try:
                rets = self.inner.launch([launch_overrides(j, total) for j in todo],
                                         initial_job_idx=todo[0].number - 1)
            except Exception as e:  # e.g. submitit's UncompletedJobError
                self.launcher_error = f"{type(e).__name__}: {e}".splitlines()[0]
                raise _Stopped from e
            self.outcomes.update({j.number: launched_outcome(j, r, self.started)
                                  for j, r in zip(todo, rets, strict=True)})
        returns = []
        for job in batch:
            if job.number not in self.outcomes:  # the same directory as a job launched above
                self.outcomes[job.number] = self.outcomes[first[job.dir]]
            value = self._value(job, self.outcomes[job.number])
            log.info("job %d of %d: %s: %s", job.number, total,
                     ", ".join(o.text for o in self.objectives),
                     value if isinstance(value, str) else f"{value:.6g}"
                     if isinstance(value, float) else value)
            returns.append(JobReturn(overrides=job.overrides, working_dir=str(job.dir),
                                     status=JobStatus.COMPLETED, _return_value=value))
        stop_if_interrupted()
        return returns

    def _record(self, batch: list[Job]) -> None:
        """Adds a batch's jobs to the sweep directory's manifest (and writes the sweep's
        config beside it the first time)."""
        try:
            if not self.jobs:
                self.sweep_dir.mkdir(parents=True, exist_ok=True)
                OmegaConf.save(self.impl.config, self.sweep_dir / "multirun.yaml")
            self.jobs.extend(batch)
            # a directory once, though Optuna may ask for the same values again
            unique = {job.dir: job for job in reversed(self.jobs)}
            write_manifest(self.sweep_dir, sorted(unique.values(), key=lambda j: j.number))
        except OSError as e:
            fail(os_error_line(e, self.sweep_dir))

    def _value(self, job: Job, outcome: Outcome) -> Any:
        if outcome.status not in ("ok", "nonfinite"):
            return f"the job {outcome.status}" + (f": {outcome.error}" if outcome.error else "")
        summary = job.done if job.done is not None else read_json(job.dir / "summary.json")
        return score(self.objectives, summary, job.dir)


def check_search_space(sweeper: Any, impl: Any, arguments: Sequence[str]) -> None:
    """Validates a job at each end of every range of the search space (and at each choice),
    the other keys at their first ends: exits with one line naming the key and its range where
    rnnjax rejects a value, before anything is written.

    A numeric key's ends are set on a copy of a composed config (what Hydra's override of a
    plain key does): of the sweep's own config, which Hydra composed with the command's fixed
    overrides, where nothing else is searched; choices are composed by Hydra.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params_conf = impl._parse_sweeper_params_config()
    given = [*params_conf, *arguments]
    try:
        lines = {o.get_key_element(): o.input_line
                 for o in OverridesParser.create().parse_overrides(given)}
    except Exception as e:
        fail(error_line(e))
    for text in given:  # one at a time, to name the one Optuna rejects
        try:
            sweeper.search_space([text])
        except Exception as e:
            fail(f"{text} is invalid: {str(e).splitlines()[0].rstrip('.')}; allowed: {SPACES}")
    space, fixed = sweeper.search_space(given)
    space = {k: d for k, d in space.items() if k not in fixed}
    # Optuna's distributions: a categorical one has `choices`, the others `low` and `high`
    ends = {k: list(d.choices) if hasattr(d, "choices") else [d.low, d.high]
            for k, d in space.items()}
    numeric = {k for k, d in space.items() if not hasattr(d, "choices")
               and re.fullmatch(r"[A-Za-z_][\w.]*", k)}
    base = {k: v[0] for k, v in ends.items()}
    points = [(next(iter(base)) if len(base) == 1 else None, base)]
    points += [(k, {**base, k: v}) for k, vs in ends.items() for v in vs[1:]]
    loader = impl.hydra_context.config_loader
    saved = HydraConfig.instance().cfg
    first = None  # the first point's config, without the numeric keys' values
    if not params_conf and numeric == set(space):  # the sweep's config is the first point's
        first = task_config(impl.config)
    try:
        for key, point in points:
            try:
                if first is None or (key is not None and key not in numeric):
                    full = loader.load_sweep_config(
                        impl.config, [f"{k}={v}" for k, v in {**point, **fixed}.items()])
                    HydraConfig.instance().set_config(full)
                    cfg = task_config(full)
                    first = cfg if first is None else first
                else:
                    cfg = copy.deepcopy(first)
                for k in numeric:
                    OmegaConf.update(cfg, k, point[k], merge=False)
                job_config(cfg)
            except Exception as e:
                what = (f"at {key}={point[key]}, an end of the search space's "
                        f"{lines.get(key) or key}" if key else
                        "at the search space's first ends: " + " ".join(
                            f"{k}={v}" for k, v in point.items()) if point else "")
                fail(f"{error_line(e)} ({what})" if what else error_line(e))
    finally:
        HydraConfig.instance().cfg = saved


def check_storage(storage: Any) -> None:
    """Exits with one line where Optuna cannot open `hydra.sweeper.storage` (Optuna 2.10's
    database storage fails with SQLAlchemy 2, which rnnjax's trackers need)."""
    if storage is None:
        return
    import optuna

    try:
        optuna.storages.get_storage(storage)
    except Exception as e:
        fail(f"hydra.sweeper.storage={storage} is invalid: Optuna cannot open it "
             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}); "
             "allowed: null (the study in memory; the same command still resumes)")


def run_search(sweeper: Any, arguments: Sequence[str]) -> None:
    """What the rnnjax Optuna sweeper does (see the module's docstring).

    Raises:
      SystemExit: 2 on bad input (nothing written), 1 when a job failed or was not run, or
        the search stopped, 130 when interrupted.
    """
    impl = sweeper.sweeper  # hydra-optuna-sweeper's OptunaSweeperImpl
    with _composed_once(impl.hydra_context.config_loader):
        _run_search(sweeper, impl, arguments)


def _run_search(sweeper: Any, impl: Any, arguments: Sequence[str]) -> None:
    objectives = parse_objectives(sweeper.objective, impl._get_directions())
    error = unsatisfiable(impl.config.hydra.launcher)
    if error:
        fail(error)
    check_search_space(sweeper, impl, arguments)
    check_storage(impl.storage)
    sweep_dir = Path(str(impl.config.hydra.sweep.dir))
    search = _Search(impl, objectives, sweep_dir)
    impl.launcher = search
    interrupted, stopped = None, None
    try:
        impl.sweep(list(arguments))
    except KeyboardInterrupt as e:
        interrupted = str(e)
    except _Stopped:
        stopped = search.launcher_error
    except Exception as e:  # Optuna's: e.g. no trial completed, so no best trial
        stopped = f"{type(e).__name__}: {e}".splitlines()[0]
    finally:
        impl.launcher = search.inner
    for job in search.jobs:
        if job.number not in search.outcomes:
            search.outcomes[job.number] = disk_outcome(job, search.started,
                                                       search.launcher_error)
    if interrupted is not None:
        print(interrupted_line(sweep_dir, search.jobs, search.outcomes, interrupted),
              file=sys.stderr)
        raise SystemExit(INTERRUPTED)
    line, code = closing_line(sweep_dir, search.jobs, search.outcomes)
    best = best_line(sweep_dir, objectives, len(search.jobs), stopped)
    print("\n".join([line, best, *open_lines(sweep_dir)]), file=sys.stderr)
    if code or stopped:
        raise SystemExit(1)


def best_line(sweep_dir: Path, objectives: list[Objective], trials: int,
              stopped: str | None) -> str:
    """The line after the closing line: Optuna's best trial (from the file it wrote), or why
    the search stopped."""
    if stopped is not None:
        return f"rnnjax: search: stopped after {trials} trials: {stopped}"
    results = OmegaConf.to_container(OmegaConf.load(sweep_dir / RESULTS))
    if "best_params" in results:
        params = " ".join(f"{k}={v}" for k, v in results["best_params"].items())
        return (f"rnnjax: search: best of {trials} trials: {params or '(no parameters)'} "
                f"({objectives[0].text} = {results['best_value']:.6g}); Optuna's results: "
                f"{sweep_dir / RESULTS}")
    return (f"rnnjax: search: {len(results.get('solutions', []))} Pareto-optimal trials of "
            f"{trials}; Optuna's results: {sweep_dir / RESULTS}")
