"""qlab on a real PostgreSQL server (``make test-cluster``): single runs, a joblib sweep, four
processes on a fresh database, kill -9 and the database stopped mid-run (then resumed, nothing
lost: every point equals an uninterrupted run's), refusals in one line, and ``qlab-server``
over PostgreSQL (5xx reported with the server's message, SIGTERM stops its processes, no
password on a command line)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient

from qlab.tracking import store
from tests.helpers import (
    BIN,
    clean_env,
    free_port,
    one_error_line,
    qlab_train,
    run_histories,
    runs_of,
    start_qlab_train,
    sweep_runs,
)

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

QUICK = ["episodes=60", "eval_every=20"]
# Long enough to be stopped mid-run (the numpy stepper, a checkpoint every 100 episodes).
LONG = ["episodes=1500", "fast=off", "checkpoint_every=100", "eval_every=100",
        "tracking.flush_seconds=0.5", "experiment_name=long"]


def password_of(uri: str) -> str:
    return uri.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]


def error_line(stderr: str) -> str:
    """The one error line of ``stderr``, MLflow's notes of creating its schema in a fresh
    database aside (it says so at INFO level)."""
    return one_error_line("\n".join(line for line in stderr.splitlines()
                                    if " INFO mlflow.store.db.utils: " not in line))


def finished(runs) -> bool:
    return bool(runs) and all(r.info.status == "FINISHED" for r in runs)


def histories(uri: str, experiment: str) -> list[dict]:
    client = MlflowClient(uri)
    runs = [r for r in runs_of(client, experiment) if r.data.tags.get("qlab.role") != "sweep"]
    return [run_histories(client, r) for r in sorted(runs, key=lambda r: r.data.tags["seed"])]


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Every metric point of the uninterrupted LONG run (into sqlite): what a run stopped and
    resumed must hold, point for point."""
    d = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{d}/mlflow.db"
    out = qlab_train(LONG, uri, d)
    assert out.returncode == 0, out.stderr
    return histories(uri, "long")


def wait_for_checkpoint(proc: subprocess.Popen, cwd: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(cwd.glob("checkpoints/**/checkpoint.npz")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint written"
        time.sleep(0.2)


# ------------------------------------------------------------------ runs and sweeps

def test_single_run_equals_the_same_run_in_sqlite(pg_uri, tmp_path, mlflow_uri):
    art = tmp_path / "shared" / "mlartifacts"
    args = [*QUICK, "replicas=2", f"tracking.artifacts={art}", "experiment_name=single"]
    out = qlab_train(args, pg_uri, tmp_path)
    assert out.returncode == 0, out.stderr
    runs = runs_of(pg_uri, "single")
    assert len(runs) == 2 and finished(runs)
    for run in runs:  # artifacts where tracking.artifacts says, nowhere else
        assert run.info.artifact_uri.startswith(art.as_uri())
        assert (art / run.info.artifact_uri.split(art.as_uri(), 1)[1].lstrip("/")
                / "episodes.csv").exists()
    assert not (tmp_path / "mlruns").exists()
    assert qlab_train(args, mlflow_uri, tmp_path).returncode == 0
    np.testing.assert_equal(histories(pg_uri, "single"), histories(mlflow_uri, "single"))


def test_database_store_needs_an_artifact_location(pg_uri, tmp_path):
    out = qlab_train([*QUICK, "experiment_name=noart"], pg_uri, tmp_path)
    assert out.returncode == 2
    line = one_error_line(out.stderr)
    assert "tracking.artifacts" in line and "***" in line and password_of(pg_uri) not in line
    assert runs_of(pg_uri, "noart", missing_ok=True) == []


def test_joblib_sweep(pg_uri, tmp_path):
    out = qlab_train(["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "seed=0,1,2",
                      *QUICK, f"tracking.artifacts={tmp_path / 'art'}",
                      "experiment_name=sweep"], pg_uri, tmp_path)
    assert out.returncode == 0, out.stderr
    parents, jobs = sweep_runs(pg_uri, "sweep")
    assert len(parents) == 1 and len(jobs) == 3 and finished(parents + jobs)
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parents[0].info.run_id}


def test_four_processes_on_a_fresh_database(pg_uri, tmp_path):
    """MLflow creates its schema on first use; four processes doing it at once used to crash
    in its migrations. The advisory lock makes them take turns."""
    env = clean_env(pg_uri)
    procs = []
    for k in range(4):
        (tmp_path / str(k)).mkdir()
        procs.append(start_qlab_train([*QUICK, f"seed={k}", "experiment_name=race",
                                       f"tracking.artifacts={tmp_path / 'art'}"],
                                      tmp_path / str(k), env))
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err for _, err in outs]
    runs = runs_of(pg_uri, "race")
    assert len(runs) == 4 and finished(runs)


# ------------------------------------------------------------------ kill -9, database gone

def test_kill_9_then_resume_loses_nothing(pg_uri, tmp_path, long_reference):
    args = [*LONG, f"tracking.artifacts={tmp_path / 'art'}"]
    proc = start_qlab_train(args, tmp_path, clean_env(pg_uri))
    wait_for_checkpoint(proc, tmp_path)
    proc.kill()
    proc.communicate()
    out = qlab_train([*args, "resume=last"], pg_uri, tmp_path)
    assert out.returncode == 0, out.stderr
    runs = runs_of(pg_uri, "long")
    assert len(runs) == 1 and finished(runs)
    np.testing.assert_equal(histories(pg_uri, "long"), long_reference)


def test_database_stopped_mid_run(postgres, pg_uri, tmp_path, long_reference):
    """The database goes away: one line (password masked, how to continue), every point kept
    locally; once it is back, resume=last completes the run exactly."""
    args = [*LONG, f"tracking.artifacts={tmp_path / 'art'}"]
    proc = start_qlab_train(args, tmp_path, clean_env(pg_uri))
    wait_for_checkpoint(proc, tmp_path)
    postgres.stop("fast")
    try:
        _, err = proc.communicate(timeout=300)
    finally:
        postgres.start()
    assert proc.returncode == 1
    line = error_line(err)
    assert "lost the tracking store" in line and "resume=last" in line, line
    assert "***" in line and password_of(pg_uri) not in err
    assert list((tmp_path / "qlab-unsent").glob("*.csv"))
    out = qlab_train([*args, "resume=last"], pg_uri, tmp_path)
    assert out.returncode == 0, out.stderr
    runs = runs_of(pg_uri, "long")
    assert len(runs) == 1 and finished(runs)
    np.testing.assert_equal(histories(pg_uri, "long"), long_reference)


# ------------------------------------------------------------------ refusals in one line

def silent_listener() -> socket.socket:
    """A port on 127.0.0.1 that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s


@pytest.mark.parametrize("case", ["down", "wrong password", "unknown database", "unknown user",
                                  "missing driver", "no answer"])
def test_bad_database_refused_in_one_line(case, postgres, tmp_path, capsys):
    listener = silent_listener() if case == "no answer" else None
    port = listener.getsockname()[1] if listener else free_port()
    secret = "s3cret-pw"
    uri = {"down": f"postgresql://qlab:{secret}@127.0.0.1:{port}/qlab",
           "wrong password": postgres.uri("postgres", password=secret),
           "unknown user": postgres.uri("postgres", password=secret, user="nobody"),
           "missing driver": postgres.uri("postgres", password=secret).replace(
               "postgresql://", "postgresql+psycopg2://"),
           "no answer": f"postgresql://qlab:{secret}@127.0.0.1:{port}/qlab"}.get(case)
    if case == "unknown database":  # the right password: only the database is wrong
        uri, secret = postgres.uri("nosuchdb"), postgres.password
    if case == "missing driver":
        with pytest.raises(ImportError):
            __import__("psycopg2")
    try:
        started = time.monotonic()
        with pytest.raises(store.StoreError) as refused:
            store.check(uri)
        seconds = time.monotonic() - started
        started = time.monotonic()
        out = qlab_train([*QUICK, f"tracking.artifacts={tmp_path}"], uri, tmp_path, timeout=120)
        command_seconds = time.monotonic() - started
    finally:
        if listener:
            listener.close()
    assert seconds < store.CONNECT_TIMEOUT + 3
    assert out.returncode == 2
    line = one_error_line(out.stderr)
    assert str(refused.value) in line and "***" in line and secret not in out.stderr + out.stdout
    expected = {"down": "connection refused", "wrong password": "wrong password",
                "unknown database": "'nosuchdb' does not exist",
                "unknown user": "refused user 'nobody'", "missing driver": "pip install",
                "no answer": f"within {store.CONNECT_TIMEOUT} s"}[case]
    assert expected in line, line
    with capsys.disabled():  # the measured times, in make test-cluster's output
        print(f"\nstore check refused {case!r} in {seconds:.2f} s (qlab-train exit 2 after "
              f"{command_seconds:.1f} s): {line}")


# ------------------------------------------------------------------ qlab-server on PostgreSQL

def test_server_reports_a_failing_database_with_status_and_message(postgres, pg_uri, tmp_path,
                                                                   team_server):
    with team_server(pg_uri, tmp_path) as server:
        out = qlab_train([*QUICK, "experiment_name=served"], server.uri, tmp_path)
        assert out.returncode == 0, out.stderr
        runs = runs_of(server.uri, "served")
        assert finished(runs)
        assert list(server.artifacts.rglob("episodes.csv"))  # proxied: in the server's store
        postgres.stop("fast")
        try:
            with pytest.raises(store.StoreError) as failed:
                store.check(server.uri)
            out = qlab_train(QUICK, server.uri, tmp_path)
        finally:
            postgres.start()
    message = str(failed.value)
    assert "HTTP 5" in message and "not an MLflow" not in message, message
    assert password_of(pg_uri) not in message
    assert out.returncode == 2
    assert one_error_line(out.stderr) == f"qlab-train: error: {message}"


def cmdlines() -> dict[int, str]:
    """Every process's command line (NUL-separated args joined by spaces)."""
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                out[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                pass
    return out


def test_server_stops_on_sigterm_and_hides_its_password(pg_uri, tmp_path):
    """The plain form, password on qlab-server's command line: ps never shows it for long
    (qlab-server re-executes itself without it), mlflow gets it through its environment;
    SIGTERM to qlab-server alone stops every process of the server."""
    port = free_port()
    proc = subprocess.Popen([str(BIN / "qlab-server"), "--backend-store-uri", pg_uri,
                             "--port", str(port), "--workers", "2",
                             "--artifacts-destination", str(tmp_path / "art")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "qlab-server did not start"
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        lines = cmdlines()
        assert not [c for c in lines.values() if password_of(pg_uri) in c]
        server = [pid for pid, c in lines.items() if f"--port {port}" in c and pid != proc.pid]
        assert server, lines
        group = os.getpgid(server[0])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        _, err = proc.communicate()
        assert password_of(pg_uri) not in err
        deadline = time.monotonic() + 15
        while any(_pgid(pid) == group for pid in cmdlines()):
            assert time.monotonic() < deadline, "the server's processes outlived SIGTERM"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
