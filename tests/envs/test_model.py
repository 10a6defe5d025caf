"""TabularModel from gymnasium toy-text envs, reachable states, and TabularVecEnv sampling."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from qlab.core.envs.griddy import griddy_model
from qlab.core.envs.model import TabularModel
from qlab.core.envs.vector import TabularVecEnv


def toy_model(env_id: str, **kwargs) -> TabularModel:
    env = gymnasium.make(env_id, **kwargs).unwrapped
    return TabularModel.from_gym_P(env.P, env.initial_state_distrib, max_steps=100)


@pytest.fixture(scope="module")
def frozen_lake() -> TabularModel:
    return toy_model("FrozenLake-v1", map_name="4x4", is_slippery=True)


def test_from_gym_P_merges_duplicates(frozen_lake: TabularModel) -> None:
    m = frozen_lake
    assert (m.n_states, m.n_actions) == (16, 4)
    assert m.prob.shape[2] == 3
    np.testing.assert_allclose(m.prob.sum(-1), 1.0)
    # From the top-left corner, "left" slips up / left (both stay put) or down to 4:
    # the two "stay" entries merge into one outcome of probability 2/3.
    live = m.prob[0, 0] > 0
    outcomes = dict(zip(m.next_state[0, 0][live].tolist(), m.prob[0, 0][live].tolist(),
                        strict=True))
    assert outcomes.keys() == {0, 4}
    assert outcomes[0] == pytest.approx(2 / 3) and outcomes[4] == pytest.approx(1 / 3)
    # Unused slots have probability 0; holes are absorbing and terminal.
    assert np.all(m.prob[5, :, 0] == 1.0) and np.all(m.terminal[5, :, 0])
    # Reaching the goal pays 1 and terminates.
    to_goal = (m.next_state == 15) & (m.prob > 0)
    to_goal[15] = False  # the goal's own absorbing self-loop pays nothing
    assert np.all(m.reward[to_goal] == 1.0) and np.all(m.terminal[to_goal])


def test_acting_states_frozen_lake(frozen_lake: TabularModel) -> None:
    ends = [5, 7, 11, 12, 15]  # holes and goal
    expected = np.ones(16, dtype=bool)
    expected[ends] = False
    np.testing.assert_array_equal(frozen_lake.acting_states, expected)


@pytest.mark.parametrize("random_goal", [False, True])
def test_acting_states_griddy(random_goal: bool) -> None:
    m = griddy_model(3, 4, random_goal=random_goal)
    n = 12
    goals = range(n) if random_goal else [n - 1]
    expected = np.ones(m.n_states, dtype=bool)
    for gi, g in enumerate(goals):
        expected[gi * n + g] = False
    np.testing.assert_array_equal(m.acting_states, expected)


def test_acting_states_cliff_walking() -> None:
    m = toy_model("CliffWalking-v1")
    expected = np.ones(48, dtype=bool)
    expected[37:48] = False  # the cliff cells (never occupied) and the goal
    np.testing.assert_array_equal(m.acting_states, expected)


def test_vec_env_transition_frequencies(frozen_lake: TabularModel) -> None:
    m = frozen_lake
    vec = TabularVecEnv(m, seeds=range(200))
    s, a, rounds = 6, 1, 100  # middle cell, "down": slips left / down / right
    counts = np.zeros(m.n_states)
    for _ in range(rounds):
        vec.state = np.full(vec.num_envs, s)
        counts += np.bincount(vec.step(np.full(vec.num_envs, a)).state, minlength=m.n_states)
    freq = counts / counts.sum()
    expected = np.zeros(m.n_states)
    np.add.at(expected, m.next_state[s, a], m.prob[s, a])
    assert np.abs(freq - expected).max() < 0.02


def test_replica_k_matches_single_replica_with_seed_k(frozen_lake: TabularModel) -> None:
    m = frozen_lake
    actions = np.random.default_rng(0).integers(4, size=50)

    def run(seeds: list[int]) -> np.ndarray:
        vec = TabularVecEnv(m, seeds)
        states = [vec.reset()]
        for a in actions:
            step = vec.step(np.full(len(seeds), a))
            states.append(vec.restart(step.terminated | step.truncated))
        return np.stack(states, axis=1)  # (R, 51)

    batch = run([0, 1, 2])
    for k in range(3):
        np.testing.assert_array_equal(batch[k], run([k])[0])
    assert not np.array_equal(batch[0], batch[1])
