"""hydra-submitit-launcher's SLURM launcher, made to wait for every task of its array and
account for each job however its task ended (the `slurm` preset, conf/hydra/launcher/slurm.yaml).

The parent's `launch` submits the array and then reads `job.results()` job after job: it raises
submitit's UncompletedJobError at the first task that ended without a result (cancelled, timed
out, killed), leaving the later tasks running, and waits forever for a task cancelled while
still pending. This launcher submits exactly as the parent does, then waits for the whole array
(`rnnjax.sweeps.slurm.wait_for_tasks`) and returns one JobReturn per job
(`rnnjax.sweeps.slurm.task_return`):
a task that left no result is a FAILED job whose value says how the task ended. On Ctrl-C it
cancels the array before passing the interrupt on.

Hydra imports every module under `hydra_plugins` when it starts: without the `slurm` extra
(hydra-submitit-launcher) this module defines nothing, and it imports rnnjax only to launch.
"""

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
except ImportError:  # the `slurm` extra is not installed: no launcher to extend
    submitit_launcher = None

log = logging.getLogger(__name__)


def private_folder(submitit_folder: str) -> Path:
    """Creates submitit's folder (the part of `submitit_folder` before its first `%j`-style
    placeholder: `<sweep>/.submitit`) readable, writable and searchable by its owner only, and
    returns it. The launcher unpickles the results its tasks write there: whoever can write
    into it can run code in the launching process."""
    parts = Path(submitit_folder).parts
    cut = next((i for i, part in enumerate(parts) if "%" in part), len(parts))
    folder = Path(*parts[:cut])
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    return folder

if submitit_launcher is not None:

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        """submitit's SLURM launcher that waits for its whole array and returns a JobReturn
        for every job, a FAILED one for a task that left no result."""

        def launch(self, job_overrides: Sequence[Sequence[str]],
                   initial_job_idx: int) -> Sequence[Any]:
            from rnnjax.sweeps.slurm import cancel, task_return, wait_for_tasks

            jobs: list[Any] = []
            try:
                self._submit(job_overrides, initial_job_idx, jobs)
                arrays = " ".join(sorted({j.job_id.split("_")[0] for j in jobs}))
                log.info("Waiting for SLURM array %s: %d tasks (`scancel %s` cancels them)",
                         arrays, len(jobs), arrays)
                states = wait_for_tasks([j.job_id for j in jobs])
            except KeyboardInterrupt:
                # Ctrl-C stops the sweep: its tasks go too, so that the same command resumes
                # it without racing tasks still queued from this one.
                cancelled = cancel(j.job_id for j in jobs)
                raise KeyboardInterrupt(f"cancelled its SLURM array {', '.join(cancelled)}"
                                        if cancelled else "") from None
            return [task_return(job, states[job.job_id], overrides)
                    for job, overrides in zip(jobs, job_overrides, strict=True)]

        def _submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int,
                    jobs: list[Any]) -> None:
            """Submits the jobs as the parent's `launch` does, and appends submitit's Jobs to
            `jobs` as soon as the array is submitted (so that Ctrl-C can cancel it).

            The parent builds its executor and submits through `executor.map_array` inside
            `launch`, then waits: its executor is swapped, for that call, for one whose
            `map_array` hands the Jobs over and gives the parent none to wait for.
            """
            import submitit

            class Submit(submitit.AutoExecutor):
                def map_array(self, fn: Any, *iterable: Any) -> list:
                    jobs.extend(super().map_array(fn, *iterable))
                    return []

            private_folder(str(self.params["submitit_folder"]))
            auto = submitit.AutoExecutor
            submitit.AutoExecutor = Submit
            try:
                super().launch(job_overrides, initial_job_idx)
            finally:
                submitit.AutoExecutor = auto
