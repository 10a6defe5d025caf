"""GymVecEnv: R seeded gymnasium copies behind the batched-env interface (CartPole)."""

from __future__ import annotations

import numpy as np
import pytest

from qlab.core.envs import GymVecEnv, make
from qlab.core.evaluation import RolloutEvaluator


def test_replica_k_is_seeded_like_a_single_env_with_seed_k():
    batch = GymVecEnv("CartPole-v1", [3, 4, 5])
    single = GymVecEnv("CartPole-v1", [4])
    assert batch.model is None and batch.observations is None
    assert (batch.num_envs, batch.n_actions, batch.obs_dim) == (3, 2, 4)
    obs_b, obs_s = batch.reset(), single.reset()
    assert obs_b.shape == (3, 4) and obs_b.dtype == np.float32
    np.testing.assert_array_equal(obs_b[1], obs_s[0])
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 2)
        sb = batch.step(np.array([0, a, 1]))
        ss = single.step(np.array([a]))
        np.testing.assert_array_equal(sb.state[1], ss.state[0])
        assert sb.reward[1] == ss.reward[0] and sb.terminated[1] == ss.terminated[0]
        np.testing.assert_array_equal(batch.restart(sb.terminated | sb.truncated)[1],
                                      single.restart(ss.terminated | ss.truncated)[0])


def test_truncation_by_the_envs_time_limit_and_no_auto_reset():
    env = GymVecEnv("CartPole-v1", [0], max_steps=5)
    env.reset()
    for t in range(5):
        st = env.step(np.array([t % 2]))  # alternating pushes keep the pole up for 5 steps
    assert st.truncated[0] and not st.terminated[0]
    last = st.state.copy()
    np.testing.assert_array_equal(env.state, last)  # the final observation, not a reset one
    assert not np.array_equal(env.restart(np.array([True])), last)


def test_envs_make_dispatches_model_less_envs_and_refuses_continuous_actions():
    class Cfg:
        id, max_steps, kwargs = "CartPole-v1", 500, {}
        height = width = 4
        random_goal = False

    assert isinstance(make(Cfg, [0, 1]), GymVecEnv)
    with pytest.raises(ValueError, match="not Discrete"):
        GymVecEnv("Pendulum-v1", [0])


def test_rollout_evaluator_is_deterministic_per_replica_seed():
    class Always:  # a greedy "agent" that always pushes right
        def greedy_actions(self, replica, obs):
            return np.ones(len(obs), dtype=np.int64)

    import gymnasium

    def make_env():
        return gymnasium.make("CartPole-v1")

    a, b = RolloutEvaluator(make_env, [7, 8], 4), RolloutEvaluator(make_env, [8], 4)
    first = a(1, Always())["eval/return"]
    assert first == b(0, Always())["eval/return"]
    assert 8 <= first <= 30
    assert a(1, Always())["eval/return"] == b(0, Always())["eval/return"]  # runs on in step
