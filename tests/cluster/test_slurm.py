"""A sweep on a real one-node SLURM cluster (``make test-cluster``): ``hydra/launcher=slurm``
(real ``sbatch`` through submitit) tracked into ``qlab-server`` over PostgreSQL. One job is
cancelled mid-run (``scancel``) and a ``resume=auto`` rerun completes it; the database is
stopped mid-run and a rerun completes every job. Nothing is lost: every run's points equal
those of an uninterrupted training of the same seeds.

The cluster is ``.ci/cluster/slurm up`` (munged, slurmctld, slurmd, slurmdbd on 127.0.0.1);
docs/cluster.md is the same recipe for a real cluster."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from qlab.app import checkpoint
from qlab.app.resume import CKPT_TAG
from tests.helpers import (
    clean_env,
    first_difference,
    qlab_train,
    run_histories,
    start_qlab_train,
    sweep_runs,
)

pytestmark = [pytest.mark.cluster, pytest.mark.integration]

SLURM = Path(__file__).resolve().parents[2] / ".ci" / "cluster" / "slurm"
SEEDS = (0, 1, 2)
# tracking.max_points=50: the curves are thinned from episode 50 on (every 2nd, 4th, ...
# episode, tracking.curve_steps), so the job is always cancelled where they are: a stop
# there must add no point an uninterrupted training lacks (qlab issue 15)
TRAINING = ["episodes=3000", "fast=off", "checkpoint_every=100", "eval_every=100",
            "tracking.flush_seconds=0.5", "tracking.max_points=50"]


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """The one-node cluster, up for this module; the environment its commands need."""
    out = subprocess.run([str(SLURM), "up"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    conf = out.stdout.strip().splitlines()[-1].split("=", 1)[1]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield {"SLURM_CONF": conf}
    finally:
        subprocess.run([str(SLURM), "down"], capture_output=True, timeout=300)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Seed -> every metric point of an uninterrupted training (replica k of one job is
    seed k, exactly)."""
    d = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{d}/mlflow.db"
    out = qlab_train([*TRAINING, f"replicas={len(SEEDS)}", "experiment_name=ref"], uri, d)
    assert out.returncode == 0, out.stderr
    return job_histories(uri, "ref")


def job_histories(uri: str, experiment: str) -> dict[str, dict]:
    client = MlflowClient(uri)
    _, runs = sweep_runs(client, experiment)
    return {r.data.tags["seed"]: run_histories(client, r) for r in runs}


def sweep_command(tmp_path: Path, experiment: str) -> list[str]:
    return ["-m", "hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=30",
            f"hydra.sweep.dir={tmp_path / 'multirun'}", f"seed={','.join(map(str, SEEDS))}",
            *TRAINING, f"checkpoint_dir={tmp_path / 'checkpoints'}",
            f"experiment_name={experiment}"]


def running_jobs() -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--states=RUNNING", "-o", "%i"],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()


def wait_mid_run(sweep: subprocess.Popen, tmp_path: Path, checkpoints: int,
                 timeout: float = 300) -> None:
    """Until ``checkpoints`` jobs have written a checkpoint (so they are mid-run)."""
    deadline = time.monotonic() + timeout
    while len(list(tmp_path.glob("checkpoints/**/checkpoint.npz"))) < checkpoints:
        assert sweep.poll() is None, sweep.communicate()
        assert time.monotonic() < deadline, "the jobs wrote no checkpoints"
        time.sleep(0.5)


def stopped_jobs(uri: str, experiment: str) -> str:
    """What the runs not FINISHED hold (status, points, last step) and where their job's
    checkpoint stopped: printed before the rerun, so a failure can be traced."""
    client = MlflowClient(uri)
    _, runs = sweep_runs(client, experiment)
    lines = []
    for r in runs:
        if r.info.status == "FINISHED":
            continue
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "train/q_delta")]
        path = Path(r.data.tags.get(CKPT_TAG, ""))
        at = (checkpoint.read(path)[0]["episodes_done"] if path.is_file()
              else "no checkpoint")
        lines.append(f"seed {r.data.tags['seed']}: {r.info.status}, {len(steps)} points of "
                     f"train/q_delta (last step {max(steps, default=None)}), checkpoint at "
                     f"episodes {at}")
    return "\n  ".join(lines)


def said(err: str) -> str:
    """What the sweep said about its failure: its error lines, no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if "did not finish" in line
             or "could not be closed" in line or "lost the tracking store" in line]
    assert any("SLURM job" in line for line in lines), err  # one line per job
    return "\n  ".join(lines)


def assert_same_as_reference(got: dict[str, dict], reference: dict[str, dict]) -> None:
    """Every seed's points equal the uninterrupted training's; else the first difference."""
    diff = first_difference(reference, got)
    assert diff is None, f"seed {diff}"


def finished(runs) -> bool:
    return bool(runs) and all(r.info.status == "FINISHED" for r in runs)


def test_slurm_sweep_scancel_and_database_stop_then_resume(slurm, postgres, team_server,
                                                           tmp_path, reference, capsys):
    backend = postgres.new_database()
    env = {**clean_env(), **slurm}
    with team_server(backend, tmp_path) as server:
        env["MLFLOW_TRACKING_URI"] = server.uri

        # 1. scancel one job mid-run; the rerun with resume=auto completes it
        cmd = sweep_command(tmp_path / "a", "cancelled")
        (tmp_path / "a").mkdir()
        sweep = start_qlab_train(cmd, tmp_path / "a", env)
        wait_mid_run(sweep, tmp_path / "a", checkpoints=2)
        victim = running_jobs()[0]
        subprocess.run(["scancel", victim], check=True)
        out, err = sweep.communicate(timeout=600)
        assert sweep.returncode != 0, err
        with capsys.disabled():
            print(f"\nsweep after scancel of job {victim}: exit {sweep.returncode}:\n  "
                  f"{said(err)}\n  {stopped_jobs(server.uri, 'cancelled')}")
        state = subprocess.run(["sacct", "-X", "-n", "-j", victim, "-o", "State"],
                               capture_output=True, text=True).stdout.strip()
        assert state.startswith("CANCELLED"), state
        rerun = qlab_train([*cmd, "resume=auto"], server.uri, tmp_path / "a")
        assert rerun.returncode == 0, rerun.stderr
        parents, runs = sweep_runs(server.uri, "cancelled")
        assert len(parents) == 1 and len(runs) == len(SEEDS) and finished(parents + runs)
        assert_same_as_reference(job_histories(server.uri, "cancelled"), reference)

        # 2. the database stops mid-run; once it is back, a rerun completes every job
        cmd = sweep_command(tmp_path / "b", "db-stopped")
        (tmp_path / "b").mkdir()
        sweep = start_qlab_train(cmd, tmp_path / "b", env)
        wait_mid_run(sweep, tmp_path / "b", checkpoints=2)
        postgres.stop("fast")
        try:
            out, err = sweep.communicate(timeout=600)
        finally:
            postgres.start()
        assert sweep.returncode != 0
        assert postgres.password not in out + err
        with capsys.disabled():
            print(f"sweep with the database stopped: exit {sweep.returncode}:\n  {said(err)}"
                  f"\n  {stopped_jobs(server.uri, 'db-stopped')}")
        rerun = qlab_train([*cmd, "resume=auto"], server.uri, tmp_path / "b")
        assert rerun.returncode == 0, rerun.stderr
        parents, runs = sweep_runs(server.uri, "db-stopped")
        assert len(runs) == len(SEEDS) and finished(runs)
        assert_same_as_reference(job_histories(server.uri, "db-stopped"), reference)
