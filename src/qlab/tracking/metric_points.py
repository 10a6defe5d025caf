"""Runs' metric points in bulk: the new points of all of a job's runs written in one
transaction, many runs' histories read back in one query.

MLflow's ``log_batch`` builds one ORM object per point and then compares each with the run's
latest value of its key: ~5-13k points/s on a sqlite store, most of a tracked job's time
(the headline sweep writes ~120k points). Into a store MLflow reaches through its
``SqlAlchemyStore`` (sqlite, PostgreSQL, MySQL; not an ``http://`` server, whose own store
does the writing) the points go in bulk instead: one multi-row insert into MLflow's own
``metrics`` table (its SQLAlchemy model, so its schema) and the ``latest_metrics`` rows of the
written keys updated as ``log_batch`` would (the latest point by step, then timestamp, then
value), for all the runs of a write in one transaction on the store's own session, after the
same check that each run is still active (one commit per flush of a job, not one per run).
If that transaction fails, the runs are written one at a time, as ``log_batch`` calls in
order would be. The rows are those ``log_batch`` writes (NaN stored as 0 with ``is_nan``,
infinities as the largest float); ``tests/test_metric_points.py`` checks both paths leave
identical tables. Any other store, a point already in the store (a duplicate key of MLflow's
table) or an MLflow whose store lacks what this relies on: ``log_batch``.

Reading back (:func:`histories`, for reports and a sweep's summary) is likewise one query
over the ``metrics`` table for all the runs and keys, where MLflow's client asks once per run
and key (``get_metric_history``); it gives the values that call gives.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

LARGEST = 1.7976931348623157e308  # what MLflow's SQL store writes for +-inf
RUNS_PER_QUERY = 500  # run ids bound in one query (databases limit bound parameters)


class Series(NamedTuple):
    """Points of one metric key: ``values[i]`` at ``steps[i]``, all logged at ``timestamp``
    (milliseconds since the epoch)."""
    key: str
    steps: np.ndarray
    values: np.ndarray
    timestamp: int


def write(client: MlflowClient, points: Mapping[str, Sequence[Series]]) -> None:
    """Write each run's ``points`` (run id -> its series): into an SQL store every run's in
    one transaction, else one ``log_batch`` per run. If the transaction fails (a run no
    longer active, a point a run already holds), the runs are written one at a time in
    order, as ``log_batch`` calls would be: those before a refused run are written."""
    points = {run: kept for run, series in points.items()
              if (kept := [s for s in series if len(s.steps)])}
    if not points:
        return
    sql = _sql_store(client)
    if sql is not None and len(points) > 1:
        try:
            _insert(sql, points)
            return
        except MlflowException:
            pass  # find the run it was, and write the others: one at a time
    for run_id, series in points.items():
        _write_run(client, sql, run_id, series)


def _write_run(client: MlflowClient, sql, run_id: str, series: Sequence[Series]) -> None:
    if sql is not None:
        from sqlalchemy.exc import IntegrityError

        try:
            _insert(sql, {run_id: series})
            return
        except MlflowException as exc:  # the store's session turns database errors into these
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            # a point the run already holds (a duplicate key): log_batch skips it
    client.log_batch(run_id, metrics=as_metrics(series), synchronous=True)


def histories(client: MlflowClient, run_ids: Sequence[str], keys: Sequence[str]
              ) -> pd.DataFrame | None:
    """Every point the runs hold of the metric ``keys``: columns run_id, key, step, value,
    timestamp (a NaN value as NaN), in no particular order; None when the store is not SQL
    (ask ``get_metric_history``)."""
    sql = _sql_store(client)
    if sql is None:
        return None
    from mlflow.store.tracking.dbmodels.models import SqlMetric
    from sqlalchemy import select

    t = SqlMetric.__table__
    columns = (t.c.run_uuid, t.c.key, t.c.step, t.c.value, t.c.timestamp, t.c.is_nan)
    parts = []
    with sql.ManagedSessionMaker() as session:
        for i in range(0, len(run_ids), RUNS_PER_QUERY):  # bounded bound parameters
            query = select(*columns).where(t.c.run_uuid.in_(run_ids[i:i + RUNS_PER_QUERY]),
                                           t.c.key.in_(list(keys)))
            parts.append(pd.DataFrame(session.execute(query).all(),
                                      columns=["run_id", "key", "step", "value", "timestamp",
                                               "is_nan"]))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["run_id", "key", "step", "value", "timestamp", "is_nan"])
    frame = frame.astype({"step": np.int64, "value": np.float64, "timestamp": np.int64})
    frame.loc[frame.pop("is_nan").astype(bool).to_numpy(), "value"] = np.nan
    return frame


def as_metrics(series: Sequence[Series]) -> list[Metric]:
    """The points as MLflow ``Metric`` entities (what ``log_batch`` takes)."""
    return [Metric(s.key, float(v), s.timestamp, int(e))
            for s in series for e, v in zip(s.steps, s.values, strict=True)]


def _sql_store(client: MlflowClient):
    """The client's ``SqlAlchemyStore``, or None (another store, or one without the session
    and run checks this module uses)."""
    try:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        sql = client._tracking_client.store
    except Exception:  # noqa: BLE001 - no SQL store here: log_batch
        return None
    if not isinstance(sql, SqlAlchemyStore) or not all(
            hasattr(sql, name) for name in ("ManagedSessionMaker", "_get_run",
                                            "_check_run_is_active")):
        return None
    return sql


def _write_session(sql):
    """A session of the store that may write (MLflow >= 3.x marks them ``read_only=False``;
    earlier ones have no such flag)."""
    if "read_only" in inspect.signature(sql.ManagedSessionMaker).parameters:
        return sql.ManagedSessionMaker(read_only=False)
    return sql.ManagedSessionMaker()


def _stored(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(value, is_nan) as MLflow's SQL store keeps a point's value."""
    values = np.asarray(values, dtype=np.float64)
    is_nan = np.isnan(values)
    return np.clip(np.where(is_nan, 0.0, values), -LARGEST, LARGEST), is_nan


def _insert(sql, points: Mapping[str, Sequence[Series]]) -> None:
    """Every run's points in one transaction: the runs checked active, the points inserted,
    each run's latest value of each written key updated (rows locked in run, key order)."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric
    from sqlalchemy import insert

    rows, latest = [], {}
    for run_id, series in points.items():
        for s in series:
            steps = np.asarray(s.steps, dtype=np.int64)
            values, is_nan = _stored(s.values)
            rows += [{"key": s.key, "value": v, "timestamp": s.timestamp, "step": e,
                      "is_nan": n, "run_uuid": run_id}
                     for e, v, n in zip(steps.tolist(), values.tolist(), is_nan.tolist(),
                                        strict=True)]
            i = np.lexsort((values, steps))[-1]  # the latest: by step, then value (one time)
            point = (int(steps[i]), s.timestamp, float(values[i]), bool(is_nan[i]))
            if (run_id, s.key) not in latest or point[:3] > latest[run_id, s.key][:3]:
                latest[run_id, s.key] = point
    runs = sorted(points)
    keys = sorted({key for _, key in latest})
    with _write_session(sql) as session:
        for run_id in points:
            sql._check_run_is_active(sql._get_run(run_uuid=run_id, session=session))
        session.execute(insert(SqlMetric.__table__), rows)
        old = {}
        for i in range(0, len(runs), RUNS_PER_QUERY):  # bounded bound parameters
            old.update({(m.run_uuid, m.key): m for m in session.query(SqlLatestMetric).filter(
                SqlLatestMetric.run_uuid.in_(runs[i:i + RUNS_PER_QUERY]),
                SqlLatestMetric.key.in_(keys))
                .order_by(SqlLatestMetric.run_uuid, SqlLatestMetric.key).with_for_update()})
        for (run_id, key), (step, timestamp, value, is_nan) in latest.items():
            m = old.get((run_id, key))
            if m is None:
                session.add(SqlLatestMetric(run_uuid=run_id, key=key, value=value,
                                            timestamp=timestamp, step=step, is_nan=is_nan))
            elif (step, timestamp, value) > (m.step, m.timestamp, m.value):
                m.step, m.timestamp, m.value, m.is_nan = step, timestamp, value, is_nan


__all__ = ["Series", "as_metrics", "histories", "write"]
