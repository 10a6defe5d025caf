"""Checkpoints and resume: a job stopped at a checkpoint and resumed ends exactly where an
uninterrupted job ends (tabular bit-exact, DQN on CPU with one thread too); kill -9 and
SIGTERM mid-run, then resume, through ``qlab-train`` itself; and every bad checkpoint or
resume target is one line, a non-zero exit and an untouched store.

``train/sps`` (wall-clock steps per second) is the one metric that differs between runs and
is left out of every comparison.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import qlab.app.train
from qlab import tracking
from qlab.app import checkpoint, resume
from qlab.app.build import build
from qlab.app.progress import ProgressBar
from qlab.config import validate
from qlab.core import driver
from qlab.core.compiled import CompiledStepper
from qlab.core.driver import NumpyStepper
from qlab.core.history import episodes_to_optimal_so_far
from qlab.tracking.store import sqlite_path
from tests.helpers import (
    WALL_CLOCK,
    assert_same_history,
    checkpoint_round_trip,
    clean_env,
    cli_exit,
    metric_steps,
    one_error_line,
    qlab_train,
    run_histories,
    runs_of,
    start_qlab_train,
    stop_job,
    stop_job_at_episode,
)

# ------------------------------------------------------------------ in-process round trips


class Crash(Exception):
    """Stands in for a process dying right after a checkpoint."""


def flat_state(obj) -> dict:
    arrays: dict = {}
    meta: dict = {}
    checkpoint._split(obj.state_dict(), "", arrays, meta)
    return {**arrays, "__meta__": json.dumps(meta, sort_keys=True)}


ROUND_TRIPS = {
    "tabular_q-griddy8": ["env=griddy8", "episodes=120"],
    "tabular_q-episode-frozenlake": ["env=frozenlake", "agent.update=episode", "episodes=150",
                                     "~hparams"],
    "tabular_mc-griddy": ["agent=tabular_mc", "env=griddy", "episodes=120"],
    "dqn-griddy": ["agent=dqn", "env=griddy", "episodes=25", "~hparams", "agent.hidden=[16]",
                   "agent.learning_starts=50", "agent.buffer_size=300", "agent.target_update=20",
                   "exploration.decay=0.9"],
    "dqn-dueling-nstep-griddy": ["agent=dqn", "env=griddy", "env.max_steps=15", "episodes=15",
                                 "~hparams", "agent.hidden=[8]", "agent.learning_starts=50",
                                 "agent.target_update=20", "exploration.decay=0.9",
                                 "agent.dueling=true", "agent.n_step=3", "agent.double=true"],
    "dqn-cartpole": ["agent=dqn", "env=cartpole", "episodes=12", "eval_every=4",
                     "eval_episodes=2", "agent.hidden=[16]", "agent.learning_starts=50",
                     "agent.buffer_size=400", "total_steps=null", "exploration.unit=episode",
                     "exploration.duration=10"],
}


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_stop_at_checkpoint_then_resume_equals_uninterrupted(name, compose_cfg, tmp_path) -> None:
    """Every agent and env: state_dict -> file -> fresh objects -> continue gives the same
    history, Q / weights, optimiser, buffers and RNG states as never stopping."""
    cfg = compose_cfg([*ROUND_TRIPS[name], "replicas=2", "tracking.enabled=false"])
    c = validate(cfg)
    every = max(1, c.episodes // 6)
    job, ref, (header, state), job3, out = checkpoint_round_trip(c, tmp_path / "ckpt.npz",
                                                                 every, fast="off")
    assert header["job_id"] == "j" and min(header["episodes_done"]) == 2 * every
    agent3, env3 = job3.agent, job3.env
    agent, env = job.agent, job.env
    assert_same_history(ref, out)
    assert flat_state(agent3).keys() == flat_state(agent).keys()
    for k, v in flat_state(agent).items():
        np.testing.assert_array_equal(flat_state(agent3)[k], v, err_msg=k)
    for k, v in flat_state(env).items():
        np.testing.assert_array_equal(flat_state(env3)[k], v, err_msg=k)


def test_listeners_never_see_the_slowest_replica_past_an_unwritten_checkpoint(compose_cfg
                                                                              ) -> None:
    """The checkpoint a step reaches is written before that step's flush: a kill between the
    two leaves no run holding every replica's episodes past its last checkpoint (what resume
    takes for a removed checkpoint)."""
    c = validate(compose_cfg(["episodes=60", "replicas=2", "fast=off", "tracking.enabled=false"]))
    written: list[int] = []
    seen: list[tuple[int, int]] = []  # (the slowest replica's episodes, checkpoints written)

    class Watch:
        def update(self, hist) -> None:
            seen.append((int(hist.done.min()), len(written)))

    driver.train(build(c), fast="off", listeners=[Watch()], flush_seconds=1e-9,
                 checkpoint=lambda loop, hist: written.append(int(hist.done.min())),
                 checkpoint_every=10)
    assert [w // 10 for w in written] == [1, 2, 3, 4, 5]
    assert len(seen) > 5
    for done, n in seen:
        assert done == 60 or done // 10 <= n, (done, n)


# ------------------------------------------------------------------ qlab-train, killed and resumed

def job_runs(client: MlflowClient, experiment: str) -> list:
    """The runs of ``experiment`` by seed (none if it does not exist yet)."""
    return sorted(runs_of(client, experiment, missing_ok=True),
                  key=lambda r: int(r.data.tags.get("seed", -1)))


def kill_mid_run(args: list[str], workdir: Path, uri: str, experiment: str,
                 sig: int = signal.SIGKILL) -> tuple[dict, list]:
    """Start ``qlab-train``, wait for a checkpoint and for MLflow to hold points past it,
    then send ``sig``; returns the checkpoint's header and the job's runs after the signal."""
    client = MlflowClient(uri)
    tracking.get_or_create_experiment(client, experiment, uri)  # one process migrates the store
    proc = start_qlab_train([*args, f"experiment_name={experiment}"], workdir, clean_env(uri))
    deadline = time.monotonic() + 180
    header = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            found = list((workdir / "checkpoints").glob("*/checkpoint.npz"))
            if not found:
                continue
            header, _ = checkpoint.read(found[0])
            runs = job_runs(client, experiment)
            past = [len(client.get_metric_history(r.info.run_id, "train/q_delta")) for r in runs]
            if runs and min(past) > min(header["episodes_done"]):
                break
        else:
            out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
            pytest.fail(f"qlab-train ended (rc {proc.returncode}) before it could be stopped "
                        f"mid-run; make the run longer. {err[-2000:]}")
        proc.send_signal(sig)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    return header, job_runs(client, experiment)


def resume_and_compare(args: list[str], uri: str, experiment: str, target: str, compose_cfg,
                       capsys, resume_args: tuple[str, ...] = ()) -> tuple[list, object]:
    """Resume the job (``qlab.app.train.run``, in-process, with ``resume_args`` added); train the
    same config uninterrupted without tracking (on the path ``args`` choose: the fast path
    equals the reference bit for bit, tests/test_fastpath.py); check that the resumed runs'
    metric histories hold exactly the uninterrupted job's points (its thinned curves past
    ``tracking.max_points``), once each. Returns the
    resumed runs and the reference agent."""
    client = MlflowClient(uri)
    before = job_runs(client, experiment)
    qlab.app.train.run(compose_cfg([*args, f"tracking.uri={uri}", f"experiment_name={experiment}",
                                f"resume={target}", *resume_args]))
    assert "qlab-train: resuming job " in capsys.readouterr().err
    c = validate(compose_cfg([*args, "tracking.enabled=false"]))
    job = build(c)
    ref = driver.train(job, fast=c.fast)
    agent = job.agent
    resumed = job_runs(client, experiment)
    assert [r.info.run_id for r in resumed] == [r.info.run_id for r in before]  # no new runs
    assert {r.info.status for r in resumed} == {"FINISHED"}
    assert all("error" not in r.data.tags for r in resumed)
    for k, run in enumerate(resumed):
        got = run_histories(client, run)
        n = c.episodes  # thinned past tracking.max_points; the last episode always there
        thinned = sorted({*tracking.curve_steps(0, n, c.tracking.max_points).tolist(), n - 1})
        want = {key: [(e, table[k, e]) for e in thinned]
                for key, table in ref.train.items() if key not in WALL_CLOCK}
        want.update({key: list(zip(ref.eval_steps[k], table[k], strict=True))
                     for key, table in ref.evals.items()})
        if "eval/optimal_fraction" in ref.evals:  # a point per evaluation, logged once
            want["eval/episodes_to_optimal"] = list(zip(
                ref.eval_steps[k], episodes_to_optimal_so_far(ref)[k], strict=True))
        assert got.keys() == want.keys()
        for key in got:
            steps = [s for s, _ in got[key]]
            assert len(steps) == len(set(steps)), f"{key}: duplicate points"
            np.testing.assert_array_equal(np.array(got[key]), np.array(want[key]), err_msg=key)
    assert not list(Path(resume.checkpoint_root(None, uri)).glob("*/checkpoint.npz"))  # removed
    return resumed, agent


# Random-walk exploration on bigger grids: long episodes, so a run takes seconds (a window to
# stop it in) with few metric points to log and compare. TABULAR trains on the numpy
# reference; the compiled fast path (FAST_TABULAR, fast=auto) needs a far bigger grid for that.
TABULAR = ["env=griddy", "env.height=10", "env.width=10", "~hparams", "exploration=constant",
           "exploration.start=1.0", "replicas=2", "episodes=60", "eval_every=10",
           "checkpoint_every=5", "tracking.flush_seconds=0.2", "fast=off"]
FAST_TABULAR = ["env=griddy", "env.height=50", "env.width=50", "env.max_steps=null", "~hparams",
                "exploration=constant", "exploration.start=1.0", "replicas=2", "episodes=300",
                "eval_every=100", "checkpoint_every=5", "tracking.flush_seconds=0.2"]
DQN = ["agent=dqn", "env=griddy", "env.height=6", "env.width=6", "~hparams", "replicas=2",
       "episodes=12", "agent.hidden=[32]", "agent.learning_starts=200", "agent.buffer_size=2000",
       "agent.threads=1", "exploration=constant", "exploration.start=1.0", "eval_every=4",
       "checkpoint_every=2", "tracking.flush_seconds=0.2"]


def stepper_of(compose_cfg, args: list[str]):
    """The stepper class ``qlab-train args`` trains with."""
    c = validate(compose_cfg([*args, "tracking.enabled=false"]))
    return driver.stepper_type(build(c), c.fast)


@pytest.mark.integration
@pytest.mark.parametrize("args, resume_args, first", [
    (FAST_TABULAR, (), CompiledStepper),
    (TABULAR, ("fast=on",), NumpyStepper),  # a reference checkpoint continued compiled
], ids=["fast", "reference-then-fast"])
def test_kill9_tabular_then_resume(args, resume_args, first, tmp_path, sqlite_store, compose_cfg,
                                   capsys, monkeypatch) -> None:
    assert stepper_of(compose_cfg, args) is first
    uri = sqlite_store(tmp_path)
    header, runs = kill_mid_run(args, tmp_path, uri, "kill")
    assert [r.info.status for r in runs] == ["RUNNING", "RUNNING"]  # kill -9: nobody ended them
    assert header["run_ids"] == [r.info.run_id for r in runs]
    used, real_init = [], CompiledStepper.__init__
    monkeypatch.setattr(CompiledStepper, "__init__",
                        lambda self, job, progress, resumed: used.append({"resume": resumed})
                        or real_init(self, job, progress, resumed))
    resumed, agent = resume_and_compare(args, uri, "kill", runs[1].info.run_id,
                                        compose_cfg, capsys, resume_args)
    assert used and used[0]["resume"]  # the resumed job trained on the fast path
    client = MlflowClient(uri)
    for k, run in enumerate(resumed):
        q = np.load(client.download_artifacts(run.info.run_id, "q_table.npy", str(tmp_path)))
        assert np.array_equal(q, agent.q[k])  # bit-exact


@pytest.mark.integration
def test_kill9_dqn_then_resume_last(tmp_path, sqlite_store, compose_cfg, capsys) -> None:
    import torch

    uri = sqlite_store(tmp_path)
    kill_mid_run(DQN, tmp_path, uri, "kill-dqn")
    resumed, agent = resume_and_compare(DQN, uri, "kill-dqn", "last", compose_cfg, capsys)
    client = MlflowClient(uri)
    for k, run in enumerate(resumed):
        got = torch.load(client.download_artifacts(run.info.run_id, "q_network.pt",
                                                   str(tmp_path)), weights_only=True)
        for key, v in agent.weights(k)["state_dict"].items():
            assert torch.equal(got["state_dict"][key], v), key  # bit-exact: CPU, one thread


@pytest.mark.integration
@pytest.mark.parametrize("base", [FAST_TABULAR, TABULAR], ids=["fast", "reference"])
def test_sigterm_writes_checkpoint_and_ends_killed(base, tmp_path, sqlite_store) -> None:
    args = [*base, "episodes=100000", "tracking.max_points=null"]
    uri = sqlite_store(tmp_path)
    _, runs = kill_mid_run(args, tmp_path, uri, "term", sig=signal.SIGTERM)
    client = MlflowClient(uri)
    assert [r.info.status for r in runs] == ["KILLED", "KILLED"]
    assert {r.data.tags["error"] for r in runs} == {"Terminated"}
    path = Path(runs[0].data.tags[resume.CKPT_TAG])
    header, state = checkpoint.read(path)
    assert header["run_ids"] == [r.info.run_id for r in runs]
    for k, r in enumerate(runs):  # every episode up to the checkpoint is in MLflow, none after
        steps = metric_steps(client, r.info.run_id, "train/q_delta")
        assert steps == list(range(header["episodes_done"][k]))
    assert (state["history"]["done"] == header["episodes_done"]).all()


# Thinned curves (tracking.max_points=5): every episode below 5, then every 2nd, 4th, 8th
# (curve_steps) and, once the job is done, its last episode.
THINNED = ["env=griddy", "~hparams", "episodes=40", "eval_every=10", "checkpoint_every=10",
           "fast=off", "tracking.max_points=5", "tracking.flush_seconds=1e-9"]


def test_stop_past_max_points_then_resume_auto_equals_uninterrupted(tmp_path, sqlite_store,
                                                                     compose_cfg, capsys) -> None:
    """A job stopped (SIGTERM, scancel) where its curves are thinned, at an episode off their
    grid, then resumed: its runs hold exactly the points of an uninterrupted training. (The
    stopped runs used to get their last episode as an extra point, 22 here, which stayed in
    the store after the resume: the SLURM test's failure, qlab issue 15.)"""
    uri = sqlite_store(tmp_path)
    args = [*THINNED, f"checkpoint_dir={tmp_path / 'checkpoints'}"]
    stop_job_at_episode(compose_cfg, [*args, f"tracking.uri={uri}", "experiment_name=thin"], 23)
    client = MlflowClient(uri)
    (run,) = job_runs(client, "thin")
    assert run.info.status == "KILLED"
    grid = tracking.curve_steps(0, 23, 5).tolist()  # [0, 1, 2, 3, 4, 6, 8, 12, 16]
    assert metric_steps(client, run.info.run_id, "train/q_delta") == grid
    resume_and_compare(args, uri, "thin", "auto", compose_cfg, capsys)


def test_sigterm_while_the_runs_are_made_waits_for_them_then_resume_auto(
        tmp_path, sqlite_store, compose_cfg, capsys, monkeypatch) -> None:
    """SIGTERM (scancel) while a job's runs are being created: they are all made, then the
    job stops at its first clean point with a checkpoint and ends KILLED (it used to stop
    between two runs: one KILLED run, the other never made, and resume=auto started the job
    afresh beside it); resume=auto completes it in the same runs."""
    import os

    from qlab.app.stopping import Terminated

    uri = sqlite_store(tmp_path)
    args = ["episodes=30", "replicas=2", "checkpoint_every=10",
            f"checkpoint_dir={tmp_path / 'checkpoints'}"]
    create_run = MlflowClient.create_run
    made: list[str] = []

    def signalled(self, *a, **k):  # the signal comes once the first run is made
        made.append(create_run(self, *a, **k))
        if len(made) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return made[-1]

    monkeypatch.setattr(MlflowClient, "create_run", signalled)
    with pytest.raises(Terminated):
        qlab.app.train.run(compose_cfg([*args, f"tracking.uri={uri}", "experiment_name=made"]))
    monkeypatch.setattr(MlflowClient, "create_run", create_run)
    client = MlflowClient(uri)
    runs = job_runs(client, "made")
    assert [r.info.status for r in runs] == ["KILLED", "KILLED"]
    header, _ = checkpoint.read(Path(runs[0].data.tags[resume.CKPT_TAG]))
    assert header["run_ids"] == [r.info.run_id for r in runs]
    resume_and_compare(args, uri, "made", "auto", compose_cfg, capsys)


# ------------------------------------------------------------------ bad input

SMALL = ["env=griddy8", "~hparams", "replicas=2", "episodes=100", "checkpoint_every=10"]


def new_runs(uri: str, train) -> list[str]:
    """Run ids (by seed) that ``train()`` adds to experiment ``bad``."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bad")
    old = {r.info.run_id for r in client.search_runs([exp.experiment_id])} if exp else set()
    train()
    exp = client.get_experiment_by_name("bad")
    return [r.info.run_id for r in job_runs(client, "bad") if r.info.run_id not in old]


@pytest.fixture(scope="module")
def store(tmp_path_factory, compose_cfg, sqlite_store) -> dict:
    """One store with a stopped job A (seeds 0-1, the one resumed), another stopped job B
    (seeds 3-4) and a finished job F (seeds 7-8), all of SMALL in experiment ``bad``."""
    root = tmp_path_factory.mktemp("bad")
    uri = sqlite_store(root)
    base = [*SMALL, f"tracking.uri={uri}", "experiment_name=bad"]
    a = new_runs(uri, lambda: stop_job(compose_cfg, base))
    b = new_runs(uri, lambda: stop_job(compose_cfg, [*base, "seed=3"]))
    f = new_runs(uri, lambda: qlab.app.train.run(compose_cfg([*base, "seed=7"])))
    client = MlflowClient(uri)
    assert {client.get_run(r).info.status for r in a + b} == {"KILLED"}
    path_a = Path(client.get_run(a[0]).data.tags[resume.CKPT_TAG])
    path_b = Path(client.get_run(b[0]).data.tags[resume.CKPT_TAG])
    return {"uri": uri, "base": base, "a": a, "b": b, "f": f, "path": path_a,
            "bytes": path_a.read_bytes(), "path_b": path_b, "root": root}


SNAPSHOT_TABLES = ("experiments", "runs", "tags", "params", "metrics", "latest_metrics")


def snapshot(uri: str) -> dict[str, list]:
    """Every row of the sqlite store's experiments, runs (status, end time, ...), their tags,
    params and metric points, read in one query per table."""
    with contextlib.closing(sqlite3.connect(sqlite_path(uri))) as con:
        return {table: sorted(con.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
                for table in SNAPSHOT_TABLES}


class Evil:
    """Unpickling this would create a file: a checkpoint must never be unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _write_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


BAD_RESUMES = {
    # name: (extra overrides, how to spoil job A's checkpoint, what the line must say)
    "no-such-run": (["resume=0123456789abcdef0123456789abcdef"], None, "no such run"),
    "other-config": (["resume={a0}", "agent.lr=0.5"], None,
                     "another config; differing keys: agent.lr=0.1->0.5"),
    "other-experiment": (["resume={a0}", "experiment_name=elsewhere"], None,
                         "belongs to another experiment"),
    "finished": (["resume={f0}", "seed=7"], None, "has finished"),
    "last-none": (["resume=last", "experiment_name=empty"], None, "no unfinished job"),
    "no-checkpoint": (["resume={a1}"], lambda p, s: p.unlink(), "has no checkpoint"),
    "truncated": (["resume={a1}"], lambda p, s: p.write_bytes(s["bytes"][:len(s["bytes"]) // 2]),
                  "corrupt or truncated"),
    "corrupt": (["resume={a0}"],
                lambda p, s: p.write_bytes(s["bytes"][:2000] + b"\\x00" * 64 + s["bytes"][2064:]),
                "corrupt or truncated"),
    "foreign": (["resume={a0}"], lambda p, s: p.write_bytes(s["path_b"].read_bytes()),
                "belongs to job"),
    "not-qlab": (["resume={a0}"], lambda p, s: _write_npz(p, q=np.zeros(3)),
                 "not a qlab checkpoint"),
    "pickle": (["resume={a0}"],
               lambda p, s: p.write_bytes(__import__("pickle").dumps(Evil(s["root"] / "pwned"))),
               "corrupt or truncated"),
    "other-version": (["resume={a0}"], lambda p, s: _write_npz(p, __meta__=np.frombuffer(
        json.dumps({**checkpoint.read(s["path"].with_name("orig.npz"))[0], "version": 99,
                    "state": {}}).encode(), dtype=np.uint8)), "format version 99"),
    "emptied": (["resume={a0}"], lambda p, s: checkpoint.write(
        p, {}, checkpoint.read(s["path"].with_name("orig.npz"))[0]), "does not fit this job"),
    "locked": (["resume={a0}"], lambda p, s: s.setdefault("lock", resume.JobLock(p.parent)),
               "being trained by another process"),
}


@pytest.mark.parametrize("name", BAD_RESUMES)
def test_bad_resume_is_one_line_and_leaves_the_store(name, store, monkeypatch, capsys) -> None:
    extra, spoil, expected = BAD_RESUMES[name]
    path = store["path"]
    path.write_bytes(store["bytes"])  # job A's own checkpoint, whole
    path.with_name("orig.npz").write_bytes(store["bytes"])
    ids = {"a0": store["a"][0], "a1": store["a"][1], "f0": store["f"][0]}
    if spoil is not None:
        spoil(path, store)
    spoiled = path.read_bytes() if path.exists() else None
    before = snapshot(store["uri"])
    try:
        code = cli_exit(monkeypatch, [*store["base"], *(e.format(**ids) for e in extra)])
    finally:
        lock = store.pop("lock", None)
        if lock is not None:
            lock.release()
    assert code not in (0, None)
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith("qlab-train: error: resume=") or line.startswith(
        "qlab-train: error: checkpoint "), line
    assert expected in line, line
    assert snapshot(store["uri"]) == before  # no new run, no status or tag changed
    assert (path.read_bytes() if path.exists() else None) == spoiled
    assert not (store["root"] / "pwned").exists()


def test_resume_after_bad_attempts_still_works(store, compose_cfg, capsys) -> None:
    """After every refused attempt, job A resumes and finishes, each episode logged once."""
    store["path"].write_bytes(store["bytes"])
    qlab.app.train.run(compose_cfg([*store["base"], f"resume={store['a'][0]}"]))
    assert "resuming job" in capsys.readouterr().err
    client = MlflowClient(store["uri"])
    for run_id in store["a"]:
        assert client.get_run(run_id).info.status == "FINISHED"
        assert metric_steps(client, run_id, "train/q_delta") == list(range(100))


def test_resume_auto_skips_a_finished_job_and_starts_a_new_one(store, compose_cfg,
                                                               capsys) -> None:
    before = snapshot(store["uri"])
    result = qlab.app.train.run(compose_cfg([*store["base"], "seed=7", "resume=auto"]))
    hist, run_ids = result.history, result.run_ids
    assert hist is None and run_ids == store["f"]
    assert "already FINISHED (2 run(s)); skipped" in capsys.readouterr().err
    assert snapshot(store["uri"]) == before
    new = new_runs(store["uri"], lambda: qlab.app.train.run(
        compose_cfg([*store["base"], "seed=11", "episodes=5", "resume=auto"])))
    assert len(new) == 2


# ------------------------------------------------------------------ a sweep rerun

@pytest.mark.slow  # two sweeps of two jobs as subprocesses: ~15 s, 35 s on a busy machine
def test_sweep_rerun_skips_finished_jobs_and_resumes_the_killed_one(tmp_path,
                                                                   sqlite_store) -> None:
    args = ["-m", "seed=0,2", *TABULAR, "resume=auto"]
    uri = sqlite_store(tmp_path)
    client = MlflowClient(uri)
    tracking.get_or_create_experiment(client, "rerun", uri)
    proc = start_qlab_train([*args, "experiment_name=rerun"], tmp_path, clean_env(uri))
    deadline = time.monotonic() + 180
    try:  # kill -9 once job 1 (seeds 0-1) finished and job 2 (seeds 2-3) has a checkpoint
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            runs = [r for r in job_runs(client, "rerun") if "seed" in r.data.tags]
            found = list((tmp_path / "checkpoints").glob("*/checkpoint.npz"))
            if (len(runs) == 4 and [r.info.status for r in runs[:2]] == ["FINISHED"] * 2
                    and found):
                break
        else:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) before it could be killed")
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    first = {r.info.run_id: r for r in job_runs(client, "rerun") if "seed" in r.data.tags}
    assert [r.info.status for r in first.values()] == ["FINISHED"] * 2 + ["RUNNING"] * 2

    out = qlab_train([*args, "experiment_name=rerun"], uri, tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "(rerun: resume=auto)" in out.stderr
    assert "already FINISHED (2 run(s)); skipped" in out.stderr
    assert "resuming job" in out.stderr
    runs = job_runs(client, "rerun")
    parents = [r for r in runs if r.data.tags.get("qlab.role") == "sweep"]
    kids = [r for r in runs if r not in parents]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.info.run_id for r in kids} == set(first)  # no new runs
    assert {r.info.status for r in kids} == {"FINISHED"}
    assert {r.data.tags["mlflow.parentRunId"] for r in kids} == {parents[0].info.run_id}
    for r in kids:
        if first[r.info.run_id].info.status == "FINISHED":  # skipped: untouched
            assert r.info.end_time == first[r.info.run_id].info.end_time
        assert metric_steps(client, r.info.run_id, "train/q_delta") == list(range(60))


# ------------------------------------------------------------------ a fused job

def test_a_fused_job_resumes_replica_by_replica(tmp_path, compose_cfg, sqlite_store) -> None:
    """A fused job's replicas share seeds (two decays x seeds 0-1): its runs are matched to
    replicas by their own index, not by seed, so it resumes and ends as an uninterrupted
    one."""
    from qlab.sweeps import fused, preflight

    uri = sqlite_store(tmp_path)
    (job,) = fused.fuse(preflight.job_overrides(
        [*SMALL, "exploration.decay=0.9,0.97", f"tracking.uri={uri}", "experiment_name=fj"]))
    stop_job(compose_cfg, job)
    client = MlflowClient(uri)
    killed = job_runs(client, "fj")
    assert len(killed) == 4 and {r.info.status for r in killed} == {"KILLED"}
    result = qlab.app.train.run(compose_cfg([*job, f"resume={killed[0].info.run_id}"]))
    hist, run_ids = result.history, result.run_ids
    result = qlab.app.train.run(compose_cfg([*job, "tracking.enabled=false"]))
    alone, _ = result.history, result.run_ids
    assert_same_history(hist, alone)
    for k, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["exploration.decay"] == ("0.9" if k < 2 else "0.97")
        assert metric_steps(client, run_id, "train/q_delta") == list(range(100))


def test_a_signal_during_the_last_flush_is_not_lost(tmp_path, compose_cfg, sqlite_store) -> None:
    """Ctrl-C arriving while the trainer writes its last metrics (signals are deferred then)
    is acted on once the job is complete: the runs end FINISHED, the checkpoint is gone, and
    the interrupt still stops the process (a sweep does not go on to its next job)."""
    from qlab.app.stopping import GracefulStop

    uri = sqlite_store(tmp_path)
    cfg = compose_cfg([*SMALL, f"tracking.uri={uri}", "experiment_name=late",
                       f"checkpoint_dir={tmp_path}/ckpt"])
    real_update = ProgressBar.update

    def update(self, history):  # the final flush: all episodes done
        real_update(self, history)
        if history.done.sum() == 2 * 100:
            GracefulStop._handle(STOP[0], signal.SIGINT, None)

    STOP = []
    real_enter = GracefulStop.__enter__

    def enter(self):
        STOP[:] = [self]
        return real_enter(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ProgressBar, "update", update)
        mp.setattr(GracefulStop, "__enter__", enter)
        with pytest.raises(KeyboardInterrupt):
            qlab.app.train.run(cfg)
    runs = job_runs(MlflowClient(uri), "late")
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert not list((tmp_path / "ckpt").rglob("checkpoint.npz"))


def test_a_failed_final_write_fails_the_job_and_keeps_its_checkpoint(tmp_path, compose_cfg,
                                                                    sqlite_store) -> None:
    """episodes.csv cannot be written at the end (say, a full artifact store): the runs end
    FAILED with why, the job raises StoreError (non-zero exit), and its checkpoint stays."""
    uri = sqlite_store(tmp_path)
    cfg = compose_cfg([*SMALL, f"tracking.uri={uri}", "experiment_name=lastwrite",
                       f"checkpoint_dir={tmp_path}/ckpt"])

    def full(self):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking.Tracker, "_close_history", full)
        with pytest.raises(tracking.StoreError, match="writing the final metrics failed: "
                                                      "OSError.*No space left"):
            qlab.app.train.run(cfg)
    runs = job_runs(MlflowClient(uri), "lastwrite")
    assert [r.info.status for r in runs] == ["FAILED", "FAILED"]
    assert all("No space left" in r.data.tags["error"] for r in runs)
    assert len(list((tmp_path / "ckpt").rglob("checkpoint.npz"))) == 1
