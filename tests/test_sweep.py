"""Sweeps end to end: the headline experiment through every launcher and against a real
tracking server, a failing job, and the two spellings of a seed sweep."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from qlab.sweeps import callback as sweep
from tests.helpers import (
    WALL_CLOCK,
    cli_exit,
    metric_steps,
    qlab_train,
    run_histories,
    sqlite_uri,
    sweep_runs,
)

QUICK = ["episodes=6", "eval_every=3"]
AGENTS, DECAYS, SEEDS = ("tabular_mc", "tabular_q", "dqn"), ("0.99", "0.995", "0.999"), range(5)


def assert_headline(uri: str, seeds: range = SEEDS) -> None:
    parents, kids = sweep_runs(uri, "epsilon_decay")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert len(kids) == len(AGENTS) * len(DECAYS) * len(seeds)
    assert {r.info.status for r in kids} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in kids} == {parent.info.run_id}
    assert {r.data.tags["sweep_id"] for r in kids} == {parent.data.tags["sweep_id"]}
    cells = sorted((r.data.params["agent.name"], r.data.params["exploration.decay"],
                    int(r.data.params["seed"])) for r in kids)
    assert cells == sorted((a, d, s) for a in AGENTS for d in DECAYS for s in seeds)
    # Runs can be told apart: their names carry the swept decay (issue 17).
    assert sorted(r.info.run_name for r in kids) == sorted(
        f"{a}-griddy-decay{d}-seed{s}" for a in AGENTS for d in DECAYS for s in seeds)
    client = MlflowClient(uri)
    for r in kids:
        for key in ("train/q_delta", "train/episode_length", "train/epsilon"):
            steps = metric_steps(client, r.info.run_id, key)
            assert steps == list(range(6)), (key, steps)
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.csv", "sweep_summary.txt"} <= names


# The other launchers, and the server, run the same sweep with 2 seeds instead of 5: the
# same 3 jobs, fewer runs to record. In `make test` (6-minute budget) the joblib launcher is
# covered by test_reproducibility's joblib sweep and submitit by the SLURM cluster test
# (`make test-cluster`); their headline sweeps here are in `make test-slow`.
@pytest.mark.integration
@pytest.mark.parametrize("launcher, seeds", [
    ([], SEEDS),
    pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "replicas=2"], range(2),
                 marks=pytest.mark.slow),
    pytest.param(["hydra/launcher=submitit_local", "replicas=2"], range(2),
                 marks=pytest.mark.slow),
], ids=["basic", "joblib", "submitit_local"])
def test_headline_sweep(tmp_path: Path, launcher: list[str], seeds: range) -> None:
    """From no store at all: the sweep creates it before its jobs start (DESIGN trap 2)."""
    uri = sqlite_uri(tmp_path)
    out = qlab_train(["+experiment=epsilon_decay", *QUICK, *launcher], uri, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_headline(uri, seeds)
    assert "episodes to solve" in out.stderr  # the end-of-sweep table


def test_headline_sweep_against_server(tmp_path: Path, mlflow_server: str) -> None:
    out = qlab_train(["+experiment=epsilon_decay", *QUICK, "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", "replicas=2"], mlflow_server, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert_headline(mlflow_server, range(2))


@pytest.mark.training
def test_failing_job_marks_its_runs_and_the_parent_failed(tmp_path, monkeypatch,
                                                          sqlite_store) -> None:
    """In-process sweep (basic launcher) where the lr=0.2 job raises mid-training."""
    from hydra.core.global_hydra import GlobalHydra

    from qlab.core.agents.qlearning import TabularQ

    uri = sqlite_store(tmp_path)
    real_learn = TabularQ.learn

    def learn(self, tr):
        if self.lr[0] == 0.2 and self._rows.size and not hasattr(self, "_n"):
            self._n = 0
        if hasattr(self, "_n"):
            self._n += 1
            if self._n > 50:
                raise RuntimeError("injected failure")
        return real_learn(self, tr)

    monkeypatch.setattr(TabularQ, "learn", learn)
    monkeypatch.chdir(tmp_path)
    GlobalHydra.instance().clear()
    code = cli_exit(monkeypatch, ["-m", "agent=tabular_q", "agent.lr=0.1,0.2,0.3", "replicas=2",
                                  "episodes=20", "experiment_name=failing", f"tracking.uri={uri}",
                                  "fast=off"])  # a patched method: the numpy stepper
    GlobalHydra.instance().clear()
    assert code not in (0, None)
    parents, kids = sweep_runs(uri, "failing")
    assert [p.info.status for p in parents] == ["FAILED"]
    by_lr = {}
    for r in kids:
        by_lr.setdefault(r.data.params["agent.lr"], set()).add(r.info.status)
    assert by_lr == {"0.1": {"FINISHED"}, "0.2": {"FAILED"}, "0.3": {"FINISHED"}}
    assert not os.environ.get(sweep.PARENT_ENV)


@pytest.mark.integration
@pytest.mark.parametrize("agent", ["tabular_q", pytest.param("tabular_mc", marks=pytest.mark.slow)])
def test_seed_sweep_spellings_agree(tmp_path: Path, agent: str, sqlite_store) -> None:
    client_args = [f"agent={agent}", "episodes=30", "eval_every=10"]
    uri_a, uri_b = sqlite_store(tmp_path, "a.db"), sqlite_store(tmp_path, "b.db")
    with ThreadPoolExecutor(2) as pool:  # the two spellings at once
        a = pool.submit(qlab_train, ["-m", "seed=0,1,2", "replicas=1", *client_args], uri_a,
                        tmp_path)
        b = pool.submit(qlab_train, ["replicas=3", *client_args], uri_b, tmp_path)
        a, b = a.result(), b.result()
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])

    def histories(uri: str) -> dict:
        client = MlflowClient(uri)
        _, kids = sweep_runs(uri, "qlab")
        out = {}
        for r in kids:
            for key, hist in run_histories(client, r, skip=WALL_CLOCK).items():
                out[(r.data.tags["seed"], key)] = hist
        return out

    ha, hb = histories(uri_a), histories(uri_b)
    assert len({s for s, _ in ha}) == 3
    assert ha.keys() == hb.keys()
    for k in ha:
        assert np.array_equal(np.array(ha[k]), np.array(hb[k]), equal_nan=True), k


def test_a_rerun_that_changes_only_resume_safe_keys_is_the_same_sweep() -> None:
    """resume=auto reruns may change what a checkpoint does not depend on (resume,
    checkpoints, fast, tracking.*): still the same sweep, so the same parent run."""
    from qlab.sweeps.callback import sweep_key

    base = ["+experiment=epsilon_decay", "episodes=30", "agent=tabular_q,dqn"]
    same = [*base, "resume=auto", "checkpoint_every=5", "fast=off",
            "tracking.flush_seconds=9", "+checkpoint_dir=/tmp/x"]
    assert sweep_key(list(reversed(same))) == sweep_key(base)
    assert sweep_key([*base, "seed=1"]) != sweep_key(base)
    assert sweep_key(["+experiment=epsilon_decay", "episodes=31", "agent=tabular_q,dqn"]) \
        != sweep_key(base)


def test_a_sweep_counts_only_each_replicas_latest_attempt() -> None:
    """A job restarted afresh by a resume=auto rerun leaves its old KILLED runs under the
    parent: the sweep's status and summary use the newest run per config and replica."""
    from types import SimpleNamespace

    from qlab.app.resume import HASH_TAG, REPLICA_TAG
    from qlab.sweeps.callback import latest_attempts

    def run(run_id, start, status, cfg=None, replica=None):
        tags = {} if cfg is None else {HASH_TAG: cfg, REPLICA_TAG: str(replica)}
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id, start_time=start,
                                                    status=status), data=SimpleNamespace(tags=tags))

    runs = [run("a0-old", 1, "KILLED", "a", 0), run("a1-old", 1, "KILLED", "a", 1),
            run("b0", 2, "FINISHED", "b", 0), run("a0", 5, "FINISHED", "a", 0),
            run("a1", 5, "FINISHED", "a", 1), run("untagged", 3, "FAILED")]
    kept = latest_attempts(runs)
    assert [r.info.run_id for r in kept] == ["b0", "untagged", "a0", "a1"]
    assert [r.info.status for r in latest_attempts(runs[:5])] == ["FINISHED"] * 3
