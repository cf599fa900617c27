"""Directory names of runs and sweeps, made from their command-line overrides.

A single run goes to `results/runs/single/<job name>`, a sweep to
`results/runs/multirun/<sweep name>/<job name>`, both named by their overrides (`job_name`,
`sweep_name`), so that the same command maps to the same directories and resumes.
"""

import re
from collections.abc import Sequence

from rnnjax.app.names import safe_name
from rnnjax.app.paths import CONF_DIR, CONFIG_NAME

__all__ = ["CONF_DIR", "CONFIG_NAME", "RUN_ROOT", "SWEEP_ROOT", "command_overrides",
           "is_multirun", "job_name", "run_dir_override", "safe_name", "sweep_dir_override",
           "sweep_name"]


SWEEP_ROOT = "results/runs/multirun"  # a sweep: SWEEP_ROOT/<sweep_name>/<job_name>
RUN_ROOT = "results/runs/single"  # a single run: RUN_ROOT/<job_name>


def _is_setting(override: str) -> bool:
    """Hydra's own settings (`hydra.*`, `hydra/launcher=...`), `resume` and the experiment
    tracker (`logger=...`, `logger.*`) change no result, so they do not name directories: a
    finished job re-run with a tracker maps to its old directory, is skipped, and its results
    are sent to the tracker (`rnnjax.app.tracking`)."""
    return (bool(re.match(r"^[+~]*(hydra[./]|resume=|logger[.=])", override))
            or override.startswith("-"))


def sweep_name(overrides: Sequence[str]) -> str:
    """A directory name for a sweep from its command-line overrides, the same whatever their
    order: `activation=tanh,relu seq_len=16` -> `activation=tanh,relu__seq_len=16`.

    Hydra's own settings (`hydra.*`, `hydra/launcher=...`) and `resume` are left out, so a
    sweep interrupted under one launcher resumes under another. See `safe_name` for the
    characters kept and the bound on the length.
    """
    keep = sorted(o for o in overrides if not _is_setting(o))
    return safe_name("__".join(keep), "\0".join(keep))


def job_name(overrides: Sequence[str]) -> str:
    """A directory name for one job (of a sweep, or a single run) from its overrides, the same
    whatever their order: `seq_len=16 activation=tanh` -> `activation=tanh,seq_len=16`
    (Hydra's `override_dirname`), `default` without overrides.

    Settings and `resume` are left out (see `sweep_name`); a value with a path separator or
    another character outside `safe_name`'s set, or a name over 120 characters, gets a hash,
    so that `task.path=../../x.txt` stays inside the sweep directory.
    """
    keep = sorted(o for o in overrides if not _is_setting(o))
    return safe_name(",".join(keep), "\0".join(keep))


def command_overrides(argv: Sequence[str]) -> list[str]:
    return [a for a in argv if ("=" in a or a.startswith("~")) and not a.startswith("-")]


def is_multirun(argv: Sequence[str]) -> bool:
    return bool({"-m", "--multirun"} & set(argv))


def sweep_dir_override(argv: Sequence[str]) -> list[str]:
    """The `hydra.sweep.dir=...` override naming a multirun by its overrides (see `sweep_name`),
    so that re-running an interrupted sweep's command maps every job to its old directory;
    none when not a multirun or when the command sets hydra.sweep.dir itself."""
    if not is_multirun(argv) or any(a.startswith("hydra.sweep.dir=") for a in argv):
        return []
    return [f"hydra.sweep.dir='{SWEEP_ROOT}/{sweep_name(command_overrides(argv))}'"]


def run_dir_override(argv: Sequence[str]) -> list[str]:
    """The `hydra.run.dir=...` override naming a single run by its overrides (`job_name`), so
    that two runs of different configs never share a directory and re-running a command
    resumes it; none for a multirun or when the command sets hydra.run.dir itself."""
    if is_multirun(argv) or any(a.startswith("hydra.run.dir=") for a in argv):
        return []
    return [f"hydra.run.dir='{RUN_ROOT}/{job_name(command_overrides(argv))}'"]
