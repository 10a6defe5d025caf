"""kill -9 at any moment: a fresh sqlite store is never left half-created (it is made beside
its path and renamed into place; one found half-created is rebuilt if it holds no runs,
refused in one line if it does), and a job killed before its first checkpoint is resumed from
the start into its own runs. The slow test kills ``qlab-train`` on a fresh store at 20
moments spread over its life, then resumes and reruns it."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import qlab.app.train
from qlab.app.build import build
from qlab.core import driver
from qlab.tracking import store
from tests.helpers import (
    QLAB_TRAIN,
    clean_env,
    metric_history,
    one_error_line,
    run_process,
    runs_of,
    sqlite_uri,
)


def break_store(db: Path) -> None:
    """What a kill in the middle of MLflow's migrations leaves behind."""
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("CREATE TABLE _alembic_tmp_experiments (x INTEGER)")


def test_half_created_store_is_rebuilt_or_refused(tmp_path, sqlite_store) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    db = d / "mlflow.db"
    sqlite_store(d)
    assert store.half_created(db) is None
    break_store(db)
    assert store.half_created(db) == "an interrupted schema migration"
    store.client_for(sqlite_uri(d)).search_experiments()  # no runs: moved aside, made anew
    assert store.half_created(db) is None  # made beside its path, renamed: nothing left over
    assert sorted(p.name for p in d.iterdir() if "half-created" not in p.name) == [
        "mlflow.db", "mlflow.db.lock"]
    assert len(list(d.glob("mlflow.db.half-created-*"))) == 1

    uri = sqlite_store(tmp_path)  # a store holding a run is never moved
    client = MlflowClient(uri)
    client.create_run("0")
    break_store(tmp_path / "mlflow.db")
    with pytest.raises(store.StoreError, match=r"left half-created \(an interrupted schema "
                                               r"migration\) and holds 1 run\(s\)"):
        store.client_for(uri)


def test_a_job_stopped_before_its_first_checkpoint_resumes_into_its_runs(
        tmp_path, sqlite_store, compose_cfg, monkeypatch, experiment) -> None:
    uri = sqlite_store(tmp_path)
    args = ["episodes=30", "replicas=2", "checkpoint_every=1000", f"tracking.uri={uri}",
            f"experiment_name={experiment}"]
    train = driver.train

    def killed(*a, **k):
        raise KeyboardInterrupt  # the runs end KILLED, no checkpoint was written

    monkeypatch.setattr(driver, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        qlab.app.train.run(compose_cfg(args))
    monkeypatch.setattr(driver, "train", train)
    client = MlflowClient(uri)
    before = runs_of(client, experiment)
    assert [r.info.status for r in before] == ["KILLED", "KILLED"]
    qlab.app.train.run(compose_cfg([*args, "resume=last"]))
    after = runs_of(client, experiment)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)
    assert [r.info.status for r in after] == ["FINISHED", "FINISHED"]
    assert all(len(metric_history(client, r.info.run_id, "train/episode_return")) == 30
               for r in after)
    with pytest.raises(Exception, match="has finished"):
        qlab.app.train.run(compose_cfg([*args, f"resume={after[0].info.run_id}"]))


def test_a_job_whose_fastest_replica_ran_past_the_first_checkpoint_resumes_into_its_runs(
        tmp_path, sqlite_store, compose_cfg, monkeypatch, experiment) -> None:
    """Killed before its first checkpoint while one replica had run past ``checkpoint_every``
    episodes (checkpoints wait for the slowest): no checkpoint was removed, so resume=auto
    trains it again into its own runs, not as a new job beside them."""
    from qlab.config import validate

    uri = sqlite_store(tmp_path)
    args = ["episodes=30", "replicas=2", "checkpoint_every=10", f"tracking.uri={uri}",
            f"experiment_name={experiment}", f"checkpoint_dir={tmp_path / 'checkpoints'}"]
    train = driver.train
    monkeypatch.setattr(driver, "train", lambda *a, **k: (_ for _ in ()).throw(
        KeyboardInterrupt()))  # the runs end KILLED before any episode or checkpoint
    with pytest.raises(KeyboardInterrupt):
        qlab.app.train.run(compose_cfg(args))
    monkeypatch.setattr(driver, "train", train)
    c = validate(compose_cfg([*args, "tracking.enabled=false"]))
    ref = driver.train(build(c), fast=c.fast)
    client = MlflowClient(uri)
    before = runs_of(client, experiment)
    ahead = before[0].info.run_id  # replica 0 sent 15 episodes, replica 1 none
    client.log_batch(ahead, metrics=[Metric(key, float(table[0, e]), 0, e)
                                     for key, table in ref.train.items() for e in range(15)])
    qlab.app.train.run(compose_cfg([*args, "resume=auto"]))
    after = runs_of(client, experiment)
    assert sorted(r.info.run_id for r in after) == sorted(r.info.run_id for r in before)
    assert {r.info.status for r in after} == {"FINISHED"}
    for k, run in enumerate(sorted(after, key=lambda r: int(r.data.tags["seed"]))):
        assert metric_history(client, run.info.run_id, "train/episode_return") == [
            (e, v) for e, v in enumerate(ref.train["train/episode_return"][k].tolist())]


class Killed(BaseException):
    """Stands in for kill -9: nothing of the process runs after it (no run is ended)."""


def _killed_while_made(monkeypatch, compose_cfg, args: list[str]) -> None:
    """Run ``args`` and die (as by kill -9) after its first run is made, before the second."""
    create_run = MlflowClient.create_run
    made: list = []

    def dies_at_second(self, *a, **k):
        if made:
            raise Killed
        made.append(create_run(self, *a, **k))
        return made[-1]

    monkeypatch.setattr(MlflowClient, "create_run", dies_at_second)
    with pytest.raises(Killed):
        qlab.app.train.run(compose_cfg(args))
    monkeypatch.setattr(MlflowClient, "create_run", create_run)


def _one_run_left(uri: str, experiment: str, checkpoint_dir: Path, monkeypatch,
                  compose_cfg) -> tuple[list[str], MlflowClient, object]:
    """A 2-replica job killed after its first run was made: its args (without the
    checkpoint_dir), the store's client and the run it left RUNNING."""
    args = ["episodes=30", "replicas=2", "checkpoint_every=10", f"tracking.uri={uri}",
            f"experiment_name={experiment}"]
    _killed_while_made(monkeypatch, compose_cfg, [*args, f"checkpoint_dir={checkpoint_dir}"])
    client = MlflowClient(uri)
    (left,) = runs_of(client, experiment)
    assert left.info.status == "RUNNING"
    return args, client, left


def test_a_job_killed_while_its_runs_were_made_leaves_no_run_running(
        tmp_path, sqlite_store, compose_cfg, monkeypatch, experiment) -> None:
    """Killed after its first run was made, before the second: resume=auto trains the config
    as a new job and ends the run left RUNNING (KILLED, saying why)."""
    ckpt = tmp_path / "checkpoints"
    args, client, left = _one_run_left(sqlite_store(tmp_path), experiment, ckpt, monkeypatch,
                                       compose_cfg)
    args.append(f"checkpoint_dir={ckpt}")
    assert not list((tmp_path / "checkpoints").iterdir())  # its lock went with the process
    qlab.app.train.run(compose_cfg([*args, "resume=auto"]))
    runs = {r.info.run_id: r for r in runs_of(client, experiment)}
    old = runs.pop(left.info.run_id)
    assert old.info.status == "KILLED"
    assert old.data.tags["error"].startswith("stopped while its job's runs were being created")
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "FINISHED"]


def test_a_run_left_running_is_ended_when_a_later_job_finished_its_config(
        tmp_path, sqlite_store, compose_cfg, monkeypatch, experiment) -> None:
    """Killed while its runs were made; the same config then trained to the end without
    resume (a new job); resume=auto skips the config and ends the run left RUNNING."""
    ckpt = tmp_path / "checkpoints"
    args, client, left = _one_run_left(sqlite_store(tmp_path), experiment, ckpt, monkeypatch,
                                       compose_cfg)
    args.append(f"checkpoint_dir={ckpt}")
    qlab.app.train.run(compose_cfg(args))  # no resume: a job of its own, FINISHED
    assert {r.info.run_id: r.info.status for r in runs_of(client, experiment)}[
        left.info.run_id] == "RUNNING"
    result = qlab.app.train.run(compose_cfg([*args, "resume=auto"]))
    assert result.history is None  # skipped: nothing trained
    runs = {r.info.run_id: r for r in runs_of(client, experiment)}
    assert len(runs) == 3
    old = runs.pop(left.info.run_id)
    assert old.info.status == "KILLED"
    assert old.data.tags["error"].startswith("stopped while its job's runs were being created; "
                                             "job ") and "to the end" in old.data.tags["error"]
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "FINISHED"]


def test_runs_being_made_under_another_checkpoint_dir_are_left_alone(
        tmp_path, sqlite_store, compose_cfg, monkeypatch, experiment) -> None:
    """A job whose runs are being made by a live process (its lock held) under checkpoint_dir
    A is not taken for abandoned by resume=auto with checkpoint_dir B: the lock is looked for
    where the job's runs say its checkpoint is."""
    from qlab.app.resume import CKPT_TAG, JobLock

    common, client, left = _one_run_left(sqlite_store(tmp_path), experiment, tmp_path / "a",
                                         monkeypatch, compose_cfg)
    lock = JobLock(Path(left.data.tags[CKPT_TAG]).parent)  # as the live process holds it
    try:
        qlab.app.train.run(compose_cfg([*common, f"checkpoint_dir={tmp_path / 'b'}",
                                        "resume=auto"]))
    finally:
        lock.release()
    runs = {r.info.run_id: r for r in runs_of(client, experiment)}
    assert runs.pop(left.info.run_id).info.status == "RUNNING"
    assert sorted(r.info.status for r in runs.values()) == ["FINISHED", "FINISHED"]


# ------------------------------------------------------------------ kill -9, for real

ARGS = ["episodes=400", "replicas=2", "checkpoint_every=100", "experiment_name=kill9"]
MOMENTS = 20


def qlab_train_for(args: list[str], workdir: Path, uri: str,
                   kill_after: float | None = None) -> subprocess.CompletedProcess | None:
    """``qlab-train args``; with ``kill_after``, SIGKILLed that many seconds after its start."""
    if kill_after is None:
        return run_process([QLAB_TRAIN, *args, f"tracking.uri={uri}"], workdir, clean_env(uri))
    proc = subprocess.Popen([QLAB_TRAIN, *args, f"tracking.uri={uri}"], cwd=workdir,
                            env=clean_env(uri), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return None


@pytest.fixture(scope="module")
def lifetime(tmp_path_factory) -> float:
    """Seconds an uninterrupted run takes on a fresh store here (now: the machine is shared)."""
    d = tmp_path_factory.mktemp("kill9_baseline")
    t0 = time.monotonic()
    r = qlab_train_for(ARGS, d, sqlite_uri(d))
    assert r.returncode == 0, r.stderr[-2000:]
    return time.monotonic() - t0


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("moment", range(MOMENTS))
def test_kill9_at_any_moment_then_resume_and_rerun(moment, lifetime, tmp_path) -> None:
    """Killed at (moment + 0.5) / MOMENTS of its lifetime on a fresh store: ``resume=last``
    succeeds or refuses in one line; a plain rerun succeeds; the store is whole."""
    uri = sqlite_uri(tmp_path)
    qlab_train_for(ARGS, tmp_path, uri, kill_after=lifetime * (moment + 0.5) / MOMENTS)
    db = tmp_path / "mlflow.db"
    assert not db.exists() or store.half_created(db) is None
    resumed = qlab_train_for([*ARGS, "resume=last"], tmp_path, uri)
    if resumed.returncode != 0:
        assert resumed.returncode == 2
        assert "resume=last: no unfinished job" in one_error_line(resumed.stderr)
    assert "Traceback" not in resumed.stderr
    rerun = qlab_train_for(ARGS, tmp_path, uri)
    assert rerun.returncode == 0 and "Traceback" not in rerun.stderr, rerun.stderr[-2000:]
    assert store.half_created(db) is None
    runs = runs_of(MlflowClient(uri), "kill9")
    finished = [r for r in runs if r.info.status == "FINISHED"]
    assert len(finished) in (2, 4)  # the rerun's, and the resumed job's if there was one
    running = [r for r in runs if r.info.status == "RUNNING"]
    assert running == [] or resumed.returncode == 2, [r.info.run_name for r in running]
