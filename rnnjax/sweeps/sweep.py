"""What rnnjax's Hydra sweeper does (`run_sweep`): builds the job list with Hydra's
BasicSweeper, validates every job before launching any, skips finished jobs without launching
them, and ends with one closing line whatever the launcher raised.

The sweeper and the SLURM launcher are Hydra plugins (hydra_plugins/rnnjax_sweeper), which
import this package, never the other way round: `register_sweeper` finds them by the class
names the configs give (Hydra only instantiates plugins defined under `hydra_plugins`).
"""

import copy
import importlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rnnjax.app.interrupt import INTERRUPTED, stop_if_interrupted
from rnnjax.sweeps.errors import fail, os_error_line
from rnnjax.sweeps.plan import (
    Outcome,
    closing_line,
    disk_outcome,
    interrupted_line,
    job_list,
    launch_overrides,
    launched_outcome,
    plan_jobs,
    send_skipped,
    write_manifest,
)
from rnnjax.sweeps.slurm import unsatisfiable
from rnnjax.sweeps.task import open_lines

log = logging.getLogger("rnnjax")


def run_sweep(sweeper: Any, arguments: Sequence[str]) -> list:
    """What the rnnjax sweeper does (see the module's docstring).

    Returns:
      The launchers' JobReturns, in batches, as Hydra's BasicSweeper.
    Raises:
      SystemExit: 2 on bad input (nothing written), 1 when a job failed or was not run, 130
        when interrupted.
    """
    with _composed_once(sweeper.hydra_context.config_loader):
        return _run_sweep(sweeper, arguments)


@contextmanager
def _composed_once(loader: Any) -> Iterator[None]:
    """Within it, `loader.load_sweep_config` composes each job's config once: the sweeper
    composes every job to validate it, and the basic launcher, which runs the jobs in this
    process, gets a copy of the same config instead of composing it again (a tenth of a second
    a job). Launchers that run jobs in other processes compose there, as before."""
    compose = loader.load_sweep_config
    composed: dict[tuple[str, ...], DictConfig] = {}

    def once(master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        key = tuple(sweep_overrides)
        if key not in composed:
            composed[key] = compose(master_config, list(sweep_overrides))
        return copy.deepcopy(composed[key])

    loader.load_sweep_config = once
    try:
        yield
    finally:
        del loader.load_sweep_config  # the class's method again


def _run_sweep(sweeper: Any, arguments: Sequence[str]) -> list:
    """`run_sweep`'s work."""
    started = time.time()
    sweep_dir = Path(str(sweeper.config.hydra.sweep.dir))
    jobs = plan_jobs(sweeper, job_list(sweeper, arguments))
    error = unsatisfiable(sweeper.config.hydra.launcher)  # a SLURM request no node can run
    if error:
        fail(error)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(sweeper.config, sweep_dir / "multirun.yaml")
        write_manifest(sweep_dir, jobs)
    except OSError as e:
        fail(os_error_line(e, sweep_dir))
    outcomes: dict[int, Outcome] = {}
    for job in jobs:
        if job.done is not None:
            log.info("job %d of %d skipped: %s holds a finished run of this config (status %s; "
                     "resume=false runs it again)", job.number, len(jobs), job.dir,
                     job.done["status"])
            outcomes[job.number] = send_skipped(job)
    todo = [job for job in jobs if job.done is None]
    size = sweeper.max_batch_size or len(todo) or 1
    returns, launcher_error, interrupted = [], None, None
    try:
        for begin in range(0, len(todo), size):
            batch = todo[begin:begin + size]
            rets = sweeper.launcher.launch([launch_overrides(j, len(jobs)) for j in batch],
                                           initial_job_idx=begin)
            returns.append(rets)
            outcomes.update({j.number: launched_outcome(j, r, started)
                             for j, r in zip(batch, rets, strict=True)})
            stop_if_interrupted()
    except KeyboardInterrupt as e:  # its text: what the launcher did about its jobs, if any
        interrupted = str(e)
    except Exception as e:  # e.g. submitit's UncompletedJobError for a cancelled SLURM task
        launcher_error = f"{type(e).__name__}: {e}".splitlines()[0]
    for job in todo:
        if job.number not in outcomes:
            outcomes[job.number] = disk_outcome(job, started, launcher_error)
    if interrupted is not None:
        print(interrupted_line(sweep_dir, jobs, outcomes, interrupted), file=sys.stderr)
        raise SystemExit(INTERRUPTED)
    line, code = closing_line(sweep_dir, jobs, outcomes)
    print("\n".join([line, *open_lines(sweep_dir)]), file=sys.stderr)
    if code:
        raise SystemExit(code)
    return returns


# The plugins, by the names conf/hydra/sweeper/rnnjax.yaml and conf/hydra/launcher/slurm.yaml
# give them: Hydra instantiates only plugins defined under `hydra_plugins`, and those modules
# import rnnjax, so rnnjax names them rather than importing them.
SWEEPER = "hydra_plugins.rnnjax_sweeper.rnnjax_sweeper.RnnjaxSweeper"
SLURM_LAUNCHER = "hydra_plugins.rnnjax_sweeper.slurm_launcher.SlurmLauncher"
OPTUNA_SWEEPER = "hydra_plugins.rnnjax_sweeper.rnnjax_optuna.RnnjaxOptunaSweeper"


def register_sweeper() -> type:
    """Registers rnnjax's sweeper with Hydra, its SLURM launcher where
    hydra-submitit-launcher is installed and its Optuna sweeper where hydra-optuna-sweeper is,
    and returns the sweeper's class.

    Hydra finds plugins by walking the `hydra_plugins` package's directories, which misses a
    package installed in editable mode (`pip install -e .`: setuptools serves it through an
    import hook, not a directory); registering it by hand works for every install.
    """
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # first: its scan re-imports the modules it walks
    sweeper = _plugin_class(SWEEPER)
    plugins.register(sweeper)
    for name in (SLURM_LAUNCHER, OPTUNA_SWEEPER):  # None without the `slurm`, `optuna` extra
        plugin = _plugin_class(name)
        if plugin is not None:
            plugins.register(plugin)
    return sweeper


def _plugin_class(name: str) -> type | None:
    """The class `name` (module.Class), None where its module does not define it."""
    module, _, attribute = name.rpartition(".")
    return getattr(importlib.import_module(module), attribute, None)
