"""Hydra's BasicSweeper, made to validate every job first, skip finished jobs without
launching them, and end with one closing line (selected in conf/config.yaml).

Hydra imports every module under `hydra_plugins` when it starts, in any app: this one stays
light and imports rnnjax only when a sweep runs.
"""

from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class RnnjaxSweeper(BasicSweeper):
    """BasicSweeper's job list and launcher; `rnnjax.sweeps.sweep.run_sweep` decides what to
    launch (rnnjax registers this class by its name, without importing this module)."""

    def sweep(self, arguments: list[str]) -> Any:
        from rnnjax.sweeps.sweep import run_sweep

        return run_sweep(self, arguments)
