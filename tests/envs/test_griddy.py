"""GriddyEnv: dynamics, gymnasium API, seeding, rendering, and agreement with the batched env."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import qlab.core.envs  # noqa: F401  (registers qlab/Griddy-v0)
from qlab.core.envs.griddy import AGENT, GOAL, GriddyEnv, griddy_model, state_index
from qlab.core.envs.vector import TabularVecEnv

LEFT, RIGHT, UP, DOWN = range(4)


def start_at(env: GriddyEnv, row: int, col: int) -> np.ndarray:
    obs, info = env.reset(seed=0, options={"state": row * env.width + col})
    assert info["state"] == row * env.width + col
    return obs


def agent_rc(obs: np.ndarray) -> tuple[int, int]:
    r, c = np.argwhere(obs[AGENT] == 1)[0]
    return int(r), int(c)


@pytest.mark.parametrize("action, expected", [(LEFT, (1, 0)), (RIGHT, (1, 2)), (UP, (0, 1)),
                                              (DOWN, (2, 1))])
def test_moves_from_interior_cell(action: int, expected: tuple[int, int]) -> None:
    env = GriddyEnv(4, 4)
    start_at(env, 1, 1)
    obs, reward, terminated, truncated, info = env.step(action)
    assert agent_rc(obs) == expected
    assert info["state"] == expected[0] * 4 + expected[1] == env.state
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert obs.sum() == 2 and obs[GOAL, 3, 3] == 1  # goal + agent, no walls


@pytest.mark.parametrize("cell, action", [((0, 0), LEFT), ((0, 0), UP), ((0, 2), UP),
                                          ((2, 0), LEFT), ((2, 3), RIGHT), ((3, 1), DOWN)])
def test_moving_off_the_grid_stays(cell: tuple[int, int], action: int) -> None:
    env = GriddyEnv(4, 4)
    start_at(env, *cell)
    obs, reward, terminated, _, _ = env.step(action)
    assert agent_rc(obs) == cell
    assert reward == 0.0 and not terminated


def test_reward_only_on_reaching_goal_which_terminates() -> None:
    env = GriddyEnv(4, 4)
    start_at(env, 0, 0)
    rewards, terms = [], []
    for a in (RIGHT, RIGHT, RIGHT, DOWN, DOWN, DOWN):
        _, r, term, trunc, _ = env.step(a)
        assert isinstance(r, float) and not trunc
        rewards.append(r)
        terms.append(term)
    assert rewards == [0.0] * 5 + [1.0]
    assert terms == [False] * 5 + [True]
    assert env.state == 15


def test_truncation_at_max_steps() -> None:
    env = GriddyEnv(4, 4, max_steps=3)
    start_at(env, 0, 0)
    out = [env.step(LEFT)[2:4] for _ in range(3)]
    assert out == [(False, False), (False, False), (False, True)]
    # Reaching the goal on the last allowed step terminates, it is not a truncation.
    start_at(env, 3, 2)
    env.step(LEFT)
    env.step(RIGHT)
    _, r, term, trunc, _ = env.step(RIGHT)
    assert (r, term, trunc) == (1.0, True, False)


def test_no_truncation_with_max_steps_none() -> None:
    env = GriddyEnv(2, 2, max_steps=None)
    start_at(env, 0, 0)
    assert not any(env.step(UP)[3] for _ in range(2000))


def test_seeding_determinism() -> None:
    def trajectory(seed: int) -> list[int]:
        env = GriddyEnv(4, 4)
        _, info = env.reset(seed=seed)
        env.action_space.seed(seed)
        states = [info["state"]]
        for _ in range(20):
            states.append(env.step(env.action_space.sample())[4]["state"])
        return states

    assert trajectory(7) == trajectory(7)
    starts = {GriddyEnv().reset(seed=s)[1]["state"] for s in range(10)}
    assert len(starts) > 1
    assert 15 not in starts


def test_starts_are_uniform_non_goal_cells() -> None:
    env = GriddyEnv(2, 3)
    env.reset(seed=0)
    counts = np.bincount([env.reset()[1]["state"] for _ in range(3000)], minlength=6)
    assert counts[5] == 0
    assert np.all(np.abs(counts[:5] / 3000 - 0.2) < 0.03)


def test_random_goal_starts_and_state_index() -> None:
    env = GriddyEnv(3, 3, random_goal=True)
    env.reset(seed=1)
    goals = set()
    rng = np.random.default_rng(0)
    for _ in range(30):
        obs, info = env.reset()
        goals.add(env.goal_cell)
        assert env.agent_cell != env.goal_cell
        for _ in range(10):
            assert state_index(obs, random_goal=True) == info["state"] == env.state
            obs, _, term, _, info = env.step(int(rng.integers(4)))
            if term:
                assert env.agent_cell == env.goal_cell
                break
    assert len(goals) > 3


@pytest.mark.parametrize("kwargs", [{}, {"height": 3, "width": 5}, {"random_goal": True}])
def test_check_env(kwargs: dict) -> None:
    check_env(gymnasium.make("qlab/Griddy-v0", **kwargs).unwrapped)


def test_gymnasium_make() -> None:
    env = gymnasium.make("qlab/Griddy-v0", height=5, width=3)
    obs, info = env.reset(seed=3)
    assert obs.shape == (3, 5, 3) and obs.dtype == np.int8
    assert env.observation_space.contains(obs)
    assert env.unwrapped.model.n_states == 15
    assert state_index(obs) == info["state"]
    env.step(0)
    env.close()


def test_state_index_agrees_with_info() -> None:
    env = GriddyEnv(3, 4)
    obs, info = env.reset(seed=5)
    for a in [0, 1, 2, 3, 3, 1, 1, 0, 2]:
        assert state_index(obs) == info["state"] == env.state
        obs, _, _, _, info = env.step(a)


def test_render_ansi() -> None:
    env = GriddyEnv(2, 3, render_mode="ansi")
    start_at(env, 0, 1)
    assert env.render() == ". A .\n. . G\n"
    env.set_values(np.array([[0.5, 0.25, 1.0], [0.125, 2.0, 0.0]]))
    text = env.render()
    assert text.splitlines()[0].split() == ["0.50", "0.25A", "1.00"]
    assert text.splitlines()[1].split() == ["0.12", "2.00", "0.00G"]
    env.values = None
    assert env.render() == ". A .\n. . G\n"


def test_render_rgb_array_and_value_shading() -> None:
    env = GriddyEnv(3, 4, render_mode="rgb_array")
    start_at(env, 0, 0)
    plain = env.render()
    assert plain.shape == (3 * 32, 4 * 32, 3) and plain.dtype == np.uint8
    assert np.any(np.all(plain == [40, 80, 230], axis=-1))  # the agent's blue disk
    env.set_values(np.linspace(0, 1, 12))  # (S,) for the fixed goal
    shaded = env.render()
    assert shaded.shape == plain.shape and not np.array_equal(plain, shaded)
    # Higher value, darker cell: compare the centres' brightness of cells 1 and 10.
    def brightness(cell: int) -> int:
        r, c = divmod(cell, 4)
        return int(shaded[r * 32 + 4, c * 32 + 4].sum())
    assert brightness(10) < brightness(1)
    env.values = np.ones((3, 4))  # also settable as an attribute, (height, width) shape
    assert not np.array_equal(env.render(), shaded)


def test_render_random_goal_full_table() -> None:
    env = GriddyEnv(2, 2, random_goal=True, render_mode="ansi")
    env.reset(seed=0, options={"state": 1 * 4 + 0})  # goal at cell 1, agent at cell 0
    env.set_values(np.arange(16.0))
    assert env.render().split() == ["4.00A", "5.00G", "6.00", "7.00"]


def test_render_without_mode_returns_none() -> None:
    env = GriddyEnv()
    env.reset(seed=0)
    with pytest.warns(UserWarning):
        assert env.render() is None


@pytest.mark.parametrize("kwargs, field", [
    ({"height": 1, "width": 1}, "height"),
    ({"height": 0}, "height"),
    ({"width": -2}, "width"),
    ({"max_steps": 0}, "max_steps"),
    ({"render_mode": "human"}, "render_mode"),
])
def test_bad_constructor_args(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        GriddyEnv(**kwargs)


def test_bad_values_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        GriddyEnv(3, 3).set_values(np.zeros(5))


def test_reset_rejects_goal_start() -> None:
    with pytest.raises(ValueError, match="state"):
        GriddyEnv(3, 3).reset(options={"state": 8})


@pytest.mark.parametrize("height, width, random_goal", [(4, 4, False), (3, 5, False),
                                                        (3, 3, True)])
def test_batched_env_matches_gym_env(height: int, width: int, random_goal: bool) -> None:
    env = GriddyEnv(height, width, random_goal=random_goal, max_steps=40)
    vec = TabularVecEnv(griddy_model(height, width, random_goal, max_steps=40), seeds=[0])
    rng = np.random.default_rng(1)
    for episode in range(5):
        _, info = env.reset(seed=episode)
        vec.state = np.array([info["state"]])
        vec.elapsed[:] = 0
        while True:
            a = int(rng.integers(4))
            _, r, term, trunc, info = env.step(a)
            step = vec.step(np.array([a]))
            assert (step.state[0], step.reward[0], step.terminated[0], step.truncated[0]) == (
                info["state"], r, term, trunc)
            if term or trunc:
                break
