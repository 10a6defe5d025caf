"""Agents on the replica axis. ``make(cfg, env, seeds)`` builds the one a config names;
agents register themselves (:mod:`qlab.core.agents.registry`)."""

from __future__ import annotations

from collections.abc import Sequence

from qlab.core.agents.registry import AgentConfig, AgentSpec, get, register

__all__ = ["AgentConfig", "AgentSpec", "get", "register", "make", "spec_of"]


def spec_of(cfg) -> AgentSpec:
    """The registered spec of the agent ``cfg`` names (its module imported if needed)."""
    return get(cfg.name, getattr(cfg, "module", None))


def make(cfg, env, seeds: Sequence[int]):
    """The agent ``cfg`` names, with R = len(seeds) replicas, for ``env``'s spaces."""
    return spec_of(cfg).build(cfg, env, seeds)
