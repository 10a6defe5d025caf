"""MLflow tracking: one run per replica (or one aggregate run per sweep point, see
:mod:`qlab.tracking.aggregate`), params from the resolved config, metrics buffered and
written in one transaction per run and flush (:mod:`qlab.tracking.metric_points`: in bulk
into an SQL store, else ``log_batch``), each run's files in one upload at the end, and a
terminal status on every exit.

What goes to MLflow's metric store, and why not everything: a job of 64 replicas x 5000
episodes x 5 curves (1.6M points) would make every later read of the store (the UI, reports)
slow, and the UI's charts fetch at most 320 sampled points per line anyway. So the
per-episode curves (``train/*``) are logged for every episode up to ``max_points``, then
thinned by doubling strides (every 2nd episode up to 2 x max_points, every 4th up to 4 x,
...), always with each replica's last episode (``train/sps``, a noisy wall-clock figure, as
if ``max_points`` were :data:`THROUGHPUT_POINTS`); ``eval/*`` points are all logged. The
complete per-episode table of every replica is kept beside them as the run artifact
``episodes.csv`` (an aggregate run: ``replicas.parquet``), written when the run ends,
whatever its status.

It knows nothing of agents: it is handed a :class:`~qlab.core.history.History` and arrays
to save.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from qlab.config import flatten
from qlab.core.secrets import mask
from qlab.tracking import aggregate, metric_points, provenance, store
from qlab.tracking.metric_points import Series
from qlab.tracking.store import StoreError

PARAMS_PER_BATCH = 100  # MLflow's limit of params per log_batch call

log = logging.getLogger(__name__)


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else an absolute sqlite store in the working directory
    (``make`` targets set the variable: the checkout's ``mlflow.db``)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def get_or_create_experiment(client: MlflowClient, name: str, uri: str,
                              artifacts: str | None = None) -> str:
    """The id of experiment ``name``, created if missing, its artifacts where
    :func:`qlab.tracking.store.artifact_location` says (``artifacts``: ``tracking.artifacts``;
    for a sqlite store ``mlruns/`` beside the database, wherever the process runs)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = store.artifact_location(uri, artifacts)
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# train/sps (env steps per second of each episode) is wall-clock and noisy: its curve in
# MLflow is thinned as if max_points were this (every episode up to 10, then every 2nd up to
# 20, every 4th up to 40, ...: ~35 points for 300 episodes, ~50 for 3000); every episode's
# value stays in the per-episode table.
THROUGHPUT_KEY = "train/sps"
THROUGHPUT_POINTS = 10


def curve_steps(lo: int, hi: int, max_points: int | None) -> np.ndarray:
    """The episodes in [lo, hi) whose ``train/*`` points go to MLflow: all of them below
    ``max_points`` (or with ``max_points`` None), then every 2nd up to 2 x max_points, every
    4th up to 4 x, ... (so a run of N episodes logs about max_points x (1 + log2(N /
    max_points) / 2) points per curve). Deterministic in the episode index alone, so a
    resumed run picks the same ones."""
    e = np.arange(lo, hi)
    if not max_points:
        return e
    stride = np.ones_like(e)
    far = e >= max_points
    stride[far] = 2 ** (np.floor(np.log2(e[far] / max_points)).astype(np.int64) + 1)
    return e[e % stride == 0]


class Tracker:
    """The MLflow runs of one job: one per replica, or with ``aggregate`` one per sweep point
    (:mod:`qlab.tracking.aggregate`); run j records the replicas ``groups[j]`` (default: run
    k is replica k). ``update(history)`` logs what is new; :meth:`log_files` stages each run's
    files, uploaded with the run's last metrics in one ``log_artifacts`` call when it ends.
    ``logged[j]`` (resumed runs) maps each metric key to the last step run j already holds:
    points up to it are never sent again."""

    def __init__(self, client: MlflowClient, run_ids: Sequence[str],
                 max_points: int | None = None,
                 logged: Sequence[Mapping[str, int]] | None = None,
                 groups: Sequence[range] | None = None, aggregate: bool = False,
                 seeds: Sequence[int] | None = None, environment: str | None = None) -> None:
        self.client = client
        self.run_ids = list(run_ids)
        self.max_points = max_points
        self.groups = (list(groups) if groups is not None
                       else [range(k, k + 1) for k in range(len(self.run_ids))])
        self.aggregate = aggregate
        self.seeds = np.asarray(seeds if seeds is not None else [], dtype=np.int64)
        self.environment = environment  # provenance JSON, the environment.json artifact
        self.failed: dict[int, str] = {}  # replicas stopped early: index -> reason
        self._train_sent = np.zeros(len(run_ids), dtype=np.int64)
        self._eval_sent = np.zeros(len(run_ids), dtype=np.int64)
        # per run, each metric key's last step in the store (resumed runs: what they hold)
        self._logged = [dict(m) for m in logged] if logged else [{} for _ in self.run_ids]
        self._history = None  # the last history seen (also kept locally if the store goes)
        self._evals: dict[str, np.ndarray] = {}  # log_evals, sent at the end
        self._staging: tempfile.TemporaryDirectory | None = None
        self._closed = False

    # ---- metric points

    def _block(self, j: int, table: np.ndarray, cols) -> np.ndarray:
        m = self.groups[j]
        return table[m.start:m.stop, cols]

    def _series(self, key: str, block: np.ndarray, steps: np.ndarray, now: int) -> list[Series]:
        """The points of ``key`` at ``steps`` from its values (members x steps): the one
        replica's, or the mean with its spread for an aggregate run."""
        if not self.aggregate:
            return [Series(key, steps, block[0], now)]
        mean, std = aggregate.mean_and_std(block)
        out = [Series(key, steps, mean, now), Series(aggregate.spread_key(key), steps, std, now)]
        if key == "eval/optimal_fraction":
            out.append(Series(aggregate.OPTIMAL_SHARE, steps, aggregate.optimal_share(block),
                              now))
        return out

    def _points(self, history, j: int, hi: int, ehi: int, now: int) -> list[Series]:
        """Run j's points from its episodes [sent, hi) and evaluations [sent, ehi)."""
        lo, elo, old = self._train_sent[j], self._eval_sent[j], self._logged[j]
        metrics: list[Series] = []
        for key, table in history.train.items():
            steps = self._curve_steps(key, max(lo, old.get(key, -1) + 1), hi)
            if steps.size:
                metrics += self._series(key, self._block(j, table, steps), steps, now)
                old[key] = int(steps[-1])
        if ehi > elo:
            first = self.groups[j].start  # an aggregate's evaluations pair up by their order
            eval_steps = history.eval_steps[first, elo:ehi]
            for key, table in history.evals.items():
                new = eval_steps > old.get(key, -1)
                if new.any():
                    cols = np.arange(elo, ehi)[new]
                    metrics += self._series(key, self._block(j, table, cols), eval_steps[new],
                                            now)
                    old[key] = int(eval_steps[new][-1])
        self._train_sent[j], self._eval_sent[j] = max(lo, hi), max(elo, ehi)
        return metrics

    def _curve_steps(self, key: str, lo: int, hi: int) -> np.ndarray:
        """The episodes in [lo, hi) whose ``key`` point goes to MLflow: :func:`curve_steps`
        with ``max_points`` (``train/sps``, a wall-clock throughput: at most
        :data:`THROUGHPUT_POINTS`, so it is log-spaced)."""
        points = self.max_points
        if key == THROUGHPUT_KEY:
            points = min(points or THROUGHPUT_POINTS, THROUGHPUT_POINTS)
        return curve_steps(lo, hi, points)

    def update(self, history) -> None:
        """Write the metric points recorded since the last call (every run's in one write;
        an aggregate run takes the episodes every one of its replicas has finished)."""
        self.failed.update(history.failed)
        self._history = history
        now = int(time.time() * 1000)
        with self._sending():
            points = {}
            for j, run_id in enumerate(self.run_ids):
                m = self.groups[j]
                points[run_id] = self._points(history, j,
                                              int(history.done[m.start:m.stop].min()),
                                              int(history.evals_done[m.start:m.stop].min()), now)
            metric_points.write(self.client, points)

    @contextlib.contextmanager
    def _sending(self) -> Iterator[None]:
        """Points are marked sent as they are gathered; if writing them fails, they are
        unmarked, so the next attempt (the runs' closing write) sends them again (the points
        a run already holds then go once: see :func:`metric_points.write`)."""
        saved = (self._train_sent.copy(), self._eval_sent.copy(),
                 [dict(m) for m in self._logged])
        try:
            yield
        except BaseException:
            self._train_sent, self._eval_sent, self._logged = saved
            raise

    def log_evals(self, key: str, table: np.ndarray) -> None:
        """A metric computed from the finished History, one value per replica and evaluation
        (R x evaluations, like ``history.evals[...]``; e.g. ``eval/episodes_to_optimal``),
        sent with the runs' last points: a point at each evaluation of the run (an aggregate
        run: the mean over its replicas with a value there, no spread; a replica's columns
        after its last evaluation count as its final value). Its points are sent once: a
        resumed run gets only the steps it lacks."""
        self._evals[key] = np.asarray(table, dtype=np.float64)

    def _eval_table_points(self, h, j: int, key: str, table: np.ndarray,
                           now: int) -> list[Series]:
        """Run j's points of a :meth:`log_evals` table: at the steps of its evaluations
        (an aggregate's pair up by their order, as its ``eval/*`` curves do)."""
        m = self.groups[j]
        n = int(h.evals_done[m.start:m.stop].max(initial=0))
        steps = h.eval_steps[m.start, :n]
        new = steps > self._logged[j].get(key, -1)
        if not new.any():
            return []
        block = table[m.start:m.stop, :n][:, new]
        values = block[0] if not self.aggregate else aggregate.mean_and_std(block)[0]
        self._logged[j][key] = int(steps[new][-1])
        return [Series(key, steps[new], values, now)]

    def _final_values(self, h) -> dict[str, tuple[np.ndarray, int]]:
        """Each :meth:`log_evals` table's final values (R,) at the job's last episode: the
        per-replica table's column of it (:func:`qlab.tracking.aggregate.replica_table`)."""
        return {key: (table[:, -1], h.episodes - 1) for key, table in self._evals.items()
                if table.shape[1]}

    # ---- files

    def _run_dir(self, j: int) -> Path:
        if self._staging is None:
            self._staging = tempfile.TemporaryDirectory(prefix="qlab-artifacts-")
        d = Path(self._staging.name) / str(j)
        d.mkdir(exist_ok=True)
        return d

    def log_files(self, write: Callable[[range, Path], None]) -> None:
        """``write(replicas, directory)`` writes the files of the run recording ``replicas``
        (a range: one replica, or an aggregate run's point) into ``directory``; they are
        uploaded when the run ends."""
        for j in range(len(self.run_ids)):
            write(self.groups[j], self._run_dir(j))

    def _last_points(self, h, j: int, final: bool, now: int) -> list[Series]:
        """Run j's points not yet sent when it ends (see :meth:`_close_history`)."""
        m = self.groups[j]
        done, evals_done = h.done[m.start:m.stop], h.evals_done[m.start:m.stop]
        if not final:  # a resumable stop: only what every replica finished (a mean of
            # fewer replicas would stay in the store after the resume)
            going = np.array([k not in self.failed for k in m])
            if going.any():
                done, evals_done = done[going].min(keepdims=True), evals_done[going].min(
                    keepdims=True)
        metrics = self._points(h, j, int(done.max(initial=0)), int(evals_done.max(initial=0)),
                               now)
        last = int(done.max(initial=0)) - 1
        for key, table in h.train.items():  # a finished run's curves end at its last episode
            if final and last > self._logged[j].get(key, -1):
                metrics += self._series(key, self._block(j, table, [last]), np.array([last]),
                                        now)
                self._logged[j][key] = last
        for key, table in self._evals.items():
            metrics += self._eval_table_points(h, j, key, table, now)
        return metrics

    def _close_history(self, final: bool = True) -> None:
        """Each run's last points (episodes thinning skipped, an aggregate's replicas that
        finished later, :meth:`log_evals`), its per-episode table (``episodes.csv``, or an
        aggregate's :data:`~qlab.tracking.aggregate.TABLE`), then one upload of its files.
        Not ``final`` (stopped, resumable): only points a finished run has too — an aggregate
        run's up to the episode all its running replicas finished, and no last episode off
        the thinning grid (:func:`curve_steps`): a resume continues the curve and cannot
        take a point back, so it would stay in the finished run as an extra one."""
        h = self._history
        if h is None or self._closed:
            return
        now = int(time.time() * 1000)
        with self._sending():
            metric_points.write(self.client, {run_id: self._last_points(h, j, final, now)
                                              for j, run_id in enumerate(self.run_ids)})
        try:  # every run's metrics are in: now their files
            for j, run_id in enumerate(self.run_ids):
                self._upload_files(h, j, run_id)
        except Exception as exc:
            raise _FilesFailed(_one_line(exc)) from exc
        self._closed = True
        self._drop_staging()

    def _upload_files(self, h, j: int, run_id: str) -> None:
        """Run j's per-episode table, environment.json and staged files, in one upload."""
        m = self.groups[j]
        d = self._run_dir(j)
        if self.aggregate:
            aggregate.write_table(aggregate.replica_table(
                h, m, self.seeds[m.start:m.stop], self._final_values(h)), d / aggregate.TABLE)
        else:
            k, n = m.start, int(h.done[m.start])
            table = pd.DataFrame({key.removeprefix("train/"): t[k, :n]
                                  for key, t in h.train.items()})
            table.index.name = "episode"
            table.to_csv(d / "episodes.csv")
        if self.environment is not None:
            (d / provenance.ARTIFACT).write_text(self.environment)
        self.client.log_artifacts(run_id, str(d))

    def _drop_staging(self) -> None:
        if self._staging is not None:
            self._staging.cleanup()
            self._staging = None

    # ---- ending

    def _run_failure(self, j: int, failed: Mapping[int, str]) -> tuple[str | None, bool]:
        """(why, whether the run failed): a replica run fails with its replica; an aggregate
        run only when every replica of its point failed (the reasons go in its error tag)."""
        m = self.groups[j]
        reasons = [failed[k] for k in m if k in failed]
        if not reasons:
            return None, False
        if not self.aggregate:
            return reasons[0], True
        why = f"{len(reasons)} of {len(m)} replicas stopped: " + "; ".join(reasons)
        return why, len(reasons) == len(m)

    def finish(self, failed: Mapping[int, str]) -> None:
        """Write each run's last points and files, then end the runs FINISHED, except those
        of replicas in ``failed`` (index -> reason), FAILED with their own reason. If the
        final write fails the runs still end, FAILED with why, and :class:`StoreError` says
        so: the job is not complete (its checkpoint stays for a resume)."""
        try:
            self._close_history()
        except Exception as exc:
            reason = (str(exc) if isinstance(exc, _FilesFailed)
                      else f"writing the final metrics failed: {_one_line(exc)}")
            self._end("FAILED", reason, failed)
            raise StoreError(f"{reason}; the runs ended FAILED") from exc
        self._end("FINISHED", None, failed)

    def _end(self, status: str, error: str | None, failed: Mapping[int, str],
             traceback: str | None = None) -> None:
        """Tag (``error``, or a failed replica's own reason) and end every run."""
        self._drop_staging()
        for j, run_id in enumerate(self.run_ids):
            why, run_failed = self._run_failure(j, failed)
            reason = why if why is not None else error
            if reason is not None:
                self.client.set_tag(run_id, "error", mask(reason)[:4000])
            if traceback is not None:  # optional: a full artifact store must not stop this
                with contextlib.suppress(OSError, MlflowException):
                    self.client.log_text(run_id, mask(traceback), "traceback.txt")
            self.client.set_terminated(run_id, "FAILED" if run_failed else status)

    def finish_after_error(self, status: str, error: str, traceback: str | None = None,
                           failed: Mapping[int, str] | None = None) -> Exception | None:
        """:meth:`finish` when something already went wrong: the traceback artifact is
        optional (a full or read-only artifact store must not leave runs RUNNING), and the
        first error talking to the store stops the attempt. Returns that error, if any."""
        failed = failed or {}
        try:
            self._close_history(final=False)  # the last points and files, if the store allows
        except Exception as exc:  # noqa: BLE001
            if "Max retries exceeded" in str(exc):  # the server is gone: no more waiting
                self._drop_staging()
                return exc
        try:
            self._end(status, error, failed, traceback)
        except Exception as exc:  # noqa: BLE001 - the store itself is gone
            return exc
        return None

    def save_local(self, directory: Path) -> Path:
        """Every metric point of the last history in ``directory``: one CSV (key, step,
        value) per replica run, an aggregate run's per-replica table as
        ``<run id>.parquet``: what is kept when the store goes away mid-run."""
        directory.mkdir(parents=True, exist_ok=True)
        h = self._history
        for j, run_id in enumerate(self.run_ids):
            if self.aggregate:
                if h is not None:
                    m = self.groups[j]
                    aggregate.write_table(aggregate.replica_table(
                        h, m, self.seeds[m.start:m.stop], self._final_values(h)),
                        directory / f"{run_id}.parquet")
                continue
            k = self.groups[j].start
            with open(directory / f"{run_id}.csv", "w", newline="") as f:
                out = csv.writer(f)
                out.writerow(["key", "step", "value"])
                if h is None:
                    continue
                for key, table in h.train.items():
                    out.writerows((key, step, repr(float(table[k, step])))
                                  for step in range(h.done[k]))
                for key, table in {**h.evals, **self._evals}.items():
                    out.writerows((key, int(h.eval_steps[k, i]), repr(float(table[k, i])))
                                  for i in range(h.evals_done[k]))
        return directory


class _FilesFailed(Exception):
    """Uploading a run's files failed (the message: what failed, one line)."""


class NullTracker:
    """Stands in when tracking is disabled."""

    run_ids: list[str] = []

    def update(self, history) -> None: ...
    def log_files(self, write: Callable[[range, Path], None]) -> None: ...
    def log_evals(self, key: str, table: np.ndarray) -> None: ...


@contextlib.contextmanager
def open_runs(uri: str, experiment_name: str, params: Mapping[str, str],
              replicas: Sequence[Mapping[str, str]], run_names: Sequence[str],
              max_points: int | None = None,
              resume_ids: Sequence[str] | None = None,
              groups: Sequence[range] | None = None, aggregate: bool = False,
              seeds: Sequence[int] | None = None,
              artifacts: str | None = None) -> Iterator[Tracker]:
    """One MLflow run per replica, or with ``aggregate`` one per sweep point: run j records
    the replicas ``groups[j]`` (whose ``seeds`` an aggregate's table lists); ``replicas[j]``
    holds run j's own params and tags (its seed). Runs end FINISHED, FAILED on an exception
    or KILLED on Ctrl-C.

    A store that cannot be used raises :class:`~qlab.tracking.store.StoreError` (one line):
    before any run exists when :func:`qlab.tracking.store.check` sees it, else with the runs
    ended FAILED and, if the store went away altogether, every metric point saved to
    ``./qlab-unsent/``.
    ``max_points``: see :func:`curve_steps`. ``resume_ids``: continue these existing runs
    instead (see :func:`reopen`). ``artifacts``: ``tracking.artifacts``, where a new
    experiment keeps its artifacts (:func:`qlab.tracking.store.artifact_location`)."""
    store.check(uri)
    if not resume_ids:
        store.artifact_location(uri, artifacts)  # refused before any run exists
    client = store.client_for(uri)
    record = provenance.collect()
    environment = provenance.to_json(record)
    run_ids: list[str] = []
    logged = None
    try:
        if resume_ids:
            run_ids = list(resume_ids)  # ended again below if reopening fails part-way
            logged = reopen(client, resume_ids)
        else:
            exp_id = get_or_create_experiment(client, experiment_name, uri, artifacts)
            common = provenance.tags(record)
            for own, name in zip(replicas, run_names, strict=True):
                run = client.create_run(exp_id, run_name=name, tags={
                    **common, **{k: mask(str(v)) for k, v in own["tags"].items()}})
                run_ids.append(run.info.run_id)
                merged = {**params, **own["params"]}
                items = [Param(k, mask(str(v))) for k, v in merged.items()]
                for i in range(0, len(items), PARAMS_PER_BATCH):
                    client.log_batch(run.info.run_id, params=items[i:i + PARAMS_PER_BATCH])
                if len(run_ids) == 1:  # once, first: an unwritable artifact store shows
                    # before any other run or training (every run gets environment.json
                    # with its other files when it ends)
                    client.log_text(run.info.run_id, environment, provenance.ARTIFACT)
    except KeyboardInterrupt as exc:  # Ctrl-C while the runs are being made: none RUNNING
        Tracker(client, run_ids).finish_after_error("KILLED", type(exc).__name__)
        raise
    except Exception as exc:
        Tracker(client, run_ids).finish_after_error("FAILED", f"{type(exc).__name__}: {exc}")
        raise StoreError(f"cannot record runs in {store.masked(uri)}: {_one_line(exc)}") from exc
    tracker = Tracker(client, run_ids, max_points, logged, groups, aggregate, seeds,
                      environment)
    try:
        yield tracker
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see qlab.app.train)
        lost = tracker.finish_after_error("KILLED", type(exc).__name__, failed=tracker.failed)
        if lost is not None:
            log.warning("%s", _keep_locally(tracker, uri, lost))
        raise
    except BaseException as exc:
        lost = tracker.finish_after_error("FAILED", f"{type(exc).__name__}: {exc}",
                                          traceback=traceback.format_exc())
        if lost is not None:
            raise _keep_locally(tracker, uri, lost) from exc
        if isinstance(exc, OSError | MlflowException):  # the store failed, e.g. a full disk
            raise StoreError(f"cannot record runs in {store.masked(uri)}: {_one_line(exc)}; "
                             "the runs ended FAILED") from exc
        raise
    else:
        try:
            tracker.finish(tracker.failed)
        except StoreError:
            raise
        except Exception as exc:  # the store went away at the very end
            raise _keep_locally(tracker, uri, exc) from exc


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


UNSENT_DIR = Path("qlab-unsent")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).split(" (Background on this error at:")[0]
    if "Max retries exceeded" in text:  # urllib3's words for a server that is gone
        text = text.split(" failed with exception")[0] + ": no connection, retries exhausted"
    return f"{type(exc).__name__}: {text[:300]}"


def _keep_locally(tracker: Tracker, uri: str, exc: BaseException) -> StoreError:
    """The store went away: save the metrics locally, say where (one line)."""
    saved = tracker.save_local(UNSENT_DIR.resolve())
    return StoreError(f"lost the tracking store {store.masked(uri)} ({_one_line(exc)}); every "
                      f"metric point of {len(tracker.run_ids)} run(s) saved to "
                      f"{saved}/<run id>.{'parquet' if tracker.aggregate else 'csv'}; once the "
                      "store is back, resume=last (a sweep: resume=auto) continues from the last "
                      "checkpoint")


__all__ = ["Tracker", "NullTracker", "open_runs", "default_uri", "flatten", "curve_steps",
           "reopen", "StoreError"]
