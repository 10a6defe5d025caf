"""The env config group: toy-text envs get an exact model and a batched env with one-hot
observations; tabular agents refuse envs without a discrete state in one line."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest

from qlab.config import ConfigError, options, validate
from qlab.core import envs
from qlab.core.envs.toytext import initial_distribution, toy_text_model
from qlab.sweeps.preflight import check


@pytest.mark.parametrize("name, states, actions, max_steps, starts", [
    ("griddy", 16, 4, 1000, 15),
    ("griddy8", 64, 4, 1000, 63),
    ("griddy_random_goal", 256, 4, 1000, 240),
    ("frozenlake", 16, 4, 100, 1),
    ("frozenlake8", 64, 4, 200, 1),
    ("cliffwalking", 48, 4, 200, 1),
    ("taxi", 500, 6, 200, 300),
    ("maxbias", 3, 10, None, 1),
])
def test_env_configs_build_a_model_and_a_batched_env(compose_cfg, name, states, actions,
                                                     max_steps, starts) -> None:
    c = validate(compose_cfg([f"env={name}"]))
    vec = envs.make(c.env, [0, 1])
    m = vec.model
    assert (m.n_states, m.n_actions, m.max_steps) == (states, actions, max_steps)
    assert np.count_nonzero(m.initial) == starts
    assert vec.observations.shape[0] == states and vec.observations.dtype == np.float32
    if c.env.id != envs.GRIDDY_ID:  # toy-text: one-hot state features
        np.testing.assert_array_equal(vec.observations, np.eye(states, dtype=np.float32))
    s = vec.reset()
    assert np.all(m.initial[s] > 0)


def test_every_env_config_is_covered() -> None:
    assert set(options("env")) >= {"griddy", "griddy8", "griddy_random_goal", "frozenlake",
                                   "frozenlake8", "cliffwalking", "taxi"}


def test_model_matches_gymnasium_dynamics() -> None:
    """Same start state and the same deterministic steps as gymnasium's own CliffWalking."""
    m = toy_text_model("CliffWalking-v1", {}, max_steps=200)
    env = gymnasium.make("CliffWalking-v1")
    s, _ = env.reset(seed=0)
    assert m.initial[s] == 1.0
    for a in [0, 1, 1, 2, 2, 3]:  # up, right, right, down (into the cliff), ...
        s2, r, term, _, _ = env.step(a)
        assert (m.next_state[s, a, 0], m.reward[s, a, 0], m.terminal[s, a, 0]) == (s2, r, term)
        s = s2


def test_max_steps_null_takes_the_registered_time_limit() -> None:
    assert toy_text_model("FrozenLake-v1", {"map_name": "4x4"}, None).max_steps == 100
    assert toy_text_model("CliffWalking-v1", {}, None).max_steps is None  # none registered
    assert toy_text_model("CartPole-v1", {}, 500) is None  # no P: no model


class _FixedStart(gymnasium.Env):
    observation_space = gymnasium.spaces.Discrete(3)
    action_space = gymnasium.spaces.Discrete(1)

    def __init__(self, start) -> None:
        self.start = start

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        s = self.start if self.start is not None else int(self.np_random.integers(3))
        return s, {}


def test_initial_distribution_fallbacks() -> None:
    env = _FixedStart(2)
    np.testing.assert_array_equal(initial_distribution(env), [0, 0, 1])  # from resets
    env.start_state_index = 1
    np.testing.assert_array_equal(initial_distribution(env), [0, 1, 0])
    env.initial_state_distrib = np.array([1.0, 3.0, 0.0])
    np.testing.assert_array_equal(initial_distribution(env), [0.25, 0.75, 0])
    with pytest.raises(ValueError, match="random start"):
        initial_distribution(_FixedStart(None))


@pytest.mark.parametrize("agent", ["tabular_q", "tabular_mc"])
@pytest.mark.parametrize("env_args", [["env=cartpole"], ["env=griddy", "env.id=CartPole-v1"]])
def test_tabular_agent_refuses_env_without_discrete_state(compose_cfg, agent, env_args) -> None:
    overrides = [f"agent={agent}", *env_args]
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    msg = str(err.value)
    assert "\n" not in msg and "no discrete state" in msg and f"agent={agent}" in msg
    assert "CartPole-v1" in msg
    assert check(overrides) == [msg]  # the CLI's preflight: one line, before any run


def test_unknown_env_id_is_refused_in_one_line(compose_cfg) -> None:
    assert check(["agent=tabular_q", "env.id=NoSuchEnv-v0"]) == [
        "env.id='NoSuchEnv-v0': not a registered gymnasium env id"]
