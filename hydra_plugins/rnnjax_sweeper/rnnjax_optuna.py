"""Hydra's Optuna sweeper (hydra-optuna-sweeper), made to name, validate, skip and account for
its trials' jobs as rnnjax's sweeper does (`hydra/sweeper=rnnjax_optuna`,
conf/hydra/sweeper/rnnjax_optuna.yaml).

Optuna asks for trials and the parent's loop tells it their objectives; what the launcher gets,
and the number each trial's job gives back (`objective`, read from its summary.json), are
rnnjax's: `rnnjax.sweeps.search.run_search`.

Hydra imports every module under `hydra_plugins` when it starts: without the `optuna` extra
(hydra-optuna-sweeper) this module defines nothing, and it imports rnnjax and Optuna only when a
search runs.
"""

import logging
from typing import Any

try:
    from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper
except ImportError:  # the `optuna` extra is not installed: no sweeper to extend
    optuna_sweeper = None

if optuna_sweeper is not None:
    # Optuna imports alembic as Hydra instantiates the sampler, before this sweeper: alembic's
    # INFO lines ("setup plugin ...") would show on the console.
    logging.getLogger("alembic").setLevel(logging.WARNING)

    class RnnjaxOptunaSweeper(optuna_sweeper.OptunaSweeper):
        """The Optuna sweeper whose trials are rnnjax jobs (see the module's docstring)."""

        def __init__(self, objective: Any = "|headline.log10_slope_per_step_back|",
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.objective = objective

        @staticmethod
        def search_space(overrides: list[str]) -> tuple[dict, dict]:
            """Optuna's distributions of the searched keys and the fixed keys' values, as the
            parent reads them from `overrides` (raises on one it rejects)."""
            from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

            return create_params_from_overrides(overrides)

        def sweep(self, arguments: list[str]) -> Any:
            from rnnjax.sweeps.search import run_search

            return run_search(self, arguments)
