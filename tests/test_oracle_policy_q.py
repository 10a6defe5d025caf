"""Exact Q^pi of stochastic policies (oracle.policy_q) against hand-computed values, against
policy_value for deterministic policies, and its finite horizon against the fixed point."""

from __future__ import annotations

import numpy as np
import pytest

from qlab.core.envs.griddy import griddy_model
from qlab.core.oracle import policy_q, policy_value, value_iteration

LEFT, RIGHT, UP, DOWN = range(4)


def uniform(model) -> np.ndarray:
    return np.full((model.n_states, model.n_actions), 1.0 / model.n_actions)


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_uniform_policy_on_two_cells_hand_computed(gamma: float) -> None:
    """1x2 grid: the agent in cell 0, the goal in cell 1. Right earns 1 and ends; the other
    three actions stay put. V(0) = 1/4 + 3/4 gamma V(0), so V(0) = 0.25 / (1 - 0.75 gamma)."""
    model = griddy_model(1, 2, max_steps=None)
    v0 = 0.25 / (1 - 0.75 * gamma)
    q = policy_q(model, uniform(model), gamma)
    np.testing.assert_allclose(q[0], [gamma * v0, 1.0, gamma * v0, gamma * v0], rtol=1e-12)
    np.testing.assert_array_equal(q[1], 0.0)  # the goal: absorbing, never acted in


def test_deterministic_policy_matches_policy_value() -> None:
    model = griddy_model(4, 4, max_steps=None)
    greedy = value_iteration(model, 0.9).q.argmax(1)
    one_hot = np.eye(model.n_actions)[greedy]
    q = policy_q(model, one_hot, 0.9)
    v = policy_value(model, greedy, 0.9)
    np.testing.assert_allclose(q[np.arange(model.n_states), greedy], v, atol=1e-12)
    np.testing.assert_allclose(q, value_iteration(model, 0.9).q, atol=1e-10)  # greedy is optimal


def test_finite_horizon_reaches_the_fixed_point() -> None:
    model = griddy_model(4, 4, max_steps=None)
    exact = policy_q(model, uniform(model), 0.9)
    np.testing.assert_allclose(policy_q(model, uniform(model), 0.9, horizon=400), exact,
                               atol=1e-12)
    one_step = policy_q(model, uniform(model), 0.9, horizon=1)
    np.testing.assert_array_equal(one_step, model.reward[..., 0])  # only the step onto the goal
    assert (exact < value_iteration(model, 0.9).q + 1e-12).all()  # Q^pi <= Q*
    assert exact[14, RIGHT] == 1.0 and exact[11, DOWN] == 1.0  # next to the goal


def test_refuses_what_is_not_a_policy() -> None:
    model = griddy_model(2, 2)
    with pytest.raises(ValueError, match="shape"):
        policy_q(model, np.full((3, 4), 0.25), 0.9)
    with pytest.raises(ValueError, match="distribution"):
        policy_q(model, np.full((4, 4), 0.3), 0.9)
    with pytest.raises(ValueError, match="gamma"):
        policy_q(model, uniform(model), 1.5)
