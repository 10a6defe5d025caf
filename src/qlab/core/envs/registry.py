"""The env registry and the env config every env shares.

An env is a gymnasium id. One with an exact model — a finite MDP qlab can solve and step in
numpy — registers an :class:`EnvSpec` for its id: how to build the model (and, optionally,
the observation each state shows a function approximator, and checks of its own keys).
Gymnasium's toy-text envs need no spec (their model is read from ``P``); envs without a
model (CartPole) are stepped through gymnasium itself. A new env is one module that
registers its gymnasium id and its spec, plus ``conf/env/<name>.yaml`` naming ``id`` and
``module``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from qlab.core.checks import check_range
from qlab.core.envs.model import TabularModel
from qlab.core.registry import Registry, import_module


@dataclass
class EnvConfig:
    """An environment: a gymnasium id, and the keys of the envs qlab models itself."""

    name: str = "???"  # short name, logged as the ``env`` tag
    id: str = "qlab/Griddy-v0"  # gymnasium id
    module: str | None = None  # a module to import first (it registers the id and its spec)
    height: int = 4  # grid rows (grid world only)
    width: int = 4  # grid columns (grid world only)
    random_goal: bool = False  # goal in a random cell, part of the state (grid world only)
    mask_edges: bool = False  # moves off the grid are illegal, per-state masks (grid world only)
    n_actions_b: int = 10  # actions in state B, each ending with N(-0.1, 1) (maxbias only)
    max_steps: int | None = 1000  # truncate episodes after this many steps (null: the env's own)
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra gymnasium.make kwargs

    def check(self) -> None:
        """Refuse bad values (one line naming the key); the env's own spec checks its keys."""
        if self.max_steps is not None:
            check_range("env.max_steps", self.max_steps, 1)
        spec = find(self)
        if spec is not None and spec.check is not None:
            spec.check(self)


@dataclass(frozen=True)
class EnvSpec:
    """An env with an exact model, by gymnasium id."""

    id: str
    model: Callable[[EnvConfig], TabularModel]  # the exact model of a config
    # (S, D) float32 features of every state (default: one-hot states), built only when a
    # function approximator asks for them.
    observations: Callable[[EnvConfig], np.ndarray] | None = None
    check: Callable[[EnvConfig], None] | None = None  # checks of the env's own keys
    # (states, actions, observation size) of a config without building anything (the
    # memory estimate); default: built from the model.
    dims: Callable[[EnvConfig], tuple[int, int, int]] | None = None


ENVS: Registry[EnvSpec] = Registry("env")


def register(spec: EnvSpec) -> EnvSpec:
    """Give gymnasium id ``spec.id`` an exact model in qlab."""
    return ENVS.add(spec.id, spec)


def find(cfg: EnvConfig) -> EnvSpec | None:
    """The spec of ``cfg.id`` (importing ``cfg.module`` first, if given), or None."""
    module = getattr(cfg, "module", None)
    if module and cfg.id not in ENVS:
        import_module("env.module", module)
    return ENVS.find(cfg.id)
