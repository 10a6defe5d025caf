"""The Python door: ``qlab.compose`` -> ``qlab.run`` -> ``Result``, and a core that imports
without the application's dependencies."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import qlab
from qlab.core.oracle import value_iteration


@pytest.mark.integration  # a fresh interpreter
def test_core_imports_without_hydra_mlflow_matplotlib_pandas() -> None:
    code = ("import sys\n"
            "import qlab.core, qlab.core.agents, qlab.core.envs, qlab.core.driver\n"
            "import qlab.core.compiled, qlab.core.evaluation, qlab.core.oracle\n"
            "import qlab.core.agents.qlearning, qlab.core.agents.mc, qlab.core.agents.dqn\n"
            "heavy = ('hydra', 'omegaconf', 'mlflow', 'matplotlib', 'pandas')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_compose_and_run_untracked() -> None:
    cfg = qlab.compose(["env=griddy8", "agent=tabular_q", "replicas=5",
                        "tracking.enabled=false"])
    assert cfg.agent.lr == 1.0 and cfg.replicas == 5  # hparams tabular_q_griddy8 applied
    result = qlab.run(cfg)
    assert result.run_ids == []
    episodes = cfg.episodes
    curves = result.curves
    assert len(curves) == 5 * episodes
    assert {"replica", "seed", "episode", "train/episode_length", "train/episode_return",
            "train/q_delta", "train/epsilon", "train/sps"} <= set(curves.columns)
    assert curves.groupby("replica")["episode"].max().tolist() == [episodes - 1] * 5
    assert curves["seed"].unique().tolist() == [0, 1, 2, 3, 4]
    evals = result.evals
    assert {"eval/return", "eval/q_error", "eval/optimal_fraction"} <= set(evals.columns)
    assert evals.groupby("replica")["episode"].max().tolist() == [episodes - 1] * 5
    q = result.q_values
    assert q.shape == (5, 64, 4)
    model = result.job.env.model
    sol = value_iteration(model, cfg.agent.gamma)
    acting = model.acting_states
    for k in range(5):  # the tuned settings solve the 8x8 grid in every replica
        assert sol.is_optimal(q[k].argmax(axis=1))[acting].all()
    last = evals.groupby("replica").tail(1)
    assert (last["eval/optimal_fraction"] == 1.0).all()


@pytest.mark.training
def test_run_tracked_gives_run_ids(mlflow_uri) -> None:
    result = qlab.run(qlab.compose(["replicas=2", "episodes=5", "experiment_name=api"]))
    assert len(result.run_ids) == 2
    client = MlflowClient(mlflow_uri)
    assert {client.get_run(r).info.status for r in result.run_ids} == {"FINISHED"}


def test_run_from_python_shows_qlabs_lines_unless_logging_is_set_up(
        mlflow_uri, sqlite_store, tmp_path, capsys, monkeypatch) -> None:
    """A plain script or notebook (no logging set up): qlab.run's INFO lines reach stderr as
    ``qlab: ...``; a caller's own logging set-up is left alone."""
    assert sqlite_store(tmp_path) == mlflow_uri  # made already: MLflow's migrations take seconds
    log, root = logging.getLogger("qlab"), logging.getLogger()
    monkeypatch.setattr(log, "handlers", [])  # as in a fresh interpreter (the autouse
    monkeypatch.setattr(root, "handlers", [])  # console fixture and pytest's own undone)
    monkeypatch.setattr(log, "propagate", True)
    log.setLevel(logging.NOTSET)  # the console fixture restores qlab's level after the test
    cfg = qlab.compose(["replicas=1", "episodes=3", "experiment_name=api", "resume=auto"])
    qlab.run(cfg)
    capsys.readouterr()
    qlab.run(cfg)
    assert "qlab: job " in capsys.readouterr().err  # "... already FINISHED ...; skipped"
    assert log.handlers == [] and root.handlers == []  # nothing left behind
    monkeypatch.setattr(root, "handlers", [logging.StreamHandler(sys.stdout)])
    level = root.level
    root.setLevel(logging.INFO)  # as logging.basicConfig(level=logging.INFO, stream=sys.stdout)
    try:
        qlab.run(cfg)
    finally:
        root.setLevel(level)
    out, err = capsys.readouterr()
    assert "qlab: job " not in err and "already FINISHED" in out  # the caller's handler


@pytest.mark.parametrize(("overrides", "line"), [
    (["agent.lr=-1"], "agent.lr=-1.0: must be > 0"),
    (["agent=sarsa_x"], "agent=sarsa_x: no such agent; choose one of: "),
    (["agent.lrr=0.1"], "agent.lrr: no such key; did you mean agent.lr?"),
    (["exploration.decay=1.5"], "exploration.decay=1.5: must be in (0, 1]"),
])
def test_compose_refuses_bad_overrides_in_one_line(overrides, line) -> None:
    with pytest.raises(qlab.ConfigError) as err:
        qlab.compose(overrides)
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


def test_compose_refuses_a_sweep() -> None:
    with pytest.raises(qlab.ConfigError, match="qlab-train -m"):
        qlab.compose(["seed=0,1"])


def test_result_of_a_dqn_on_a_grid_has_q_values() -> None:
    result = qlab.run(qlab.compose(["agent=dqn", "episodes=3", "replicas=2",
                                    "tracking.enabled=false"]))
    q = result.q_values
    assert q.shape == (2, 16, 4) and np.isfinite(q).all()
