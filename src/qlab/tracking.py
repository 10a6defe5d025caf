"""MLflow tracking: one run per replica, params from the resolved config, metrics buffered
and written with ``log_batch``, artifacts at the end, and a terminal status on every exit.

It knows nothing of agents: it is handed a :class:`~qlab.runner.History` and arrays to save.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from qlab.config import ROOT

PARAMS_PER_BATCH = 100  # MLflow's limit of params per log_batch call


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else an absolute sqlite store at the project root."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{ROOT / 'mlflow.db'}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> dotted keys (``agent.lr``) with string values, as MLflow stores them."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out


def get_or_create_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created if missing. For a sqlite store its artifacts
    go to ``mlruns/`` beside the database, wherever the process runs."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        location = (db.parent / "mlruns").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Tracker:
    """The MLflow runs of one job's replicas; ``update(history)`` logs what is new.
    ``logged[k]`` (resumed runs) maps each metric key to the last step run k already holds:
    points up to it are never sent again."""

    def __init__(self, client: MlflowClient, run_ids: Sequence[str],
                 logged: Sequence[Mapping[str, int]] | None = None) -> None:
        self.client = client
        self.run_ids = list(run_ids)
        self.failed: dict[int, str] = {}  # replicas stopped early: index -> reason
        self._train_sent = np.zeros(len(run_ids), dtype=np.int64)
        self._eval_sent = np.zeros(len(run_ids), dtype=np.int64)
        self._logged = [dict(m) for m in logged] if logged else [{} for _ in self.run_ids]

    def update(self, history) -> None:
        """Write every metric point recorded since the last call (one log_batch per run)."""
        self.failed.update(history.failed)
        now = int(time.time() * 1000)
        for k, run_id in enumerate(self.run_ids):
            lo, hi = self._train_sent[k], history.done[k]
            elo, ehi = self._eval_sent[k], history.evals_done[k]
            old = self._logged[k]
            metrics = [Metric(key, float(v), now, int(step))
                       for key, table in history.train.items()
                       for start in (max(lo, old.get(key, -1) + 1),)
                       for step, v in zip(range(start, hi), table[k, start:hi], strict=True)]
            metrics += [Metric(key, float(v), now, int(step))
                        for key, table in history.evals.items()
                        for step, v in zip(history.eval_steps[k, elo:ehi], table[k, elo:ehi],
                                           strict=True) if step > old.get(key, -1)]
            if metrics:
                self.client.log_batch(run_id, metrics=metrics, synchronous=True)
            self._train_sent[k], self._eval_sent[k] = hi, ehi

    def log_replica_files(self, write: Callable[[int, Path], None]) -> None:
        """``write(k, directory)`` fills a fresh directory per replica; its files become
        artifacts of replica k's run."""
        for k, run_id in enumerate(self.run_ids):
            with tempfile.TemporaryDirectory() as tmp:
                write(k, Path(tmp))
                self.client.log_artifacts(run_id, tmp)

    def log_values(self, key: str, values: np.ndarray, step: int) -> None:
        """One value per replica (e.g. a summary number) as metric ``key`` at ``step``."""
        now = int(time.time() * 1000)
        for k, (run_id, v) in enumerate(zip(self.run_ids, values, strict=True)):
            if step <= self._logged[k].get(key, -1):
                continue  # logged before a resume
            self.client.log_batch(run_id, metrics=[Metric(key, float(v), now, int(step))])

    def log_text(self, name: str, text: str) -> None:
        """The same text file as an artifact of every run."""
        for run_id in self.run_ids:
            self.client.log_text(run_id, text, name)

    def finish(self, status: str, error: str | None = None, traceback: str | None = None,
               failed: Mapping[int, str] | None = None) -> None:
        """End every run with ``status``, except replicas in ``failed`` (index -> reason),
        which end FAILED with their own reason. ``error`` goes to a tag, ``traceback`` to
        an artifact."""
        failed = failed or {}
        for k, run_id in enumerate(self.run_ids):
            reason = failed.get(k, error)
            if reason is not None:
                self.client.set_tag(run_id, "error", reason[:4000])
            if traceback is not None:
                self.client.log_text(run_id, traceback, "traceback.txt")
            self.client.set_terminated(run_id, "FAILED" if k in failed else status)


class NullTracker:
    """Stands in when tracking is disabled."""

    run_ids: list[str] = []

    def update(self, history) -> None: ...
    def log_replica_files(self, write: Callable[[int, Path], None]) -> None: ...
    def log_values(self, key: str, values: np.ndarray, step: int) -> None: ...
    def log_text(self, name: str, text: str) -> None: ...


@contextlib.contextmanager
def open_runs(uri: str, experiment_name: str, params: Mapping[str, str],
              replicas: Sequence[Mapping[str, str]], run_names: Sequence[str],
              resume_ids: Sequence[str] | None = None) -> Iterator[Tracker]:
    """One MLflow run per replica; ``replicas[k]`` holds replica k's own params and tags
    (its seed). Runs end FINISHED, FAILED on an exception or KILLED on Ctrl-C.
    ``resume_ids``: continue these existing runs instead (see :func:`reopen`)."""
    client = MlflowClient(tracking_uri=uri)
    if resume_ids:
        tracker = Tracker(client, resume_ids, reopen(client, resume_ids))
    else:
        exp_id = get_or_create_experiment(client, experiment_name, uri)
        run_ids = []
        for own, name in zip(replicas, run_names, strict=True):
            run = client.create_run(exp_id, run_name=name,
                                    tags={k: str(v) for k, v in own["tags"].items()})
            run_ids.append(run.info.run_id)
            merged = {**params, **own["params"]}
            items = [Param(k, v) for k, v in merged.items()]
            for i in range(0, len(items), PARAMS_PER_BATCH):
                client.log_batch(run.info.run_id, params=items[i:i + PARAMS_PER_BATCH])
        tracker = Tracker(client, run_ids)
    try:
        yield tracker
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see qlab.train)
        tracker.finish("KILLED", error=type(exc).__name__, failed=tracker.failed)
        raise
    except BaseException as exc:
        tracker.finish("FAILED", error=f"{type(exc).__name__}: {exc}",
                       traceback=traceback.format_exc())
        raise
    else:
        tracker.finish("FINISHED", failed=tracker.failed)


def reopen(client: MlflowClient, run_ids: Sequence[str]) -> list[dict[str, int]]:
    """Set runs back to RUNNING (dropping the ``error`` tag of how they stopped); returns,
    per run, the last step it holds of each metric key."""
    logged = []
    for run_id in run_ids:
        run = client.get_run(run_id)
        logged.append({key: max((m.step for m in client.get_metric_history(run_id, key)),
                                default=-1) for key in run.data.metrics})
        if "error" in run.data.tags:
            client.delete_tag(run_id, "error")
        client.update_run(run_id, status="RUNNING")
    return logged


__all__ = ["Tracker", "NullTracker", "open_runs", "default_uri", "flatten"]
