"""Value iteration and exact policy evaluation against closed forms: the grid world's
V*(s) = gamma^(d-1), its optimal action sets, slippery FrozenLake's published optimum, and
hand-computed returns of fixed policies."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from qlab.core.envs.griddy import MOVES, griddy_model
from qlab.core.envs.model import TabularModel
from qlab.core.oracle import expected_return, policy_value, value_iteration

LEFT, RIGHT, UP, DOWN = range(4)


def grid_truth(height: int, width: int, gamma: float):
    """Closed-form Q*, V* and optimal-action mask of the fixed-goal grid, from Manhattan
    distances: one step onto the goal earns 1, so V*(d) = gamma^(d-1) and
    Q*(s, a) = 1 if a reaches the goal, else gamma * V*(s') = gamma^d(s')."""
    n = height * width
    goal = (height - 1, width - 1)
    q = np.zeros((n, 4))
    v = np.zeros(n)
    optimal = np.zeros((n, 4), dtype=bool)
    for s in range(n):
        r, c = divmod(s, width)
        d = abs(goal[0] - r) + abs(goal[1] - c)
        if d == 0:
            continue
        v[s] = gamma ** (d - 1)
        for a, (dr, dc) in enumerate(MOVES):
            r2, c2 = min(max(r + dr, 0), height - 1), min(max(c + dc, 0), width - 1)
            d2 = abs(goal[0] - r2) + abs(goal[1] - c2)
            q[s, a] = 1.0 if d2 == 0 else gamma ** d2
            optimal[s, a] = d2 < d
    return q, v, optimal


@pytest.mark.parametrize(("height", "width"), [(4, 4), (3, 6), (8, 8)])
def test_grid_values_are_powers_of_gamma(height: int, width: int) -> None:
    model = griddy_model(height, width)
    sol = value_iteration(model, 0.95)
    q, v, optimal = grid_truth(height, width, 0.95)
    goal = height * width - 1
    acting = np.arange(height * width) != goal
    np.testing.assert_allclose(sol.v[acting], v[acting], rtol=0, atol=1e-12)
    np.testing.assert_allclose(sol.q[acting], q[acting], rtol=0, atol=1e-12)
    # The optimal actions are exactly the moves that bring the agent closer to the goal.
    np.testing.assert_array_equal(sol.optimal[acting], optimal[acting])
    # The goal is never acted in: the model marks it absorbing and it is no acting state.
    assert sol.v[goal] == 0.0
    assert not model.acting_states[goal] and model.acting_states[acting].all()


def test_grid_4x4_spot_values() -> None:
    sol = value_iteration(griddy_model(4, 4), 0.95)
    v = sol.v.reshape(4, 4)
    assert v[3, 2] == pytest.approx(1.0) and v[2, 3] == pytest.approx(1.0)  # d = 1
    assert v[2, 2] == pytest.approx(0.95)  # d = 2
    assert v[0, 0] == pytest.approx(0.95 ** 5)  # d = 6, the far corner
    # In the top-left corner both right and down are optimal, left and up bump the wall.
    assert sol.optimal[0].tolist() == [False, True, False, True]
    # On the bottom row only "right" gets closer; on the right column only "down".
    assert sol.optimal[12].tolist() == [False, True, False, False]
    assert sol.optimal[3].tolist() == [False, False, False, True]


def test_is_optimal_indexes_policies() -> None:
    sol = value_iteration(griddy_model(4, 4), 0.95)
    right = np.full(16, RIGHT)
    ok = sol.is_optimal(right)
    # "right" is optimal everywhere except the last column (where it bumps the wall).
    expected = np.array([c < 3 for r in range(4) for c in range(4)])
    np.testing.assert_array_equal(ok[:15], expected[:15])
    batch = sol.is_optimal(np.stack([right, np.full(16, DOWN)]))  # (R, S) policies
    assert batch.shape == (2, 16)
    np.testing.assert_array_equal(batch[0], ok)


def frozenlake_model(max_steps: int | None = 100) -> TabularModel:
    env = gymnasium.make("FrozenLake-v1")  # 4x4, slippery
    try:
        u = env.unwrapped
        return TabularModel.from_gym_P(u.P, u.initial_state_distrib, max_steps)
    finally:
        env.close()


def test_frozenlake_optimum_without_horizon() -> None:
    sol = value_iteration(frozenlake_model(), 1.0)
    assert sol.v[0] == pytest.approx(14 / 17, abs=1e-6)


def test_frozenlake_optimum_within_100_steps() -> None:
    """The figure gymnasium quotes as FrozenLake's optimum: finite-horizon value iteration."""
    model = frozenlake_model(100)
    finite = value_iteration(model, 1.0, horizon=100)
    assert finite.v[0] == pytest.approx(0.7442, abs=1e-3)
    # The stationary optimal policy, scored within the same 100 steps, cannot beat it.
    stationary = value_iteration(model, 1.0).q.argmax(1)
    score = expected_return(model, stationary)
    assert 0.73 < score <= finite.v[0] + 1e-12


def test_policy_value_hand_computed() -> None:
    """A 1x3 corridor: cells 0, 1 and the goal 2; starts uniform over {0, 1}."""
    always_right = np.full(3, RIGHT)
    model = griddy_model(1, 3, max_steps=10)
    np.testing.assert_allclose(policy_value(model, always_right, gamma=1.0), [1.0, 1.0, 0.0])
    np.testing.assert_allclose(policy_value(model, always_right, gamma=0.5), [0.5, 1.0, 0.0])
    assert expected_return(model, always_right) == pytest.approx(1.0)
    assert expected_return(model, always_right, gamma=0.5) == pytest.approx(0.75)
    # Within one step only the start next to the goal gets there: half the starts.
    short = griddy_model(1, 3, max_steps=1)
    np.testing.assert_allclose(policy_value(short, always_right), [0.0, 1.0, 0.0])
    assert expected_return(short, always_right) == pytest.approx(0.5)
    # An explicit horizon overrides the model's.
    np.testing.assert_allclose(policy_value(model, always_right, horizon=1), [0.0, 1.0, 0.0])


@pytest.mark.parametrize("max_steps", [5, None])
def test_looping_policy_returns_nothing(max_steps: int | None) -> None:
    model = griddy_model(1, 3, max_steps=max_steps)
    # "left" walks into the wall and stays there forever; "up" bumps in place everywhere.
    for policy in (np.full(3, LEFT), np.full(3, UP), np.array([RIGHT, LEFT, LEFT])):
        assert expected_return(model, policy) == 0.0
        assert not policy_value(model, policy).any()


def test_optimal_policy_value_is_v_star() -> None:
    model = griddy_model(3, 6)
    sol = value_iteration(model, 0.95)
    greedy = sol.q.argmax(1)
    v = policy_value(model, greedy, gamma=0.95)
    acting = model.acting_states
    np.testing.assert_allclose(v[acting], sol.v[acting], rtol=0, atol=1e-12)
    # Undiscounted, the optimal policy always reaches the goal.
    assert expected_return(model, greedy) == pytest.approx(1.0)


def test_finite_horizon_on_grid() -> None:
    """With horizon H only cells within H steps of the goal have value; beyond, nothing."""
    model = griddy_model(4, 4)
    sol = value_iteration(model, 1.0, horizon=3)
    _, v, _ = grid_truth(4, 4, 1.0)
    d = np.array([(3 - r) + (3 - c) for r in range(4) for c in range(4)])
    np.testing.assert_allclose(sol.v, np.where((d >= 1) & (d <= 3), v, 0.0))


@pytest.mark.parametrize("gamma", [-0.1, 1.5])
def test_value_iteration_refuses_bad_gamma(gamma: float) -> None:
    with pytest.raises(ValueError, match="gamma"):
        value_iteration(griddy_model(2, 2), gamma)
