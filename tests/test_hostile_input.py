"""Hostile and broken input beyond the config values: an unreachable or odd tracking store,
an artifact store that cannot be written (read-only, not a directory, full), a store that
goes away mid-run, and ``_target_`` / module paths smuggled into the config. Each gives one
``qlab-train: error:`` line and a non-zero exit, and leaves the store without runs or with
its runs ended FAILED (never RUNNING) and their metrics kept."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient

import qlab.app.train
import qlab.cli
from qlab.core.history import TRAIN_KEYS
from qlab.tracking import metric_points, store
from tests.helpers import (
    assert_no_runs,
    clean_env,
    cli_exit,
    free_port,
    one_error_line,
    runs_of,
    start_qlab_train,
)

# name: (overrides, what the one line must contain)
BAD = {
    "unreachable-server": ([f"tracking.uri=http://127.0.0.1:{free_port()}"],  # nobody there
                           "no MLflow server answers there (connection refused)"),
    "file-store": (["tracking.uri=file:///etc"], "file store is not supported"),
    "bare-path": (["tracking.uri=/etc/mlruns"], "file store is not supported"),
    "relative-sqlite": (["tracking.uri=sqlite:///relative.db"], "relative sqlite path"),
    "in-memory-sqlite": (["tracking.uri=sqlite:///:memory:"], "in-memory sqlite store"),
    "missing-dir": (["tracking.uri=sqlite:////nonexistent/qlab/mlflow.db"],
                    "directory /nonexistent/qlab does not exist"),
    "odd-scheme": (["tracking.uri=ftp://example.com/mlflow"], "unsupported scheme 'ftp'"),
    "env-target": (["+env._target_=os.system"], "env._target_: no such key"),
    "top-target": (["+_target_=os.system"], "_target_: no such key"),
    "agent-target": (["+agent._target_=builtins.exec"], "agent._target_: no such key"),
    "tracking-target": (["+tracking._target_=os.system"], "tracking._target_: no such key"),
    "hydra-callback": (["+hydra.callbacks.evil._target_=builtins.print"],
                       "hydra.callbacks.evil._target_='builtins.print': Hydra may only"),
    "hydra-launcher": (["hydra.launcher._target_=os.system"],
                       "hydra.launcher._target_='os.system': Hydra may only"),
    "env-module-import": (["agent=dqn", "env.id=antigravity:Fly-v0"],
                          "env.id='antigravity:Fly-v0': not a registered gymnasium env id"),
}


def run_main(args: list[str], monkeypatch) -> int:
    """``qlab-train episodes=3 args`` in this process; its exit code."""
    return cli_exit(monkeypatch, ["episodes=3", *args])


@pytest.mark.parametrize("name", list(BAD))
def test_refused_in_one_line_before_any_run(name, monkeypatch, capsys, tmp_path: Path,
                                            mlflow_uri: str) -> None:
    overrides, says = BAD[name]
    assert run_main(overrides, monkeypatch) not in (0, None)
    line = one_error_line(capsys.readouterr().err)
    assert says in line, line
    assert_no_runs(mlflow_uri)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, no relative.db


def test_run_refuses_an_unreachable_server(compose_cfg, mlflow_uri: str) -> None:
    """``qlab.app.train.run`` (no preflight) stops before creating anything, without retrying."""
    cfg = compose_cfg(["episodes=3", f"tracking.uri=http://127.0.0.1:{free_port()}"])
    with pytest.raises(store.StoreError, match="no MLflow server answers there"):
        qlab.app.train.run(cfg)
    assert_no_runs(mlflow_uri)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod")
def test_read_only_artifact_directory(compose_cfg, monkeypatch, capsys, tmp_path: Path,
                                      sqlite_store) -> None:
    uri = sqlite_store(tmp_path)  # the store exists
    (tmp_path / "mlruns").mkdir(mode=0o555)
    try:
        assert run_main([f"tracking.uri={uri}"], monkeypatch) not in (0, None)
        assert f"artifact directory {tmp_path}/mlruns is not writable" in one_error_line(
            capsys.readouterr().err)
        with pytest.raises(store.StoreError, match="is not writable"):
            qlab.app.train.run(compose_cfg(["episodes=3", f"tracking.uri={uri}"]))
        assert_no_runs(uri)
    finally:
        (tmp_path / "mlruns").chmod(0o755)


def test_unwritable_artifact_location_ends_runs_failed(compose_cfg, monkeypatch, capsys,
                                                       tmp_path: Path, sqlite_store) -> None:
    """An experiment whose artifact location cannot be written (under a regular file: fails
    even as root) is only found out when writing the first run's first artifact: that run
    ends FAILED with the reason, no other is created, nothing trains."""
    uri = sqlite_store(tmp_path)
    (tmp_path / "blocker").write_text("not a directory")
    MlflowClient(uri).create_experiment("blocked",
                                        artifact_location=(tmp_path / "blocker/art").as_uri())
    assert run_main([f"tracking.uri={uri}", "experiment_name=blocked", "replicas=2"],
                    monkeypatch) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot record runs in {uri}: " in line and "blocker" in line, line
    client = MlflowClient(uri)
    runs = runs_of(client, "blocked")
    assert len(runs) == 1  # the first run's first artifact failed: no second run
    for r in runs:
        assert r.info.status == "FAILED"
        assert "blocker" in r.data.tags["error"]
        assert not client.get_metric_history(r.info.run_id, "train/episode_return")


def test_full_disk_at_the_end_keeps_metrics_and_fails_runs(monkeypatch, capsys, tmp_path: Path,
                                                           sqlite_store) -> None:
    """The artifact disk fills up when the Q-tables are saved after training."""
    def full(self, local_dir, artifact_path=None):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(LocalArtifactRepository, "log_artifacts", full)
    uri = sqlite_store(tmp_path)  # the store exists
    assert run_main([f"tracking.uri={uri}", "replicas=2", "experiment_name=full"],
                    monkeypatch) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "No space left on device; the runs ended FAILED" in line, line
    client = MlflowClient(uri)
    runs = runs_of(client, "full")
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    for r in runs:
        assert r.data.tags["error"] == "OSError: [Errno 28] No space left on device"
        for key in TRAIN_KEYS:  # training finished: every episode is recorded
            assert len(client.get_metric_history(r.info.run_id, key)) == 3, key


def test_store_gone_mid_run_keeps_metrics_locally(compose_cfg, monkeypatch, tmp_path: Path,
                                                  experiment, sqlite_store) -> None:
    """Every call to the store fails once training is under way (as when a server dies):
    the job stops with one line naming where every metric point was saved (./qlab-unsent/,
    the test's own cwd)."""
    uri = sqlite_store(tmp_path)
    calls = {"n": 0}
    real = metric_points.write

    def dying(client, points):
        calls["n"] += 1
        if calls["n"] > 6:
            raise MlflowException("API request failed: Connection refused")
        return real(client, points)

    def gone(self, *args, **kwargs):
        if calls["n"] > 6:
            raise MlflowException("API request failed: Connection refused")
        raise AssertionError("not expected before the failure")

    monkeypatch.setattr(metric_points, "write", dying)
    monkeypatch.setattr(MlflowClient, "set_tag", gone)
    cfg = compose_cfg(["replicas=2", "episodes=40", f"tracking.uri={uri}",
                       f"experiment_name={experiment}", "tracking.flush_seconds=1e-9"])
    with pytest.raises(store.StoreError, match="lost the tracking store") as info:
        qlab.app.train.run(cfg)
    assert f"saved to {tmp_path / 'qlab-unsent'}/<run id>.csv" in str(info.value)
    client = MlflowClient(uri)
    runs = runs_of(client, experiment)
    assert len(runs) == 2
    sent = kept = 0
    for r in runs:
        n = len(client.get_metric_history(r.info.run_id, "train/episode_return"))
        rows = (tmp_path / "qlab-unsent" / f"{r.info.run_id}.csv").read_text().splitlines()
        assert rows[0] == "key,step,value"
        steps = [int(row.split(",")[1]) for row in rows[1:]
                 if row.startswith("train/episode_return,")]
        assert steps == list(range(len(steps))) and len(steps) >= n
        sent, kept = sent + n, kept + len(steps)
    assert kept > sent  # the points the store never got are in the files


@pytest.mark.slow
def test_server_killed_mid_run(launch_server, tmp_path: Path, sqlite_store) -> None:
    """A real server dies while a job trains: the job ends within seconds with one line and
    every metric point in ./qlab-unsent/."""
    with launch_server(["--backend-store-uri", sqlite_store(tmp_path, "server.db"),
                        "--artifacts-destination", str(tmp_path / "art"), "--workers", "1"]
                       ) as uri:
        env = clean_env(drop=("QLAB_", "HYDRA_", "MLFLOW_"))
        proc = start_qlab_train(["env.height=12", "env.width=12", "replicas=2",
                                 "episodes=100000", "tracking.flush_seconds=0.2",
                                 f"tracking.uri={uri}", "experiment_name=dies"],
                                tmp_path, env, stdout=None)
        client = MlflowClient(uri)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.5)
            exp = client.get_experiment_by_name("dies")
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if len(runs) == 2 and all(client.get_metric_history(r.info.run_id,
                                                                "train/q_delta") for r in runs):
                break
        else:
            proc.kill()
            pytest.fail("training never logged metrics")
        sent = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "train/q_delta"))
                for r in runs}
    # the server is gone (its process group was stopped)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1
    assert "Traceback" not in err, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("qlab-train:")]
    assert len(lines) == 1 and "lost the tracking store" in lines[0], err[-3000:]
    for run_id, n in sent.items():
        rows = (tmp_path / "qlab-unsent" / f"{run_id}.csv").read_text().splitlines()
        steps = [int(r.split(",")[1]) for r in rows[1:] if r.startswith("train/q_delta,")]
        assert steps == list(range(len(steps))) and len(steps) >= n


def test_an_existing_sqlite_file_in_a_read_only_directory_is_refused(tmp_path, monkeypatch):
    """sqlite writes its journal beside the database: a writable file in a read-only
    directory cannot be used (os.access stubbed: as root every path is writable)."""
    from qlab.tracking import store

    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    monkeypatch.setattr(store.os, "access", lambda p, mode: Path(p) != tmp_path)
    with pytest.raises(store.StoreError, match=f"{tmp_path} is not writable"):
        store.check(f"sqlite:///{db}")
