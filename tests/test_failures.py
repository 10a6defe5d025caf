"""Failures are recorded, not lost: a non-finite value stops only its replica, SIGTERM ends
runs KILLED with their metrics, an exception leaves its traceback."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import qlab.app.train
from qlab.core.agents.qlearning import TabularQ
from qlab.tracking import get_or_create_experiment
from tests.helpers import clean_env, runs_of, start_qlab_train


def _runs(uri: str, experiment: str) -> dict[str, object]:
    """The runs of ``experiment`` by their seed tag."""
    return {r.data.tags["seed"]: r for r in runs_of(uri, experiment)}


def test_nan_stops_only_its_replica(compose_cfg, shared_store, experiment, monkeypatch) -> None:
    real = TabularQ._learn_step

    def poisoned(self, tr):
        out = real(self, tr)
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls == 200:  # replica 1's Q (and so its Q-delta) turns NaN mid-episode
            self.q[1, tr.state[1], tr.action[1]] = np.nan
            out.abs_delta[1] = np.nan
        return out

    monkeypatch.setattr(TabularQ, "_learn_step", poisoned)
    cfg = compose_cfg(["replicas=3", "episodes=40", f"tracking.uri={shared_store}",
                       f"experiment_name={experiment}", "fast=off"])  # a patched method
    with pytest.raises(qlab.app.train.ReplicaFailure, match=r"seed 1 \(replica 1, episode \d+: "
                                                        r"train/q_delta = nan"):
        qlab.app.train.run(cfg)
    runs = _runs(shared_store, experiment)
    assert {s: r.info.status for s, r in runs.items()} == {
        "0": "FINISHED", "1": "FAILED", "2": "FINISHED"}
    assert "train/q_delta = nan" in runs["1"].data.tags["error"]
    client = MlflowClient(shared_store)
    bad = client.get_metric_history(runs["1"].info.run_id, "train/q_delta")
    assert 0 < len(bad) < 40 and np.isnan(sorted(bad, key=lambda m: m.step)[-1].value)
    assert len(client.get_metric_history(runs["0"].info.run_id, "train/q_delta")) == 40


def test_exception_leaves_traceback_artifact(compose_cfg, shared_store, experiment,
                                             monkeypatch) -> None:
    def boom(self, tr):
        raise ValueError("injected")

    monkeypatch.setattr(TabularQ, "learn", boom)
    cfg = compose_cfg(["replicas=2", "episodes=5", f"tracking.uri={shared_store}",
                       f"experiment_name={experiment}", "fast=off"])  # a patched method
    with pytest.raises(ValueError, match="injected"):
        qlab.app.train.run(cfg)
    client = MlflowClient(shared_store)
    for r in _runs(shared_store, experiment).values():
        assert r.info.status == "FAILED"
        assert r.data.tags["error"] == "ValueError: injected"
        text = client.download_artifacts(r.info.run_id, "traceback.txt")
        assert "ValueError: injected" in Path(text).read_text()


@pytest.mark.integration
def test_sigterm_ends_runs_killed_with_metrics(tmp_path: Path, sqlite_store) -> None:
    # Create the store first: polling a store that qlab-train is still migrating crashes it
    # ("table ... already exists", DESIGN trap 2).
    uri = sqlite_store(tmp_path)
    get_or_create_experiment(MlflowClient(uri), "sigterm", uri)
    proc = start_qlab_train(["env.height=12", "env.width=12", "replicas=2", "episodes=100000",
                             "tracking.flush_seconds=0.2", "experiment_name=sigterm"],
                            tmp_path, clean_env(uri), stdout=None)
    client = MlflowClient(uri)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:  # wait until metrics are flowing
            time.sleep(0.5)
            exp = (client.get_experiment_by_name("sigterm")
                   if Path(tmp_path / "mlflow.db").exists() else None)
            runs = client.search_runs([exp.experiment_id]) if exp else []
            if len(runs) == 2 and all(client.get_metric_history(r.info.run_id, "train/q_delta")
                                      for r in runs):
                break
        else:
            pytest.fail("training never logged metrics")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143  # 128 + SIGTERM, in one line, no traceback
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("qlab-train: error: stopped by SIGTERM: ")
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["KILLED", "KILLED"]
    for r in runs:
        assert r.data.tags["error"] == "Terminated"
        assert len(client.get_metric_history(r.info.run_id, "train/q_delta")) > 0
