"""qlab.tracking.metric_points: points written in bulk into an SQL store leave exactly the
rows MLflow's own ``log_batch`` leaves (``metrics`` and ``latest_metrics``), refuse a
deleted run as it does, and a point the run already holds falls back to it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from qlab.tracking import metric_points
from qlab.tracking.metric_points import Series

NAN, INF = float("nan"), float("inf")
# Two flushes of a run: NaN and infinities, ties on step broken by value, a key whose second
# flush is older than its first (its latest point stays), ties on step and time broken by
# value across flushes, one key in the second flush only.
FLUSHES = [
    [Series("train/a", np.arange(5), np.array([0.5, NAN, INF, -INF, 2.0]), 1_000),
     Series("train/b", np.array([0, 3, 7]), np.array([1.0, -1.0, 3.0]), 1_000),
     Series("eval/c", np.array([4, 4]), np.array([2.0, 1.0]), 1_000),
     Series("eval/d", np.array([2]), np.array([1.0]), 1_000),
     Series("eval/e", np.array([2]), np.array([5.0]), 1_000)],
    [Series("train/a", np.arange(5, 9), np.array([1.0, 2.0, NAN, 3.0]), 2_000),
     Series("train/b", np.array([1, 2]), np.array([9.0, 8.0]), 2_000),  # older steps
     Series("eval/c", np.array([4]), np.array([0.5]), 2_000),  # same step, later
     Series("eval/d", np.array([2]), np.array([5.0]), 1_000),  # same step and time, larger
     Series("eval/e", np.array([2]), np.array([1.0]), 1_000),  # same step and time, smaller
     Series("train/new", np.array([3]), np.array([NAN]), 2_000),
     Series("train/empty", np.array([], dtype=np.int64), np.array([]), 2_000)],
]


def _rows(db: Path, run_id: str) -> tuple[list, list]:
    with sqlite3.connect(db) as con:
        metrics = con.execute("SELECT key, value, timestamp, step, is_nan FROM metrics WHERE "
                              "run_uuid = ? ORDER BY key, step, timestamp, value",
                              (run_id,)).fetchall()
        latest = con.execute("SELECT key, value, timestamp, step, is_nan FROM latest_metrics "
                             "WHERE run_uuid = ? ORDER BY key", (run_id,)).fetchall()
    return metrics, latest


@pytest.fixture
def store(tmp_path: Path, sqlite_store) -> tuple[MlflowClient, Path, str]:
    uri = sqlite_store(tmp_path)
    client = MlflowClient(uri)
    return client, tmp_path / "mlflow.db", client.create_experiment("w")


def test_bulk_rows_equal_log_batch_rows(store, monkeypatch) -> None:
    client, db, exp = store
    bulk, batch = client.create_run(exp).info.run_id, client.create_run(exp).info.run_id
    for flush in FLUSHES:
        for s in flush:
            client.log_batch(batch, metrics=metric_points.as_metrics([s]))
    real = MlflowClient.log_batch

    def not_for_bulk(self, run_id, *args, **kwargs):
        assert run_id != bulk, "the bulk run went through log_batch"
        return real(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_batch", not_for_bulk)
    for flush in FLUSHES:
        metric_points.write(client, {bulk: flush})
    metrics, latest = _rows(db, bulk)
    assert (metrics, latest) == _rows(db, batch)
    assert len(metrics) == 22 and dict((r[0], r[1:]) for r in latest) == {
        "eval/c": (0.5, 2_000, 4, 0), "eval/d": (5.0, 1_000, 2, 0),
        "eval/e": (5.0, 1_000, 2, 0), "train/a": (3.0, 2_000, 8, 0),
        "train/b": (3.0, 1_000, 7, 0), "train/new": (0.0, 2_000, 3, 1)}
    # and MLflow reads them back as it wrote them
    assert [(m.step, m.value) for m in client.get_metric_history(bulk, "train/a")][1:4] == [
        (1, pytest.approx(NAN, nan_ok=True)), (2, 1.7976931348623157e308),
        (3, -1.7976931348623157e308)]
    latest_of = {run: {k: repr(v) for k, v in client.get_run(run).data.metrics.items()}
                 for run in (bulk, batch)}  # repr: nan == nan
    assert latest_of[bulk] == latest_of[batch]


def test_a_point_the_run_holds_goes_through_log_batch(store) -> None:
    """Writing the same points again (as after a crash between a write and the record of
    it) leaves each point once, as ``log_batch`` does."""
    client, db, exp = store
    run = client.create_run(exp).info.run_id
    metric_points.write(client, {run: FLUSHES[0]})
    once = _rows(db, run)
    metric_points.write(client, {run: FLUSHES[0]})
    assert _rows(db, run) == once


def test_a_deleted_run_is_refused_and_left_unwritten(store) -> None:
    client, db, exp = store
    run = client.create_run(exp).info.run_id
    client.delete_run(run)
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        metric_points.write(client, {run: FLUSHES[0]})
    assert _rows(db, run) == ([], [])


def _shifted(flush: list[Series], k: int) -> list[Series]:
    return [s._replace(values=s.values + k) for s in flush]


def test_several_runs_go_in_one_transaction_with_log_batch_rows(store, monkeypatch) -> None:
    """A write of several runs is one insert (one transaction) and leaves each run the rows
    its own ``log_batch`` calls would, whatever keys the runs share."""
    client, db, exp = store
    bulk = [client.create_run(exp).info.run_id for _ in range(3)]
    batch = [client.create_run(exp).info.run_id for _ in range(3)]
    for k, run in enumerate(batch):
        for flush in FLUSHES:
            for s in _shifted(flush, k)[k:]:  # run k lacks the first k keys
                client.log_batch(run, metrics=metric_points.as_metrics([s]))
    inserts = []
    real = metric_points._insert
    monkeypatch.setattr(metric_points, "_insert",
                        lambda sql, points: inserts.append(sorted(points)) or real(sql, points))
    for flush in FLUSHES:
        metric_points.write(client, {run: _shifted(flush, k)[k:] for k, run in enumerate(bulk)})
    assert inserts == [sorted(bulk)] * 2
    for b, m in zip(bulk, batch, strict=True):
        assert _rows(db, b) == _rows(db, m) and _rows(db, b)[0]


def test_a_refused_run_among_several_stops_the_write_there(store) -> None:
    """As ``log_batch`` calls in order: the runs before the deleted one are written, it is
    refused, and nothing is written after it."""
    client, db, exp = store
    runs = [client.create_run(exp).info.run_id for _ in range(3)]
    client.delete_run(runs[1])
    with pytest.raises(MlflowException, match="must be in the 'active' state"):
        metric_points.write(client, {run: FLUSHES[0] for run in runs})
    assert len(_rows(db, runs[0])[0]) == 12
    assert _rows(db, runs[1]) == _rows(db, runs[2]) == ([], [])


def test_a_point_one_of_several_runs_holds_is_written_once(store) -> None:
    client, db, exp = store
    runs = [client.create_run(exp).info.run_id for _ in range(2)]
    metric_points.write(client, {runs[0]: FLUSHES[0]})
    metric_points.write(client, {run: FLUSHES[0] for run in runs})
    assert _rows(db, runs[0]) == _rows(db, runs[1]) and len(_rows(db, runs[0])[0]) == 12


def test_histories_read_back_what_get_metric_history_gives(store) -> None:
    """One query for several runs and keys gives every point MLflow's client gives for each
    run and key (NaN as NaN, infinities as stored), and nothing of other runs or keys."""
    client, db, exp = store
    runs = [client.create_run(exp).info.run_id for _ in range(3)]
    for k, run in enumerate(runs):
        for flush in FLUSHES:
            metric_points.write(client, {run: _shifted(flush, k)})
    keys = ["train/a", "eval/c", "train/new"]
    got = metric_points.histories(client, runs[:2], keys)
    expected = [(run, key, m.step, repr(m.value), m.timestamp) for run in runs[:2]
                for key in keys for m in client.get_metric_history(run, key)]
    assert sorted(zip(got["run_id"], got["key"], got["step"], map(repr, got["value"]),
                      got["timestamp"], strict=True)) == sorted(expected)
    assert len(expected) == 2 * (9 + 3 + 1)
