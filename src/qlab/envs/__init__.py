"""Environments: the grid world (registered as ``qlab/Griddy-v0``) and the batched envs the
runner steps. ``make(cfg, seeds)`` builds R replicas of the env a config names."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium

from qlab.envs.griddy import griddy_model, griddy_observations
from qlab.envs.model import TabularModel
from qlab.envs.vector import TabularVecEnv

GRIDDY_ID = "qlab/Griddy-v0"

if GRIDDY_ID not in gymnasium.registry:
    gymnasium.register(id=GRIDDY_ID, entry_point="qlab.envs.griddy:GriddyEnv")


def make_model(cfg) -> TabularModel | None:
    """The exact model of the env ``cfg`` names, or None when it has none."""
    if cfg.id == GRIDDY_ID:
        return griddy_model(cfg.height, cfg.width, cfg.random_goal, cfg.max_steps)
    return None


def make(cfg, seeds: Sequence[int]) -> TabularVecEnv:
    """R = len(seeds) replicas of the env ``cfg`` names; replica k seeded with seeds[k]."""
    model = make_model(cfg)
    if model is None:
        raise ValueError(f"env.id={cfg.id!r}: no batched env for it yet; use {GRIDDY_ID}")
    obs = None
    if cfg.id == GRIDDY_ID:
        obs = griddy_observations(cfg.height, cfg.width, cfg.random_goal)
        obs = obs.reshape(obs.shape[0], -1).astype("float32")
    return TabularVecEnv(model, seeds, observations=obs)
