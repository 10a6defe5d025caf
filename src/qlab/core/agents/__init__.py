"""Agents on the replica axis. ``make(cfg, env, seeds)`` builds the one a config names."""

from __future__ import annotations

from collections.abc import Sequence

from qlab.core.agents.mc import TabularMC
from qlab.core.agents.qlearning import UPDATES, TabularQ

NAMES = ("tabular_q", "tabular_mc", "dqn")
TABULAR = ("tabular_q", "tabular_mc")


def validate(cfg, fail, check_in, check_range) -> None:
    """Agent-specific checks (the common lr / gamma are checked by the caller)."""
    if cfg.name == "tabular_q":
        check_in("agent.update", cfg.update, UPDATES)
        check_range("agent.init", cfg.init)
    if cfg.name == "tabular_mc":
        check_range("agent.init", cfg.init)
    if cfg.name == "dqn":
        for i, h in enumerate(cfg.hidden):
            check_range(f"agent.hidden[{i}]", h, 1)
        for key in ("buffer_size", "batch_size", "train_freq", "gradient_steps", "target_update"):
            check_range(f"agent.{key}", getattr(cfg, key), 1)
        check_range("agent.learning_starts", cfg.learning_starts, 0)
        check_range("agent.tau", cfg.tau, 0, 1, lo_open=True)
        check_range("agent.max_grad_norm", cfg.max_grad_norm, 0, lo_open=True)
        check_range("agent.threads", cfg.threads, 0)


def make(cfg, env, seeds: Sequence[int]):
    """The agent ``cfg`` names, with R = len(seeds) replicas, for ``env``'s spaces."""
    if cfg.name == "tabular_q":
        return TabularQ(env.n_states, env.n_actions, seeds, lr=cfg.lr, gamma=cfg.gamma,
                        update=cfg.update, init=cfg.init)
    if cfg.name == "tabular_mc":
        return TabularMC(env.n_states, env.n_actions, seeds, lr=cfg.lr, gamma=cfg.gamma,
                         first_visit=cfg.first_visit, init=cfg.init)
    if cfg.name == "dqn":
        return _make_dqn(cfg, env, seeds)
    raise ValueError(f"agent.name={cfg.name!r}: must be one of {', '.join(NAMES)}")


def _make_dqn(cfg, env, seeds: Sequence[int]):
    """DQN over ``env.observations[state]`` (envs with a state table) or the env's float
    observation vectors (``env.obs_dim``). Imported here so tabular runs never load torch."""
    import torch

    from qlab.core.agents.dqn import DQN

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)  # per job: launcher workers are reused
    obs = env.observations
    obs_dim = obs.shape[1] if obs is not None else env.obs_dim
    return DQN(obs_dim, env.n_actions, seeds, observations=obs, lr=cfg.lr, gamma=cfg.gamma,
               hidden=list(cfg.hidden), buffer_size=cfg.buffer_size, batch_size=cfg.batch_size,
               learning_starts=cfg.learning_starts, train_freq=cfg.train_freq,
               gradient_steps=cfg.gradient_steps, target_update=cfg.target_update, tau=cfg.tau,
               double=cfg.double, max_grad_norm=cfg.max_grad_norm)
