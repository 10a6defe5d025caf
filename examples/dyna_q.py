"""Tabular Dyna-Q on the replica axis: an agent qlab does not ship, as one module you can copy.

Dyna-Q (Sutton & Barto, 2nd ed., section 8.2) learns from real steps and from a model it
builds of them. After every real step (s, a, r, s') each replica

1. makes the Q-learning update Q(s, a) += lr * (r + gamma * max_a' Q(s', a') - Q(s, a))
   (no bootstrap from a terminal s');
2. records the model M(s, a) = (r, s', terminated) — deterministic: the last outcome seen;
3. makes ``planning_steps`` more such updates, each on a pair (s, a) drawn uniformly at
   random from the pairs this replica has observed, with the outcome its model predicts.

(The book's pseudocode draws an observed state, then an action taken in it; drawing an
observed pair uniformly is the same when every observed state has as many observed
actions, and simpler to batch.) On a stochastic env the last-seen model is only an
approximation: Dyna-Q as written assumes a deterministic one.

The replica axis: Q has shape (R, S, A), and so does the model. Every replica takes
``planning_steps`` numbers from its own random stream on every step — used or not, whatever
the other replicas do — so replica k of a batch is exactly a run of seed k alone. Replicas
the driver marks inactive (``tr.active`` False) change nothing.

Q-delta (``train/q_delta``): the mean |ΔQ(s, a)| over all the updates made, real and
planning alike (1 + planning_steps per step).

Use it: ``qlab-train hydra.searchpath=[file://examples/conf] agent=dyna_q env=griddy``
(see docs/add_your_own_agent.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qlab.core.agents.registry import AgentConfig, AgentSpec, register
from qlab.core.agents.tabular import TabularAgent, Transition, Updates
from qlab.core.checks import check_range
from qlab.core.statedict import load_array


@dataclass
class DynaQConfig(AgentConfig):
    """Tabular Dyna-Q: Q-learning plus planning on a learned deterministic model."""

    name: str = "dyna_q"
    planning_steps: int = 5  # model-based updates after each real step, >= 0 (0: Q-learning)

    def check(self) -> None:
        super().check()  # agent.lr, agent.gamma
        check_range("agent.planning_steps", self.planning_steps, 0)


class DynaQ(TabularAgent):
    """Dyna-Q for R independent replicas (see the module docstring)."""

    MODEL = ("reward", "next_state", "terminated", "seen", "pairs", "n_pairs")  # checkpointed

    def __init__(self, n_states: int, n_actions: int, seeds: Sequence[int],
                 lr: float | np.ndarray, gamma: float | np.ndarray,
                 planning_steps: int = 5) -> None:
        super().__init__(n_states, n_actions, seeds, lr, gamma)
        self.planning_steps = int(planning_steps)
        shape = (self.replicas, n_states, n_actions)
        # The model M(s, a) of each replica, and the pairs it has observed, in the order
        # first seen (flat index s * A + a): row k's first n_pairs[k] entries are valid.
        self.reward = np.zeros(shape)
        self.next_state = np.zeros(shape, dtype=np.int64)
        self.terminated = np.zeros(shape, dtype=bool)
        self.seen = np.zeros(shape, dtype=bool)
        self.pairs = np.zeros((self.replicas, n_states * n_actions), dtype=np.int64)
        self.n_pairs = np.zeros(self.replicas, dtype=np.int64)

    def learn(self, tr: Transition) -> Updates:
        u = self._rand.take(self.planning_steps)  # every replica's numbers, used or not
        rows = self._rows[tr.active]
        abs_delta = np.zeros(self.replicas)
        s, a = tr.state[rows], tr.action[rows]
        abs_delta[rows] += self._update(rows, s, a, tr.reward[rows], tr.next_state[rows],
                                        tr.terminated[rows])
        self._remember(rows, s, a, tr)
        for i in range(self.planning_steps):
            pick = (u[rows, i] * self.n_pairs[rows]).astype(np.int64)  # < n_pairs: >= 1 here
            s, a = np.divmod(self.pairs[rows, pick], self.n_actions)
            abs_delta[rows] += self._update(rows, s, a, self.reward[rows, s, a],
                                            self.next_state[rows, s, a],
                                            self.terminated[rows, s, a])
        count = tr.active * (1.0 + self.planning_steps)
        return Updates(abs_delta, count)

    def _update(self, rows: np.ndarray, s: np.ndarray, a: np.ndarray, reward: np.ndarray,
                next_state: np.ndarray, terminated: np.ndarray) -> np.ndarray:
        """One Q-learning update of (s[i], a[i]) in replica rows[i]; returns |ΔQ| per row."""
        bootstrap = np.where(terminated, 0.0, self.q[rows, next_state].max(axis=1))
        old = self.q[rows, s, a]
        step = self.lr[rows] * (reward + self.gamma[rows] * bootstrap - old)
        self.q[rows, s, a] = old + step
        return np.abs(step)

    def _remember(self, rows: np.ndarray, s: np.ndarray, a: np.ndarray, tr: Transition) -> None:
        """M(s, a) := the outcome just seen; a pair seen for the first time joins the list."""
        new = ~self.seen[rows, s, a]
        first = rows[new]
        self.pairs[first, self.n_pairs[first]] = s[new] * self.n_actions + a[new]
        self.n_pairs[first] += 1
        self.seen[rows, s, a] = True
        self.reward[rows, s, a] = tr.reward[rows]
        self.next_state[rows, s, a] = tr.next_state[rows]
        self.terminated[rows, s, a] = tr.terminated[rows]

    def state_dict(self) -> dict:
        """Q and the random stream (the base class's), and the model."""
        return {**super().state_dict(),
                "model": {k: getattr(self, k).copy() for k in self.MODEL}}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        pairs = self.n_states * self.n_actions  # indices are checked: a crafted one is refused
        ranges = {"next_state": (0, self.n_states - 1), "pairs": (0, pairs - 1),
                  "n_pairs": (0, pairs)}
        for k in self.MODEL:
            setattr(self, k, load_array(f"agent.model.{k}", d["model"][k], getattr(self, k),
                                        *ranges.get(k, (None, None))))


def build(cfg: DynaQConfig, env, seeds: Sequence[int]) -> DynaQ:
    """The agent for ``env``'s state and action counts, one replica per seed."""
    return DynaQ(env.n_states, env.n_actions, seeds, lr=cfg.lr, gamma=cfg.gamma,
                 planning_steps=cfg.planning_steps)


register(AgentSpec("dyna_q", DynaQConfig, build, tabular=True))
