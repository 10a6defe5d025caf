"""Environments: the grid world (``qlab/Griddy-v0``), exact models of finite envs, and the
batched envs the driver steps. ``make(cfg, seeds)`` builds R replicas of the env a config
names; envs with an exact model register it (:mod:`qlab.core.envs.registry`)."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium
import numpy as np

from qlab.core.envs import (
    griddy,  # noqa: F401 - registers qlab/Griddy-v0, qlab's own env
    maxbias,  # noqa: F401 - registers qlab/MaxBias-v0 (Example 6.7)
)
from qlab.core.envs.griddy import GRIDDY_ID
from qlab.core.envs.gym_vector import GymVecEnv
from qlab.core.envs.model import TabularModel
from qlab.core.envs.registry import EnvConfig, EnvSpec, find, register
from qlab.core.envs.toytext import toy_text_model
from qlab.core.envs.vector import TabularVecEnv

__all__ = ["EnvConfig", "EnvSpec", "GRIDDY_ID", "TabularModel", "dims", "has_model", "make",
           "make_model", "register"]


def make_model(cfg: EnvConfig) -> TabularModel | None:
    """The exact model of the env ``cfg`` names, or None when it has none."""
    spec = find(cfg)
    if spec is not None:
        return spec.model(cfg)
    # Gymnasium toy-text envs (FrozenLake, CliffWalking, Taxi) publish their model as P.
    return toy_text_model(cfg.id, cfg.kwargs, cfg.max_steps)


def has_model(cfg: EnvConfig) -> bool:
    """Whether the env ``cfg`` names has an exact model, without building it."""
    if find(cfg) is not None:
        return True
    env = gymnasium.make(cfg.id, **dict(cfg.kwargs or {}))
    try:
        return getattr(env.unwrapped, "P", None) is not None
    finally:
        env.close()


def dims(cfg: EnvConfig) -> tuple[int | None, int, int]:
    """(states or None, actions, observation size) of the env ``cfg`` names, without
    building its model or observation table where its spec can tell (a grid of any size)."""
    spec = find(cfg)
    if spec is not None and spec.dims is not None:
        return spec.dims(cfg)
    if spec is not None:
        model = spec.model(cfg)
        return model.n_states, model.n_actions, model.n_states
    env = gymnasium.make(cfg.id, **dict(cfg.kwargs or {}))
    try:
        obs, act = env.observation_space, env.action_space
        n_actions = int(getattr(act, "n", 0)) or gymnasium.spaces.flatdim(act)
        if isinstance(obs, gymnasium.spaces.Discrete):
            return int(obs.n), n_actions, int(obs.n)
        return None, n_actions, gymnasium.spaces.flatdim(obs)
    finally:
        env.close()


def make(cfg: EnvConfig, seeds: Sequence[int]) -> TabularVecEnv | GymVecEnv:
    """R = len(seeds) replicas of the env ``cfg`` names; replica k seeded with seeds[k].
    Envs without a model (CartPole) step R gymnasium copies (:class:`GymVecEnv`)."""
    model = make_model(cfg)
    if model is None:
        return GymVecEnv(cfg.id, seeds, max_steps=cfg.max_steps, kwargs=cfg.kwargs)
    spec = find(cfg)
    if spec is not None and spec.observations is not None:
        return TabularVecEnv(model, seeds, observations=lambda: spec.observations(cfg))
    return TabularVecEnv(model, seeds,  # one-hot states
                         observations=lambda: np.eye(model.n_states, dtype=np.float32))
