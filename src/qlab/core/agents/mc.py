"""Tabular Monte-Carlo control on the replica axis.

Each replica acts epsilon-greedily (:meth:`TabularAgent.act`) and stores its episode. When
the episode ends it walks the episode backwards accumulating the discounted return
``G = r_t + gamma * G`` (G = 0 after the last step) and moves Q(s_t, a_t) toward G with a
constant step, ``Q += lr * (G - Q)`` — the source notebook's exponentially weighted average of
returns, without its rounding. Updates are applied in the backward order, so an (s, a)
visited twice in one episode is moved first toward its later return, then its earlier one.

- every-visit (default): every step of the episode updates its (s, a);
- first-visit (``first_visit=True``): only the first occurrence of each (s, a) in the
  episode is updated, toward the return from that first occurrence.

A truncated episode (time limit) is treated like a terminated one: G starts at 0 after its
last step, with no bootstrap from Q — Monte-Carlo learns from complete returns only, so the
env's time limit is part of the task it learns.

Q-delta, as for Q-learning: the mean |ΔQ(s, a)| over the updates made in the episode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from qlab.core.agents import kernels as K
from qlab.core.agents.registry import AgentConfig, AgentSpec, register
from qlab.core.agents.tabular import EpisodeBuffer, TabularAgent, Transition, Updates
from qlab.core.checks import check_range
from qlab.core.compiled import CompiledStepper


@dataclass
class TabularMCConfig(AgentConfig):
    """Tabular Monte-Carlo control (constant step toward the episode's returns)."""

    name: str = "tabular_mc"
    first_visit: bool = False  # true: update only the first visit of each (s, a) per episode
    init: float = 0.0  # initial Q value

    def check(self) -> None:
        super().check()
        check_range("agent.init", self.init)


class TabularMC(TabularAgent):
    """Constant-step Monte-Carlo control for R independent replicas (see the module docstring)."""

    def __init__(self, n_states: int, n_actions: int, seeds: Sequence[int], lr: np.ndarray,
                 gamma: np.ndarray, first_visit: bool = False, init: float = 0.0,
                 legal: np.ndarray | None = None) -> None:
        super().__init__(n_states, n_actions, seeds, lr, gamma, init, legal)
        self.first_visit = bool(first_visit)
        self._episodes = EpisodeBuffer(self.replicas)

    @property
    def kernel(self) -> int | None:
        """The compiled stepper's kernel for this agent; None for a subclass (it may learn
        otherwise: it trains on the numpy path unless it names a kernel of its own)."""
        return (K.MC) if type(self) is TabularMC else None

    def learn(self, tr: Transition) -> Updates:
        self._episodes.push(tr)
        ending = self._rows[tr.done & tr.active]
        if ending.size == 0:
            return Updates(np.zeros(self.replicas), np.zeros(self.replicas))
        return self._learn_episodes(ending)

    def _first_visits(self, ep: dict[str, np.ndarray], lengths: np.ndarray) -> np.ndarray:
        """(n, T) bool: step t is the first occurrence of its (s, a) in its episode."""
        n, T = ep["state"].shape
        valid = np.arange(T)[None, :] < lengths[:, None]
        key = (np.arange(n)[:, None] * (self.n_states * self.n_actions)
               + ep["state"] * self.n_actions + ep["action"])
        flat = np.flatnonzero(valid.ravel())  # row-major: earliest t of each row first
        _, first = np.unique(key.ravel()[flat], return_index=True)
        mask = np.zeros(n * T, dtype=bool)
        mask[flat[first]] = True
        return mask.reshape(n, T)

    def _learn_episodes(self, ending: np.ndarray) -> Updates:
        """Backward return sweep over the finished episodes of the replicas in ``ending``.

        Few replicas end at once in most lock-steps, and a per-step numpy call costs more than
        the arithmetic, so up to ``SCALAR_ROWS`` episodes are swept one by one with Python
        floats; more are swept together, vectorised over the replicas. Both paths do the same
        float64 operations in the same order, so results do not depend on which one ran.
        """
        ep, lengths = self._episodes.take(ending)
        if ending.size <= self.SCALAR_ROWS:
            return self._sweep_rows(ending, ep, lengths)
        return self._sweep_vectorised(ending, ep, lengths)

    SCALAR_ROWS = 8

    def _sweep_rows(self, ending: np.ndarray, ep: dict[str, np.ndarray],
                    lengths: np.ndarray) -> Updates:
        abs_delta = np.zeros(self.replicas)
        count = np.zeros(self.replicas)
        for i, row in enumerate(ending.tolist()):
            n = int(lengths[i])
            states = ep["state"][i, :n].tolist()
            actions = ep["action"][i, :n].tolist()
            rewards = ep["reward"][i, :n].tolist()
            if self.first_visit:
                seen: set[tuple[int, int]] = set()
                update = []
                for sa in zip(states, actions, strict=True):
                    update.append(sa not in seen)
                    seen.add(sa)
            q = self.q[row]
            lr, gamma = float(self.lr[row]), float(self.gamma[row])
            G, total, k = 0.0, 0.0, 0
            for t in range(n - 1, -1, -1):
                G = rewards[t] + gamma * G
                if self.first_visit and not update[t]:
                    continue
                s, a = states[t], actions[t]
                old = float(q[s, a])
                step = lr * (G - old)
                q[s, a] = old + step
                total += abs(step)
                k += 1
            abs_delta[row], count[row] = total, k
        return Updates(abs_delta, count)

    def _sweep_vectorised(self, ending: np.ndarray, ep: dict[str, np.ndarray],
                          lengths: np.ndarray) -> Updates:
        abs_delta = np.zeros(self.replicas)
        count = np.zeros(self.replicas)
        lr, gamma = self.lr[ending], self.gamma[ending]
        update = self._first_visits(ep, lengths) if self.first_visit else None
        G = np.zeros(ending.size)
        for t in range(int(lengths.max()) - 1, -1, -1):
            m = t < lengths
            G[m] = ep["reward"][m, t] + gamma[m] * G[m]
            if update is not None:
                m = m & update[:, t]
            rows = ending[m]
            s, a = ep["state"][m, t], ep["action"][m, t]
            old = self.q[rows, s, a]
            step = lr[m] * (G[m] - old)
            self.q[rows, s, a] = old + step
            abs_delta[rows] += np.abs(step)
            count[rows] += 1
        return Updates(abs_delta, count)


def build(cfg: TabularMCConfig, env, seeds: Sequence[int]) -> TabularMC:
    return TabularMC(env.n_states, env.n_actions, seeds, lr=cfg.lr, gamma=cfg.gamma,
                     first_visit=cfg.first_visit, init=cfg.init, legal=env.legal)


register(AgentSpec("tabular_mc", TabularMCConfig, build, tabular=True,
                   compiled=CompiledStepper))
