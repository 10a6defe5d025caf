"""Environments: the grid world (registered as ``qlab/Griddy-v0``) and the batched envs the
runner steps. ``make(cfg, seeds)`` builds R replicas of the env a config names."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium
import numpy as np

from qlab.core.envs.griddy import griddy_model, griddy_observations
from qlab.core.envs.gym_vector import GymVecEnv
from qlab.core.envs.model import TabularModel
from qlab.core.envs.toytext import toy_text_model
from qlab.core.envs.vector import TabularVecEnv

GRIDDY_ID = "qlab/Griddy-v0"

if GRIDDY_ID not in gymnasium.registry:
    gymnasium.register(id=GRIDDY_ID, entry_point="qlab.core.envs.griddy:GriddyEnv")


def make_model(cfg) -> TabularModel | None:
    """The exact model of the env ``cfg`` names, or None when it has none."""
    if cfg.id == GRIDDY_ID:
        return griddy_model(cfg.height, cfg.width, cfg.random_goal, cfg.max_steps)
    # Gymnasium toy-text envs (FrozenLake, CliffWalking, Taxi) publish their model as P.
    return toy_text_model(cfg.id, cfg.kwargs, cfg.max_steps)


def make(cfg, seeds: Sequence[int]) -> TabularVecEnv | GymVecEnv:
    """R = len(seeds) replicas of the env ``cfg`` names; replica k seeded with seeds[k].
    Envs without a model (CartPole) step R gymnasium copies (:class:`GymVecEnv`)."""
    model = make_model(cfg)
    if model is None:
        return GymVecEnv(cfg.id, seeds, max_steps=cfg.max_steps, kwargs=cfg.kwargs)
    obs = None
    if cfg.id == GRIDDY_ID:
        obs = griddy_observations(cfg.height, cfg.width, cfg.random_goal)
        obs = obs.reshape(obs.shape[0], -1).astype("float32")
    else:
        obs = np.eye(model.n_states, dtype=np.float32)  # toy-text: one-hot states
    return TabularVecEnv(model, seeds, observations=obs)
