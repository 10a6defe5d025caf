"""``hydra/launcher=slurm``: Hydra's submitit launcher, made to wait for every job.

The plugin's launcher collects results job by job and raises at the first job that did not
finish (cancelled, killed, out of time, failed), while the sweep's other jobs still run: a
``resume=auto`` rerun started then would race them. This launcher waits until every job has
ended, logs one line per job that did not finish (its SLURM state and its log file), and then
ends the sweep in one line (exit 1) saying how to complete it.

Hydra instantiates launchers from the ``hydra_plugins`` package only, hence its place here;
``conf/hydra/launcher/slurm.yaml`` names it as its ``_target_``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from unittest import mock

from hydra.core.utils import JobReturn
from hydra.errors import CompactHydraException
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import (
    SlurmLauncher as SubmititSlurmLauncher,
)

# under qlab's logger: qlab-train shows its records on the console ("qlab-train: ...")
log = logging.getLogger("qlab.sweeps.slurm")


class SweepJobsFailed(CompactHydraException):
    """Jobs of a sweep did not finish; Hydra prints the message alone (one line)."""


class SlurmLauncher(SubmititSlurmLauncher):
    """The submitit SLURM launcher, waiting for all jobs before it reports any failure."""

    def launch(self, job_overrides: Sequence[Sequence[str]],
               initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        submitted = []
        map_array = submitit.AutoExecutor.map_array

        def map_and_wait(executor, *args, **kwargs):
            jobs = map_array(executor, *args, **kwargs)
            submitted.extend(jobs)
            for job in jobs:
                job.wait()
            return [_Finished(job, initial_job_idx + k) for k, job in enumerate(jobs)]

        with mock.patch.object(submitit.AutoExecutor, "map_array", map_and_wait):
            results = super().launch(job_overrides, initial_job_idx)
        failed = [r for r in results if r is None]
        if failed:
            raise SweepJobsFailed(f"{len(failed)} of {len(results)} sweep jobs did not finish "
                                  "(lines above); the same command with resume=auto completes "
                                  "the sweep: finished jobs are skipped, the others continue "
                                  "from their last checkpoint")
        return results


class _Finished:
    """A submitit job that has ended: ``results()`` is its job's return, or ``[None]`` after
    logging why it did not finish."""

    def __init__(self, job, index: int) -> None:
        self.job, self.index = job, index

    def results(self) -> list[JobReturn | None]:
        try:
            return self.job.results()
        except Exception:  # noqa: BLE001 - submitit's UncompletedJobError, FailedJobError
            log.error("sweep job #%d (SLURM job %s) did not finish: %s; its log: %s",
                      self.index, self.job.job_id, self.job.state, self.job.paths.stderr)
            return [None]


__all__ = ["SlurmLauncher", "SweepJobsFailed"]
