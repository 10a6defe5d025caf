"""MLflow tracking through ``qlab.app.train.run`` against a real sqlite store in a temp dir: one
FINISHED run per replica with dotted params, tags, one metric point per episode, eval points
at the eval steps, config and Q-table artifacts; FAILED / KILLED runs keep their metrics."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

import qlab.app.train
import qlab.core.agents
from qlab import tracking
from qlab.core.history import EVAL_KEYS, TRAIN_KEYS, episodes_to_optimal
from qlab.tracking import aggregate
from tests.helpers import capture_agents, metric_history, runs_of


def steps_and_values(client: MlflowClient, run_id: str, key: str) -> tuple[list[int], list[float]]:
    points = metric_history(client, run_id, key)
    return [s for s, _ in points], [v for _, v in points]


def test_finished_runs_params_metrics_artifacts(compose_cfg, shared_store, experiment,
                                                monkeypatch, tmp_path: Path) -> None:
    R, episodes = 3, 12
    made = capture_agents(monkeypatch)
    # ~hparams: the plain defaults below, not conf/hparams/tabular_q_griddy.yaml's tuning.
    cfg = compose_cfg(["~hparams", "seed=7", f"replicas={R}", f"episodes={episodes}",
                       "eval_every=5", f"tracking.uri={shared_store}",
                       f"experiment_name={experiment}",
                       "tracking.flush_seconds=1e-9"])  # flush all the time: no duplicates
    result = qlab.app.train.run(cfg)
    hist, run_ids = result.history, result.run_ids
    agent = made[0]
    client = MlflowClient(shared_store)
    runs = {r.info.run_id: r for r in runs_of(shared_store, experiment)}
    assert set(runs) == set(run_ids) and len(run_ids) == R

    for k, run_id in enumerate(run_ids):
        run = runs[run_id]
        seed = 7 + k
        assert run.info.status == "FINISHED"
        p = run.data.params
        # The resolved config flattened to dotted keys, values as strings; seed is the replica's.
        assert p["agent.lr"] == "0.1" and p["agent.gamma"] == "0.95"
        assert p["agent.name"] == "tabular_q" and p["agent.update"] == "step"
        assert p["env.height"] == "4" and p["env.width"] == "4" and p["env.name"] == "griddy"
        assert p["exploration.decay"] == "0.995" and p["exploration.name"] == "exponential"
        assert p["episodes"] == str(episodes) and p["replicas"] == str(R)
        assert p["seed"] == str(seed)
        assert p["experiment_name"] == experiment
        tags = run.data.tags
        assert (tags["agent"], tags["env"], tags["seed"]) == ("tabular_q", "griddy", str(seed))
        assert tags["mlflow.runName"] == f"tabular_q-griddy-seed{seed}"

        # Exactly one point per episode per train key, step = episode index, the History's value.
        for key in TRAIN_KEYS:
            steps, values = steps_and_values(client, run_id, key)
            assert steps == list(range(episodes)), key
            np.testing.assert_allclose(values, hist.train[key][k], err_msg=key)
        for key in EVAL_KEYS:
            steps, values = steps_and_values(client, run_id, key)
            assert steps == [4, 9, 11], key
            np.testing.assert_allclose(values, hist.evals[key][k], err_msg=key)
        # a point at every evaluation (tests/test_tracking: episodes_to_optimal_by_hand)
        steps, _ = steps_and_values(client, run_id, "eval/episodes_to_optimal")
        assert steps == [4, 9, 11]

        names = {a.path for a in client.list_artifacts(run_id)}
        assert {"config.yaml", "q_table.npy"} <= names
        dst = tmp_path / run_id
        dst.mkdir()
        q = np.load(client.download_artifacts(run_id, "q_table.npy", str(dst)))
        assert q.shape == (16, 4)
        np.testing.assert_array_equal(q, agent.q_values()[k])
        config = OmegaConf.load(client.download_artifacts(run_id, "config.yaml", str(dst)))
        assert OmegaConf.to_container(config) == OmegaConf.to_container(cfg, resolve=True)


def episodes_to_optimal_by_hand(optimal_fraction: list[tuple[int, float]]
                                ) -> list[tuple[int, float]]:
    """From a run's ``eval/optimal_fraction`` points, (step, value): after each evaluation,
    the step at which the greedy policy's current optimal streak began (NaN when it is not
    optimal there)."""
    out, start = [], None
    for step, value in optimal_fraction:
        start = (step if start is None else start) if value == 1.0 else None
        out.append((step, math.nan if start is None else float(start)))
    return out


# Q-learning with a large step size on slippery FrozenLake: the greedy policy turns optimal,
# loses it and regains it, and ends optimal in one replica of four.
RELAPSES = ["env=frozenlake", "agent.lr=0.5", "replicas=4", "episodes=380", "eval_every=10"]


def test_episodes_to_optimal_is_a_point_at_every_evaluation(compose_cfg, shared_store,
                                                            experiment) -> None:
    """eval/episodes_to_optimal has a point at every evaluation: the episodes_to_optimal of
    the evaluations so far, NaN where the policy is not optimal (the UI draws a gap). Its
    last point, the run's value (what the UI's table, the report and the sweep summary
    read), is the final episodes_to_optimal, NaN if the final policy is not optimal. An
    aggregate run's point is the mean over the replicas that have one there."""
    per_replica, aggregated = (
        qlab.app.train.run(compose_cfg([*RELAPSES, f"tracking.uri={shared_store}",
                                        f"experiment_name={experiment}-{mode}",
                                        f"tracking.replica_runs={mode}"]))
        for mode in ("true", "false"))
    final = episodes_to_optimal(per_replica.history)
    client = MlflowClient(shared_store)
    series = []
    for k, run_id in enumerate(per_replica.run_ids):
        optimal = metric_history(client, run_id, "eval/optimal_fraction")
        got = metric_history(client, run_id, "eval/episodes_to_optimal")
        want = episodes_to_optimal_by_hand(optimal)
        np.testing.assert_array_equal(got, want, err_msg=f"replica {k}")
        value = client.get_run(run_id).data.metrics["eval/episodes_to_optimal"]
        np.testing.assert_array_equal(value, final[k])
        series.append([v for _, v in want])
    ok = np.array([[v == 1.0 for _, v in metric_history(client, run_id, "eval/optimal_fraction")]
                   for run_id in per_replica.run_ids])
    # the case this test is about: optimal, lost, regained, and the final value either way
    assert any("101" in "".join("1" if x else "0" for x in row) for row in ok)
    assert ok[:, -1].any() and not ok[:, -1].all()
    (run_id,) = aggregated.run_ids
    steps = [s for s, _ in metric_history(client, per_replica.run_ids[0], "eval/optimal_fraction")]
    got = metric_history(client, run_id, "eval/episodes_to_optimal")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an evaluation with no optimal replica
        mean = np.nanmean(np.array(series), axis=0)
    np.testing.assert_array_equal(got, list(zip(steps, mean, strict=True)))
    value = client.get_run(run_id).data.metrics["eval/episodes_to_optimal"]
    assert value == np.nanmean(final)  # the mean over the replicas that ended optimal
    assert "eval_std/episodes_to_optimal" not in client.get_run(run_id).data.metrics


def test_an_aggregate_run_of_replicas_ending_apart_ends_on_their_final_values(
        compose_cfg, shared_store, experiment, tmp_path: Path) -> None:
    """With a step budget the replicas end after different numbers of evaluations: after
    its last one a replica counts with its final value, so the aggregate run's last point
    is the mean of the final values over the replicas that ended optimal (as when it was
    logged once), not the value of the replicas evaluated longest alone."""
    result = qlab.app.train.run(compose_cfg([*RELAPSES, "total_steps=3750",
                                             f"tracking.uri={shared_store}",
                                             f"experiment_name={experiment}",
                                             "tracking.replica_runs=false"]))
    h = result.history
    final = episodes_to_optimal(h)
    longest = h.evals_done == h.evals_done.max()
    assert not longest.all() and np.isnan(final[longest]).all()  # the case at hand
    assert np.isfinite(final).sum() >= 2
    client = MlflowClient(shared_store)
    (run_id,) = result.run_ids
    steps = [s for s, _ in metric_history(client, run_id, "eval/episodes_to_optimal")]
    assert steps == h.eval_steps[0, :h.evals_done.max()].tolist()
    value = client.get_run(run_id).data.metrics["eval/episodes_to_optimal"]
    assert value == np.nanmean(final)
    # the per-replica table holds each replica's final value at its own last episode, also
    # for the replicas the budget stopped before the last episode
    table = aggregate.read_table(client.download_artifacts(run_id, aggregate.TABLE,
                                                           str(tmp_path)))
    assert (h.done < h.episodes).any()
    for k in range(h.replicas):
        column = table.loc[table["replica"] == k, "eval/episodes_to_optimal"].to_numpy()
        assert column.size == h.done[k]
        np.testing.assert_array_equal(column[-1], final[k], err_msg=f"replica {k}")
        assert np.isnan(column[:-1]).all()


def test_store_from_environment(compose_cfg, shared_store, experiment, monkeypatch) -> None:
    """Without tracking.uri, runs go to $MLFLOW_TRACKING_URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_store)
    assert tracking.default_uri() == shared_store
    result = qlab.app.train.run(compose_cfg(["episodes=3", f"experiment_name={experiment}"]))
    _, run_ids = result.history, result.run_ids
    runs = runs_of(shared_store, experiment)
    assert [r.info.run_id for r in runs] == run_ids and runs[0].info.status == "FINISHED"


def test_default_store_is_absolute_sqlite_in_the_working_directory(monkeypatch,
                                                                   tmp_path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    uri = tracking.default_uri()
    assert uri.startswith("sqlite:///") and uri.endswith("/mlflow.db")
    path = Path(uri[len("sqlite:///"):])
    assert path.is_absolute() and path.parent == tmp_path


def test_tracking_disabled_writes_nothing(compose_cfg, mlflow_uri: str, tmp_path: Path) -> None:
    result = qlab.app.train.run(compose_cfg(["episodes=3", "tracking.enabled=false"]))
    hist, run_ids = result.history, result.run_ids
    assert run_ids == [] and hist.done.tolist() == [3]
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def fail_after(monkeypatch, episodes: int, exc: BaseException) -> Callable[[], np.ndarray]:
    """Make the agent's learn raise ``exc`` once replica 0 has finished ``episodes``
    episodes; returns the live per-replica count of finished episodes."""
    finished = np.zeros(0, dtype=np.int64)
    make = qlab.core.agents.make

    def failing_make(cfg, env, seeds):
        nonlocal finished
        agent = make(cfg, env, seeds)
        finished = np.zeros(len(seeds), dtype=np.int64)
        learn = agent.learn

        def failing_learn(tr):
            if finished[0] >= episodes:
                raise exc
            upd = learn(tr)
            finished[:] += tr.done & tr.active
            return upd

        agent.learn = failing_learn
        return agent

    monkeypatch.setattr(qlab.core.agents, "make", failing_make)
    return lambda: finished


@pytest.mark.parametrize(("exc", "status"), [(RuntimeError("agent exploded"), "FAILED"),
                                             (KeyboardInterrupt(), "KILLED")])
def test_interrupted_runs_keep_their_metrics(compose_cfg, shared_store, experiment, monkeypatch,
                                             exc: BaseException, status: str) -> None:
    R, episodes = 2, 500
    finished = fail_after(monkeypatch, 8, exc)
    cfg = compose_cfg([f"replicas={R}", f"episodes={episodes}", "eval_every=3",
                       f"tracking.uri={shared_store}", f"experiment_name={experiment}",
                       "tracking.flush_seconds=1e-9", "fast=off"])  # a patched method
    with pytest.raises(type(exc)):
        qlab.app.train.run(cfg)
    done = finished()
    assert done[0] == 8
    client = MlflowClient(shared_store)
    runs = sorted(runs_of(shared_store, experiment), key=lambda r: int(r.data.tags["seed"]))
    assert len(runs) == R
    for k, run in enumerate(runs):
        assert run.info.status == status
        error = run.data.tags["error"]
        assert (error == "KeyboardInterrupt" if status == "KILLED"
                else error == "RuntimeError: agent exploded")
        # Every episode finished before the failure is there, once; nothing after it.
        for key in TRAIN_KEYS:
            steps, _ = steps_and_values(client, run.info.run_id, key)
            if key == tracking.THROUGHPUT_KEY:  # log-spaced; a stopped run gets no extra
                # last episode off that grid (its resume continues the curve: qlab issue 15)
                assert steps == tracking.curve_steps(0, done[k], 10).tolist()
            else:
                assert steps == list(range(done[k])), key
        steps, _ = steps_and_values(client, run.info.run_id, "eval/q_error")
        assert steps == [s for s in range(2, done[k], 3)]
        # computed from the finished History: a stopped job logs none of it (its resume
        # logs all of it, once)
        assert "eval/episodes_to_optimal" not in run.data.metrics
        assert "q_table.npy" not in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_a_failed_metric_write_is_sent_again_when_the_runs_end(
        compose_cfg, shared_store, experiment, monkeypatch) -> None:
    """One write fails mid-run (say the database was locked too long): the job stops FAILED
    with a one-line StoreError, and the points of that write go with the next write, so
    every episode finished is in the store once, with no gap."""
    from mlflow.exceptions import MlflowException

    from qlab.tracking import metric_points
    from qlab.tracking.store import StoreError

    calls = {"failed": 0, "after": 0}
    real = metric_points.write

    def once_failing(client, points):
        if calls["failed"]:
            calls["after"] += 1
        elif any(s.key == "train/episode_return" and s.steps[-1] >= 5
                 for series in points.values() for s in series):
            calls["failed"] += 1
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(client, points)

    monkeypatch.setattr(metric_points, "write", once_failing)
    cfg = compose_cfg(["replicas=2", "episodes=400", "eval_every=3", "fast=off",
                       f"tracking.uri={shared_store}", f"experiment_name={experiment}",
                       "tracking.flush_seconds=1e-9"])
    with pytest.raises(StoreError, match="database is locked; the runs ended FAILED"):
        qlab.app.train.run(cfg)
    client = MlflowClient(shared_store)
    runs = runs_of(shared_store, experiment)
    # the training loop's last update sends the failed write's points again
    assert len(runs) == 2 and calls == {"failed": 1, "after": 2}  # and the closing write
    held = []
    for run in runs:
        assert run.info.status == "FAILED"
        steps, _ = steps_and_values(client, run.info.run_id, "train/episode_return")
        assert steps == list(range(len(steps)))
        held.append(len(steps))
        steps, _ = steps_and_values(client, run.info.run_id, "eval/q_error")
        assert steps == list(range(2, 3 * len(steps), 3))
    assert max(held) >= 6  # episode 5, of the failed write, is in


def test_flatten() -> None:
    nested = {"agent": {"lr": 0.1, "hidden": [64, 64]}, "seed": 3, "env": {"kwargs": {}},
              "tracking": {"uri": None}}
    assert tracking.flatten(nested) == {"agent.lr": "0.1", "agent.hidden": "[64, 64]",
                                        "seed": "3", "env.kwargs": "{}", "tracking.uri": "None"}


def test_curve_steps_thin_by_doubling_strides() -> None:
    M = 8
    steps = tracking.curve_steps(0, 40, M)
    # every episode below M, every 2nd in [M, 2M), every 4th in [2M, 4M), every 8th after
    expected = [*range(0, 8), *range(8, 16, 2), *range(16, 32, 4), *range(32, 40, 8)]
    assert steps.tolist() == expected
    # chunked calls (as the flushes make them) pick the same episodes as one call
    chunks = np.concatenate([tracking.curve_steps(a, b, M) for a, b in
                             [(0, 3), (3, 9), (9, 10), (10, 33), (33, 40)]])
    assert chunks.tolist() == expected
    assert tracking.curve_steps(0, 40, None).tolist() == list(range(40))
    # a long run logs ~ M * (1 + log2(N / M) / 2) points, not N
    assert tracking.curve_steps(0, 100_000, 1000).size == 4282


def test_thinned_curves_keep_last_episode_and_full_table(compose_cfg, shared_store, experiment,
                                                         tmp_path: Path) -> None:
    R, episodes, M = 2, 23, 5
    cfg = compose_cfg([f"replicas={R}", f"episodes={episodes}", "eval_every=5",
                       f"tracking.uri={shared_store}", f"experiment_name={experiment}",
                       f"tracking.max_points={M}", "tracking.flush_seconds=1e-9"])
    result = qlab.app.train.run(cfg)
    hist, run_ids = result.history, result.run_ids
    client = MlflowClient(shared_store)
    logged = [0, 1, 2, 3, 4, 6, 8, 12, 16, 22]  # curve_steps(0, 23, 5) and the last episode
    for k, run_id in enumerate(run_ids):
        for key in TRAIN_KEYS:
            steps, values = steps_and_values(client, run_id, key)
            assert steps == logged, key
            np.testing.assert_array_equal(values, hist.train[key][k, logged], err_msg=key)
        for key in EVAL_KEYS:  # evaluations are never thinned
            steps, _ = steps_and_values(client, run_id, key)
            assert steps == [4, 9, 14, 19, 22], key
        # the final metric value (what the UI's table and the sweep summary show) is the last
        run = client.get_run(run_id)
        assert run.data.metrics["train/episode_return"] == hist.train[
            "train/episode_return"][k, -1]
        dst = tmp_path / run_id
        dst.mkdir()
        table = pd.read_csv(client.download_artifacts(run_id, "episodes.csv", str(dst)),
                            index_col="episode", float_precision="round_trip")
        assert table.index.tolist() == list(range(episodes))
        for key in TRAIN_KEYS:  # every episode, bit-exact through the CSV
            np.testing.assert_array_equal(table[key.removeprefix("train/")].to_numpy(),
                                          hist.train[key][k], err_msg=key)


@pytest.mark.parametrize("max_points", ["1000", "null"])
def test_throughput_is_log_spaced_whatever_max_points(compose_cfg, shared_store, experiment,
                                                      max_points) -> None:
    """``train/sps`` (wall-clock, noisy) gets a log-spaced curve as if ``max_points`` were 10,
    even where every other curve keeps every episode (``max_points`` 1000 or null)."""
    cfg = compose_cfg(["episodes=45", f"tracking.uri={shared_store}",
                       f"experiment_name={experiment}", f"tracking.max_points={max_points}"])
    (run_id,) = qlab.app.train.run(cfg).run_ids
    client = MlflowClient(shared_store)
    assert steps_and_values(client, run_id, tracking.THROUGHPUT_KEY)[0] == [
        *range(10), 10, 12, 14, 16, 18, 20, 24, 28, 32, 36, 40, 44]
    assert steps_and_values(client, run_id, "train/episode_length")[0] == list(range(45))


def test_max_points_must_be_positive(compose_cfg) -> None:
    from qlab.config import ConfigError, validate

    with pytest.raises(ConfigError, match=r"^tracking.max_points=0: must be >= 1$"):
        validate(compose_cfg(["tracking.max_points=0"]))
