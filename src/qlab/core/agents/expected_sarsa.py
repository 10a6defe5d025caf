"""Tabular Expected SARSA on the replica axis (Sutton & Barto, 2nd ed., 6.6).

After every step (s, a, r, s')

    Q(s, a) += lr * (r + gamma * sum_a' pi(a' | s') Q(s', a') - Q(s, a)),

with target r alone when s' is terminal (a truncated step still bootstraps), and pi the
epsilon-greedy policy the agent acts by, at the epsilon of the step just taken (``act()``
keeps the value the driver passes it). pi gives every action epsilon / A and splits 1 -
epsilon evenly over the greedy actions, as the random tie-breaking of ``act()`` does (on an
env with per-state legal actions: epsilon / (the state's legal actions) to each legal one,
and the mean and max below are over them); every greedy action has the value
max_a' Q(s', a'), so the expectation is

    epsilon * mean_a' Q(s', a') + (1 - epsilon) * max_a' Q(s', a')

whatever the ties. No random numbers beyond ``act()``'s: replica k of a batch is the run of
seed k alone. With epsilon = 0 it is Q-learning.

Q-delta (``train/q_delta``): the mean |ΔQ(s, a)| over the updates made in the episode, one
per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qlab.core.agents import kernels as K
from qlab.core.agents.registry import AgentConfig, AgentSpec, register
from qlab.core.agents.tabular import TabularAgent, Transition, Updates
from qlab.core.checks import check_range
from qlab.core.compiled import CompiledStepper


@dataclass
class ExpectedSarsaConfig(AgentConfig):
    """Tabular Expected SARSA."""

    name: str = "expected_sarsa"
    init: float = 0.0  # initial Q value

    def check(self) -> None:
        super().check()
        check_range("agent.init", self.init)


class ExpectedSarsa(TabularAgent):
    """Expected SARSA for R independent replicas (see the module docstring)."""

    def __init__(self, n_states: int, n_actions: int, seeds: Sequence[int], lr: np.ndarray,
                 gamma: np.ndarray, init: float = 0.0, legal: np.ndarray | None = None) -> None:
        super().__init__(n_states, n_actions, seeds, lr, gamma, init, legal)
        self.epsilon = np.zeros(self.replicas)  # the current step's epsilon, as act() got it

    @property
    def kernel(self) -> int | None:
        """The compiled stepper's kernel; None for a subclass (it may learn otherwise)."""
        return K.EXPECTED_SARSA if type(self) is ExpectedSarsa else None

    def act(self, state: np.ndarray, epsilon: np.ndarray) -> np.ndarray:
        self.epsilon = np.broadcast_to(np.asarray(epsilon, dtype=np.float64),
                                       (self.replicas,)).copy()
        return super().act(state, epsilon)

    def learn(self, tr: Transition) -> Updates:
        rows = self._rows[tr.active]
        eps = self.epsilon[rows]
        s2 = tr.next_state[rows]
        qn = self.q[rows, s2]  # (n, A)
        if self.legal is None:
            mean = qn.mean(axis=1)
        else:  # pi is uniform over the legal actions only
            legal = self.legal[s2]
            mean = np.where(legal, qn, 0.0).sum(axis=1) / legal.sum(axis=1)
        expected = eps * mean + (1.0 - eps) * self.best_value(qn, s2)
        bootstrap = np.where(tr.terminated[rows], 0.0, expected)
        target = tr.reward[rows] + self.gamma[rows] * bootstrap
        s, a = tr.state[rows], tr.action[rows]
        old = self.q[rows, s, a]
        step = self.lr[rows] * (target - old)
        self.q[rows, s, a] = old + step
        abs_delta = np.zeros(self.replicas)
        abs_delta[rows] = np.abs(step)
        return Updates(abs_delta, tr.active.astype(np.float64))


def build(cfg: ExpectedSarsaConfig, env, seeds: Sequence[int]) -> ExpectedSarsa:
    """The agent for ``env``'s state and action counts, one replica per seed."""
    return ExpectedSarsa(env.n_states, env.n_actions, seeds, lr=cfg.lr, gamma=cfg.gamma,
                         init=cfg.init, legal=env.legal)


register(AgentSpec("expected_sarsa", ExpectedSarsaConfig, build, tabular=True,
                   compiled=CompiledStepper))
