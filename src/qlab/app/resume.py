"""Resuming a job from its checkpoint: find the job's MLflow runs, check the checkpoint
fits them and the config, and lock the job so two processes never train it at once.

A job (R replicas, one run each) is tied together by the tag ``qlab.job_id``; its runs also
carry ``qlab.config_hash`` (:func:`qlab.app.checkpoint.config_hash`) and ``qlab.checkpoint``
(the checkpoint's path). ``resume`` is

- ``RUN_ID``: the job one of whose runs this is;
- ``last``: the experiment's most recently started job that has a run not FINISHED (and a
  checkpoint on disk, or all its runs);
- ``auto``: the job with the same config hash: skipped if its runs all FINISHED, resumed if
  it has a checkpoint, started afresh otherwise (what a rerun of a sweep wants).

A job stopped before its first checkpoint (kill -9 in its first seconds) is resumed from the
start into its own runs (their points so far are the same and are not sent again): no run of
it stays RUNNING. One stopped while its runs were being created is started afresh by
``resume=auto``, which ends the runs it had left RUNNING (KILLED, with why) once the new
job's runs exist. A job holds its lock from before its runs are created, so one being
created by a live process is never taken for one stopped.

Every check happens before anything is written: bad input leaves the store as it was.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from qlab.app import checkpoint
from qlab.app.checkpoint import CheckpointError
from qlab.core.errors import QlabError
from qlab.core.history import History, loop_state
from qlab.tracking import store

JOB_TAG = "qlab.job_id"
HASH_TAG = "qlab.config_hash"
CKPT_TAG = "qlab.checkpoint"
REPLICA_TAG = "qlab.replica"  # a run's replica index in its job (fused jobs repeat seeds)
LOCK_NAME = "lock"

log = logging.getLogger(__name__)


class ResumeError(QlabError, ValueError):
    """A resume that cannot go ahead; the message is one line."""

    exit_code = 2


def checkpoint_root(checkpoint_dir: str | None, uri: str) -> Path:
    """``checkpoint_dir``, else ``checkpoints/`` beside a sqlite store, else in the working
    directory (absolute: a job's checkpoint path is recorded on its runs)."""
    if checkpoint_dir:
        return Path(checkpoint_dir).expanduser().resolve()
    db = store.sqlite_path(uri)
    if db is not None:
        return db.resolve().parent / "checkpoints"
    return Path.cwd() / "checkpoints"


def check_root(root: Path) -> None:
    """:class:`ResumeError` in one line unless checkpoints can be written under ``root`` (made
    if missing): checked before any run exists (``checkpoint_dir=/proc`` would otherwise
    fail at the first checkpoint, after the runs were made)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".qlab-probe-", dir=root))
    except OSError as exc:
        raise ResumeError(f"checkpoint_dir={root}: checkpoints cannot be written there "
                          f"({exc.strerror or type(exc).__name__})") from None


class JobLock:
    """An exclusive ``flock`` on ``<job dir>/lock`` while a process trains the job; the
    kernel drops it when the process dies, even by kill -9."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / LOCK_NAME
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ResumeError(f"job in {directory} is being trained by another process "
                              f"(its lock {self.path} is held)") from None

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class Plan:
    """What ``qlab-train`` does with this job: start it, resume it, or skip it."""

    job_id: str
    directory: Path
    run_ids: list[str] | None = None  # existing runs to continue (None: create new ones)
    start: tuple[Any, dict] | None = None  # (History, loop) for driver.train(resume=...)
    skip: bool = False  # resume=auto found the job FINISHED
    lock: JobLock | None = None
    state: dict | None = None  # the checkpoint's state, until restore() puts it in place
    tags: dict[str, str] = field(default_factory=dict)
    restart: bool = False  # resumed before its first checkpoint: trained again from the start
    abandoned: list[str] = field(default_factory=list)  # RUNNING runs of jobs stopped while
    # their runs were being created (resume=auto): ended by :func:`end_abandoned`

    @property
    def path(self) -> Path:
        return self.directory / checkpoint.FILE_NAME

    def acquire(self) -> None:
        """Hold the job's lock while training (resumed plans hold it already)."""
        if self.lock is None:
            self.lock = JobLock(self.directory)

    def release(self) -> None:
        """Release the lock; a job directory without a checkpoint goes with it (a job
        stopped before its first one takes a new lock to train again)."""
        if self.lock is not None:
            self.lock.release()
            if not self.path.exists():
                (self.directory / LOCK_NAME).unlink(missing_ok=True)
                try:
                    self.directory.rmdir()
                except OSError:
                    pass

    def finished(self) -> None:
        """Training completed and the runs are FINISHED: the checkpoint has no more use."""
        self.path.unlink(missing_ok=True)
        (self.directory / LOCK_NAME).unlink(missing_ok=True)
        self.release()
        try:
            self.directory.rmdir()
        except OSError:
            pass


def _replica(run) -> int:
    """The run's replica index in its job (runs made before the tag: their seed's order)."""
    tags = run.data.tags
    return int(tags.get(REPLICA_TAG, tags.get("seed", 0)))


def _job_runs(client: MlflowClient, exp_id: str, job_id: str) -> list:
    runs = client.search_runs([exp_id], f"tags.`{JOB_TAG}` = '{job_id}'", max_results=10_000)
    return sorted(runs, key=_replica)


def _jobs(client: MlflowClient, exp_id: str, filter_string: str) -> dict[str, list]:
    """Runs of every job matching ``filter_string``, by job id, newest job first."""
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    jobs: dict[str, list] = {}
    for r in sorted(runs, key=lambda r: -r.info.start_time):
        jobs.setdefault(r.data.tags[JOB_TAG], []).append(r)
    return {j: sorted(rs, key=_replica) for j, rs in jobs.items()}


def _whole(runs: list, replicas: int | None) -> bool:
    """Whether a job's runs were all made (one per replica, each with its params): a job
    killed while its runs were being created cannot be continued in them."""
    return (replicas is None or len(runs) == replicas) and all(r.data.params for r in runs)


def _training(root: Path, job_id: str, runs: list) -> bool:
    """Whether a live process holds the job's lock (it is training it now). The lock is
    beside the checkpoint path its runs were tagged with (whatever ``checkpoint_dir`` this
    command has), else under ``root``."""
    tagged = next((r.data.tags[CKPT_TAG] for r in runs if r.data.tags.get(CKPT_TAG)), None)
    path = (Path(tagged).parent if tagged else root / job_id) / LOCK_NAME
    if not path.exists():
        return False
    try:
        JobLock(path.parent).release()
    except ResumeError:
        return True
    return False


def _episodes_logged(client: MlflowClient, runs: list) -> int:
    """Episodes the slowest run of a job has recorded (its last ``train/episode_length``
    step + 1). The driver writes a checkpoint when its slowest replica reaches a multiple
    of ``checkpoint_every``, before the runs are sent those episodes: a job whose every run
    holds that many had one (the furthest run alone may hold more without: its replica ran
    ahead of the others)."""
    key = "train/episode_length"
    return min((max((m.step for m in client.get_metric_history(r.info.run_id, key)),
                    default=-1) + 1 for r in runs), default=0)


def _has_checkpoint(runs: list) -> bool:
    path = runs[0].data.tags.get(CKPT_TAG)
    return bool(path) and Path(path).is_file()


def _params_diff(run, params: dict[str, str]) -> list[str]:
    """Config keys whose value differs between a run's params and this job's (``seed`` is
    replica 0's, excluded keys aside)."""
    logged = run.data.params
    skip = tuple(f"{k}." for k in checkpoint.EXCLUDED)
    keys = {k for k in (*logged, *params)
            if k not in checkpoint.EXCLUDED and not k.startswith(skip)}
    return [f"{k}={logged.get(k, '<unset>')}->{params.get(k, '<unset>')}" for k in sorted(keys)
            if logged.get(k, "<unset>") != params.get(k, "<unset>")]


def plan_job(uri: str, experiment_name: str, spec: str | None, resolved: dict[str, Any],
             params: dict[str, str], root: Path, replicas: int | None = None) -> Plan:
    """Decide (and check, writing nothing to the store) what to do with this job.
    ``params`` are the run params this job logs (flattened resolved config); ``replicas``
    its number of runs."""
    if not spec:
        return plan(None, None, spec, resolved, params, root, uri)
    store.check(uri)  # one line for a bad store, before MLflow opens (or migrates) it
    db = store.sqlite_path(uri)
    if db is not None and not db.exists():  # nothing to resume: no store made just to say so
        return plan(_NoStore(uri), None, spec, resolved, params, root, uri, replicas)
    client = store.client_for(uri)
    exp = client.get_experiment_by_name(experiment_name)
    return plan(client, exp.experiment_id if exp else None, spec, resolved, params, root, uri,
                replicas)


class _NoStore:
    """Stands in for the client of a sqlite store that does not exist yet: it has no runs."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def get_run(self, run_id: str):
        raise MlflowException(f"no store at {self.uri}")


def plan(client: MlflowClient | None, exp_id: str | None, spec: str | None,
         resolved: dict[str, Any], params: dict[str, str], root: Path, uri: str,
         replicas: int | None = None) -> Plan:
    """:func:`plan_job` given the store's client and the experiment's id (None: none yet)."""
    h = checkpoint.config_hash(resolved)
    fresh_id = uuid.uuid4().hex
    fresh = Plan(fresh_id, root / fresh_id)
    if not spec:
        return _tagged(fresh, h)
    if client is None:
        raise ResumeError(f"resume={spec}: needs tracking (tracking.enabled=true)")
    if spec == "auto":
        jobs = _jobs(client, exp_id, f"tags.`{HASH_TAG}` = '{h}'") if exp_id else {}
        chosen = _auto(client, jobs, fresh, root, resolved, params, h, replicas)
        chosen.abandoned = [r.info.run_id for job_id, runs in jobs.items()
                            if not _whole(runs, replicas) and not _training(root, job_id, runs)
                            for r in runs if r.info.status == "RUNNING"]
        return chosen
    if spec == "last":
        jobs = _jobs(client, exp_id, f"tags.`{JOB_TAG}` != ''") if exp_id else {}
        for job_id, runs in jobs.items():
            if any(r.info.status != "FINISHED" for r in runs) and (
                    _has_checkpoint(runs) or _whole(runs, replicas)):
                return _resume(client, spec, job_id, runs, resolved, params, h, replicas)
        raise ResumeError(f"resume=last: no unfinished job in experiment "
                          f"{resolved.get('experiment_name')!r} of {uri}")
    try:
        run = client.get_run(spec)
    except MlflowException:
        run = None
    if run is None or run.info.lifecycle_stage != "active":
        raise ResumeError(f"resume={spec}: no such run in {uri} (give a run id of the job, "
                          "'last' or 'auto')")
    if run.info.experiment_id != exp_id:
        raise ResumeError(f"resume={spec}: the run belongs to another experiment (id "
                          f"{run.info.experiment_id}), not experiment_name="
                          f"{resolved.get('experiment_name')!r}")
    job_id = run.data.tags.get(JOB_TAG)
    if not job_id:
        raise ResumeError(f"resume={spec}: the run has no {JOB_TAG} tag (it was not trained "
                          "with checkpoints)")
    return _resume(client, spec, job_id, _job_runs(client, exp_id, job_id), resolved, params, h,
                   replicas)


def _auto(client: MlflowClient, jobs: dict[str, list], fresh: Plan, root: Path,
          resolved: dict[str, Any], params: dict[str, str], h: str,
          replicas: int | None) -> Plan:
    """``resume=auto`` among the jobs of the same config hash: skip one FINISHED, resume one
    with a checkpoint (or whole, stopped before its first), else the ``fresh`` plan."""
    for job_id, runs in jobs.items():
        if all(r.info.status == "FINISHED" for r in runs):
            return Plan(job_id, root / job_id, [r.info.run_id for r in runs], skip=True)
    for job_id, runs in jobs.items():
        if _has_checkpoint(runs):
            return _resume(client, "auto", job_id, runs, resolved, params, h)
    for job_id, runs in jobs.items():  # stopped before its first checkpoint
        if _whole(runs, replicas) and not _training(root, job_id, runs):
            try:
                return _resume(client, "auto", job_id, runs, resolved, params, h, replicas)
            except ResumeError:  # its checkpoint is gone: that job cannot continue
                continue
    return _tagged(fresh, h)


def _tagged(p: Plan, h: str) -> Plan:
    p.tags = {JOB_TAG: p.job_id, HASH_TAG: h, CKPT_TAG: str(p.path)}
    return p


def _resume(client: MlflowClient, spec: str, job_id: str, runs: list, resolved: dict,
            params: dict[str, str], h: str, replicas: int | None = None) -> Plan:
    what = f"resume={spec}"
    if runs[0].data.tags.get(HASH_TAG) != h:
        diff = _params_diff(runs[0], params)
        raise ResumeError(f"{what}: job {job_id} was trained with another config; differing "
                          f"keys: {', '.join(diff) if diff else '(none in params)'}")
    if all(r.info.status == "FINISHED" for r in runs):
        raise ResumeError(f"{what}: job {job_id} has finished (its {len(runs)} run(s) are "
                          "FINISHED); nothing to resume")
    if not runs[0].data.tags.get(CKPT_TAG):
        raise ResumeError(f"{what}: job {job_id}'s runs have no {CKPT_TAG} tag (they were "
                          "not trained with checkpoints)")
    path = Path(runs[0].data.tags[CKPT_TAG])
    try:
        lock = JobLock(path.parent)
    except ResumeError as exc:
        raise ResumeError(f"{what}: {exc}") from None
    if not path.is_file():  # stopped before its first checkpoint: again from the start
        run_ids = [r.info.run_id for r in runs]
        why = None
        every = int(resolved.get("checkpoint_every") or 0)
        if not _whole(runs, replicas):
            why = (f"was stopped while its runs were being created ({len(run_ids)} of "
                   f"{replicas}); run it again without resume")
        elif every and (done := _episodes_logged(client, runs)) >= every:
            why = (f"has no checkpoint at {path}, though its runs hold {done} episodes "
                   f"(checkpoint_every={every}): it was removed")
        if why is not None:
            lock.release()
            raise ResumeError(f"{what}: job {job_id} {why}")
        return Plan(job_id, path.parent, run_ids, lock=lock, restart=True)
    try:
        header, state = checkpoint.read(path)
        run_ids = [r.info.run_id for r in runs]
        if header.get("job_id") != job_id or header.get("run_ids") != run_ids:
            raise CheckpointError(f"checkpoint {path}: belongs to job {header.get('job_id')} "
                                  f"(runs {header.get('run_ids')}), not job {job_id} (runs "
                                  f"{run_ids})")
        if header.get("config_hash") != h:
            diff = checkpoint.config_diff(header.get("config") or {}, resolved)
            raise CheckpointError(f"checkpoint {path}: written for another config; differing "
                                  f"keys: {', '.join(diff) if diff else '(hash only)'}")
    except BaseException:
        lock.release()
        raise
    return Plan(job_id, path.parent, run_ids, lock=lock, state=state)


def end_abandoned(p: Plan, uri: str) -> None:
    """End (KILLED, with why) the runs :func:`plan` found left RUNNING by jobs stopped while
    their runs were being created: this job trains their config again, in runs of its own."""
    if not p.abandoned:
        return
    client = store.client_for(uri)
    why = (f"stopped while its job's runs were being created; trained again as job "
           f"{p.job_id} (resume=auto)" if not p.skip else
           f"stopped while its job's runs were being created; job {p.job_id} trained the same "
           "config to the end (resume=auto)")
    for run_id in p.abandoned:
        client.set_tag(run_id, "error", why)
        client.set_terminated(run_id, "KILLED")
    log.info("ended %d run(s) left RUNNING by a job stopped while its runs were being "
             "created", len(p.abandoned))
    p.abandoned = []


def restore(p: Plan, env, agent, evaluator, episodes: int, eval_every: int) -> None:
    """Put a resumed plan's checkpoint into the freshly built objects; sets ``p.start``."""
    if p.state is None:
        return
    stat_keys = tuple(getattr(agent, "stat_keys", ()))
    hist = History.empty(env.num_envs, episodes, eval_every,
                         evaluator.keys if evaluator else (), stat_keys)
    loop = loop_state(env.num_envs, stat_keys)
    try:
        checkpoint.restore(p.path, p.state, env, agent, evaluator, hist, loop)
    except BaseException:
        p.release()
        raise
    p.start, p.state = (hist, loop), None


def announce(p: Plan) -> None:
    """Log (INFO: qlab-train's stderr, the job log) what happens to a resumed or skipped job."""
    if p.skip:
        log.info("job %s already FINISHED (%d run(s)); skipped (resume=auto)", p.job_id,
                 len(p.run_ids))
    elif p.restart:
        log.info("job %s stopped before its first checkpoint: training it again from the "
                 "start into its %d run(s)", p.job_id, len(p.run_ids))
    elif p.run_ids:
        done = p.start[0].done if p.start else []
        log.info("resuming job %s from %s at episodes %s", p.job_id, p.path,
                 list(map(int, done)))
