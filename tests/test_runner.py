"""The training loop: History shapes, one value per episode per key, evaluations every
``eval_every`` episodes and after the last, exact greedy evaluation, episodes_to_optimal,
listeners (what the tracker hangs on)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qlab.app.build import build
from qlab.app.progress import ProgressBar
from qlab.config import validate
from qlab.core import driver
from qlab.core.driver import Job
from qlab.core.envs.griddy import griddy_model
from qlab.core.evaluation import Evaluator
from qlab.core.history import (
    EVAL_KEYS,
    TRAIN_KEYS,
    History,
    episodes_to_optimal,
    episodes_to_optimal_so_far,
)
from qlab.core.oracle import value_iteration


def eval_steps(hist: History) -> np.ndarray:
    """(R, n_evals) episode index after which each evaluation was taken."""
    return np.broadcast_to(hist.eval_steps, (hist.replicas, hist.eval_steps.shape[-1]))


@pytest.mark.parametrize(("episodes", "every", "steps"), [
    (10, 3, [2, 5, 8, 9]),  # every 3rd episode, and always the last
    (9, 3, [2, 5, 8]),  # the last is on the schedule: not twice
    (5, 50, [4]),  # eval_every beyond the run: only the last
    (1, 1, [0]),
    (4, 1, [0, 1, 2, 3]),
])
def test_history_shapes_and_eval_steps(episodes: int, every: int, steps: list[int]) -> None:
    h = History.empty(3, episodes, every, EVAL_KEYS, stat_keys=("td_loss",))
    assert set(h.train) == {*TRAIN_KEYS, "train/td_loss"}
    assert set(h.evals) == set(EVAL_KEYS)
    for table in h.train.values():
        assert table.shape == (3, episodes) and np.isnan(table).all()
    for table in h.evals.values():
        assert table.shape == (3, len(steps)) and np.isnan(table).all()
    assert (eval_steps(h) == steps).all()
    assert h.done.tolist() == [0, 0, 0] and h.evals_done.tolist() == [0, 0, 0]


class Recorder:
    """A listener keeping what it was shown each time."""

    def __init__(self) -> None:
        self.done: list[np.ndarray] = []
        self.last: History | None = None

    def update(self, history: History) -> None:
        self.done.append(history.done.copy())
        self.last = history


class CountingEvaluator:
    """Wraps the exact evaluator; records, per replica, how many episodes that replica had
    finished (as the agent's learn calls saw them) at each evaluation."""

    keys = EVAL_KEYS

    def __init__(self, inner: Evaluator, finished: np.ndarray) -> None:
        self.inner, self.finished = inner, finished
        self.seen: dict[int, list[int]] = {}

    def __call__(self, k: int, q):
        self.seen.setdefault(k, []).append(int(self.finished[k]))
        return self.inner(k, q)


def setup_run(compose_cfg, overrides: list[str], R: int):
    """Seeds 0 .. R - 1 of a composed config: (config, env, agent, schedule)."""
    c = validate(compose_cfg([*overrides, "seed=0", f"replicas={R}"]))
    job = build(c)
    return c, job.env, job.agent, job.schedule


def test_train_records_one_value_per_episode_per_key(compose_cfg) -> None:
    R, episodes, every = 3, 23, 5
    c, env, agent, schedule = setup_run(
        compose_cfg, ["env.max_steps=12", "exploration.decay=0.9"], R)
    finished = np.zeros(R, dtype=np.int64)
    learn = agent.learn

    def counting_learn(tr):
        finished[:] += tr.done & tr.active
        return learn(tr)

    agent.learn = counting_learn
    evaluator = CountingEvaluator(Evaluator(env.model, agent.gamma), finished)
    rec = Recorder()
    hist = driver.train(Job(env, agent, schedule, episodes, every, evaluator), fast="off",
                        listeners=[rec], flush_seconds=1e-9)

    assert hist.replicas == R and hist.episodes == episodes
    assert hist.done.tolist() == [episodes] * R
    for key in TRAIN_KEYS:
        table = hist.train[key]
        assert table.shape == (R, episodes) and np.isfinite(table).all(), key
    lengths = hist.train["train/episode_length"]
    returns = hist.train["train/episode_return"]
    assert ((lengths >= 1) & (lengths <= 12)).all()
    # Reward 1 only on reaching the goal, which ends the episode; truncation at 12 steps.
    assert set(np.unique(returns)) <= {0.0, 1.0}
    assert (returns[lengths < 12] == 1.0).all()
    assert finished.tolist() == [episodes] * R
    # Epsilon is the schedule's value for the episode index.
    np.testing.assert_array_equal(hist.train["train/epsilon"],
                                  schedule(np.arange(episodes)[:, None]).T)
    assert (hist.train["train/q_delta"] >= 0).all() and (hist.train["train/sps"] > 0).all()

    # Evaluations right after episodes 4, 9, 14, 19 and the last one, 22.
    expected = [4, 9, 14, 19, 22]
    assert (eval_steps(hist) == expected).all()
    assert hist.evals_done.tolist() == [len(expected)] * R
    for k in range(R):
        assert evaluator.seen[k] == [e + 1 for e in expected]
    for key in EVAL_KEYS:
        assert hist.evals[key].shape == (R, len(expected)) and np.isfinite(hist.evals[key]).all()
    opt = hist.evals["eval/optimal_fraction"]
    assert ((opt >= 0) & (opt <= 1)).all()
    assert (hist.evals["eval/q_error"] >= 0).all()

    # Listeners saw the run grow and got the complete history at the end.
    assert len(rec.done) >= 2 and rec.last is hist
    progress = np.array(rec.done)
    assert (np.diff(progress, axis=0) >= 0).all() and progress[-1].tolist() == [episodes] * R


def test_listeners_get_the_history_when_training_fails(compose_cfg) -> None:
    c, env, agent, schedule = setup_run(compose_cfg, [], 2)
    calls = 0
    learn = agent.learn

    def failing_learn(tr):
        nonlocal calls
        calls += 1
        if calls == 200:
            raise RuntimeError("boom")
        return learn(tr)

    agent.learn = failing_learn
    rec = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        driver.train(Job(env, agent, schedule, 1000, 10), fast="off", listeners=[rec],
                     flush_seconds=3600)
    assert rec.last is not None  # the final flush happened despite the exception
    done = rec.last.done
    assert done.sum() > 0
    for k in range(2):
        lengths = rec.last.train["train/episode_length"][k]
        assert np.isfinite(lengths[:done[k]]).all() and np.isnan(lengths[done[k]:]).all()


def test_evaluator_exact_metrics() -> None:
    model = griddy_model(4, 4)
    sol = value_iteration(model, 0.95)
    ev = Evaluator(model, np.array([0.95, 0.95]))
    best = ev(0, sol.q.copy())
    assert best == {"eval/return": pytest.approx(1.0), "eval/q_error": 0.0,
                    "eval/optimal_fraction": 1.0}
    # All-zero Q: greedy "left" everywhere never reaches the goal (bottom-right), is never
    # optimal, and is off by the largest Q* (1, next to the goal).
    zero = ev(1, np.zeros((16, 4)))
    assert zero == {"eval/return": 0.0, "eval/q_error": pytest.approx(1.0),
                    "eval/optimal_fraction": 0.0}
    # One state with a wrong greedy action: 14 of the 15 acting states are optimal; the goal
    # row of Q is never scored.
    q = sol.q.copy()
    q[0] = [1.0, 0.0, 0.0, 0.0]  # top-left corner: "left" bumps the wall
    q[15] = 123.0
    one_off = ev(0, q)
    assert one_off["eval/optimal_fraction"] == pytest.approx(14 / 15)
    assert one_off["eval/q_error"] == pytest.approx(max(1.0 - sol.q[0, 0], sol.q[0, 1]))
    # Starting in the corner (1/15 of starts) the greedy walk loops: return 14/15.
    assert one_off["eval/return"] == pytest.approx(14 / 15)


def test_episodes_to_optimal() -> None:
    h = History.empty(5, 10, 3, EVAL_KEYS)  # evaluations after episodes 2, 5, 8, 9
    h.evals["eval/optimal_fraction"][:] = [
        [1, 1, 1, 1],  # optimal from the first evaluation: 2
        [0, 1, 0.5, 1],  # optimal again at the last, after a relapse: 9
        [0, 0.5, 1, 1],  # 8
        [1, 1, 1, 0.9],  # not optimal at the end: never
        [0, 0, 0, 0],
    ]
    h.evals_done[:] = 4
    out = episodes_to_optimal(h)
    assert out[:3].tolist() == [2, 9, 8]
    assert math.isnan(out[3]) and math.isnan(out[4])
    no_eval = History.empty(2, 10, 3, ())
    assert np.isnan(episodes_to_optimal(no_eval)).all()


def test_episodes_to_optimal_so_far() -> None:
    """After each evaluation, episodes_to_optimal of the evaluations up to it; a replica
    evaluated fewer times keeps its final value; the last column is episodes_to_optimal."""
    nan = math.nan
    h = History.empty(4, 10, 3, EVAL_KEYS)  # evaluations after episodes 2, 5, 8, 9
    h.evals["eval/optimal_fraction"][:] = [
        [1, 1, 1, 1],
        [1, 0.5, 1, 1],  # optimal, lost, regained
        [0, 1, 1, 0.9],  # optimal, lost at the end
        [0, 1, nan, nan],  # stopped after two evaluations
    ]
    h.evals_done[:] = [4, 4, 4, 2]
    so_far = episodes_to_optimal_so_far(h)
    np.testing.assert_array_equal(so_far, [[2, 2, 2, 2], [2, nan, 8, 8], [nan, 5, 5, nan],
                                           [nan, 5, 5, 5]])
    np.testing.assert_array_equal(episodes_to_optimal(h), [2, 8, nan, 5])
    assert np.isnan(episodes_to_optimal_so_far(History.empty(2, 10, 3, ()))).all()


def test_progress_bar_is_quiet_off_a_terminal(capsys) -> None:
    h = History.empty(2, 5, 5, ())
    bar = ProgressBar(10, desc="test")
    h.done[:] = [3, 4]
    bar.update(h)
    bar.close()
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out == ""
