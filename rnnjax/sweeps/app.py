"""Runs and sweeps from the command line: Hydra's app (`main`) and its callback
(`ValidateConfig`).

`main(argv)` is the command line (`rnnjax run`, experiments/run.py). The rest lives beside it,
one responsibility a module, and the names this module has always offered stay importable
from it:

    names.py   directory names of runs and sweeps (`job_name`, `sweep_name`, `CONF_DIR`)
    checks.py  checks of the command and a job's config before anything is written
    errors.py  one line for whatever went wrong, and the exit
    task.py    the Hydra task function: one job (`task`, `job_config`)
    plan.py    a sweep's jobs, their outcomes and the closing line
    sweep.py   what the sweeper (`hydra_plugins.rnnjax_sweeper`) does (`run_sweep`)
"""

import logging
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rnnjax.app.config import register_configs
from rnnjax.app.data import prepare_data
from rnnjax.app.interrupt import INTERRUPTED, catching_ctrl_c, stop_if_interrupted
from rnnjax.app.validate import ConfigError, validate
from rnnjax.core.tasks import DataError
from rnnjax.sweeps.checks import (
    LAUNCHER_PACKAGES,
    check_group_options,
    check_job_name,
    check_tracker,
    check_writable,
)
from rnnjax.sweeps.errors import error_line, fail, os_error_line
from rnnjax.sweeps.names import (
    CONF_DIR,
    CONFIG_NAME,
    RUN_ROOT,
    SWEEP_ROOT,
    command_overrides,
    job_name,
    run_dir_override,
    safe_name,
    sweep_dir_override,
    sweep_name,
)
from rnnjax.sweeps.plan import (
    MANIFEST,
    Job,
    Outcome,
    closing_line,
    interrupted_line,
    job_list,
    launch_overrides,
    plan_jobs,
    write_manifest,
)
from rnnjax.sweeps.sweep import register_sweeper, run_sweep
from rnnjax.sweeps.task import (
    POSITION,
    job_config,
    open_lines,
    running,
    skip_if_finished,
    task,
    task_config,
)

__all__ = ["CONF_DIR", "CONFIG_NAME", "LAUNCHER_PACKAGES", "MANIFEST", "POSITION", "RUN_ROOT",
           "SWEEP_ROOT", "Job", "Outcome", "ValidateConfig", "check_group_options",
           "check_job_name", "check_tracker", "check_writable", "closing_line",
           "interrupted_line", "job_config", "job_list", "job_name", "launch_overrides", "main",
           "open_lines", "plan_jobs", "register_sweeper", "run_dir_override", "run_sweep",
           "safe_name", "sweep_dir_override", "sweep_name", "task", "write_manifest"]

log = logging.getLogger("rnnjax")


class ValidateConfig(Callback):
    """Hydra callback: validates a single run's config (and fetches its data), skips it when
    its directory holds a finished run of it, and checks that its directory can be written,
    all before Hydra creates or writes into that directory: bad input writes nothing, and a
    finished run is never touched (its directory may be read-only). A sweep's jobs are
    validated by the sweeper (`run_sweep`)."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            checked = validate(config)
            prepare_data(checked)
        except (ConfigError, DataError, OmegaConfBaseException) as e:
            fail(error_line(e))
        check_job_name(config.hydra.job.name)
        out = Path(os.path.abspath(str(OmegaConf.select(config, "hydra.run.dir"))))
        if checked.resume:
            skip_if_finished(checked, task_config(config), out)
        check_tracker(checked)
        check_writable(out)


def _mode_is_default(argv: Sequence[str]) -> bool:
    """Whether `hydra.mode` is surely unset for this command: rnnjax's configs never set it, so
    only the command line (`hydra.mode=...`) or an experiment file (`+experiment=...`, which a
    user may write) can."""
    return not any(o.lstrip("+~").startswith(("hydra.mode", "experiment")) for o in argv)


@contextmanager
def _hydra_mode_unset(known: bool) -> Iterator[None]:
    """Within it, where `known`, Hydra takes `hydra.mode` as unset without composing the whole
    config a first time only to read it (`Hydra.get_mode`: a tenth of a second or more, once
    per command; `-m` still makes a multirun)."""
    if not known:
        yield
        return
    from hydra._internal.hydra import Hydra

    get_mode = Hydra.get_mode
    Hydra.get_mode = lambda self, config_name, overrides: None
    try:
        yield
    finally:
        Hydra.get_mode = get_mode


def main(argv: Sequence[str] | None = None, prog: str = "experiments/run.py") -> None:
    """The command line: `prog [--help] [-m] [KEY=VALUE ...]`, Hydra's app.

    Args:
      argv: the arguments after the program name (default: sys.argv[1:]).
      prog: the program name Hydra's help shows.
    Raises:
      SystemExit: the exit code (0 when all went well; see `run_sweep` and `task`).
    """
    import hydra

    # Jobs that share a GPU (joblib processes, SLURM jobs on one node) must not each
    # preallocate 75% of its memory; set before JAX starts its backend.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    argv = list(sys.argv[1:] if argv is None else argv)
    check_group_options(argv, CONF_DIR)
    register_configs()
    register_sweeper()
    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR),
                     config_name=CONFIG_NAME)(task)
    # The directory overrides go right after the command's own (or first, without any), where
    # Hydra's parser takes overrides: after `--cfg hydra` or `--info` they would not parse.
    at = 1 + max((i for i, a in enumerate(argv) if a in command_overrides(argv)), default=-1)
    saved = sys.argv
    sys.argv = [prog, *argv[:at], *sweep_dir_override(argv), *run_dir_override(argv),
                *argv[at:]]
    running.clear()
    mode_known = _mode_is_default(argv)
    # Hydra prints its errors (an unknown key, a wrong type) in several lines unless
    # HYDRA_FULL_ERROR is set; then it raises them, and they become one line here.
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        with catching_ctrl_c(), _hydra_mode_unset(mode_known):
            stop_if_interrupted()  # pressed while the modules loaded (`rnnjax run`)
            app()
    except (HydraException, OmegaConfBaseException) as e:
        if full_error == "1":
            raise
        fail(error_line(e))
    except BrokenPipeError:  # a closed stdout (`| head`): rnnjax.cli ends quietly
        raise
    except OSError as e:  # Hydra writing a job's .hydra/ or log file: a full disk, say
        if full_error == "1":
            raise
        fail(os_error_line(e))
    except KeyboardInterrupt:
        where = running.get("dir")
        print(f"rnnjax: interrupted: the job in {where} did not finish; the same command "
              "resumes it" if where else "rnnjax: interrupted before any job started",
              file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    finally:
        sys.argv = saved
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
