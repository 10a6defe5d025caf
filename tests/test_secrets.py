"""Secrets are never recorded: a password inside ``tracking.uri`` appears in no param, tag,
artifact, checkpoint, Hydra output file, console line or error message -- every byte
``qlab-train`` wrote or printed (and the tracking server's store) is searched for it."""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from qlab.core.errors import QlabError
from qlab.core.secrets import ENV_PREFIX, hide_in_overrides, mask, mask_tree
from tests.helpers import QLAB_TRAIN, clean_env, free_port, run_process, runs_of, sweep_runs


@pytest.mark.parametrize(("text", "masked"), [
    ("postgresql://alice:pw@db:5432/qlab", "postgresql://alice:***@db:5432/qlab"),
    ("postgresql+psycopg://alice:p@ss@db/qlab", "postgresql+psycopg://alice:***@db/qlab"),
    ("tracking.uri=http://bob:s3cret@127.0.0.1:5000 failed",
     "tracking.uri=http://bob:***@127.0.0.1:5000 failed"),
    ("postgresql://db/qlab?user=alice&password=pw&sslmode=require",
     "postgresql://db/qlab?user=alice&password=***&sslmode=require"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    ("http://alice@127.0.0.1:5000", "http://alice@127.0.0.1:5000"),
    ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
    ("postgresql://alice:***@db/qlab", "postgresql://alice:***@db/qlab"),
])
def test_mask(text, masked) -> None:
    assert mask(text) == masked
    assert mask_tree({"a": [text, 3], "b": (text,)}) == {"a": [masked, 3], "b": (masked,)}


def test_errors_mask_their_message() -> None:
    assert str(QlabError("cannot reach postgresql://u:pw@h/db")) == (
        "cannot reach postgresql://u:***@h/db")


def test_a_password_override_moves_into_the_environment() -> None:
    args, env = hide_in_overrides(["seed=1", "tracking.uri='postgresql://u:pw@h/db'",
                                   "tracking.uri=${oc.env:MINE}"])
    assert args == ["seed=1", "tracking.uri=${oc.env:QLAB_SECRET_1}",
                    "tracking.uri=${oc.env:MINE}"]
    assert env == {"QLAB_SECRET_1": "postgresql://u:pw@h/db"}


def files_holding(root: Path, secret: bytes) -> list[str]:
    """Every file under ``root`` whose bytes contain ``secret``."""
    return [str(p) for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def check_store(client: MlflowClient, experiment: str, password: str, masked: str,
                tmp_path: Path, runs: int) -> None:
    """The experiment's runs (a sweep's parent and ``runs`` in all) hold the password nowhere:
    params, tags, ``config.yaml`` and ``environment.json``; the URI param is masked."""
    parents, _ = sweep_runs(client, experiment)
    found = runs_of(client, experiment)
    assert len(parents) == 1 and len(found) == runs
    assert "alice:***@" in parents[0].data.params["overrides"]
    for run in found:
        assert password not in repr(run.data.params) + repr(run.data.tags)
        if run.data.tags.get("qlab.role") != "sweep":
            assert run.data.params["tracking.uri"] == masked
            for name in ("config.yaml", "environment.json"):
                path = Path(client.download_artifacts(run.info.run_id, name, str(tmp_path)))
                assert password.encode() not in path.read_bytes(), name


def hydra_outputs(work: Path) -> list[Path]:
    return list(work.glob("outputs/*/*/.hydra/*.yaml")) + list(
        work.glob("multirun/*/*/*/.hydra/*.yaml"))


@pytest.fixture
def secret_env(monkeypatch):
    """qlab-train puts a hidden secret in ``QLAB_SECRET_<i>``: removed after the test."""
    yield
    for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
        del os.environ[var]


@pytest.mark.integration  # a tracking server
def test_a_password_in_tracking_uri_is_recorded_nowhere(qlab_server, tmp_path, monkeypatch,
                                                         capsys, secret_env) -> None:
    """In process (the console script's main): a single run and a sweep of two jobs."""
    import qlab.cli

    password = f"Pw-{uuid.uuid4().hex[:12]}"
    uri = qlab_server.uri.replace("http://", f"http://alice:{password}@")
    experiment = f"secrets-{uuid.uuid4().hex[:8]}"
    common = [f"tracking.uri={uri}", f"experiment_name={experiment}", "episodes=4",
              "checkpoint_every=2"]
    for args in (common, ["-m", *common, "seed=1,2"]):
        monkeypatch.setattr(sys, "argv", ["qlab-train", *args])
        qlab.cli.main()
    out = capsys.readouterr()
    assert "optimal policy" in out.err and password not in out.out + out.err
    check_store(MlflowClient(qlab_server.uri), experiment, password,
                qlab_server.uri.replace("http://", "http://alice:***@"), tmp_path, 4)
    assert len(hydra_outputs(Path.cwd())) >= 9  # 3 files of the single run and of 2 jobs
    assert files_holding(Path.cwd(), password.encode()) == []
    assert files_holding(qlab_server.db.parent, password.encode()) == []


@pytest.mark.slow
@pytest.mark.integration
def test_qlab_train_records_and_prints_no_password(qlab_server, tmp_path) -> None:
    """As a user runs it: single run, sweep, a refused resume, a server that is not there."""
    password = f"Pw-{uuid.uuid4().hex[:12]}"
    uri = qlab_server.uri.replace("http://", f"http://alice:{password}@")
    experiment = f"secrets-{uuid.uuid4().hex[:8]}"
    work = tmp_path / "work"
    work.mkdir()
    env = clean_env(qlab_server.uri)
    common = [f"tracking.uri={uri}", f"experiment_name={experiment}", "episodes=6",
              "checkpoint_every=2"]
    results = {
        "single": run_process([QLAB_TRAIN, *common, "replicas=2"], work, env),
        "sweep": run_process([QLAB_TRAIN, "-m", *common, "seed=1,2"], work, env),
        "resume": run_process([QLAB_TRAIN, *common, "replicas=2", "resume=last"], work, env),
        "no server": run_process([QLAB_TRAIN, f"tracking.uri=http://alice:{password}@127.0.0.1:"
                                  f"{free_port()}", "episodes=3"], work, env),
    }
    assert results["single"].returncode == 0, results["single"].stderr[-3000:]
    assert results["sweep"].returncode == 0, results["sweep"].stderr[-3000:]
    for name in ("resume", "no server"):
        assert results[name].returncode == 2, name
        assert "\n" not in results[name].stderr.strip(), results[name].stderr
    assert "qlab-train: error: tracking.uri=http://alice:***@127.0.0.1" in (
        results["no server"].stderr)
    for name, r in results.items():
        assert password not in r.stdout + r.stderr, (name, r.stdout + r.stderr)
    check_store(MlflowClient(qlab_server.uri), experiment, password,
                qlab_server.uri.replace("http://", "http://alice:***@"), tmp_path, 5)
    assert len(hydra_outputs(work)) >= 9
    assert files_holding(work, password.encode()) == []
    assert files_holding(qlab_server.db.parent, password.encode()) == []
