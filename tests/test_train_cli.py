"""``qlab-train`` as a user runs it: bad input is refused before any MLflow run exists, with
one stderr line naming the key and what is allowed, and a non-zero exit; a good command line
trains and records one FINISHED run per replica.

Every bad input goes through ``qlab.cli.main`` (the console script's function) in-process;
a representative subset, and the good run, also as real subprocesses, each against its own
sqlite store. Subprocesses cost ~2 s of imports each (mlflow alone 1.4 s), so they are few
and started together.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    QLAB_TRAIN,
    assert_no_runs,
    clean_env,
    cli_exit,
    metric_steps,
    one_error_line,
    run_process,
    runs_of,
    sqlite_uri,
)

PYTHON_M = [sys.executable, "-m", "qlab"]  # the same entry point, qlab.cli.main

# name: (command line, key the message must name, what it must say is allowed)
BAD = {
    "unknown-env": (["env=nope"], "env=nope", "choose one of: "),
    "unknown-agent": (["agent=nope"], "agent=nope", "choose one of: "),
    "negative-lr": (["agent.lr=-0.1"], "agent.lr", "must be > 0"),
    "epsilon-above-1": (["exploration.start=1.5"], "exploration.start", "[0, 1]"),
    "epsilon-below-0": (["exploration.start=-0.2"], "exploration.start", "[0, 1]"),
    "decay-0": (["exploration.decay=0"], "exploration.decay", "(0, 1]"),
    "decay-1.5": (["exploration.decay=1.5"], "exploration.decay", "(0, 1]"),
    "episodes-0": (["episodes=0"], "episodes", ">= 1"),
    "replicas-0": (["replicas=0"], "replicas", ">= 1"),
    "grid-1x1": (["env.height=1", "env.width=1"], "env.height", ">= 2"),
    "misspelt-key": (["agent.lrr=0.1"], "agent.lrr", "did you mean agent.lr?"),
    "appended-misspelt-key": (["+agent.lrr=0.1"], "agent.lrr", "allowed agent keys: "),
    "non-numeric": (["agent.lr=fast"], "agent.lr", "could not be converted to Float"),
    "multirun-one-bad": (["-m", "seed=0,1", "agent.lr=0.1,-1"], "agent.lr", "must be > 0"),
}
GOOD = ["episodes=20", "replicas=2"]
Finished = subprocess.CompletedProcess
# Bad inputs also run as subprocesses: a group choice (through ``python -m qlab``), a
# value, a misspelt key, and a sweep with one bad job among good ones.
SUBPROCESS = ("unknown-env", "negative-lr", "misspelt-key", "multirun-one-bad")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Finished]]:
    """name -> (its working dir, its finished process); all started at once, each in its
    own dir with its own store ``mlflow.db`` there, which MLflow creates (a first run)."""
    jobs = {"good": [QLAB_TRAIN, *GOOD]}
    for name in SUBPROCESS:
        jobs[name] = [*(PYTHON_M if name == "unknown-env" else [QLAB_TRAIN]), *BAD[name][0]]
    dirs = {name: tmp_path_factory.mktemp(name) for name in jobs}
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {name: pool.submit(run_process, args, dirs[name],
                                     clean_env(sqlite_uri(dirs[name])))
                   for name, args in jobs.items()}
        return {name: (dirs[name], f.result()) for name, f in futures.items()}


def assert_nothing_recorded(workdir: Path) -> None:
    """The store ``workdir/mlflow.db`` either was never created or holds no run."""
    assert_no_runs(sqlite_uri(workdir))
    assert not (workdir / "mlruns").exists() or not any((workdir / "mlruns").iterdir())


def assert_one_line(stderr: str, name: str) -> str:
    _, key, allowed = BAD[name]
    line = one_error_line(stderr)
    assert key in line and allowed in line, line
    return line


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_refused_in_one_line(name: str, monkeypatch, capsys, tmp_path: Path) -> None:
    """``qlab.cli.main`` in-process, as the console script calls it (store: conftest's
    per-test $MLFLOW_TRACKING_URI in tmp_path)."""
    assert cli_exit(monkeypatch, BAD[name][0]) not in (0, None)
    captured = capsys.readouterr()
    assert_one_line(captured.err, name)
    assert captured.out == ""
    assert_nothing_recorded(tmp_path)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("name", SUBPROCESS)
def test_bad_input_subprocess(results, name: str) -> None:
    workdir, out = results[name]
    assert out.returncode != 0, out.stderr
    assert "Traceback" not in out.stderr
    assert_one_line(out.stderr, name)
    assert_nothing_recorded(workdir)


def test_messages_say_what_is_allowed(capsys, monkeypatch) -> None:
    """The lists in the messages are the real choices."""
    def error(args: list[str]) -> str:
        cli_exit(monkeypatch, args)
        return capsys.readouterr().err.strip()

    env_line = error(["env=nope"])
    assert ", griddy, griddy8, " in env_line and "frozenlake" in env_line
    assert "tabular_q" in error(["agent=nope"])
    misspelt = error(["agent.lrr=0.1"])
    assert misspelt.endswith("allowed agent keys: gamma, init, lr, module, name, update"), misspelt
    assert "allowed env keys: height, " in error(["env.heigth=3"])


def test_good_command_line_trains_and_tracks(results) -> None:
    workdir, out = results["good"]
    assert out.returncode == 0, out.stderr[-3000:]
    assert "tabular_q on griddy: 2 replica(s) x 20 episodes" in out.stderr
    client = MlflowClient(sqlite_uri(workdir))
    runs = runs_of(client, "qlab")
    assert len(runs) == 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1"]
    for r in runs:
        assert metric_steps(client, r.info.run_id, "train/q_delta") == list(range(20))
    # The job ends with its run ids and where to look next (issue 17).
    ids = " ".join(r.info.run_id for r in sorted(runs, key=lambda r: r.data.params["seed"]))
    assert f"qlab-train: runs {ids} in MLflow experiment 'qlab'" in out.stderr
    assert "qlab-play last" in out.stderr
    # Artifacts live beside the store, not in the project.
    assert (workdir / "mlruns").is_dir()



@pytest.mark.parametrize(("args", "composed"), [
    (["hydra.searchpath=[file://{tmp}]", "agent=dqn", "env=griddy8", "~hparams"], 1),
    (["agent.lr=-1"], 1),
    (["hydra.run.dir=elsewhere", "agent.lr=-1"], 2),  # a hydra.* key: the job composed again
    (["seed=0,1", "agent.lr=-1"], 3),  # a sweep: the sweeper's config, then each job's
])
def test_preflight_composes_a_one_job_command_line_once(args, composed, monkeypatch,
                                                        tmp_path: Path) -> None:
    """The check composes a command line of one job once (with Hydra's own config, which it
    checks too) and validates that config as the job's: the same config the job composes."""
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from qlab.config import CONF_DIR
    from qlab.sweeps import preflight

    args = [*(a.format(tmp=tmp_path) for a in args), "tracking.enabled=false"]
    calls: list[list[str]] = []
    real = preflight.compose
    monkeypatch.setattr(preflight, "compose",
                        lambda **kw: calls.append(kw["overrides"]) or real(**kw))
    errors = preflight.check(args)
    assert len(calls) == composed, calls
    assert errors == ([] if "agent=dqn" in args else ["agent.lr=-1.0: must be > 0"])
    if composed == 1:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            job = preflight.job_overrides(args)
            assert len(job) == 1
            _, _, cfg = preflight._sweeper(args)
            assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(real(config_name="config",
                                                                     overrides=job[0]))
