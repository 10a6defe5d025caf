"""Concurrent writers lose nothing: 4 processes, started together, each record 20 runs
(qlab.tracking.open_runs, one metric point per episode flushed after every episode, as a
job with 20 replicas and ``tracking.flush_seconds`` ~0 does) into one store — a fresh sqlite
file the processes race to create, and a tracking server. Every run and every point arrives.
"""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from qlab.core.history import EVAL_KEYS, TRAIN_KEYS
from tests.helpers import clean_env, run_process, runs_of, sqlite_uri

pytestmark = pytest.mark.integration  # writer processes

PROCESSES, RUNS, EPISODES, EVAL_EVERY = 4, 20, 4, 2

# One writer process: 20 runs (the replicas of one job), EPISODES flushes of one point per
# train key per run, an eval every EVAL_EVERY episodes; values encode (worker, run, step).
WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from qlab import tracking
    from qlab.core.history import EVAL_KEYS, History

    uri, experiment, worker = sys.argv[1], sys.argv[2], int(sys.argv[3])
    R, E, every = {runs}, {episodes}, {every}
    seeds = [worker * R + k for k in range(R)]
    replicas = [{{"params": {{"seed": str(s)}}, "tags": {{"seed": s, "worker": worker}}}}
                for s in seeds]
    with tracking.open_runs(uri, experiment, {{"writer": "test"}}, replicas,
                            [f"w{{worker}}-r{{s}}" for s in seeds]) as tracker:
        h = History.empty(R, E, every, EVAL_KEYS)
        for e in range(E):
            for key in h.train:
                h.train[key][:, e] = np.array(seeds) * 1000 + e
            h.done[:] = e + 1
            if e in h.eval_steps[0]:
                i = int(h.evals_done[0])
                for key in h.evals:
                    h.evals[key][:, i] = -(np.array(seeds) * 1000 + e)
                h.evals_done[:] = i + 1
            tracker.update(h)
""").format(runs=RUNS, episodes=EPISODES, every=EVAL_EVERY)


def write_concurrently(uri: str, experiment: str, cwd: Path) -> None:
    env = clean_env(drop=("QLAB_", "MLFLOW_TRACKING"))

    def one(worker: int) -> subprocess.CompletedProcess:
        return run_process([sys.executable, "-c", WRITER, uri, experiment, str(worker)], cwd,
                           env)

    with ThreadPoolExecutor(PROCESSES) as pool:
        results = list(pool.map(one, range(PROCESSES)))
    for r in results:
        assert r.returncode == 0, r.stderr[-3000:]


def assert_everything_arrived(uri: str, experiment: str, db: Path) -> None:
    """Runs through the MLflow API; metric points counted in the store's database (one query,
    not 480 history requests)."""
    client = MlflowClient(uri)
    runs = runs_of(client, experiment)
    assert len(runs) == PROCESSES * RUNS
    assert {r.info.status for r in runs} == {"FINISHED"}
    seed_of = {r.info.run_id: int(r.data.params["seed"]) for r in runs}
    assert sorted(seed_of.values()) == list(range(PROCESSES * RUNS))
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT run_uuid, key, step, value FROM metrics").fetchall()
    got: dict[tuple[int, str], list] = {}
    for run_id, key, step, value in rows:
        if run_id in seed_of:
            got.setdefault((seed_of[run_id], key), []).append((step, value))
    evals = list(range(EVAL_EVERY - 1, EPISODES, EVAL_EVERY))
    want = {}
    for seed in seed_of.values():
        for key in TRAIN_KEYS:
            want[seed, key] = [(e, seed * 1000.0 + e) for e in range(EPISODES)]
        for key in EVAL_KEYS:
            want[seed, key] = [(e, -(seed * 1000.0 + e)) for e in evals]
    assert {k: sorted(v) for k, v in got.items()} == want
    assert len(rows) == PROCESSES * RUNS * (len(TRAIN_KEYS) * EPISODES
                                            + len(EVAL_KEYS) * len(evals))
    for r in runs[:: RUNS // 2]:  # a sample of runs: their artifacts are there too
        assert "environment.json" in {a.path for a in client.list_artifacts(r.info.run_id)}


def test_four_processes_into_one_fresh_sqlite_store(tmp_path: Path) -> None:
    """The store does not exist yet: the processes also race to create it."""
    uri = sqlite_uri(tmp_path)
    write_concurrently(uri, "concurrent", tmp_path)
    assert_everything_arrived(uri, "concurrent", tmp_path / "mlflow.db")


@pytest.mark.slow  # ~70 s here: a server start and 80 runs over HTTP
def test_four_processes_into_one_server(qlab_server, tmp_path: Path, experiment) -> None:
    write_concurrently(qlab_server.uri, experiment, tmp_path)
    assert_everything_arrived(qlab_server.uri, experiment, qlab_server.db)
