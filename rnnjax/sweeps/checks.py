"""Checks of a command and a job's config made before Hydra writes anything: config group
options, launcher and sweeper presets, deletions, the job's log file name, the tracker's server
and the job's directory. Each ends the command with one line (`rnnjax.sweeps.errors.fail`)."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import HydraException

from rnnjax.app.config import Config
from rnnjax.app.trackers import needs_package
from rnnjax.sweeps.errors import fail
from rnnjax.sweeps.names import CONF_DIR, command_overrides

# What a launcher preset needs beyond rnnjax's own dependencies: (module, package, extra).
LAUNCHER_PACKAGES = {
    **dict.fromkeys(("local_parallel", "joblib"),
                    ("hydra_plugins.hydra_joblib_launcher", "hydra-joblib-launcher", "parallel")),
    **dict.fromkeys(("slurm", "submitit_slurm", "submitit_local"),
                    ("hydra_plugins.hydra_submitit_launcher", "hydra-submitit-launcher", "slurm")),
}
# What a sweeper preset needs beyond rnnjax's own dependencies: (module, package, extra).
SWEEPER_PACKAGES = {"rnnjax_optuna": ("hydra_plugins.hydra_optuna_sweeper", "hydra-optuna-sweeper",
                                      "optuna")}


def check_group_options(argv: Sequence[str], conf_dir: Path = CONF_DIR) -> None:
    """Exits with a one-line error when a config group is given a value that is not one of its
    options (`activation=foo`, `activation=null`, `task=5`), which Hydra would report in several
    lines or with a traceback, a launcher preset whose package is not installed, or a deletion
    (`~seq_len`)."""
    from importlib.util import find_spec

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, Glob

    groups = {p.name: sorted(f.stem for f in p.glob("*.yaml"))
              for p in Path(conf_dir).iterdir() if p.is_dir()}
    # a plugin's cell has no yaml: its option is stored by config.register_configs
    from rnnjax.core.cells import registry

    groups["cell"] = sorted({*groups.get("cell", ()), *registry.CELLS})
    try:
        parsed = OverridesParser.create().parse_overrides(command_overrides(argv))
    except HydraException:
        return  # Hydra reports its own syntax errors
    for o in parsed:
        if o.is_delete():
            if not o.key_or_group.startswith("hydra"):
                # Deleting a key the schema has ran the job with a config whose summary lacks
                # the key, in the directory of another run.
                fail(f"{o.input_line} is not supported: rnnjax's config keys cannot be "
                      f"deleted; set {o.key_or_group}=VALUE instead")
            continue
        value = o.value()
        presets = {"hydra/launcher": LAUNCHER_PACKAGES, "hydra/sweeper": SWEEPER_PACKAGES}
        if isinstance(value, str) and value in presets.get(o.key_or_group, {}):
            module, package, extra = presets[o.key_or_group][value]
            if find_spec(module) is None:
                fail(needs_package(f"{o.key_or_group}={value}", package, extra))
        if o.key_or_group == "hydra/sweeper/sampler" and value == "grid":
            # conf/hydra/sweeper/rnnjax_optuna.yaml seeds its sampler; Optuna's grid has none
            fail("hydra/sweeper/sampler=grid is not supported: grids are rnnjax's own "
                 "sweeper's (the default, without hydra/sweeper=...); allowed: tpe, random, "
                 "cmaes, nsgaii, motpe")
        if o.key_or_group not in groups:
            continue
        allowed = groups[o.key_or_group]
        given = o.input_line or o.key_or_group
        if isinstance(value, Glob):
            if not value.filter(allowed):
                fail(f"{given} matches no option of {o.key_or_group}; allowed: "
                      f"{', '.join(allowed)}")
            continue
        items = value.list if isinstance(value, ChoiceSweep) else [value]
        if not all(isinstance(v, str) for v in items):
            fail(f"{given} is invalid: {o.key_or_group} takes option names; allowed: "
                  f"{', '.join(allowed)}")
        unknown = [v for v in items if v not in allowed]
        if unknown:
            fail(f"{o.key_or_group}={unknown[0]} is not an option; allowed: "
                  f"{', '.join(allowed)}")


def check_job_name(name: Any) -> None:
    """Exits with one line when `hydra.job.name`, which names the job's log file
    (NAME.log in its directory), would put it elsewhere: a path separator or `..`."""
    text = str(name)
    if "/" in text or "\\" in text or ".." in text or not text.strip():
        fail(f"hydra.job.name={text} is invalid: it names the job's log file ({text}.log in "
              "the job's directory); allowed: a name without '/', '\\' or '..'")


def check_tracker(config: Config) -> None:
    """Exits with one line, within seconds, when the tracker's server cannot be reached, before
    any compute (`rnnjax.app.trackers.check_reachable`)."""
    from rnnjax.app.trackers import TrackerError, check_reachable

    try:
        check_reachable(config.logger.name.value, vars(config.logger))
    except TrackerError as e:
        fail(str(e))


def check_writable(directory: Path) -> None:
    """Exits with one line naming `directory` when a job cannot write there (read-only, a full
    disk, a file in the way), before Hydra writes its first file into it."""
    from rnnjax.app.results import unwritable

    problem = unwritable(directory, directory=True)
    if problem:
        fail(f"hydra.run.dir={directory}: {problem}")
