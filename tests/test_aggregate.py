"""Aggregate runs (tracking.replica_runs=false): one MLflow run per sweep point whose curves
are the exact mean (and std) of the per-replica runs of the same seeds, whose
replicas.parquet reads back bit for bit, which resume bit-exactly, and which qlab-report
expands into per-replica rows so its report equals the per-replica sweep's."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

import qlab.app.train
from qlab.analysis import load_sweep
from qlab.analysis.report import build_report
from qlab.config import ConfigError, validate
from qlab.config.schema import AUTO_REPLICA_RUNS_MAX
from qlab.sweeps import fused, preflight
from qlab.tracking import aggregate
from tests.helpers import WALL_CLOCK, assert_same_history, metric_history, runs_of, stop_job

DECAYS = ("0.9", "0.97")
R = 3  # replicas per point
POINT = ["~hparams", "env=griddy", f"replicas={R}", "eval_every=10"]


def fused_job(*extra: str, episodes: int = 40, checkpoint_every: int = 0) -> list[str]:
    """One fused job of two points (the two decays), seeds 0..R-1 each."""
    (job,) = fused.fuse(preflight.job_overrides(
        [*POINT, f"episodes={episodes}", f"checkpoint_every={checkpoint_every}",
         f"exploration.decay={','.join(DECAYS)}", *extra]))
    return job


@pytest.fixture(scope="module")
def both(tmp_path_factory, compose_cfg, sqlite_store) -> dict:
    """The same fused job recorded twice in one store: one run per replica (experiment
    ``replicas``), one aggregate run per point (``aggregate``)."""
    uri = sqlite_store(tmp_path_factory.mktemp("aggregate"))
    out = {"uri": uri}
    for name, mode in (("replicas", "true"), ("aggregate", "false")):
        out[name] = qlab.app.train.run(compose_cfg(fused_job(
            f"tracking.uri={uri}", f"experiment_name={name}", f"tracking.replica_runs={mode}")))
    return out


@pytest.mark.training
def test_a_fused_job_gives_one_aggregate_run_per_point_with_the_exact_mean(both) -> None:
    client = MlflowClient(both["uri"])
    per_run = {r.info.run_id: r for r in runs_of(client, "replicas")}
    agg = both["aggregate"]
    assert len(per_run) == 2 * R and len(agg.run_ids) == 2
    assert len(runs_of(client, "aggregate")) == 2
    for p, (run_id, decay) in enumerate(zip(agg.run_ids, DECAYS, strict=True)):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags[aggregate.AGGREGATE_TAG] == "true"
        assert run.data.params["exploration.decay"] == decay
        assert (run.data.params["replicas"], run.data.params["seeds"]) == (str(R), f"0..{R - 1}")
        assert run.info.run_name == f"tabular_q-griddy-seed0..{R - 1}"
        members = [per_run[i] for i in both["replicas"].run_ids[p * R:(p + 1) * R]]
        assert {m.data.params["exploration.decay"] for m in members} == {decay}
        for key in run.data.metrics:
            base = key.replace("_std/", "/").replace(aggregate.OPTIMAL_SHARE,
                                                     "eval/optimal_fraction")
            if base in WALL_CLOCK:
                continue
            steps, values = zip(*metric_history(client, run_id, key), strict=True)
            rows = [metric_history(client, m.info.run_id, base) for m in members]
            assert all([s for s, _ in r] == list(steps) for r in rows), key
            table = np.array([[v for _, v in r] for r in rows])
            if "_std/" in key:
                expected = table.std(axis=0)
            elif key == aggregate.OPTIMAL_SHARE:
                expected = (table == 1.0).mean(axis=0)
            elif key == "eval/episodes_to_optimal":  # over the replicas that got there
                expected = np.nanmean(table, axis=0)
            else:
                expected = table.mean(axis=0)
            np.testing.assert_array_equal(values, expected, err_msg=key)
        assert {"train_std/episode_return", "eval_std/q_error",
                aggregate.OPTIMAL_SHARE} <= set(run.data.metrics)


def test_the_per_replica_table_reads_back_bit_exact(both, tmp_path) -> None:
    client = MlflowClient(both["uri"])
    agg = both["aggregate"]
    h, q = agg.history, agg.q_values
    for p, run_id in enumerate(agg.run_ids):
        rows = range(p * R, (p + 1) * R)
        d = tmp_path / run_id
        table = aggregate.read_table(client.download_artifacts(run_id, aggregate.TABLE, str(d)))
        assert list(table["replica"]) == [k for k in rows for _ in range(h.episodes)]
        assert list(table["seed"]) == [k - rows.start for k in rows for _ in range(h.episodes)]
        assert list(table["episode"]) == list(range(h.episodes)) * R
        for key, t in h.train.items():  # bit for bit, NaN included
            assert table[key].to_numpy().view(np.uint64).tolist() == \
                t[rows.start:rows.stop].ravel().view(np.uint64).tolist(), key
        for key, t in h.evals.items():
            at = table.dropna(subset=[key])
            assert list(at["episode"]) == list(h.eval_steps[rows.start:rows.stop].ravel())
            np.testing.assert_array_equal(at[key], t[rows.start:rows.stop].ravel())
        tables = np.load(client.download_artifacts(run_id, "q_tables.npy", str(d)))
        np.testing.assert_array_equal(tables, q[rows.start:rows.stop])


def test_a_table_of_replicas_stopped_apart_puts_each_evaluation_at_its_episode() -> None:
    """Replicas that finished different episodes and evaluations (one stopped before its
    first, slots past a replica's evaluations holding junk): each evaluation value is on
    the row of the episode it followed, and only there."""
    from types import SimpleNamespace

    done = np.array([6, 3, 0, 5])
    evals_done = np.array([3, 1, 0, 2])
    eval_steps = np.array([[1, 3, 5], [1, 99, -7], [42, 42, 42], [1, 3, 12]])
    rng = np.random.default_rng(0)
    h = SimpleNamespace(done=done, evals_done=evals_done, eval_steps=eval_steps,
                        train={"train/x": rng.random((4, 6))},
                        evals={"eval/a": rng.random((4, 3)), "eval/b": rng.random((4, 3))})
    table = aggregate.replica_table(h, range(1, 4), np.array([8, 9, 10])).to_pandas()
    assert list(zip(table["replica"], table["episode"], strict=True)) == [
        (1, 0), (1, 1), (1, 2), (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]
    assert list(table["seed"]) == [8] * 3 + [10] * 5
    for key, t in h.evals.items():
        expected = np.full(8, np.nan)
        expected[[1, 4, 6]] = t[1, 0], t[3, 0], t[3, 1]
        np.testing.assert_array_equal(table[key], expected)
    np.testing.assert_array_equal(table["train/x"], np.r_[h.train["train/x"][1, :3],
                                                          h.train["train/x"][3, :5]])


@pytest.mark.slow  # two full reports (figures, bootstrap): seconds of CPU beyond the budget
def test_report_of_an_aggregate_sweep_matches_the_per_replica_one(both, tmp_path) -> None:
    """qlab-report expands each aggregate run into its replicas: the same scores, groups and
    bootstrap CIs as the per-replica runs', and value maps from q_tables.npy."""
    out = {}
    for name in ("replicas", "aggregate"):
        sweep = load_sweep(name, uri=both["uri"])
        assert len(sweep.runs) == 2 * R
        report = build_report(sweep, tmp_path / name, n_resamples=200)
        assert any(p.name.startswith("values_") for p in report.figures), report.notes
        out[name] = {f: pd.read_csv(tmp_path / name / "data" / f)
                     for f in ("runs.csv", "aggregates.csv")}
    pd.testing.assert_frame_equal(out["replicas"]["aggregates.csv"],
                                  out["aggregate"]["aggregates.csv"])
    ids = ["run_id", "run_name"]
    a, b = (out[n]["runs.csv"].drop(columns=ids) for n in ("replicas", "aggregate"))
    pd.testing.assert_frame_equal(a, b)


def test_an_aggregate_job_resumes_bit_exact(tmp_path, compose_cfg, sqlite_store) -> None:
    uri = sqlite_store(tmp_path)
    job = fused_job(f"tracking.uri={uri}", "experiment_name=agg-resume",
                    "tracking.replica_runs=false", f"checkpoint_dir={tmp_path}/ckpt",
                    episodes=100, checkpoint_every=10)
    stop_job(compose_cfg, job)
    client = MlflowClient(uri)
    killed = runs_of(client, "agg-resume")
    assert len(killed) == 2 and {r.info.status for r in killed} == {"KILLED"}
    resumed = qlab.app.train.run(compose_cfg([*job, f"resume={killed[0].info.run_id}"]))
    assert sorted(resumed.run_ids) == sorted(r.info.run_id for r in killed)
    alone = qlab.app.train.run(compose_cfg([*job, "experiment_name=agg-alone"]))
    assert_same_history(resumed.history, alone.history)
    by_decay = {client.get_run(r).data.params["exploration.decay"]: r for r in alone.run_ids}
    for run_id in resumed.run_ids:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        twin = by_decay[run.data.params["exploration.decay"]]
        for key in run.data.metrics:
            if key.split("/")[-1] != "sps":  # NaN points too (episodes_to_optimal)
                np.testing.assert_array_equal(metric_history(client, run_id, key),
                                              metric_history(client, twin, key), err_msg=key)
        tables = [aggregate.read_table(client.download_artifacts(r, aggregate.TABLE,
                                                                 str(tmp_path / r)))
                  for r in (run_id, twin)]
        cols = [c for c in tables[0].columns if not c.endswith("/sps")]
        pd.testing.assert_frame_equal(tables[0][cols], tables[1][cols])


def test_replica_runs_setting(compose_cfg) -> None:
    """auto: a run per replica up to the threshold (5 seeds are 5 runs), aggregate above;
    anything but true, false or auto is a one-line error naming the key."""
    tracking = validate(compose_cfg([])).tracking
    assert tracking.replica_runs == "auto"
    assert not tracking.aggregate(5) and not tracking.aggregate(AUTO_REPLICA_RUNS_MAX)
    assert tracking.aggregate(AUTO_REPLICA_RUNS_MAX + 1)
    assert validate(compose_cfg(["tracking.replica_runs=false"])).tracking.aggregate(1)
    assert not validate(compose_cfg(["tracking.replica_runs=true"])).tracking.aggregate(10**6)
    with pytest.raises(ConfigError, match=r"^tracking.replica_runs='sometimes': must be true, "
                                          r"false or auto$"):
        validate(compose_cfg(["tracking.replica_runs=sometimes"]))

