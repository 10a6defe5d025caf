"""Reproducibility: the same config and seed give the same metric histories — run twice, run
alone, batched as replica k of a job, or as a job of a parallel (joblib) sweep — and every run
records what is needed to rerun it (resolved config, package versions, git commit).

Compared: every metric MLflow holds for a run, except ``train/sps`` (env steps per second,
wall-clock). Tabular agents: exactly equal. DQN: lengths, returns and evaluations exactly,
losses and Q statistics within 1e-6 (as in tests/agents/test_dqn.py; observed bitwise equal).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import qlab.app.train
from qlab.tracking import provenance
from tests.helpers import qlab_train, run_histories, sweep_runs

AGENTS = ("tabular_q", "tabular_mc", "dqn")
COMMON = ["episodes=12", "eval_every=4", "env=griddy"]
EXACT_DQN = ("train/episode_length", "train/episode_return", "train/epsilon",
             "eval/optimal_fraction", "eval/episodes_to_optimal")


def histories(uri: str, experiment: str) -> dict[tuple[str, int], dict[str, list]]:
    """(agent, seed) -> metric key -> [(step, value)] of every run of the experiment."""
    client = MlflowClient(uri)
    out: dict[tuple[str, int], dict[str, list]] = {}
    for r in sweep_runs(client, experiment)[1]:
        run = (r.data.params["agent.name"], int(r.data.params["seed"]))
        assert run not in out, f"two runs of {run}"
        out[run] = run_histories(client, r)
    return out


def assert_same(a: dict[str, list], b: dict[str, list], agent: str, what: str) -> None:
    assert a.keys() == b.keys(), what
    for key in a:
        x, y = np.array(a[key]), np.array(b[key])
        assert x.shape == y.shape and len(x), (what, key)
        if agent == "dqn" and key not in EXACT_DQN:
            np.testing.assert_array_equal(x[:, 0], y[:, 0], err_msg=f"{what} {key}")
            np.testing.assert_allclose(x[:, 1], y[:, 1], rtol=0, atol=1e-6,
                                       err_msg=f"{what} {key}")
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"{what} {key}")


@pytest.mark.parametrize("agent", AGENTS)
def test_same_seed_twice_same_histories(agent, compose_cfg, shared_store, experiment) -> None:
    for name in ("first", "second"):
        qlab.app.train.run(compose_cfg([f"agent={agent}", *COMMON, "seed=5", "replicas=2",
                                    f"tracking.uri={shared_store}",
                                    f"experiment_name={experiment}-{name}"]))
    first = histories(shared_store, f"{experiment}-first")
    second = histories(shared_store, f"{experiment}-second")
    assert sorted(first) == [(agent, 5), (agent, 6)] and first.keys() == second.keys()
    for run in first:
        assert_same(first[run], second[run], agent, f"run {run}")
    steps = [s for s, _ in first[agent, 5]["train/episode_return"]]
    assert steps == list(range(12))


@pytest.mark.integration
def test_alone_batched_and_joblib_sweep_agree(compose_cfg, sqlite_store, tmp_path: Path) -> None:
    """Seeds 0, 1 of each agent three ways: one job of 2 replicas per agent (a basic-launcher
    sweep over agents), 6 jobs of 1 replica in 2 parallel joblib processes, and seed 1 alone
    in this process."""
    batched, swept = sqlite_store(tmp_path, "batched.db"), sqlite_store(tmp_path, "swept.db")
    alone = sqlite_store(tmp_path, "alone.db")
    agents = ",".join(AGENTS)
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(qlab_train, ["-m", f"agent={agents}", *COMMON, "seed=0", "replicas=2",
                                     "experiment_name=repro"], batched, tmp_path, 900)
        b = pool.submit(qlab_train, ["-m", f"agent={agents}", *COMMON, "seed=0,1",
                                     "replicas=1", "hydra/launcher=joblib",
                                     "hydra.launcher.n_jobs=2", "experiment_name=repro"],
                        swept, tmp_path, 900)
        for name in AGENTS:  # meanwhile, alone
            qlab.app.train.run(compose_cfg([f"agent={name}", *COMMON, "seed=1", "replicas=1",
                                        f"tracking.uri={alone}",
                                        "experiment_name=repro"]))
        a, b = a.result(), b.result()
    assert a.returncode == 0, a.stderr[-3000:]
    assert b.returncode == 0, b.stderr[-3000:]
    h_batched, h_swept = histories(batched, "repro"), histories(swept, "repro")
    h_alone = histories(alone, "repro")
    assert sorted(h_batched) == sorted(h_swept) == [(ag, s) for ag in sorted(AGENTS)
                                                    for s in range(2)]
    for run in h_batched:
        assert_same(h_batched[run], h_swept[run], run[0], f"batched vs joblib {run}")
    for name in AGENTS:
        assert_same(h_alone[name, 1], h_batched[name, 1], name, f"alone vs batched {name}")


def test_every_run_records_how_to_rerun_it(compose_cfg, shared_store, experiment,
                                           tmp_path: Path) -> None:
    result = qlab.app.train.run(compose_cfg(["episodes=3", "replicas=2",
                                             f"tracking.uri={shared_store}",
                                             f"experiment_name={experiment}"]))
    _, run_ids = result.history, result.run_ids
    client = MlflowClient(shared_store)
    record = provenance.collect()
    git = provenance.git_state()
    for run_id in run_ids:
        tags = client.get_run(run_id).data.tags
        assert tags["qlab.version"] == record["packages"]["qlab"]
        assert tags["qlab.torch_version"] == record["packages"]["torch"]
        assert tags["qlab.python"] == record["python"]
        if git is not None:  # the tests run from a git checkout of qlab
            assert tags["qlab.git_commit"] == git["commit"] and len(git["commit"]) == 40
            assert tags["qlab.git_dirty"] in ("true", "false")
        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"environment.json", "config.yaml"} <= names
        env = json.loads(Path(client.download_artifacts(run_id, "environment.json",
                                                        str(tmp_path))).read_text())
        assert set(env["packages"]) == set(provenance.PACKAGES)
        assert env["packages"]["mlflow"] and env["packages"]["numpy"]
        assert env["git"] == git and env["python"] == record["python"]


def test_no_git_no_failure(monkeypatch, tmp_path: Path) -> None:
    """Outside a git checkout, without git at all, or with no checkout (a wheel install), the
    record just has no commit."""
    monkeypatch.setattr(provenance, "source_dir", lambda: tmp_path)
    assert provenance.git_state() is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable
    assert provenance.git_state() is None
    monkeypatch.setattr(provenance, "source_dir", lambda: None)
    assert provenance.git_state() is None
    tags = provenance.tags({**provenance.collect(), "git": None})
    assert "qlab.git_commit" not in tags and tags["qlab.version"]


def test_a_qlab_inside_another_repository_records_no_commit(monkeypatch, tmp_path: Path) -> None:
    """Only qlab's own checkout gives a commit: an editable install (PEP 610 record) whose
    source directory is the top of its git checkout. A wheel (``pip install .`` too: a copy)
    has none, even in a .venv inside a user's git project; nor has a source directory inside
    some other repository: that project's commit is not qlab's."""
    import subprocess

    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    (tmp_path / "site-packages").mkdir()

    def record(url: Path, **info) -> str:
        return json.dumps({"url": url.as_uri(), **info})

    assert provenance.editable_dir(record(tmp_path, dir_info={"editable": True})) == tmp_path
    assert provenance.editable_dir(record(tmp_path, dir_info={})) is None  # pip install .
    assert provenance.editable_dir(record(tmp_path / "qlab-0.1.0-py3-none-any.whl",
                                          archive_info={})) is None
    assert provenance.editable_dir(None) is None and provenance.editable_dir("{") is None
    monkeypatch.setattr(provenance, "source_dir", lambda: tmp_path / "site-packages")
    assert provenance.git_state() is None
    monkeypatch.setattr(provenance, "source_dir", lambda: tmp_path)  # the checkout's top
    assert len(provenance.git_state()["commit"]) == 40
