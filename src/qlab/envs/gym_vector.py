"""R copies of a gymnasium env without a known model (CartPole), behind the interface of
:class:`~qlab.envs.vector.TabularVecEnv`: states are the flattened float32 observations.

Replica k's env is seeded with ``seeds[k]`` on its first reset and runs on from there, so
its episodes depend on its seed alone. Like the tabular vector env it does not auto-reset:
``step`` returns the true last observation of an episode and the runner calls
:meth:`restart` for the replicas that finished. Episodes are truncated by the env's own
``TimeLimit`` (``max_steps`` overrides its length).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from qlab.envs.vector import Step


def make_gym(env_id: str, max_steps: int | None = None,
             kwargs: Mapping[str, Any] | None = None) -> gymnasium.Env:
    """One gymnasium env; ``max_steps`` overrides the length of its TimeLimit."""
    extra = dict(kwargs or {})
    if max_steps is not None:
        extra["max_episode_steps"] = int(max_steps)
    return gymnasium.make(env_id, **extra)


class GymVecEnv:
    """``len(seeds)`` copies of ``gymnasium.make(env_id, **kwargs)``; replica k seeded with
    ``seeds[k]``. ``model`` and ``observations`` are None: there is no state table."""

    model = None
    observations = None
    n_states = None

    def __init__(self, env_id: str, seeds: Sequence[int], max_steps: int | None = None,
                 kwargs: Mapping[str, Any] | None = None) -> None:
        self.envs = [make_gym(env_id, max_steps, kwargs) for _ in seeds]
        self.seeds = [int(s) for s in seeds]
        self.num_envs = len(self.envs)
        space = self.envs[0].action_space
        if not isinstance(space, spaces.Discrete):
            raise ValueError(f"env.id={env_id!r}: action space {space} is not Discrete; "
                             "value-based agents need discrete actions")
        ob_space = self.envs[0].observation_space
        if not isinstance(ob_space, spaces.Box):
            raise ValueError(f"env.id={env_id!r}: observation space {ob_space} is not a Box")
        self.n_actions = int(space.n)
        self.obs_dim = int(np.prod(ob_space.shape))
        self.state = np.zeros((self.num_envs, self.obs_dim), dtype=np.float32)
        self._seeded = False

    def _reset(self, k: int) -> None:
        seed = None if self._seeded else self.seeds[k]
        obs, _ = self.envs[k].reset(seed=seed)
        self.state[k] = np.asarray(obs, dtype=np.float32).reshape(-1)

    def reset(self) -> np.ndarray:
        """Start every replica afresh (seeding each on the first call); observations (R, D)."""
        for k in range(self.num_envs):
            self._reset(k)
        self._seeded = True
        return self.state.copy()

    def step(self, actions: np.ndarray) -> Step:
        """Act in every replica (no auto-reset; see :meth:`restart`)."""
        R = self.num_envs
        reward = np.zeros(R)
        terminated = np.zeros(R, dtype=bool)
        truncated = np.zeros(R, dtype=bool)
        for k, env in enumerate(self.envs):
            obs, r, term, trunc, _ = env.step(int(actions[k]))
            self.state[k] = np.asarray(obs, dtype=np.float32).reshape(-1)
            reward[k], terminated[k], truncated[k] = r, term, trunc
        return Step(self.state.copy(), reward, terminated, truncated & ~terminated)

    def restart(self, mask: np.ndarray) -> np.ndarray:
        """Reset the replicas in ``mask`` (after :meth:`step`); observations of all (R, D)."""
        for k in np.flatnonzero(mask):
            self._reset(int(k))
        return self.state.copy()

    def close(self) -> None:
        for env in self.envs:
            env.close()
