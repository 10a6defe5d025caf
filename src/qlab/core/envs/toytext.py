"""Gymnasium's toy-text envs (FrozenLake, CliffWalking, Taxi) as exact models.

They publish their dynamics as ``env.unwrapped.P[s][a] = [(p, s', r, terminated), ...]``;
with the start distribution that is the whole MDP, so the batched :class:`TabularVecEnv`
steps them at numpy speed and value iteration gives their Q*.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gymnasium
import numpy as np

from qlab.core.envs.model import TabularModel


def initial_distribution(env: gymnasium.Env, probes: int = 32) -> np.ndarray:
    """The start-state distribution of a toy-text env (its unwrapped instance).

    ``initial_state_distrib`` where the env has it (FrozenLake, Taxi, CliffWalking in
    gymnasium 1.x); else ``start_state_index`` (older CliffWalking); else the one state that
    ``probes`` seeded resets all agree on. A random start we cannot read is refused.
    """
    n = env.observation_space.n
    dist = getattr(env, "initial_state_distrib", None)
    if dist is not None:
        dist = np.asarray(dist, dtype=np.float64)
        return dist / dist.sum()
    start = getattr(env, "start_state_index", None)
    if start is None:
        starts = {int(env.reset(seed=k)[0]) for k in range(probes)}
        if len(starts) != 1:
            raise ValueError(f"{env.spec.id if env.spec else env}: random start states and no "
                             "initial_state_distrib; cannot build its model")
        start = starts.pop()
    dist = np.zeros(n)
    dist[int(start)] = 1.0
    return dist


def toy_text_model(env_id: str, kwargs: Mapping[str, Any] | None = None,
                   max_steps: int | None = None) -> TabularModel | None:
    """The exact model of ``gymnasium.make(env_id, **kwargs)``, or None if it publishes no ``P``.

    ``max_steps`` truncates episodes; None takes the env's registered time limit.
    """
    env = gymnasium.make(env_id, **dict(kwargs or {}))
    try:
        inner = env.unwrapped
        P = getattr(inner, "P", None)
        if P is None:
            return None
        if max_steps is None and env.spec is not None:
            max_steps = env.spec.max_episode_steps
        return TabularModel.from_gym_P(P, initial_distribution(inner), max_steps)
    finally:
        env.close()
