"""The worked example of docs/add_your_own_agent.md: Dyna-Q (examples/dyna_q.py), an agent
qlab does not ship, found through a user config dir (examples/conf) on Hydra's search path.

It trains and is tracked through ``qlab-train`` like qlab's own agents; solves the grid world
(judged exactly against value iteration's Q*); replica k of a batch is the run of seed k
alone, bit for bit, and an inactive replica changes nothing; a checkpoint round trip ends
where an uninterrupted job ends; a bad value is refused in one line before any run exists.
With ``agent.planning_steps=0`` it is Q-learning: the same histories and Q tables as
``agent=tabular_q``, bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

import qlab
from qlab.app.build import build
from qlab.config import validate
from qlab.core.agents.tabular import Transition
from qlab.core.oracle import value_iteration
from tests.helpers import (
    assert_same_history,
    assert_same_state,
    checkpoint_round_trip,
    cli_exit,
    qlab_train,
)

pytestmark = pytest.mark.integration  # spawns qlab-train

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_CONF = ROOT / "examples" / "conf"
DYNA_Q = ["agent=dyna_q", "env=griddy"]


@pytest.fixture(autouse=True)
def in_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    """``module: examples.dyna_q`` is imported from the working directory: the checkout."""
    monkeypatch.chdir(ROOT)


def compose(*overrides: str):
    """The Dyna-Q job on the grid world (its tuned hparams included), untracked."""
    return qlab.compose([*DYNA_Q, "tracking.enabled=false", *overrides],
                        config_dirs=[EXAMPLES_CONF])


def test_qlab_train_trains_and_tracks_dyna_q(mlflow_uri: str, tmp_path: Path) -> None:
    out = qlab_train(["hydra.searchpath=[file://examples/conf]", *DYNA_Q, "replicas=3",
                      f"hydra.run.dir={tmp_path}/hydra"], mlflow_uri, ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("qlab")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(int(r.data.tags["seed"]) for r in runs) == [0, 1, 2]
    for run in runs:
        run_id = run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["agent"] == "dyna_q"
        assert run.data.params["agent.planning_steps"] == "5"  # the tuned hparams file's
        assert run.data.params["agent.module"] == "examples.dyna_q"
        history = client.get_metric_history(run_id, "eval/optimal_fraction")
        assert max(history, key=lambda m: m.step).value == 1.0
        assert "q_table.npy" in {a.path for a in client.list_artifacts(run_id)}
        q = np.load(client.download_artifacts(run_id, "q_table.npy", str(tmp_path)))
        assert q.shape == (16, 4)


def test_bad_planning_steps_is_refused_in_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    """``qlab.cli.main`` in-process, as the console script calls it (a fresh process finding
    the example is the test above); the store is conftest's per-test one in tmp_path."""
    monkeypatch.setenv("QLAB_CONFIG_DIRS", "")  # main sets it: undone after the test
    assert cli_exit(monkeypatch, ["hydra.searchpath=[file://examples/conf]", *DYNA_Q,
                                  "agent.planning_steps=-1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "qlab-train: error: agent.planning_steps=-1: must be >= 0"]
    assert not (tmp_path / "mlflow.db").exists(), "the store was touched"


# ------------------------------------------------------------------ in process

def test_reaches_the_optimal_greedy_policy() -> None:
    """Every replica's final greedy action is optimal (Q* by value iteration, ties allowed)
    in every state where the agent acts."""
    result = qlab.run(compose("replicas=3"))
    model, gamma = result.job.env.model, result.config.agent.gamma
    optimal = value_iteration(model, gamma).is_optimal(result.q_values.argmax(axis=2))
    assert optimal[:, model.acting_states].all()
    assert (result.evals.groupby("replica")["eval/optimal_fraction"].last() == 1.0).all()


def test_replica_k_of_a_batch_is_the_run_of_seed_k() -> None:
    """Replicas finish at different steps; the finished ones are stepped inactive meanwhile.
    (lr < 1: Q is still moving at the end, so a finished replica that kept learning shows.)"""
    episodes = ["episodes=20", "eval_every=5", "agent.lr=0.5"]
    batch = qlab.run(compose(*episodes, "replicas=3", "seed=0"))
    for k in range(3):
        alone = qlab.run(compose(*episodes, "replicas=1", f"seed={k}"))
        assert_same_history(batch.history, alone.history, [k], [0])
        np.testing.assert_array_equal(batch.q_values[k], alone.q_values[0])


def test_inactive_replicas_change_nothing() -> None:
    """An inactive replica keeps its Q and its model while the active one learns."""
    agent = build(validate(compose("replicas=2"))).agent

    def step(active: list[bool]) -> None:  # both replicas: state 0, action 1 -> state 1
        same = lambda x: np.array([x, x])  # noqa: E731
        agent.learn(Transition(state=same(0), action=same(1), reward=same(0.0),
                               next_state=same(1), terminated=same(False), done=same(False),
                               active=np.array(active)))

    step([True, True])
    agent.q[:, 1, :] = 1.0  # something for the updates to move Q(0, 1) toward
    before = agent.state_dict()
    step([True, False])
    after = agent.state_dict()
    assert not np.array_equal(before["q"][0], after["q"][0])
    assert_same_state(before["q"][1], after["q"][1], "q")
    for k, v in before["model"].items():
        assert_same_state(v[1], after["model"][k][1], f"model.{k}")


def test_stop_at_checkpoint_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    """state_dict (Q, stream, model) -> checkpoint file -> fresh objects -> continue gives
    the same history and agent state as never stopping."""
    c = validate(compose("replicas=2", "episodes=30", "eval_every=5"))
    ref_job, ref, (_, state), job2, out = checkpoint_round_trip(c, tmp_path / "ckpt.npz", 5)
    assert state["agent"]["model"]["n_pairs"].min() > 0  # the model is in the checkpoint
    assert_same_history(ref, out)
    assert_same_state(ref_job.agent.state_dict(), job2.agent.state_dict())


def test_without_planning_it_is_q_learning() -> None:
    """planning_steps=0: the real-step update is tabular_q's, so are its random numbers."""
    same = ["replicas=2", "episodes=30", "eval_every=5", "agent.lr=0.5", "agent.gamma=0.9",
            "exploration.decay=0.99"]
    dyna = qlab.run(compose(*same, "agent.planning_steps=0"))
    q = qlab.run(qlab.compose(["agent=tabular_q", "env=griddy", "tracking.enabled=false",
                               *same]))
    assert_same_history(dyna.history, q.history)
    np.testing.assert_array_equal(dyna.q_values, q.q_values)
