"""Tabular Double Q-learning on the replica axis (Sutton & Barto, 2nd ed., 6.7).

Two tables Q1, Q2. The agent acts epsilon-greedy on Q1 + Q2 (greedy ties broken at random).
After every step (s, a, r, s') a fair coin from the replica's own stream picks the table to
update; for Q1 (Q2 mirrors it)

    Q1(s, a) += lr * (r + gamma * Q2(s', argmax_a' Q1(s', a')) - Q1(s, a)),

with target r alone when s' is terminal (a truncated step still bootstraps). One table picks
the action, the other values it: that removes Q-learning's maximisation bias. When several
actions tie for the argmax of Q1(s', .), as every action does while a state is unvisited, the
target takes the mean of Q2 over them: the expectation of breaking the tie uniformly at
random, with no random numbers spent on it.

What is evaluated is what the agent acts on: ``greedy_policy()`` is the argmax of Q1 + Q2,
and ``q_values()`` returns their mean (Q1 + Q2) / 2 (same argmax), which ``eval/q_error``
compares to Q*. ``self.q`` holds the sum Q1 + Q2, kept up to date entry by entry, so the
inherited ``act()`` and ``greedy_policy()`` read it directly.

Random numbers: ``act()``'s 2 + A per replica per step, and one per replica per ``learn``
call for the coin, used or not — replica k of a batch is the run of seed k alone.

Q-delta (``train/q_delta``): the mean |ΔQi(s, a)| of the table updated, over the updates made
in the episode (one per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qlab.core.agents import kernels as K
from qlab.core.agents.registry import AgentConfig, AgentSpec, register
from qlab.core.agents.tabular import TabularAgent, Transition, Updates
from qlab.core.checks import check_range
from qlab.core.compiled import CompiledStepper
from qlab.core.statedict import load_array


@dataclass
class DoubleQConfig(AgentConfig):
    """Tabular Double Q-learning."""

    name: str = "double_q"
    init: float = 0.0  # initial value of both tables

    def check(self) -> None:
        super().check()
        check_range("agent.init", self.init)


class DoubleQ(TabularAgent):
    """Double Q-learning for R independent replicas (see the module docstring)."""

    def __init__(self, n_states: int, n_actions: int, seeds: Sequence[int], lr: np.ndarray,
                 gamma: np.ndarray, init: float = 0.0, legal: np.ndarray | None = None) -> None:
        super().__init__(n_states, n_actions, seeds, lr, gamma, init, legal)
        # tables[0] is Q1, tables[1] is Q2; each (R, S, A).
        self.tables = np.full((2, self.replicas, n_states, n_actions), float(init))
        self.q = self.tables[0] + self.tables[1]

    @property
    def kernel(self) -> int | None:
        """The compiled stepper's kernel; None for a subclass (it may learn otherwise)."""
        return K.DOUBLE_Q if type(self) is DoubleQ else None

    @property
    def q1(self) -> np.ndarray:
        return self.tables[0]

    @property
    def q2(self) -> np.ndarray:
        return self.tables[1]

    def learn(self, tr: Transition) -> Updates:
        coin = self._rand.take(1)[:, 0]  # every replica's coin, used or not
        rows = self._rows[tr.active]
        update = (coin[rows] >= 0.5).astype(np.int64)  # 0: update Q1 (heads), 1: update Q2
        s, a, s2 = tr.state[rows], tr.action[rows], tr.next_state[rows]
        chooser = self.tables[update, rows, s2]  # (n, A): the updated table picks a' ...
        valuer = self.tables[1 - update, rows, s2]  # ... the other one values it
        if self.legal is not None:  # ... among the legal actions of s'
            chooser = np.where(self.legal[s2], chooser, -np.inf)
        best = chooser == chooser.max(axis=1, keepdims=True)
        value = np.where(best, valuer, 0.0).sum(axis=1) / best.sum(axis=1)
        bootstrap = np.where(tr.terminated[rows], 0.0, value)
        target = tr.reward[rows] + self.gamma[rows] * bootstrap
        old = self.tables[update, rows, s, a]
        step = self.lr[rows] * (target - old)
        self.tables[update, rows, s, a] = old + step
        self.q[rows, s, a] = self.tables[0, rows, s, a] + self.tables[1, rows, s, a]
        abs_delta = np.zeros(self.replicas)
        abs_delta[rows] = np.abs(step)
        return Updates(abs_delta, tr.active.astype(np.float64))

    def q_values(self) -> np.ndarray:
        """(R, S, A) (Q1 + Q2) / 2: what the greedy policy (argmax of Q1 + Q2) is scored on."""
        return self.q / 2.0

    def replica_values(self, replica: int) -> np.ndarray:
        """(S, A) ``q_values()[replica]``, without computing every replica's."""
        return self.q[replica] / 2.0

    def save(self, replica: int, directory: Path) -> None:
        """``q_table.npy`` (the mean of the tables, S x A), ``q1.npy`` and ``q2.npy``."""
        np.save(directory / "q_table.npy", self.q_values()[replica])
        np.save(directory / "q1.npy", self.q1[replica])
        np.save(directory / "q2.npy", self.q2[replica])

    def state_dict(self) -> dict:
        """Both tables and the random stream (Q1 + Q2 is recomputed on load)."""
        return {"q1": self.q1.copy(), "q2": self.q2.copy(), "rand": self._rand.state()}

    def load_state_dict(self, d: dict) -> None:
        q1 = load_array("agent.q1", d["q1"], self.q1)
        q2 = load_array("agent.q2", d["q2"], self.q2)
        self._rand.load_state(d["rand"])
        self.tables = np.stack([q1, q2])
        self.q = self.tables[0] + self.tables[1]


def build(cfg: DoubleQConfig, env, seeds: Sequence[int]) -> DoubleQ:
    """The agent for ``env``'s state and action counts, one replica per seed."""
    return DoubleQ(env.n_states, env.n_actions, seeds, lr=cfg.lr, gamma=cfg.gamma,
                   init=cfg.init, legal=env.legal)


register(AgentSpec("double_q", DoubleQConfig, build, tabular=True, compiled=CompiledStepper))
