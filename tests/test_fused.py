"""Fused sweeps (qlab.sweeps.fused, hydra/sweeper=fused): points that differ only in per-replica
values train as replicas of one job, and every run is what its unfused twin would have been —
same params, same metric histories (exact for tabular agents, DQN to the replica tolerance of
tests/agents/test_dqn.py), nested under one parent run; the preflight check covers each point."""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from qlab.analysis import load_sweep
from qlab.app import train
from qlab.app.resume import CKPT_TAG, HASH_TAG, JOB_TAG, REPLICA_TAG
from qlab.config import ConfigError
from qlab.config.batch import batch
from qlab.sweeps import fused, preflight
from tests.helpers import qlab_train, sqlite_uri

JOB_TAGS = (JOB_TAG, HASH_TAG, CKPT_TAG, REPLICA_TAG)

AGENTS, DECAYS, SEEDS = ("tabular_mc", "tabular_q", "dqn"), ("0.99", "0.995", "0.999"), range(5)

DQN_ATOL = 1e-6  # tests/agents/test_dqn.py: replica k of a batch vs a single run
EXACT_FOR_DQN = ("train/episode_length", "train/episode_return", "train/epsilon",
                 "eval/optimal_fraction")


def jobs(*overrides: str, keys=fused.FUSABLE) -> list[list[str]]:
    return fused.fuse(preflight.job_overrides(list(overrides)), keys)


# ------------------------------------------------------------------ grouping (sweeper side)

def test_points_differing_only_in_fusable_keys_become_one_job_each() -> None:
    out = jobs("agent=tabular_q,tabular_mc", "exploration.decay=0.99,0.995", "seed=0,5",
               "episodes=10")
    assert out == [
        ["agent=tabular_q", "episodes=10",
         "+qlab_fused=[{exploration.decay:0.99,seed:0},{exploration.decay:0.99,seed:5},"
         "{exploration.decay:0.995,seed:0},{exploration.decay:0.995,seed:5}]"],
        ["agent=tabular_mc", "episodes=10",
         "+qlab_fused=[{exploration.decay:0.99,seed:0},{exploration.decay:0.99,seed:5},"
         "{exploration.decay:0.995,seed:0},{exploration.decay:0.995,seed:5}]"],
    ]
    # Only the keys asked for fuse: the decays stay jobs of their own, their seeds fuse.
    assert jobs("exploration.decay=0.99,0.995", "seed=0,5", keys=["seed"]) == [
        ["exploration.decay=0.99", "+qlab_fused=[{seed:0},{seed:5}]"],
        ["exploration.decay=0.995", "+qlab_fused=[{seed:0},{seed:5}]"],
    ]
    # Nothing fusable swept: the basic sweeper's jobs, unchanged.
    assert jobs("agent=tabular_q,tabular_mc", "seed=3") == [
        ["agent=tabular_q", "seed=3"], ["agent=tabular_mc", "seed=3"]]
    with pytest.raises(ConfigError, match=r"^hydra.sweeper.fuse: 'env.id' cannot be fused; "
                                          r"allowed: seed, replicas, agent.lr"):
        jobs("seed=0,1", keys=["env.id"])


def test_each_point_of_a_fused_job_composes_as_its_own_job_would(compose_cfg) -> None:
    (job,) = jobs("agent=tabular_q", "agent.lr=0.2,0.5", "agent.gamma=0.8,0.9", "replicas=2")
    b = batch(compose_cfg(job))
    assert b.fused and b.seeds == [0, 1] * 4 and b.config.replicas == 8
    for k, (lr, gamma) in enumerate([(0.2, 0.8), (0.2, 0.9), (0.5, 0.8), (0.5, 0.9)]):
        alone = batch(compose_cfg(["agent=tabular_q", f"agent.lr={lr}",
                                         f"agent.gamma={gamma}", "replicas=2"]))
        assert not alone.fused
        for r in (2 * k, 2 * k + 1):
            assert b.params(r) == alone.params(r - 2 * k)
            assert b.resolved[r] == alone.resolved[r - 2 * k]
        assert b.config.agent.lr[2 * k:2 * k + 2].tolist() == [lr, lr]
        assert b.config.agent.gamma[2 * k:2 * k + 2].tolist() == [gamma, gamma]


def test_a_fused_job_refuses_points_that_differ_elsewhere_or_unfusable_keys(compose_cfg) -> None:
    cfg = compose_cfg(["eval_every=${seed}", "+qlab_fused=[{seed:1},{seed:2}]"])
    with pytest.raises(ConfigError, match=r"^eval_every: differs between the points"):
        batch(cfg)
    cfg = compose_cfg(["+qlab_fused=[{seed:1},{agent.name:dqn}]"])
    with pytest.raises(ConfigError, match=r"^qlab_fused: 'agent.name' cannot be fused"):
        batch(cfg)


# ------------------------------------------------------------------ one job, in process

@pytest.mark.training
@pytest.mark.parametrize("agent,setting,sweep", [
    ("tabular_q", ["agent.update=episode"],
     ["agent.lr=0.3,1.0", "agent.gamma=0.8,0.95", "exploration.decay=0.9,0.97",
      "exploration.start=1.0,0.6", "seed=0,7", "replicas=1,2"]),
    ("tabular_mc", [],
     ["agent.lr=0.05,0.3", "agent.gamma=0.8,0.95", "exploration.decay=0.9,0.97",
      "exploration.min=0.05,0.2", "seed=0,7"]),
    ("dqn", ["exploration=linear", "agent.learning_starts=64", "agent.batch_size=16",
             "agent.target_update=50"],
     ["agent.lr=0.001,0.003", "agent.gamma=0.8,0.95", "exploration.duration=5,15", "seed=0,7"]),
], ids=["tabular_q", "tabular_mc", "dqn"])
def test_a_fused_job_trains_each_point_as_its_own_job_would(compose_cfg, agent, setting,
                                                             sweep) -> None:
    """Every per-replica value (lr, gamma, the schedule's decay/start/min/duration, seeds,
    replicas) differs between the points of one job; a spread of them is run alone."""
    common = [f"agent={agent}", *setting, "episodes=25", "eval_every=5",
              "tracking.enabled=false"]
    (job,) = jobs(*common, *sweep)
    result = train.run(compose_cfg(job))
    hist, _ = result.history, result.run_ids
    points = preflight.job_overrides([*common, *sweep])
    sizes = [2 if "replicas=2" in p else 1 for p in points]
    assert hist.replicas == sum(sizes) and len(points) == 2 ** len(sweep)
    for i in range(0, len(points), 5):
        result = train.run(compose_cfg(points[i]))
        alone, _ = result.history, result.run_ids
        first = sum(sizes[:i])
        for r in range(alone.replicas):
            for table, key in [(alone.train, k) for k in alone.train if k != "train/sps"] + [
                    (alone.evals, k) for k in alone.evals]:
                got = (hist.train if table is alone.train else hist.evals)[key][first + r]
                tol = DQN_ATOL if agent == "dqn" and key not in EXACT_FOR_DQN else 0.0
                np.testing.assert_allclose(got, table[key][r], rtol=0, atol=tol,
                                           err_msg=f"{points[i]} {key}")
        if agent == "dqn":
            assert np.isfinite(alone.train["train/td_loss"]).any()  # it did learn


# ------------------------------------------------------------------ the headline sweep, end to end

def _records(uri: str, experiment: str) -> tuple[dict, dict, object]:
    """(run key -> run row, (run key, metric) -> (steps, values), the sweep) of the latest
    sweep; a run's key is (agent, decay (a float, as analysis reads it), seed)."""
    sw = load_sweep(experiment, uri=uri)
    runs = {(r["agent"], r["params.exploration.decay"], int(r["seed"])): r
            for _, r in sw.runs.iterrows()}
    assert len(runs) == len(sw.runs)
    by_id = {r["run_id"]: key for key, r in runs.items()}
    hist = {}
    for (run_id, metric), h in sw.history.groupby(["run_id", "key"]):
        h = h.sort_values("step")
        hist[(by_id[run_id], metric)] = (h["step"].to_numpy(), h["value"].to_numpy())
    return runs, hist, sw


@pytest.mark.integration
def test_headline_sweep_fused_and_unfused_record_the_same_runs(tmp_path: Path,
                                                               sqlite_store) -> None:
    quick = ["episodes=20", "eval_every=5"]
    uri_f, uri_u = sqlite_store(tmp_path, "fused.db"), sqlite_store(tmp_path, "unfused.db")
    with ThreadPoolExecutor(2) as pool:  # the two sweeps at once
        out_f = pool.submit(qlab_train, ["+experiment=epsilon_decay", *quick], uri_f, tmp_path)
        out_u = pool.submit(qlab_train, ["+experiment=epsilon_decay", *quick,
                                         "hydra/sweeper=basic"], uri_u, tmp_path)
        out_f, out_u = out_f.result(), out_u.result()
    assert out_f.returncode == 0, out_f.stderr[-3000:]
    assert out_u.returncode == 0, out_u.stderr[-3000:]
    # qlab's own line per job; Hydra's timestamped lines and +qlab_fused stay out (issue 17)
    assert len(re.findall(r"^qlab-train: job \d+: ", out_f.stderr, re.M)) == 3
    assert len(re.findall(r"^qlab-train: job \d+: ", out_u.stderr, re.M)) == 9
    assert re.search(r"^qlab-train: sweep \S+ -> MLflow experiment 'epsilon_decay', parent run ",
                     out_f.stderr, re.M)
    assert "[HYDRA]" not in out_f.stdout + out_f.stderr
    assert "qlab_fused" not in out_f.stdout + out_f.stderr

    runs_f, hist_f, sw_f = _records(uri_f, "epsilon_decay")
    runs_u, hist_u, sw_u = _records(uri_u, "epsilon_decay")
    cells = {(a, float(d), s) for a in AGENTS for d in DECAYS for s in SEEDS}
    assert set(runs_f) == set(runs_u) == cells

    # Every run nests under its sweep's one parent and finished.
    for sw, runs in ((sw_f, runs_f), (sw_u, runs_u)):
        assert sw.parent["status"] == "FINISHED"
        assert {r["parent_run_id"] for r in runs.values()} == {sw.parent_run_id}
        assert {r["status"] for r in runs.values()} == {"FINISHED"}

    # Same params and run names; tags too, but for the fused job's id.
    client_f, client_u = MlflowClient(uri_f), MlflowClient(uri_u)
    fused_jobs: dict[str, set] = {}
    for key in cells:
        rf = client_f.get_run(runs_f[key]["run_id"])
        ru = client_u.get_run(runs_u[key]["run_id"])
        assert rf.data.params == ru.data.params, key
        assert rf.info.run_name == ru.info.run_name
        tags_f = {k: v for k, v in rf.data.tags.items() if not k.startswith("mlflow.")}
        tags_u = {k: v for k, v in ru.data.tags.items() if not k.startswith("mlflow.")}
        fused_jobs.setdefault(tags_f.pop(fused.TAG), set()).add(key[0])
        assert fused.TAG not in tags_u
        for tag in ("sweep_id", *JOB_TAGS):  # per sweep / per job, so not the same
            tags_f.pop(tag), tags_u.pop(tag)
        assert tags_f == tags_u, key
    assert sorted(map(sorted, fused_jobs.values())) == [[a] for a in sorted(AGENTS)]

    # Same metric histories: exact for the tabular agents, DQN to the replica tolerance.
    keys_f = {k for k in hist_f if k[1] != "train/sps"}
    assert keys_f == {k for k in hist_u if k[1] != "train/sps"}
    trained = 0
    for k in sorted(keys_f):
        (steps_f, vals_f), (steps_u, vals_u) = hist_f[k], hist_u[k]
        np.testing.assert_array_equal(steps_f, steps_u, err_msg=str(k))
        if k[0][0] == "dqn" and k[1] not in EXACT_FOR_DQN:
            np.testing.assert_allclose(vals_f, vals_u, rtol=0, atol=DQN_ATOL, err_msg=str(k))
            trained += k[1] == "train/td_loss" and bool(np.isfinite(vals_u).any())
        else:
            np.testing.assert_array_equal(vals_f, vals_u, err_msg=str(k))
    assert trained == len(DECAYS) * len(SEEDS)  # DQN took gradient steps in every run

    # The same config artifact, and the same end-of-sweep summary.
    key = ("tabular_q", 0.995, 3)
    texts = [Path(c.download_artifacts(runs[key]["run_id"], "config.yaml", str(tmp_path / n)))
             .read_text() for c, runs, n in ((client_f, runs_f, "f"), (client_u, runs_u, "u"))]
    assert texts[0] == texts[1] and "decay: 0.995" in texts[0]
    assert _summary(out_f) == _summary(out_u)


def _summary(out: subprocess.CompletedProcess) -> list[str]:
    """The end-of-sweep table's rows, without its header line."""
    lines = out.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if "episodes to solve" in line)
    return lines[start:start + 1 + len(AGENTS) * len(DECAYS)]


# ------------------------------------------------------------------ preflight

@pytest.mark.integration
def test_preflight_refuses_a_bad_per_replica_value_of_a_fused_sweep(tmp_path: Path) -> None:
    out = qlab_train(["+experiment=epsilon_decay", "exploration.decay=0.99,1.5",
                      "episodes=2"], sqlite_uri(tmp_path), tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "qlab-train: error: exploration.decay=1.5: must be in (0, 1]"]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()
    # The same check in process, for other keys; each point is checked, not just the first.
    assert preflight.check(["hydra/sweeper=fused", "seed=0,1", "agent.lr=0.1,-1"]) == [
        "agent.lr=-1.0: must be > 0"]
    assert preflight.check(["+experiment=epsilon_decay", "agent.gamma=0.9,1.01"]) == [
        "agent.gamma=1.01: must be in [0, 1]"]
    assert preflight.check(["+experiment=epsilon_decay", "hydra.sweeper.fuse=[env.id]"]) == [
        "hydra.sweeper.fuse: 'env.id' cannot be fused; allowed: " + ", ".join(fused.FUSABLE)]
