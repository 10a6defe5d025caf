"""Agents on the replica axis. ``make(cfg, env, seeds)`` builds the one a config names."""

from __future__ import annotations

from collections.abc import Sequence

from qlab.agents.qlearning import UPDATES, TabularQ

NAMES = ("tabular_q",)
TABULAR = ("tabular_q",)


def validate(cfg, fail, check_in, check_range) -> None:
    """Agent-specific checks (the common lr / gamma are checked by the caller)."""
    if cfg.name == "tabular_q":
        check_in("agent.update", cfg.update, UPDATES)
        check_range("agent.init", cfg.init)


def make(cfg, env, seeds: Sequence[int]):
    """The agent ``cfg`` names, with R = len(seeds) replicas, for ``env``'s spaces."""
    if cfg.name == "tabular_q":
        return TabularQ(env.n_states, env.n_actions, seeds, lr=cfg.lr, gamma=cfg.gamma,
                        update=cfg.update, init=cfg.init)
    raise ValueError(f"agent.name={cfg.name!r}: must be one of {', '.join(NAMES)}")
