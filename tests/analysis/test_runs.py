"""Loading a sweep from MLflow into pandas: every way of naming it finds the same runs, and
the frames hold exactly what MLflow stores."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from qlab.analysis.runs import AnalysisError, load_sweep, redact

N_RUNS = 2 * 2 * 3


def test_load_by_experiment_sweep_id_and_parent_agree(small_sweep) -> None:
    by_name = load_sweep(small_sweep.experiment, uri=small_sweep.uri)
    assert by_name.n_runs == N_RUNS
    assert by_name.parent_run_id and by_name.sweep_id
    by_id = load_sweep(sweep_id=by_name.sweep_id, uri=small_sweep.uri)
    by_parent = load_sweep(parent=by_name.parent_run_id, uri=small_sweep.uri)
    ids = set(by_name.runs["run_id"])
    assert set(by_id.runs["run_id"]) == ids == set(by_parent.runs["run_id"])
    assert by_id.experiment == by_parent.experiment == small_sweep.experiment
    assert by_parent.sweep_id == by_name.sweep_id
    assert "overrides" in by_name.parent["params"]


def test_runs_frame_is_tidy(loaded) -> None:
    s = loaded
    runs = s.runs
    assert runs["run_id"].is_unique
    assert set(runs["agent"]) == {"tabular_q", "tabular_mc"}
    assert sorted(runs["seed"].unique()) == [0, 1, 2]
    assert set(runs["status"]) == {"FINISHED"}
    assert set(runs["parent_run_id"]) == {s.parent_run_id}
    assert sorted(runs["params.exploration.decay"].unique()) == [0.99, 0.995]  # numeric
    assert runs["params.agent.name"].dtype == object  # strings stay strings
    assert s.column("exploration.decay") == "params.exploration.decay"
    assert s.column("agent") == "agent"
    with pytest.raises(AnalysisError):
        s.column("no.such.key")


def test_history_equals_mlflow(small_sweep, loaded) -> None:
    s = loaded
    h = s.history
    assert list(h.columns) == ["run_id", "key", "step", "value"]
    assert not h.duplicated(["run_id", "key", "step"]).any()
    client = MlflowClient(small_sweep.uri)
    run_id = s.runs["run_id"].iloc[0]
    for key in ("train/q_delta", "eval/optimal_fraction"):
        raw = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        mine = h[(h["run_id"] == run_id) & (h["key"] == key)].sort_values("step")
        assert list(zip(mine["step"], mine["value"], strict=True)) == raw
    # Every run has every training episode of every train metric.
    lengths = h[h["key"] == "train/episode_length"].groupby("run_id")["step"]
    counts = lengths.agg(["min", "max", "size"])
    assert (counts["min"] == 0).all() and (counts["max"] == 29).all()
    assert (counts["size"] == 30).all()
    # The final metric columns are the last point of each history.
    last = h[h["key"] == "eval/q_error"].sort_values("step").groupby("run_id")["value"].last()
    final = s.runs.set_index("run_id")["metrics.eval/q_error"]
    np.testing.assert_array_equal(final.loc[last.index].to_numpy(), last.to_numpy())
    wide = s.metric("train/episode_length")
    assert wide.shape == (30, N_RUNS)


def test_keys_restrict_history(small_sweep) -> None:
    s = load_sweep(small_sweep.experiment, uri=small_sweep.uri, keys=["train/q_delta"])
    assert set(s.history["key"]) == {"train/q_delta"}
    assert len(s.history) == N_RUNS * 30


@pytest.mark.parametrize("kwargs, message", [
    ({"experiment": "nope"}, "no experiment 'nope'"),
    ({"parent": "0123456789abcdef0123456789abcdef"}, "no run '0123456789abcdef"),
    ({"sweep_id": "no-such-sweep"}, "no runs of sweep 'no-such-sweep'"),
    ({}, "name an experiment"),
])
def test_unknown_things_raise_one_line(small_sweep, kwargs, message) -> None:
    with pytest.raises(AnalysisError) as info:
        load_sweep(uri=small_sweep.uri, **kwargs)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_child_run_is_not_a_parent(small_sweep) -> None:
    s = load_sweep(small_sweep.experiment, uri=small_sweep.uri, history=False)
    child = s.runs["run_id"].iloc[0]
    with pytest.raises(AnalysisError, match="not a sweep's parent run"):
        load_sweep(parent=child, uri=small_sweep.uri)


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://qlab:s3cret@db/mlflow") == "postgresql://qlab:***@db/mlflow"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_an_experiment_without_runs(small_sweep) -> None:
    client = MlflowClient(small_sweep.uri)
    if client.get_experiment_by_name("empty") is None:
        client.create_experiment("empty")
    with pytest.raises(AnalysisError, match="experiment 'empty' has no runs"):
        load_sweep("empty", uri=small_sweep.uri)


def test_a_history_ending_in_nan_is_loaded_from_sql_and_from_other_stores(
        tmp_path, sqlite_store, monkeypatch) -> None:
    """A curve whose last value is NaN (``eval/episodes_to_optimal`` of a run that never
    solved) shows as NaN among the runs' final metrics, like a curve never logged; both the
    one-query path (SQL stores) and the per-(run, key) path (servers) still load it."""
    from mlflow.entities import Metric

    from qlab.tracking import metric_points

    uri = sqlite_store(tmp_path)
    client = MlflowClient(uri)
    exp = client.create_experiment("nan-end")
    solved, never = (client.create_run(exp).info.run_id for _ in range(2))
    client.log_batch(solved, metrics=[Metric("eval/x", v, 0, e) for e, v in [(0, 1.0), (1, 2.0)]])
    client.log_batch(never, metrics=[Metric("eval/x", v, 0, e)
                                     for e, v in [(0, 5.0), (1, float("nan"))]])
    client.log_batch(never, metrics=[Metric("train/y", 3.0, 0, 0)])
    loaded = {}
    for path in ("sql", "per run and key"):
        if path != "sql":
            monkeypatch.setattr(metric_points, "histories", lambda *args: None)
        h = load_sweep("nan-end", uri=uri).history
        loaded[path] = sorted((r, k, s, repr(v)) for r, k, s, v in h.itertuples(index=False))
    assert loaded["sql"] == loaded["per run and key"] == sorted([
        (solved, "eval/x", 0, "1.0"), (solved, "eval/x", 1, "2.0"),
        (never, "eval/x", 0, "5.0"), (never, "eval/x", 1, "nan"), (never, "train/y", 0, "3.0")])
