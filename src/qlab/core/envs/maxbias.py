"""MaxBias, Sutton & Barto's Example 6.7 (2nd ed., Figure 6.5): the MDP that shows
Q-learning's maximization bias, as a gymnasium env (``qlab/MaxBias-v0``) and an exact model.

Every episode starts in A, which offers two actions: ``right`` ends the episode with reward
0; ``left`` moves to B with reward 0. B offers ``n_actions_b`` actions, each ending the
episode with a reward drawn from N(-0.1, 1). Going left is worse in expectation (-0.1 < 0),
but the largest of B's noisy estimates is positive early on, so an agent that maximises over
its own estimates goes left far more often than the 5% an epsilon-greedy (epsilon = 0.1)
optimal policy does.

States: 0 = A, 1 = B, 2 = the terminal state (never acted in). The action space is
``Discrete(max(2, n_actions_b))``, the largest set; each state's legal actions are
``info["action_mask"]`` (gymnasium's way) and the model's ``legal``: in A actions 0 (left)
and 1 (right), in B actions 0 .. n_actions_b - 1. The model holds B's expected reward -0.1
(and its noise in ``reward_std``), so value iteration and exact evaluation are exact.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from qlab.core.checks import check_range
from qlab.core.envs.model import TabularModel
from qlab.core.envs.registry import EnvConfig, EnvSpec, register

MAXBIAS_ID = "qlab/MaxBias-v0"
A, B, END = 0, 1, 2
LEFT, RIGHT = 0, 1  # A's actions
B_MEAN, B_STD = -0.1, 1.0  # the reward of every action in B: N(B_MEAN, B_STD**2)
STATE_NAMES = ("A", "B", "end")


def maxbias_model(n_actions_b: int = 10, max_steps: int | None = None) -> TabularModel:
    """The exact model (deterministic transitions, K = 1 outcome; B's rewards by their mean
    with ``reward_std`` 1). Illegal (state, action) pairs end the episode with reward 0:
    placeholders nothing takes."""
    if n_actions_b < 1:
        raise ValueError(f"n_actions_b={n_actions_b}: must be >= 1")
    n = max(2, n_actions_b)
    legal = np.zeros((3, n), dtype=bool)
    legal[A, [LEFT, RIGHT]] = True
    legal[B, :n_actions_b] = True
    legal[END, 0] = True  # never acted in (absorbing placeholder), but a state needs an action
    nxt = np.full((3, n), END, dtype=np.int64)
    term = np.ones((3, n), dtype=bool)
    reward = np.zeros((3, n))
    std = np.zeros((3, n))
    nxt[A, LEFT], term[A, LEFT] = B, False
    nxt[END, :] = END
    reward[B, :n_actions_b], std[B, :n_actions_b] = B_MEAN, B_STD
    initial = np.zeros(3)
    initial[A] = 1.0
    return TabularModel(prob=np.ones((3, n, 1)), next_state=nxt[..., None],
                        reward=reward[..., None], terminal=term[..., None], initial=initial,
                        max_steps=max_steps, legal=legal, reward_std=std[..., None])


class MaxBiasEnv(gym.Env):
    """Example 6.7 as a gymnasium env; ``info["action_mask"]`` (int8, one entry per action of
    the action space) marks the legal actions of the state just reached. An illegal action is
    refused (ValueError)."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, n_actions_b: int = 10, max_steps: int | None = None,
                 render_mode: str | None = None) -> None:
        if isinstance(n_actions_b, bool) or not isinstance(n_actions_b, int | np.integer) \
                or n_actions_b < 1:
            raise ValueError(f"MaxBiasEnv n_actions_b={n_actions_b!r}: must be an int >= 1")
        if render_mode not in (None, "ansi"):
            raise ValueError(f"MaxBiasEnv render_mode={render_mode!r}: must be None or 'ansi'")
        self.n_actions_b = int(n_actions_b)
        self.model = maxbias_model(self.n_actions_b, max_steps)
        self.max_steps = max_steps
        self.render_mode = render_mode
        self.observation_space = spaces.Discrete(3)
        self.action_space = spaces.Discrete(self.model.n_actions)
        self._masks = self.model.action_mask.astype(np.int8)
        self.state: int | None = None
        self.elapsed = 0

    def _info(self) -> dict:
        return {"action_mask": self._masks[self.state].copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[int, dict]:
        super().reset(seed=seed)
        self.state, self.elapsed = A, 0
        return A, self._info()

    def step(self, action: int) -> tuple[int, float, bool, bool, dict]:
        if self.state is None:
            raise RuntimeError("MaxBiasEnv: call reset() before step()")
        s, a = self.state, int(action)
        if not (0 <= a < self.model.n_actions and self.model.action_mask[s, a]):
            raise ValueError(f"MaxBiasEnv.step action={action!r}: not legal in state "
                             f"{STATE_NAMES[s]} (legal: "
                             f"{np.flatnonzero(self.model.action_mask[s]).tolist()})")
        m = self.model
        reward = float(m.reward[s, a, 0])
        if m.reward_std[s, a, 0] > 0:
            reward += float(m.reward_std[s, a, 0]) * float(self.np_random.standard_normal())
        terminated = bool(m.terminal[s, a, 0])
        self.state = int(m.next_state[s, a, 0])
        self.elapsed += 1
        truncated = (not terminated and self.max_steps is not None
                     and self.elapsed >= self.max_steps)
        return self.state, reward, terminated, truncated, self._info()

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return f"state {STATE_NAMES[self.state if self.state is not None else A]}\n"


def _check_config(cfg: EnvConfig) -> None:
    check_range("env.n_actions_b", cfg.n_actions_b, 1)


if MAXBIAS_ID not in gym.registry:
    gym.register(id=MAXBIAS_ID, entry_point="qlab.core.envs.maxbias:MaxBiasEnv")
register(EnvSpec(MAXBIAS_ID, lambda c: maxbias_model(c.n_actions_b, c.max_steps),
                 check=_check_config))
