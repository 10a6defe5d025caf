"""What several test files need, written once: composing and building configs, running
``qlab-train`` in-process or as a process, starting a tracking server, new sqlite stores, and
reading runs and metric histories back from a store. Fixtures that wrap these are in
conftest.py; import the rest with ``from tests.helpers import ...``."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig

from qlab.config import CONF_DIR, register
from qlab.core import agents
from qlab.core.history import History

if TYPE_CHECKING:  # mlflow (seconds) is imported where used: conftest loads this module
    from mlflow.tracking import MlflowClient  # in every pytest process, xdist's too

BIN = Path(sys.executable).parent  # the venv's console scripts: qlab-train, qlab-server, mlflow
QLAB_TRAIN = str(BIN / "qlab-train")
WALL_CLOCK = frozenset({"train/sps"})  # the one metric that differs between identical runs


# ------------------------------------------------------------------ configs

def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The job config Hydra composes from conf/ for a command line (no Hydra run)."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def capture_agents(monkeypatch: pytest.MonkeyPatch) -> list:
    """Every agent ``qlab.core.agents.make`` creates from now on, appended to the list
    returned (so a test can inspect the agent ``qlab.app.train.run`` trained)."""
    made: list = []
    make = agents.make

    def capture(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(agents, "make", capture)
    return made


# ------------------------------------------------------------------ qlab-train in this process

def cli_exit(monkeypatch: pytest.MonkeyPatch, args: Sequence[str]) -> int | str | None:
    """Run ``qlab.cli.main`` (the console script's function) on ``qlab-train args`` in this
    process; returns the exit code it ended with (it must end by ``SystemExit``)."""
    import qlab.cli

    monkeypatch.setattr(sys, "argv", ["qlab-train", *args])
    with pytest.raises(SystemExit) as exit_info:
        qlab.cli.main()
    return exit_info.value.code


def one_error_line(stderr: str, prog: str = "qlab-train") -> str:
    """The single non-blank line of ``stderr``, which must be ``<prog>: error: ...``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith(f"{prog}: error: "), lines[0]
    return lines[0]


# ------------------------------------------------------------------ processes

def clean_env(uri: str | None = None, drop: Sequence[str] = ("QLAB_", "HYDRA_")
              ) -> dict[str, str]:
    """This process's environment for a child: without the variables whose names start with
    ``drop`` (by default the ones a sweep passes to its jobs); ``MLFLOW_TRACKING_URI=uri`` if
    given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(drop))}
    if uri is not None:
        env["MLFLOW_TRACKING_URI"] = uri
    return env


def run_process(cmd: Sequence[str], cwd: Path, env: dict[str, str],
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``cmd`` to its end in ``cwd``; stdout and stderr captured as text."""
    return subprocess.run(list(cmd), cwd=cwd, env=env, text=True, capture_output=True,
                          timeout=timeout)


def qlab_train(args: Sequence[str], uri: str, cwd: Path,
               timeout: float = 600) -> subprocess.CompletedProcess:
    """``qlab-train args`` as a user runs it, in ``cwd``, with ``$MLFLOW_TRACKING_URI=uri``."""
    return run_process([QLAB_TRAIN, *args], cwd, clean_env(uri), timeout)


def start_qlab_train(args: Sequence[str], cwd: Path, env: dict[str, str],
                     stdout: int | None = subprocess.PIPE) -> subprocess.Popen:
    """``qlab-train args`` started in ``cwd`` and left running; stderr (and by default
    stdout) piped, as text. The caller waits for it or kills it."""
    return subprocess.Popen([QLAB_TRAIN, *args], cwd=cwd, env=env, text=True, stdout=stdout,
                            stderr=subprocess.PIPE)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(command: Sequence[str], cwd: Path, env: dict[str, str] | None = None,
                   timeout: float = 120) -> Iterator[str]:
    """``command --port <a free port>`` (``qlab-server ...`` or ``mlflow server ...``) in
    ``cwd`` until the block ends, when its whole process group is stopped; yields its URI once
    it answers /health. A port taken meanwhile (by another test worker) is retried."""
    import requests

    for attempt in range(3):
        port = free_port()
        log = tempfile.TemporaryFile("w+")  # a pipe nobody reads would fill and block it
        proc = subprocess.Popen([*command, "--port", str(port)], cwd=cwd,
                                env={**os.environ, **(env or {})}, stdout=log, stderr=log,
                                text=True, start_new_session=True)
        uri = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while proc.poll() is None:
                try:
                    if requests.get(f"{uri}/health", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"{Path(command[0]).name} did not start")
                time.sleep(0.5)
            else:
                log.seek(0)
                out = log.read()
                if "address already in use" in out.lower() and attempt < 2:
                    continue
                pytest.fail(f"{Path(command[0]).name} exited {proc.returncode}: {out[-2000:]}")
            yield uri
            return
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)  # uvicorn's graceful shutdown can take 10+ s: not needed
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


# ------------------------------------------------------------------ stores

def sqlite_uri(directory: Path, name: str = "mlflow.db") -> str:
    """An absolute sqlite MLflow URI for the database ``directory/name``."""
    return f"sqlite:///{directory}/{name}"


def make_store_template(directory: Path) -> Path:
    """An empty sqlite store made by MLflow itself (its migrations: seconds), to be copied."""
    from mlflow.tracking import MlflowClient

    MlflowClient(sqlite_uri(directory)).search_experiments()
    return directory / "mlflow.db"


def copy_store(template: Path, directory: Path, name: str = "mlflow.db") -> str:
    """A new, empty store ``directory/name``, copied from ``template``; its Default
    experiment's artifacts go to ``directory/mlruns/0``, as if MLflow had created the store
    from ``directory``. Returns its URI."""
    db = Path(directory, name)
    assert not db.exists(), f"{db} exists"
    db.write_bytes(template.read_bytes())
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                    (str(Path(directory, "mlruns", "0")),))
    return sqlite_uri(directory, name)


def assert_no_runs(uri: str) -> None:
    """The sqlite store at ``uri`` was never created, or holds no run."""
    from mlflow.tracking import MlflowClient

    from qlab.tracking.store import sqlite_path

    db = sqlite_path(uri)
    if db is not None and db.exists():
        client = MlflowClient(uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(exps), "a run was created"


# ------------------------------------------------------------------ runs and metric histories

def _client(store_or_uri: MlflowClient | str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    return store_or_uri if isinstance(store_or_uri, MlflowClient) else MlflowClient(store_or_uri)


def runs_of(store_or_uri: MlflowClient | str, experiment: str, missing_ok: bool = False) -> list:
    """Every run of ``experiment`` (MLflow's order: newest first); [] for an experiment that
    does not exist if ``missing_ok``."""
    client = _client(store_or_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        assert missing_ok, f"no experiment {experiment!r}"
        return []
    return client.search_runs([exp.experiment_id], max_results=5000)


def sweep_runs(store_or_uri: MlflowClient | str, experiment: str) -> tuple[list, list]:
    """(the sweep's parent runs, the other runs) of ``experiment``."""
    runs = runs_of(store_or_uri, experiment)
    parents = [r for r in runs if r.data.tags.get("qlab.role") == "sweep"]
    return parents, [r for r in runs if r not in parents]


def metric_history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    """Every point MLflow holds for ``key`` of a run, as sorted (step, value) pairs."""
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def metric_steps(client: MlflowClient, run_id: str, key: str) -> list[int]:
    """The steps of every point MLflow holds for ``key`` of a run, sorted."""
    return [step for step, _ in metric_history(client, run_id, key)]


def run_histories(client: MlflowClient, run, skip: Iterable[str] = WALL_CLOCK
                  ) -> dict[str, list[tuple[int, float]]]:
    """Every metric of a run but ``skip`` (the wall-clock ones), key -> sorted (step, value)."""
    skip = set(skip)
    return {key: metric_history(client, run.info.run_id, key) for key in run.data.metrics
            if key not in skip}


# ------------------------------------------------------------------ comparing trainings

def first_difference(expected: dict, got: dict, where: str = "") -> str | None:
    """Where two nested dicts of metric histories (... -> key -> sorted (step, value) pairs,
    e.g. seed -> :func:`run_histories`) first differ, in one line: the path, the key, the
    first step only one holds or whose values differ, and both values (None: equal; NaN
    equals NaN)."""
    for name in sorted(set(expected) | set(got), key=str):
        at = f"{where}{name}"
        if name not in got or name not in expected:
            return f"{at}: only in the {'expected' if name in expected else 'result'}"
        a, b = expected[name], got[name]
        if isinstance(a, dict) and isinstance(b, dict):
            if (why := first_difference(a, b, f"{at} / ")) is not None:
                return why
        else:
            pa, pb = dict(a), dict(b)
            differ = [s for s in set(pa) | set(pb) if s not in pa or s not in pb
                      or not _same_value(pa[s], pb[s])]
            if differ:
                step = min(differ)
                return (f"{at}: step {step}: expected {pa.get(step, 'no point')}, got "
                        f"{pb.get(step, 'no point')} ({len(a)} points expected, {len(b)} got)")
            if len(a) != len(b):  # the same steps, one held twice
                steps_a, steps_b = [s for s, _ in a], [s for s, _ in b]
                step = min(s for s in pa if steps_a.count(s) != steps_b.count(s))
                return (f"{at}: step {step}: {steps_b.count(step)} points, expected "
                        f"{steps_a.count(step)}")
    return None


def _same_value(x, y) -> bool:
    """Equal, NaN equal to NaN (a metric's gaps, e.g. eval/episodes_to_optimal)."""
    return x == y or (isinstance(x, float) and isinstance(y, float) and x != x and y != y)


def assert_same_history(a: History, b: History, rows_a=slice(None), rows_b=slice(None)) -> None:
    """Every table (wall-clock ones aside) of replicas ``rows_a`` of ``a`` equals ``b``'s."""
    assert a.train.keys() == b.train.keys() and a.evals.keys() == b.evals.keys()
    for group in ("train", "evals"):
        for key, table in getattr(a, group).items():
            if key not in WALL_CLOCK:
                np.testing.assert_array_equal(table[rows_a], getattr(b, group)[key][rows_b],
                                              err_msg=key)
    for name in ("eval_steps", "done", "evals_done"):
        np.testing.assert_array_equal(getattr(a, name)[rows_a], getattr(b, name)[rows_b])


def next_uniforms(rand, n: int = 300) -> np.ndarray:
    """(R, n) the numbers a ReplicaUniforms hands out next (it is not changed): streams
    compared by what they give, since one stream has many states (generator + buffer)."""
    from qlab.core.rng import generator_from_state

    st = rand.state()
    return np.stack([np.concatenate([row, generator_from_state(g).random(n)])[:n]
                     for row, g in zip(st["buf"], st["gens"], strict=True)])


def assert_same_state(a, b, where: str = "agent") -> None:
    """Two state dicts (nested dicts of arrays and JSON values) are equal, bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def stop_job(compose_cfg, args: Sequence[str], at: int = 5) -> None:
    """Train ``args`` in-process and stop it as SIGTERM would, at the ``at``-th check (a
    lock-step on the reference, a chunk of episodes on the fast path): it writes a checkpoint
    and ends KILLED."""
    import qlab.app.train
    from qlab.app.stopping import GracefulStop, Terminated

    calls = iter(range(1, 10**9))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GracefulStop, "__call__",
                   lambda self: Terminated("test") if next(calls) == at else None)
        with pytest.raises(Terminated):
            qlab.app.train.run(compose_cfg(list(args)))


def stop_job_at_episode(compose_cfg, args: Sequence[str], episode: int) -> None:
    """Train ``args`` (tracked, one replica, ``tracking.flush_seconds`` tiny so every lock-step
    is flushed) in-process and stop it as SIGTERM would once it has finished ``episode``
    episodes: it writes a checkpoint there and ends KILLED."""
    import qlab.app.train
    from qlab import tracking
    from qlab.app.stopping import GracefulStop, Terminated

    done = [0]
    update = tracking.Tracker.update

    def watch(self, history) -> None:
        done[0] = int(history.done.min())
        update(self, history)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking.Tracker, "update", watch)
        mp.setattr(GracefulStop, "__call__",
                   lambda self: Terminated("test") if done[0] >= episode else None)
        with pytest.raises(Terminated):
            qlab.app.train.run(compose_cfg(list(args)))
    assert done[0] == episode, f"stopped at episode {done[0]}, not {episode}"


class Crash(Exception):
    """Stands in for a process dying right after a checkpoint."""


def crash_after_second_checkpoint(job, path: Path, every: int, fast: str = "auto") -> None:
    """Train ``job``, checkpointing every ``every`` episodes into ``path``, and crash right
    after the second checkpoint (the file then holds a job stopped mid-run)."""
    from qlab.app import checkpoint
    from qlab.core import driver

    writer = checkpoint.Checkpointer(path, {"job_id": "j"}, job.env, job.agent, job.evaluator)

    def crash_on_second(loop, hist) -> None:
        writer(loop, hist)
        if writer.written == 2:
            raise Crash

    with pytest.raises(Crash):
        driver.train(job, fast=fast, checkpoint=crash_on_second, checkpoint_every=every)


def checkpoint_round_trip(c, path: Path, every: int, fast: str = "auto"):
    """Train config ``c`` uninterrupted; again, checkpointing every ``every`` episodes into
    ``path`` and crashing after the second checkpoint; then restore that file into fresh
    objects and continue. Returns (reference job, its History, the file's (header, state),
    the continued job, its History) for the caller to compare."""
    from qlab.app import checkpoint
    from qlab.app.build import build
    from qlab.core import driver
    from qlab.core.history import loop_state

    ref_job = build(c)
    ref = driver.train(ref_job, fast=fast)
    crash_after_second_checkpoint(build(c), path, every, fast)
    header, state = checkpoint.read(path)
    job2 = build(c)
    stat_keys = tuple(getattr(job2.agent, "stat_keys", ()))
    hist = History.empty(job2.replicas, c.episodes, c.eval_every, job2.evaluator.keys, stat_keys)
    loop = loop_state(job2.replicas, stat_keys)
    checkpoint.restore(path, state, job2.env, job2.agent, job2.evaluator, hist, loop)
    out = driver.train(job2, fast=fast, resume=(hist, loop))
    return ref_job, ref, (header, state), job2, out
